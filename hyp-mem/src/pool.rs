//! A VM's page pool: the pages the host donated for it, handed out for its gmem and `anon`
//! memory (as [`PageProvider`]) and for its stage-2 tables (as [`PhysMem`]); and the hyp's own
//! table pages ([`HypTables`]). Both reach RAM through a [`Ram`], which the hyp backs with its
//! identity map and its page allocator, and host tests with a fake arena.
//!
//! Donated runs are kept as whole 2 MiB-aligned chunks where they allow it, so a uniform gmem
//! range can be backed (and mapped) as one block; single pages come from the loose pages first,
//! then from breaking a chunk. Pages are zeroed when they enter the pool and stay zero while in
//! it (the core zeroes a page before it frees one that held data; table pages are zeroed here on
//! free), so the fault path never zeroes. A stage-2 root (two pages, 8 KiB aligned) comes from
//! the hyp's own allocator.

use alloc::vec::Vec;

use abi::{Errno, PAGE_SIZE};

use crate::provider::{PageProvider, BLOCK_PAGES, BLOCK_SIZE};
use crate::stage2::{PhysMem, ENTRIES};

/// RAM as the hyp reaches it: each page by a pointer, and the hyp's own page allocator.
///
/// # Safety
///
/// Implementors promise, for every page-aligned `pa` of RAM that the caller owns (returned by
/// [`Ram::alloc_pages`] and not yet freed, or donated to a [`Pool`] and not taken back), that
/// [`Ram::page`] returns a non-null, 8-byte-aligned pointer valid for volatile reads and writes
/// of the whole page, which no Rust reference aliases (the hardware table walker may read it).
/// [`Ram::alloc_pages`] hands out zeroed pages, aligned to `count` rounded up to a power of two,
/// that nothing else uses until [`Ram::free_pages`].
pub unsafe trait Ram {
    /// The page at `pa` (4 KiB aligned).
    fn page(&self, pa: u64) -> *mut [u64; ENTRIES];
    /// `count` contiguous zeroed pages of the hyp's own memory, or `None`.
    fn alloc_pages(&mut self, count: usize) -> Option<u64>;
    /// Returns pages from [`Ram::alloc_pages`], with the same `count`.
    fn free_pages(&mut self, pa: u64, count: usize);
}

/// Zeroes `pages` pages from `pa` through `ram`. The caller owns the pages (and no mapping
/// that another world could use while they are zeroed remains).
pub fn zero<R: Ram>(ram: &R, pa: u64, pages: u64) {
    for i in 0..pages {
        let page = ram.page(pa.saturating_add(i * PAGE_SIZE));
        // SAFETY: by the `Ram` contract the pointer is valid for writes of the whole page and
        // unaliased; the caller owns the page (a pool page, or one it is about to hand in).
        // `write_bytes` is a plain memset (a volatile write of a page-sized array would build
        // the array on the stack and copy it).
        unsafe { page.cast::<u64>().write_bytes(0, ENTRIES) };
    }
}

/// The hyp's own table pages (the host stage-2's), from [`Ram::alloc_pages`].
#[derive(Debug, Default, Clone)]
pub struct HypTables<R: Ram>(pub R);

// SAFETY: pages come from `Ram::alloc_pages` (zeroed, aligned, used by nothing else until
// freed here) and are reached through `Ram::page`, whose contract is `PhysMem::table`'s.
unsafe impl<R: Ram> PhysMem for HypTables<R> {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        self.0.alloc_pages(count)
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        self.0.free_pages(pa, count);
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        self.0.page(pa)
    }
}

/// Free pages of one VM, by physical address.
#[derive(Debug)]
pub struct Pool<R: Ram> {
    ram: R,
    /// Loose free pages (a page just freed is at the end).
    free: Vec<u64>,
    /// Free 2 MiB-aligned chunks of 512 pages.
    blocks: Vec<u64>,
}

impl<R: Ram> Pool<R> {
    /// An empty pool over `ram`.
    pub fn new(ram: R) -> Self {
        Pool {
            ram,
            free: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// Takes a donated run of pages (zeroing them), keeping aligned 2 MiB chunks whole. The
    /// caller has taken the pages from their owner (the host) and checked the run.
    pub fn add_run(&mut self, pa: u64, pages: u64) {
        zero(&self.ram, pa, pages);
        let end = pa.saturating_add(pages.saturating_mul(PAGE_SIZE));
        let mut p = pa;
        while p < end {
            if p.is_multiple_of(BLOCK_SIZE) && p.saturating_add(BLOCK_SIZE) <= end {
                self.blocks.push(p);
                p += BLOCK_SIZE;
            } else {
                self.free.push(p);
                p += PAGE_SIZE;
            }
        }
    }

    /// Free pages left.
    pub fn free_pages(&self) -> usize {
        self.free.len() + self.blocks.len() * BLOCK_PAGES as usize
    }

    /// Free loose pages and free 2 MiB chunks.
    pub fn stats(&self) -> (usize, usize) {
        (self.free.len(), self.blocks.len())
    }

    fn pop_page(&mut self) -> Option<u64> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        let b = self.blocks.pop()?;
        // Break a chunk: hand out its first page, keep the rest loose.
        self.free
            .extend((1..BLOCK_PAGES).rev().map(|i| b + i * PAGE_SIZE));
        Some(b)
    }

    /// Takes one free page (`block = false`) or one free 2 MiB chunk out of the pool for good
    /// (it goes back to the host): its physical address, or `None` if there is none. Pool pages
    /// are zero already.
    pub fn take_free(&mut self, block: bool) -> Option<u64> {
        if block {
            self.blocks.pop()
        } else {
            self.free.pop()
        }
    }

    /// Takes a free page out of the pool for good (it goes back to the host). `false` if it is
    /// not a free page of this pool. A page just freed is found at once (Trust rule 7).
    pub fn remove(&mut self, pa: u64) -> bool {
        if let Some(i) = self.free.iter().rposition(|&p| p == pa) {
            self.free.swap_remove(i);
        } else if let Some(i) = self
            .blocks
            .iter()
            .position(|&b| (b..b + BLOCK_SIZE).contains(&pa))
        {
            let b = self.blocks.swap_remove(i);
            self.free.extend(
                (0..BLOCK_PAGES)
                    .map(|k| b + k * PAGE_SIZE)
                    .filter(|&p| p != pa),
            );
        } else {
            return false;
        }
        true
    }

    /// Empties the pool, for teardown: every free page, zeroed.
    pub fn drain(&mut self) -> Vec<u64> {
        let mut out = core::mem::take(&mut self.free);
        for b in core::mem::take(&mut self.blocks) {
            out.extend((0..BLOCK_PAGES).map(|k| b + k * PAGE_SIZE));
        }
        out
    }
}

impl<R: Ram> PageProvider for Pool<R> {
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno> {
        self.pop_page().ok_or(Errno::ENOMEM)
    }

    fn free_page(&mut self, pa: u64) {
        self.free.push(pa);
    }

    fn zero_page(&mut self, pa: u64) {
        zero(&self.ram, pa, 1);
    }

    fn alloc_zeroed_block(&mut self) -> Result<u64, Errno> {
        self.blocks.pop().ok_or(Errno::ENOMEM)
    }

    fn free_block(&mut self, pa: u64) {
        self.blocks.push(pa);
    }

    fn may_have_block(&self) -> bool {
        !self.blocks.is_empty()
    }
}

// SAFETY: single pages come from the pool, which holds only zeroed pages the caller owns and
// hands in (reached through `Ram::page`, whose contract is `PhysMem::table`'s); the two-page root
// comes from `Ram::alloc_pages`, zeroed and 8 KiB aligned. Pages freed here are zeroed before
// reuse.
unsafe impl<R: Ram> PhysMem for Pool<R> {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        match count {
            1 => self.pop_page(),
            _ => self.ram.alloc_pages(count),
        }
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        match count {
            1 => {
                zero(&self.ram, pa, 1);
                self.free.push(pa);
            }
            _ => self.ram.free_pages(pa, count),
        }
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        self.ram.page(pa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeArena;
    use crate::stage2::{IpaSize, S2Attrs, Stage2};

    #[test]
    fn donated_runs_keep_whole_chunks_and_pages_come_back_zeroed() {
        let ram = FakeArena::new(3 * BLOCK_PAGES as usize);
        let mut host = ram.clone();
        // A run from the middle of one chunk to the end of the next: one chunk kept whole.
        let base = PhysMem::alloc_pages(&mut host, 2 * BLOCK_PAGES as usize).unwrap();
        assert!(base.is_multiple_of(BLOCK_SIZE));
        ram.write_u64(base + BLOCK_SIZE + 8, 0x77);
        let mut pool = Pool::new(ram.clone());
        pool.add_run(base + 256 * PAGE_SIZE, 256 + BLOCK_PAGES);
        assert_eq!(pool.stats(), (256, 1));
        assert_eq!(pool.free_pages(), 256 + 512);
        assert_eq!(
            ram.read_u64(base + BLOCK_SIZE + 8),
            Some(0),
            "zeroed on donation"
        );
        // Blocks for the core, pages for tables; a freed table page is zero again.
        assert!(pool.may_have_block());
        let b = pool.alloc_zeroed_block().unwrap();
        assert_eq!(b, base + BLOCK_SIZE);
        assert!(!pool.may_have_block());
        let t = PhysMem::alloc_pages(&mut pool, 1).unwrap();
        ram.write_u64(t, 5);
        PhysMem::free_pages(&mut pool, t, 1);
        assert_eq!(ram.read_u64(t), Some(0));
        assert!(pool.remove(t), "the page just freed is found");
        assert!(!pool.remove(t), "only once");
        assert!(!pool.remove(0x1234_5000), "not a pool page");
        pool.free_block(b);
        // Taking one page out of a chunk breaks it.
        assert!(pool.remove(b + 3 * PAGE_SIZE));
        assert_eq!(pool.stats(), (255 + 511, 0));
        assert_eq!(pool.take_free(true), None);
        assert!(pool.take_free(false).is_some());
        assert_eq!(pool.drain().len(), 255 + 511 - 1);
        assert_eq!(pool.free_pages(), 0);
    }

    #[test]
    fn a_stage2_over_a_pool_takes_its_tables_from_it() {
        let ram = FakeArena::new(64);
        let mut host = ram.clone();
        let run = PhysMem::alloc_pages(&mut host, 8).unwrap();
        let mut pool = Pool::new(ram.clone());
        pool.add_run(run, 8);
        let mut s2 = Stage2::new(pool, crate::fake::RecordingTlb::new(), 1, IpaSize::Bits40)
            .unwrap_or_else(|_| panic!("no root"));
        s2.map(0x8000_0000, run, PAGE_SIZE, S2Attrs::NORMAL_RWX)
            .unwrap();
        // Two table pages (levels 2 and 3) came from the pool; the root from the hyp.
        assert_eq!(s2.mm().free_pages(), 6);
        let (mut pool, _) = s2.destroy();
        assert_eq!(pool.free_pages(), 8, "the tables went back, zeroed");
        assert_eq!(pool.drain().len(), 8);
    }
}
