//! A range store: a total map from `[0, end)` to values, kept as maximal runs of equal values.
//!
//! Used for gmem shareability (index = page of the file) and for per-VM memory attributes
//! (index = gfn). Memory grows with the number of distinct runs, not with the size of the domain:
//! a uniform 1 GiB file is one entry.
//!
//! # Representation
//! A `BTreeMap<start, value>`: each key starts a run that lasts until the next key (or `end`).
//! Invariants (checked by [`RangeStore::check_invariants`]): the key `0` is present whenever
//! `end > 0`, every key is `< end`, and two consecutive runs never hold the same value
//! (neighbouring equal runs are merged on every [`RangeStore::set`]).
//!
//! # Worst case
//! Alternating values on every index (e.g. every other 4 KiB page shared) gives one run per
//! index: `end` entries of `size_of::<(u64, V)>()` bytes plus B-tree node overhead (nodes hold
//! up to 11 entries and are not always full). Measured by `bench-host` with a counting
//! allocator: a 1 GiB file (262,144 pages) alternating page by page takes 262,144 runs and
//! about 5.5 MB (~21 bytes per page), against 144 bytes when uniform. Going back to uniform
//! costs one B-tree removal per run (about 0.1 s for that worst case); a single-page change in
//! the worst-case store costs O(log n) (about 0.7 us).

use alloc::collections::btree_map::{self, BTreeMap};
use core::iter::{Chain, Map, Peekable};
use core::mem::size_of;

use abi::Errno;

/// A total map from `[0, end)` to `V`, stored as merged runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeStore<V> {
    end: u64,
    runs: BTreeMap<u64, V>,
}

type RunIter<'a, V> = Map<btree_map::Range<'a, u64, V>, fn((&'a u64, &'a V)) -> (u64, V)>;
type HeadThenRuns<'a, V> = Peekable<Chain<core::option::IntoIter<(u64, V)>, RunIter<'a, V>>>;

/// Iterator over the runs of a store clipped to a window: yields `(start, end, value)`.
pub struct Segments<'a, V: Copy> {
    inner: HeadThenRuns<'a, V>,
    end: u64,
}

impl<V: Copy> Iterator for Segments<'_, V> {
    type Item = (u64, u64, V);

    fn next(&mut self) -> Option<Self::Item> {
        let (start, value) = self.inner.next()?;
        let stop = match self.inner.peek() {
            Some((next, _)) => (*next).min(self.end),
            None => self.end,
        };
        Some((start, stop, value))
    }
}

fn copy_run<'a, V: Copy>((k, v): (&'a u64, &'a V)) -> (u64, V) {
    (*k, *v)
}

impl<V: Copy + Eq> RangeStore<V> {
    /// A store over `[0, end)` where every index holds `init`.
    pub fn new(end: u64, init: V) -> Self {
        let mut runs = BTreeMap::new();
        if end > 0 {
            runs.insert(0, init);
        }
        RangeStore { end, runs }
    }

    /// The size of the domain.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The value at `index`, `None` outside the domain.
    pub fn get(&self, index: u64) -> Option<V> {
        if index >= self.end {
            return None;
        }
        self.runs.range(..=index).next_back().map(|(_, v)| *v)
    }

    /// Sets `[start, end)` to `value`, merging with equal neighbours.
    /// `EINVAL` if the range is empty or leaves the domain; the store is then unchanged.
    pub fn set(&mut self, start: u64, end: u64, value: V) -> Result<(), Errno> {
        if start >= end || end > self.end {
            return Err(Errno::EINVAL);
        }
        let after = if end < self.end { self.get(end) } else { None };
        let before = match start.checked_sub(1) {
            Some(prev) => self.get(prev),
            None => None,
        };
        // Remove every run start inside [start, end]; the run starting at `end` (if any) is
        // recreated below from `after`.
        while let Some(key) = self.runs.range(start..=end).next().map(|(k, _)| *k) {
            self.runs.remove(&key);
        }
        if before != Some(value) {
            self.runs.insert(start, value);
        }
        if let Some(after) = after {
            if after != value {
                self.runs.insert(end, after);
            }
        }
        Ok(())
    }

    /// The runs intersecting `[start, end)` (clipped to it), in order. Empty if the window is
    /// empty or outside the domain; a window reaching past the domain is clipped.
    pub fn segments(&self, start: u64, end: u64) -> Segments<'_, V> {
        let end = end.min(self.end);
        let (head, tail_start) = if start < end {
            (
                self.runs
                    .range(..=start)
                    .next_back()
                    .map(|(_, v)| (start, *v)),
                start.saturating_add(1),
            )
        } else {
            (None, end)
        };
        let tail: RunIter<'_, V> = self
            .runs
            .range(tail_start.min(end)..end)
            .map(copy_run as fn((&u64, &V)) -> (u64, V));
        Segments {
            inner: head.into_iter().chain(tail).peekable(),
            end,
        }
    }

    /// Whether every index of the non-empty window `[start, end)` (inside the domain) holds
    /// `value`.
    pub fn all_eq(&self, start: u64, end: u64, value: V) -> bool {
        start < end && end <= self.end && self.segments(start, end).all(|(_, _, v)| v == value)
    }

    /// Number of runs (B-tree entries).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// An estimate of the heap bytes used by the store: the B-tree's nodes, assuming the
    /// standard library's layout (leaves of 11 entries, internal nodes with 12 edges) and
    /// nodes filled to the minimum of their usual occupancy. The benchmark measures the real
    /// figure with a counting allocator; this estimate is for the hyp's statistics.
    pub fn heap_bytes_estimate(&self) -> usize {
        const CAP: usize = 11;
        let entry = size_of::<u64>() + size_of::<V>();
        let leaf = CAP * entry + 16;
        let internal = leaf + (CAP + 1) * size_of::<usize>();
        let n = self.runs.len();
        if n == 0 {
            return 0;
        }
        // Leaves hold between 5 and 11 entries; count them at 8 on average, at least one.
        let leaves = n.div_ceil(8).max(1);
        let internals = if leaves > 1 { leaves.div_ceil(6) } else { 0 };
        leaves * leaf + internals * internal
    }

    /// Size of the store's inline part plus [`RangeStore::heap_bytes_estimate`].
    pub fn memory_bytes_estimate(&self) -> usize {
        size_of::<Self>() + self.heap_bytes_estimate()
    }

    /// Checks the representation invariants (for tests and debug checks).
    pub fn check_invariants(&self) -> bool {
        if self.end == 0 {
            return self.runs.is_empty();
        }
        if !self.runs.contains_key(&0) {
            return false;
        }
        let mut prev: Option<V> = None;
        for (k, v) in &self.runs {
            if *k >= self.end || prev == Some(*v) {
                return false;
            }
            prev = Some(*v);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn set_merges_and_splits() {
        let mut s = RangeStore::new(16, 0u8);
        assert_eq!(s.runs(), 1);
        s.set(4, 8, 1).unwrap();
        assert_eq!(s.runs(), 3);
        assert_eq!(s.get(3), Some(0));
        assert_eq!(s.get(4), Some(1));
        assert_eq!(s.get(7), Some(1));
        assert_eq!(s.get(8), Some(0));
        s.set(8, 12, 1).unwrap();
        assert_eq!(s.runs(), 3);
        s.set(0, 16, 0).unwrap();
        assert_eq!(s.runs(), 1);
        assert!(s.check_invariants());
        assert_eq!(s.get(16), None);
    }

    #[test]
    fn rejects_bad_ranges() {
        let mut s = RangeStore::new(16, 0u8);
        assert_eq!(s.set(3, 3, 1), Err(Errno::EINVAL));
        assert_eq!(s.set(5, 3, 1), Err(Errno::EINVAL));
        assert_eq!(s.set(0, 17, 1), Err(Errno::EINVAL));
        assert_eq!(s.runs(), 1);
    }

    #[test]
    fn segments_are_clipped() {
        let mut s = RangeStore::new(16, 0u8);
        s.set(4, 8, 1).unwrap();
        let v: Vec<_> = s.segments(2, 6).collect();
        assert_eq!(v, [(2, 4, 0), (4, 6, 1)]);
        let v: Vec<_> = s.segments(4, 100).collect();
        assert_eq!(v, [(4, 8, 1), (8, 16, 0)]);
        assert_eq!(s.segments(16, 20).count(), 0);
        assert_eq!(s.segments(5, 5).count(), 0);
        assert!(s.all_eq(4, 8, 1));
        assert!(!s.all_eq(3, 8, 1));
    }

    #[test]
    fn alternating_then_uniform() {
        let mut s = RangeStore::new(64, false);
        for i in (0..64).step_by(2) {
            s.set(i, i + 1, true).unwrap();
        }
        assert_eq!(s.runs(), 64);
        assert!(s.check_invariants());
        s.set(0, 64, true).unwrap();
        assert_eq!(s.runs(), 1);
        assert!(s.heap_bytes_estimate() < 400);
    }
}
