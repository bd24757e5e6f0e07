//! Guest stage-2 fault resolution (SEMANTICS.md "Guest fault routing", rules 1-4).

use abi::flags::{MemoryFaultFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::{Errno, PAGE_SIZE};

use crate::provider::PageProvider;
use crate::vm::{page_down, SlotId, VmHandle};
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
}

/// What the hyp must do about a guest stage-2 fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResolution {
    /// Map `pa` at `ipa` (the page-aligned faulting IPA, with the coco shared bit if the access
    /// used that alias) with RWX, and resume the guest at the faulting instruction.
    Map {
        ipa: u64,
        /// `ipa` without the coco shared bit.
        gpa: u64,
        pa: u64,
        source: FaultSource,
        slot: SlotId,
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
        let attr_private = v.attr_private(gpa);
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
        let map = |pa: u64, source: FaultSource| FaultResolution::Map {
            ipa: ipa_page,
            gpa,
            pa,
            source,
            slot: slot_id,
        };
        let lookup = if to_gmem {
            let Some((g, off)) = slot.gmem_offset(gpa) else {
                return Ok(memory_fault);
            };
            let file = &mut gmems.get_mut(&g.0).ok_or(Errno::ENOENT)?.file;
            let r = if vm_type == VmType::Pkvm {
                file.get_pfn_no_validate(off, provider)
            } else {
                file.get_pfn(off, is_private, provider)
            };
            r.map(|pa| map(pa, FaultSource::Gmem))
        } else {
            match slot.userspace_addr() {
                UserspaceAddr::None => return Ok(memory_fault),
                UserspaceAddr::Anon => {
                    let off = gpa - slot.gpa();
                    slot.anon_page(off, provider)
                        .map(|pa| map(pa, FaultSource::UserspaceAnon))
                }
                UserspaceAddr::Gmem => {
                    let Some((g, off)) = slot.gmem_offset(gpa) else {
                        return Ok(memory_fault);
                    };
                    let file = &mut gmems.get_mut(&g.0).ok_or(Errno::ENOENT)?.file;
                    file.host_fault(off, provider)
                        .map(|pa| map(pa, FaultSource::UserspaceGmem))
                }
            }
        };
        match lookup {
            Ok(r) => Ok(r),
            Err(Errno::ENOMEM) => Ok(FaultResolution::NeedPages),
            // EACCES: get_pfn validation; EFAULT/ENODEV: the mmap view refused the access.
            Err(Errno::EACCES | Errno::EFAULT | Errno::ENODEV) => Ok(memory_fault),
            Err(e) => Err(e),
        }
    }
}
