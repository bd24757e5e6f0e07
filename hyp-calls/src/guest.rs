//! Guest calls (SMCCC 1.1 over `HVC #0`, numbers from pKVM): MEM_SHARE / MEM_UNSHARE (validated
//! here, forwarded to the host, answered from state: Trust rule 2), MEM_RELINQUISH and the MMIO
//! guard (handled here entirely), and the stateless answers (UID, FEATURES, HYP_MEMINFO, ...).
//! What a guest sees is decided here; a wrong argument or state is `INVALID_PARAMETER`.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use abi::flags::ConvertTo;
use abi::guest::*;
use abi::host::ExitReason;
use abi::PAGE_SIZE;
use hyp_core::{VmHandle, World};

use crate::platform::{Platform, VcpuContext};
use crate::run::Step;
use crate::state::{GuestRequest, Hyp, Pending, IPA};

/// Answers a guest's forwarded MEM_SHARE / MEM_UNSHARE from the state the hyp holds (Trust
/// rule 2): `SUCCESS` and the pages done when any page was done, `INVALID_PARAMETER` (x1 = 0)
/// when none was, whatever the host's completion values say.
pub(crate) fn guest_request_answer(world: &World, vm: VmHandle, req: &GuestRequest) -> (u64, u64) {
    match world.guest_pages_done(vm, &req.piece, req.to) {
        0 => (SMCCC_INVALID_PARAMETER, 0),
        done => (SMCCC_SUCCESS, done),
    }
}

fn answer<C: VcpuContext>(ctx: &mut C, r: [u64; 4]) -> Step {
    for (i, v) in r.into_iter().enumerate() {
        ctx.set_reg(i, v);
    }
    Step::Resume
}

/// MEM_SHARE / MEM_UNSHARE: validated here; the first memslot piece (at most 256 pages) is
/// forwarded to the host, which converts it with `GuestConvert` and re-runs the vCPU; the
/// guest's answer is then computed from the state (Trust rule 2). For a `pkvm` VM the call
/// first brings untouched pages in: a first touch (Trust rule 9), kept even if the call is then
/// refused.
pub(crate) fn guest_share_call<P: Platform>(
    hyp: &mut Hyp<P>,
    h: VmHandle,
    ctx: &mut P::Vcpu,
    x: [u64; 4],
) -> Step {
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
pub(crate) fn guest_relinquish<P: Platform>(
    hyp: &mut Hyp<P>,
    h: VmHandle,
    ctx: &mut P::Vcpu,
    x: [u64; 4],
) -> Step {
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
pub(crate) fn mmio_guard_call<P: Platform>(
    hyp: &mut Hyp<P>,
    h: VmHandle,
    ctx: &mut P::Vcpu,
    x: [u64; 4],
) -> Step {
    let [func, ipa, a2, a3] = x;
    let invalid = [SMCCC_INVALID_PARAMETER, 0, 0, 0];
    let in_memory = |hyp: &Hyp<P>, ipa: u64| hyp.world.gpa_to_gmem(h, ipa).is_ok();
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
    // A bounded set (the guest's flood gets INVALID_PARAMETER and maps nothing).
    if map
        && set.len() + ipas.iter().filter(|a| !set.contains(a)).count()
            > abi::host::MMIO_GUARD_GRANULES_MAX
    {
        return answer(ctx, invalid);
    }
    for a in &ipas {
        if map {
            set.insert(*a);
        } else {
            set.remove(a);
        }
    }
    answer(ctx, [SMCCC_SUCCESS, ipas.len() as u64, 0, 0])
}

/// The answer to a stateless guest hypercall.
pub fn stateless_answer(x: [u64; 4]) -> [u64; 4] {
    let [func, a1, a2, a3] = x;
    match func {
        ARM_SMCCC_VENDOR_HYP_CALL_UID => KVM_UID,
        KVM_FEATURES => [features_bitmap_0(), 0, 0, 0],
        HYP_MEMINFO | MMIO_GUARD_INFO if a1 | a2 | a3 != 0 => [SMCCC_INVALID_PARAMETER, 0, 0, 0],
        HYP_MEMINFO | MMIO_GUARD_INFO => [abi::PAGE_SIZE, 1, 0, 0],
        _ => [SMCCC_NOT_SUPPORTED, 0, 0, 0],
    }
}
