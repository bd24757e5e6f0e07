//! A VM's metadata heap: the bytes the hyp keeps because a VM's host or guest asked for them
//! (gmem page maps, shareability and attribute ranges, pins, the MMIO guard set, vCPU contexts,
//! the transient lists of a call), carved from pages the host donated for that VM.
//!
//! # Why not a crate
//! `buddy_system_allocator::Heap` (the hyp's boot heap) cannot say whether the next allocation
//! will succeed (it does not expose its free lists) and cannot give a page back while it lives.
//! This heap needs both: a call may only start when the heap is sure to serve it (its reserve of
//! whole pages, topped up from the VM's pool before the call), and an emptied page goes back to
//! the pool, so that teardown (and the host's reclaim) get every donated page back.
//!
//! # Shape
//! Every page of the heap starts with a header (64 bytes) naming the heap it belongs to, so a
//! free finds its heap from the pointer alone, whatever heap the allocation was charged to.
//! Objects are of nine size classes: powers of two from 16 to 2048 bytes (aligned to their
//! size, packed after the header), and [`BIG_MAX`]: one object of up to 4032 bytes a page.
//! A page serves one class; a page whose objects are all free goes back to the reserve at once.
//! Larger objects are refused (null): the callers keep their lists short.
//!
//! # Reserve
//! Whole free pages, linked through their first words (not zeroed: a page is zeroed when it
//! leaves the heap). A new page of a class comes only from
//! the reserve; the hyp tops the reserve up to [`RESERVE_PAGES`] from the VM's pool before each
//! call it charges to the VM and fails the call (`ENOMEM`, or `NeedPages` for a guest) before
//! anything changes when the pool cannot. One call never needs more than the reserve (the host
//! storm and the hostile suite count the lowest reserve ever reached, [`VmHeap::low_water`]).

use core::alloc::Layout;
use core::ptr::null_mut;

use crate::table::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;
const MAGIC: u32 = 0x5650_4d48; // "HMPV"
const HDR: usize = 64;
/// The largest object the heap serves (one a page, 64-byte aligned at most).
pub const BIG_MAX: usize = PAGE - HDR;
/// Size classes: 16 << c bytes for `c < BIG`, then the one-a-page class.
const BIG: usize = 8;
const CLASSES: usize = BIG + 1;
/// Whole pages a call charged to a VM may take from its heap's reserve at most: a B-tree insert
/// splits at most one node a level, a call touches a few maps and keeps its lists under a page.
/// The host storm measures the most any call took ([`HeapStats::max_call_pages`]).
pub const CALL_PAGES_MAX: usize = 8;
/// The reserve is topped up to this many pages when it falls under [`CALL_PAGES_MAX`] (so most
/// calls take nothing from the pool).
pub const RESERVE_PAGES: usize = abi::host::VM_CREATE_PAGES as usize;

/// A page's header.
#[repr(C)]
struct Hdr {
    magic: u32,
    class: u16,
    used: u16,
    /// Objects of the page ever handed out (the next fresh one is at `first + bumped * size`).
    bumped: u16,
    _pad: [u16; 3],
    free: *mut FreeObj,
    next: *mut Hdr,
    prev: *mut Hdr,
    heap: *const VmHeap,
    pa: u64,
}

struct FreeObj {
    next: *mut FreeObj,
}

/// A page in the reserve.
struct ResPage {
    next: *mut ResPage,
    pa: u64,
}

const _: () = assert!(core::mem::size_of::<Hdr>() <= HDR);

/// Object size, first object's offset and objects a page of class `c`.
const fn geometry(c: usize) -> (usize, usize, usize) {
    if c >= BIG {
        (BIG_MAX, HDR, 1)
    } else {
        let size = 16 << c;
        let first = if size < HDR { HDR } else { size };
        (size, first, (PAGE - first) / size)
    }
}

fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(16);
    if size <= 2048 {
        let c = size.next_power_of_two().trailing_zeros() as usize - 4;
        Some(c)
    } else if layout.size() <= BIG_MAX && layout.align() <= HDR {
        Some(BIG)
    } else {
        None
    }
}

/// What a heap holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Pages serving objects.
    pub pages: usize,
    /// Whole free pages in reserve.
    pub reserve: usize,
    /// Objects live.
    pub objects: usize,
    /// Bytes of those objects (their classes' sizes).
    pub bytes: usize,
    /// The fewest reserve pages left at any point since [`VmHeap::reset_low_water`].
    pub low_water: usize,
    /// The most reserve pages one call took (from [`VmHeap::begin_call`] on).
    pub max_call_pages: usize,
    /// The reserve when the current call began.
    call_start: usize,
}

struct Slab {
    partial: [*mut Hdr; CLASSES],
    reserve: *mut ResPage,
    stats: HeapStats,
}

/// One VM's heap. It must not move while it holds pages (every page names it): the owner keeps
/// it boxed, and empties it ([`VmHeap::take_page`] until `None`, after every object it served
/// was freed) before dropping it.
pub struct VmHeap {
    slab: spin::Mutex<Slab>,
}

// SAFETY: the raw pointers in `Slab` point into pages the heap owns alone (its reserve and the
// pages serving its objects); they are only followed under the heap's lock.
unsafe impl Send for Slab {}

impl Default for VmHeap {
    fn default() -> Self {
        VmHeap::new()
    }
}

impl core::fmt::Debug for VmHeap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmHeap")
            .field("stats", &self.stats())
            .finish()
    }
}

impl VmHeap {
    /// An empty heap.
    pub const fn new() -> VmHeap {
        VmHeap {
            slab: spin::Mutex::new(Slab {
                partial: [null_mut(); CLASSES],
                reserve: null_mut(),
                stats: HeapStats {
                    pages: 0,
                    reserve: 0,
                    objects: 0,
                    bytes: 0,
                    low_water: 0,
                    max_call_pages: 0,
                    call_start: 0,
                },
            }),
        }
    }

    /// What the heap holds.
    pub fn stats(&self) -> HeapStats {
        self.slab.lock().stats
    }

    /// Whole pages in reserve.
    pub fn reserve(&self) -> usize {
        self.slab.lock().stats.reserve
    }

    /// Whether the heap serves no object and holds no page.
    pub fn is_empty(&self) -> bool {
        let s = self.slab.lock().stats;
        s.pages == 0 && s.reserve == 0
    }

    /// The low-water mark starts again from the reserve now.
    pub fn reset_low_water(&self) {
        let mut s = self.slab.lock();
        s.stats.low_water = s.stats.reserve;
    }

    /// A call charged to the heap begins: what it takes from the reserve from now on counts
    /// towards [`HeapStats::max_call_pages`].
    pub fn begin_call(&self) {
        let mut s = self.slab.lock();
        s.stats.call_start = s.stats.reserve;
    }

    /// The fewest reserve pages left since the last [`VmHeap::reset_low_water`].
    pub fn low_water(&self) -> usize {
        self.slab.lock().stats.low_water
    }

    /// Adds a whole free page to the reserve.
    ///
    /// # Safety
    /// `ptr` is the page at physical address `pa`, valid for reads and writes of the whole page,
    /// 4 KiB aligned, zeroed, used by nothing else until [`VmHeap::take_page`] returns it.
    pub unsafe fn give_page(&self, pa: u64, ptr: *mut u8) {
        let mut s = self.slab.lock();
        // Frees find the page's header from an object's address alone.
        let _ = ptr.expose_provenance();
        let r = ptr.cast::<ResPage>();
        // SAFETY: the caller hands the whole page over; its start is aligned for `ResPage`.
        unsafe {
            r.write(ResPage {
                next: s.reserve,
                pa,
            })
        };
        s.reserve = r;
        s.stats.reserve += 1;
    }

    /// Takes a whole free page out of the reserve, zeroed: its physical address and pointer.
    pub fn take_page(&self) -> Option<(u64, *mut u8)> {
        let mut s = self.slab.lock();
        let r = s.take_reserve()?;
        // SAFETY: a reserve page is the heap's alone and valid for the whole page.
        let pa = unsafe { (*r).pa };
        // SAFETY: as above; the page leaves the heap zeroed, as the pool keeps its pages.
        unsafe { r.cast::<u8>().write_bytes(0, PAGE) };
        Some((pa, r.cast()))
    }

    /// Allocates an object, or null when the layout is too big or the reserve is empty.
    ///
    /// # Safety
    /// As [`core::alloc::GlobalAlloc::alloc`]; the heap must stay where it is while the object
    /// lives (see [`VmHeap`]).
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class_of(layout) else {
            return null_mut();
        };
        let me: *const VmHeap = self;
        let mut s = self.slab.lock();
        // SAFETY: the lock is held; the pages are the heap's.
        unsafe { s.alloc(c, me) }
    }
}

impl Slab {
    fn take_reserve(&mut self) -> Option<*mut ResPage> {
        let r = self.reserve;
        if r.is_null() {
            return None;
        }
        // SAFETY: a non-null reserve entry is a page the heap owns, written by `give_page` or
        // by `free` when it emptied.
        self.reserve = unsafe { (*r).next };
        self.stats.reserve -= 1;
        self.stats.low_water = self.stats.low_water.min(self.stats.reserve);
        Some(r)
    }

    /// # Safety
    /// Under the heap's lock; `me` is the heap.
    unsafe fn alloc(&mut self, c: usize, me: *const VmHeap) -> *mut u8 {
        let (size, first, per_page) = geometry(c);
        let mut h = self.partial[c];
        if h.is_null() {
            let Some(r) = self.take_reserve() else {
                return null_mut();
            };
            // What this call took from the reserve (`take_page`, giving pages back, does not
            // count).
            let took = self.stats.call_start.saturating_sub(self.stats.reserve);
            self.stats.max_call_pages = self.stats.max_call_pages.max(took);
            // SAFETY: a reserve page is the heap's and valid for the whole page.
            let pa = unsafe { (*r).pa };
            h = r.cast::<Hdr>();
            // SAFETY: as above; the header fits the first 64 bytes.
            unsafe {
                h.write(Hdr {
                    magic: MAGIC,
                    class: c as u16,
                    used: 0,
                    bumped: 0,
                    _pad: [0; 3],
                    free: null_mut(),
                    next: null_mut(),
                    prev: null_mut(),
                    heap: me,
                    pa,
                })
            };
            self.stats.pages += 1;
            self.link(c, h);
        }
        // SAFETY: `h` is a page of class `c` of this heap with a free object (it is on the
        // partial list), under the lock.
        let obj = unsafe {
            let hd = &mut *h;
            let obj = if !hd.free.is_null() {
                let o = hd.free;
                hd.free = (*o).next;
                o.cast::<u8>()
            } else {
                let o = h.cast::<u8>().add(first + usize::from(hd.bumped) * size);
                hd.bumped += 1;
                o
            };
            hd.used += 1;
            if usize::from(hd.used) == per_page {
                self.unlink(c, h);
            }
            obj
        };
        self.stats.objects += 1;
        self.stats.bytes += size;
        obj
    }

    fn link(&mut self, c: usize, h: *mut Hdr) {
        let head = self.partial[c];
        // SAFETY: `h` and `head` (if any) are pages of this heap, under the lock.
        unsafe {
            (*h).prev = null_mut();
            (*h).next = head;
            if !head.is_null() {
                (*head).prev = h;
            }
        }
        self.partial[c] = h;
    }

    fn unlink(&mut self, c: usize, h: *mut Hdr) {
        // SAFETY: `h` is on class `c`'s partial list of this heap, under the lock.
        unsafe {
            let (p, n) = ((*h).prev, (*h).next);
            if p.is_null() {
                self.partial[c] = n;
            } else {
                (*p).next = n;
            }
            if !n.is_null() {
                (*n).prev = p;
            }
            (*h).prev = null_mut();
            (*h).next = null_mut();
        }
    }

    /// # Safety
    /// Under the heap's lock; `obj` was allocated from page `h` of this heap and not freed.
    unsafe fn free(&mut self, obj: *mut u8, h: *mut Hdr) {
        // SAFETY: by the contract `h` is a live page of this heap and `obj` one of its objects.
        unsafe {
            let c = usize::from((*h).class);
            let (size, _, per_page) = geometry(c);
            let was_full = usize::from((*h).used) == per_page;
            let o = obj.cast::<FreeObj>();
            o.write(FreeObj { next: (*h).free });
            (*h).free = o;
            (*h).used -= 1;
            self.stats.objects -= 1;
            self.stats.bytes -= size;
            if was_full {
                self.link(c, h);
            }
            if (*h).used == 0 {
                self.unlink(c, h);
                let pa = (*h).pa;
                self.stats.pages -= 1;
                // The page goes back to the reserve whole (zeroed only when it leaves the
                // heap, `take_page`: objects are handed out uninitialised anyway).
                let r = h.cast::<ResPage>();
                r.write(ResPage {
                    next: self.reserve,
                    pa,
                });
                self.reserve = r;
                self.stats.reserve += 1;
            }
        }
    }
}

/// Whether `ptr` lies in a heap page (its page starts with a heap header).
///
/// # Safety
/// `ptr` was returned by [`VmHeap::alloc`] or lies in memory whose page start is readable.
unsafe fn header_of(ptr: *mut u8) -> Option<*mut Hdr> {
    // The header is reached through the page's own pointer (exposed when the page joined the
    // heap), not the object's: the object's pointer may only reach the object.
    let h = core::ptr::with_exposed_provenance_mut::<Hdr>(ptr.addr() & !(PAGE - 1));
    // SAFETY: by the contract the page's start is readable.
    (unsafe { (*h).magic } == MAGIC).then_some(h)
}

/// Frees an object of any [`VmHeap`], found from its page's header.
///
/// # Safety
/// `ptr` was returned by [`VmHeap::alloc`] with `layout` and is not freed yet.
pub unsafe fn dealloc(ptr: *mut u8, layout: Layout) {
    let _ = layout;
    // SAFETY: by the contract the object lies in a live heap page.
    let Some(h) = (unsafe { header_of(ptr) }) else {
        debug_assert!(false, "freeing an object of no heap");
        return;
    };
    // SAFETY: a live page names its heap, which stays put while it holds pages.
    let heap = unsafe { &*(*h).heap };
    let mut s = heap.slab.lock();
    // SAFETY: under the heap's lock; the object is of page `h`.
    unsafe { s.free(ptr, h) };
}

/// Whether an object of `layout` resized to `new_size` keeps its size class (so a reallocation
/// can stay in place).
pub fn same_class(layout: Layout, new_size: usize) -> bool {
    let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
        return false;
    };
    class_of(layout).is_some() && class_of(layout) == class_of(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    #[repr(C, align(4096))]
    struct P([u8; PAGE]);

    fn pages(n: usize) -> Vec<Box<P>> {
        (0..n).map(|_| Box::new(P([0; PAGE]))).collect()
    }

    fn give_all(h: &VmHeap, ps: &mut [Box<P>]) {
        for (i, p) in ps.iter_mut().enumerate() {
            // SAFETY: the test owns each page, zeroed and aligned, until it drops `ps`.
            unsafe { h.give_page(0x1000 * (i as u64 + 1), p.0.as_mut_ptr()) };
        }
    }

    #[test]
    fn objects_come_from_the_reserve_and_empty_pages_go_back_zeroed() {
        let h = Box::new(VmHeap::new());
        let mut ps = pages(3);
        give_all(&h, &mut ps);
        assert_eq!(h.reserve(), 3);
        let l = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: layout is non-zero; the heap is boxed and outlives the objects.
        let objs: Vec<*mut u8> = (0..200).map(|_| unsafe { h.alloc(l) }).collect();
        assert!(objs.iter().all(|p| !p.is_null()));
        // 32-byte class: 126 objects a page.
        assert_eq!(h.stats().pages, 2);
        assert_eq!(h.stats().reserve, 1);
        assert_eq!(h.stats().objects, 200);
        for &o in &objs {
            // SAFETY: each object is writable for its layout.
            unsafe { o.write_bytes(0xa5, 24) };
        }
        for &o in &objs {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { dealloc(o, l) };
        }
        let s = h.stats();
        assert_eq!((s.pages, s.reserve, s.objects, s.bytes), (0, 3, 0, 0));
        assert_eq!(s.low_water, 0);
        let mut got = Vec::new();
        while let Some((pa, p)) = h.take_page() {
            // SAFETY: the page came back from the heap, whole.
            let bytes = unsafe { core::slice::from_raw_parts(p, PAGE) };
            assert!(bytes.iter().all(|&b| b == 0), "page {pa:#x} not zeroed");
            got.push(pa);
        }
        got.sort_unstable();
        assert_eq!(got, [0x1000, 0x2000, 0x3000]);
        assert!(h.is_empty());
    }

    #[test]
    fn an_empty_reserve_or_a_huge_object_gives_null_and_changes_nothing() {
        let h = Box::new(VmHeap::new());
        // SAFETY: non-zero layouts.
        unsafe {
            assert!(h.alloc(Layout::from_size_align(8, 8).unwrap()).is_null());
            let mut ps = pages(1);
            give_all(&h, &mut ps);
            assert!(h.alloc(Layout::from_size_align(5000, 8).unwrap()).is_null());
            assert!(h
                .alloc(Layout::from_size_align(64, 4096).unwrap())
                .is_null());
            assert_eq!(h.stats().reserve, 1);
            let big = Layout::from_size_align(BIG_MAX, 64).unwrap();
            let b = h.alloc(big);
            assert!(!b.is_null());
            assert_eq!(b as usize % 64, 0);
            assert!(h.alloc(big).is_null());
            dealloc(b, big);
            assert_eq!(h.stats().reserve, 1);
            while h.take_page().is_some() {}
            drop(ps);
        }
    }

    #[test]
    fn every_class_is_aligned_and_objects_do_not_overlap() {
        let h = Box::new(VmHeap::new());
        let mut ps = pages(40);
        give_all(&h, &mut ps);
        let mut live: Vec<(*mut u8, Layout)> = Vec::new();
        for round in 0..3u8 {
            for c in 0..CLASSES {
                let (size, _, _) = geometry(c);
                let align = if c >= BIG { 64 } else { size.min(4096) };
                let l = Layout::from_size_align(size, align).unwrap();
                for _ in 0..3 {
                    // SAFETY: non-zero layout; the heap outlives the objects.
                    let p = unsafe { h.alloc(l) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0);
                    // SAFETY: the object is writable for its size.
                    unsafe { p.write_bytes(round.wrapping_add(c as u8), size) };
                    live.push((p, l));
                }
            }
        }
        let mut spans: Vec<(usize, usize)> =
            live.iter().map(|(p, l)| (*p as usize, l.size())).collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
        }
        for (p, l) in live.drain(..) {
            // SAFETY: allocated above with `l`.
            unsafe { dealloc(p, l) };
        }
        assert_eq!(h.stats().pages, 0);
        assert_eq!(h.stats().reserve, 40);
        while h.take_page().is_some() {}
    }
}
