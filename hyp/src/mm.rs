//! The hyp's memory: the global allocator ([`Router`]), over the boot heap
//! (`buddy_system_allocator::LockedHeap`) and the VMs' heaps (`hyp_mem::heap::VmHeap`, in pages
//! their hosts donated), and a page allocator (`buddy_system_allocator::FrameAllocator`) over
//! the rest of the hyp region. Pages handed out are zeroed; PA == VA at EL2 (identity map).
//!
//! An allocation is charged to the VM this CPU works for ([`set_charge`], which the portable
//! calls set around each call they make for a VM) and comes from that VM's heap; with no
//! charge, from the boot heap. A free goes where its memory came from: the boot heap's range,
//! or the VM heap the page's header names.

use buddy_system_allocator::{FrameAllocator, LockedHeap};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use abi::PAGE_SIZE;
use board::layout::MAX_CPUS;
use hyp_mem::heap::VmHeap;

use crate::arch;

const PAGE: usize = PAGE_SIZE as usize;

/// The global allocator: charged allocations from the charged VM's heap, the rest from the boot
/// heap.
pub struct Router;

#[global_allocator]
static ROUTER: Router = Router;

static HEAP: LockedHeap<32> = LockedHeap::empty();
/// The boot heap's range `[start, end)`.
static HEAP_START: AtomicUsize = AtomicUsize::new(0);
static HEAP_END: AtomicUsize = AtomicUsize::new(0);
/// The VM heap each CPU's allocations are charged to (null: none).
static CHARGE: [AtomicPtr<VmHeap>; MAX_CPUS] = [const { AtomicPtr::new(null_mut()) }; MAX_CPUS];
/// Charged allocations the charged heap could not serve (the boot heap did).
static OVERDRAFTS: AtomicU64 = AtomicU64::new(0);

fn charge_slot() -> Option<&'static AtomicPtr<VmHeap>> {
    CHARGE.get(arch::cpu::this_cpu().cpu())
}

/// Charges this CPU's allocations to `heap` (null: the boot heap); returns the heap charged
/// before. The caller keeps `heap` alive while it is charged.
pub fn set_charge(heap: *const VmHeap) -> *const VmHeap {
    match charge_slot() {
        Some(slot) => slot.swap(heap.cast_mut(), Ordering::Relaxed),
        None => core::ptr::null(),
    }
}

/// Charged allocations the charged heap could not serve, since boot.
pub fn overdrafts() -> u64 {
    OVERDRAFTS.load(Ordering::Relaxed)
}

// SAFETY: every allocation comes from the boot heap or from a live VM heap, and each free goes
// back where it came from: the boot heap's objects lie in its range, and a VM heap's never do
// (its pages are donated host pages, outside the hyp region).
unsafe impl GlobalAlloc for Router {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let heap = charge_slot().map_or(null_mut(), |s| s.load(Ordering::Relaxed));
        if !heap.is_null() {
            // SAFETY: a charged heap stays alive while it is charged (the portable calls'
            // charge guard, inside the hyp's lock).
            let p = unsafe { (*heap).alloc(layout) };
            if !p.is_null() {
                return p;
            }
            OVERDRAFTS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { HEAP.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let a = ptr as usize;
        if (HEAP_START.load(Ordering::Relaxed)..HEAP_END.load(Ordering::Relaxed)).contains(&a) {
            // SAFETY: forwarded: the boot heap's object.
            unsafe { HEAP.dealloc(ptr, layout) }
        } else {
            // SAFETY: outside the boot heap, the object came from a VM heap.
            unsafe { hyp_mem::heap::dealloc(ptr, layout) }
        }
    }
}

static FRAMES: spin::Mutex<FrameAllocator<32>> = spin::Mutex::new(FrameAllocator::new());
static FREE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Hands `[start, end)` to the heap.
///
/// # Safety
/// The range must be RAM that nothing else uses, mapped read-write at EL2, for the hyp's lifetime.
pub unsafe fn init_heap(start: usize, end: usize) {
    HEAP_START.store(start, Ordering::Relaxed);
    HEAP_END.store(end, Ordering::Relaxed);
    // SAFETY: forwarded from the caller.
    unsafe { HEAP.lock().init(start, end - start) };
}

/// Hands the pages of `[start, end)` to the page allocator (both page-aligned).
pub fn init_frames(start: usize, end: usize) {
    let (first, last) = (start / PAGE, end / PAGE);
    FRAMES.lock().add_frame(first, last);
    FREE_PAGES.fetch_add(last - first, Ordering::Relaxed);
}

/// Allocates `count` contiguous zeroed pages, aligned to `count` rounded up to a power of two.
pub fn alloc_pages(count: usize) -> Option<usize> {
    let frame = FRAMES.lock().alloc(count)?;
    FREE_PAGES.fetch_sub(count, Ordering::Relaxed);
    let pa = frame * PAGE;
    // SAFETY: the allocator just handed out these pages; they are RAM in the hyp region,
    // identity-mapped read-write.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, count * PAGE) };
    Some(pa)
}

/// Returns pages from [`alloc_pages`].
pub fn free_pages(pa: usize, count: usize) {
    FRAMES.lock().dealloc(pa / PAGE, count);
    FREE_PAGES.fetch_add(count, Ordering::Relaxed);
}

/// Pages currently free in the page allocator.
pub fn free_page_count() -> usize {
    FREE_PAGES.load(Ordering::Relaxed)
}

/// Bytes of heap in use.
pub fn heap_used() -> usize {
    HEAP.lock().stats_alloc_actual()
}
