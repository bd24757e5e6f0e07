//! Where gmem and `anon` memory get their physical pages: the [`PageProvider`] trait (defined
//! with the pool that implements it in the hyp, `hyp_mem::provider`), and for tests and the
//! benchmark [`FakeArena`], which keeps page contents as byte arrays and can be told to fail.

pub use hyp_mem::provider::{PageProvider, BLOCK_PAGES, BLOCK_SIZE};

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use abi::{Errno, PAGE_SIZE};

/// A fake page arena for tests and benchmarks: `capacity` pages from `base`, contents stored
/// sparsely (a page costs memory only once allocated), with failure injection.
#[derive(Debug)]
pub struct FakeArena {
    base: u64,
    capacity: u64,
    next_fresh: u64,
    free_list: Vec<u64>,
    pages: BTreeMap<u64, Vec<u8>>,
    fail: bool,
    blocks: bool,
    block_fail: bool,
    block_allocs: u64,
    bad_frees: u64,
    zero_calls: u64,
}

impl FakeArena {
    /// An arena of `capacity` pages whose first page is at physical address `base`
    /// (rounded down to a page).
    pub fn new(base: u64, capacity: u64) -> Self {
        FakeArena {
            base: base & !(PAGE_SIZE - 1),
            capacity,
            next_fresh: 0,
            free_list: Vec::new(),
            pages: BTreeMap::new(),
            fail: false,
            blocks: true,
            block_fail: false,
            block_allocs: 0,
            bad_frees: 0,
            zero_calls: 0,
        }
    }

    /// While `fail` is set every allocation fails with `ENOMEM`.
    pub fn set_fail(&mut self, fail: bool) {
        self.fail = fail;
    }

    /// Whether [`PageProvider::alloc_zeroed_block`] may succeed (the default); `false` makes the
    /// arena behave like a provider without blocks.
    pub fn set_blocks(&mut self, blocks: bool) {
        self.blocks = blocks;
    }

    /// While set, [`PageProvider::alloc_zeroed_block`] fails with `ENOMEM` (single pages still
    /// work unless [`FakeArena::set_fail`] is set too).
    pub fn set_block_fail(&mut self, fail: bool) {
        self.block_fail = fail;
    }

    /// Successful [`PageProvider::alloc_zeroed_block`] calls so far.
    pub fn block_allocs(&self) -> u64 {
        self.block_allocs
    }

    /// Pages currently handed out.
    pub fn allocated(&self) -> usize {
        self.pages.len()
    }

    /// Whether `pa` (page address) is currently handed out.
    pub fn is_allocated(&self, pa: u64) -> bool {
        self.pages.contains_key(&(pa & !(PAGE_SIZE - 1)))
    }

    /// Frees of pages that were not allocated (double frees, foreign pages).
    pub fn bad_frees(&self) -> u64 {
        self.bad_frees
    }

    /// Number of `zero_page` calls so far.
    pub fn zero_calls(&self) -> u64 {
        self.zero_calls
    }

    /// Reads the byte at physical address `pa`; `None` if its page is not allocated.
    pub fn read_byte(&self, pa: u64) -> Option<u8> {
        let page = self.pages.get(&(pa & !(PAGE_SIZE - 1)))?;
        page.get(usize::try_from(pa & (PAGE_SIZE - 1)).ok()?)
            .copied()
    }

    /// Writes the byte at physical address `pa`; `false` if its page is not allocated.
    pub fn write_byte(&mut self, pa: u64, value: u8) -> bool {
        let Some(page) = self.pages.get_mut(&(pa & !(PAGE_SIZE - 1))) else {
            return false;
        };
        let Ok(i) = usize::try_from(pa & (PAGE_SIZE - 1)) else {
            return false;
        };
        match page.get_mut(i) {
            Some(b) => {
                *b = value;
                true
            }
            None => false,
        }
    }
}

impl PageProvider for FakeArena {
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno> {
        if self.fail {
            return Err(Errno::ENOMEM);
        }
        let pa = match self.free_list.pop() {
            Some(pa) => pa,
            None => {
                if self.next_fresh >= self.capacity {
                    return Err(Errno::ENOMEM);
                }
                let off = self
                    .next_fresh
                    .checked_mul(PAGE_SIZE)
                    .ok_or(Errno::ENOMEM)?;
                let pa = self.base.checked_add(off).ok_or(Errno::ENOMEM)?;
                self.next_fresh += 1;
                pa
            }
        };
        self.pages.insert(pa, vec![0u8; PAGE_SIZE as usize]);
        Ok(pa)
    }

    /// A block from the never-used part of the arena, aligned up to 2 MiB; the fresh pages
    /// skipped for alignment go to the free list. Freed block pages are reused one by one only.
    fn alloc_zeroed_block(&mut self) -> Result<u64, Errno> {
        if self.fail || self.block_fail || !self.blocks {
            return Err(Errno::ENOMEM);
        }
        let next = self
            .next_fresh
            .checked_mul(PAGE_SIZE)
            .and_then(|off| self.base.checked_add(off))
            .ok_or(Errno::ENOMEM)?;
        let aligned = next.checked_add(BLOCK_SIZE - 1).ok_or(Errno::ENOMEM)? & !(BLOCK_SIZE - 1);
        let skip = (aligned - next) / PAGE_SIZE;
        let end = self
            .next_fresh
            .checked_add(skip)
            .and_then(|n| n.checked_add(BLOCK_PAGES))
            .ok_or(Errno::ENOMEM)?;
        if end > self.capacity {
            return Err(Errno::ENOMEM);
        }
        for i in 0..skip {
            self.free_list.push(next + i * PAGE_SIZE);
        }
        self.next_fresh = end;
        for i in 0..BLOCK_PAGES {
            self.pages
                .insert(aligned + i * PAGE_SIZE, vec![0u8; PAGE_SIZE as usize]);
        }
        self.block_allocs += 1;
        Ok(aligned)
    }

    fn free_page(&mut self, pa: u64) {
        if self.pages.remove(&pa).is_some() {
            self.free_list.push(pa);
        } else {
            self.bad_frees += 1;
        }
    }

    fn zero_page(&mut self, pa: u64) {
        self.zero_calls += 1;
        if let Some(page) = self.pages.get_mut(&pa) {
            page.fill(0);
        }
    }
}
