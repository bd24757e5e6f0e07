//! VMs and vCPUs at EL2: the host calls that create and drive them, and the run loop that serves
//! guest stage-2 faults without leaving EL2.
//!
//! The policy (which page answers a fault, what a conversion changes) is `hyp_core::World`; the
//! tables are `hyp_mem::stage2::Stage2`; this module wires them to the world switch.
//!
//! Lock order: [`HYP`] (all VM, vCPU, gmem and ownership state) -> `mm::FRAMES` (the hyp's page
//! allocator) -> the console lock. [`HYP`] is never held while a guest runs: the vCPU's context
//! is taken out of the table for the run and put back at the exit.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use abi::flags::{ContentMode, ConvertTo, MemoryAttributes, UserspaceAddr, VmType};
use abi::host::{ExitReason, COMPLETE_INJECT_ABORT, CONVERT_MODE_DEFAULT, SLOT_UADDR_SHIFT};
use abi::{Errno, PAGE_SIZE};
use board::layout::HYP_END;
use hyp_core::{
    Access, ConvertRequest, FaultResolution, FaultSource, GmemBinding, GmemHandle, GuestRangePiece,
    Initiator, Invalidation, MemslotSpec, SlotId, VmHandle, World,
};
use hyp_mem::ownership::{Ownership, PageMeta, Transition};

use crate::protect::{self, HostStage2};
use hyp_mem::stage2::{IpaSize, MapError, S2Attrs, Stage2};

use crate::arch::exit::{self as guest_exit, AbortAccess, GuestExit, MmioAccess};
use crate::arch::inject::Injected;
use crate::arch::switch::{self, GuestConfig, GuestContext};
use crate::arch::tlb::HwTlb;
use crate::arch::traps::GuestView;
use crate::guestcall;
use crate::hostcall::HostResult;
use crate::pool::VmPool;
use abi::guest::{
    MEM_RELINQUISH, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD_ENROLL, MMIO_GUARD_MAP,
    MMIO_GUARD_MAP_RANGE, MMIO_GUARD_UNMAP, MMIO_GUARD_UNMAP_RANGE, RANGE_CALL_MAX_GRANULES,
    SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS,
};

/// IPA size of every VM (the coco shared bit is bit 39).
pub const IPA: IpaSize = IpaSize::Bits40;
/// Largest VMID handed out (8-bit VMIDs).
const MAX_VMID: u32 = 255;

/// Counters of one VM, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmStats {
    pub faults_served: u64,
    /// Of those, faults served through a memslot's `userspace_addr` (the rest: gmem).
    pub faults_via_uaddr: u64,
    pub exits: u64,
    pub mmio_exits: u64,
    pub memory_fault_exits: u64,
}

pub(crate) struct HypVm {
    pub(crate) stage2: Stage2<VmPool, HwTlb>,
    stats: VmStats,
    /// MMIO guard: once enrolled, only guarded IPAs (pages) exit as MMIO.
    mmio_guard: Option<BTreeSet<u64>>,
    /// Serve first-touch faults the way upstream pKVM does: exit to the host, which maps the
    /// page by hypercall (`ServeFault`) and re-runs the vCPU. For comparison benchmarks.
    faults_to_host: bool,
    /// The VM's vCPUs may read the PMU (`VmOpenPmu`, benchmarks); else PMU accesses are UNDEF.
    pub(crate) pmu_open: bool,
    /// The VM's `CNTVOFF_EL2`: the physical count when it was created.
    pub(crate) cntvoff: u64,
}

/// What the host must complete before a vCPU runs again.
#[derive(Clone, Copy, Debug)]
enum Pending {
    None,
    Mmio(MmioAccess),
    MemoryFault {
        ipa: u64,
    },
    /// The pool ran dry on a guest access at `ipa`: the host donates and re-runs, or completes
    /// with an injected abort.
    NeedPages {
        ipa: u64,
    },
    /// A validated MEM_SHARE / MEM_UNSHARE the host may carry out with `GuestConvert`.
    GuestRequest(GuestRequest),
}

/// The one piece of a guest's share/unshare request this exit covers.
#[derive(Clone, Copy, Debug)]
struct GuestRequest {
    to: ConvertTo,
    piece: GuestRangePiece,
    /// Set once the host carried it out.
    converted: bool,
}

/// Answers a guest's forwarded MEM_SHARE / MEM_UNSHARE from the state the hyp holds (Trust
/// rule 2): `SUCCESS` and the pages done when any page was done, `INVALID_PARAMETER` (x1 = 0)
/// when none was, whatever the host's completion values say.
fn guest_request_answer(world: &World, vm: VmHandle, req: &GuestRequest) -> (u64, u64) {
    match world.guest_pages_done(vm, &req.piece, req.to) {
        0 => (SMCCC_INVALID_PARAMETER, 0),
        done => (SMCCC_SUCCESS, done),
    }
}

struct Vcpu {
    vm: VmHandle,
    /// `None` while the vCPU runs (the context is out of the table).
    ctx: Option<Box<GuestContext>>,
    pending: Pending,
}

/// The hyp's state of every VM and of page ownership.
pub struct Hyp {
    pub(crate) world: World,
    pub(crate) vms: BTreeMap<u32, HypVm>,
    vcpus: BTreeMap<u32, Vcpu>,
    next_vcpu: u32,
    pub(crate) owners: Ownership<Vec<PageMeta>>,
    pub(crate) host_s2: HostStage2,
}

/// All VM state, behind one lock (first in the lock order).
pub static HYP: spin::Mutex<Option<Hyp>> = spin::Mutex::new(None);

/// Sets up the VM manager (once, at boot): every RAM page is the host's except the hyp's own
/// region `[ram_base, HYP_END)`.
pub fn init(ram_base: usize, ram_size: usize) -> Result<(), Errno> {
    let owners = protect::new_ownership(ram_base as u64, ram_size as u64, HYP_END as u64)?;
    let host_s2 = protect::new_host_stage2()?;
    *HYP.lock() = Some(Hyp {
        world: World::new(),
        vms: BTreeMap::new(),
        vcpus: BTreeMap::new(),
        next_vcpu: 0,
        owners,
        host_s2,
    });
    Ok(())
}

/// `VTTBR_EL2` and `VTCR_EL2` of the host's stage-2.
pub fn host_stage2_regs() -> Option<(u64, u64)> {
    HYP.lock()
        .as_ref()
        .map(|h| (h.host_s2.vttbr(), h.host_s2.vtcr()))
}

/// A stage-2 abort taken by the host: maps what the host may reach; `false` if it may not.
pub fn host_abort(ipa: u64) -> bool {
    HYP.lock()
        .as_mut()
        .is_some_and(|h| h.host_stage2_fault(ipa))
}

/// Whether the host owns or borrows the RAM page holding `pa` (where it may ask a CPU it
/// starts to begin: anywhere else it would only take aborts).
pub fn host_may_reach(pa: u64) -> bool {
    HYP.lock()
        .as_ref()
        .is_some_and(|h| h.owners.host_can_access(pa & !(PAGE_SIZE - 1)))
}

fn with_hyp<R>(f: impl FnOnce(&mut Hyp) -> Result<R, Errno>) -> Result<R, Errno> {
    let mut guard = HYP.lock();
    let hyp = guard.as_mut().ok_or(Errno::ENODEV)?;
    f(hyp)
}

fn handle32(v: u64) -> Result<u32, Errno> {
    u32::try_from(v).map_err(|_| Errno::ENOENT)
}

fn ok(v: u64) -> HostResult {
    Ok([v, 0, 0, 0, 0, 0])
}

/// Checks a host-named run of pages: aligned, non-empty, no overflow.
fn page_run(pa: u64, pages: u64) -> Result<u64, Errno> {
    let size = pages.checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
    pa.checked_add(size).ok_or(Errno::EINVAL)?;
    if pages == 0 || !pa.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    Ok(size)
}

impl Hyp {
    fn vm_mut(&mut self, vm: u64) -> Result<&mut HypVm, Errno> {
        self.vms.get_mut(&handle32(vm)?).ok_or(Errno::ENOENT)
    }

    /// Rule 5, then ownership: removes every stage-2 mapping the change invalidated (both coco
    /// aliases), then brings the pages' ownership in line (`owner` = the gmem's VM). Callers
    /// checked the ownership changes before the core changed anything, so the second step
    /// cannot fail; if it ever did, access stays removed (the unmaps happened first) and the
    /// error goes back to the caller.
    fn apply_and_sync(&mut self, owner: VmHandle, inv: &Invalidation) -> Result<(), Errno> {
        self.apply(inv);
        self.sync_after(owner, inv)
    }

    /// Rule 5: removes every stage-2 mapping the change invalidated, both coco aliases. An
    /// unmap needs no memory and cannot fail (Trust rule 3): a block straddling the range goes
    /// whole and the guest refaults the rest.
    fn apply(&mut self, inv: &Invalidation) {
        for u in &inv.stage2_unmap {
            let shared_bit = self.world.vm(u.vm).ok().and_then(|vm| vm.shared_bit());
            let Some(v) = self.vms.get_mut(&u.vm.0) else {
                continue;
            };
            v.stage2.unmap_clamped(u.gpa, u.size);
            if let Some(bit) = shared_bit {
                v.stage2.unmap_clamped(u.gpa | bit, u.size);
            }
        }
    }

    /// Removes every guest mapping of `[offset, offset + size)` of `g` (each memslot binding it,
    /// both coco aliases) before an operation touches the pages: a vCPU on another CPU reaches
    /// a mapped page without trapping, so nothing may be zeroed or change hands first.
    fn unmap_bindings(&mut self, g: GmemHandle, offset: u64, size: u64) {
        let unmaps = self.world.gmem_bindings(g, offset, size);
        self.apply(&Invalidation {
            stage2_unmap: unmaps,
            ..Invalidation::default()
        });
    }

    /// Checks, before anything changes, that every allocated page of the gmem ranges can take
    /// its new state (the host may reach it iff `host_allowed`).
    fn check_gmem_ranges(
        &self,
        owner: VmHandle,
        g: GmemHandle,
        ranges: &[(u64, u64)],
        host_allowed: bool,
    ) -> Result<(), Errno> {
        let file = self.world.gmem(g)?;
        for &(off, size) in ranges {
            for pa in file.allocated_in(off, size) {
                self.settle_checked(owner, pa, host_allowed)?;
            }
        }
        Ok(())
    }

    /// Checks a host-named run of physical pages: aligned, non-empty, no overflow, inside RAM
    /// (so every later walk over it is bounded by RAM, Trust rule 7).
    fn ram_run(&self, pa: u64, pages: u64) -> Result<u64, Errno> {
        let size = page_run(pa, pages)?;
        if pa < self.owners.ram_base() || pa + size > self.owners.ram_end() {
            return Err(Errno::EINVAL);
        }
        Ok(size)
    }

    /// Checks a transition on every page of a run before any page changes, then applies it.
    fn transition_all(
        &mut self,
        pa: u64,
        pages: u64,
        t: Transition,
        mut f: impl FnMut(&mut Ownership<Vec<PageMeta>>, u64) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        for i in 0..pages {
            self.owners.check(pa + i * PAGE_SIZE, t)?;
        }
        for i in 0..pages {
            f(&mut self.owners, pa + i * PAGE_SIZE)?;
        }
        Ok(())
    }
}

/// Host calls that create and drive VMs.
pub mod calls {
    use super::*;

    pub fn vm_create(vm_type: u64) -> HostResult {
        let t = VmType::from_u64(vm_type).ok_or(Errno::EINVAL)?;
        with_hyp(|hyp| {
            let h = hyp.world.create_vm(t, IPA.bits())?;
            let stage2 = if h.0 > MAX_VMID {
                Err(Errno::ENOSPC)
            } else {
                Stage2::new(VmPool::default(), HwTlb, h.0 as u16, IPA).map_err(|(e, _, _)| e.into())
            };
            let stage2 = match stage2 {
                Ok(s) => s,
                Err(e) => {
                    let _ = hyp.world.destroy_vm(h, &mut VmPool::default());
                    return Err(e);
                }
            };
            hyp.vms.insert(
                h.0,
                HypVm {
                    stage2,
                    stats: VmStats::default(),
                    mmio_guard: None,
                    faults_to_host: false,
                    pmu_open: false,
                    cntvoff: crate::arch::timer::counter(),
                },
            );
            log::debug!("VM {} created ({})", h.0, t.name());
            ok(u64::from(h.0))
        })
    }

    /// Tears a VM down; every page it held goes back to the host zeroed. -> x0 = pages returned.
    /// Every page's ownership change is checked before anything changes.
    pub fn vm_destroy(vm: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            if !hyp.vms.contains_key(&h.0) {
                return Err(Errno::ENOENT);
            }
            if hyp.vcpus.values().any(|c| c.vm == h && c.ctx.is_none()) {
                return Err(Errno::EBUSY);
            }
            let pages = hyp.world.vm_pages(h)?;
            hyp.check_reclaim_all(h, &pages)?;
            for &pa in hyp.world.vm(h)?.host_shared_pages().iter() {
                hyp.owners
                    .check(pa, Transition::HostUnshareFromGuest(h.0 as u16))?;
            }
            let Some(v) = hyp.vms.remove(&h.0) else {
                return Err(Errno::ENOENT);
            };
            // The guest runs no more: its stage-2 goes first (every TLB entry of the VMID, the
            // table pages back into the pool), then the core zeroes every page that held data
            // as it frees it into the pool; each goes back to the hyp's ownership, then the
            // whole pool back to the host.
            let (mut pool, _) = v.stage2.destroy();
            let mut teardown = hyp.world.destroy_vm(h, &mut pool)?;
            for &pa in &teardown.freed {
                hyp.reclaim_to_pool(h, pa)?;
            }
            for pa in core::mem::take(&mut teardown.host_shared) {
                hyp.owners.host_unshare_from_guest(pa, h.0 as u16)?;
            }
            let pages = pool.drain();
            for &pa in &pages {
                hyp.owners.hyp_donate_to_host(pa)?;
            }
            hyp.vcpus.retain(|_, c| c.vm != h);
            log::debug!(
                "VM {} destroyed: {} pages back to the host",
                h.0,
                pages.len()
            );
            ok(pages.len() as u64)
        })
    }

    pub fn gmem_create(vm: u64, size: u64, flags: u64) -> HostResult {
        with_hyp(|hyp| {
            let g = hyp
                .world
                .create_gmem(VmHandle(handle32(vm)?), size, flags)?;
            ok(u64::from(g.0))
        })
    }

    pub fn gmem_destroy(gmem: u64) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            let owner = hyp.world.gmem_owner(g)?;
            let file = hyp.world.gmem(g)?;
            let pages = file.allocated_in(0, file.size());
            hyp.check_reclaim_all(owner, &pages)?;
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            // No memslot binds the file (EBUSY otherwise), so no guest maps its pages.
            let freed = hyp.world.destroy_gmem(g, v.stage2.mm_mut())?;
            for pa in freed {
                hyp.reclaim_to_pool(owner, pa)?;
            }
            ok(0)
        })
    }

    pub fn memslot_create(a: [u64; 6]) -> HostResult {
        let [vm, gpa, size, gmem, offset, packed] = a;
        let uaddr = UserspaceAddr::from_u64(packed >> SLOT_UADDR_SHIFT).ok_or(Errno::EINVAL)?;
        with_hyp(|hyp| {
            let binding = if gmem == 0 {
                None
            } else {
                Some(GmemBinding {
                    gmem: GmemHandle(handle32(gmem)?),
                    offset,
                })
            };
            let spec = MemslotSpec {
                gpa,
                size,
                gmem: binding,
                userspace_addr: uaddr,
                flags: packed & 0xffff_ffff,
            };
            let slot = hyp.world.create_memslot(VmHandle(handle32(vm)?), &spec)?;
            ok(u64::from(slot.0))
        })
    }

    pub fn memslot_delete(vm: u64, slot: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            let slot = SlotId(handle32(slot)?);
            let pages = hyp.world.slot_pages(h, slot)?;
            hyp.check_reclaim_all(h, &pages)?;
            let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
            let inv = hyp.world.delete_memslot(h, slot, v.stage2.mm_mut())?;
            hyp.apply_and_sync(h, &inv)?;
            ok(0)
        })
    }

    pub fn set_memory_attributes(vm: u64, gpa: u64, size: u64, attrs: u64) -> HostResult {
        let attrs = MemoryAttributes::from_bits(attrs).ok_or(Errno::EINVAL)?;
        with_hyp(|hyp| {
            let private = attrs.contains(MemoryAttributes::PRIVATE);
            let inv = hyp
                .world
                .set_attributes(VmHandle(handle32(vm)?), gpa, size, private)?;
            hyp.apply(&inv);
            ok(0)
        })
    }

    /// Converts a gmem range (the host's own, or a guest's request it carries out): the core's
    /// checks, then every changing page's ownership checked, then the change, the unmaps and the
    /// ownership moves. `Err((errno, error_offset))`; nothing changed on error.
    fn convert_range(
        hyp: &mut Hyp,
        g: GmemHandle,
        req: &ConvertRequest,
    ) -> Result<(), (Errno, u64)> {
        let owner = hyp.world.gmem_owner(g).map_err(|e| (e, 0))?;
        let changed = hyp
            .world
            .gmem(g)
            .map_err(|e| (e, 0))?
            .convert_plan(req)
            .map_err(|e| (e.errno, e.error_offset))?;
        hyp.check_gmem_ranges(owner, g, &changed, req.to == ConvertTo::Shared)
            .map_err(|e| (e, 0))?;
        // Every guest mapping of the range goes before any page is zeroed or changes hands: a
        // vCPU running on another CPU reaches a mapped page without trapping (Trust rule 3).
        hyp.unmap_bindings(g, req.offset, req.size);
        let v = hyp.vms.get_mut(&owner.0).ok_or((Errno::ENOENT, 0))?;
        let inv = hyp
            .world
            .convert(g, req, v.stage2.mm_mut())
            .map_err(|e| (e.errno, e.error_offset))?;
        hyp.sync_after(owner, &inv).map_err(|e| (e, 0))
    }

    /// Converts a gmem range at the host's initiative. `Err((errno, error_offset))`.
    pub fn convert(a: [u64; 6]) -> Result<[u64; 6], (Errno, u64)> {
        let [gmem, offset, size, to, mode, _] = a;
        let to = match to {
            0 => ConvertTo::Private,
            1 => ConvertTo::Shared,
            _ => return Err((Errno::EINVAL, 0)),
        };
        let explicit = match mode {
            CONVERT_MODE_DEFAULT => None,
            0 => Some(ContentMode::Preserve),
            1 => Some(ContentMode::Zero),
            _ => return Err((Errno::EINVAL, 0)),
        };
        let mut guard = HYP.lock();
        let hyp = guard.as_mut().ok_or((Errno::ENODEV, 0))?;
        let g = GmemHandle(handle32(gmem).map_err(|e| (e, 0))?);
        // EOPNOTSUPP is decided from the request alone, before the handle.
        if to == ConvertTo::Private && explicit == Some(ContentMode::Zero) {
            return Err((Errno::EOPNOTSUPP, 0));
        }
        let owner = hyp.world.gmem_owner(g).map_err(|e| (e, 0))?;
        // No mode given: preserve, except where the rules always zero (a coco VM's memory made
        // shared at the host's initiative); an explicit preserve there is refused by the core.
        let coco = hyp
            .world
            .vm(owner)
            .is_ok_and(|v| v.vm_type() == VmType::Coco);
        let mode = explicit.unwrap_or(if coco && to == ConvertTo::Shared {
            ContentMode::Zero
        } else {
            ContentMode::Preserve
        });
        let req = ConvertRequest {
            offset,
            size,
            to,
            mode,
            initiator: Initiator::Host,
        };
        convert_range(hyp, g, &req)?;
        Ok([0; 6])
    }

    pub fn punch_hole(gmem: u64, offset: u64, size: u64) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            let owner = hyp.world.gmem_owner(g)?;
            let pages = hyp.world.gmem(g)?.punch_plan(offset, size)?;
            hyp.check_reclaim_all(owner, &pages)?;
            // Unmapped before the core zeroes and frees anything (as for a conversion).
            hyp.unmap_bindings(g, offset, size);
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let inv = hyp.world.punch(g, offset, size, v.stage2.mm_mut())?;
            hyp.apply_and_sync(owner, &inv)?;
            ok(0)
        })
    }

    /// Checks that the page behind a gmem offset (if allocated) can take the state the policy
    /// gives it, before a host access changes anything.
    fn check_gmem_page(hyp: &Hyp, owner: VmHandle, g: GmemHandle, off: u64) -> Result<(), Errno> {
        let file = hyp.world.gmem(g)?;
        if let Some(pa) = file.page_pa(off) {
            hyp.settle_checked(owner, pa, file.host_stage2_allowed(off))?;
        }
        Ok(())
    }

    pub fn host_pin(gmem: u64, offset: u64, pin: bool) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            if !pin {
                hyp.world.unpin(g, offset)?;
                return ok(0);
            }
            let owner = hyp.world.gmem_owner(g)?;
            check_gmem_page(hyp, owner, g, offset)?;
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let pa = hyp.world.pin(g, offset, v.stage2.mm_mut())?;
            hyp.sync_gmem_range(g, offset & !(PAGE_SIZE - 1), PAGE_SIZE)?;
            ok(pa)
        })
    }

    /// The host's mmap-view fault: the physical page the host may touch, after the checks.
    pub fn host_map_gmem(gmem: u64, offset: u64) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            let owner = hyp.world.gmem_owner(g)?;
            check_gmem_page(hyp, owner, g, offset)?;
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let pa = hyp.world.host_fault(g, offset, v.stage2.mm_mut())?;
            hyp.sync_gmem_range(g, offset & !(PAGE_SIZE - 1), PAGE_SIZE)?;
            ok(pa)
        })
    }

    /// The host's fault on a memslot's `userspace_addr`.
    pub fn host_map_uaddr(vm: u64, slot: u64, offset: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            let slot = SlotId(handle32(slot)?);
            let s = hyp.world.vm(h)?.slot(slot).ok_or(Errno::ENOENT)?;
            let view = match s.userspace_addr() {
                UserspaceAddr::Gmem => s.gmem_offset(s.gpa().saturating_add(offset)),
                _ => None,
            };
            if let Some((g, off)) = view {
                check_gmem_page(hyp, h, g, off)?;
            }
            let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
            let pa = hyp
                .world
                .host_uaddr_fault(h, slot, offset, v.stage2.mm_mut())?;
            match view {
                Some((g, off)) => hyp.sync_gmem_range(g, off & !(PAGE_SIZE - 1), PAGE_SIZE)?,
                None => hyp.sync_anon_page(h, pa)?,
            }
            ok(pa)
        })
    }

    /// Host pages join a VM's pool (host OWNED -> hyp OWNED). All or nothing.
    pub fn donate(vm: u64, pa: u64, pages: u64) -> HostResult {
        with_hyp(|hyp| {
            hyp.vm_mut(vm)?;
            hyp.ram_run(pa, pages)?;
            hyp.take_from_host(pa, pages)?;
            let v = hyp.vm_mut(vm)?;
            v.stage2.mm_mut().add_run(pa, pages);
            ok(v.stage2.mm().free_pages() as u64)
        })
    }

    /// Host pages shared with the guest at `ipa` (host SHARED_OWNED, guest SHARED_BORROWED),
    /// outside every memslot: `plain` and `coco` VMs only (for `coco` at the shared alias);
    /// `EPERM` for `pkvm` (Trust rule 4). The guest's faults there map them.
    pub fn map_host_shared(vm: u64, ipa: u64, pa: u64, pages: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            // The run must be host RAM before anything walks it (Trust rule 7); the pkvm
            // refusal comes first.
            if hyp.world.vm(h)?.vm_type() == VmType::Pkvm {
                return Err(Errno::EPERM);
            }
            hyp.ram_run(pa, pages)?;
            hyp.world.host_shared_check(h, ipa, pa, pages)?;
            let t = Transition::HostShareWithGuest(h.0 as u16);
            for i in 0..pages {
                hyp.owners.check(pa + i * PAGE_SIZE, t)?;
            }
            hyp.world.map_host_shared(h, ipa, pa, pages)?;
            for i in 0..pages {
                hyp.owners
                    .host_share_with_guest(pa + i * PAGE_SIZE, h.0 as u16)?;
            }
            ok(0)
        })
    }

    pub fn vcpu_create(vm: u64, entry: u64, arg: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            hyp.vm_mut(vm)?;
            if entry >= IPA.limit() || !entry.is_multiple_of(4) {
                return Err(Errno::EINVAL);
            }
            // A protected VM's vCPUs, like its memslots, are fixed once it runs: a vCPU the
            // host adds later would start in the guest's memory where the host says.
            let v = hyp.world.vm(h)?;
            if v.vm_type() == VmType::Pkvm && v.started() {
                return Err(Errno::EPERM);
            }
            let id = hyp.next_vcpu.checked_add(1).ok_or(Errno::ENOSPC)?;
            hyp.next_vcpu = id;
            hyp.vcpus.insert(
                id,
                Vcpu {
                    vm: h,
                    ctx: Some(Box::new(GuestContext::new(entry, arg))),
                    pending: Pending::None,
                },
            );
            ok(u64::from(id))
        })
    }

    /// The physical address `ipa` maps to in the VM's stage-2.
    pub fn vm_walk(vm: u64, ipa: u64) -> HostResult {
        with_hyp(|hyp| {
            let v = hyp.vm_mut(vm)?;
            let m = v.stage2.walk(ipa).ok_or(Errno::ENOENT)?;
            Ok([m.pa_of(ipa).ok_or(Errno::ENOENT)?, m.size, 0, 0, 0, 0])
        })
    }

    /// The physical page behind a gmem offset, without any check (introspection).
    pub fn gmem_phys(gmem: u64, offset: u64) -> HostResult {
        with_hyp(|hyp| {
            let f = hyp.world.gmem(GmemHandle(handle32(gmem)?))?;
            let pa = f.page_pa(offset).ok_or(Errno::ENOENT)?;
            ok(pa + offset % PAGE_SIZE)
        })
    }

    /// Carries out the share/unshare the vCPU's last exit asked for (the host cannot name any
    /// other range). `Err((EAGAIN, error_offset))` if a page is pinned; nothing changes then.
    /// -> x0 = 0, x1 = pages converted. What the guest sees is decided at its next run from the
    /// state (Trust rule 2), not from this call or the host's completion values.
    pub fn guest_convert(vcpu: u64) -> Result<[u64; 6], (Errno, u64)> {
        let mut guard = HYP.lock();
        let hyp = guard.as_mut().ok_or((Errno::ENODEV, 0))?;
        let id = handle32(vcpu).map_err(|e| (e, 0))?;
        let c = hyp.vcpus.get_mut(&id).ok_or((Errno::ENOENT, 0))?;
        let Pending::GuestRequest(req) = c.pending else {
            return Err((Errno::EINVAL, 0));
        };
        if req.converted {
            return Err((Errno::EINVAL, 0));
        }
        let pages = req.piece.size / PAGE_SIZE;
        if let (true, Some((g, offset))) = (req.piece.tracked, req.piece.gmem) {
            let creq = ConvertRequest {
                offset,
                size: req.piece.size,
                to: req.to,
                mode: ContentMode::Preserve,
                initiator: Initiator::Guest,
            };
            convert_range(hyp, g, &creq)?;
        }
        if let Some(c) = hyp.vcpus.get_mut(&id) {
            c.pending = Pending::GuestRequest(GuestRequest {
                converted: true,
                ..req
            });
        }
        Ok([0, pages, 0, 0, 0, 0])
    }

    /// Switches a VM between serving first-touch faults at EL2 (0, the default) and exiting to
    /// the host for them (1, the upstream pKVM way).
    pub fn vm_set_fault_mode(vm: u64, mode: u64) -> HostResult {
        with_hyp(|hyp| {
            let v = hyp.vm_mut(vm)?;
            v.faults_to_host = match mode {
                0 => false,
                1 => true,
                _ => return Err(Errno::EINVAL),
            };
            ok(0)
        })
    }

    /// The host serves a guest's page fault at `ipa` (after a `PageFault` exit): resolve and
    /// map it, as the EL2 fault path would have.
    pub fn serve_fault(vm: u64, ipa: u64, write: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            let access = if write != 0 {
                Access::Write
            } else {
                Access::Read
            };
            let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
            match hyp.world.resolve_fault(h, ipa, access, v.stage2.mm_mut())? {
                FaultResolution::Map {
                    ipa: page,
                    pa,
                    source,
                    size,
                    host_access,
                    ..
                } => {
                    map_resolved(hyp, h, ipa, (page, pa, size), source, host_access)?;
                    ok(pa)
                }
                FaultResolution::NeedPages => Err(Errno::ENOMEM),
                _ => Err(Errno::EFAULT),
            }
        })
    }

    /// One free page (`kind` 0) or 2 MiB chunk (`kind` 1) of the VM's pool back to the host.
    pub fn pool_reclaim(vm: u64, kind: u64) -> HostResult {
        let block = match kind {
            0 => false,
            1 => true,
            _ => return Err(Errno::EINVAL),
        };
        with_hyp(|hyp| {
            let pool = hyp.vm_mut(vm)?.stage2.mm_mut();
            let pa = pool.take_free(block).ok_or(Errno::ENOENT)?;
            let pages = if block {
                hyp_mem::stage2::SIZE_2M / PAGE_SIZE
            } else {
                1
            };
            let t = Transition::HypDonateToHost;
            if let Err(e) = hyp.transition_all(pa, pages, t, |_, _| Ok(())) {
                // Not the hyp's (cannot happen for a pool page): keep it in the pool.
                hyp.vm_mut(vm)?.stage2.mm_mut().add_run(pa, pages);
                return Err(e);
            }
            hyp.transition_all(pa, pages, t, |o, p| o.hyp_donate_to_host(p))?;
            ok(pa)
        })
    }

    /// Free loose pages and free 2 MiB chunks of the VM's pool.
    pub fn pool_stats(vm: u64) -> HostResult {
        with_hyp(|hyp| {
            let (pages, blocks) = hyp.vm_mut(vm)?.stage2.mm().stats();
            Ok([pages as u64, blocks as u64, 0, 0, 0, 0])
        })
    }

    /// Lets the VM's vCPUs read the PMU (benchmarks).
    pub fn vm_open_pmu(vm: u64) -> HostResult {
        with_hyp(|hyp| {
            hyp.vm_mut(vm)?.pmu_open = true;
            ok(0)
        })
    }

    /// Runs the invariant checker: -> x0 = number of violations (the first ones reported on
    /// the console): ownership against every stage-2, and the guests' view.
    pub fn check_invariants() -> HostResult {
        with_hyp(|hyp| {
            let owners = hyp.check_invariants();
            let views = hyp.check_guest_views();
            for violation in owners.iter().take(16) {
                log::error!("invariant violated: {violation:?}");
            }
            for violation in views.iter().take(16) {
                log::error!("invariant violated: {violation:?}");
            }
            ok((owners.len() + views.len()) as u64)
        })
    }

    pub fn vm_stats(vm: u64) -> HostResult {
        with_hyp(|hyp| {
            let v = hyp.vm_mut(vm)?;
            let s = v.stats;
            let free = v.stage2.mm().free_pages() as u64;
            Ok([
                s.faults_served,
                s.exits,
                free,
                s.mmio_exits,
                s.memory_fault_exits,
                s.faults_via_uaddr,
            ])
        })
    }
}

// ---- the run loop --------------------------------------------------------------------------

/// An exit to report to the host: reason and `x1..x5`.
type HostExit = (ExitReason, [u64; 5]);

/// Applies the host's completion of the last exit to the guest's registers. For a forwarded
/// MEM_SHARE / MEM_UNSHARE the host's values are ignored: the answer comes from the state the
/// hyp holds (Trust rule 2).
fn complete(world: &World, vm: VmHandle, ctx: &mut GuestContext, pending: Pending, c0: u64) {
    match pending {
        Pending::None => {}
        Pending::Mmio(m) => {
            if !m.write {
                let bits = u32::from(m.size) * 8;
                let mut v = if bits >= 64 {
                    c0
                } else {
                    c0 & ((1u64 << bits) - 1)
                };
                if m.sign_extend && bits < 64 && v & (1 << (bits - 1)) != 0 {
                    v |= !((1u64 << bits) - 1);
                }
                if !m.sixty_four {
                    v &= 0xffff_ffff;
                }
                ctx.set_reg(usize::from(m.reg), v);
            }
            ctx.pc += 4;
        }
        Pending::MemoryFault { ipa } | Pending::NeedPages { ipa } => {
            if c0 == COMPLETE_INJECT_ABORT {
                // The abort that matches the access (a fetch gets an instruction abort), at the
                // virtual address the guest used.
                let _ = ipa;
                ctx.inject_abort_saved();
            }
        }
        Pending::GuestRequest(req) => {
            let (x0, x1) = guest_request_answer(world, vm, &req);
            ctx.set_reg(0, x0);
            ctx.set_reg(1, x1);
        }
    }
}

enum Step {
    Resume,
    Exit(HostExit, Pending),
}

/// A guest access the hyp cannot serve (an instruction fetch or an access without a valid
/// syndrome outside every memslot, a mapping that failed): the guest takes an abort at its own
/// EL1 (an instruction abort for a fetch) and goes on. The host learns nothing (Trust rule 1).
fn guest_exception(ctx: &mut GuestContext, far: u64) -> Step {
    let _ = far;
    inject_guest_abort(ctx);
    Step::Resume
}

/// Injects the abort that matches the guest's last exit (data or instruction), reporting the
/// faulting virtual address the hardware reported (FAR_EL2).
fn inject_guest_abort(ctx: &mut GuestContext) {
    let what = if crate::arch::esr::ec(ctx.exit_esr) == crate::arch::esr::EC_IABT_LOW {
        Injected::InstructionAbort
    } else {
        Injected::DataAbort
    };
    let far = ctx.exit_far;
    ctx.inject_live(what, far);
}

/// Maps what the core resolved for a guest fault: `(ipa, pa, size)` of the block or page.
/// Ownership first (a fresh pool page becomes the guest's; a page the guest takes at its first
/// touch leaves the host stage-2 before the guest can reach it), then the stage-2 entry. Where
/// other pages of a block range are still mapped one by one, the faulting page is mapped alone
/// and the range merged back into a block when the core says it is one chunk again.
/// `ENOMEM` when the pool has no table page (nothing is mapped; ownership may already be the
/// guest's, which the next fault finds in place).
fn map_resolved(
    hyp: &mut Hyp,
    h: VmHandle,
    fault_ipa: u64,
    (ipa, pa, size): (u64, u64, u64),
    source: FaultSource,
    host_access: bool,
) -> Result<u64, Errno> {
    match source {
        FaultSource::UserspaceAnon => hyp.sync_anon_page(h, pa)?,
        // The host's own page, shared with the guest when the host shared it.
        FaultSource::HostShared => {}
        FaultSource::Gmem | FaultSource::UserspaceGmem if size == PAGE_SIZE => {
            // One page: the transition checks itself; if it fails nothing changed.
            let plan = hyp.settle_plan(h, pa, host_access)?;
            hyp.settle(pa, plan)?;
        }
        FaultSource::Gmem | FaultSource::UserspaceGmem => {
            // A block: every page checked first, then all moved (all or nothing).
            for i in 0..size / PAGE_SIZE {
                hyp.settle_checked(h, pa + i * PAGE_SIZE, host_access)?;
            }
            for i in 0..size / PAGE_SIZE {
                let p = pa + i * PAGE_SIZE;
                let plan = hyp.settle_plan(h, p, host_access)?;
                hyp.settle(p, plan)?;
            }
        }
    }
    let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
    let mut r = v.stage2.map(ipa, pa, size, S2Attrs::NORMAL_RWX);
    let mut mapped = size;
    if r == Err(MapError::Exists) && size > PAGE_SIZE {
        // Some pages of the range are mapped one by one (faulted back after an unmap took the
        // block while the range was mixed): the block replaces them if they are its own pages,
        // else the faulting page is mapped alone.
        r = match v.stage2.map_block_over_pages(ipa, pa, S2Attrs::NORMAL_RWX) {
            Ok(true) => {
                log::debug!("vm {} 0x{ipa:x} mapped as a 2 MiB block again", h.0);
                Ok(())
            }
            _ => {
                let off = (fault_ipa & !(PAGE_SIZE - 1)) - ipa;
                mapped = PAGE_SIZE;
                v.stage2
                    .map(ipa + off, pa + off, PAGE_SIZE, S2Attrs::NORMAL_RWX)
            }
        };
    }
    r?;
    // Counted: faults in memslots (a host-shared page is the host's, outside every memslot).
    if let (Some(v), false) = (hyp.vms.get_mut(&h.0), source == FaultSource::HostShared) {
        v.stats.faults_served += 1;
        if source != FaultSource::Gmem {
            v.stats.faults_via_uaddr += 1;
        }
    }
    Ok(mapped)
}

/// A stage-2 abort of the guest: served at EL2 or handed to the host.
fn stage2_abort(
    hyp: &mut Hyp,
    h: VmHandle,
    ctx: &mut GuestContext,
    ipa: u64,
    access: AbortAccess,
    mmio: Option<MmioAccess>,
) -> Step {
    crate::arch::pmu::fault_pad();
    let acc = match access {
        AbortAccess::Read => Access::Read,
        AbortAccess::Write => Access::Write,
        AbortAccess::Exec => Access::Exec,
    };
    let Some(v) = hyp.vms.get_mut(&h.0) else {
        return guest_exception(ctx, ipa);
    };
    if v.faults_to_host && mmio.is_none_or(|_| hyp.world.gpa_to_gmem(h, ipa).is_ok()) {
        // The upstream way: the host serves the fault (through the same exit path as MMIO).
        return Step::Exit(
            (
                ExitReason::PageFault,
                [ipa, u64::from(access == AbortAccess::Write), 0, 0, 0],
            ),
            Pending::None,
        );
    }
    let resolution = match hyp.world.resolve_fault(h, ipa, acc, v.stage2.mm_mut()) {
        Ok(r) => r,
        Err(_) => return guest_exception(ctx, ipa),
    };
    match resolution {
        FaultResolution::Map {
            ipa: map_ipa,
            pa,
            source,
            size,
            host_access,
            ..
        } => match map_resolved(hyp, h, ipa, (map_ipa, pa, size), source, host_access) {
            Ok(mapped) => {
                log::debug!(
                    "vm {} fault ipa 0x{ipa:x} {acc:?} -> pa 0x{pa:x} (0x{mapped:x} bytes) via {}",
                    h.0,
                    source_name(source)
                );
                Step::Resume
            }
            Err(Errno::ENOMEM) => Step::Exit(
                (ExitReason::NeedPages, [1, 0, 0, 0, 0]),
                Pending::NeedPages { ipa },
            ),
            Err(_) => {
                // A page in no state the policy produces: nothing mapped (fail closed), the
                // access ends in the guest as an abort.
                ctx.inject_data_abort_live(ipa);
                Step::Resume
            }
        },
        FaultResolution::MemoryFault { gpa, size, flags } => {
            v.stats.memory_fault_exits += 1;
            log::debug!("vm {} memory fault gpa 0x{gpa:x} flags {:?}", h.0, flags);
            Step::Exit(
                (ExitReason::MemoryFault, [gpa, size, flags.bits(), 0, 0]),
                Pending::MemoryFault { ipa },
            )
        }
        FaultResolution::Mmio { ipa } => {
            let guarded = v
                .mmio_guard
                .as_ref()
                .is_none_or(|set| set.contains(&(ipa & !(PAGE_SIZE - 1))));
            match mmio {
                Some(m) if guarded => {
                    v.stats.mmio_exits += 1;
                    // Only the bytes stored (Trust rule 1: the rest of the register is the guest's).
                    let data = if m.write {
                        let bits = u32::from(m.size) * 8;
                        let v = ctx.reg(usize::from(m.reg));
                        if bits >= 64 {
                            v
                        } else {
                            v & ((1u64 << bits) - 1)
                        }
                    } else {
                        0
                    };
                    Step::Exit(
                        (
                            ExitReason::Mmio,
                            [ipa, u64::from(m.size), u64::from(m.write), data, 0],
                        ),
                        Pending::Mmio(m),
                    )
                }
                Some(_) => {
                    // Enrolled in the MMIO guard and this IPA is not guarded: the access fails
                    // in the guest, the host never sees it.
                    log::debug!("vm {} unguarded MMIO at 0x{ipa:x}: abort injected", h.0);
                    ctx.inject_data_abort_live(ipa);
                    Step::Resume
                }
                None => guest_exception(ctx, ipa),
            }
        }
        FaultResolution::NeedPages => Step::Exit(
            (ExitReason::NeedPages, [1, 0, 0, 0, 0]),
            Pending::NeedPages { ipa },
        ),
    }
}

fn answer(ctx: &mut GuestContext, r: [u64; 4]) -> Step {
    ctx.x[..4].copy_from_slice(&r);
    Step::Resume
}

/// MEM_SHARE / MEM_UNSHARE: validated here; the first memslot piece (at most 256 pages) is
/// forwarded to the host, which converts it with `GuestConvert` and re-runs the vCPU; the
/// guest's answer is then computed from the state (Trust rule 2). For a `pkvm` VM the call
/// first brings untouched pages in: a first touch (Trust rule 9), kept even if the call is then
/// refused.
fn guest_share_call(hyp: &mut Hyp, h: VmHandle, ctx: &mut GuestContext, x: [u64; 4]) -> Step {
    let [func, ipa, n, must_be_zero] = x;
    let to = if func == MEM_SHARE {
        ConvertTo::Shared
    } else {
        ConvertTo::Private
    };
    let invalid = [SMCCC_INVALID_PARAMETER, 0, 0, 0];
    if must_be_zero != 0 {
        return answer(ctx, invalid);
    }
    let pages = n.clamp(1, RANGE_CALL_MAX_GRANULES);
    let taken = match hyp.world.guest_first_touch(h, ipa, pages) {
        Ok(inv) => inv,
        Err(_) => return answer(ctx, invalid),
    };
    if hyp.sync_after(h, &taken).is_err() {
        return answer(ctx, invalid);
    }
    let pieces = match hyp.world.guest_range(h, ipa, pages, to) {
        Ok(p) => p,
        Err(_) => return answer(ctx, invalid),
    };
    let Some(&piece) = pieces.first() else {
        return answer(ctx, invalid);
    };
    let done = piece.size / PAGE_SIZE;
    Step::Exit(
        (ExitReason::Hypercall, [func, ipa, done, 0, 0]),
        Pending::GuestRequest(GuestRequest {
            to,
            piece,
            converted: false,
        }),
    )
}

/// MEM_RELINQUISH, at EL2: the page leaves the guest, zeroed, and goes back to the host.
fn guest_relinquish(hyp: &mut Hyp, h: VmHandle, ctx: &mut GuestContext, x: [u64; 4]) -> Step {
    let [_, ipa, a2, a3] = x;
    let invalid = [SMCCC_INVALID_PARAMETER, 0, 0, 0];
    if a2 | a3 != 0 {
        return answer(ctx, invalid);
    }
    // The page it would free, checked before anything changes.
    let page = match hyp.world.gpa_to_gmem(h, ipa) {
        Ok((_, Some((g, off)))) => hyp.world.gmem(g).ok().and_then(|f| f.page_pa(off)),
        _ => None,
    };
    if let Some(pa) = page {
        if hyp.check_reclaim(h, pa).is_err() {
            return answer(ctx, invalid);
        }
    }
    // Unmapped (every alias) before the core zeroes and frees the page.
    if let Ok((_, Some((g, off)))) = hyp.world.gpa_to_gmem(h, ipa) {
        if hyp.world.relinquish_check(h, ipa).is_ok() {
            hyp.unmap_bindings(g, off & !(PAGE_SIZE - 1), PAGE_SIZE);
        }
    }
    let Some(v) = hyp.vms.get_mut(&h.0) else {
        return answer(ctx, invalid);
    };
    let inv = match hyp.world.relinquish(h, ipa, v.stage2.mm_mut()) {
        Ok(inv) => inv,
        Err(_) => return answer(ctx, invalid),
    };
    if hyp.apply_and_sync(h, &inv).is_err() {
        return answer(ctx, invalid);
    }
    // Back to the host, not to the pool: the page is the hyp's (reclaimed, zeroed) and free in
    // the pool; both steps below were true by construction.
    for &pa in &inv.freed {
        let taken = hyp
            .vms
            .get_mut(&h.0)
            .is_some_and(|v| v.stage2.mm_mut().remove(pa));
        if taken && hyp.owners.hyp_donate_to_host(pa).is_err() {
            // Keep it the hyp's: back into the pool rather than to the host.
            if let Some(v) = hyp.vms.get_mut(&h.0) {
                v.stage2.mm_mut().add_run(pa, 1);
            }
        }
    }
    answer(ctx, [SMCCC_SUCCESS, 1, 0, 0])
}

/// The MMIO guard calls (Android): enroll, then map/unmap guarded MMIO granules.
fn mmio_guard_call(hyp: &mut Hyp, h: VmHandle, ctx: &mut GuestContext, x: [u64; 4]) -> Step {
    let [func, ipa, a2, a3] = x;
    let invalid = [SMCCC_INVALID_PARAMETER, 0, 0, 0];
    let in_memory = |hyp: &Hyp, ipa: u64| hyp.world.gpa_to_gmem(h, ipa).is_ok();
    let range = matches!(func, MMIO_GUARD_MAP_RANGE | MMIO_GUARD_UNMAP_RANGE);
    let count = if range {
        a2.clamp(1, RANGE_CALL_MAX_GRANULES)
    } else {
        1
    };
    let extra_ok = if range { a3 == 0 } else { a2 | a3 == 0 };
    if func == MMIO_GUARD_ENROLL {
        if ipa | a2 | a3 != 0 {
            return answer(ctx, invalid);
        }
        if let Some(v) = hyp.vms.get_mut(&h.0) {
            v.mmio_guard.get_or_insert_with(BTreeSet::new);
        }
        return answer(ctx, [SMCCC_SUCCESS, 0, 0, 0]);
    }
    if !extra_ok || !ipa.is_multiple_of(PAGE_SIZE) {
        return answer(ctx, invalid);
    }
    let map = matches!(func, MMIO_GUARD_MAP | MMIO_GUARD_MAP_RANGE);
    let ipas: Vec<u64> = (0..count)
        .filter_map(|i| ipa.checked_add(i * PAGE_SIZE))
        .collect();
    if map && ipas.iter().any(|&a| in_memory(hyp, a) || a >= IPA.limit()) {
        return answer(ctx, invalid);
    }
    let Some(set) = hyp.vms.get_mut(&h.0).and_then(|v| v.mmio_guard.as_mut()) else {
        // Not enrolled: MAP is refused, UNMAP has nothing to do.
        return answer(
            ctx,
            if map {
                invalid
            } else {
                [SMCCC_SUCCESS, 0, 0, 0]
            },
        );
    };
    for a in &ipas {
        if map {
            set.insert(*a);
        } else {
            set.remove(a);
        }
    }
    answer(ctx, [SMCCC_SUCCESS, ipas.len() as u64, 0, 0])
}

/// Handles one exit under the lock: serve it at EL2 (`Resume`) or hand it to the host.
fn handle_exit(hyp: &mut Hyp, h: VmHandle, ctx: &mut GuestContext) -> Step {
    match guest_exit::decode(ctx) {
        GuestExit::Stage2Abort { ipa, access, mmio } => {
            stage2_abort(hyp, h, ctx, ipa, access, mmio)
        }
        GuestExit::Hvc { .. } => {
            let x = [ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]];
            match x[0] {
                MEM_SHARE | MEM_UNSHARE => guest_share_call(hyp, h, ctx, x),
                MEM_RELINQUISH => guest_relinquish(hyp, h, ctx, x),
                MMIO_GUARD_ENROLL
                | MMIO_GUARD_MAP
                | MMIO_GUARD_UNMAP
                | MMIO_GUARD_MAP_RANGE
                | MMIO_GUARD_UNMAP_RANGE => mmio_guard_call(hyp, h, ctx, x),
                _ => answer(ctx, guestcall::answer(x)),
            }
        }
        GuestExit::Smc => {
            ctx.x[0] = SMCCC_NOT_SUPPORTED;
            ctx.pc += 4;
            Step::Resume
        }
        // Trust rule 6: the host gets the CPU back; the guest resumes where it was on the next
        // run.
        GuestExit::Interrupt => Step::Exit((ExitReason::Interrupt, [0; 5]), Pending::None),
        GuestExit::Abort { .. } => {
            inject_guest_abort(ctx);
            Step::Resume
        }
        GuestExit::TlbConflict => {
            crate::arch::tlb::flush_local_current_vmid();
            Step::Resume
        }
        GuestExit::Uncatchable { ec } => Step::Exit(
            (ExitReason::GuestException, [ec, 0, 0, 0, 0]),
            Pending::None,
        ),
        GuestExit::Other { .. } => {
            let view = GuestView {
                pmu: hyp.vms.get(&h.0).is_some_and(|v| v.pmu_open),
            };
            crate::arch::traps::guest_trap(ctx, view);
            Step::Resume
        }
    }
}

fn source_name(s: FaultSource) -> &'static str {
    match s {
        FaultSource::Gmem => "gmem",
        FaultSource::UserspaceAnon => "userspace_addr(anon)",
        FaultSource::UserspaceGmem => "userspace_addr(gmem)",
        FaultSource::HostShared => "host-shared page",
    }
}

/// Runs a vCPU until an exit the host must see. `c0`, `c1` complete the previous exit.
pub fn vcpu_run(vcpu: u64, c0: u64, c1: u64) -> HostResult {
    let id = u32::try_from(vcpu).map_err(|_| Errno::ENOENT)?;
    // Take the context out of the table: the lock is not held while the guest runs.
    let (h, mut ctx, cfg, host_vttbr, host_vtcr) = with_hyp(|hyp| {
        let c = hyp.vcpus.get_mut(&id).ok_or(Errno::ENOENT)?;
        let mut ctx = c.ctx.take().ok_or(Errno::EBUSY)?;
        let (h, pending) = (c.vm, core::mem::replace(&mut c.pending, Pending::None));
        let _ = c1;
        complete(&hyp.world, h, &mut ctx, pending, c0);
        // The first run freezes a pkvm VM's memslots (Trust rule 9).
        hyp.world.vcpu_started(h)?;
        let v = hyp.vms.get(&h.0).ok_or(Errno::ENOENT)?;
        let cfg = GuestConfig {
            vttbr: v.stage2.vttbr(),
            vtcr: v.stage2.vtcr(),
            cntvoff: v.cntvoff,
            pmu_open: v.pmu_open,
        };
        Ok((h, ctx, cfg, hyp.host_s2.vttbr(), hyp.host_s2.vtcr()))
    })?;

    // Every register the host owns is saved here and the vCPU's loaded (Trust rule 5); the
    // loop below serves exits at EL2 without touching them, since EL2 code uses none of them.
    let host = switch::switch_to_guest(&ctx, &cfg);
    let host_hcr = crate::arch::el1::host_hcr();

    let (exit, pending) = loop {
        // SAFETY: the context is ours for the run, the guest's stage-2, HCR_EL2 and EL1 state
        // are loaded.
        unsafe { switch::enter_guest(&mut *ctx) };
        let mut guard = HYP.lock();
        let Some(hyp) = guard.as_mut() else {
            break ((ExitReason::GuestException, [0; 5]), Pending::None);
        };
        match handle_exit(hyp, h, &mut ctx) {
            Step::Resume => continue,
            Step::Exit(e, p) => {
                if let Some(v) = hyp.vms.get_mut(&h.0) {
                    v.stats.exits += 1;
                }
                break (e, p);
            }
        }
    };

    switch::switch_to_host(&mut ctx, &host);
    switch::load_stage2(host_hcr, host_vttbr, host_vtcr);
    log::debug!("vcpu {id} exit {:?} {:x?}", exit.0, exit.1);

    let mut guard = HYP.lock();
    if let Some(c) = guard.as_mut().and_then(|hyp| hyp.vcpus.get_mut(&id)) {
        c.ctx = Some(ctx);
        c.pending = pending;
    }
    let (reason, d) = exit;
    Ok([reason as u64, d[0], d[1], d[2], d[3], d[4]])
}
