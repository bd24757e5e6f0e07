//! Host-test fakes: an arena of table pages with allocation-failure injection, and a TLB that
//! records every maintenance call and can check break-before-make against a model TLB.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{RefCell, UnsafeCell};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::table::{PhysMem, TlbMaintenance, ENTRIES, PAGE_SIZE};

/// Default physical base of a [`FakeArena`].
pub const FAKE_BASE: u64 = 0x4000_0000;

/// What a freed page is filled with, so that a use after free shows.
pub const POISON: u64 = 0xdead_beef_dead_beef;

struct ArenaState {
    used: Vec<bool>,
    budget: Option<usize>,
    allocs: usize,
    frees: usize,
}

/// One page of a fake arena, aligned as a real page (a per-VM heap finds its page header from an
/// object's address).
#[repr(C, align(4096))]
struct FakePage(UnsafeCell<[u64; ENTRIES]>);

impl FakePage {
    fn get(&self) -> *mut [u64; ENTRIES] {
        self.0.get()
    }
}

struct ArenaInner {
    base: u64,
    pages: Box<[FakePage]>,
    state: RefCell<ArenaState>,
}

/// The address ranges of every live arena (of every thread): a test's global allocator routes
/// a free inside one to the per-VM heap whose page it is ([`crate::heap`]).
static ARENAS: [(AtomicUsize, AtomicUsize); 64] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 64];

/// One past the highest slot of [`ARENAS`] ever used (the scan stops there).
static ARENAS_USED: AtomicUsize = AtomicUsize::new(0);

/// Whether `addr` lies in a live [`FakeArena`].
pub fn in_arena(addr: usize) -> bool {
    let used = ARENAS_USED.load(Ordering::Acquire).min(ARENAS.len());
    ARENAS[..used].iter().any(|(s, e)| {
        let s = s.load(Ordering::Acquire);
        s != 0 && s <= addr && addr < e.load(Ordering::Acquire)
    })
}

fn register(start: usize, end: usize) {
    // A slot is claimed with its start while its end is 0 (an empty range), then given its end.
    for (i, (s, e)) in ARENAS.iter().enumerate() {
        if s.compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            e.store(end, Ordering::Release);
            ARENAS_USED.fetch_max(i + 1, Ordering::AcqRel);
            return;
        }
    }
    panic!("more than 64 fake arenas live at once");
}

impl Drop for ArenaInner {
    fn drop(&mut self) {
        let start = self.pages.as_ptr() as usize;
        for (s, e) in &ARENAS {
            if s.load(Ordering::Acquire) == start {
                e.store(0, Ordering::Release);
                s.store(0, Ordering::Release);
                return;
            }
        }
    }
}

/// A fake physical memory of `n` pages at a base PA. Cloning gives another handle to the same
/// memory (so a test can keep one while a [`crate::stage2::Stage2`] owns another).
///
/// Misuse by the code under test (freeing a page twice or one never allocated, touching a
/// page that is not allocated) panics: these are test fakes.
#[derive(Clone)]
pub struct FakeArena {
    inner: Rc<ArenaInner>,
}

impl core::fmt::Debug for FakeArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeArena")
            .field("base", &self.inner.base)
            .field("pages", &self.inner.pages.len())
            .field("live", &self.live_pages())
            .finish()
    }
}

impl FakeArena {
    /// `pages` pages at [`FAKE_BASE`].
    pub fn new(pages: usize) -> FakeArena {
        FakeArena::with_base(FAKE_BASE, pages)
    }

    /// `pages` pages at `base` (8 KiB aligned).
    pub fn with_base(base: u64, pages: usize) -> FakeArena {
        assert_eq!(base % (2 * PAGE_SIZE), 0);
        let pages: Box<[FakePage]> = (0..pages)
            .map(|_| FakePage(UnsafeCell::new([POISON; ENTRIES])))
            .collect();
        let n = pages.len();
        if n > 0 {
            let start = pages.as_ptr() as usize;
            register(start, start + n * PAGE_SIZE as usize);
        }
        FakeArena {
            inner: Rc::new(ArenaInner {
                base,
                pages,
                state: RefCell::new(ArenaState {
                    used: vec![false; n],
                    budget: None,
                    allocs: 0,
                    frees: 0,
                }),
            }),
        }
    }

    /// `None`: allocations succeed while pages last. `Some(k)`: the next `k` allocations may
    /// succeed, every later one fails.
    pub fn set_alloc_budget(&self, budget: Option<usize>) {
        self.inner.state.borrow_mut().budget = budget;
    }

    /// Pages currently allocated.
    pub fn live_pages(&self) -> usize {
        self.inner
            .state
            .borrow()
            .used
            .iter()
            .filter(|u| **u)
            .count()
    }

    /// Successful allocations and frees so far (calls, not pages).
    pub fn counts(&self) -> (usize, usize) {
        let st = self.inner.state.borrow();
        (st.allocs, st.frees)
    }

    fn page_index(&self, pa: u64) -> Option<usize> {
        let off = pa.checked_sub(self.inner.base)?;
        if off % PAGE_SIZE != 0 {
            return None;
        }
        let idx = usize::try_from(off / PAGE_SIZE).ok()?;
        (idx < self.inner.pages.len()).then_some(idx)
    }

    /// Reads the 64-bit word at `pa` (8-byte aligned) whether or not its page is allocated.
    pub fn read_u64(&self, pa: u64) -> Option<u64> {
        if !pa.is_multiple_of(8) {
            return None;
        }
        let idx = self.page_index(pa & !(PAGE_SIZE - 1))?;
        let word = ((pa % PAGE_SIZE) / 8) as usize;
        let ptr = self.inner.pages[idx].get().cast::<u64>();
        // SAFETY: `word < 512`, the page lives as long as `self.inner`, and no reference to its
        // contents exists (all accesses go through raw pointers, single-threaded).
        Some(unsafe { ptr.add(word).read() })
    }

    /// Writes the 64-bit word at `pa` (for tests that corrupt tables on purpose).
    pub fn write_u64(&self, pa: u64, value: u64) {
        let idx = self
            .page_index(pa & !(PAGE_SIZE - 1))
            .expect("pa outside the arena");
        let word = ((pa % PAGE_SIZE) / 8) as usize;
        let ptr = self.inner.pages[idx].get().cast::<u64>();
        // SAFETY: as in `read_u64`.
        unsafe { ptr.add(word).write(value) }
    }
}

// SAFETY: pages are handed out only while free and marked used until freed; `table` returns a
// pointer into the boxed slice, which never moves and lives as long as any handle; pages are
// zeroed on allocation; the contents are only accessed through raw pointers.
unsafe impl PhysMem for FakeArena {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        let mut st = self.inner.state.borrow_mut();
        if let Some(b) = st.budget {
            if b == 0 {
                return None;
            }
            st.budget = Some(b - 1);
        }
        if count == 0 {
            return None;
        }
        let n = st.used.len();
        let mut first = 0;
        while first + count <= n {
            if st.used[first..first + count].iter().all(|u| !*u) {
                for i in first..first + count {
                    st.used[i] = true;
                    let ptr = self.inner.pages[i].get();
                    // SAFETY: the page was free, so nothing else accesses it; `ptr` is valid.
                    unsafe { ptr.write([0; ENTRIES]) };
                }
                st.allocs += 1;
                return Some(self.inner.base + first as u64 * PAGE_SIZE);
            }
            first += count;
        }
        None
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        let first = self.page_index(pa).expect("free of a pa outside the arena");
        let mut st = self.inner.state.borrow_mut();
        for i in first..first + count {
            assert!(
                st.used[i],
                "double free of page {:#x}",
                self.inner.base + i as u64 * PAGE_SIZE
            );
            st.used[i] = false;
            let ptr = self.inner.pages[i].get();
            // SAFETY: the page is being freed; nothing else accesses it.
            unsafe { ptr.write([POISON; ENTRIES]) };
        }
        st.frees += 1;
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        let idx = self.page_index(pa).expect("table pa outside the arena");
        assert!(
            self.inner.state.borrow().used[idx],
            "access to free page {pa:#x}"
        );
        self.inner.pages[idx].get()
    }
}

/// One call on a [`RecordingTlb`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbEvent {
    /// [`TlbMaintenance::publish`].
    Publish,
    /// [`TlbMaintenance::invalidate_ipa`].
    InvalidateIpa {
        /// VMID.
        vmid: u16,
        /// IPA.
        ipa: u64,
        /// Level of the old leaf, `None` for a table descriptor.
        leaf_level: Option<u8>,
    },
    /// [`TlbMaintenance::invalidate_range`].
    InvalidateRange {
        /// VMID.
        vmid: u16,
        /// First IPA.
        ipa: u64,
        /// Bytes.
        size: u64,
    },
    /// [`TlbMaintenance::invalidate_vmid`].
    InvalidateVmid {
        /// VMID.
        vmid: u16,
    },
}

/// A model of the TLB: it caches every valid leaf it has seen and reports when the tables show
/// a different valid translation for a cached range before that range was invalidated (a
/// missing break-before-make).
struct TlbModel {
    arena: FakeArena,
    root: u64,
    root_entries: usize,
    /// base -> (level, descriptor)
    cached: BTreeMap<u64, (u8, u64)>,
}

fn level_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - u32::from(level)))
}

impl TlbModel {
    fn current(&self) -> BTreeMap<u64, (u8, u64)> {
        let mut out = BTreeMap::new();
        self.walk(self.root, 1, 0, &mut out);
        out
    }

    fn walk(&self, table: u64, level: u8, base: u64, out: &mut BTreeMap<u64, (u8, u64)>) {
        let n = if level == 1 {
            self.root_entries
        } else {
            ENTRIES
        };
        for i in 0..n {
            let desc = self.arena.read_u64(table + i as u64 * 8).unwrap_or(0);
            let ipa = base + i as u64 * level_size(level);
            if desc & 1 == 0 {
                continue;
            }
            if level < 3 && desc & 2 != 0 {
                self.walk(desc & 0x0000_ffff_ffff_f000, level + 1, ipa, out);
            } else {
                out.insert(ipa, (level, desc));
            }
        }
    }

    fn observe(&mut self, ev: TlbEvent, violations: &mut Vec<String>) {
        let current = self.current();
        for (&base, &(level, desc)) in &self.cached {
            let end = base + level_size(level);
            // Current leaves overlapping [base, end): any leaf starting below end whose end is
            // above base.
            for (&cb, &(cl, cd)) in current.range(..end).rev() {
                if cb + level_size(cl) <= base {
                    break;
                }
                if (cb, cl, cd) != (base, level, desc) {
                    violations.push(format!(
                        "at {ev:?}: TLB may hold {base:#x} L{level} {desc:#x} but tables have {cb:#x} L{cl} {cd:#x}"
                    ));
                }
            }
        }
        match ev {
            TlbEvent::Publish => {}
            TlbEvent::InvalidateIpa { ipa, .. } => {
                self.cached
                    .retain(|&b, &mut (l, _)| !(b <= ipa && ipa < b + level_size(l)));
            }
            TlbEvent::InvalidateRange { ipa, size, .. } => {
                self.cached
                    .retain(|&b, &mut (l, _)| b + level_size(l) <= ipa || b >= ipa + size);
            }
            TlbEvent::InvalidateVmid { .. } => self.cached.clear(),
        }
        for (b, v) in current {
            self.cached.insert(b, v);
        }
    }
}

/// A TLB that records every call. With [`RecordingTlb::attach_model`] it also checks
/// break-before-make at every call; violations land in [`RecordingTlb::violations`].
#[derive(Default)]
pub struct RecordingTlb {
    /// Every call, in order.
    pub events: Vec<TlbEvent>,
    /// Break-before-make violations seen by the model.
    pub violations: Vec<String>,
    model: Option<TlbModel>,
}

impl core::fmt::Debug for RecordingTlb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordingTlb")
            .field("events", &self.events)
            .field("violations", &self.violations)
            .finish()
    }
}

impl RecordingTlb {
    /// A recorder without a model.
    pub fn new() -> RecordingTlb {
        RecordingTlb::default()
    }

    /// Starts checking break-before-make for the tables rooted at `root` (`root_entries`
    /// level-1 entries) in `arena`. Call it right after creating the stage-2.
    pub fn attach_model(&mut self, arena: FakeArena, root: u64, root_entries: usize) {
        let mut m = TlbModel {
            arena,
            root,
            root_entries,
            cached: BTreeMap::new(),
        };
        m.cached = m.current();
        self.model = Some(m);
    }

    /// Forgets the recorded events.
    pub fn clear(&mut self) {
        self.events.clear();
    }

    fn record(&mut self, ev: TlbEvent) {
        uncharged(|| self.events.push(ev));
        if let Some(m) = self.model.as_mut() {
            m.observe(ev, &mut self.violations);
        }
    }
}

impl TlbMaintenance for RecordingTlb {
    fn publish(&mut self) {
        self.record(TlbEvent::Publish);
    }
    fn invalidate_ipa(&mut self, vmid: u16, ipa: u64, leaf_level: Option<u8>) {
        self.record(TlbEvent::InvalidateIpa {
            vmid,
            ipa,
            leaf_level,
        });
    }
    fn invalidate_range(&mut self, vmid: u16, ipa: u64, size: u64) {
        self.record(TlbEvent::InvalidateRange { vmid, ipa, size });
    }
    fn invalidate_vmid(&mut self, vmid: u16) {
        self.record(TlbEvent::InvalidateVmid { vmid });
    }
}

// SAFETY: as for `PhysMem` above: `page` is `table` (a pointer into the boxed slice, valid and
// unaliased while the page is allocated; every page a test donates to a pool comes from
// `alloc_pages`), and allocation hands out zeroed pages.
unsafe impl crate::pool::Ram for FakeArena {
    fn page(&self, pa: u64) -> *mut [u64; ENTRIES] {
        PhysMem::table(self, pa)
    }

    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        PhysMem::alloc_pages(self, count)
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        PhysMem::free_pages(self, pa, count)
    }
}

std::thread_local! {
    static CHARGE: core::cell::Cell<*const crate::heap::VmHeap> =
        const { core::cell::Cell::new(core::ptr::null()) };
    static OVERDRAFTS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    static SYSTEM_BYTES: core::cell::Cell<isize> = const { core::cell::Cell::new(0) };
}

/// Bytes this thread holds from the system allocator now (what the hyp's boot heap would
/// serve: allocations charged to no VM).
pub fn system_bytes() -> isize {
    SYSTEM_BYTES.with(core::cell::Cell::get)
}

fn count_system(delta: isize) {
    let _ = SYSTEM_BYTES.try_with(|b| b.set(b.get() + delta));
}

/// Charges this thread's allocations to `heap` (null: the system's), as the hyp charges a
/// CPU's; returns the heap charged before.
pub fn set_charge(heap: *const crate::heap::VmHeap) -> *const crate::heap::VmHeap {
    CHARGE.with(|c| c.replace(heap))
}

/// Runs `f` with this thread's allocations charged to no VM: what a test fake records while the
/// hyp works for a VM is the test's, not the VM's.
pub fn uncharged<R>(f: impl FnOnce() -> R) -> R {
    let prev = set_charge(core::ptr::null());
    let r = f();
    set_charge(prev);
    r
}

/// Charged allocations of this thread its heap could not serve (the system served them).
pub fn overdrafts() -> u64 {
    OVERDRAFTS.with(core::cell::Cell::get)
}

/// A global allocator for host tests, as the hyp's: an allocation charged to a VM heap
/// ([`set_charge`]) comes from that heap; a free inside a fake arena goes to the heap whose page
/// it is; everything else is the system's. An allocation the charged heap cannot serve is
/// counted ([`overdrafts`]) and served by the system.
pub struct Router;

// SAFETY: allocations come from the system or from a live VM heap (whose pages are fake-arena
// pages it owns); each free goes back where its allocation came from: a VM heap's objects lie in
// a fake arena, the system's never do (an arena is one system allocation, never split).
unsafe impl core::alloc::GlobalAlloc for Router {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let heap = CHARGE
            .try_with(core::cell::Cell::get)
            .unwrap_or(core::ptr::null());
        if !heap.is_null() {
            // SAFETY: a charged heap lives while it is charged (the charge guard's scope).
            let p = unsafe { (*heap).alloc(layout) };
            if !p.is_null() {
                return p;
            }
            let _ = OVERDRAFTS.try_with(|o| o.set(o.get() + 1));
        }
        count_system(layout.size() as isize);
        // SAFETY: forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        if in_arena(ptr as usize) {
            // SAFETY: an object inside a fake arena came from a VM heap.
            unsafe { crate::heap::dealloc(ptr, layout) }
        } else {
            count_system(-(layout.size() as isize));
            // SAFETY: forwarded: the system's allocation.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }
}
