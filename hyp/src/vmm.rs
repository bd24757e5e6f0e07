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
use hyp_mem::ownership::{Component, Ownership, PageMeta, PageState, Transition};

use crate::protect::{self, HostStage2};
use hyp_mem::stage2::{IpaSize, S2Attrs, Stage2};

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
    /// 2 MiB ranges whose block an unmap split (a part of the range stays mapped): a later
    /// 4 KiB fault there asks whether the range can be merged back. Only these are asked, so a
    /// fault elsewhere pays nothing for merging.
    split_blocks: BTreeSet<u64>,
    /// Host pages shared with the guest outside its memslots (code, stack): IPA -> PA.
    host_shared: BTreeMap<u64, u64>,
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

impl HypVm {
    /// Before unmapping `[ipa, ipa + size)`: remembers the 2 MiB blocks that only partly lie in
    /// it (they will be split).
    fn note_split_blocks(&mut self, ipa: u64, size: u64) {
        const BLOCK: u64 = hyp_mem::stage2::SIZE_2M;
        let end = ipa.saturating_add(size);
        for edge in [ipa, end.saturating_sub(PAGE_SIZE)] {
            let base = edge & !(BLOCK - 1);
            let partial = base < ipa || base.saturating_add(BLOCK) > end;
            if partial && self.stage2.walk(edge).is_some_and(|m| m.size == BLOCK) {
                self.split_blocks.insert(base);
            }
        }
    }
}

impl Hyp {
    fn vm_mut(&mut self, vm: u64) -> Result<&mut HypVm, Errno> {
        self.vms.get_mut(&handle32(vm)?).ok_or(Errno::ENOENT)
    }

    /// Rule 5, then ownership: removes every stage-2 mapping the change invalidated (both coco
    /// aliases), then brings the pages' ownership in line (`owner` = the gmem's VM).
    fn apply_and_sync(&mut self, owner: VmHandle, inv: &Invalidation) {
        self.apply(inv);
        self.sync_after(owner, inv);
    }

    /// Rule 5: removes every stage-2 mapping the change invalidated, both coco aliases.
    fn apply(&mut self, inv: &Invalidation) {
        for u in &inv.stage2_unmap {
            let shared_bit = self.world.vm(u.vm).ok().and_then(|vm| vm.shared_bit());
            let Some(v) = self.vms.get_mut(&u.vm.0) else {
                continue;
            };
            let aliases = [Some(u.gpa), shared_bit.map(|bit| u.gpa | bit)];
            for base in aliases.into_iter().flatten() {
                v.note_split_blocks(base, u.size);
                if let Err(e) = v.stage2.unmap(base, u.size) {
                    log::error!("stage-2 unmap 0x{base:x}+0x{:x} failed: {e}", u.size);
                }
            }
        }
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
                Stage2::new(VmPool::default(), HwTlb, h.0 as u16, IPA).map_err(|(e, _, _)| e)
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
                    split_blocks: BTreeSet::new(),
                    host_shared: BTreeMap::new(),
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
    pub fn vm_destroy(vm: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            if !hyp.vms.contains_key(&h.0) {
                return Err(Errno::ENOENT);
            }
            if hyp.vcpus.values().any(|c| c.vm == h && c.ctx.is_none()) {
                return Err(Errno::EBUSY);
            }
            let Some(mut v) = hyp.vms.remove(&h.0) else {
                return Err(Errno::ENOENT);
            };
            // The core zeroes every page that held data as it frees it into the pool; each
            // goes back to the hyp's ownership, then the whole pool back to the host.
            let freed = hyp.world.destroy_vm(h, v.stage2.mm_mut())?;
            for &pa in &freed {
                hyp.reclaim_to_pool(h, pa);
            }
            let (mut pool, _) = v.stage2.destroy();
            let pages = pool.drain();
            for &pa in &pages {
                if let Err(e) = hyp.owners.hyp_donate_to_host(pa) {
                    log::error!("returning page 0x{pa:x} to the host: {e}");
                }
            }
            for (_, &pa) in v.host_shared.iter() {
                let _ = hyp.owners.host_unshare_from_guest(pa, h.0 as u16);
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
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let freed = hyp.world.destroy_gmem(g, v.stage2.mm_mut())?;
            for pa in freed {
                hyp.reclaim_to_pool(owner, pa);
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
            let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
            let inv = hyp
                .world
                .delete_memslot(h, SlotId(handle32(slot)?), v.stage2.mm_mut())?;
            hyp.apply_and_sync(h, &inv);
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
        let v = hyp.vms.get_mut(&owner.0).ok_or((Errno::ENOENT, 0))?;
        let inv = hyp
            .world
            .convert(g, &req, v.stage2.mm_mut())
            .map_err(|e| (e.errno, e.error_offset))?;
        hyp.apply_and_sync(owner, &inv);
        Ok([0; 6])
    }

    pub fn punch_hole(gmem: u64, offset: u64, size: u64) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            let owner = hyp.world.gmem_owner(g)?;
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let inv = hyp.world.punch(g, offset, size, v.stage2.mm_mut())?;
            hyp.apply_and_sync(owner, &inv);
            ok(0)
        })
    }

    pub fn host_pin(gmem: u64, offset: u64, pin: bool) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            if !pin {
                hyp.world.unpin(g, offset)?;
                return ok(0);
            }
            let owner = hyp.world.gmem_owner(g)?;
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let pa = hyp.world.pin(g, offset, v.stage2.mm_mut())?;
            hyp.sync_gmem_range(g, offset, PAGE_SIZE);
            ok(pa)
        })
    }

    /// The host's mmap-view fault: the physical page the host may touch, after the checks.
    pub fn host_map_gmem(gmem: u64, offset: u64) -> HostResult {
        with_hyp(|hyp| {
            let g = GmemHandle(handle32(gmem)?);
            let owner = hyp.world.gmem_owner(g)?;
            let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
            let pa = hyp.world.host_fault(g, offset, v.stage2.mm_mut())?;
            hyp.sync_gmem_range(g, offset, PAGE_SIZE);
            ok(pa)
        })
    }

    /// The host's fault on a memslot's `userspace_addr`.
    pub fn host_map_uaddr(vm: u64, slot: u64, offset: u64) -> HostResult {
        with_hyp(|hyp| {
            let h = VmHandle(handle32(vm)?);
            let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
            let slot = SlotId(handle32(slot)?);
            let pa = hyp
                .world
                .host_uaddr_fault(h, slot, offset, v.stage2.mm_mut())?;
            let s = hyp.world.vm(h)?.slot(slot).ok_or(Errno::ENOENT)?;
            match (s.userspace_addr(), s.gmem_offset(s.gpa() + offset)) {
                (UserspaceAddr::Gmem, Some((g, off))) => hyp.sync_gmem_range(g, off, PAGE_SIZE),
                _ => hyp.sync_anon_page(h, pa)?,
            }
            ok(pa)
        })
    }

    /// Host pages join a VM's pool (host OWNED -> hyp OWNED). All or nothing.
    pub fn donate(vm: u64, pa: u64, pages: u64) -> HostResult {
        with_hyp(|hyp| {
            page_run(pa, pages)?;
            hyp.vm_mut(vm)?;
            hyp.take_from_host(pa, pages)?;
            let v = hyp.vm_mut(vm)?;
            v.stage2.mm_mut().add_run(pa, pages);
            ok(v.stage2.mm().free_pages() as u64)
        })
    }

    /// Host pages shared with the guest at `ipa` (host SHARED_OWNED, guest SHARED_BORROWED),
    /// outside every memslot: the guest's code and stack.
    pub fn map_host_shared(vm: u64, ipa: u64, pa: u64, pages: u64) -> HostResult {
        with_hyp(|hyp| {
            let size = page_run(pa, pages)?;
            let h = VmHandle(handle32(vm)?);
            hyp.vm_mut(vm)?;
            let end = ipa.checked_add(size).ok_or(Errno::EINVAL)?;
            if !ipa.is_multiple_of(PAGE_SIZE) || end > IPA.limit() {
                return Err(Errno::EINVAL);
            }
            if (0..pages).any(|i| hyp.world.gpa_to_gmem(h, ipa + i * PAGE_SIZE).is_ok()) {
                return Err(Errno::EEXIST);
            }
            let t = Transition::HostShareWithGuest(h.0 as u16);
            hyp.transition_all(pa, pages, t, |_, _| Ok(()))?;
            let v = hyp.vm_mut(vm)?;
            for i in 0..pages {
                if v.host_shared.contains_key(&(ipa + i * PAGE_SIZE))
                    || v.stage2.walk(ipa + i * PAGE_SIZE).is_some()
                {
                    return Err(Errno::EEXIST);
                }
            }
            for i in 0..pages {
                let (ipa_i, pa_i) = (ipa + i * PAGE_SIZE, pa + i * PAGE_SIZE);
                if let Err(e) = v.stage2.map(ipa_i, pa_i, PAGE_SIZE, S2Attrs::NORMAL_RWX) {
                    let _ = v.stage2.unmap(ipa, i * PAGE_SIZE);
                    v.host_shared.retain(|&k, _| k < ipa || k >= ipa_i);
                    return Err(e);
                }
                v.host_shared.insert(ipa_i, pa_i);
            }
            hyp.transition_all(pa, pages, t, |o, p| o.host_share_with_guest(p, h.0 as u16))?;
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
    /// -> x0 = 0, x1 = pages converted.
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
        let vm = c.vm;
        let pages = req.piece.size / PAGE_SIZE;
        if let (true, Some((g, offset))) = (req.piece.tracked, req.piece.gmem) {
            let v = hyp.vms.get_mut(&vm.0).ok_or((Errno::ENOENT, 0))?;
            let creq = ConvertRequest {
                offset,
                size: req.piece.size,
                to: req.to,
                mode: ContentMode::Preserve,
                initiator: Initiator::Guest,
            };
            let inv = hyp
                .world
                .convert(g, &creq, v.stage2.mm_mut())
                .map_err(|e| (e.errno, e.error_offset))?;
            hyp.apply_and_sync(vm, &inv);
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
            let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
            let access = if write != 0 {
                Access::Write
            } else {
                Access::Read
            };
            match hyp.world.resolve_fault(h, ipa, access, v.stage2.mm_mut())? {
                FaultResolution::Map {
                    ipa: page,
                    pa,
                    source,
                    size,
                    host_access,
                    ..
                } => {
                    v.stage2.map(page, pa, size, S2Attrs::NORMAL_RWX)?;
                    v.stats.faults_served += 1;
                    for i in 0..size / PAGE_SIZE {
                        sync_mapped_page(hyp, h, pa + i * PAGE_SIZE, source, host_access);
                    }
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

    /// Runs the invariant checker: -> x0 = number of violations (each logged).
    pub fn check_invariants() -> HostResult {
        with_hyp(|hyp| {
            let v = hyp.check_invariants();
            for violation in v.iter().take(16) {
                log::error!("invariant violated: {violation:?}");
            }
            ok(v.len() as u64)
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

/// Applies the host's completion of the last exit to the guest's registers.
fn complete(ctx: &mut GuestContext, pending: Pending, c0: u64, c1: u64) {
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
        Pending::MemoryFault { ipa } => {
            if c0 == COMPLETE_INJECT_ABORT {
                // The abort that matches the access (a fetch gets an instruction abort), at the
                // virtual address the guest used.
                let _ = ipa;
                ctx.inject_abort_saved();
            }
        }
        Pending::GuestRequest(_) => {
            ctx.set_reg(0, c0);
            ctx.set_reg(1, c1);
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

/// Ownership of a page just mapped for the guest: a fresh pool page becomes the guest's (shared
/// with the host if the policy lets the host reach it). A page the guest had already (mapped
/// again after an unmap) is refused by the transition with `EPERM` and needs nothing.
fn sync_mapped_page(hyp: &mut Hyp, h: VmHandle, pa: u64, source: FaultSource, host_access: bool) {
    let r = match source {
        FaultSource::UserspaceAnon => hyp.sync_anon_page(h, pa),
        FaultSource::Gmem | FaultSource::UserspaceGmem => {
            match hyp.owners.hyp_donate_to_guest(pa, h.0 as u16, host_access) {
                Err(Errno::EPERM) => match hyp.owners.state(pa, Component::Guest(h.0 as u16)) {
                    Ok(PageState::Owned | PageState::SharedOwned) => Ok(()),
                    Ok(_) => Err(Errno::EPERM),
                    Err(e) => Err(e),
                },
                r => r,
            }
        }
    };
    if let Err(e) = r {
        log::error!("ownership of page 0x{pa:x} for VM {}: {e}", h.0);
    }
}

/// After a 4 KiB fault: if the 2 MiB range around it is uniform again and still the one
/// contiguous chunk, the core says so and the stage-2 merges the pages back into a block.
fn try_merge(hyp: &mut Hyp, h: VmHandle, ipa: u64) {
    let ipa_2m = ipa & !(hyp_mem::stage2::SIZE_2M - 1);
    let was_split = hyp
        .vms
        .get(&h.0)
        .is_some_and(|v| v.split_blocks.contains(&ipa_2m));
    if !was_split || hyp.world.block_mergeable(h, ipa_2m).is_none() {
        return;
    }
    if let Some(v) = hyp.vms.get_mut(&h.0) {
        match v.stage2.try_merge_block(ipa_2m) {
            Ok(true) => {
                v.split_blocks.remove(&ipa_2m);
                log::debug!("vm {} merged 0x{ipa_2m:x} back into a 2 MiB block", h.0);
            }
            Ok(false) => {}
            Err(e) => log::error!("merging 0x{ipa_2m:x}: {e}"),
        }
    }
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
            ipa: block_ipa,
            gpa: block_gpa,
            pa: block_pa,
            source,
            size: block_size,
            host_access,
            ..
        } => {
            let mut m = (block_ipa, block_gpa, block_pa, block_size);
            let mut r = v
                .stage2
                .map(block_ipa, block_pa, block_size, S2Attrs::NORMAL_RWX);
            if r == Err(Errno::EEXIST) && block_size > PAGE_SIZE {
                // Other pages of the range are still mapped one by one (after a split): map the
                // faulting page alone, then try to merge the range back into a block.
                let off = (ipa & !(PAGE_SIZE - 1)) - block_ipa;
                m = (block_ipa + off, block_gpa + off, block_pa + off, PAGE_SIZE);
                r = v.stage2.map(m.0, m.2, PAGE_SIZE, S2Attrs::NORMAL_RWX);
            }
            let (page, _gpa, pa, size) = m;
            match r {
                Ok(()) => {
                    v.stats.faults_served += 1;
                    if source != FaultSource::Gmem {
                        v.stats.faults_via_uaddr += 1;
                    }
                    // Only a range whose block was split can merge back.
                    let may_merge = size == PAGE_SIZE && !v.split_blocks.is_empty();
                    for i in 0..size / PAGE_SIZE {
                        sync_mapped_page(hyp, h, pa + i * PAGE_SIZE, source, host_access);
                    }
                    if may_merge {
                        try_merge(hyp, h, page);
                    }
                    log::debug!(
                    "vm {} fault ipa 0x{page:x} {acc:?} -> pa 0x{pa:x} (0x{size:x} bytes) via {}",
                    h.0,
                    source_name(source)
                );
                    Step::Resume
                }
                Err(Errno::ENOMEM) => {
                    Step::Exit((ExitReason::NeedPages, [1, 0, 0, 0, 0]), Pending::None)
                }
                Err(e) => {
                    log::error!("stage-2 map of 0x{page:x} failed: {e}");
                    guest_exception(ctx, ipa)
                }
            }
        }
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
                    let data = if m.write {
                        ctx.reg(usize::from(m.reg))
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
        FaultResolution::NeedPages => {
            Step::Exit((ExitReason::NeedPages, [1, 0, 0, 0, 0]), Pending::None)
        }
    }
}

fn answer(ctx: &mut GuestContext, r: [u64; 4]) -> Step {
    ctx.x[..4].copy_from_slice(&r);
    Step::Resume
}

/// MEM_SHARE / MEM_UNSHARE: validated here; the first memslot piece (at most 256 pages) is
/// forwarded to the host, which converts it with `GuestConvert` and re-runs the vCPU.
fn guest_share_call(hyp: &mut Hyp, h: VmHandle, ctx: &mut GuestContext, x: [u64; 4]) -> Step {
    let [func, ipa, n, must_be_zero] = x;
    let to = if func == MEM_SHARE {
        ConvertTo::Shared
    } else {
        ConvertTo::Private
    };
    let pages = n.clamp(1, RANGE_CALL_MAX_GRANULES);
    let pieces = match hyp.world.guest_range(h, ipa, pages, to) {
        Ok(p) if must_be_zero == 0 => p,
        _ => return answer(ctx, [SMCCC_INVALID_PARAMETER, 0, 0, 0]),
    };
    let Some(&piece) = pieces.first() else {
        return answer(ctx, [SMCCC_INVALID_PARAMETER, 0, 0, 0]);
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
    if a2 | a3 != 0 {
        return answer(ctx, [SMCCC_INVALID_PARAMETER, 0, 0, 0]);
    }
    let Some(v) = hyp.vms.get_mut(&h.0) else {
        return answer(ctx, [SMCCC_INVALID_PARAMETER, 0, 0, 0]);
    };
    let inv = match hyp.world.relinquish(h, ipa, v.stage2.mm_mut()) {
        Ok(inv) => inv,
        Err(_) => return answer(ctx, [SMCCC_INVALID_PARAMETER, 0, 0, 0]),
    };
    hyp.apply_and_sync(h, &inv);
    // Back to the host, not to the pool.
    for &pa in &inv.freed {
        let taken = hyp
            .vms
            .get_mut(&h.0)
            .is_some_and(|v| v.stage2.mm_mut().remove(pa));
        if taken {
            if let Err(e) = hyp.owners.hyp_donate_to_host(pa) {
                log::error!("relinquished page 0x{pa:x} to the host: {e}");
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
    }
}

/// Runs a vCPU until an exit the host must see. `c0`, `c1` complete the previous exit.
pub fn vcpu_run(vcpu: u64, c0: u64, c1: u64) -> HostResult {
    let id = u32::try_from(vcpu).map_err(|_| Errno::ENOENT)?;
    // Take the context out of the table: the lock is not held while the guest runs.
    let (h, mut ctx, cfg, host_vttbr, host_vtcr) = with_hyp(|hyp| {
        let c = hyp.vcpus.get_mut(&id).ok_or(Errno::ENOENT)?;
        let mut ctx = c.ctx.take().ok_or(Errno::EBUSY)?;
        complete(&mut ctx, c.pending, c0, c1);
        c.pending = Pending::None;
        let h = c.vm;
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
