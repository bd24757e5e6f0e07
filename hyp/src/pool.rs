//! A VM's page pool: pages the host donated, handed out for the VM's gmem and `anon` memory
//! (as `hyp_core::PageProvider`) and for its stage-2 tables (as `hyp_mem::stage2::PhysMem`).
//!
//! Donated runs are kept as whole 2 MiB-aligned chunks where they allow it, so a uniform gmem
//! range can be backed (and mapped) as one block; single pages come from the loose pages first,
//! then from breaking a chunk. Pages are zeroed when they enter the pool and stay zero while in
//! it (the core zeroes a page before it frees one that held data; table pages are zeroed here on
//! free), so the fault path never zeroes. The 8 KiB concatenated stage-2 root comes from the
//! hyp's own page allocator.

use alloc::vec::Vec;

use abi::{Errno, PAGE_SIZE};
use hyp_core::PageProvider;
use hyp_mem::stage2::{PhysMem, ENTRIES};

use crate::mm;

const PAGE: usize = PAGE_SIZE as usize;
const BLOCK: u64 = 2 << 20;
const BLOCK_PAGES: u64 = BLOCK / PAGE_SIZE;

/// Free pages of one VM, by physical address.
#[derive(Debug, Default)]
pub struct VmPool {
    /// Loose free pages.
    free: Vec<u64>,
    /// Free 2 MiB-aligned chunks of 512 pages.
    blocks: Vec<u64>,
}

fn zero(pa: u64, len: usize) {
    // SAFETY: `pa` is RAM owned by this pool (donated or allocated to it), identity-mapped
    // read-write at EL2, not mapped by any guest while in the pool.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, len) };
}

impl VmPool {
    /// Takes a donated run of pages (zeroing them), keeping aligned 2 MiB chunks whole.
    pub fn add_run(&mut self, pa: u64, pages: u64) {
        zero(pa, (pages * PAGE_SIZE) as usize);
        let end = pa + pages * PAGE_SIZE;
        let mut p = pa;
        while p < end {
            if p.is_multiple_of(BLOCK) && p + BLOCK <= end {
                self.blocks.push(p);
                p += BLOCK;
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

    /// Takes a free page out of the pool for good (it goes back to the host). `false` if it
    /// is not a free page of this pool.
    pub fn remove(&mut self, pa: u64) -> bool {
        // A page just freed is at the end of the list: found at once (Trust rule 7).
        if let Some(i) = self.free.iter().rposition(|&p| p == pa) {
            self.free.swap_remove(i);
        } else if let Some(i) = self
            .blocks
            .iter()
            .position(|&b| (b..b + BLOCK).contains(&pa))
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

    /// Free loose pages and free 2 MiB chunks.
    pub fn stats(&self) -> (usize, usize) {
        (self.free.len(), self.blocks.len())
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

    /// Empties the pool, for teardown: every free page, zeroed.
    pub fn drain(&mut self) -> Vec<u64> {
        let mut out = core::mem::take(&mut self.free);
        for b in core::mem::take(&mut self.blocks) {
            out.extend((0..BLOCK_PAGES).map(|k| b + k * PAGE_SIZE));
        }
        out
    }
}

impl PageProvider for VmPool {
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno> {
        self.pop_page().ok_or(Errno::ENOMEM)
    }

    fn free_page(&mut self, pa: u64) {
        self.free.push(pa);
    }

    fn zero_page(&mut self, pa: u64) {
        zero(pa, PAGE);
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

// SAFETY: single pages come from the pool, which holds only zeroed, identity-mapped RAM pages no
// one else uses; the two-page root comes from the hyp allocator, zeroed and aligned to 8 KiB.
// `table` is the identity map. Pages freed here are zeroed before reuse.
unsafe impl PhysMem for VmPool {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        match count {
            1 => self.pop_page(),
            _ => mm::alloc_pages(count).map(|pa| pa as u64),
        }
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        match count {
            1 => {
                zero(pa, PAGE);
                self.free.push(pa);
            }
            _ => mm::free_pages(pa as usize, count),
        }
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        pa as *mut [u64; ENTRIES]
    }
}
