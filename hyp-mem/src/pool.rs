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

/// Zeroes a page that is free in a [`Pool`] already, all but its first word (the pool's link,
/// or zero): a second zeroing, after the core's, before the page is the hyp's again.
pub fn zero_in_pool<R: Ram>(ram: &R, pa: u64) {
    let page = ram.page(pa);
    // SAFETY: by the `Ram` contract the pointer is valid for writes of the whole page and
    // unaliased; the caller's pool owns the page. Word 0 is left alone.
    unsafe { page.cast::<u64>().add(1).write_bytes(0, ENTRIES - 1) };
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

/// Table pages one stage-2 map of a page or block may need at most (levels 2 and 3 below a
/// 40-bit IPA space's root).
pub const TABLES_PER_MAP: usize = 2;

/// How deep [`Pool::remove`] looks for a page just freed.
pub const REMOVE_DEPTH: usize = 8;

/// Free pages of one VM, by physical address, kept as two intrusive LIFO lists (no memory of its
/// own, whatever the host donates): loose pages and whole 2 MiB chunks, each linked through the
/// first word of its (first) page. That word is cleared when a page leaves the pool, so a page
/// taken out is all zero, as every page of the pool is but for its link.
#[derive(Debug)]
pub struct Pool<R: Ram> {
    ram: R,
    /// First loose free page (0: none; RAM never starts at PA 0).
    free: u64,
    free_len: usize,
    /// First free 2 MiB-aligned chunk of 512 pages (0: none).
    blocks: u64,
    blocks_len: usize,
    /// Host tests: allocations left before the pool runs dry (`None`: as many as it has).
    #[cfg(any(test, feature = "fake"))]
    budget: Option<u64>,
}

impl<R: Ram> Pool<R> {
    /// An empty pool over `ram`.
    pub fn new(ram: R) -> Self {
        Pool {
            ram,
            free: 0,
            free_len: 0,
            blocks: 0,
            blocks_len: 0,
            #[cfg(any(test, feature = "fake"))]
            budget: None,
        }
    }

    /// Host tests: a memcache that runs dry after `n` more allocations (a page, a chunk or a
    /// page lent to the heap each count one), as a real one does when its pages are used up;
    /// `None`: as many as it has.
    #[cfg(any(test, feature = "fake"))]
    pub fn fail_after(&mut self, n: Option<u64>) {
        self.budget = n;
    }

    /// Allocations the pool can still make (its pages, or a host test's budget).
    fn allocations_left(&self) -> usize {
        #[cfg(any(test, feature = "fake"))]
        if let Some(n) = self.budget {
            return usize::try_from(n).unwrap_or(usize::MAX);
        }
        usize::MAX
    }

    /// Whether the next allocation may go ahead (a host test's budget may say no).
    fn may_allocate(&mut self) -> bool {
        #[cfg(any(test, feature = "fake"))]
        match &mut self.budget {
            Some(0) => return false,
            Some(n) => *n -= 1,
            None => {}
        }
        true
    }

    /// Whether `tables` table pages can be allocated now (a host test's budget counted).
    pub fn can_supply_tables(&self, tables: usize) -> bool {
        tables == 0
            || (self.allocations_left() >= tables
                && (self.free_len >= tables || self.blocks_len > 0))
    }

    /// Whether a guest fault's stage-2 map cannot run short of its `tables` table pages (at most
    /// [`TABLES_PER_MAP`]; `Stage2::tables_needed`) beside its data page or 2 MiB chunk. A
    /// fault checks this before it takes anything, so that it completes or changes nothing
    /// (the data page's own allocation fails cleanly); with its tables there it needs nothing
    /// here, and a fault that maps nothing (a memory fault) is not held up.
    pub fn can_map_fault(&self, tables: usize) -> bool {
        let t = tables.min(TABLES_PER_MAP);
        t == 0
            || (self.allocations_left() > t
                && (self.free_len > t
                    || self.blocks_len >= 2
                    || (self.blocks_len >= 1 && self.free_len >= t)))
    }

    fn link_word(&self, pa: u64) -> *mut u64 {
        self.ram.page(pa).cast::<u64>()
    }

    /// Reads and clears the link of a pool page.
    fn unlink_word(&self, pa: u64) -> u64 {
        let w = self.link_word(pa);
        // SAFETY: `pa` is a page of the pool (the caller took it off a list), which the pool
        // owns; by the `Ram` contract the pointer is valid and unaliased.
        unsafe {
            let next = w.read_volatile();
            w.write_volatile(0);
            next
        }
    }

    fn set_link(&self, pa: u64, next: u64) {
        // SAFETY: `pa` is a page the caller hands to the pool (it owns it); see `unlink_word`.
        unsafe { self.link_word(pa).write_volatile(next) };
    }

    fn push_page(&mut self, pa: u64) {
        self.set_link(pa, self.free);
        self.free = pa;
        self.free_len += 1;
    }

    fn push_block(&mut self, pa: u64) {
        self.set_link(pa, self.blocks);
        self.blocks = pa;
        self.blocks_len += 1;
    }

    fn pop_loose(&mut self) -> Option<u64> {
        let p = self.free;
        if p == 0 {
            return None;
        }
        self.free = self.unlink_word(p);
        self.free_len -= 1;
        Some(p)
    }

    fn pop_block(&mut self) -> Option<u64> {
        let b = self.blocks;
        if b == 0 {
            return None;
        }
        self.blocks = self.unlink_word(b);
        self.blocks_len -= 1;
        Some(b)
    }

    /// Takes a donated run of pages (zeroing them), keeping aligned 2 MiB chunks whole. The
    /// caller has taken the pages from their owner (the host) and checked the run.
    pub fn add_run(&mut self, pa: u64, pages: u64) {
        zero(&self.ram, pa, pages);
        let end = pa.saturating_add(pages.saturating_mul(PAGE_SIZE));
        let mut p = pa;
        while p < end {
            if p.is_multiple_of(BLOCK_SIZE) && p.saturating_add(BLOCK_SIZE) <= end {
                self.push_block(p);
                p += BLOCK_SIZE;
            } else {
                self.push_page(p);
                p += PAGE_SIZE;
            }
        }
    }

    /// Walks both lists: `(loose pages, chunks)` found by following the links (at most the
    /// counts, plus one), for checks.
    pub fn walk_counts(&self) -> (usize, usize) {
        let walk = |mut p: u64, max: usize| {
            let mut n = 0;
            while p != 0 && n <= max {
                n += 1;
                // SAFETY: a page on a list is the pool's; see `unlink_word`.
                p = unsafe { self.link_word(p).read_volatile() };
            }
            n
        };
        (
            walk(self.free, self.free_len),
            walk(self.blocks, self.blocks_len),
        )
    }

    /// Free pages left (as far as a host test's budget lets them be taken).
    pub fn free_pages(&self) -> usize {
        (self.free_len + self.blocks_len * BLOCK_PAGES as usize).min(self.allocations_left())
    }

    /// Free loose pages and free 2 MiB chunks.
    pub fn stats(&self) -> (usize, usize) {
        (self.free_len, self.blocks_len)
    }

    fn pop_page(&mut self) -> Option<u64> {
        if let Some(p) = self.pop_loose() {
            return Some(p);
        }
        let b = self.pop_block()?;
        // Break a chunk: hand out its first page, keep the rest loose (in address order).
        for i in (1..BLOCK_PAGES).rev() {
            self.push_page(b + i * PAGE_SIZE);
        }
        Some(b)
    }

    /// One free page (breaking a chunk if need be), zeroed, out of the pool for the hyp's own
    /// use (the VM's metadata heap), or `None`.
    pub fn take_page(&mut self) -> Option<u64> {
        self.pop_page()
    }

    /// Takes one free page (`block = false`) or one free 2 MiB chunk out of the pool for good
    /// (it goes back to the host): its physical address, or `None` if there is none. Pool pages
    /// are zero already.
    pub fn take_free(&mut self, block: bool) -> Option<u64> {
        if block {
            self.pop_block()
        } else {
            self.pop_loose()
        }
    }

    /// Takes a page just freed into the pool out for good (it goes back to the host). `false` if
    /// it is not among the last [`REMOVE_DEPTH`] loose pages freed (Trust rule 7: found at once,
    /// without a search of the pool; an unmap may free a table page after the data page).
    pub fn remove(&mut self, pa: u64) -> bool {
        if pa == 0 {
            return false;
        }
        let mut prev = 0u64;
        let mut cur = self.free;
        for _ in 0..REMOVE_DEPTH {
            if cur == 0 {
                return false;
            }
            if cur == pa {
                let next = self.unlink_word(cur);
                if prev == 0 {
                    self.free = next;
                } else {
                    self.set_link(prev, next);
                }
                self.free_len -= 1;
                return true;
            }
            prev = cur;
            // SAFETY: `cur` is a page of the loose list, the pool's; see `unlink_word`.
            cur = unsafe { self.link_word(cur).read_volatile() };
        }
        false
    }

    /// Lends one free page to `heap`'s reserve (a VM's metadata heap); `false` if the pool is
    /// empty. The page is the heap's until [`crate::heap::VmHeap::take_page`] hands it back
    /// (to [`PageProvider::free_page`]).
    pub fn lend_page(&mut self, heap: &crate::heap::VmHeap) -> bool {
        if !self.may_allocate() {
            return false;
        }
        let Some(pa) = self.pop_page() else {
            return false;
        };
        // SAFETY: a page taken off the pool is the pool owner's alone, zeroed (its link just
        // cleared) and, by the `Ram` contract, reached through a valid, unaliased pointer for the
        // whole page, 4 KiB aligned; it is the heap's from now on.
        unsafe { heap.give_page(pa, self.ram.page(pa).cast()) };
        true
    }

    /// Takes any free run out, for teardown: a chunk `(pa, 512)` or a page `(pa, 1)`, zeroed.
    pub fn take_any(&mut self) -> Option<(u64, u64)> {
        if let Some(b) = self.pop_block() {
            return Some((b, BLOCK_PAGES));
        }
        self.pop_loose().map(|p| (p, 1))
    }
}

impl<R: Ram> PageProvider for Pool<R> {
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno> {
        if !self.may_allocate() {
            return Err(Errno::ENOMEM);
        }
        self.pop_page().ok_or(Errno::ENOMEM)
    }

    fn free_page(&mut self, pa: u64) {
        self.push_page(pa);
    }

    fn zero_page(&mut self, pa: u64) {
        zero(&self.ram, pa, 1);
    }

    fn alloc_zeroed_block(&mut self) -> Result<u64, Errno> {
        if !self.may_allocate() {
            return Err(Errno::ENOMEM);
        }
        self.pop_block().ok_or(Errno::ENOMEM)
    }

    fn free_block(&mut self, pa: u64) {
        self.push_block(pa);
    }

    fn may_have_block(&self) -> bool {
        self.blocks != 0
    }
}

// SAFETY: single pages come from the pool, which holds only zeroed pages the caller owns and
// hands in (reached through `Ram::page`, whose contract is `PhysMem::table`'s); the two-page root
// comes from `Ram::alloc_pages`, zeroed and 8 KiB aligned. Pages freed here are zeroed before
// reuse.
unsafe impl<R: Ram> PhysMem for Pool<R> {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        match count {
            1 if self.may_allocate() => self.pop_page(),
            1 => None,
            _ => self.ram.alloc_pages(count),
        }
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        match count {
            1 => {
                zero(&self.ram, pa, 1);
                self.push_page(pa);
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
        ram.write_u64(t + 8, 5);
        PhysMem::free_pages(&mut pool, t, 1);
        assert_eq!(
            ram.read_u64(t + 8),
            Some(0),
            "zeroed but for the pool's link"
        );
        assert!(pool.remove(t), "the page just freed is found");
        assert!(!pool.remove(t), "only once");
        assert!(!pool.remove(0x1234_5000), "not a pool page");
        pool.free_block(b);
        assert!(
            !pool.remove(b + 3 * PAGE_SIZE),
            "a page of a chunk is not the last freed"
        );
        // Loose pages go first; then a page from a chunk breaks it and the rest stay loose.
        for _ in 0..255 {
            assert!(pool.take_page().is_some());
        }
        assert_eq!(pool.stats(), (0, 1));
        assert_eq!(pool.take_page(), Some(b));
        assert_eq!(pool.stats(), (511, 0));
        assert_eq!(pool.take_free(true), None);
        assert_eq!(pool.take_free(false), Some(b + PAGE_SIZE));
        assert_eq!(drain(&mut pool, &ram), 510);
        assert_eq!(pool.free_pages(), 0);
    }

    /// Empties a pool, checking each run comes out all zero (links cleared): the pages.
    fn drain(pool: &mut Pool<FakeArena>, ram: &FakeArena) -> usize {
        let mut n = 0;
        while let Some((pa, pages)) = pool.take_any() {
            // The link (word 0) is cleared; a word after it and the last stay zero.
            for p in (0..pages).map(|i| pa + i * PAGE_SIZE) {
                for w in [0, 8, PAGE_SIZE - 8] {
                    assert_eq!(ram.read_u64(p + w), Some(0), "{p:#x} + {w} not zero");
                }
            }
            n += pages as usize;
        }
        n
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
        assert_eq!(drain(&mut pool, &ram), 8);
    }
}
