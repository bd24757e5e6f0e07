//! Page-ownership bookkeeping, in one place: the one transition that brings a gmem page where
//! the policy wants it ([`Settle`]), pages going back to the hyp's pool, the host stage-2 (its
//! faults and the pages it loses), and the invariant checker, which holds every stage-2 to the
//! ownership table and the guests' view to the policy core.
//!
//! Every change that takes a page away from the host removes it from the host stage-2 first;
//! every operation on several pages checks each page's transition before it changes any
//! (Trust rule 3).

use alloc::vec::Vec;

use abi::{Errno, PAGE_SIZE};
use hyp_core::{GmemHandle, Invalidation, VmHandle};
use hyp_mem::ownership::{Access, Component, PageState, Transition, Violation};
use hyp_mem::pool;
use hyp_mem::stage2::{MapError, S2Attrs};

use crate::platform::Platform;
use crate::state::{Hyp, PIECE_PAGES};

fn vmid(vm: VmHandle) -> u16 {
    vm.vmid()
}

/// How a gmem page's ownership gets to what the policy asks (see [`Hyp::settle_plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Already there.
    Nothing,
    /// One checked transition; `unmap_host`: the host loses the page (its stage-2 entry goes
    /// first).
    Do(Transition, bool),
}

impl<P: Platform> Hyp<P> {
    /// The host can no longer reach `pa`: remove it from the host stage-2 (the whole block that
    /// maps it, if a block does: the host refaults the rest). Cannot fail, needs no memory.
    pub(crate) fn host_unmap(&mut self, pa: u64) {
        self.host_s2.unmap_clamped(pa, PAGE_SIZE);
    }

    /// Host pages become the hyp's (a VM pool): checked for every page before any changes.
    pub(crate) fn take_from_host(&mut self, pa: u64, pages: u64) -> Result<(), Errno> {
        let t = Transition::HostDonateToHyp;
        for i in 0..pages {
            self.owners.check(pa + i * PAGE_SIZE, t)?;
        }
        for i in 0..pages {
            let p = pa + i * PAGE_SIZE;
            self.host_unmap(p);
            self.owners.host_donate_to_hyp(p)?;
        }
        Ok(())
    }

    /// The transition that brings a gmem page of `vm` where the policy wants it: the guest owns
    /// it, and the host borrows it iff `host_allowed`. Pure. `EPERM` for a page in no state a
    /// gmem page of `vm` can be in. The transition itself is checked when it is applied
    /// ([`Hyp::settle`]), so one page needs nothing more; an operation on several pages checks
    /// each plan first ([`Hyp::check_settle`]) so that it changes all of them or none.
    pub(crate) fn settle_plan(
        &self,
        vm: VmHandle,
        pa: u64,
        host_allowed: bool,
    ) -> Result<Settle, Errno> {
        let id = vmid(vm);
        let info = self.owners.info(pa)?;
        if info.state_of(Component::Hyp) == PageState::Owned {
            // Fresh from the pool: straight to the guest (shared with the host if allowed). A
            // pool page is in no host stage-2 (it left it when it was donated): nothing to unmap.
            let t = Transition::HypDonateToGuest {
                vm: id,
                shared: host_allowed,
            };
            return Ok(Settle::Do(t, false));
        }
        let t = match (info.state_of(Component::Guest(id)), host_allowed) {
            (PageState::Owned, true) => Transition::GuestShareWithHost(id),
            (PageState::SharedOwned, false) => Transition::GuestUnshareFromHost(id),
            (PageState::Owned, false) | (PageState::SharedOwned, true) => {
                return Ok(Settle::Nothing)
            }
            _ => return Err(Errno::EPERM),
        };
        Ok(Settle::Do(t, !host_allowed))
    }

    /// Checks a plan of [`Hyp::settle_plan`] against the ownership table (nothing changes).
    pub(crate) fn check_settle(&self, pa: u64, plan: Settle) -> Result<(), Errno> {
        match plan {
            Settle::Nothing => Ok(()),
            Settle::Do(t, _) => self.owners.check(pa, t),
        }
    }

    /// [`Hyp::settle_plan`] and [`Hyp::check_settle`]: what an operation on several pages asks
    /// of each page before it changes any.
    pub(crate) fn settle_checked(
        &self,
        vm: VmHandle,
        pa: u64,
        host_allowed: bool,
    ) -> Result<Settle, Errno> {
        let plan = self.settle_plan(vm, pa, host_allowed)?;
        self.check_settle(pa, plan)?;
        Ok(plan)
    }

    /// Applies a plan from [`Hyp::settle_plan`]: the host stage-2 entry first when the host
    /// loses the page, then the ownership change.
    pub(crate) fn settle(&mut self, pa: u64, plan: Settle) -> Result<(), Errno> {
        let Settle::Do(t, unmap_host) = plan else {
            return Ok(());
        };
        if unmap_host {
            self.host_unmap(pa);
        }
        match t {
            Transition::HypDonateToGuest { vm, shared } => {
                self.owners.hyp_donate_to_guest(pa, vm, shared)
            }
            Transition::GuestShareWithHost(vm) => self.owners.guest_share_with_host(pa, vm),
            Transition::GuestUnshareFromHost(vm) => self.owners.guest_unshare_from_host(pa, vm),
            _ => Err(Errno::EINVAL),
        }
    }

    /// An `anon` page (separate host memory) the guest maps: the host's, shared with the guest.
    pub(crate) fn sync_anon_page(&mut self, vm: VmHandle, pa: u64) -> Result<(), Errno> {
        let info = self.owners.info(pa)?;
        if info.state_of(Component::Hyp) == PageState::Owned {
            self.owners.check(pa, Transition::HypDonateToHost)?;
            self.owners.hyp_donate_to_host(pa)?;
            self.owners.host_share_with_guest(pa, vmid(vm))?;
        }
        Ok(())
    }

    /// Every allocated page of `[offset, offset + size)` of `g` to the policy's state: all
    /// checked first, then applied (all or nothing). O(allocated pages), whatever the size.
    pub(crate) fn sync_gmem_range(
        &mut self,
        g: GmemHandle,
        offset: u64,
        size: u64,
    ) -> Result<(), Errno> {
        let owner = self.world.gmem_owner(g)?;
        // Two passes over pieces of at most `PIECE_PAGES` pages (so no list outgrows a page):
        // every page checked, then every page moved (the plans come out the same: nothing
        // changes in between).
        let end = offset.saturating_add(size).min(self.world.gmem(g)?.size());
        for apply in [false, true] {
            let mut at = offset;
            while at < end {
                let file = self.world.gmem(g)?;
                let stop = file.end_after(at, end - at, PIECE_PAGES);
                let stop = if stop <= at { end } else { stop };
                for (pa, allowed) in file.allocated_with_host_access(at, stop - at) {
                    let plan = self.settle_checked(owner, pa, allowed)?;
                    if apply && plan != Settle::Nothing {
                        self.settle(pa, plan)?;
                    }
                }
                at = stop;
            }
        }
        Ok(())
    }

    /// Whether a page `vm` gives up can go back to the hyp (see [`Hyp::reclaim_to_pool`]).
    pub(crate) fn check_reclaim(&self, vm: VmHandle, pa: u64) -> Result<(), Errno> {
        if self.owners.info(pa)?.state_of(Component::Hyp) == PageState::Owned {
            return Ok(());
        }
        self.owners
            .check(pa, Transition::GuestReclaimToHyp(vmid(vm)))
    }

    /// A page the core freed (zeroed) into `vm`'s pool becomes the hyp's again: out of the
    /// host stage-2 first (if the host borrowed it), then zeroed and the hyp's. Callers check
    /// it with [`Hyp::check_reclaim`] before the core changes anything; every guest mapping of
    /// it is gone already (Trust rule 3).
    pub(crate) fn reclaim_to_pool(&mut self, vm: VmHandle, pa: u64) -> Result<(), Errno> {
        if self.owners.info(pa)?.state_of(Component::Hyp) == PageState::Owned {
            return Ok(());
        }
        self.host_unmap(pa);
        let ram = self.platform.ram();
        self.owners
            .guest_reclaim_to_hyp(pa, vmid(vm), &mut |p| pool::zero_in_pool(&ram, p))
    }

    /// Ownership side of an [`Invalidation`] (after the guest stage-2 unmaps): freed pages go
    /// back to the pool, pages that changed shareability to their new state.
    pub(crate) fn sync_after(&mut self, owner: VmHandle, inv: &Invalidation) -> Result<(), Errno> {
        for &pa in &inv.freed {
            self.reclaim_to_pool(owner, pa)?;
        }
        for r in inv.host_unmap.iter().chain(inv.host_grant.iter()) {
            self.sync_gmem_range(r.gmem, r.offset, r.size)?;
        }
        Ok(())
    }

    /// A host stage-2 fault at `ipa` (== PA): map the largest block the host may reach.
    /// `false`: the host may not touch it; the caller injects an abort.
    pub fn host_stage2_fault(&mut self, ipa: u64) -> bool {
        let (ram_base, ram_end) = (self.owners.ram_base(), self.owners.ram_end());
        let r = if ipa < ram_base {
            // MMIO below RAM: only the devices the host needs (its console, the GIC distributor
            // and redistributors: `HypConfig::host_mmio`), as device memory, never executable.
            // Everything else there (flash, fw_cfg and its DMA, RTC, GPIO, virtio-mmio, PCIe)
            // stays unmapped: no DMA-capable device for the host (Trust rules 1 and 11).
            let region = self
                .config
                .host_mmio
                .iter()
                .copied()
                .find(|&(lo, hi)| (lo..hi).contains(&ipa));
            match region {
                Some((lo, hi)) => self.host_s2.map_identity_largest(
                    ipa,
                    lo,
                    hi,
                    S2Attrs::DEVICE_RW,
                    &mut |_, _| true,
                ),
                None => Err(MapError::Refused),
            }
        } else if ipa < ram_end {
            let owners = &self.owners;
            self.host_s2.map_identity_largest(
                ipa,
                ram_base,
                ram_end,
                S2Attrs::NORMAL_RWX,
                &mut |lo, hi| owners.host_can_access_range(lo, hi),
            )
        } else {
            Err(MapError::Refused)
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
    pub fn check_invariants(&self) -> Vec<Violation> {
        let mut accesses: Vec<Access> = self
            .host_s2
            .mappings()
            .map(|m| Access {
                pa: m.pa_base,
                size: m.size,
                who: Component::Host,
            })
            .collect();
        for (&id, v) in &self.vms {
            accesses.extend(v.stage2.mappings().map(|m| Access {
                pa: m.pa_base,
                size: m.size,
                who: Component::Guest(VmHandle(id).vmid()),
            }));
        }
        self.owners.check_invariants(accesses)
    }

    /// The memory check (Trust rule 8): no charged allocation overdrew its heap, no VM's heap
    /// outlived it, every pool's lists hold what its counts say, and no call took more of its
    /// heap's reserve than [`hyp_mem::heap::CALL_PAGES_MAX`].
    pub fn check_memory(&self) -> Vec<MemoryViolation> {
        let mut out = Vec::new();
        let over = P::overdrafts();
        if over > 0 {
            out.push(MemoryViolation::Overdrafts(over));
        }
        if self.leaked_heaps > 0 {
            out.push(MemoryViolation::LeakedHeaps(self.leaked_heaps));
        }
        for (&id, v) in &self.vms {
            let pool = v.stage2.mm();
            let (counted, found) = (pool.stats(), pool.walk_counts());
            if counted != found {
                out.push(MemoryViolation::PoolLists {
                    vm: id,
                    counted,
                    found,
                });
            }
            let took = v.heap.stats().max_call_pages;
            if took > hyp_mem::heap::CALL_PAGES_MAX {
                out.push(MemoryViolation::CallTookPages {
                    vm: id,
                    pages: took,
                });
            }
        }
        out
    }

    /// The guest's view (Trust rules 1 and 3): every page a guest's stage-2 maps is the page the
    /// core says a fault there would map now (no stale mapping of a page that changed hands), and
    /// every page the guest was told is private is owned by that guest alone.
    pub fn check_guest_views(&self) -> Vec<GuestViewViolation> {
        let mut out = Vec::new();
        for (&id, v) in &self.vms {
            let vm = VmHandle(id);
            for m in v.stage2.mappings() {
                for i in 0..m.size / PAGE_SIZE {
                    let (ipa, pa) = (m.ipa_base + i * PAGE_SIZE, m.pa_base + i * PAGE_SIZE);
                    match self.world.expected_mapping(vm, ipa) {
                        Some((want, private)) if want == pa => {
                            let owned_alone = self.owners.info(pa).is_ok_and(|info| {
                                info.state_of(Component::Guest(vmid(vm))) == PageState::Owned
                                    && info.state_of(Component::Host) == PageState::NoPage
                            });
                            if private && !owned_alone {
                                out.push(GuestViewViolation::PrivateNotOwned { vm: id, ipa, pa });
                            }
                        }
                        expected => out.push(GuestViewViolation::WrongPage {
                            vm: id,
                            ipa,
                            pa,
                            expected: expected.map(|(p, _)| p),
                        }),
                    }
                }
            }
        }
        out
    }
}

/// What the memory check found wrong (Trust rule 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryViolation {
    /// Allocations charged to a VM that its heap could not serve (the boot heap took them).
    Overdrafts(u64),
    /// VM heaps that still served an object when their VM went.
    LeakedHeaps(u32),
    /// A VM's pool lists do not hold what its counts say: `(loose, chunks)` counted and found.
    PoolLists {
        vm: u32,
        counted: (usize, usize),
        found: (usize, usize),
    },
    /// One call took more reserve pages than any call may.
    CallTookPages { vm: u32, pages: usize },
}

/// What the guest-view check found wrong with one guest mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestViewViolation {
    /// The guest's stage-2 maps `ipa` to `pa`, but the core says a fault there would map
    /// `expected` now (`None`: nothing may be mapped there).
    WrongPage {
        vm: u32,
        ipa: u64,
        pa: u64,
        expected: Option<u64>,
    },
    /// The guest was told the page at `ipa` is private, but it does not own it alone.
    PrivateNotOwned { vm: u32, ipa: u64, pa: u64 },
}
