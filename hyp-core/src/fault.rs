//! Guest stage-2 fault resolution (SEMANTICS.md "Guest fault routing", rules 1-4), with 2 MiB
//! blocks.
//!
//! # When a fault is served with a 2 MiB block
//! [`World::resolve_fault`] returns a [`FaultResolution::Map`] of `size` [`BLOCK_SIZE`] (with
//! `ipa`, `gpa` and `pa` aligned down to 2 MiB) when all of these hold, and otherwise serves the
//! 4 KiB page exactly as without blocks:
//! - the fault is routed to gmem (source [`FaultSource::Gmem`]) or to the host's mmap view of
//!   gmem ([`FaultSource::UserspaceGmem`]); never for `anon` memory;
//! - the 2 MiB-aligned GPA range around the fault lies entirely in the faulting memslot, and the
//!   gmem offsets behind it form a 2 MiB-aligned range inside the file;
//! - every page of the range passes the check the fault itself makes: `get_pfn` validation
//!   (tracked file: all `GUEST` for a private fault, all `ALL` for a shared one), the mmap
//!   view's check for `UserspaceGmem`; for `pkvm` (`get_pfn_no_validate`) the shareability of
//!   a tracked file must still be uniform, since the host stage-2 treats shared and private
//!   pages differently ([`BlockCheck`]);
//! - `coco` with the mismatch check on: the `PRIVATE` attribute of the whole range equals the
//!   access's privacy;
//! - the range's pages are either all unallocated (one block is then taken with
//!   [`PageProvider::alloc_zeroed_block`]; if that fails the fault falls back to 4 KiB, so a
//!   missing block never causes [`FaultResolution::NeedPages`]) or already allocated as one
//!   physically contiguous, 2 MiB-aligned chunk (page `i` at `base + i * 4096`).
//!
//! After a change inside a block (conversion, punch, relinquish of one page) the hyp unmaps just
//! that page (splitting the block). [`World::block_mergeable`] answers, with the same
//! conditions and every page allocated as the one chunk, whether the 2 MiB range may be mapped
//! as a block again. A punched or relinquished page that is faulted in again gets whatever single
//! page the provider hands out: in general another physical page, so the range is no longer one
//! chunk and stays mapped with 4 KiB pages for good (until the whole range is punched and
//! faulted in again as a fresh block); only if the provider happens to return the very page
//! just freed (a LIFO pool with nothing allocated in between) is the range one chunk again and
//! mergeable.

use abi::flags::{MemoryFaultFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::{Errno, PAGE_SIZE};

use crate::gmem::{BlockCheck, Shareability};
use crate::provider::{PageProvider, BLOCK_SIZE};
use crate::vm::{page_down, GmemHandle, SlotId, Vm, VmHandle};
use crate::world::World;

/// The access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    fn flags(self) -> MemoryFaultFlags {
        match self {
            Access::Read => MemoryFaultFlags::READ,
            Access::Write => MemoryFaultFlags::WRITE,
            Access::Exec => MemoryFaultFlags::EXEC,
        }
    }
}

/// Which path served a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultSource {
    /// `kvm_gmem_get_pfn()` (validating or not).
    Gmem,
    /// `userspace_addr` pointing at separate host memory (`anon`).
    UserspaceAnon,
    /// `userspace_addr` pointing at the host's mmap view of the slot's gmem.
    UserspaceGmem,
    /// A host page shared into the guest outside every memslot (`MapHostShared`).
    HostShared,
}

/// What the hyp must do about a guest stage-2 fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResolution {
    /// Map `size` bytes at `pa` at `ipa` (the faulting IPA aligned down to `size`, with the coco
    /// shared bit if the access used that alias) with RWX, and resume the guest at the faulting
    /// instruction.
    Map {
        ipa: u64,
        /// `ipa` without the coco shared bit.
        gpa: u64,
        /// Physical address of the first page (aligned to `size`).
        pa: u64,
        source: FaultSource,
        /// The memslot that served it (`None` for a host-shared page).
        slot: Option<SlotId>,
        /// 4096, or [`BLOCK_SIZE`] (2 MiB) for a block (see the module docs).
        size: u64,
        /// Whether the host may reach the page(s) through its stage-2
        /// ([`crate::GmemFile::host_stage2_allowed`]; `false` for `anon` memory, which is the
        /// host's own and lent to the guest). Saves the hyp a second lookup on the fault path.
        host_access: bool,
    },
    /// Exit to the host with `KVM_EXIT_MEMORY_FAULT`; the vCPU does not advance.
    MemoryFault {
        /// Page aligned, without the coco shared bit.
        gpa: u64,
        size: u64,
        flags: MemoryFaultFlags,
    },
    /// No memslot covers the GPA: an MMIO exit to the host.
    Mmio {
        /// The faulting IPA as the guest used it.
        ipa: u64,
    },
    /// The page provider is empty: the hyp asks the host for pages and re-runs the vCPU at
    /// the same instruction. Nothing changed.
    NeedPages,
}

impl World {
    /// Resolves a guest stage-2 fault at `ipa` of `vm`:
    /// 1. `coco`: the access is private iff the shared bit (`ipa_bits - 1`) is clear; the GPA is
    ///    the IPA without it. No memslot: [`FaultResolution::Mmio`].
    /// 2. Route: `pkvm` -> gmem; `plain` -> gmem with `ALWAYS_FAULT_FROM_GMEM`, else
    ///    userspace_addr; `coco` -> gmem for private faults, and for shared faults with
    ///    `ALWAYS_FAULT_FROM_GMEM`, else userspace_addr.
    /// 3. Mismatch (`coco` without `DONT_CHECK_MISMATCHES`): private access != the gfn's
    ///    `PRIVATE` attribute -> memory fault.
    /// 4. gmem: [`crate::GmemFile::get_pfn_no_validate`] for `pkvm`,
    ///    [`crate::GmemFile::get_pfn`] otherwise (`plain` faults are shared); `EACCES` -> memory
    ///    fault; no gmem in the slot -> memory fault. userspace_addr: `anon` -> the slot's own
    ///    page; `gmem` -> the mmap view's check ([`crate::GmemFile::host_fault`]), a refusal is
    ///    a memory fault (private = 0); none -> memory fault.
    ///
    /// Where the whole 2 MiB range around the fault qualifies (module docs), the result is a
    /// 2 MiB [`FaultResolution::Map`]; the outcome for the faulting page is the same either way.
    ///
    /// `ENOMEM` from the provider is [`FaultResolution::NeedPages`]. `ENOENT` for an unknown
    /// VM, `EINVAL` for an IPA beyond the VM's IPA size.
    pub fn resolve_fault(
        &mut self,
        vm: VmHandle,
        ipa: u64,
        access: Access,
        provider: &mut dyn PageProvider,
    ) -> Result<FaultResolution, Errno> {
        let World { vms, gmems, .. } = self;
        let v = vms.get_mut(&vm.0).ok_or(Errno::ENOENT)?;
        if ipa >= v.ipa_limit() {
            return Err(Errno::EINVAL);
        }
        let vm_type = v.vm_type();
        let (gpa, is_private) = match v.shared_bit() {
            Some(bit) => (ipa & !bit, ipa & bit == 0),
            None => (ipa, false),
        };
        let gpa = page_down(gpa);
        let ipa_page = page_down(ipa);
        let mut mf_flags = access.flags();
        if is_private {
            mf_flags |= MemoryFaultFlags::PRIVATE;
        }
        let memory_fault = FaultResolution::MemoryFault {
            gpa,
            size: PAGE_SIZE,
            flags: mf_flags,
        };
        // A host page shared into the guest (plain; coco at the shared alias): one backing per
        // IPA, so no memslot is there.
        if !is_private || v.shared_bit().is_none() {
            if let Some(pa) = v.host_shared_pa(gpa) {
                return Ok(FaultResolution::Map {
                    ipa: ipa_page,
                    gpa,
                    pa,
                    source: FaultSource::HostShared,
                    slot: None,
                    size: PAGE_SIZE,
                    host_access: true,
                });
            }
        }
        // A block needs a free 2 MiB chunk (or pages already allocated as one, which a
        // provider without chunks skips: they are then mapped page by page).
        let block = if provider.may_have_block() {
            block_plan(v, gpa, is_private)
        } else {
            None
        };
        if let Some(plan) = block {
            if let Some(e) = gmems.get_mut(&plan.gmem.0) {
                if let Some(pa) = e.file.get_block(plan.offset, plan.check, provider) {
                    return Ok(FaultResolution::Map {
                        ipa: ipa & !(BLOCK_SIZE - 1),
                        gpa: plan.gpa,
                        pa,
                        source: plan.source,
                        slot: Some(plan.slot),
                        size: BLOCK_SIZE,
                        host_access: e.file.host_stage2_allowed(plan.offset),
                    });
                }
            }
        }
        // The attribute matters only to a coco VM's mismatch check (read before the slot is
        // borrowed mutably; skipped for the other types).
        let attr_private = vm_type == VmType::Coco && v.attr_private(gpa);
        let Some((slot_id, slot)) = v.slot_containing_mut(gpa) else {
            return Ok(FaultResolution::Mmio { ipa });
        };
        let always = slot.flags().contains(MemslotFlags::ALWAYS_FAULT_FROM_GMEM);
        let dont_check = slot.flags().contains(MemslotFlags::DONT_CHECK_MISMATCHES);
        let to_gmem = match vm_type {
            VmType::Pkvm => true,
            VmType::Plain => always,
            VmType::Coco => is_private || always,
        };
        if vm_type == VmType::Coco && !dont_check && attr_private != is_private {
            return Ok(memory_fault);
        }
        let map = |pa: u64, source: FaultSource, host_access: bool| FaultResolution::Map {
            ipa: ipa_page,
            gpa,
            pa,
            source,
            slot: Some(slot_id),
            size: PAGE_SIZE,
            host_access,
        };
        let lookup = if to_gmem {
            let Some((g, off)) = slot.gmem_offset(gpa) else {
                return Ok(memory_fault);
            };
            let file = &mut gmems.get_mut(&g.0).ok_or(Errno::ENOENT)?.file;
            if vm_type == VmType::Pkvm {
                file.get_pfn_no_validate(off, provider)
                    .map(|pa| map(pa, FaultSource::Gmem, file.host_stage2_allowed(off)))
            } else {
                // A validated lookup already knows the page's shareability: a tracked page that
                // passed is `ALL` exactly for a shared fault; an untracked one is the host's only
                // on a plain VM. No second look at the store.
                let host_access = if file.tracks_shareability() {
                    !is_private
                } else {
                    file.owner_type() == VmType::Plain
                };
                file.get_pfn(off, is_private, provider)
                    .map(|pa| map(pa, FaultSource::Gmem, host_access))
            }
        } else {
            match slot.userspace_addr() {
                UserspaceAddr::None => return Ok(memory_fault),
                UserspaceAddr::Anon => {
                    let off = gpa - slot.gpa();
                    slot.anon_page(off, provider)
                        .map(|pa| map(pa, FaultSource::UserspaceAnon, false))
                }
                UserspaceAddr::Gmem => {
                    let Some((g, off)) = slot.gmem_offset(gpa) else {
                        return Ok(memory_fault);
                    };
                    let file = &mut gmems.get_mut(&g.0).ok_or(Errno::ENOENT)?.file;
                    file.host_fault(off, provider).map(|pa| {
                        map(
                            pa,
                            FaultSource::UserspaceGmem,
                            file.host_stage2_allowed(off),
                        )
                    })
                }
            }
        };
        match lookup {
            Ok(r) => Ok(r),
            Err(Errno::ENOMEM) => Ok(FaultResolution::NeedPages),
            // EACCES: get_pfn validation; EFAULT/ENODEV: the mmap view refused the access;
            // EBUSY: a pkvm first touch of a page the host pins (Trust rule 9).
            Err(Errno::EACCES | Errno::EFAULT | Errno::ENODEV | Errno::EBUSY) => Ok(memory_fault),
            Err(e) => Err(e),
        }
    }
}

/// Where a 2 MiB block around a fault would come from: everything but the pages themselves.
struct BlockPlan {
    slot: SlotId,
    gmem: GmemHandle,
    /// File offset of the block (2 MiB aligned).
    offset: u64,
    /// GPA of the block (2 MiB aligned, no shared bit).
    gpa: u64,
    check: BlockCheck,
    source: FaultSource,
}

/// The block candidate for a fault at `gpa` (no shared bit) of `v`: the route, the memslot and
/// gmem alignment, and for `coco` with the mismatch check on, uniform matching attributes.
/// `None` when a block is out of the question (the fault is then served as 4 KiB).
fn block_plan(v: &Vm, gpa: u64, is_private: bool) -> Option<BlockPlan> {
    let base = gpa & !(BLOCK_SIZE - 1);
    let end = base.checked_add(BLOCK_SIZE)?;
    let (slot_id, slot) = v.slot_containing(gpa)?;
    if base < slot.gpa() || end > slot.gpa_end() {
        return None;
    }
    let (g, offset) = slot.gmem_offset(base)?;
    if !offset.is_multiple_of(BLOCK_SIZE) {
        return None;
    }
    let vm_type = v.vm_type();
    let always = slot.flags().contains(MemslotFlags::ALWAYS_FAULT_FROM_GMEM);
    let dont_check = slot.flags().contains(MemslotFlags::DONT_CHECK_MISMATCHES);
    let (check, source) = match vm_type {
        VmType::Pkvm => (BlockCheck::NoValidate, FaultSource::Gmem),
        VmType::Plain if always => (BlockCheck::Validate { private: false }, FaultSource::Gmem),
        VmType::Coco if is_private || always => (
            BlockCheck::Validate {
                private: is_private,
            },
            FaultSource::Gmem,
        ),
        _ if slot.userspace_addr() == UserspaceAddr::Gmem => {
            (BlockCheck::HostView, FaultSource::UserspaceGmem)
        }
        _ => return None,
    };
    if vm_type == VmType::Coco
        && !dont_check
        && !v
            .attributes()
            .all_eq(base >> abi::PAGE_SHIFT, end >> abi::PAGE_SHIFT, is_private)
    {
        return None;
    }
    Some(BlockPlan {
        slot: slot_id,
        gmem: g,
        offset,
        gpa: base,
        check,
        source,
    })
}

impl World {
    /// Whether the 2 MiB range of `vm` containing `ipa_2m` may be mapped as one block again
    /// (asked by the hyp after it served a 4 KiB fault there, before it tries to merge its
    /// stage-2 entries): the conditions of a block fault (module docs), with every page of the
    /// range allocated as one physically contiguous, 2 MiB-aligned chunk. Returns the chunk's
    /// physical base. For `coco`, `ipa_2m` may carry the shared bit, which selects the shared
    /// alias as in [`World::resolve_fault`]. `None` for an unknown VM or an IPA beyond its IPA
    /// size. A page punched or relinquished and faulted in again is in general another
    /// physical page, so its range is not one chunk any more: `None` for good (until the whole
    /// range is freed), unless the provider returned the very page that was freed.
    pub fn block_mergeable(&self, vm: VmHandle, ipa_2m: u64) -> Option<u64> {
        let v = self.vms.get(&vm.0)?;
        if ipa_2m >= v.ipa_limit() {
            return None;
        }
        let (gpa, is_private) = match v.shared_bit() {
            Some(bit) => (ipa_2m & !bit, ipa_2m & bit == 0),
            None => (ipa_2m, false),
        };
        let plan = block_plan(v, gpa, is_private)?;
        let file = &self.gmems.get(&plan.gmem.0)?.file;
        if !file.block_check(plan.offset, plan.check) {
            return None;
        }
        file.contiguous_block(plan.offset)
    }
}

impl World {
    /// The invariant checker's view of the guest (Trust rules 1 and 3): what a stage-2 mapping
    /// of the 4 KiB page at `ipa` of `vm` may be, from the state the core holds now.
    /// `Some((pa, private))`: the page a fault there would map now, and whether the guest was
    /// told it is private (a `pkvm` page it took or the host gave it, a `coco` private-alias
    /// page), so that only the guest may own it. `None`: nothing may be mapped there (a fault
    /// would exit as MMIO or with a memory fault, or no page backs it). Routes exactly as
    /// [`World::resolve_fault`], but allocates and changes nothing: a second reading of the
    /// rules, which a stale or wrong mapping fails.
    pub fn expected_mapping(&self, vm: VmHandle, ipa: u64) -> Option<(u64, bool)> {
        let v = self.vms.get(&vm.0)?;
        if ipa >= v.ipa_limit() {
            return None;
        }
        let vm_type = v.vm_type();
        let (gpa, is_private) = match v.shared_bit() {
            Some(bit) => (page_down(ipa & !bit), ipa & bit == 0),
            None => (page_down(ipa), false),
        };
        if !is_private || v.shared_bit().is_none() {
            if let Some(pa) = v.host_shared_pa(gpa) {
                return Some((pa, false));
            }
        }
        let (_, slot) = v.slot_containing(gpa)?;
        let always = slot.flags().contains(MemslotFlags::ALWAYS_FAULT_FROM_GMEM);
        let dont_check = slot.flags().contains(MemslotFlags::DONT_CHECK_MISMATCHES);
        if vm_type == VmType::Coco && !dont_check && v.attr_private(gpa) != is_private {
            return None;
        }
        let to_gmem = match vm_type {
            VmType::Pkvm => true,
            VmType::Plain => always,
            VmType::Coco => is_private || always,
        };
        if to_gmem {
            let (g, off) = slot.gmem_offset(gpa)?;
            let file = &self.gmems.get(&g.0)?.file;
            let pa = file.page_pa(off)?;
            return match (vm_type, file.shareability(off)) {
                (VmType::Pkvm, Some(Shareability::Guest)) => Some((pa, true)),
                // A page the guest shared itself; an untaken one is never mapped (rule 9).
                (VmType::Pkvm, Some(Shareability::All)) => {
                    file.guest_shared(off).then_some((pa, false))
                }
                (VmType::Pkvm, None) => None,
                (_, Some(s)) => {
                    let need = if is_private {
                        Shareability::Guest
                    } else {
                        Shareability::All
                    };
                    (s == need).then_some((pa, is_private))
                }
                (VmType::Coco, None) => Some((pa, is_private)),
                (_, None) => Some((pa, false)),
            };
        }
        match slot.userspace_addr() {
            UserspaceAddr::None => None,
            UserspaceAddr::Anon => slot.anon_pa(gpa - slot.gpa()).map(|pa| (pa, false)),
            UserspaceAddr::Gmem => {
                let (g, off) = slot.gmem_offset(gpa)?;
                let file = &self.gmems.get(&g.0)?.file;
                file.host_access_check(off).ok()?;
                file.page_pa(off).map(|pa| (pa, false))
            }
        }
    }
}
