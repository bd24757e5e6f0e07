//! The fault path and the other exits: what is served at EL2, what the host is told (and only
//! that: Trust rule 1), and how the host's completion is applied.

use super::*;
use abi::host::{ExitReason, COMPLETE_INJECT_ABORT};
use hyp_core::{Access, VmHandle};

use crate::exit::MmioAccess;

const P: u64 = PAGE_SIZE;

/// A guest write at `ipa` faulting (no valid syndrome needed: memory).
pub(crate) fn touch(r: &mut Rig, vcpu: u64, ipa: u64) -> (Step, FakeVcpu) {
    r.exit(
        vcpu,
        0,
        |_| {},
        GuestExit::Stage2Abort {
            ipa,
            access: Access::Write,
            mmio: None,
        },
    )
}

fn mmio(write: bool, size: u8, reg: u8) -> Option<MmioAccess> {
    Some(MmioAccess {
        size,
        write,
        reg,
        sign_extend: false,
        sixty_four: true,
        wide: true,
    })
}

#[test]
fn a_fault_in_a_memslot_is_served_at_el2() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let (step, ctx) = touch(&mut r, vcpu, GPA + 3 * P + 5);
    assert!(matches!(step, Step::Resume));
    assert!(ctx.injected.is_empty() && ctx.live_aborts == 0);
    let m = r.hyp.vms[&(vm as u32)].stage2.walk(GPA + 3 * P).unwrap();
    // The guest owns the page alone; the checker agrees.
    assert!(!r.hyp.owners.host_can_access(m.pa_base));
    assert_eq!(r.hyp.vms[&(vm as u32)].stats.faults_served, 1);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn an_empty_pool_asks_for_pages_and_the_host_may_end_the_access() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 0);
    let (step, _) = touch(&mut r, vcpu, GPA);
    assert!(matches!(
        step,
        Step::Exit((ExitReason::NeedPages, [3, 0, 0, 0, 0]), _)
    ));
    // The host will not donate: it completes with an injected abort.
    let t = r.hyp.begin_run(vcpu, COMPLETE_INJECT_ABORT).unwrap();
    assert_eq!(t.ctx.saved_aborts, 1);
    r.hyp.end_run(
        t,
        (ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    // It donates and re-runs: served.
    r.donate(vm, 8);
    assert!(matches!(touch(&mut r, vcpu, GPA).0, Step::Resume));
}

#[test]
fn mmio_exits_carry_the_access_and_only_the_bytes_stored() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let dev = 0x9000_0010;
    let (step, _) = r.exit(
        vcpu,
        0,
        |c| c.x[3] = 0x1122_3344_5566_7788,
        GuestExit::Stage2Abort {
            ipa: dev,
            access: Access::Write,
            mmio: mmio(true, 2, 3),
        },
    );
    let Step::Exit((ExitReason::Mmio, d), _) = step else {
        panic!("{step:?}");
    };
    assert_eq!(d, [dev, 2, 1, 0x7788, 0]);
    // The completion of a store steps over it.
    let t = r.hyp.begin_run(vcpu, 0xdead).unwrap();
    assert_eq!((t.ctx.skipped, t.ctx.x[3]), (1, 0x1122_3344_5566_7788));
    r.hyp.end_run(
        t,
        (ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    // A load: the host's value lands in the register, truncated (and sign-extended if asked);
    // a 16-bit T32 instruction is stepped over by its own length.
    let access = Some(MmioAccess {
        size: 1,
        write: false,
        reg: 5,
        sign_extend: true,
        sixty_four: false,
        wide: false,
    });
    let (step, _) = r.exit(
        vcpu,
        0,
        |_| {},
        GuestExit::Stage2Abort {
            ipa: dev,
            access: Access::Read,
            mmio: access,
        },
    );
    assert!(matches!(
        step,
        Step::Exit((ExitReason::Mmio, [_, 1, 0, 0, 0]), _)
    ));
    let t = r.hyp.begin_run(vcpu, 0xffff_ff80).unwrap();
    assert_eq!(t.ctx.x[5], 0xffff_ff80);
    assert_eq!(t.ctx.skipped, 2);
    assert_eq!(t.ctx.narrow_skips, 1);
    r.hyp.end_run(
        t,
        (ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    // No valid syndrome outside every memslot, or a fetch there: the guest gets an abort; the
    // host hears nothing.
    let (step, ctx) = r.exit(
        vcpu,
        0,
        |_| {},
        GuestExit::Stage2Abort {
            ipa: dev,
            access: Access::Exec,
            mmio: None,
        },
    );
    assert!(matches!(step, Step::Resume));
    assert_eq!(ctx.live_aborts, 1);
}

#[test]
fn after_mmio_guard_enrol_an_unguarded_access_aborts_in_the_guest() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let (setup, exit) = hvc([abi::guest::MMIO_GUARD_ENROLL, 0, 0, 0]);
    r.exit(vcpu, 0, setup, exit);
    let (step, ctx) = r.exit(
        vcpu,
        0,
        |_| {},
        GuestExit::Stage2Abort {
            ipa: 0x9000_0000,
            access: Access::Read,
            mmio: mmio(false, 8, 1),
        },
    );
    assert!(matches!(step, Step::Resume));
    assert_eq!(ctx.injected, [(Injected::DataAbort, 0x9000_0000)]);
}

#[test]
fn a_memory_fault_exit_and_its_completion() {
    let mut r = rig();
    // Option 1 (coco): a shared fault on a private page is refused by gmem's validation.
    let (_, _, vcpu) = r.configured(VmType::Coco, 16, 32);
    let (step, _) = r.exit(
        vcpu,
        0,
        |_| {},
        GuestExit::Stage2Abort {
            ipa: GPA | 1 << 39,
            access: Access::Read,
            mmio: None,
        },
    );
    let Step::Exit((ExitReason::MemoryFault, d), _) = step else {
        panic!("{step:?}");
    };
    assert_eq!(d[..3], [GPA, P, abi::flags::MemoryFaultFlags::READ.bits()]);
    // 0 re-runs the access; COMPLETE_INJECT_ABORT ends it with an abort.
    let t = r.hyp.begin_run(vcpu, 0).unwrap();
    assert_eq!(t.ctx.saved_aborts, 0);
    r.hyp.end_run(
        t,
        (ExitReason::MemoryFault, d),
        crate::state::Pending::MemoryFault { ipa: GPA },
    );
    let t = r.hyp.begin_run(vcpu, COMPLETE_INJECT_ABORT).unwrap();
    assert_eq!(t.ctx.saved_aborts, 1);
}

#[test]
fn other_exits() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    // The host's timer: the host gets the CPU back.
    let (step, _) = r.exit(vcpu, 0, |_| {}, GuestExit::Interrupt);
    assert!(matches!(
        step,
        Step::Exit((ExitReason::Interrupt, [0, 0, 0, 0, 0]), _)
    ));
    // A stage-2 abort mapping cannot fix: an abort in the guest.
    let (step, ctx) = r.exit(vcpu, 0, |_| {}, GuestExit::Abort { instruction: true });
    assert!(matches!(step, Step::Resume));
    assert_eq!(ctx.live_aborts, 1);
    // An SError: the class only.
    let (step, _) = r.exit(vcpu, 0, |_| {}, GuestExit::Uncatchable { ec: 0x2f });
    assert!(matches!(
        step,
        Step::Exit((ExitReason::GuestException, [0x2f, 0, 0, 0, 0]), _)
    ));
    // Anything else: emulated by the arch corner, which learns whether the PMU is open.
    let (_, ctx) = r.exit(vcpu, 0, |_| {}, GuestExit::Other { esr: 0 });
    assert_eq!(ctx.traps, [false]);
    r.hyp.vms.get_mut(&(vm as u32)).unwrap().pmu_open = true;
    let (_, ctx) = r.exit(vcpu, 0, |_| {}, GuestExit::Other { esr: 0 });
    assert_eq!(ctx.traps, [false, true]);
    // Every exit that reached the host was counted.
    assert!(r.hyp.vms[&(vm as u32)].stats.exits >= 3);
    let _ = VmHandle(0);
}
