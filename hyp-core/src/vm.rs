//! VMs, memslots and memory attributes.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use abi::flags::{MemslotFlags, UserspaceAddr, VmType};
use abi::{Errno, PAGE_SHIFT, PAGE_SIZE};

use crate::provider::PageProvider;
use crate::range::RangeStore;

/// Handle of a VM in a [`crate::World`]: `generation << VMID_BITS | vmid`. The VMID (1..=
/// [`MAX_VMS`]) is reused after the VM is destroyed, with the next generation, so a stale handle
/// names no VM (until the generation wraps, after 2^24 reuses of one VMID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmHandle(pub u32);

/// Bits of a [`VmHandle`] that are its VMID.
pub const VMID_BITS: u32 = 8;
/// VMs at once: VMIDs 1..=255 (VMID 0 is the host's stage-2). `VmCreate` beyond it is `ENOSPC`.
pub const MAX_VMS: u32 = abi::host::VMS_MAX;
const _: () = assert!(MAX_VMS == (1 << VMID_BITS) - 1);

impl VmHandle {
    /// The VM's VMID (its stage-2 tag, and its component in the ownership table).
    pub fn vmid(self) -> u16 {
        (self.0 & MAX_VMS) as u16
    }
}

/// Handle of a gmem file in a [`crate::World`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GmemHandle(pub u32);

/// Identifier of a memslot inside its VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(pub u32);

/// A memslot's binding to a gmem range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmemBinding {
    pub gmem: GmemHandle,
    /// Byte offset in the file of the slot's first page.
    pub offset: u64,
}

/// What the host asks for when it creates a memslot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemslotSpec {
    /// First GPA (page aligned; for `coco`, the private alias, below the shared bit).
    pub gpa: u64,
    /// Size in bytes (page aligned, non-zero).
    pub size: u64,
    pub gmem: Option<GmemBinding>,
    pub userspace_addr: UserspaceAddr,
    /// Raw [`MemslotFlags`] bits; unknown bits are `EINVAL`.
    pub flags: u64,
}

/// A memslot. For `userspace_addr = anon` it owns the separate host memory that backs it
/// (sparse, allocated through the provider on first use, zeroed).
#[derive(Debug)]
pub struct Memslot {
    gpa: u64,
    size: u64,
    gmem: Option<GmemBinding>,
    uaddr: UserspaceAddr,
    flags: MemslotFlags,
    anon: BTreeMap<u64, u64>,
}

impl Memslot {
    pub(crate) fn new(
        gpa: u64,
        size: u64,
        gmem: Option<GmemBinding>,
        uaddr: UserspaceAddr,
        flags: MemslotFlags,
    ) -> Self {
        Memslot {
            gpa,
            size,
            gmem,
            uaddr,
            flags,
            anon: BTreeMap::new(),
        }
    }

    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last GPA (cannot overflow: checked at creation).
    pub fn gpa_end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    pub fn gmem(&self) -> Option<GmemBinding> {
        self.gmem
    }

    pub fn userspace_addr(&self) -> UserspaceAddr {
        self.uaddr
    }

    pub fn flags(&self) -> MemslotFlags {
        self.flags
    }

    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa < self.gpa_end()
    }

    /// The file offset backing `gpa` (which must be inside the slot).
    pub fn gmem_offset(&self, gpa: u64) -> Option<(GmemHandle, u64)> {
        let b = self.gmem?;
        let delta = gpa.checked_sub(self.gpa)?;
        Some((b.gmem, b.offset.checked_add(delta)?))
    }

    /// The `anon` page backing byte `offset` of the slot, allocated on first use.
    pub(crate) fn anon_page(
        &mut self,
        offset: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        if offset >= self.size {
            return Err(Errno::EFAULT);
        }
        let index = offset >> PAGE_SHIFT;
        if let Some(pa) = self.anon.get(&index) {
            return Ok(*pa);
        }
        let pa = provider.alloc_zeroed_page()?;
        self.anon.insert(index, pa);
        Ok(pa)
    }

    /// Every allocated `anon` page.
    pub(crate) fn anon_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.anon.values().copied()
    }

    /// The `anon` page backing byte `offset`, if allocated.
    pub fn anon_pa(&self, offset: u64) -> Option<u64> {
        self.anon.get(&(offset >> PAGE_SHIFT)).copied()
    }

    /// Frees at most `max` of the `anon` pages (zeroed first), appending them to `freed`: a
    /// bounded step of a teardown. -> how many.
    pub(crate) fn release_some(
        &mut self,
        max: u64,
        provider: &mut dyn PageProvider,
        freed: &mut alloc::vec::Vec<u64>,
    ) -> u64 {
        let mut n = 0;
        while n < max {
            let Some((_, pa)) = self.anon.pop_first() else {
                break;
            };
            provider.zero_page(pa);
            provider.free_page(pa);
            freed.push(pa);
            n += 1;
        }
        n
    }

    /// Frees the `anon` pages (zeroed first), appending them to `freed`.
    pub(crate) fn release(
        &mut self,
        provider: &mut dyn PageProvider,
        freed: &mut alloc::vec::Vec<u64>,
    ) {
        for pa in core::mem::take(&mut self.anon).into_values() {
            provider.zero_page(pa);
            provider.free_page(pa);
            freed.push(pa);
        }
    }
}

/// Smallest and largest IPA size (bits) a VM may have.
pub const MIN_IPA_BITS: u32 = 32;
pub const MAX_IPA_BITS: u32 = 52;

/// A VM: type, IPA size, memslots and memory attributes.
#[derive(Debug)]
pub struct Vm {
    vm_type: VmType,
    ipa_bits: u32,
    pub(crate) slots: BTreeMap<u32, Memslot>,
    /// Slot ids by first GPA: memslots never overlap, so the slot holding a GPA is the one with
    /// the greatest start at or below it (an O(log n) lookup on the fault path).
    by_gpa: BTreeMap<u64, u32>,
    next_slot: u32,
    attrs: RangeStore<bool>,
    /// Host pages shared into the guest outside its memslots (`MapHostShared`; `plain` and
    /// `coco` VMs only, for `coco` at the shared alias): page GPA -> physical page. One backing
    /// per IPA: never overlaps a memslot (Trust rule 4).
    pub(crate) host_shared: BTreeMap<u64, u64>,
    /// Set at the first `VcpuRun`: a `pkvm` VM's memslots are then frozen (Trust rule 9).
    started: bool,
    /// Being torn down ([`crate::World::begin_teardown`]): no call but the teardown's reaches
    /// the VM or its gmem files.
    pub(crate) dying: bool,
}

impl Vm {
    /// A VM with an IPA space of `ipa_bits` bits (`MIN_IPA_BITS..=MAX_IPA_BITS`, else `EINVAL`).
    /// For `coco` the top IPA bit (`ipa_bits - 1`) selects the shared alias, so its memory lies
    /// below `1 << (ipa_bits - 1)`.
    pub fn new(vm_type: VmType, ipa_bits: u32) -> Result<Self, Errno> {
        if !(MIN_IPA_BITS..=MAX_IPA_BITS).contains(&ipa_bits) {
            return Err(Errno::EINVAL);
        }
        let mut vm = Vm {
            vm_type,
            ipa_bits,
            slots: BTreeMap::new(),
            by_gpa: BTreeMap::new(),
            next_slot: 0,
            attrs: RangeStore::new(0, false),
            host_shared: BTreeMap::new(),
            started: false,
            dying: false,
        };
        vm.attrs = RangeStore::new(vm.gpa_limit() >> PAGE_SHIFT, false);
        Ok(vm)
    }

    pub fn vm_type(&self) -> VmType {
        self.vm_type
    }

    pub fn ipa_bits(&self) -> u32 {
        self.ipa_bits
    }

    /// The coco shared-alias bit (`1 << (ipa_bits - 1)`); `None` for other types.
    pub fn shared_bit(&self) -> Option<u64> {
        match self.vm_type {
            VmType::Coco => Some(1u64 << (self.ipa_bits - 1)),
            _ => None,
        }
    }

    /// One past the highest GPA memory can have (the shared bit for `coco`).
    pub fn gpa_limit(&self) -> u64 {
        match self.shared_bit() {
            Some(bit) => bit,
            None => 1u64 << self.ipa_bits,
        }
    }

    /// One past the highest IPA (both aliases for `coco`).
    pub fn ipa_limit(&self) -> u64 {
        1u64 << self.ipa_bits
    }

    /// The memslot containing `gpa`.
    pub fn slot_containing(&self, gpa: u64) -> Option<(SlotId, &Memslot)> {
        let (_, &id) = self.by_gpa.range(..=gpa).next_back()?;
        self.slots
            .get(&id)
            .filter(|s| s.contains(gpa))
            .map(|s| (SlotId(id), s))
    }

    pub(crate) fn slot_containing_mut(&mut self, gpa: u64) -> Option<(SlotId, &mut Memslot)> {
        let (_, &id) = self.by_gpa.range(..=gpa).next_back()?;
        self.slots
            .get_mut(&id)
            .filter(|s| s.contains(gpa))
            .map(|s| (SlotId(id), s))
    }

    /// Removes a memslot.
    pub(crate) fn remove_slot(&mut self, id: SlotId) -> Option<Memslot> {
        let s = self.slots.remove(&id.0)?;
        self.by_gpa.remove(&s.gpa());
        Some(s)
    }

    pub fn slot(&self, id: SlotId) -> Option<&Memslot> {
        self.slots.get(&id.0)
    }

    pub(crate) fn slot_mut(&mut self, id: SlotId) -> Option<&mut Memslot> {
        self.slots.get_mut(&id.0)
    }

    /// All memslots.
    pub fn slots(&self) -> impl Iterator<Item = (SlotId, &Memslot)> {
        self.slots.iter().map(|(id, s)| (SlotId(*id), s))
    }

    pub(crate) fn add_slot(&mut self, slot: Memslot) -> Result<SlotId, Errno> {
        if self.slots.len() >= abi::host::MEMSLOTS_PER_VM_MAX {
            return Err(Errno::ENOSPC);
        }
        // Find a free id (ids of deleted slots are reused once the counter wraps).
        let mut id = self.next_slot;
        for _ in 0..=self.slots.len() {
            if let alloc::collections::btree_map::Entry::Vacant(e) = self.slots.entry(id) {
                self.by_gpa.insert(slot.gpa(), id);
                e.insert(slot);
                self.next_slot = id.wrapping_add(1);
                return Ok(SlotId(id));
            }
            id = id.wrapping_add(1);
        }
        Err(Errno::ENOSPC)
    }

    /// Whether one of the VM's vCPUs has run (see [`crate::World::vcpu_started`]).
    pub fn started(&self) -> bool {
        self.started
    }

    pub(crate) fn set_started(&mut self) {
        self.started = true;
    }

    /// The host page shared into the guest at `gpa` (page of a GPA, no shared bit), if any.
    pub fn host_shared_pa(&self, gpa: u64) -> Option<u64> {
        self.host_shared.get(&page_down(gpa)).copied()
    }

    /// Every host page shared into the guest.
    pub fn host_shared_pages(&self) -> Vec<u64> {
        self.host_shared.values().copied().collect()
    }

    /// Every host page shared into the guest, without a list.
    pub fn host_shared_iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.host_shared.values().copied()
    }

    /// Whether a host-shared page lies in `[gpa, end)`.
    pub(crate) fn host_shared_in(&self, gpa: u64, end: u64) -> bool {
        self.host_shared.range(gpa..end).next().is_some()
    }

    /// Whether the gfn of `gpa` has the `PRIVATE` attribute (`false` outside the domain).
    pub fn attr_private(&self, gpa: u64) -> bool {
        self.attrs.get(gpa >> PAGE_SHIFT).unwrap_or(false)
    }

    /// The memory-attribute store (for statistics and tests).
    pub fn attributes(&self) -> &RangeStore<bool> {
        &self.attrs
    }

    pub(crate) fn set_attrs(&mut self, gpa: u64, size: u64, private: bool) -> Result<(), Errno> {
        let (first, last) = crate::gmem::page_range(gpa, size, self.gpa_limit())?;
        self.attrs.set(first, last, private)
    }
}

/// Page-aligns down.
pub(crate) fn page_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}
