//! Where a VM's memory gets its physical pages: [`PageProvider`], the interface the policy core
//! (`hyp-core`) allocates gmem and `anon` pages through. The hyp backs it with the VM's pool of
//! host-donated pages ([`crate::pool::Pool`]); tests use fakes.

use abi::{Errno, PAGE_SIZE};

/// Size of a stage-2 block: 2 MiB.
pub const BLOCK_SIZE: u64 = 2 << 20;
/// 4 KiB pages in a [`BLOCK_SIZE`] block: 512.
pub const BLOCK_PAGES: u64 = BLOCK_SIZE / PAGE_SIZE;

/// A source of 4 KiB physical pages, and optionally of 2 MiB blocks of them.
pub trait PageProvider {
    /// A zeroed page, by physical address (page aligned). `ENOMEM` when the pool is empty: the
    /// core reports that as `NeedPages` (`hyp_core::FaultResolution`) on guest faults, and as
    /// `Err(ENOMEM)` elsewhere, so the hyp can ask the host for more pages and retry.
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno>;
    /// Returns a page obtained from [`PageProvider::alloc_zeroed_page`]. The core zeroes a page
    /// that held guest data before it frees it (reclaim rule).
    fn free_page(&mut self, pa: u64);
    /// Fills a page with zeroes.
    fn zero_page(&mut self, pa: u64);
    /// [`BLOCK_PAGES`] physically contiguous zeroed pages, [`BLOCK_SIZE`] aligned, by the
    /// physical address of the first. `ENOMEM` when there is no such chunk (the default): the
    /// core then falls back to single pages, so a provider without blocks never makes a fault
    /// report `NeedPages` (`hyp_core::FaultResolution`) by itself. The pages of a block may later be
    /// freed one by one with [`PageProvider::free_page`] (a punch of one page of a block frees
    /// just that page), or together with [`PageProvider::free_block`].
    fn alloc_zeroed_block(&mut self) -> Result<u64, Errno> {
        Err(Errno::ENOMEM)
    }
    /// Whether [`PageProvider::alloc_zeroed_block`] might succeed: a cheap hint that lets the
    /// fault path skip the block checks when there is no chunk to give (default: it might).
    fn may_have_block(&self) -> bool {
        true
    }
    /// Returns [`BLOCK_PAGES`] physically contiguous, [`BLOCK_SIZE`] aligned pages starting at
    /// `pa`, each obtained from this provider (as a block or one by one) and already zeroed by
    /// the core. The default frees them one by one with [`PageProvider::free_page`].
    fn free_block(&mut self, pa: u64) {
        for i in 0..BLOCK_PAGES {
            self.free_page(pa.saturating_add(i * PAGE_SIZE));
        }
    }
}
