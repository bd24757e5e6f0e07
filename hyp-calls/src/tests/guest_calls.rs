//! Guest calls: what a guest sees for each argument and state (SMCCC codes), the request the
//! host gets, and that the answer of a forwarded call comes from state (Trust rule 2).

use super::*;
use abi::guest::*;
use abi::host::ExitReason;
use hyp_core::VmHandle;

const P: u64 = PAGE_SIZE;

/// A guest call forwarded to the host: the exit's data.
fn forwarded(r: &mut Rig, vcpu: u64, x: [u64; 4]) -> [u64; 5] {
    let (setup, exit) = hvc(x);
    match r.exit(vcpu, 0, setup, exit).0 {
        Step::Exit((ExitReason::Hypercall, d), _) => d,
        other => panic!("{x:x?}: {other:?}"),
    }
}

/// The guest's x0, x1 at its next run (completing a forwarded call with the host's `c0`).
fn next_run(r: &mut Rig, vcpu: u64, c0: u64) -> (u64, u64) {
    let t = r.hyp.begin_run(vcpu, c0).unwrap();
    let regs = (t.ctx.x[0], t.ctx.x[1]);
    r.hyp.end_run(
        t,
        (ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    regs
}

const IP: (u64, u64) = (SMCCC_INVALID_PARAMETER, 0);

#[test]
fn mem_share_is_validated_at_el2() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    // A must-be-zero argument, an unaligned IPA, outside every memslot, a range leaving it.
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, GPA, 1, 1]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, GPA + 8, 1, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, 0x1000, 1, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, GPA + 15 * P, 2, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, !(P - 1), 1, 0]), IP);
    // Unsharing a page never shared.
    assert_eq!(served(&mut r, vcpu, [MEM_UNSHARE, GPA, 1, 0]), IP);
    // A good request: forwarded with the piece (x2 = 0 means one page; at most 256).
    assert_eq!(
        forwarded(&mut r, vcpu, [MEM_SHARE, GPA, 0, 0])[..3],
        [MEM_SHARE, GPA, 1]
    );
    // The host did nothing, whatever it claims: INVALID_PARAMETER.
    assert_eq!(next_run(&mut r, vcpu, SMCCC_SUCCESS), IP);
    // Again, carried out this time: SUCCESS and the pages done.
    assert_eq!(forwarded(&mut r, vcpu, [MEM_SHARE, GPA, 4, 0])[2], 4);
    r.ok(HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0]);
    r.err(HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0], Errno::EINVAL);
    assert_eq!(
        next_run(&mut r, vcpu, SMCCC_INVALID_PARAMETER),
        (SMCCC_SUCCESS, 4)
    );
    // Sharing a shared page: refused; unsharing it: forwarded.
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, GPA, 1, 0]), IP);
    assert_eq!(
        forwarded(&mut r, vcpu, [MEM_UNSHARE, GPA, 1, 0])[0],
        MEM_UNSHARE
    );
    r.ok(HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0]);
    assert_eq!(next_run(&mut r, vcpu, 0), (SMCCC_SUCCESS, 1));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_range_call_stops_at_256_pages_and_at_a_memslot_edge() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 300, 32);
    assert_eq!(forwarded(&mut r, vcpu, [MEM_SHARE, GPA, 1000, 0])[2], 256);
    assert_eq!(next_run(&mut r, vcpu, 0), IP);
    // From page 290: 10 pages left in the memslot, then outside it: refused whole.
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, GPA + 290 * P, 20, 0]), IP);
    assert_eq!(
        forwarded(&mut r, vcpu, [MEM_SHARE, GPA + 290 * P, 10, 0])[2],
        10
    );
}

#[test]
fn a_pkvm_share_or_unshare_of_an_untouched_page_is_a_first_touch() {
    let mut r = rig();
    let vm = r.vm(VmType::Pkvm);
    let flags = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY | GmemFlags::INIT_SHARED;
    let g = r.gmem(vm, 16, flags);
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    r.slot(vm, GPA, 16, g, UserspaceAddr::None, both).unwrap();
    r.donate(vm, 32);
    let vcpu = r.vcpu(vm, 0x1000, 0);
    let pa = r.ok(HostCall::HostMapGmem, [g, 2 * P, 1, 0, 0, 0]);
    assert!(r.hyp.owners.host_can_access(pa));
    // Unsharing an untouched INIT_SHARED page: refused, and the page is the guest's now.
    assert_eq!(served(&mut r, vcpu, [MEM_UNSHARE, GPA + 2 * P, 1, 0]), IP);
    assert!(!r.hyp.owners.host_can_access(pa));
    r.err(HostCall::HostMapGmem, [g, 2 * P, 0, 0, 0, 0], Errno::EFAULT);
    // A page the host pins cannot be taken: refused, nothing taken.
    r.ok(HostCall::HostPin, [g, 5 * P, 0, 0, 0, 0]);
    assert_eq!(served(&mut r, vcpu, [MEM_SHARE, GPA + 4 * P, 2, 0]), IP);
    let f = r.hyp.world.gmem(hyp_core::GmemHandle(g as u32)).unwrap();
    assert_eq!(f.shareability(4 * P), Some(hyp_core::Shareability::All));
    // Sharing an untouched one: taken, then shared: SUCCESS once the host carries it out.
    assert_eq!(
        forwarded(&mut r, vcpu, [MEM_SHARE, GPA + 7 * P, 1, 0])[2],
        1
    );
    r.ok(HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0]);
    assert_eq!(next_run(&mut r, vcpu, 0), (SMCCC_SUCCESS, 1));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn relinquish() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    assert_eq!(served(&mut r, vcpu, [MEM_RELINQUISH, GPA, 1, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_RELINQUISH, GPA, 0, 1]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_RELINQUISH, GPA + 1, 0, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MEM_RELINQUISH, 0x1000, 0, 0]), IP);
    // An untouched page: a successful no-op.
    assert_eq!(
        served(&mut r, vcpu, [MEM_RELINQUISH, GPA, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    // A page it touched: gone back to the host, zeroed.
    let (_, _) = crate::tests::exits::touch(&mut r, vcpu, GPA + P);
    let h = VmHandle(vm as u32);
    let pa = r.hyp.vms[&h.0].stage2.walk(GPA + P).unwrap().pa_base;
    assert_eq!(
        served(&mut r, vcpu, [MEM_RELINQUISH, GPA + P, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    assert!(r.hyp.vms[&h.0].stage2.walk(GPA + P).is_none());
    assert!(r.hyp.owners.host_can_access(pa));
    assert_eq!(r.ram.read_u64(pa), Some(0));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn the_mmio_guard() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let dev = 0x9000_0000;
    // Before ENROLL: MAP is refused, UNMAP has nothing to do.
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_MAP, dev, 0, 0]), IP);
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_UNMAP, dev, 0, 0]),
        (SMCCC_SUCCESS, 0)
    );
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_ENROLL, 1, 0, 0]), IP);
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_ENROLL, 0, 0, 0]),
        (SMCCC_SUCCESS, 0)
    );
    // Guest memory, an unaligned IPA, must-be-zero arguments, beyond the IPA space: refused.
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_MAP, GPA, 0, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_MAP, dev + 8, 0, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_MAP, dev, 1, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_MAP, 1 << 40, 0, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_MAP_RANGE, dev, 4, 1]), IP);
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_MAP, dev, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    // Ranges stop at 256 granules; a range reaching guest memory is refused whole.
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_MAP_RANGE, dev, 1000, 0]),
        (SMCCC_SUCCESS, 256)
    );
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_MAP_RANGE, GPA - 2 * P, 4, 0]),
        IP
    );
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_UNMAP_RANGE, dev, 3, 0]),
        (SMCCC_SUCCESS, 3)
    );
}

#[test]
fn stateless_answers_and_smc() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let (setup, exit) = hvc([ARM_SMCCC_VENDOR_HYP_CALL_UID, 0, 0, 0]);
    let ctx = r.exit(vcpu, 0, setup, exit).1;
    assert_eq!(ctx.x[..4], KVM_UID);
    assert_eq!(
        served(&mut r, vcpu, [KVM_FEATURES, 0, 0, 0]).0,
        features_bitmap_0()
    );
    assert_eq!(served(&mut r, vcpu, [HYP_MEMINFO, 0, 0, 0]), (P, 1));
    assert_eq!(served(&mut r, vcpu, [HYP_MEMINFO, 0, 1, 0]), IP);
    assert_eq!(served(&mut r, vcpu, [MMIO_GUARD_INFO, 1, 0, 0]), IP);
    assert_eq!(
        served(&mut r, vcpu, [0xC600_00FF, 0, 0, 0]).0,
        SMCCC_NOT_SUPPORTED
    );
    // A guest SMC: NOT_SUPPORTED, and the guest goes on after it.
    let (step, ctx) = r.exit(vcpu, 0, |_| {}, GuestExit::Smc);
    assert!(matches!(step, Step::Resume));
    assert_eq!((ctx.x[0], ctx.skipped), (SMCCC_NOT_SUPPORTED, 1));
}
