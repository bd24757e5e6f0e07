//! The page map of a gmem file: which physical page backs each allocated page index, kept as
//! runs of physically contiguous pages.
//!
//! # Representation
//! A `BTreeMap<first index, (first pa, page count)>`: index `first + i` (for `i < count`) is
//! backed by `pa + i * 4096`. Runs never overlap, are never empty, and two runs that touch in
//! the file and in physical memory are always merged (checked by
//! [`PageMap::check_invariants`]). A 2 MiB block from the provider is one run (or part of a
//! bigger one if it continues its neighbour), so asking whether a 2 MiB range is "one contiguous
//! chunk" is one O(log n) lookup, and so is every page lookup on the fault path.
//!
//! # Memory
//! One entry of 24 bytes (index, pa, count) per run, in B-tree leaves of 11 entries (about 280
//! bytes a leaf, filled between 5 and 11).
//! - Best case: a file faulted in with 2 MiB blocks takes one entry per block at most (fewer
//!   where blocks happen to be physically adjacent): a 1 GiB file is at most 512 entries,
//!   about 25 KB.
//! - Worst case: no two file-adjacent pages are physically adjacent (4 KiB allocations from a
//!   scattered pool, or every other page punched), so every page is its own run: 262,144 entries
//!   for 1 GiB, about 11 MB with leaves filled to the usual 6-7 entries and at most about 15 MB
//!   (56 bytes a page) with every leaf at the minimum of 5. The per-page map this replaced took
//!   16 bytes of payload a page (about 7-10 MB a GiB) in every case.

use alloc::collections::BTreeMap;

use abi::PAGE_SIZE;

/// Page map of a gmem file (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageMap {
    runs: BTreeMap<u64, (u64, u64)>,
    pages: u64,
}

/// `pa + n` pages, saturating (runs are built from valid allocations, so this never saturates).
fn pa_add(pa: u64, n: u64) -> u64 {
    pa.saturating_add(n.saturating_mul(PAGE_SIZE))
}

impl PageMap {
    pub fn new() -> Self {
        PageMap::default()
    }

    /// Number of allocated pages.
    pub fn len(&self) -> u64 {
        self.pages
    }

    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Number of runs (B-tree entries).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The run containing `index`: `(first, pa, count)`.
    fn run_at(&self, index: u64) -> Option<(u64, u64, u64)> {
        let (&s, &(pa, c)) = self.runs.range(..=index).next_back()?;
        (index - s < c).then_some((s, pa, c))
    }

    /// The physical page backing `index`.
    pub fn get(&self, index: u64) -> Option<u64> {
        let (s, pa, _) = self.run_at(index)?;
        Some(pa_add(pa, index - s))
    }

    /// Whether any page of `[first, last)` is allocated.
    pub fn any_in(&self, first: u64, last: u64) -> bool {
        first < last
            && (self.run_at(first).is_some() || self.runs.range(first..last).next().is_some())
    }

    /// If every page of `[first, first + count)` is allocated and they are physically
    /// contiguous, the physical address of the first one.
    pub fn chunk(&self, first: u64, count: u64) -> Option<u64> {
        let (s, pa, c) = self.run_at(first)?;
        let end = first.checked_add(count)?;
        (end <= s.saturating_add(c)).then(|| pa_add(pa, first - s))
    }

    /// Records `[first, first + count)` as backed by `pa..`. The caller guarantees none of these
    /// pages is allocated (they are then overwritten silently) and `count > 0`.
    pub fn insert_run(&mut self, first: u64, pa: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.pages = self.pages.saturating_add(count);
        let (mut first, mut pa, mut count) = (first, pa, count);
        // Merge with the run ending right before, if physically contiguous.
        if let Some(prev) = first.checked_sub(1) {
            if let Some((s, ppa, c)) = self.run_at(prev) {
                if s.saturating_add(c) == first && pa_add(ppa, c) == pa {
                    self.runs.remove(&s);
                    first = s;
                    pa = ppa;
                    count += c;
                }
            }
        }
        // Merge with the run starting right after.
        let next = first.saturating_add(count);
        if let Some(&(npa, c)) = self.runs.get(&next) {
            if pa_add(pa, count) == npa {
                self.runs.remove(&next);
                count += c;
            }
        }
        self.runs.insert(first, (pa, count));
    }

    /// The page backing `index`, or a new one from `alloc`, recorded (merged with physically
    /// contiguous neighbours). The fault path's lookup: one search finds both the run holding
    /// `index` and the run just before it.
    pub fn get_or_insert<E>(
        &mut self,
        index: u64,
        alloc: impl FnOnce() -> Result<u64, E>,
    ) -> Result<u64, E> {
        let prev = self
            .runs
            .range(..=index)
            .next_back()
            .map(|(&s, &(pa, c))| (s, pa, c));
        if let Some((s, pa, c)) = prev {
            if index - s < c {
                return Ok(pa_add(pa, index - s));
            }
        }
        let pa = alloc()?;
        self.pages = self.pages.saturating_add(1);
        let (mut first, mut base, mut count) = (index, pa, 1);
        if let Some((s, ppa, c)) = prev {
            if s.saturating_add(c) == index && pa_add(ppa, c) == pa {
                // Extends the previous run: re-inserting at `s` below replaces it.
                (first, base, count) = (s, ppa, c + 1);
            }
        }
        if let Some(next) = index.checked_add(1) {
            if let Some(&(npa, c)) = self.runs.get(&next) {
                if pa_add(pa, 1) == npa {
                    self.runs.remove(&next);
                    count += c;
                }
            }
        }
        self.runs.insert(first, (base, count));
        Ok(pa)
    }

    /// Splits the run containing `index` (if it starts before it) so that a run starts at
    /// `index`.
    fn split_at(&mut self, index: u64) {
        if let Some((s, pa, c)) = self.run_at(index) {
            if s < index {
                let left = index - s;
                self.runs.insert(s, (pa, left));
                self.runs.insert(index, (pa_add(pa, left), c - left));
            }
        }
    }

    /// Removes `[first, last)`, calling `f(index, pa, count)` for every removed piece
    /// (physically contiguous), in order.
    pub fn remove_range(&mut self, first: u64, last: u64, mut f: impl FnMut(u64, u64, u64)) {
        if first >= last {
            return;
        }
        self.split_at(first);
        self.split_at(last);
        while let Some((&s, &(pa, c))) = self.runs.range(first..last).next() {
            self.runs.remove(&s);
            self.pages = self.pages.saturating_sub(c);
            f(s, pa, c);
        }
    }

    /// Calls `f(index, pa, count)` for every allocated piece of `[first, last)`, clipped to it,
    /// in order.
    pub fn for_each_in(&self, first: u64, last: u64, mut f: impl FnMut(u64, u64, u64)) {
        if first >= last {
            return;
        }
        if let Some((s, pa, c)) = self.run_at(first) {
            if s < first {
                let end = s.saturating_add(c).min(last);
                f(first, pa_add(pa, first - s), end - first);
            }
        }
        for (&s, &(pa, c)) in self.runs.range(first..last) {
            let end = s.saturating_add(c).min(last);
            f(s, pa, end - s);
        }
    }

    /// The index after the first `max` allocated pages of `[first, last)` (`last` if there are
    /// fewer): a range whose work is bounded by `max` pages. O(runs visited).
    pub fn end_after(&self, first: u64, last: u64, max: u64) -> u64 {
        if max == 0 {
            return first.min(last);
        }
        let mut left = max;
        let mut end = last;
        let mut visit = |s: u64, c: u64| {
            if left == 0 {
                return true;
            }
            if c >= left {
                end = s.saturating_add(left);
                left = 0;
                return true;
            }
            left -= c;
            false
        };
        if let Some((s, _, c)) = self.run_at(first) {
            if s < first {
                let n = s.saturating_add(c).min(last) - first;
                if visit(first, n) {
                    return end.min(last);
                }
            }
        }
        for (&s, &(_, c)) in self.runs.range(first..last) {
            let n = s.saturating_add(c).min(last) - s;
            if visit(s, n) {
                break;
            }
        }
        end.min(last)
    }

    /// Removes every page, calling `f(index, pa, count)` for every run, in order.
    pub fn take_all(&mut self, mut f: impl FnMut(u64, u64, u64)) {
        let runs = core::mem::take(&mut self.runs);
        self.pages = 0;
        for (s, (pa, c)) in runs {
            f(s, pa, c);
        }
    }

    /// Checks the representation invariants (for tests and debug checks): non-empty, sorted,
    /// non-overlapping runs, no two mergeable neighbours, and the page count.
    pub fn check_invariants(&self) -> bool {
        let mut total = 0u64;
        let mut prev: Option<(u64, u64, u64)> = None;
        for (&s, &(pa, c)) in &self.runs {
            if c == 0 {
                return false;
            }
            if let Some((ps, ppa, pc)) = prev {
                let pend = ps.saturating_add(pc);
                if pend > s || (pend == s && pa_add(ppa, pc) == pa) {
                    return false;
                }
            }
            total = total.saturating_add(c);
            prev = Some((s, pa, c));
        }
        total == self.pages
    }
}
