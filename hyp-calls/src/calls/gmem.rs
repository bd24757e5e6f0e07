//! Host calls on guest_memfd files: create and destroy, conversions (the host's own and the
//! guest requests it carries out), punch hole, pins, the host's mmap-view faults.

use abi::flags::{ContentMode, ConvertTo, VmType};
use abi::host::CONVERT_MODE_DEFAULT;
use abi::{Errno, PAGE_SIZE};
use hyp_core::{ConvertRequest, GmemHandle, Initiator, VmHandle};

use super::{ok, HostResult};
use crate::platform::Platform;
use crate::state::{handle32, GuestRequest, Hyp, Pending, PIECE_PAGES};

pub fn gmem_create<P: Platform>(hyp: &mut Hyp<P>, vm: u64, size: u64, flags: u64) -> HostResult {
    let g = hyp
        .world
        .create_gmem(VmHandle(handle32(vm)?), size, flags)?;
    ok(u64::from(g.0))
}

pub fn gmem_destroy<P: Platform>(hyp: &mut Hyp<P>, gmem: u64) -> HostResult {
    let g = GmemHandle(handle32(gmem)?);
    let owner = hyp.world.gmem_owner(g)?;
    hyp.world.destroy_gmem_check(g)?;
    let file = hyp.world.gmem(g)?;
    file.try_for_each_allocated(0, file.size(), |pa| hyp.check_reclaim(owner, pa))?;
    // No memslot binds the file (EBUSY otherwise), so no guest maps its pages. They go back
    // in pieces (each checked above), so that no list outgrows a page.
    loop {
        let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
        let freed = hyp
            .world
            .gmem_release_some(g, PIECE_PAGES, v.stage2.mm_mut())?;
        if freed.is_empty() {
            break;
        }
        for pa in freed {
            hyp.reclaim_to_pool(owner, pa)?;
        }
    }
    let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
    let freed = hyp.world.destroy_gmem(g, v.stage2.mm_mut())?;
    for pa in freed {
        hyp.reclaim_to_pool(owner, pa)?;
    }
    ok(0)
}

/// Converts a gmem range (the host's own, or a guest's request it carries out): the core's
/// checks, then every changing page's ownership checked, then the change, the unmaps and the
/// ownership moves. `Err((errno, error_offset))`; nothing changed on error.
fn convert_range<P: Platform>(
    hyp: &mut Hyp<P>,
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
pub fn convert<P: Platform>(hyp: &mut Hyp<P>, a: [u64; 6]) -> Result<[u64; 6], (Errno, u64)> {
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

pub fn punch_hole<P: Platform>(hyp: &mut Hyp<P>, gmem: u64, offset: u64, size: u64) -> HostResult {
    let g = GmemHandle(handle32(gmem)?);
    let owner = hyp.world.gmem_owner(g)?;
    let file = hyp.world.gmem(g)?;
    file.punch_check(offset, size)?;
    file.try_for_each_allocated(offset, size, |pa| hyp.check_reclaim(owner, pa))?;
    // Every page checked: the punch goes in pieces of at most `PIECE_PAGES` pages, so that
    // no list outgrows a page; each piece is unmapped before the core zeroes and frees
    // anything (as for a conversion).
    let end = offset + size;
    let mut at = offset;
    while at < end {
        let stop = hyp
            .world
            .gmem(g)?
            .end_after(at, end - at, PIECE_PAGES)
            .max(at);
        let stop = if stop == at { end } else { stop };
        hyp.unmap_bindings(g, at, stop - at);
        let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
        let inv = hyp.world.punch(g, at, stop - at, v.stage2.mm_mut())?;
        hyp.apply_and_sync(owner, &inv)?;
        at = stop;
    }
    ok(0)
}

/// Checks that the page behind a gmem offset (if allocated) can take the state the policy
/// gives it, before a host access changes anything.
pub(crate) fn check_gmem_page<P: Platform>(
    hyp: &Hyp<P>,
    owner: VmHandle,
    g: GmemHandle,
    off: u64,
) -> Result<(), Errno> {
    let file = hyp.world.gmem(g)?;
    if let Some(pa) = file.page_pa(off) {
        hyp.settle_checked(owner, pa, file.host_stage2_allowed(off))?;
    }
    Ok(())
}

pub fn host_pin<P: Platform>(hyp: &mut Hyp<P>, gmem: u64, offset: u64, pin: bool) -> HostResult {
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
}

/// The host's mmap-view fault: the physical page the host may touch, after the checks.
pub fn host_map_gmem<P: Platform>(hyp: &mut Hyp<P>, gmem: u64, offset: u64) -> HostResult {
    let g = GmemHandle(handle32(gmem)?);
    let owner = hyp.world.gmem_owner(g)?;
    check_gmem_page(hyp, owner, g, offset)?;
    let v = hyp.vms.get_mut(&owner.0).ok_or(Errno::ENOENT)?;
    let pa = hyp.world.host_fault(g, offset, v.stage2.mm_mut())?;
    hyp.sync_gmem_range(g, offset & !(PAGE_SIZE - 1), PAGE_SIZE)?;
    ok(pa)
}

/// Carries out the share/unshare the vCPU's last exit asked for (the host cannot name any
/// other range). `Err((EAGAIN, error_offset))` if a page is pinned; nothing changes then.
/// -> x0 = 0, x1 = pages converted. What the guest sees is decided at its next run from the
/// state (Trust rule 2), not from this call or the host's completion values.
pub fn guest_convert<P: Platform>(hyp: &mut Hyp<P>, vcpu: u64) -> Result<[u64; 6], (Errno, u64)> {
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
