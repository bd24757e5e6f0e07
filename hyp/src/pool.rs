//! The hyp's RAM for the portable pools and tables of `hyp_mem::pool`: every page through the
//! EL2 identity map, the hyp's own pages from its page allocator (`mm`).

use hyp_mem::pool::{HypTables, Pool, Ram};
use hyp_mem::stage2::ENTRIES;

use crate::mm;

/// RAM as the hyp reaches it at EL2.
#[derive(Clone, Copy, Debug, Default)]
pub struct HypRam;

// SAFETY: RAM is identity-mapped read-write at EL2, so `pa as *mut _` is the page; callers own
// the pages they pass (pool pages, the hyp's own); `mm::alloc_pages` hands out zeroed pages
// aligned to their count, used by nothing else until freed.
unsafe impl Ram for HypRam {
    fn page(&self, pa: u64) -> *mut [u64; ENTRIES] {
        pa as *mut [u64; ENTRIES]
    }

    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        mm::alloc_pages(count).map(|pa| pa as u64)
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        mm::free_pages(pa as usize, count);
    }
}

/// A VM's page pool (host-donated pages) over the hyp's RAM.
pub type VmPool = Pool<HypRam>;

/// The hyp's own table pages (the host stage-2).
pub type HypPages = HypTables<HypRam>;

/// An empty pool.
pub fn new_pool() -> VmPool {
    Pool::new(HypRam)
}
