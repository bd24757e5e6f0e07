//! A VM's page pool: pages the host donated, handed out for the VM's gmem and `anon` memory
//! (as `hyp_core::PageProvider`) and for its stage-2 tables (as `hyp_mem::stage2::PhysMem`).
//!
//! Pages are zeroed when they enter the pool and stay zero while in it (the core zeroes a page
//! before it frees one that held data; table pages are zeroed here on free), so the fault path
//! never zeroes. The 8 KiB concatenated stage-2 root comes from the hyp's own page allocator.

use alloc::vec::Vec;

use abi::{Errno, PAGE_SIZE};
use hyp_core::PageProvider;
use hyp_mem::stage2::{PhysMem, ENTRIES};

use crate::mm;

const PAGE: usize = PAGE_SIZE as usize;

/// Free pages of one VM, by physical address.
#[derive(Debug, Default)]
pub struct VmPool {
    free: Vec<u64>,
    /// Pages the pool got from the host, in total (free or in use).
    donated: usize,
}

fn zero(pa: u64) {
    // SAFETY: `pa` is a page of RAM owned by this pool (donated or allocated to it),
    // identity-mapped read-write at EL2, not mapped by any guest while in the pool.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE) };
}

impl VmPool {
    /// Takes a donated page (zeroing it).
    pub fn add(&mut self, pa: u64) {
        zero(pa);
        self.free.push(pa);
        self.donated += 1;
    }

    /// Free pages left.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Pages the pool has been given.
    pub fn donated(&self) -> usize {
        self.donated
    }

    /// Takes a free page out of the pool for good (it goes back to the host). `false` if it
    /// is not a free page of this pool.
    pub fn remove(&mut self, pa: u64) -> bool {
        match self.free.iter().position(|&p| p == pa) {
            Some(i) => {
                self.free.swap_remove(i);
                self.donated = self.donated.saturating_sub(1);
                true
            }
            None => false,
        }
    }

    /// Empties the pool, for teardown: every page, zeroed.
    pub fn drain(&mut self) -> Vec<u64> {
        self.donated = 0;
        core::mem::take(&mut self.free)
    }
}

impl PageProvider for VmPool {
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno> {
        self.free.pop().ok_or(Errno::ENOMEM)
    }

    fn free_page(&mut self, pa: u64) {
        self.free.push(pa);
    }

    fn zero_page(&mut self, pa: u64) {
        zero(pa);
    }
}

// SAFETY: single pages come from the pool, which holds only zeroed, identity-mapped RAM pages no
// one else uses; the two-page root comes from the hyp allocator, zeroed and aligned to 8 KiB.
// `table` is the identity map. Pages freed here are zeroed before reuse.
unsafe impl PhysMem for VmPool {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        match count {
            1 => self.free.pop(),
            _ => mm::alloc_pages(count).map(|pa| pa as u64),
        }
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        match count {
            1 => {
                zero(pa);
                self.free.push(pa);
            }
            _ => mm::free_pages(pa as usize, count),
        }
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        pa as *mut [u64; ENTRIES]
    }
}
