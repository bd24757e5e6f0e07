//! The top-level container: gmem files and VMs by handle, and every operation that needs to
//! see both (memslots, conversions, punch hole, attributes, guest requests, teardown).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use abi::flags::{ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::{Errno, PAGE_SHIFT, PAGE_SIZE};

use crate::gmem::{page_range, ConvertError, ConvertRequest, GmemFile, Shareability};
use crate::provider::PageProvider;
use crate::vm::{
    page_down, GmemHandle, Memslot, MemslotSpec, SlotId, Vm, VmHandle, MAX_VMS, VMID_BITS,
};

/// A GPA range of one VM whose stage-2 mappings must be removed. `gpa` has no coco shared bit:
/// for a `coco` VM both aliases (`gpa` and `gpa | shared_bit`) must be unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Unmap {
    pub vm: VmHandle,
    pub gpa: u64,
    pub size: u64,
}

/// A byte range of a gmem file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmemRange {
    pub gmem: GmemHandle,
    pub offset: u64,
    pub size: u64,
}

/// What the hyp must do after a successful state change, before it resumes any world.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Guest stage-2 ranges to unmap (rule 5). Coarse: the whole affected range of every
    /// memslot, of every VM, that maps it.
    pub stage2_unmap: Vec<Stage2Unmap>,
    /// gmem pages the host must lose access to (mmap view and host stage-2): pages that became
    /// private, punched or relinquished pages, deleted files.
    pub host_unmap: Vec<GmemRange>,
    /// gmem pages the host may now be granted access to (pages that became shared).
    pub host_grant: Vec<GmemRange>,
    /// Physical pages already zeroed and returned to the provider (punch, relinquish, memslot
    /// delete of `anon` memory). The hyp must not leave them mapped anywhere.
    pub freed: Vec<u64>,
}

/// One piece of a guest `MEM_SHARE` / `MEM_UNSHARE` range, inside one memslot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRangePiece {
    /// GPA (without the coco shared bit) and size in bytes.
    pub gpa: u64,
    pub size: u64,
    pub slot: SlotId,
    /// The gmem file and the byte offset in it of `gpa`, if the slot has gmem.
    pub gmem: Option<(GmemHandle, u64)>,
    /// Whether that file tracks shareability (else only memory attributes can change).
    pub tracked: bool,
    /// Whether the memory attributes count too: without tracking (the legacy case), and with
    /// tracking in a `coco` memslot that checks mismatches (Trust rule 2).
    pub attr_checked: bool,
}

/// What tearing a VM down gave back: the pages it held (zeroed, freed to the provider) and the
/// host pages that were shared into it (the host's own, to be unshared).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    pub freed: Vec<u64>,
    pub host_shared: Vec<u64>,
}

#[derive(Debug)]
pub(crate) struct GmemEntry {
    pub(crate) file: GmemFile,
    pub(crate) owner: VmHandle,
}

/// Every gmem file and VM of the system, by handle; an unknown handle is `ENOENT`. Gmem handles
/// are small integers from 1, reused only once the counter wraps. VM handles carry a
/// VMID, reused after destroy with a new generation ([`VmHandle`]): at most [`MAX_VMS`] at once.
#[derive(Debug, Default)]
pub struct World {
    pub(crate) vms: BTreeMap<u32, Vm>,
    pub(crate) gmems: BTreeMap<u32, GmemEntry>,
    /// The generation each VMID's next VM gets (index: VMID).
    vm_generation: BTreeMap<u16, u32>,
    next_gmem: u32,
}

/// The next handle after `counter` that `in_use` does not hold: 1, 2, ... and, once the counter
/// wraps, the handles of destroyed objects again (so handles never run out; at most
/// [`MAX_VMS`] x the per-VM limit are in use, so the search is short).
pub fn next_handle(counter: &mut u32, in_use: impl Fn(u32) -> bool) -> Result<u32, Errno> {
    let mut h = *counter;
    for _ in 0..=u32::MAX {
        h = h.wrapping_add(1).max(1);
        if !in_use(h) {
            *counter = h;
            return Ok(h);
        }
    }
    Err(Errno::ENOSPC)
}

impl World {
    pub fn new() -> Self {
        World::default()
    }

    // ---- VMs ----

    /// Creates a VM (`EINVAL` for an IPA size outside 32..=52 bits).
    pub fn create_vm(&mut self, vm_type: VmType, ipa_bits: u32) -> Result<VmHandle, Errno> {
        let vm = Vm::new(vm_type, ipa_bits)?;
        let h = self.free_vm_handle()?;
        self.vms.insert(h, vm);
        Ok(VmHandle(h))
    }

    /// How many gmem files exist.
    pub fn gmem_count(&self) -> usize {
        self.gmems.len()
    }

    /// How many VMs exist.
    pub fn vm_count(&self) -> usize {
        self.vms.len()
    }

    /// The handle of a new VM: the lowest VMID no VM holds, at its next generation (`ENOSPC`
    /// when all [`MAX_VMS`] are in use). O(VMs).
    fn free_vm_handle(&mut self) -> Result<u32, Errno> {
        let mut used = [false; MAX_VMS as usize + 1];
        for &h in self.vms.keys() {
            if let Some(u) = used.get_mut(usize::from(VmHandle(h).vmid())) {
                *u = true;
            }
        }
        let vmid = (1..=MAX_VMS as u16)
            .find(|&v| !used.get(usize::from(v)).copied().unwrap_or(true))
            .ok_or(Errno::ENOSPC)?;
        let generation = self.vm_generation.entry(vmid).or_insert(0);
        let h = (*generation << VMID_BITS) | u32::from(vmid);
        *generation = (*generation + 1) & ((1 << (32 - VMID_BITS)) - 1);
        Ok(h)
    }

    /// Destroys a VM with its memslots (freeing their `anon` memory) and the gmem files it owns
    /// (freeing their pages, whatever the host's pins: the hyp revokes the host's access to
    /// every returned page). Every page is zeroed before it is freed. Returns the freed pages.
    pub fn destroy_vm(
        &mut self,
        vm: VmHandle,
        provider: &mut dyn PageProvider,
    ) -> Result<Teardown, Errno> {
        let mut v = self.vms.remove(&vm.0).ok_or(Errno::ENOENT)?;
        let host_shared = core::mem::take(&mut v.host_shared).into_values().collect();
        let mut freed = Vec::new();
        for slot in v.slots.values_mut() {
            slot.release(provider, &mut freed);
        }
        let owned: Vec<u32> = self
            .gmems
            .iter()
            .filter(|(_, e)| e.owner == vm)
            .map(|(h, _)| *h)
            .collect();
        for h in owned {
            if let Some(mut e) = self.gmems.remove(&h) {
                freed.extend(e.file.release_all(provider));
            }
        }
        Ok(Teardown { freed, host_shared })
    }

    /// Every page a teardown of `vm` would free (its memslots' `anon` memory and its gmem
    /// files' pages), without changing anything: so the hyp can check each page's ownership
    /// change first.
    pub fn vm_pages(&self, vm: VmHandle) -> Result<Vec<u64>, Errno> {
        let v = self.vm(vm)?;
        let mut out: Vec<u64> = v.slots.values().flat_map(|s| s.anon_pages()).collect();
        for e in self.gmems.values().filter(|e| e.owner == vm) {
            out.extend(e.file.allocated_in(0, e.file.size()));
        }
        Ok(out)
    }

    /// The `anon` pages of one memslot: what deleting it would free.
    pub fn slot_pages(&self, vm: VmHandle, slot: SlotId) -> Result<Vec<u64>, Errno> {
        let s = self.vm(vm)?.slot(slot).ok_or(Errno::ENOENT)?;
        Ok(s.anon_pages().collect())
    }

    /// Marks that one of `vm`'s vCPUs runs (its first `VcpuRun`): a `pkvm` VM's memslots are
    /// frozen from now on (Trust rule 9). `ENOENT` for an unknown VM.
    pub fn vcpu_started(&mut self, vm: VmHandle) -> Result<(), Errno> {
        self.vm_mut(vm)?.set_started();
        Ok(())
    }

    /// Host pages shared into a guest at `ipa` (`MapHostShared`): `pages` pages from `pa`,
    /// physically contiguous (the hyp checks the host owns them). Checks, in order: `ENOENT`
    /// unknown VM; `EPERM` a `pkvm` VM (pKVM shares host pages only with non-protected VMs);
    /// `EINVAL` unaligned, empty, overflowing, beyond the VM's IPA space, or for a `coco` VM an
    /// IPA without the shared bit (host pages appear only at the shared alias); `EEXIST` where a
    /// memslot or another host-shared page covers the range (one backing per IPA, Trust rule 4;
    /// for `coco` a memslot covers both aliases). Guest faults there map the host pages
    /// ([`crate::FaultSource::HostShared`]).
    pub fn map_host_shared(
        &mut self,
        vm: VmHandle,
        ipa: u64,
        pa: u64,
        pages: u64,
    ) -> Result<(), Errno> {
        let gpa = self.host_shared_check(vm, ipa, pa, pages)?;
        let v = self.vm_mut(vm)?;
        for i in 0..pages {
            v.host_shared
                .insert(gpa + i * PAGE_SIZE, pa.saturating_add(i * PAGE_SIZE));
        }
        Ok(())
    }

    /// The checks of [`World::map_host_shared`], changing nothing: the GPA (no shared bit) of
    /// the range.
    pub fn host_shared_check(
        &self,
        vm: VmHandle,
        ipa: u64,
        pa: u64,
        pages: u64,
    ) -> Result<u64, Errno> {
        let v = self.vm(vm)?;
        if v.vm_type() == VmType::Pkvm {
            return Err(Errno::EPERM);
        }
        let gpa = match v.shared_bit() {
            Some(bit) if ipa & bit != 0 && ipa < v.ipa_limit() => ipa & !bit,
            Some(_) => return Err(Errno::EINVAL),
            None => ipa,
        };
        let size = pages.checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
        page_range(gpa, size, v.gpa_limit())?;
        if !pa.is_multiple_of(PAGE_SIZE) || pa.checked_add(size).is_none() {
            return Err(Errno::EINVAL);
        }
        let end = gpa + size;
        if v.slots().any(|(_, s)| gpa < s.gpa_end() && s.gpa() < end) || v.host_shared_in(gpa, end)
        {
            return Err(Errno::EEXIST);
        }
        Ok(gpa)
    }

    /// A live VM (`ENOENT` for an unknown one, or one being torn down).
    pub fn vm(&self, vm: VmHandle) -> Result<&Vm, Errno> {
        self.vms
            .get(&vm.0)
            .filter(|v| !v.dying)
            .ok_or(Errno::ENOENT)
    }

    pub(crate) fn vm_mut(&mut self, vm: VmHandle) -> Result<&mut Vm, Errno> {
        self.vms
            .get_mut(&vm.0)
            .filter(|v| !v.dying)
            .ok_or(Errno::ENOENT)
    }

    fn owner_live(&self, owner: VmHandle) -> bool {
        self.vms.get(&owner.0).is_some_and(|v| !v.dying)
    }

    // ---- teardown in bounded steps ----

    /// Starts tearing `vm` down: from now on no call reaches it or its gmem files (`ENOENT`)
    /// but the teardown's steps. `ENOENT` unknown; a VM already dying stays so.
    pub fn begin_teardown(&mut self, vm: VmHandle) -> Result<(), Errno> {
        let v = self.vms.get_mut(&vm.0).ok_or(Errno::ENOENT)?;
        v.dying = true;
        Ok(())
    }

    /// Whether `vm` is being torn down.
    pub fn is_dying(&self, vm: VmHandle) -> bool {
        self.vms.get(&vm.0).is_some_and(|v| v.dying)
    }

    /// One step of a teardown: frees at most `max` pages of the dying `vm` (its memslots'
    /// `anon` memory, then its gmem files' pages, pins or not; zeroed first) and takes at most
    /// `max` of the host pages shared into it. An empty step means nothing is left: then
    /// [`World::destroy_vm`] finishes in bounded time. `ENOENT` unless `vm` is dying.
    pub fn teardown_step(
        &mut self,
        vm: VmHandle,
        max: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<Teardown, Errno> {
        let v = self
            .vms
            .get_mut(&vm.0)
            .filter(|v| v.dying)
            .ok_or(Errno::ENOENT)?;
        let mut step = Teardown::default();
        let mut left = max;
        for slot in v.slots.values_mut() {
            left -= slot.release_some(left, provider, &mut step.freed);
        }
        while left > 0 {
            let Some((_, pa)) = v.host_shared.pop_first() else {
                break;
            };
            step.host_shared.push(pa);
            left -= 1;
        }
        for e in self.gmems.values_mut().filter(|e| e.owner == vm) {
            if left == 0 {
                break;
            }
            let freed = e.file.release_some(left, provider);
            left = left.saturating_sub(freed.len() as u64);
            step.freed.extend(freed);
        }
        Ok(step)
    }

    /// Calls `f(pa)` for every page a teardown of `vm` would free (its memslots' `anon` memory
    /// and its gmem files' pages), until it fails, without a list: the checks before a
    /// teardown starts. `ENOENT` for an unknown VM.
    pub fn try_for_each_vm_page(
        &self,
        vm: VmHandle,
        mut f: impl FnMut(u64) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let v = self.vms.get(&vm.0).ok_or(Errno::ENOENT)?;
        for s in v.slots.values() {
            s.anon_pages().try_for_each(&mut f)?;
        }
        for e in self.gmems.values().filter(|e| e.owner == vm) {
            e.file.try_for_each_allocated(0, e.file.size(), &mut f)?;
        }
        Ok(())
    }

    /// Frees at most `max` of memslot `slot`'s `anon` pages (zeroed first): a step of deleting
    /// it; the caller unmapped the slot's range first and checked every page. -> the freed
    /// pages.
    pub fn slot_release_some(
        &mut self,
        vm: VmHandle,
        slot: SlotId,
        max: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<Vec<u64>, Errno> {
        let v = self.vm_mut(vm)?;
        let s = v.slots.get_mut(&slot.0).ok_or(Errno::ENOENT)?;
        let mut freed = Vec::new();
        s.release_some(max, provider, &mut freed);
        Ok(freed)
    }

    /// Calls `f(pa)` for every `anon` page of memslot `slot`, until it fails: what deleting it
    /// would free, without a list.
    pub fn try_for_each_slot_page(
        &self,
        vm: VmHandle,
        slot: SlotId,
        f: impl FnMut(u64) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let s = self.vm(vm)?.slot(slot).ok_or(Errno::ENOENT)?;
        s.anon_pages().try_for_each(f)
    }

    /// The checks of [`World::delete_memslot`] (`ENOENT`, `EPERM`), changing nothing: the
    /// slot's range `(gpa, size)`.
    pub fn delete_memslot_check(&self, vm: VmHandle, slot: SlotId) -> Result<(u64, u64), Errno> {
        let v = self.vm(vm)?;
        let s = v.slot(slot).ok_or(Errno::ENOENT)?;
        if v.vm_type() == VmType::Pkvm && v.started() {
            return Err(Errno::EPERM);
        }
        Ok((s.gpa(), s.size()))
    }

    /// The checks of [`World::destroy_gmem`] (`ENOENT`, `EBUSY`), changing nothing.
    pub fn destroy_gmem_check(&self, gmem: GmemHandle) -> Result<(), Errno> {
        let file = self.gmem(gmem)?;
        if file.has_pins() || self.is_bound(gmem) {
            return Err(Errno::EBUSY);
        }
        Ok(())
    }

    /// Frees at most `max` pages of gmem `g` (zeroed first): a step of destroying it. The
    /// caller checked what [`World::destroy_gmem`] checks. -> the freed pages.
    pub fn gmem_release_some(
        &mut self,
        gmem: GmemHandle,
        max: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<Vec<u64>, Errno> {
        Ok(self.gmem_mut(gmem)?.release_some(max, provider))
    }

    // ---- gmem files ----

    /// Creates a gmem file owned by `owner` (`KVM_CREATE_GUEST_MEMFD` is a VM ioctl). `ENOENT`
    /// for an unknown VM; `EINVAL` for unknown flag bits or a size that is not a positive
    /// multiple of 4 KiB; `ENOSPC` when the VM owns `GMEM_FILES_PER_VM_MAX` files.
    pub fn create_gmem(
        &mut self,
        owner: VmHandle,
        size: u64,
        flags: u64,
    ) -> Result<GmemHandle, Errno> {
        let vm_type = self.vm(owner)?.vm_type();
        let file = GmemFile::new(size, flags, vm_type)?;
        if self.gmems.values().filter(|e| e.owner == owner).count()
            >= abi::host::GMEM_FILES_PER_VM_MAX
        {
            return Err(Errno::ENOSPC);
        }
        let gmems = &self.gmems;
        let h = next_handle(&mut self.next_gmem, |h| gmems.contains_key(&h))?;
        self.gmems.insert(h, GmemEntry { file, owner });
        Ok(GmemHandle(h))
    }

    /// Destroys a gmem file. `ENOENT` if unknown; `EBUSY` while a memslot binds it or the host
    /// pins one of its pages. Returns the freed (zeroed) pages.
    pub fn destroy_gmem(
        &mut self,
        gmem: GmemHandle,
        provider: &mut dyn PageProvider,
    ) -> Result<Vec<u64>, Errno> {
        let e = self.gmems.get(&gmem.0).ok_or(Errno::ENOENT)?;
        if e.file.has_pins() || self.is_bound(gmem) {
            return Err(Errno::EBUSY);
        }
        match self.gmems.remove(&gmem.0) {
            Some(mut e) => Ok(e.file.release_all(provider)),
            None => Err(Errno::ENOENT),
        }
    }

    fn is_bound(&self, gmem: GmemHandle) -> bool {
        self.vms.values().any(|vm| {
            vm.slots
                .values()
                .any(|s| s.gmem().is_some_and(|b| b.gmem == gmem))
        })
    }

    /// A gmem file of a live VM (`ENOENT` for an unknown one, or one whose VM is being torn
    /// down).
    pub fn gmem(&self, gmem: GmemHandle) -> Result<&GmemFile, Errno> {
        self.gmems
            .get(&gmem.0)
            .filter(|e| self.owner_live(e.owner))
            .map(|e| &e.file)
            .ok_or(Errno::ENOENT)
    }

    pub(crate) fn gmem_mut(&mut self, gmem: GmemHandle) -> Result<&mut GmemFile, Errno> {
        let owner = self.gmem_owner(gmem)?;
        match self.gmems.get_mut(&gmem.0) {
            Some(e) if e.owner == owner => Ok(&mut e.file),
            _ => Err(Errno::ENOENT),
        }
    }

    /// The VM owning a gmem file.
    pub fn gmem_owner(&self, gmem: GmemHandle) -> Result<VmHandle, Errno> {
        self.gmems
            .get(&gmem.0)
            .map(|e| e.owner)
            .filter(|&o| self.owner_live(o))
            .ok_or(Errno::ENOENT)
    }

    // ---- memslots ----

    /// Creates a memslot. Checks, in Linux's order (Trust rule 4):
    /// 1. `ENOENT`: unknown VM;
    /// 2. `EINVAL`, the arguments and flags alone: unknown flag bits; GPA range unaligned,
    ///    empty, overflowing, or beyond the VM's memory (for `coco`: reaching the shared bit);
    ///    `ALWAYS_FAULT_FROM_GMEM` or `userspace_addr = gmem` without gmem; `pkvm` without gmem
    ///    or without `ALWAYS_FAULT_FROM_GMEM`; `coco` with `DONT_CHECK_MISMATCHES` and no gmem;
    /// 3. `EPERM`: a `pkvm` VM whose vCPUs have run (its memslots are frozen, Trust rule 9),
    ///    right after the argument checks;
    /// 4. `EEXIST`: overlaps another memslot of the VM, or host pages shared into it;
    /// 5. the gmem binding: `ENOENT` unknown handle; `EINVAL` a gmem of another VM, a gmem range
    ///    (`offset`, `size`) unaligned, overflowing or beyond the file, a range of the file
    ///    another memslot binds already (one binding per gmem page), `userspace_addr = gmem`
    ///    on a file without `MMAP`, a `pkvm` VM's file without `TRACK_SHAREABILITY`, a `coco`
    ///    memslot with `DONT_CHECK_MISMATCHES` on a file without `TRACK_SHAREABILITY` (SEMANTICS.md
    ///    "Combinations that cannot work").
    pub fn create_memslot(&mut self, vm: VmHandle, spec: &MemslotSpec) -> Result<SlotId, Errno> {
        let v = self.vm(vm)?;
        let flags = MemslotFlags::from_bits(spec.flags).ok_or(Errno::EINVAL)?;
        page_range(spec.gpa, spec.size, v.gpa_limit())?;
        let has_gmem = spec.gmem.is_some();
        let always = flags.contains(MemslotFlags::ALWAYS_FAULT_FROM_GMEM);
        let dont_check = flags.contains(MemslotFlags::DONT_CHECK_MISMATCHES);
        if (spec.userspace_addr == UserspaceAddr::Gmem || always) && !has_gmem {
            return Err(Errno::EINVAL);
        }
        match v.vm_type() {
            VmType::Pkvm if !has_gmem || !always => return Err(Errno::EINVAL),
            VmType::Coco if dont_check && !has_gmem => return Err(Errno::EINVAL),
            _ => {}
        }
        if v.vm_type() == VmType::Pkvm && v.started() {
            return Err(Errno::EPERM);
        }
        let end = spec.gpa.saturating_add(spec.size);
        if v.slots()
            .any(|(_, s)| spec.gpa < s.gpa_end() && s.gpa() < end)
            || v.host_shared_in(spec.gpa, end)
        {
            return Err(Errno::EEXIST);
        }
        if let Some(b) = spec.gmem {
            let e = self.gmems.get(&b.gmem.0).ok_or(Errno::ENOENT)?;
            if e.owner != vm {
                return Err(Errno::EINVAL);
            }
            page_range(b.offset, spec.size, e.file.size())?;
            if !self.bindings_of(b.gmem, b.offset, spec.size).is_empty() {
                return Err(Errno::EINVAL);
            }
            let gflags = e.file.flags();
            let tracked = gflags.contains(GmemFlags::TRACK_SHAREABILITY);
            if spec.userspace_addr == UserspaceAddr::Gmem && !gflags.contains(GmemFlags::MMAP) {
                return Err(Errno::EINVAL);
            }
            match v.vm_type() {
                VmType::Pkvm if !tracked => return Err(Errno::EINVAL),
                VmType::Coco if dont_check && !tracked => return Err(Errno::EINVAL),
                _ => {}
            }
        }
        let slot = Memslot::new(spec.gpa, spec.size, spec.gmem, spec.userspace_addr, flags);
        self.vm_mut(vm)?.add_slot(slot)
    }

    /// Deletes a memslot (`ENOENT` if unknown): its whole GPA range must be unmapped, and its
    /// `anon` memory is freed.
    ///
    /// `EPERM` (after `ENOENT`) for a `pkvm` VM whose vCPUs have run: its memslots are frozen
    /// (Trust rule 9), so no IPA the guest knows as private can be re-pointed.
    pub fn delete_memslot(
        &mut self,
        vm: VmHandle,
        slot: SlotId,
        provider: &mut dyn PageProvider,
    ) -> Result<Invalidation, Errno> {
        let v = self.vm_mut(vm)?;
        if v.slot(slot).is_none() {
            return Err(Errno::ENOENT);
        }
        if v.vm_type() == VmType::Pkvm && v.started() {
            return Err(Errno::EPERM);
        }
        let mut s = v.remove_slot(slot).ok_or(Errno::ENOENT)?;
        let mut inv = Invalidation {
            stage2_unmap: alloc::vec![Stage2Unmap {
                vm,
                gpa: s.gpa(),
                size: s.size()
            }],
            ..Invalidation::default()
        };
        s.release(provider, &mut inv.freed);
        Ok(inv)
    }

    // ---- memory attributes ----

    /// Sets (`private = true`) or clears the `PRIVATE` attribute of `[gpa, gpa + size)`, covered
    /// by memslots or not. `EINVAL` if unaligned, empty, overflowing or beyond the VM's memory
    /// (for `coco`, GPAs are without the shared bit). The range must be unmapped.
    pub fn set_attributes(
        &mut self,
        vm: VmHandle,
        gpa: u64,
        size: u64,
        private: bool,
    ) -> Result<Invalidation, Errno> {
        self.vm_mut(vm)?.set_attrs(gpa, size, private)?;
        Ok(Invalidation {
            stage2_unmap: alloc::vec![Stage2Unmap { vm, gpa, size }],
            ..Invalidation::default()
        })
    }

    /// Every memslot binding a part of `[offset, offset + size)` of `gmem`, as GPA ranges (for
    /// `coco`, both aliases must go): what a conversion or punch of the range unmaps, for the
    /// hyp to unmap before it lets the core touch the pages.
    pub fn gmem_bindings(&self, gmem: GmemHandle, offset: u64, size: u64) -> Vec<Stage2Unmap> {
        self.bindings_of(gmem, offset, size)
    }

    /// Every memslot (of every VM) binding a part of `[offset, offset + size)` of `gmem`, as
    /// GPA ranges.
    fn bindings_of(&self, gmem: GmemHandle, offset: u64, size: u64) -> Vec<Stage2Unmap> {
        let end = offset.saturating_add(size);
        let mut out = Vec::new();
        for (vh, vm) in &self.vms {
            for s in vm.slots.values() {
                let Some(b) = s.gmem() else { continue };
                if b.gmem != gmem {
                    continue;
                }
                let s_end = b.offset.saturating_add(s.size());
                let lo = offset.max(b.offset);
                let hi = end.min(s_end);
                if lo < hi {
                    out.push(Stage2Unmap {
                        vm: VmHandle(*vh),
                        gpa: s.gpa().saturating_add(lo - b.offset),
                        size: hi - lo,
                    });
                }
            }
        }
        out
    }

    // ---- conversions, punch hole, pins, host access ----

    /// Converts a gmem range: see [`GmemFile::convert`] for the checks and their order
    /// (`EOPNOTSUPP`, `EINVAL`, `EPERM`, `EAGAIN` + `error_offset`); an unknown handle is
    /// `ENOENT` (checked after `EOPNOTSUPP`, which is decided from the request alone). Nothing
    /// changes on failure. On success: `stage2_unmap` lists the range in every memslot binding
    /// it; `host_unmap` (to private) or `host_grant` (to shared) lists the ranges whose state
    /// changed.
    pub fn convert(
        &mut self,
        gmem: GmemHandle,
        req: &ConvertRequest,
        provider: &mut dyn PageProvider,
    ) -> Result<Invalidation, ConvertError> {
        if req.to == ConvertTo::Private && req.mode == abi::flags::ContentMode::Zero {
            return Err(Errno::EOPNOTSUPP.into());
        }
        let file = self.gmem_mut(gmem)?;
        let changed = file.convert(req, provider)?;
        let ranges: Vec<GmemRange> = changed
            .into_iter()
            .map(|(offset, size)| GmemRange { gmem, offset, size })
            .collect();
        let mut inv = Invalidation {
            stage2_unmap: self.bindings_of(gmem, req.offset, req.size),
            ..Invalidation::default()
        };
        match req.to {
            ConvertTo::Private => inv.host_unmap = ranges,
            ConvertTo::Shared => inv.host_grant = ranges,
        }
        Ok(inv)
    }

    /// Punch hole (see [`GmemFile::punch`]: `EINVAL`, `EBUSY` if pinned; shareability
    /// unchanged). The range must be unmapped from every memslot binding it and from the host.
    pub fn punch(
        &mut self,
        gmem: GmemHandle,
        offset: u64,
        size: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<Invalidation, Errno> {
        let freed = self.gmem_mut(gmem)?.punch(offset, size, provider)?;
        Ok(Invalidation {
            stage2_unmap: self.bindings_of(gmem, offset, size),
            host_unmap: alloc::vec![GmemRange { gmem, offset, size }],
            host_grant: Vec::new(),
            freed,
        })
    }

    /// A host pin on one page (see [`GmemFile::pin`]). Returns the physical page.
    pub fn pin(
        &mut self,
        gmem: GmemHandle,
        offset: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        self.gmem_mut(gmem)?.pin(offset, provider)
    }

    /// Drops a host pin (`EINVAL` if the page is not pinned).
    pub fn unpin(&mut self, gmem: GmemHandle, offset: u64) -> Result<(), Errno> {
        self.gmem_mut(gmem)?.unpin(offset)
    }

    /// A host access through the gmem mmap view (see [`GmemFile::host_fault`]: `ENODEV` without
    /// `MMAP`, `EFAULT` = SIGBUS beyond the file or on a page the host may not access).
    pub fn host_fault(
        &mut self,
        gmem: GmemHandle,
        offset: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        self.gmem_mut(gmem)?.host_fault(offset, provider)
    }

    /// A host access through a memslot's `userspace_addr` at byte `offset` of the slot.
    /// `ENOENT` for an unknown VM or slot; `EFAULT` (SIGBUS) beyond the slot; `ENODEV` when the
    /// slot has no `userspace_addr`; `anon`: the slot's own page; `gmem`: the mmap view's check
    /// ([`GmemFile::host_fault`]). `ENOMEM` from the provider.
    pub fn host_uaddr_fault(
        &mut self,
        vm: VmHandle,
        slot: SlotId,
        offset: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<u64, Errno> {
        let World { vms, gmems, .. } = self;
        let s = vms
            .get_mut(&vm.0)
            .ok_or(Errno::ENOENT)?
            .slot_mut(slot)
            .ok_or(Errno::ENOENT)?;
        if offset >= s.size() {
            return Err(Errno::EFAULT);
        }
        match s.userspace_addr() {
            UserspaceAddr::None => Err(Errno::ENODEV),
            UserspaceAddr::Anon => s.anon_page(offset, provider),
            UserspaceAddr::Gmem => {
                let gpa = s.gpa().checked_add(offset).ok_or(Errno::EFAULT)?;
                let (g, off) = s.gmem_offset(gpa).ok_or(Errno::ENODEV)?;
                let e = gmems.get_mut(&g.0).ok_or(Errno::ENOENT)?;
                e.file.host_fault(off, provider)
            }
        }
    }

    // ---- guest requests ----

    /// Strips the coco shared bit and checks the IPA is inside the VM's IPA space.
    fn ipa_to_gpa(vm: &Vm, ipa: u64) -> Result<u64, Errno> {
        if ipa >= vm.ipa_limit() {
            return Err(Errno::EINVAL);
        }
        Ok(match vm.shared_bit() {
            Some(bit) => ipa & !bit,
            None => ipa,
        })
    }

    /// The memslot and gmem location backing a GPA (coco shared bit ignored). `ENOENT` unknown
    /// VM; `EINVAL` outside every memslot.
    pub fn gpa_to_gmem(
        &self,
        vm: VmHandle,
        ipa: u64,
    ) -> Result<(SlotId, Option<(GmemHandle, u64)>), Errno> {
        let v = self.vm(vm)?;
        let gpa = Self::ipa_to_gpa(v, ipa)?;
        let (id, s) = v.slot_containing(gpa).ok_or(Errno::EINVAL)?;
        Ok((id, s.gmem_offset(page_down(gpa))))
    }

    /// Validates a guest `MEM_SHARE` (`to = Shared`) / `MEM_UNSHARE` (`to = Private`) of `pages`
    /// granules at `ipa` (the hyp maps an `x2` of 0 to 1 before calling) and splits it into
    /// per-memslot pieces for the host. `ENOENT` unknown VM; `EINVAL` (the guest's
    /// INVALID_PARAMETER): unaligned, `pages == 0`, overflow, or a page outside every memslot;
    /// `EPERM` (also INVALID_PARAMETER for the guest), a page already in the target state:
    /// where the file tracks shareability, its shareability (sharing a shared page, unsharing a
    /// private one); without tracking (the legacy case), its `PRIVATE` attribute. For a `pkvm`
    /// VM, call [`World::guest_first_touch`] first (Trust rule 9).
    pub fn guest_range(
        &self,
        vm: VmHandle,
        ipa: u64,
        pages: u64,
        to: ConvertTo,
    ) -> Result<Vec<GuestRangePiece>, Errno> {
        let v = self.vm(vm)?;
        let (gpa, end) = Self::guest_span(v, ipa, pages)?;
        let mut out = Vec::new();
        let mut cur = gpa;
        while cur < end {
            let (id, s) = v.slot_containing(cur).ok_or(Errno::EINVAL)?;
            let stop = end.min(s.gpa_end());
            let gmem = s.gmem_offset(cur);
            let mut tracked = false;
            if let Some((g, off)) = gmem {
                let f = self.gmem(g)?;
                if let Some(store) = f.shareability_store() {
                    tracked = true;
                    let first = off >> PAGE_SHIFT;
                    let last = first.saturating_add((stop - cur) >> PAGE_SHIFT);
                    let current = match to {
                        ConvertTo::Shared => Shareability::Guest,
                        ConvertTo::Private => Shareability::All,
                    };
                    if !store.all_eq(first, last, current) {
                        return Err(Errno::EPERM);
                    }
                }
            }
            let checks_mismatches = v.vm_type() == VmType::Coco
                && !s.flags().contains(MemslotFlags::DONT_CHECK_MISMATCHES);
            let attr_checked = !tracked || checks_mismatches;
            if !tracked {
                // The attribute is the only state: it must be the other one now.
                let was_private = to == ConvertTo::Shared;
                if !v
                    .attributes()
                    .all_eq(cur >> PAGE_SHIFT, stop >> PAGE_SHIFT, was_private)
                {
                    return Err(Errno::EPERM);
                }
            }
            out.push(GuestRangePiece {
                gpa: cur,
                size: stop - cur,
                slot: id,
                gmem,
                tracked,
                attr_checked,
            });
            cur = stop;
        }
        Ok(out)
    }

    /// The GPA span `[gpa, end)` of a guest range call: `EINVAL` unaligned, empty, overflowing
    /// or beyond the VM's IPA space.
    fn guest_span(v: &Vm, ipa: u64, pages: u64) -> Result<(u64, u64), Errno> {
        if !ipa.is_multiple_of(PAGE_SIZE) || pages == 0 {
            return Err(Errno::EINVAL);
        }
        let gpa = Self::ipa_to_gpa(v, ipa)?;
        let size = pages.checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
        let end = gpa.checked_add(size).ok_or(Errno::EINVAL)?;
        Ok((gpa, end))
    }

    /// A `pkvm` guest's MEM_SHARE / MEM_UNSHARE of pages it has not touched first brings them
    /// in, which is a first touch (Trust rule 9): every `ALL` page of the range the guest did
    /// not share itself becomes `GUEST`, before the call is validated (so unsharing an untouched
    /// `INIT_SHARED` page fails with the page taken). A no-op for other VM types. `EINVAL` as
    /// [`World::guest_range`] for a bad range or a page outside every memslot; `EBUSY`, with
    /// nothing changed, if the host pins a page to be taken. The result's `host_unmap` lists the
    /// ranges taken: the host must lose its access to them.
    pub fn guest_first_touch(
        &mut self,
        vm: VmHandle,
        ipa: u64,
        pages: u64,
    ) -> Result<Invalidation, Errno> {
        let v = self.vm(vm)?;
        if v.vm_type() != VmType::Pkvm {
            return Ok(Invalidation::default());
        }
        let (gpa, end) = Self::guest_span(v, ipa, pages)?;
        // Check every piece first (slots, pins), then take: all or nothing.
        let mut pieces = Vec::new();
        let mut cur = gpa;
        while cur < end {
            let (_, s) = v.slot_containing(cur).ok_or(Errno::EINVAL)?;
            let stop = end.min(s.gpa_end());
            if let Some((g, off)) = s.gmem_offset(cur) {
                pieces.push((g, off, stop - cur));
            }
            cur = stop;
        }
        for &(g, off, size) in &pieces {
            let f = self.gmem(g)?;
            let first = off >> PAGE_SHIFT;
            let last = first.saturating_add(size >> PAGE_SHIFT);
            if f.takeable_runs_of(first, last)
                .iter()
                .any(|&(a, b)| f.pinned_in(a, b))
            {
                return Err(Errno::EBUSY);
            }
        }
        let mut inv = Invalidation::default();
        for (g, off, size) in pieces {
            for (offset, size) in self.gmem_mut(g)?.take(off, size)? {
                inv.host_unmap.push(GmemRange {
                    gmem: g,
                    offset,
                    size,
                });
            }
        }
        Ok(inv)
    }

    /// Trust rule 2: how many pages of a forwarded piece are done, from the state the core
    /// holds, whatever the host claimed. A page counts as done when its shareability is now
    /// the requested one (with tracking) and, where attributes count
    /// ([`GuestRangePiece::attr_checked`]), its `PRIVATE` attribute is too; the pieces were
    /// validated in the other state, so "is now" means "changed". Counted from the start of the
    /// piece up to the first page not done (the guest resumes from there). 0 when the VM, slot
    /// or file is gone.
    pub fn guest_pages_done(&self, vm: VmHandle, piece: &GuestRangePiece, to: ConvertTo) -> u64 {
        let Ok(v) = self.vm(vm) else {
            return 0;
        };
        let file = match (piece.tracked, piece.gmem) {
            (true, Some((g, _))) => match self.gmem(g) {
                Ok(f) => Some(f),
                Err(_) => return 0,
            },
            (true, None) => return 0,
            (false, _) => None,
        };
        let target = match to {
            ConvertTo::Shared => Shareability::All,
            ConvertTo::Private => Shareability::Guest,
        };
        let want_private = to == ConvertTo::Private;
        let pages = piece.size >> PAGE_SHIFT;
        let mut done = 0;
        for i in 0..pages {
            let delta = i << PAGE_SHIFT;
            let share_ok = match (file, piece.gmem) {
                (Some(f), Some((_, off))) => {
                    f.shareability(off.saturating_add(delta)) == Some(target)
                }
                _ => true,
            };
            let attr_ok = !piece.attr_checked
                || v.attr_private(piece.gpa.saturating_add(delta)) == want_private;
            if !(share_ok && attr_ok) {
                break;
            }
            done += 1;
        }
        done
    }

    /// `MEM_RELINQUISH` of one page: the page leaves the guest, is zeroed and freed. `ENOENT`
    /// unknown VM; `EINVAL` unaligned, outside every memslot, or a slot without gmem; `EPERM` a
    /// page the guest shared (`ALL` in a tracked file); `EBUSY` a page the host pins. A page
    /// never faulted in is a successful no-op (empty [`Invalidation`]).
    pub fn relinquish(
        &mut self,
        vm: VmHandle,
        ipa: u64,
        provider: &mut dyn PageProvider,
    ) -> Result<Invalidation, Errno> {
        let Some((g, off)) = self.relinquish_check(vm, ipa)? else {
            return Ok(Invalidation::default());
        };
        self.punch(g, off, PAGE_SIZE, provider)
    }

    /// The checks of [`World::relinquish`], changing nothing: the gmem page it would free
    /// (`None`: not allocated, a no-op).
    pub fn relinquish_check(
        &self,
        vm: VmHandle,
        ipa: u64,
    ) -> Result<Option<(GmemHandle, u64)>, Errno> {
        if !ipa.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let (_, loc) = self.gpa_to_gmem(vm, ipa)?;
        let (g, off) = loc.ok_or(Errno::EINVAL)?;
        let f = self.gmem(g)?;
        if f.shareability(off) == Some(Shareability::All) {
            return Err(Errno::EPERM);
        }
        if f.pin_count(off) > 0 {
            return Err(Errno::EBUSY);
        }
        Ok(f.page_pa(off).map(|_| (g, off)))
    }
}
