//! guest_memfd: a file of guest pages with optional per-page shareability.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use abi::flags::{ContentMode, ConvertTo, GmemFlags, VmType};
use abi::{Errno, PAGE_SHIFT, PAGE_SIZE};

use crate::pages::PageMap;
use crate::provider::{PageProvider, BLOCK_PAGES, BLOCK_SIZE};
use crate::range::RangeStore;

/// Per-page shareability (only with `TRACK_SHAREABILITY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shareability {
    /// Host and guest may access the page ("shared").
    All,
    /// Only the guest may access the page ("private").
    Guest,
}

/// Who asked for a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// The host, at its own initiative.
    Host,
    /// The host, on behalf of a guest's `MEM_SHARE` / `MEM_UNSHARE`.
    Guest,
}

/// A conversion of a gmem range (`KVM_SET_MEMORY_ATTRIBUTES2`-like).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertRequest {
    /// Byte offset in the file (page aligned).
    pub offset: u64,
    /// Byte size (page aligned, non-zero).
    pub size: u64,
    pub to: ConvertTo,
    pub mode: ContentMode,
    pub initiator: Initiator,
}

/// A failed conversion: the errno, and for `EAGAIN` the file offset (from the start of the file)
/// of the first page still pinned. `error_offset` is 0 for every other errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertError {
    pub errno: Errno,
    pub error_offset: u64,
}

impl From<Errno> for ConvertError {
    fn from(errno: Errno) -> Self {
        ConvertError {
            errno,
            error_offset: 0,
        }
    }
}

/// Checks a byte range against a limit: page aligned, non-empty, no overflow, `offset + size <=
/// limit`. Returns the page-index range `[first, last)`. Else `EINVAL`.
pub(crate) fn page_range(offset: u64, size: u64, limit: u64) -> Result<(u64, u64), Errno> {
    if size == 0 || !offset.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let end = offset.checked_add(size).ok_or(Errno::EINVAL)?;
    if end > limit {
        return Err(Errno::EINVAL);
    }
    Ok((offset >> PAGE_SHIFT, end >> PAGE_SHIFT))
}

/// The per-page check a guest fault makes, applied to every page of a 2 MiB block candidate
/// ([`GmemFile::block_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockCheck {
    /// `get_pfn_no_validate` (`pkvm`): no check per page, but a tracked file's shareability must
    /// be uniform over the block (the host stage-2 treats shared and private pages differently).
    NoValidate,
    /// `get_pfn` validation: with tracking, every page must be `GUEST` (`private`) or `ALL`.
    Validate { private: bool },
    /// The host mmap view's check ([`GmemFile::host_access_check`]) on every page.
    HostView,
}

/// Zeroes and frees a physically contiguous run of `count` pages at `pa`, appending them to
/// `freed`: every 2 MiB-aligned whole block inside it goes back with
/// [`PageProvider::free_block`], the rest page by page.
fn free_run(pa: u64, count: u64, provider: &mut dyn PageProvider, freed: &mut Vec<u64>) {
    let mut i = 0;
    while i < count {
        let p = pa.saturating_add(i << PAGE_SHIFT);
        let n = if p.is_multiple_of(BLOCK_SIZE) && count - i >= BLOCK_PAGES {
            BLOCK_PAGES
        } else {
            1
        };
        for j in 0..n {
            let q = p.saturating_add(j << PAGE_SHIFT);
            provider.zero_page(q);
            freed.push(q);
        }
        if n == BLOCK_PAGES {
            provider.free_block(p);
        } else {
            provider.free_page(p);
        }
        i += n;
    }
}

/// A guest_memfd file.
///
/// Pages are allocated on first use (guest fault, host fault, pin) through a [`PageProvider`]
/// and kept in a [`PageMap`] (runs of physically contiguous pages; its module docs give the
/// memory it takes). A guest fault may allocate a whole 2 MiB block at once (see
/// [`GmemFile::get_block`]); after that every operation still works page by page. Shareability,
/// when tracked, lives in a [`RangeStore`] over page indices.
#[derive(Debug)]
pub struct GmemFile {
    size: u64,
    flags: GmemFlags,
    owner_type: VmType,
    pages: PageMap,
    pins: BTreeMap<u64, u32>,
    share: Option<RangeStore<Shareability>>,
    /// For a `pkvm` VM's tracked file (Trust rule 9): per page, whether the guest itself made
    /// it `ALL` with its own MEM_SHARE. An `ALL` page the guest did not share (content the host
    /// put there with `INIT_SHARED`) is taken from the host at the guest's first touch. Only
    /// `ALL` pages may be marked; a punch keeps the marks, as it keeps shareability.
    guest_shared: Option<RangeStore<bool>>,
}

impl GmemFile {
    /// A new file of `size` bytes for a VM of type `owner_type`.
    /// `EINVAL` for unknown flag bits or a size that is not a positive multiple of 4 KiB.
    pub fn new(size: u64, flags: u64, owner_type: VmType) -> Result<Self, Errno> {
        let flags = GmemFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size > abi::host::GMEM_MAX_SIZE {
            return Err(Errno::EINVAL);
        }
        let npages = size >> PAGE_SHIFT;
        let share = if flags.contains(GmemFlags::TRACK_SHAREABILITY) {
            let init = if flags.contains(GmemFlags::INIT_SHARED) {
                Shareability::All
            } else {
                Shareability::Guest
            };
            Some(RangeStore::new(npages, init))
        } else {
            None
        };
        let guest_shared =
            (share.is_some() && owner_type == VmType::Pkvm).then(|| RangeStore::new(npages, false));
        Ok(GmemFile {
            size,
            flags,
            owner_type,
            pages: PageMap::new(),
            pins: BTreeMap::new(),
            share,
            guest_shared,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn flags(&self) -> GmemFlags {
        self.flags
    }

    /// Type of the VM that owns the file (decides the host-initiated to-shared rules).
    pub fn owner_type(&self) -> VmType {
        self.owner_type
    }

    pub fn tracks_shareability(&self) -> bool {
        self.share.is_some()
    }

    /// Shareability of the page holding byte `offset`; `None` without tracking or beyond the
    /// file.
    pub fn shareability(&self, offset: u64) -> Option<Shareability> {
        self.share.as_ref()?.get(offset >> PAGE_SHIFT)
    }

    /// The shareability store, if tracked (for statistics and tests).
    pub fn shareability_store(&self) -> Option<&RangeStore<Shareability>> {
        self.share.as_ref()
    }

    /// Physical page backing byte `offset`, if allocated.
    pub fn page_pa(&self, offset: u64) -> Option<u64> {
        self.pages.get(offset >> PAGE_SHIFT)
    }

    /// Number of allocated pages.
    pub fn allocated_pages(&self) -> usize {
        usize::try_from(self.pages.len()).unwrap_or(usize::MAX)
    }

    /// The page map (for statistics and tests).
    pub fn page_map(&self) -> &PageMap {
        &self.pages
    }

    /// If the 2 MiB range of the file starting at `offset` (2 MiB aligned, inside the file) is
    /// allocated as one physically contiguous, 2 MiB-aligned chunk, its physical base address.
    pub fn contiguous_block(&self, offset: u64) -> Option<u64> {
        if !offset.is_multiple_of(BLOCK_SIZE) || offset.checked_add(BLOCK_SIZE)? > self.size {
            return None;
        }
        let pa = self.pages.chunk(offset >> PAGE_SHIFT, BLOCK_PAGES)?;
        pa.is_multiple_of(BLOCK_SIZE).then_some(pa)
    }

    /// Whether every page of the 2 MiB range at `offset` (aligned, inside the file) passes
    /// `check`, the check a fault on each of them would make (see [`BlockCheck`]).
    pub fn block_check(&self, offset: u64, check: BlockCheck) -> bool {
        if !offset.is_multiple_of(BLOCK_SIZE) {
            return false;
        }
        let Some(end) = offset.checked_add(BLOCK_SIZE) else {
            return false;
        };
        if end > self.size {
            return false;
        }
        let (first, last) = (offset >> PAGE_SHIFT, end >> PAGE_SHIFT);
        let uniform = |want: Option<Shareability>| match &self.share {
            None => true,
            Some(store) => {
                let mut segs = store.segments(first, last);
                match (segs.next(), segs.next()) {
                    (Some((_, _, v)), None) => want.is_none_or(|w| w == v),
                    _ => false,
                }
            }
        };
        match check {
            BlockCheck::NoValidate if self.guest_shared.is_some() => {
                self.block_uniform_after_take(first, last)
            }
            BlockCheck::NoValidate => uniform(None),
            BlockCheck::Validate { private } => uniform(Some(if private {
                Shareability::Guest
            } else {
                Shareability::All
            })),
            BlockCheck::HostView => {
                if !self.flags.contains(GmemFlags::MMAP) {
                    return false;
                }
                match &self.share {
                    Some(_) => uniform(Some(Shareability::All)),
                    None => self.owner_type == VmType::Plain,
                }
            }
        }
    }

    /// The 2 MiB-block counterpart of [`GmemFile::get_pfn`] and friends, for a guest fault: if
    /// every page of the 2 MiB range at `offset` passes `check` and the range is either
    /// allocated as one contiguous 2 MiB-aligned chunk or not allocated at all (then one block is
    /// taken from the provider), returns the chunk's physical base. `None` (nothing changed)
    /// when a block cannot be used, including when the provider has no block: the caller falls
    /// back to a single page.
    pub fn get_block(
        &mut self,
        offset: u64,
        check: BlockCheck,
        provider: &mut dyn PageProvider,
    ) -> Option<u64> {
        // Cheapest checks first: the page map (one chunk, or nothing yet), then a chunk from
        // the provider, and only then the per-range policy check.
        if let Some(pa) = self.contiguous_block(offset) {
            if !self.block_check(offset, check) {
                return None;
            }
            return self.block_taken(offset, check).then_some(pa);
        }
        let first = offset >> PAGE_SHIFT;
        if self.pages.any_in(first, first.saturating_add(BLOCK_PAGES)) {
            return None;
        }
        let pa = provider.alloc_zeroed_block().ok()?;
        if !pa.is_multiple_of(BLOCK_SIZE) || !self.block_check(offset, check) {
            // No block here (or a provider breaking its contract): the chunk goes back whole.
            provider.free_block(pa);
            return None;
        }
        self.pages.insert_run(first, pa, BLOCK_PAGES);
        // Cannot fail: the check above found nothing pinned that the touch takes.
        self.block_taken(offset, check).then_some(pa)
    }

    /// The first touch of a block about to be mapped for a `pkvm` guest (see
    /// [`GmemFile::take`]); `true` when there is nothing to take or it was taken.
    fn block_taken(&mut self, offset: u64, check: BlockCheck) -> bool {
        check != BlockCheck::NoValidate || self.take(offset, BLOCK_SIZE).is_ok()
    }

    /// Calls `f(pa)` for every allocated page of `[offset, offset + size)` (clipped to the
    /// file), in order, until it fails: a check over a range that keeps no list. O(pages
    /// present).
    pub fn try_for_each_allocated<E>(
        &self,
        offset: u64,
        size: u64,
        mut f: impl FnMut(u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let first = offset >> PAGE_SHIFT;
        let last = offset.saturating_add(size).min(self.size) >> PAGE_SHIFT;
        let mut r = Ok(());
        self.pages.for_each_in(first, last, |_, pa, count| {
            for i in 0..count {
                if r.is_ok() {
                    r = f(pa.saturating_add(i << PAGE_SHIFT));
                }
            }
        });
        r
    }

    /// The end (a byte offset, at most `offset + size` clipped to the file) of the range from
    /// `offset` that holds at most `max` allocated pages: how a long operation is cut into
    /// pieces of bounded work.
    pub fn end_after(&self, offset: u64, size: u64, max: u64) -> u64 {
        let first = offset >> PAGE_SHIFT;
        let end = offset.saturating_add(size).min(self.size);
        let last = end >> PAGE_SHIFT;
        (self.pages.end_after(first, last, max) << PAGE_SHIFT).min(end)
    }

    /// Frees at most `max` pages (zeroed first) from the start of the file, pins or not, for
    /// file destruction and VM teardown in bounded steps. Returns the freed physical pages.
    pub fn release_some(&mut self, max: u64, provider: &mut dyn PageProvider) -> Vec<u64> {
        let last = self.size >> PAGE_SHIFT;
        let end = self.pages.end_after(0, last, max);
        let mut freed = Vec::new();
        self.pages.remove_range(0, end, |_, pa, count| {
            free_run(pa, count, provider, &mut freed)
        });
        if self.pages.is_empty() {
            self.pins.clear();
        }
        freed
    }

    /// The allocated pages of `[offset, offset + size)` (clipped to the file), in order: what
    /// a punch of that range would free. O(runs), whatever the size.
    pub fn allocated_in(&self, offset: u64, size: u64) -> Vec<u64> {
        let first = offset >> PAGE_SHIFT;
        let last = offset.saturating_add(size).min(self.size) >> PAGE_SHIFT;
        let mut out = Vec::new();
        self.pages.for_each_in(first, last, |_, pa, count| {
            out.extend((0..count).map(|i| pa.saturating_add(i << PAGE_SHIFT)));
        });
        out
    }

    /// The allocated pages of `[offset, offset + size)` with their file offsets.
    pub fn allocated_with_offsets(&self, offset: u64, size: u64) -> Vec<(u64, u64)> {
        let first = offset >> PAGE_SHIFT;
        let last = offset.saturating_add(size).min(self.size) >> PAGE_SHIFT;
        let mut out = Vec::new();
        self.pages.for_each_in(first, last, |index, pa, count| {
            out.extend((0..count).map(|i| {
                (
                    index.saturating_add(i) << PAGE_SHIFT,
                    pa.saturating_add(i << PAGE_SHIFT),
                )
            }));
        });
        out
    }

    /// The allocated pages of `[offset, offset + size)`, each with
    /// [`GmemFile::host_stage2_allowed`] for its offset: one walk of the pages and one of the
    /// shareability runs, not a lookup per page (a conversion's ownership update is per page).
    pub fn allocated_with_host_access(&self, offset: u64, size: u64) -> Vec<(u64, bool)> {
        let pages = self.allocated_with_offsets(offset, size);
        let Some(store) = &self.share else {
            let allowed = self.owner_type == VmType::Plain;
            return pages.into_iter().map(|(_, pa)| (pa, allowed)).collect();
        };
        let first = offset >> PAGE_SHIFT;
        let last = offset.saturating_add(size).min(self.size) >> PAGE_SHIFT;
        let mut runs = store.segments(first, last).peekable();
        pages
            .into_iter()
            .map(|(off, pa)| {
                let index = off >> PAGE_SHIFT;
                while runs.peek().is_some_and(|&(_, stop, _)| stop <= index) {
                    runs.next();
                }
                let allowed = runs
                    .peek()
                    .is_some_and(|&(start, _, v)| start <= index && v == Shareability::All);
                (pa, allowed)
            })
            .collect()
    }

    /// Host pin count of the page holding byte `offset`.
    pub fn pin_count(&self, offset: u64) -> u32 {
        self.pins.get(&(offset >> PAGE_SHIFT)).copied().unwrap_or(0)
    }

    /// Whether any page of the file is pinned.
    pub fn has_pins(&self) -> bool {
        !self.pins.is_empty()
    }

    /// Whether the guest itself made the page holding byte `offset` `ALL` (its own MEM_SHARE);
    /// only kept for a `pkvm` VM's tracked file (Trust rule 9), `false` otherwise.
    pub fn guest_shared(&self, offset: u64) -> bool {
        self.guest_shared
            .as_ref()
            .and_then(|g| g.get(offset >> PAGE_SHIFT))
            .unwrap_or(false)
    }

    /// Whether the page at `index` is taken from the host at the guest's first touch (Trust
    /// rule 9): an `ALL` page of a `pkvm` VM's file that the guest did not share itself.
    fn takeable(&self, index: u64) -> bool {
        match (&self.share, &self.guest_shared) {
            (Some(s), Some(g)) => {
                s.get(index) == Some(Shareability::All) && g.get(index) == Some(false)
            }
            _ => false,
        }
    }

    /// The runs `[a, b)` of page indices in `[first, last)` that a first touch takes.
    fn takeable_runs(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if let (Some(s), Some(g)) = (&self.share, &self.guest_shared) {
            for (a, b, v) in s.segments(first, last) {
                if v != Shareability::All {
                    continue;
                }
                out.extend(
                    g.segments(a, b)
                        .filter(|(_, _, gs)| !gs)
                        .map(|(c, d, _)| (c, d)),
                );
            }
        }
        out
    }

    /// [`GmemFile::takeable_runs`] for the core's checks.
    pub(crate) fn takeable_runs_of(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        self.takeable_runs(first, last)
    }

    /// Whether the host pins a page of `[first, last)` (page indices).
    pub(crate) fn pinned_in(&self, first: u64, last: u64) -> bool {
        self.pins.range(first..last).next().is_some()
    }

    /// The guest's first touch of `[offset, offset + size)` (Trust rule 9; a no-op for files of
    /// other VM types): every `ALL` page the guest did not share itself becomes `GUEST`, its
    /// content kept. `EINVAL` for a bad range; `EBUSY`, with nothing changed, if the host pins
    /// such a page (it cannot be taken). Returns the byte ranges `(offset, size)` taken: the
    /// host must lose its access to their allocated pages.
    pub fn take(&mut self, offset: u64, size: u64) -> Result<Vec<(u64, u64)>, Errno> {
        let (first, last) = page_range(offset, size, self.size)?;
        let runs = self.takeable_runs(first, last);
        if runs
            .iter()
            .any(|&(a, b)| self.pins.range(a..b).next().is_some())
        {
            return Err(Errno::EBUSY);
        }
        if let Some(store) = self.share.as_mut() {
            for &(a, b) in &runs {
                store.set(a, b, Shareability::Guest)?;
            }
        }
        Ok(runs
            .into_iter()
            .map(|(a, b)| (a << PAGE_SHIFT, (b - a) << PAGE_SHIFT))
            .collect())
    }

    /// For `pkvm` (`get_pfn_no_validate`) blocks: whether the 2 MiB range `[first, last)` is of
    /// one state once the guest's first touch has taken what it takes, and nothing it would take
    /// is pinned (a 2 MiB block is mapped only where every page of it may be taken).
    fn block_uniform_after_take(&self, first: u64, last: u64) -> bool {
        let (Some(s), Some(g)) = (&self.share, &self.guest_shared) else {
            return false;
        };
        let mut seen: Option<Shareability> = None;
        let mut same = |v: Shareability| *seen.get_or_insert(v) == v;
        for (a, b, v) in s.segments(first, last) {
            if v == Shareability::Guest {
                if !same(Shareability::Guest) {
                    return false;
                }
                continue;
            }
            for (c, d, gs) in g.segments(a, b) {
                let after = if gs {
                    Shareability::All
                } else {
                    if self.pins.range(c..d).next().is_some() {
                        return false;
                    }
                    Shareability::Guest
                };
                if !same(after) {
                    return false;
                }
            }
        }
        seen.is_some()
    }

    fn index(&self, offset: u64) -> Result<u64, Errno> {
        if offset >= self.size {
            return Err(Errno::EINVAL);
        }
        Ok(offset >> PAGE_SHIFT)
    }

    fn get_or_alloc(&mut self, index: u64, provider: &mut dyn PageProvider) -> Result<u64, Errno> {
        self.pages
            .get_or_insert(index, || provider.alloc_zeroed_page())
    }

    /// `kvm_gmem_get_pfn()` with validation (seed column 4): with `TRACK_SHAREABILITY`, a private
    /// fault needs `GUEST` and a shared fault needs `ALL`, else `EACCES`. Without tracking there
    /// is nothing to validate. Allocates the page on first use (`ENOMEM` from the provider).
    /// `EINVAL` beyond the file.
    pub fn get_pfn(
        &mut self,
        offset: u64,
        is_private: bool,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        let index = self.index(offset)?;
        if let Some(store) = &self.share {
            let need = if is_private {
                Shareability::Guest
            } else {
                Shareability::All
            };
            if store.get(index) != Some(need) {
                return Err(Errno::EACCES);
            }
        }
        self.get_or_alloc(index, provider)
    }

    /// `kvm_gmem_get_pfn_no_validate()`: the page whatever its shareability (used for `pkvm`,
    /// whose faults carry no private/shared bit). `EINVAL` beyond the file, `ENOMEM` from the
    /// provider.
    ///
    /// For a `pkvm` VM this is the guest's first touch (Trust rule 9): an `ALL` page the guest did
    /// not share itself becomes `GUEST` (content kept), and such a page the host pins cannot be
    /// taken: `EBUSY` (a memory-fault exit), nothing changed.
    pub fn get_pfn_no_validate(
        &mut self,
        offset: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        let index = self.index(offset)?;
        let take = self.takeable(index);
        if take && self.pins.contains_key(&index) {
            return Err(Errno::EBUSY);
        }
        let pa = self.get_or_alloc(index, provider)?;
        if take {
            if let Some(store) = self.share.as_mut() {
                store.set(index, index + 1, Shareability::Guest)?;
            }
        }
        Ok(pa)
    }

    /// The check of the host's mmap fault handler (seed column 5), without allocating.
    ///
    /// - no `MMAP`: `ENODEV` (the host has no mapping);
    /// - `offset` beyond the file: `EFAULT`, which stands for **SIGBUS**;
    /// - with `TRACK_SHAREABILITY`, a `GUEST` page: `EFAULT` (SIGBUS);
    /// - without tracking, the file of a `pkvm` or `coco` VM holds only private memory, which the
    ///   hyp keeps out of the host: `EFAULT` (SIGBUS). A `plain` VM's file is all shared.
    pub fn host_access_check(&self, offset: u64) -> Result<u64, Errno> {
        if !self.flags.contains(GmemFlags::MMAP) {
            return Err(Errno::ENODEV);
        }
        if offset >= self.size {
            return Err(Errno::EFAULT);
        }
        let index = offset >> PAGE_SHIFT;
        match &self.share {
            Some(store) => {
                if store.get(index) != Some(Shareability::All) {
                    return Err(Errno::EFAULT);
                }
            }
            None => {
                if self.owner_type != VmType::Plain {
                    return Err(Errno::EFAULT);
                }
            }
        }
        Ok(index)
    }

    /// Whether the hyp may let the host's stage-2 reach the page holding byte `offset`, whatever
    /// the host's mmap view says (the defence against a host that skips the software check, e.g.
    /// a raw read of the physical page): with tracking, only `ALL` pages; without tracking, only
    /// the pages of a `plain` VM (a `pkvm` or `coco` VM's untracked gmem is private memory).
    /// `false` beyond the file.
    pub fn host_stage2_allowed(&self, offset: u64) -> bool {
        if offset >= self.size {
            return false;
        }
        match &self.share {
            Some(store) => store.get(offset >> PAGE_SHIFT) == Some(Shareability::All),
            None => self.owner_type == VmType::Plain,
        }
    }

    /// A host access through the mmap view at byte `offset` (`kvm_gmem_fault()`): applies
    /// [`GmemFile::host_access_check`] (`ENODEV`, `EFAULT` = SIGBUS) and returns the physical page,
    /// allocating it on first use (`ENOMEM`).
    pub fn host_fault(
        &mut self,
        offset: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        let index = self.host_access_check(offset)?;
        self.get_or_alloc(index, provider)
    }

    /// A long-term host reference on the page holding byte `offset`. The host must be able to
    /// map the page: the same errors as [`GmemFile::host_fault`] (so only `ALL` pages of a
    /// tracked file can be pinned); an unallocated page is allocated (as GUP would fault it in).
    /// Returns the physical page.
    pub fn pin(&mut self, offset: u64, provider: &mut dyn PageProvider) -> Result<u64, Errno> {
        let index = self.host_access_check(offset)?;
        let count = self.pins.get(&index).copied().unwrap_or(0);
        let count = count.checked_add(1).ok_or(Errno::EINVAL)?;
        let pa = self.get_or_alloc(index, provider)?;
        self.pins.insert(index, count);
        Ok(pa)
    }

    /// Drops one host pin on the page holding byte `offset`. `EINVAL` if it is not pinned (or
    /// beyond the file).
    pub fn unpin(&mut self, offset: u64) -> Result<(), Errno> {
        let index = self.index(offset)?;
        match self.pins.get_mut(&index) {
            None => Err(Errno::EINVAL),
            Some(c) if *c <= 1 => {
                self.pins.remove(&index);
                Ok(())
            }
            Some(c) => {
                *c -= 1;
                Ok(())
            }
        }
    }

    /// Punch hole: frees the backing pages of `[offset, offset + size)` (zeroed first; later
    /// reads see zeroes) and leaves shareability unchanged. `EINVAL` for a bad range; `EBUSY`,
    /// with nothing changed, if a page in the range is pinned by the host (a pinned page cannot
    /// be taken away under the host). Returns the freed physical pages.
    pub fn punch(
        &mut self,
        offset: u64,
        size: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<Vec<u64>, Errno> {
        let (first, last) = page_range(offset, size, self.size)?;
        if self.pins.range(first..last).next().is_some() {
            return Err(Errno::EBUSY);
        }
        let mut freed = Vec::new();
        self.pages.remove_range(first, last, |_, pa, count| {
            free_run(pa, count, provider, &mut freed)
        });
        Ok(freed)
    }

    /// The checks of [`GmemFile::punch`] (`EINVAL`, `EBUSY`), changing nothing.
    pub fn punch_check(&self, offset: u64, size: u64) -> Result<(), Errno> {
        let (first, last) = page_range(offset, size, self.size)?;
        if self.pins.range(first..last).next().is_some() {
            return Err(Errno::EBUSY);
        }
        Ok(())
    }

    /// The checks of [`GmemFile::punch`] (`EINVAL`, `EBUSY`), changing nothing: the pages a
    /// punch would free.
    pub fn punch_plan(&self, offset: u64, size: u64) -> Result<Vec<u64>, Errno> {
        let (first, last) = page_range(offset, size, self.size)?;
        if self.pins.range(first..last).next().is_some() {
            return Err(Errno::EBUSY);
        }
        Ok(self.allocated_in(offset, size))
    }

    /// Frees every page (zeroed first) and drops every pin; for file destruction and VM
    /// teardown. Returns the freed physical pages.
    pub fn release_all(&mut self, provider: &mut dyn PageProvider) -> Vec<u64> {
        self.pins.clear();
        let mut freed = Vec::with_capacity(self.allocated_pages());
        self.pages
            .take_all(|_, pa, count| free_run(pa, count, provider, &mut freed));
        freed
    }

    /// Converts a range (SEMANTICS.md "Conversions"). Checks, in this order:
    /// 1. `EOPNOTSUPP`: to-private with `ZERO` (from the request alone);
    /// 2. `EINVAL`: offset/size not page aligned, size 0, overflow, beyond the file;
    /// 3. `EINVAL`: the file lacks `TRACK_SHAREABILITY`;
    /// 4. `EPERM`: host-initiated to-shared on a `pkvm` VM's file, or on a `coco` VM's file with
    ///    `PRESERVE`;
    /// 5. `EAGAIN` (to-private only): a page of the range is pinned; `error_offset` is the file
    ///    offset of the first one.
    ///
    /// Nothing changes on failure. On success only the pages whose state changes are touched:
    /// on private -> shared they are zeroed with `ZERO` or when a host converts a `coco` VM's
    /// page; otherwise content is preserved. Returns the byte ranges `(offset, size)` whose state
    /// changed, in order. For a `pkvm` VM's file, a guest's own to-shared marks the pages it
    /// shared (Trust rule 9) and every to-private clears the marks.
    pub fn convert(
        &mut self,
        req: &ConvertRequest,
        provider: &mut dyn PageProvider,
    ) -> Result<Vec<(u64, u64)>, ConvertError> {
        let plan = self.convert_plan_pages(req)?;
        if plan.zero {
            for &(s, e) in &plan.changed {
                self.pages.for_each_in(s, e, |_, pa, count| {
                    for i in 0..count {
                        provider.zero_page(pa.saturating_add(i << PAGE_SHIFT));
                    }
                });
            }
        }
        if let Some(store) = self.share.as_mut() {
            store.set(plan.first, plan.last, plan.target)?;
        }
        if let Some(gs) = self.guest_shared.as_mut() {
            match (req.to, req.initiator) {
                (ConvertTo::Shared, Initiator::Guest) => {
                    for &(s, e) in &plan.changed {
                        gs.set(s, e, true)?;
                    }
                }
                (ConvertTo::Private, _) => gs.set(plan.first, plan.last, false)?,
                (ConvertTo::Shared, Initiator::Host) => {}
            }
        }
        Ok(plan
            .changed
            .into_iter()
            .map(|(s, e)| (s << PAGE_SHIFT, e.saturating_sub(s) << PAGE_SHIFT))
            .collect())
    }

    /// What [`GmemFile::convert`] would do, without doing it: the same checks in the same order
    /// (same errors), then the byte ranges whose state would change. Lets the hyp check every
    /// page's ownership change before anything changes.
    pub fn convert_plan(&self, req: &ConvertRequest) -> Result<Vec<(u64, u64)>, ConvertError> {
        Ok(self
            .convert_plan_pages(req)?
            .changed
            .into_iter()
            .map(|(s, e)| (s << PAGE_SHIFT, e.saturating_sub(s) << PAGE_SHIFT))
            .collect())
    }

    fn convert_plan_pages(&self, req: &ConvertRequest) -> Result<ConvertPlan, ConvertError> {
        if req.to == ConvertTo::Private && req.mode == ContentMode::Zero {
            return Err(Errno::EOPNOTSUPP.into());
        }
        let (first, last) = page_range(req.offset, req.size, self.size)?;
        let Some(store) = self.share.as_ref() else {
            return Err(Errno::EINVAL.into());
        };
        let zero = match (req.to, req.initiator) {
            (ConvertTo::Shared, Initiator::Host) => match self.owner_type {
                VmType::Pkvm => return Err(Errno::EPERM.into()),
                VmType::Coco => {
                    if req.mode == ContentMode::Preserve {
                        return Err(Errno::EPERM.into());
                    }
                    true
                }
                VmType::Plain => req.mode == ContentMode::Zero,
            },
            (ConvertTo::Shared, Initiator::Guest) => req.mode == ContentMode::Zero,
            (ConvertTo::Private, _) => false,
        };
        if req.to == ConvertTo::Private {
            if let Some((index, _)) = self.pins.range(first..last).next() {
                return Err(ConvertError {
                    errno: Errno::EAGAIN,
                    error_offset: index << PAGE_SHIFT,
                });
            }
        }
        let target = match req.to {
            ConvertTo::Private => Shareability::Guest,
            ConvertTo::Shared => Shareability::All,
        };
        let changed = store
            .segments(first, last)
            .filter(|(_, _, v)| *v != target)
            .map(|(s, e, _)| (s, e))
            .collect();
        Ok(ConvertPlan {
            first,
            last,
            target,
            zero,
            changed,
        })
    }
}

/// A checked conversion, in page indices.
struct ConvertPlan {
    first: u64,
    last: u64,
    target: Shareability,
    zero: bool,
    /// Page-index runs `[s, e)` whose state changes.
    changed: Vec<(u64, u64)>,
}
