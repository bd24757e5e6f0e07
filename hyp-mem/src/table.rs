//! The one translation-table engine of the hyp: ARMv8-A VMSAv8-64 tables, 4 KiB granule, walk
//! starting at level 1, generic over the descriptor [`Format`] of the translation regime.
//!
//! Two formats use it: the stage-2 of the host and of every VM ([`crate::stage2`]) and the hyp's
//! own EL2 stage-1 identity map ([`crate::el2`]). Everything but the leaf attribute bits is the
//! same in both: the valid and table/page bits, the output address, the levels and their
//! index bits, blocks and pages, and the order of writes and TLB maintenance below.
//!
//! A 40-bit input space needs two concatenated level-1 tables (1024 entries, 8 KiB, 8 KiB
//! aligned); a 39-bit one needs a single level-1 table ([`IpaSize`]). Leaves are 1 GiB blocks
//! (level 1), 2 MiB blocks (level 2) or 4 KiB pages (level 3).
//!
//! Every change of a valid descriptor uses break-before-make: the entry is written invalid,
//! the TLB is invalidated for that address ([`TlbMaintenance::invalidate_ipa`]), and only then
//! the new descriptor is written and published ([`TlbMaintenance::publish`]). Writing a valid
//! descriptor over an invalid one needs no invalidation, only a publish.
//!
//! Every operation either succeeds or changes nothing: table pages that an operation needs
//! are allocated before the first descriptor is written, and handed back on failure. Errors are
//! a [`MapError`], which converts to [`abi::Errno`] where an answer leaves the hyp.
//!
//! Descriptor bits common to every format (Arm ARM, "VMSAv8-64 translation table format
//! descriptors"):
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | valid |
//! | 1 | table (levels 1-2) / page (level 3); 0 = block at levels 1-2 |
//! | 47:12 | output address / next-level table address |
//! | the rest | leaf attributes, [`Format::leaf_bits`] |
//!
//! The engine writes 0 for an invalid entry and treats every invalid entry as empty.

use abi::Errno;

/// Bytes in one translation granule (4 KiB).
pub const PAGE_SIZE: u64 = abi::PAGE_SIZE;
/// Size of a level-3 page.
pub const SIZE_4K: u64 = 1 << 12;
/// Size of a level-2 block.
pub const SIZE_2M: u64 = 1 << 21;
/// Size of a level-1 block.
pub const SIZE_1G: u64 = 1 << 30;
/// Output (physical) address size configured in VTCR_EL2.PS and TCR_EL2.PS: 40 bits.
pub const PA_BITS: u32 = 40;
/// Descriptors per 4 KiB table.
pub const ENTRIES: usize = 512;

const DESC_VALID: u64 = 1 << 0;
const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
/// Output-address bits 47:12 of a descriptor.
const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// A translation-table operation that could not be done. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapError {
    /// A malformed argument: unaligned, not a leaf size, beyond the input space or the 40-bit
    /// output space, or a page where a block is needed (`EINVAL`).
    Invalid,
    /// Something other than exactly this mapping is in the range (`EEXIST`).
    Exists,
    /// The address is not mapped (`ENOENT`).
    NotMapped,
    /// A table page could not be allocated (`ENOMEM`).
    NoMemory,
    /// The caller's range or policy does not allow even one page there (`EPERM`;
    /// [`Tables::map_identity_largest`]).
    Refused,
}

impl From<MapError> for Errno {
    fn from(e: MapError) -> Errno {
        match e {
            MapError::Invalid => Errno::EINVAL,
            MapError::Exists => Errno::EEXIST,
            MapError::NotMapped => Errno::ENOENT,
            MapError::NoMemory => Errno::ENOMEM,
            MapError::Refused => Errno::EPERM,
        }
    }
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MapError::Invalid => "invalid argument",
            MapError::Exists => "something else is mapped there",
            MapError::NotMapped => "not mapped",
            MapError::NoMemory => "no table page",
            MapError::Refused => "refused",
        })
    }
}

/// Memory type of a leaf (stage-2 MemAttr; at EL2 the MAIR_EL2 index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal, inner and outer write-back cacheable.
    NormalWriteBack,
    /// Device-nGnRE.
    DeviceNGnRE,
}

/// The leaf descriptor format of one translation regime: how attributes become descriptor
/// bits. Implemented by [`crate::stage2::Stage2Format`] and [`crate::el2::El2Format`].
pub trait Format {
    /// Attributes of a leaf.
    type Attrs: Copy + Eq + core::fmt::Debug;
    /// The descriptor bits of `attrs`: every bit but valid, table/page and the output address
    /// (so including the access flag and shareability).
    fn leaf_bits(attrs: Self::Attrs) -> u64;
    /// Decodes the attributes of a leaf descriptor.
    fn attrs_of(desc: u64) -> Self::Attrs;
}

/// Physical memory that holds the translation tables.
///
/// At EL2 the hyp identity-maps RAM, so [`PhysMem::table`] is `pa as *mut _`; host tests use
/// an arena ([`crate::fake::FakeArena`]).
///
/// # Safety
///
/// Implementors promise, for every `pa` returned by [`alloc_pages`](PhysMem::alloc_pages)`(count)`
/// and not yet passed to [`free_pages`](PhysMem::free_pages), and for every `i < count`:
/// `table(pa + i * 4096)` returns a non-null pointer, aligned to 8 bytes, that is valid for
/// volatile reads and writes of the whole `[u64; 512]` until the page is freed, and that no Rust
/// reference aliases while the page is allocated (the hardware table walker may read it).
/// A freshly allocated page reads as all zeroes. Replacing or mutating the implementor through
/// [`Tables::mm_mut`] must keep these promises for pages already handed out.
pub unsafe trait PhysMem {
    /// Allocates `count` (1 or 2) physically contiguous, zeroed pages whose first page is
    /// aligned to `count * 4096`, and returns the physical address of the first. `None` when
    /// out of memory (reported as [`MapError::NoMemory`]).
    fn alloc_pages(&mut self, count: usize) -> Option<u64>;
    /// Frees pages returned by `alloc_pages(count)`, with the same `count`.
    fn free_pages(&mut self, pa: u64, count: usize);
    /// The table page at `pa` (4 KiB aligned) as a pointer the hyp can access.
    fn table(&self, pa: u64) -> *mut [u64; ENTRIES];
}

/// TLB and barrier maintenance, implemented by the arch code with `dsb`/`tlbi`/`isb`.
///
/// Calls arrive in this order for a break-before-make: descriptor written invalid,
/// `invalidate_*`, new descriptor written, `publish`. `ipa` is the input address of the
/// regime (an IPA for a stage-2, a VA for the EL2 stage-1); `vmid` the VMID of a stage-2 (the
/// EL2 regime has none: its tables pass 0, and its implementation ignores it).
pub trait TlbMaintenance {
    /// Makes previous descriptor writes visible to the table walkers of all CPUs before
    /// later ones: `dsb ishst` (the arch code may add an `isb` before returning to a guest).
    /// Called after a valid descriptor was written, and before a new table is linked in.
    fn publish(&mut self);
    /// An entry that translated `ipa` in the stage-2 of `vmid` was made invalid (and before
    /// this call nothing else has been written over it). Must complete before returning:
    /// `dsb ishst; tlbi ipas2e1is, ipa >> 12; dsb ish; tlbi vmalle1is; dsb ish; isb`,
    /// with VTTBR_EL2 holding `vmid` during the `tlbi`s (EL2: `tlbi vae2is`).
    ///
    /// `leaf_level` is `Some(level)` when the old entry was a leaf (block or page) at that
    /// level (usable as a TTL hint); `None` when it was a table descriptor, in which case the
    /// non-last-level form (`ipas2e1is`, never `ipas2le1is`) is required so that walk-cache
    /// entries go too. A block is invalidated by one call with its base address.
    fn invalidate_ipa(&mut self, vmid: u16, ipa: u64, leaf_level: Option<u8>);
    /// Every leaf and walk-cache entry of `[ipa, ipa + size)` in the stage-2 of `vmid` must
    /// go, including the combined stage-1 entries (`vmalle1is`). The default invalidates the
    /// whole VMID; FEAT_TLBIRANGE hardware may use `tlbi ripas2e1is` instead.
    fn invalidate_range(&mut self, vmid: u16, ipa: u64, size: u64) {
        let _ = (ipa, size);
        self.invalidate_vmid(vmid);
    }
    /// Every stage-1 and stage-2 entry of `vmid`: `dsb ishst; tlbi vmalls12e1is; dsb ish; isb`
    /// with VTTBR_EL2 holding `vmid` (EL2: `tlbi alle2is`).
    fn invalidate_vmid(&mut self, vmid: u16);
}

/// Size of the input address space (the IPA space of a stage-2, the VA space of the EL2
/// stage-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpaSize {
    /// 39 bits: one level-1 root table (T0SZ = 25).
    Bits39,
    /// 40 bits: two concatenated level-1 root tables, 8 KiB aligned (T0SZ = 24; stage-2 only).
    Bits40,
}

impl IpaSize {
    /// Number of input address bits.
    pub const fn bits(self) -> u32 {
        match self {
            IpaSize::Bits39 => 39,
            IpaSize::Bits40 => 40,
        }
    }
    /// One past the highest input address.
    pub const fn limit(self) -> u64 {
        1 << self.bits()
    }
    /// Pages in the concatenated root.
    pub const fn root_pages(self) -> usize {
        match self {
            IpaSize::Bits39 => 1,
            IpaSize::Bits40 => 2,
        }
    }
    const fn root_entries(self) -> usize {
        self.root_pages() * ENTRIES
    }
}

/// One leaf mapping found in the tables, with the attributes `A` of its format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping<A> {
    /// First input address (IPA, or VA at EL2) of the leaf (aligned to `size`).
    pub ipa_base: u64,
    /// First PA of the leaf (aligned to `size`).
    pub pa_base: u64,
    /// 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
    /// 3, 2 or 1.
    pub level: u8,
    /// Attributes of the leaf.
    pub attrs: A,
}

impl<A> Mapping<A> {
    /// The PA that `ipa` translates to, `None` if `ipa` is outside this leaf.
    pub const fn pa_of(&self, ipa: u64) -> Option<u64> {
        match ipa.checked_sub(self.ipa_base) {
            Some(off) if off < self.size => Some(self.pa_base + off),
            _ => None,
        }
    }
}

/// What a descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Empty,
    Table(u64),
    Leaf,
}

const fn kind(desc: u64, level: u8) -> Kind {
    if desc & DESC_VALID == 0 {
        Kind::Empty
    } else if level < 3 && desc & DESC_TABLE_OR_PAGE != 0 {
        Kind::Table(desc & OA_MASK)
    } else {
        Kind::Leaf
    }
}

const fn level_shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

const fn level_size(level: u8) -> u64 {
    1 << level_shift(level)
}

const fn level_for_size(size: u64) -> Option<u8> {
    match size {
        SIZE_4K => Some(3),
        SIZE_2M => Some(2),
        SIZE_1G => Some(1),
        _ => None,
    }
}

const fn leaf_desc(pa: u64, level: u8, attr_bits: u64) -> u64 {
    let page = if level == 3 { DESC_TABLE_OR_PAGE } else { 0 };
    (pa & OA_MASK) | attr_bits | DESC_VALID | page
}

const fn table_desc(pa: u64) -> u64 {
    (pa & OA_MASK) | DESC_VALID | DESC_TABLE_OR_PAGE
}

/// Attribute bits of a leaf descriptor: everything but address, valid and table/page bits.
const fn leaf_attr_bits(desc: u64) -> u64 {
    desc & !OA_MASK & !(DESC_VALID | DESC_TABLE_OR_PAGE)
}

fn mapping_of<F: Format>(desc: u64, level: u8, ipa: u64) -> Mapping<F::Attrs> {
    let size = level_size(level);
    Mapping {
        ipa_base: ipa & !(size - 1),
        pa_base: desc & OA_MASK & !(size - 1),
        size,
        level,
        attrs: F::attrs_of(desc),
    }
}

/// Most table pages one operation allocates (two edges of a range, two levels each).
const MAX_PREALLOC: usize = 4;

/// Table pages allocated before an operation touches any descriptor.
struct Prealloc {
    pages: [u64; MAX_PREALLOC],
    n: usize,
}

impl Prealloc {
    const fn empty() -> Prealloc {
        Prealloc {
            pages: [0; MAX_PREALLOC],
            n: 0,
        }
    }
    fn take(&mut self) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        self.n -= 1;
        Some(self.pages[self.n])
    }
}

/// What [`Tables::modify`] does to the leaves of a range.
#[derive(Clone, Copy)]
enum Op {
    Unmap,
    SetAttrs(u64),
}

/// One address space: root table, VMID (0 where the regime has none) and input size, in the
/// descriptor format `F`, over a [`PhysMem`] and a [`TlbMaintenance`].
///
/// Dropping a `Tables` without [`Tables::destroy`] leaks its table pages (no memory-safety
/// issue).
pub struct Tables<F: Format, M: PhysMem, T: TlbMaintenance> {
    mm: M,
    tlb: T,
    root: u64,
    vmid: u16,
    ipa: IpaSize,
    format: core::marker::PhantomData<F>,
}

impl<F: Format, M: PhysMem, T: TlbMaintenance> core::fmt::Debug for Tables<F, M, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tables")
            .field("root", &self.root)
            .field("vmid", &self.vmid)
            .field("ipa", &self.ipa)
            .finish()
    }
}

impl<F: Format, M: PhysMem, T: TlbMaintenance> Tables<F, M, T> {
    /// Allocates the root (one page for 39 bits, two 8 KiB-aligned pages for 40 bits).
    /// On failure ([`MapError::NoMemory`], or [`MapError::Invalid`] if the allocator returned
    /// a misaligned or too high address, which is handed back) the memory and TLB objects come
    /// back to the caller.
    #[allow(clippy::result_large_err)]
    pub fn new(mut mm: M, tlb: T, vmid: u16, ipa: IpaSize) -> Result<Self, (MapError, M, T)> {
        let count = ipa.root_pages();
        let Some(root) = mm.alloc_pages(count) else {
            return Err((MapError::NoMemory, mm, tlb));
        };
        let align = PAGE_SIZE * count as u64;
        if root % align != 0 || root.checked_add(align).is_none_or(|end| end > 1 << PA_BITS) {
            mm.free_pages(root, count);
            return Err((MapError::Invalid, mm, tlb));
        }
        Ok(Tables {
            mm,
            tlb,
            root,
            vmid,
            ipa,
            format: core::marker::PhantomData,
        })
    }

    /// The VMID.
    pub const fn vmid(&self) -> u16 {
        self.vmid
    }
    /// The input address size.
    pub const fn ipa_size(&self) -> IpaSize {
        self.ipa
    }
    /// Physical address of the root table.
    pub const fn root_pa(&self) -> u64 {
        self.root
    }
    /// The table memory.
    pub fn mm(&self) -> &M {
        &self.mm
    }
    /// The table memory, e.g. to refill a memory cache. See the safety contract of [`PhysMem`].
    pub fn mm_mut(&mut self) -> &mut M {
        &mut self.mm
    }
    /// The TLB maintenance object.
    pub fn tlb(&self) -> &T {
        &self.tlb
    }
    /// The TLB maintenance object.
    pub fn tlb_mut(&mut self) -> &mut T {
        &mut self.tlb
    }

    // ---- raw descriptor access -------------------------------------------------------------

    fn entries_at(&self, level: u8) -> usize {
        if level == 1 {
            self.ipa.root_entries()
        } else {
            ENTRIES
        }
    }

    fn index(&self, ipa: u64, level: u8) -> usize {
        let idx = (ipa >> level_shift(level)) as usize;
        if level == 1 {
            // Callers check ipa < limit, so idx < root_entries; mask for robustness.
            idx & (self.ipa.root_entries() - 1)
        } else {
            idx & (ENTRIES - 1)
        }
    }

    /// Pointer to descriptor `idx` of the table at `table` (which may be a concatenated root).
    fn slot(&self, table: u64, idx: usize) -> *mut u64 {
        let page = table + (idx / ENTRIES) as u64 * PAGE_SIZE;
        let ptr = self.mm.table(page);
        // SAFETY: `table` is the root or a table page these tables allocated and still own, and
        // `idx / ENTRIES` is below the number of pages allocated for it (1 for non-root tables,
        // root_pages for the root, since idx < entries_at(level)); by the PhysMem contract
        // `ptr` points to 512 valid u64s, and `idx % ENTRIES < 512` stays inside.
        unsafe { ptr.cast::<u64>().add(idx % ENTRIES) }
    }

    fn read(&self, table: u64, idx: usize) -> u64 {
        // SAFETY: `slot` returns a pointer valid for reads (PhysMem contract); volatile because
        // the table is shared with the hardware walker.
        unsafe { self.slot(table, idx).read_volatile() }
    }

    fn write(&mut self, table: u64, idx: usize, desc: u64) {
        // SAFETY: `slot` returns a pointer valid for writes and not aliased by any reference
        // (PhysMem contract); a single aligned 64-bit volatile store cannot tear.
        unsafe { self.slot(table, idx).write_volatile(desc) }
    }

    fn alloc_table(&mut self) -> Option<u64> {
        let pa = self.mm.alloc_pages(1)?;
        if pa % PAGE_SIZE != 0 || pa.checked_add(PAGE_SIZE).is_none_or(|e| e > 1 << PA_BITS) {
            self.mm.free_pages(pa, 1);
            return None;
        }
        Some(pa)
    }

    fn prealloc(&mut self, n: usize) -> Result<Prealloc, MapError> {
        let mut pool = Prealloc::empty();
        while pool.n < n.min(MAX_PREALLOC) {
            match self.alloc_table() {
                Some(pa) => {
                    pool.pages[pool.n] = pa;
                    pool.n += 1;
                }
                None => {
                    self.release(pool);
                    return Err(MapError::NoMemory);
                }
            }
        }
        Ok(pool)
    }

    fn release(&mut self, mut pool: Prealloc) {
        while let Some(pa) = pool.take() {
            self.mm.free_pages(pa, 1);
        }
    }

    /// Descends from the root to the entry that ends the walk for `ipa` (leaf or empty), or to
    /// `stop_level`, whichever comes first.
    /// Returns (level, table, index, descriptor). `ipa` must be below the limit.
    fn descend(&self, ipa: u64, stop_level: u8) -> (u8, u64, usize, u64) {
        let mut table = self.root;
        let mut level = 1;
        loop {
            let idx = self.index(ipa, level);
            let desc = self.read(table, idx);
            match kind(desc, level) {
                Kind::Table(next) if level < stop_level => {
                    table = next;
                    level += 1;
                }
                _ => return (level, table, idx, desc),
            }
        }
    }

    fn check_range(&self, ipa: u64, size: u64) -> Result<u64, MapError> {
        if !ipa.is_multiple_of(PAGE_SIZE) || size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Invalid);
        }
        match ipa.checked_add(size) {
            Some(end) if end <= self.ipa.limit() => Ok(end),
            _ => Err(MapError::Invalid),
        }
    }

    // ---- queries ---------------------------------------------------------------------------

    /// The leaf that translates `ipa`, if any. `None` for unmapped or out-of-range addresses.
    pub fn walk(&self, ipa: u64) -> Option<Mapping<F::Attrs>> {
        if ipa >= self.ipa.limit() {
            return None;
        }
        let (level, _, _, desc) = self.descend(ipa, 3);
        (kind(desc, level) == Kind::Leaf).then(|| mapping_of::<F>(desc, level, ipa))
    }

    /// How many table pages mapping one page at `ipa` could need (the levels below where its walk
    /// ends now): 0 where the last-level table is there. A guest fault checks its pool for
    /// them before it takes anything.
    pub fn tables_needed(&self, ipa: u64) -> usize {
        if ipa >= self.ipa.limit() {
            return 0;
        }
        let (level, _, _, _) = self.descend(ipa, 3);
        usize::from(3 - level.min(3))
    }

    /// The descriptor at `level` on the walk for `ipa`, and the physical address of its slot:
    /// `None` if the walk ends above `level` or `ipa` is out of range. For tests and debugging.
    pub fn descriptor(&self, ipa: u64, level: u8) -> Option<(u64, u64)> {
        if ipa >= self.ipa.limit() || !(1..=3).contains(&level) {
            return None;
        }
        let (l, table, idx, desc) = self.descend(ipa, level);
        (l == level).then_some((table + idx as u64 * 8, desc))
    }

    /// Iterates every valid leaf, in input-address order.
    pub fn mappings(&self) -> Mappings<'_, F, M, T> {
        Mappings {
            tables: self,
            stack: [(self.root, 0, 0); 3],
            depth: 0,
        }
    }

    /// Number of table pages (the root counts as its page count).
    pub fn table_pages(&self) -> usize {
        self.table_pages_below(self.root, 1) + self.ipa.root_pages()
    }

    fn table_pages_below(&self, table: u64, level: u8) -> usize {
        let mut n = 0;
        for idx in 0..self.entries_at(level) {
            if let Kind::Table(next) = kind(self.read(table, idx), level) {
                n += 1 + self.table_pages_below(next, level + 1);
            }
        }
        n
    }

    // ---- map ---------------------------------------------------------------------------

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)` with one leaf: `size` is 4 KiB (page),
    /// 2 MiB (level-2 block) or 1 GiB (level-1 block).
    ///
    /// Errors (nothing changed on any error):
    /// - [`MapError::Invalid`]: other size, `ipa`/`pa` not aligned to `size`, range beyond the
    ///   input space or beyond the 40-bit PA space.
    /// - [`MapError::Exists`]: something other than exactly this mapping is in the range (a
    ///   different valid leaf, or a smaller valid leaf). Mapping exactly what is already there
    ///   (including a page inside an identical block) succeeds without a change.
    /// - [`MapError::NoMemory`]: the table pages needed could not be allocated.
    ///
    /// An existing table under the range with no valid entry in it is replaced by the block
    /// (break-before-make) and its pages freed.
    pub fn map(&mut self, ipa: u64, pa: u64, size: u64, attrs: F::Attrs) -> Result<(), MapError> {
        let level = level_for_size(size).ok_or(MapError::Invalid)?;
        if !ipa.is_multiple_of(size) || !pa.is_multiple_of(size) {
            return Err(MapError::Invalid);
        }
        self.check_range(ipa, size)?;
        if pa.checked_add(size).is_none_or(|end| end > 1 << PA_BITS) {
            return Err(MapError::Invalid);
        }
        self.install(ipa, level, leaf_desc(pa, level, F::leaf_bits(attrs)))
    }

    /// Writes the leaf `new` at `level` for `ipa`; see [`Tables::map`].
    fn install(&mut self, ipa: u64, level: u8, new: u64) -> Result<(), MapError> {
        let (l, table, idx, desc) = self.descend(ipa, level);
        if l == level {
            return match kind(desc, l) {
                Kind::Empty => {
                    self.write(table, idx, new);
                    self.tlb.publish();
                    Ok(())
                }
                _ if desc == new => Ok(()),
                Kind::Table(sub) if self.subtree_empty(sub, l + 1) => {
                    let base = ipa & !(level_size(l) - 1);
                    self.unlink_table(table, idx, l, base);
                    self.write(table, idx, new);
                    self.tlb.publish();
                    self.free_subtree(sub, l + 1);
                    Ok(())
                }
                _ => Err(MapError::Exists),
            };
        }
        // The walk stopped above `level`.
        match kind(desc, l) {
            Kind::Leaf => {
                // A bigger leaf covers the range: fine only if it says the same.
                let block = level_size(l) - 1;
                let same_pa = ((desc & OA_MASK & !block) | (ipa & block)) == new & OA_MASK;
                if same_pa && leaf_attr_bits(desc) == leaf_attr_bits(new) {
                    Ok(())
                } else {
                    Err(MapError::Exists)
                }
            }
            Kind::Empty => {
                let needed = usize::from(level - l);
                let mut pool = self.prealloc(needed)?;
                // Build the new branch bottom-up, invisible until linked.
                let mut child_desc = new;
                let mut lvl = level;
                while lvl > l {
                    let Some(t) = pool.take() else {
                        // Cannot happen: `needed` pages were allocated. Nothing is linked yet.
                        self.release(pool);
                        return Err(MapError::NoMemory);
                    };
                    self.write(t, self.index(ipa, lvl), child_desc);
                    child_desc = table_desc(t);
                    lvl -= 1;
                }
                self.release(pool);
                // Order the branch contents before the link that makes them reachable.
                self.tlb.publish();
                self.write(table, idx, child_desc);
                self.tlb.publish();
                Ok(())
            }
            // Cannot happen: the walk only stops above `level` at a leaf or an empty entry.
            Kind::Table(_) => Err(MapError::Exists),
        }
    }

    fn subtree_empty(&self, table: u64, level: u8) -> bool {
        (0..ENTRIES).all(|i| match kind(self.read(table, i), level) {
            Kind::Empty => true,
            Kind::Table(sub) => self.subtree_empty(sub, level + 1),
            Kind::Leaf => false,
        })
    }

    /// Frees `table` (at `level`) and every table below it. It must be unreachable already.
    fn free_subtree(&mut self, table: u64, level: u8) {
        if level < 3 {
            for i in 0..ENTRIES {
                if let Kind::Table(sub) = kind(self.read(table, i), level) {
                    self.free_subtree(sub, level + 1);
                }
            }
        }
        self.mm.free_pages(table, 1);
    }

    /// Break-before-make for a table descriptor at `level` covering `[base, base + span)`.
    fn unlink_table(&mut self, table: u64, idx: usize, level: u8, base: u64) {
        self.write(table, idx, 0);
        if level == 1 {
            // Walk-cache entries of level-2 descriptors under it are keyed by other addresses.
            self.tlb.invalidate_range(self.vmid, base, level_size(1));
        } else {
            self.tlb.invalidate_ipa(self.vmid, base, None);
        }
    }

    /// Break-before-make for a leaf at `level` whose base is `base`.
    fn break_leaf(&mut self, table: u64, idx: usize, level: u8, base: u64) {
        self.write(table, idx, 0);
        self.tlb.invalidate_ipa(self.vmid, base, Some(level));
    }

    // ---- split / merge -------------------------------------------------------------------------

    /// Replaces the block at (`table`, `idx`, `level`) with a table of 512 next-level leaves
    /// with the same attributes, using break-before-make. Returns the new table.
    fn split_entry(&mut self, table: u64, idx: usize, level: u8, base: u64, new_table: u64) -> u64 {
        let desc = self.read(table, idx);
        let child_level = level + 1;
        let child_size = level_size(child_level);
        let bits = leaf_attr_bits(desc);
        let pa = desc & OA_MASK & !(level_size(level) - 1);
        for i in 0..ENTRIES {
            let child = leaf_desc(pa + i as u64 * child_size, child_level, bits);
            self.write(new_table, i, child);
        }
        self.break_leaf(table, idx, level, base);
        self.write(table, idx, table_desc(new_table));
        self.tlb.publish();
        new_table
    }

    /// Splits the block that maps `ipa` one level down: a 2 MiB block into 512 pages, a 1 GiB
    /// block into 512 2 MiB blocks, all with the block's attributes (break-before-make).
    ///
    /// Errors (nothing changed): [`MapError::Invalid`] for an address out of range or mapped
    /// by a 4 KiB page, [`MapError::NotMapped`] if nothing maps it, [`MapError::NoMemory`]
    /// without a table page.
    pub fn split_block(&mut self, ipa: u64) -> Result<(), MapError> {
        if ipa >= self.ipa.limit() {
            return Err(MapError::Invalid);
        }
        let (level, table, idx, desc) = self.descend(ipa, 3);
        if kind(desc, level) != Kind::Leaf {
            return Err(MapError::NotMapped);
        }
        if level == 3 {
            return Err(MapError::Invalid);
        }
        let new_table = self.alloc_table().ok_or(MapError::NoMemory)?;
        let base = ipa & !(level_size(level) - 1);
        self.split_entry(table, idx, level, base, new_table);
        Ok(())
    }

    /// The level-3 table mapping the 2 MiB range at `ipa_2m` (aligned, in range) and the level-2
    /// entry that holds it, `(table, idx, sub)`; `None` if no level-3 table maps that range.
    fn level3_table(&self, ipa_2m: u64) -> Option<(u64, usize, u64)> {
        let (level, table, idx, desc) = self.descend(ipa_2m, 2);
        match kind(desc, level) {
            Kind::Table(sub) if level == 2 => Some((table, idx, sub)),
            _ => None,
        }
    }

    /// If the 2 MiB range at `ipa_2m` is mapped by a level-3 table whose 512 entries are all
    /// valid pages with the same attributes, mapping one physically contiguous 2 MiB-aligned
    /// range in order, replaces the table by a 2 MiB block (break-before-make, the whole range
    /// invalidated with [`TlbMaintenance::invalidate_range`]) and frees the table.
    ///
    /// Returns `Ok(true)` if merged, `Ok(false)` if the range does not qualify (including when
    /// it already is a block). [`MapError::Invalid`] if `ipa_2m` is not 2 MiB aligned or out
    /// of range.
    pub fn try_merge_block(&mut self, ipa_2m: u64) -> Result<bool, MapError> {
        if !ipa_2m.is_multiple_of(SIZE_2M) || ipa_2m >= self.ipa.limit() {
            return Err(MapError::Invalid);
        }
        let Some((table, idx, sub)) = self.level3_table(ipa_2m) else {
            return Ok(false);
        };
        let first = self.read(sub, 0);
        if kind(first, 3) != Kind::Leaf {
            return Ok(false);
        }
        let pa0 = first & OA_MASK;
        if !pa0.is_multiple_of(SIZE_2M) {
            return Ok(false);
        }
        let bits = leaf_attr_bits(first);
        let all_match =
            (0..ENTRIES).all(|i| self.read(sub, i) == leaf_desc(pa0 + i as u64 * SIZE_4K, 3, bits));
        if !all_match {
            return Ok(false);
        }
        self.replace_table_with_block(table, idx, sub, ipa_2m, leaf_desc(pa0, 2, bits));
        Ok(true)
    }

    /// Break-before-make of the level-2 table entry (`table`, `idx`) pointing at the level-3
    /// table `sub` into the block descriptor `block` (which maps the same pages): the entry goes
    /// invalid, the whole range and its walk-cache entries are invalidated, the block is written
    /// and published, and `sub` is freed.
    fn replace_table_with_block(
        &mut self,
        table: u64,
        idx: usize,
        sub: u64,
        ipa_2m: u64,
        block: u64,
    ) {
        self.write(table, idx, 0);
        self.tlb.invalidate_range(self.vmid, ipa_2m, SIZE_2M);
        self.write(table, idx, block);
        self.tlb.publish();
        self.mm.free_pages(sub, 1);
    }

    /// Maps the 2 MiB block `ipa_2m -> pa_2m` with `attrs` where a level-3 table already holds
    /// some pages of that range: if every valid entry of the table maps exactly the page the
    /// block would map there, with the same attributes, the table is replaced by the block
    /// (break-before-make: the table entry invalidated with the whole range, then the block
    /// written) and freed. A guest that refaults a range whose block an unmap took gets the
    /// block back this way once the range is uniform again. Needs no memory.
    ///
    /// Returns `Ok(true)` if mapped, `Ok(false)` if the range does not qualify (nothing
    /// changed). [`MapError::Invalid`] for unaligned or out-of-range arguments.
    pub fn map_block_over_pages(
        &mut self,
        ipa_2m: u64,
        pa_2m: u64,
        attrs: F::Attrs,
    ) -> Result<bool, MapError> {
        let bits = F::leaf_bits(attrs);
        if !ipa_2m.is_multiple_of(SIZE_2M)
            || !pa_2m.is_multiple_of(SIZE_2M)
            || ipa_2m >= self.ipa.limit()
            || pa_2m.checked_add(SIZE_2M).is_none_or(|e| e > 1 << PA_BITS)
        {
            return Err(MapError::Invalid);
        }
        let Some((table, idx, sub)) = self.level3_table(ipa_2m) else {
            return Ok(false);
        };
        let fits = (0..ENTRIES).all(|i| {
            let d = self.read(sub, i);
            d == 0 || d == leaf_desc(pa_2m + i as u64 * SIZE_4K, 3, bits)
        });
        if !fits {
            return Ok(false);
        }
        self.replace_table_with_block(table, idx, sub, ipa_2m, leaf_desc(pa_2m, 2, bits));
        Ok(true)
    }

    // ---- unmap / set_attrs ---------------------------------------------------------------------

    /// Removes every valid leaf that translates any page of `[ipa, ipa + size)` (page aligned,
    /// any number of pages). A block that straddles an edge of the range is removed whole
    /// (break-before-make), as KVM's stage-2 unmap does: the pages of it outside the range fault
    /// again and are mapped afresh. So an unmap never needs memory and, once the range is
    /// valid, never fails (Trust rule 3). Holes are left alone. A table whose whole span is
    /// inside the range and that ends up empty is unlinked and freed (after its entry was
    /// invalidated).
    ///
    /// Errors (nothing changed): [`MapError::Invalid`] for an unaligned or out-of-range range.
    pub fn unmap(&mut self, ipa: u64, size: u64) -> Result<(), MapError> {
        let end = self.check_range(ipa, size)?;
        self.modify(ipa, end, Op::Unmap)
    }

    /// [`Tables::unmap`] of `[ipa, ipa + size)` rounded out to pages and clamped to the input
    /// space: it cannot fail, needs no memory, and returns only when every leaf touching the
    /// range is invalid and its TLB entries are gone. The form callers use on paths that take
    /// pages away (Trust rule 3), so there is no error to ignore.
    pub fn unmap_clamped(&mut self, ipa: u64, size: u64) {
        let lo = ipa & !(PAGE_SIZE - 1);
        let hi = ipa
            .saturating_add(size)
            .saturating_add(PAGE_SIZE - 1)
            .min(self.ipa.limit())
            & !(PAGE_SIZE - 1);
        if lo < hi {
            // An unmap never splits, so it takes no table pages from the pool.
            self.modify_in(self.root, 1, lo, hi, Op::Unmap, &mut Prealloc::empty());
        }
    }

    /// Sets the attributes of every leaf in `[ipa, ipa + size)` to `attrs`, splitting blocks
    /// that straddle an edge and differ from `attrs`. Each changed leaf goes through
    /// break-before-make; leaves that already have `attrs` are not touched.
    ///
    /// Errors (nothing changed): [`MapError::Invalid`] (unaligned, out of range),
    /// [`MapError::NotMapped`] if any page of the range is not mapped, [`MapError::NoMemory`].
    pub fn set_attrs(&mut self, ipa: u64, size: u64, attrs: F::Attrs) -> Result<(), MapError> {
        let end = self.check_range(ipa, size)?;
        let bits = F::leaf_bits(attrs);
        let mut a = ipa;
        while a < end {
            let m = self.walk(a).ok_or(MapError::NotMapped)?;
            a = m.ipa_base + m.size;
        }
        self.modify(ipa, end, Op::SetAttrs(bits))
    }

    /// Whether `op` on a leaf that straddles the range's edge needs a split (a table page):
    /// only attribute changes do; an unmap removes the whole leaf.
    fn op_splits(op: Op) -> bool {
        matches!(op, Op::SetAttrs(_))
    }

    fn op_changes(op: Op, desc: u64) -> bool {
        match op {
            Op::Unmap => true,
            Op::SetAttrs(bits) => leaf_attr_bits(desc) != bits,
        }
    }

    /// Counts the table pages that splitting the blocks straddling `start` and `end` needs.
    fn splits_needed(&self, start: u64, end: u64, op: Op) -> usize {
        let mut splits: [(u8, u64); MAX_PREALLOC] = [(0, 0); MAX_PREALLOC];
        let mut n = 0;
        for edge in [start, end] {
            if edge >= self.ipa.limit() {
                continue;
            }
            let (level, _, _, desc) = self.descend(edge, 3);
            if !Self::op_splits(op)
                || kind(desc, level) != Kind::Leaf
                || !Self::op_changes(op, desc)
            {
                continue;
            }
            let mut lvl = level;
            while lvl < 3 && edge % level_size(lvl) != 0 {
                let base = edge & !(level_size(lvl) - 1);
                if !splits[..n].contains(&(lvl, base)) && n < MAX_PREALLOC {
                    splits[n] = (lvl, base);
                    n += 1;
                }
                lvl += 1;
            }
        }
        n
    }

    fn modify(&mut self, start: u64, end: u64, op: Op) -> Result<(), MapError> {
        let needed = self.splits_needed(start, end, op);
        let mut pool = self.prealloc(needed)?;
        self.modify_in(self.root, 1, start, end, op, &mut pool);
        self.release(pool);
        Ok(())
    }

    fn modify_in(
        &mut self,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        op: Op,
        pool: &mut Prealloc,
    ) {
        let span = level_size(level);
        let mut a = start;
        while a < end {
            let idx = self.index(a, level);
            let base = a & !(span - 1);
            let entry_end = base + span;
            let seg_end = end.min(entry_end);
            let full = a == base && seg_end == entry_end;
            let desc = self.read(table, idx);
            match kind(desc, level) {
                Kind::Empty => {}
                Kind::Leaf if !Self::op_changes(op, desc) => {}
                Kind::Leaf if full || !Self::op_splits(op) => {
                    self.break_leaf(table, idx, level, base);
                    if let Op::SetAttrs(bits) = op {
                        self.write(table, idx, leaf_desc(desc & OA_MASK, level, bits));
                        self.tlb.publish();
                    }
                }
                Kind::Leaf => {
                    // Straddling block (level < 3 since pages are always fully covered).
                    if let Some(t) = pool.take() {
                        let sub = self.split_entry(table, idx, level, base, t);
                        self.modify_in(sub, level + 1, a, seg_end, op, pool);
                    }
                }
                Kind::Table(sub) => {
                    self.modify_in(sub, level + 1, a, seg_end, op, pool);
                    if full && matches!(op, Op::Unmap) && self.table_all_zero(sub) {
                        self.unlink_table(table, idx, level, base);
                        self.mm.free_pages(sub, 1);
                    }
                }
            }
            a = seg_end;
        }
    }

    fn table_all_zero(&self, table: u64) -> bool {
        (0..ENTRIES).all(|i| self.read(table, i) == 0)
    }

    // ---- identity map by fault ----------------------------------------------------------------

    /// Maps the largest identity leaf (1 GiB, 2 MiB, else 4 KiB) that contains `ipa`, is
    /// aligned, lies in `[range_lo, range_hi)`, has nothing mapped under it (empty leftover
    /// tables are fine and get freed), and for which `allowed(lo, hi)` answers true (e.g.
    /// "every page of `[lo, hi)` is host-accessible"). `allowed` is asked for the largest
    /// candidate first.
    ///
    /// Returns the mapping that now translates `ipa`; if one was there already (a race with
    /// another fault), returns it unchanged.
    ///
    /// Errors (nothing changed): [`MapError::Invalid`] if `ipa` is out of the input space or
    /// `range_lo >= range_hi`; [`MapError::Refused`] if `ipa` is outside
    /// `[range_lo, range_hi)` or not even its 4 KiB page is allowed; [`MapError::NoMemory`].
    pub fn map_identity_largest(
        &mut self,
        ipa: u64,
        range_lo: u64,
        range_hi: u64,
        attrs: F::Attrs,
        allowed: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<Mapping<F::Attrs>, MapError> {
        if ipa >= self.ipa.limit() || range_lo >= range_hi {
            return Err(MapError::Invalid);
        }
        if ipa < range_lo || ipa >= range_hi {
            return Err(MapError::Refused);
        }
        if let Some(m) = self.walk(ipa) {
            return Ok(m);
        }
        let hi = range_hi.min(self.ipa.limit()).min(1 << PA_BITS);
        for size in [SIZE_1G, SIZE_2M, SIZE_4K] {
            let base = ipa & !(size - 1);
            let Some(end) = base.checked_add(size) else {
                continue;
            };
            if base < range_lo || end > hi || !self.region_free(base, size) {
                continue;
            }
            if !allowed(base, end) {
                continue;
            }
            self.map(base, base, size, attrs)?;
            return self.walk(ipa).ok_or(MapError::Invalid);
        }
        Err(MapError::Refused)
    }

    /// True if no leaf lies under `[base, base + size)`, where `size` is a leaf size and
    /// `base` aligned to it.
    fn region_free(&self, base: u64, size: u64) -> bool {
        let Some(level) = level_for_size(size) else {
            return false;
        };
        let (l, _, _, desc) = self.descend(base, level);
        match kind(desc, l) {
            Kind::Empty => true,
            Kind::Table(sub) if l == level => self.subtree_empty(sub, l + 1),
            _ => false,
        }
    }

    // ---- teardown -------------------------------------------------------------------------------

    /// Invalidates the whole VMID, frees every table page and the root, and hands back the
    /// memory and TLB objects.
    pub fn destroy(mut self) -> (M, T) {
        self.tlb.invalidate_vmid(self.vmid);
        for idx in 0..self.ipa.root_entries() {
            if let Kind::Table(sub) = kind(self.read(self.root, idx), 1) {
                self.free_subtree(sub, 2);
            }
        }
        self.mm.free_pages(self.root, self.ipa.root_pages());
        (self.mm, self.tlb)
    }
}

/// Iterator over the leaves of a [`Tables`]; see [`Tables::mappings`].
pub struct Mappings<'a, F: Format, M: PhysMem, T: TlbMaintenance> {
    tables: &'a Tables<F, M, T>,
    /// Per level: (table, next index, first input address of the table).
    stack: [(u64, usize, u64); 3],
    depth: usize,
}

impl<F: Format, M: PhysMem, T: TlbMaintenance> Iterator for Mappings<'_, F, M, T> {
    type Item = Mapping<F::Attrs>;

    fn next(&mut self) -> Option<Mapping<F::Attrs>> {
        loop {
            let level = self.depth as u8 + 1;
            let (table, idx, base) = self.stack[self.depth];
            if idx >= self.tables.entries_at(level) {
                if self.depth == 0 {
                    return None;
                }
                self.depth -= 1;
                continue;
            }
            self.stack[self.depth].1 = idx + 1;
            let ipa = base + idx as u64 * level_size(level);
            let desc = self.tables.read(table, idx);
            match kind(desc, level) {
                Kind::Empty => {}
                Kind::Leaf => return Some(mapping_of::<F>(desc, level, ipa)),
                Kind::Table(sub) => {
                    self.depth += 1;
                    self.stack[self.depth] = (sub, 0, ipa);
                }
            }
        }
    }
}
