//! Protection: the host's stage-2 and pKVM page ownership.
//!
//! The host runs under an identity stage-2 (VMID 0) built on demand, the largest block that fits,
//! covering only pages the ownership table says the host owns or borrows. Every change that takes
//! a page away from the host unmaps it from that stage-2 before the host runs again; a host access
//! to such a page takes a stage-2 fault that the hyp turns into a data abort injected at EL1.
//!
//! Ownership of gmem pages follows the portable policy (`GmemFile::host_stage2_allowed`): a page
//! backing a VM's gmem is OWNED by that guest, and SHARED_OWNED by it / SHARED_BORROWED by the host
//! while the policy lets the host reach it. Pool pages (donated, not yet used) and table pages are
//! the hyp's.

use alloc::vec::Vec;

use abi::{Errno, PAGE_SIZE};
use board::layout::RAM_BASE;
use hyp_core::{GmemHandle, Invalidation, VmHandle};
use hyp_mem::ownership::{Access, Component, Ownership, PageMeta, PageState, Violation};
use hyp_mem::stage2::{PhysMem, S2Attrs, Stage2, ENTRIES};

use crate::arch::tlb::HwTlb;
use crate::mm;
use crate::vmm::Hyp;

/// Table pages of the host stage-2 come from the hyp's own allocator.
#[derive(Debug, Default)]
pub struct HypPages;

// SAFETY: pages come from the hyp's page allocator: zeroed, aligned to their count (buddy),
// identity-mapped at EL2, used by nothing else until freed here.
unsafe impl PhysMem for HypPages {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        mm::alloc_pages(count).map(|pa| pa as u64)
    }

    fn free_pages(&mut self, pa: u64, count: usize) {
        mm::free_pages(pa as usize, count);
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        pa as *mut [u64; ENTRIES]
    }
}

/// The host's stage-2.
pub type HostStage2 = Stage2<HypPages, HwTlb>;

fn zero(pa: u64) {
    // SAFETY: called by the ownership table between its checks and the state change, on a page
    // that no guest maps any more and the host cannot reach: RAM, identity-mapped at EL2.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE_SIZE as usize) };
}

fn vmid(vm: VmHandle) -> u16 {
    vm.0 as u16
}

impl Hyp {
    /// The host can no longer reach `pa`: remove it from the host stage-2 (splitting a block).
    pub(crate) fn host_unmap(&mut self, pa: u64) {
        if let Err(e) = self.host_s2.unmap(pa, PAGE_SIZE) {
            log::error!("host stage-2 unmap of 0x{pa:x} failed: {e}");
        }
    }

    /// Host pages become the hyp's (a VM pool): checked for every page before any changes.
    pub(crate) fn take_from_host(&mut self, pa: u64, pages: u64) -> Result<(), Errno> {
        for i in 0..pages {
            self.owners.check(
                pa + i * PAGE_SIZE,
                hyp_mem::ownership::Transition::HostDonateToHyp,
            )?;
        }
        for i in 0..pages {
            let p = pa + i * PAGE_SIZE;
            self.owners.host_donate_to_hyp(p)?;
            self.host_unmap(p);
        }
        Ok(())
    }

    /// Brings a gmem page of `vm` to what the policy asks: the guest owns it, and the host
    /// borrows it iff `host_allowed`.
    pub(crate) fn sync_gmem_page(
        &mut self,
        vm: VmHandle,
        pa: u64,
        host_allowed: bool,
    ) -> Result<(), Errno> {
        let id = vmid(vm);
        let info = self.owners.info(pa)?;
        if info.state_of(Component::Hyp) == PageState::Owned {
            // Fresh from the pool: straight to the guest (shared with the host if allowed).
            return self.owners.hyp_donate_to_guest(pa, id, host_allowed);
        }
        match (info.state_of(Component::Guest(id)), host_allowed) {
            (PageState::Owned, true) => self.owners.guest_share_with_host(pa, id),
            (PageState::SharedOwned, false) => {
                self.owners.guest_unshare_from_host(pa, id)?;
                self.host_unmap(pa);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// An `anon` page (separate host memory) the guest maps: the host's, shared with the guest.
    pub(crate) fn sync_anon_page(&mut self, vm: VmHandle, pa: u64) -> Result<(), Errno> {
        let info = self.owners.info(pa)?;
        if info.state_of(Component::Hyp) == PageState::Owned {
            self.owners.hyp_donate_to_host(pa)?;
            self.owners.host_share_with_guest(pa, vmid(vm))?;
        }
        Ok(())
    }

    /// Every allocated page of `[offset, offset + size)` of `g` to the policy's state.
    pub(crate) fn sync_gmem_range(&mut self, g: GmemHandle, offset: u64, size: u64) {
        let Ok(owner) = self.world.gmem_owner(g) else {
            return;
        };
        let mut pages = Vec::new();
        if let Ok(file) = self.world.gmem(g) {
            let end = offset.saturating_add(size).min(file.size());
            let mut off = offset & !(PAGE_SIZE - 1);
            while off < end {
                if let Some(pa) = file.page_pa(off) {
                    pages.push((pa, file.host_stage2_allowed(off)));
                }
                off += PAGE_SIZE;
            }
        }
        for (pa, allowed) in pages {
            if let Err(e) = self.sync_gmem_page(owner, pa, allowed) {
                log::error!("ownership of gmem page 0x{pa:x}: {e}");
            }
        }
    }

    /// A page the core freed (zeroed) into `vm`'s pool becomes the hyp's again.
    pub(crate) fn reclaim_to_pool(&mut self, vm: VmHandle, pa: u64) {
        let Ok(info) = self.owners.info(pa) else {
            return;
        };
        if info.state_of(Component::Hyp) == PageState::Owned {
            return;
        }
        let r = self
            .owners
            .host_reclaim_from_guest(pa, vmid(vm), &mut zero)
            .and_then(|()| {
                self.host_unmap(pa);
                self.owners.host_donate_to_hyp(pa)
            });
        if let Err(e) = r {
            log::error!("reclaiming page 0x{pa:x} from VM {}: {e}", vm.0);
        }
    }

    /// Ownership side of an [`Invalidation`] (after the guest stage-2 unmaps): freed pages go
    /// back to the pool, pages that changed shareability to their new state.
    pub(crate) fn sync_after(&mut self, owner: VmHandle, inv: &Invalidation) {
        for &pa in &inv.freed {
            self.reclaim_to_pool(owner, pa);
        }
        for r in inv.host_unmap.iter().chain(inv.host_grant.iter()) {
            self.sync_gmem_range(r.gmem, r.offset, r.size);
        }
    }

    /// A host stage-2 fault at `ipa` (== PA): map the largest block the host may reach.
    /// `false`: the host may not touch it; the caller injects an abort.
    pub(crate) fn host_stage2_fault(&mut self, ipa: u64) -> bool {
        let ram_end = self.owners.ram_end();
        let r = if ipa < RAM_BASE as u64 {
            // MMIO below RAM: only the devices the host needs (its console, the GIC distributor
            // and redistributors, `boot::HostMmio`), as device memory, never executable.
            // Everything else there (flash, fw_cfg and its DMA, RTC, GPIO, virtio-mmio, PCIe)
            // stays unmapped: no DMA-capable device for the host (Trust rules 1 and 11).
            match crate::boot::host_mmio_region(ipa) {
                Some((lo, hi)) => self.host_s2.map_identity_largest(
                    ipa,
                    lo,
                    hi,
                    S2Attrs::DEVICE_RW,
                    &mut |_, _| true,
                ),
                None => Err(Errno::EPERM),
            }
        } else if ipa < ram_end {
            let owners = &self.owners;
            self.host_s2.map_identity_largest(
                ipa,
                RAM_BASE as u64,
                ram_end,
                S2Attrs::NORMAL_RWX,
                &mut |lo, hi| owners.host_can_access_range(lo, hi),
            )
        } else {
            Err(Errno::EPERM)
        };
        match r {
            Ok(m) => {
                log::trace!(
                    "host stage-2: 0x{:x} mapped as 0x{:x} bytes",
                    m.ipa_base,
                    m.size
                );
                true
            }
            Err(_) => {
                log::debug!("host stage-2: access to 0x{ipa:x} refused, abort injected");
                false
            }
        }
    }

    /// Checks every mapping of every component against the ownership table.
    pub(crate) fn check_invariants(&self) -> Vec<Violation> {
        let mut accesses: Vec<Access> = self
            .host_s2
            .mappings()
            .map(|m| Access {
                pa: m.pa_base,
                size: m.size,
                who: Component::Host,
                claimed: None,
            })
            .collect();
        for (&id, v) in &self.vms {
            accesses.extend(v.stage2.mappings().map(|m| Access {
                pa: m.pa_base,
                size: m.size,
                who: Component::Guest(id as u16),
                claimed: None,
            }));
        }
        self.owners.check_invariants(accesses)
    }
}

/// Builds the host stage-2 (empty: it fills on demand).
pub fn new_host_stage2() -> Result<HostStage2, Errno> {
    Stage2::new(HypPages, HwTlb, 0, crate::vmm::IPA).map_err(|(e, _, _)| e)
}

/// The ownership table over RAM, with the hyp's region taken from the host.
pub fn new_ownership(
    ram_base: u64,
    ram_size: u64,
    hyp_end: u64,
) -> Result<Ownership<Vec<PageMeta>>, Errno> {
    let pages = (ram_size / PAGE_SIZE) as usize;
    let mut owners = Ownership::new(ram_base, alloc::vec![PageMeta::default(); pages])?;
    let mut pa = ram_base;
    while pa < hyp_end {
        owners.host_donate_to_hyp(pa)?;
        pa += PAGE_SIZE;
    }
    Ok(owners)
}
