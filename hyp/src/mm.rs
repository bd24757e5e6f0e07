//! The hyp's memory: a heap (`buddy_system_allocator::LockedHeap`, the global allocator) and a
//! page allocator (`buddy_system_allocator::FrameAllocator`) over the rest of the hyp region.
//! Pages handed out are zeroed; PA == VA at EL2 (identity map).

use buddy_system_allocator::{FrameAllocator, LockedHeap};
use core::sync::atomic::{AtomicUsize, Ordering};

use abi::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

static FRAMES: spin::Mutex<FrameAllocator<32>> = spin::Mutex::new(FrameAllocator::new());
static FREE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Hands `[start, end)` to the heap.
///
/// # Safety
/// The range must be RAM that nothing else uses, mapped read-write at EL2, for the hyp's lifetime.
pub unsafe fn init_heap(start: usize, end: usize) {
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
