//! The host's own page allocator over its free RAM (above its heap): where the pages it donates
//! to VMs, and the guests' code pages, come from. A bump pointer plus a free list.

use alloc::vec::Vec;

use abi::PAGE_SIZE;

/// Free host RAM, by physical address.
#[derive(Debug)]
pub struct HostPages {
    next: u64,
    end: u64,
    free: Vec<u64>,
}

impl HostPages {
    /// Pages in `[start, end)` (rounded inwards to pages).
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            next: start.next_multiple_of(PAGE_SIZE),
            end: end & !(PAGE_SIZE - 1),
            free: Vec::new(),
        }
    }

    /// `count` physically contiguous pages (fresh from the bump region), aligned to `align`
    /// bytes (a power of two, at least a page).
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        let start = self.next.next_multiple_of(align.max(PAGE_SIZE));
        let end = start.checked_add(count.checked_mul(PAGE_SIZE)?)?;
        if end > self.end {
            return None;
        }
        // Pages skipped for alignment stay usable.
        let mut p = self.next;
        while p < start {
            self.free.push(p);
            p += PAGE_SIZE;
        }
        self.next = end;
        Some(start)
    }

    /// One page, reusing freed ones first.
    pub fn alloc(&mut self) -> Option<u64> {
        self.free
            .pop()
            .or_else(|| self.alloc_contiguous(1, PAGE_SIZE))
    }

    /// Gives pages back (e.g. after a VM returned them).
    pub fn free_run(&mut self, pa: u64, count: u64) {
        for i in 0..count {
            self.free.push(pa + i * PAGE_SIZE);
        }
    }

    /// Pages still available.
    pub fn available(&self) -> u64 {
        (self.end - self.next) / PAGE_SIZE + self.free.len() as u64
    }
}
