//! A storm on the host: random sequences of host calls and guest exits, valid, invalid and
//! adversarial (stale and foreign handles, overlapping ranges, pages donated twice, lies in
//! completions, pins under conversions), driven through the portable calls. After every step
//! the invariant checker (ownership against every stage-2, and what each guest was told) must
//! be clean and every page of RAM must have an owner. A failure prints the case, which
//! `PROPTEST_CASES` and proptest's seed replay.

use proptest::prelude::*;

use super::*;
use abi::guest::{MEM_RELINQUISH, MEM_SHARE, MEM_UNSHARE};
use hyp_core::Access;

/// The host's own pages the storm donates from (and names when it lies).
const HOST_PAGES: u64 = 256;
const GPA_SLOTS: u64 = 4;
/// Pages of the gmem each seeded VM has bound at [`GPA`].
const SEED_PAGES: u64 = 32;
/// Each slot window is 64 pages.
const WINDOW: u64 = 64;

#[derive(Clone, Debug)]
enum Op {
    VmCreate(u64),
    VmDestroy(usize),
    GmemCreate(usize, u64, u64),
    GmemDestroy(usize),
    SlotCreate(usize, usize, u64, u64, u64, u64),
    SlotDelete(usize, u64),
    Donate(usize, u64, u64),
    Reclaim(usize, u64),
    VcpuCreate(usize),
    Fault(usize, u64, u8, u64),
    Hvc(usize, u8, u64, u64, u64),
    GuestConvert(usize),
    Convert(usize, u64, u64, u64, u64),
    Punch(usize, u64, u64),
    Pin(usize, u64, bool),
    HostMap(usize, u64),
    Junk(u8, [u64; 3]),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..6;
    prop_oneof![
        (0u64..5).prop_map(Op::VmCreate),
        i.clone().prop_map(Op::VmDestroy),
        (i.clone(), 0u64..70, 0u64..16).prop_map(|(v, p, f)| Op::GmemCreate(v, p, f)),
        i.clone().prop_map(Op::GmemDestroy),
        (
            i.clone(),
            i.clone(),
            0..GPA_SLOTS,
            0u64..70,
            0u64..70,
            0u64..8
        )
            .prop_map(|(v, g, s, p, o, f)| Op::SlotCreate(v, g, s, p, o, f)),
        (i.clone(), 0u64..6).prop_map(|(v, s)| Op::SlotDelete(v, s)),
        (i.clone(), 0..HOST_PAGES, 0u64..40).prop_map(|(v, o, n)| Op::Donate(v, o, n)),
        (i.clone(), 0u64..3).prop_map(|(v, k)| Op::Reclaim(v, k)),
        i.clone().prop_map(Op::VcpuCreate),
        (i.clone(), 0..SEED_PAGES + 8, 0u8..3, 0u64..3)
            .prop_map(|(c, p, a, c0)| Op::Fault(c, p, a, c0)),
        (i.clone(), 0..GPA_SLOTS * WINDOW + 4, 0u8..3, 0u64..3)
            .prop_map(|(c, p, a, c0)| Op::Fault(c, p, a, c0)),
        (i.clone(), 0u8..3, 0..SEED_PAGES + 8, 0u64..40, 0u64..2)
            .prop_map(|(c, f, p, n, x3)| Op::Hvc(c, f, p, n, x3)),
        (
            i.clone(),
            0u8..3,
            0..GPA_SLOTS * WINDOW + 4,
            0u64..300,
            0u64..2
        )
            .prop_map(|(c, f, p, n, x3)| Op::Hvc(c, f, p, n, x3)),
        i.clone().prop_map(Op::GuestConvert),
        (i.clone(), 0u64..70, 0u64..70, 0u64..3, 0u64..3)
            .prop_map(|(g, o, n, t, m)| Op::Convert(g, o, n, t, m)),
        (i.clone(), 0u64..70, 0u64..70).prop_map(|(g, o, n)| Op::Punch(g, o, n)),
        (i.clone(), 0u64..70, any::<bool>()).prop_map(|(g, o, p)| Op::Pin(g, o, p)),
        (i.clone(), 0u64..70).prop_map(|(g, o)| Op::HostMap(g, o)),
        (0u8..40, any::<[u64; 3]>()).prop_map(|(c, a)| Op::Junk(c, a)),
    ]
}

/// Handles the storm has seen (live or not: stale ones are part of the attack).
#[derive(Default)]
struct Seen {
    vms: Vec<u64>,
    gmems: Vec<u64>,
    vcpus: Vec<u64>,
}

fn pick(v: &[u64], i: usize) -> u64 {
    if v.is_empty() {
        // Nothing yet: a handle that names nothing.
        0x77
    } else {
        v[i % v.len()]
    }
}

/// One exit of a vCPU, if it can run now (a destroyed VM's vCPU cannot).
fn run_exit(r: &mut Rig, vcpu: u64, c0: u64, x: Option<[u64; 4]>, exit: GuestExit) {
    let Ok(mut t) = r.hyp.begin_run(vcpu, c0) else {
        return;
    };
    if let Some(x) = x {
        for (i, v) in x.into_iter().enumerate() {
            t.ctx.set_reg(i, v);
        }
    }
    let step = r.hyp.handle_exit(t.vm, &mut t.ctx, exit);
    let (e, p) = match step {
        Step::Exit(e, p) => (e, p),
        Step::Resume => (
            (abi::host::ExitReason::Interrupt, [0; 5]),
            crate::state::Pending::None,
        ),
    };
    r.hyp.end_run(t, e, p);
}

fn step(r: &mut Rig, seen: &mut Seen, host: u64, op: &Op) {
    let p = PAGE_SIZE;
    let call = |r: &mut Rig, c: HostCall, a: [u64; 6]| r.call(c, a).ok().map(|x| x[0]);
    match *op {
        Op::VmCreate(t) => {
            let n = abi::host::VM_CREATE_PAGES;
            let pa = Ram::alloc_pages(&mut r.ram, n as usize).unwrap_or(0);
            if let Some(h) = call(r, HostCall::VmCreate, [t, pa, n, 0, 0, 0]) {
                seen.vms.push(h);
            }
        }
        Op::VmDestroy(v) => {
            call(r, HostCall::VmDestroy, [pick(&seen.vms, v), 0, 0, 0, 0, 0]);
        }
        Op::GmemCreate(v, pages, flags) => {
            let a = [pick(&seen.vms, v), pages * p, flags, 0, 0, 0];
            if let Some(h) = call(r, HostCall::GmemCreate, a) {
                seen.gmems.push(h);
            }
        }
        Op::GmemDestroy(g) => {
            call(
                r,
                HostCall::GmemDestroy,
                [pick(&seen.gmems, g), 0, 0, 0, 0, 0],
            );
        }
        Op::SlotCreate(v, g, s, pages, off, flags) => {
            let packed = flags & 3 | ((flags >> 2) << abi::host::SLOT_UADDR_SHIFT);
            let gpa = GPA + s * WINDOW * p;
            let a = [
                pick(&seen.vms, v),
                gpa,
                pages * p,
                pick(&seen.gmems, g),
                off * p,
                packed,
            ];
            call(r, HostCall::MemslotCreate, a);
        }
        Op::SlotDelete(v, s) => {
            call(
                r,
                HostCall::MemslotDelete,
                [pick(&seen.vms, v), s, 0, 0, 0, 0],
            );
        }
        Op::Donate(v, off, n) => {
            // Pages of the host's region, possibly donated already (the fake RAM's own
            // allocator knows only that region as the host's; the junk calls name others).
            let n = n.min(HOST_PAGES - off);
            let a = [pick(&seen.vms, v), host + off * p, n, 0, 0, 0];
            call(r, HostCall::Donate, a);
        }
        Op::Reclaim(v, kind) => {
            call(
                r,
                HostCall::PoolReclaim,
                [pick(&seen.vms, v), kind, 0, 0, 0, 0],
            );
        }
        Op::VcpuCreate(v) => {
            let pa = Ram::alloc_pages(&mut r.ram, 1).unwrap_or(0);
            let a = [pick(&seen.vms, v), 0x1_4000_0000, 0, pa, 1, 0];
            if let Some(h) = call(r, HostCall::VcpuCreate, a) {
                seen.vcpus.push(h);
            }
        }
        Op::Fault(c, page, access, c0) => {
            let access = [Access::Read, Access::Write, Access::Exec][usize::from(access)];
            let exit = GuestExit::Stage2Abort {
                ipa: GPA + page * p,
                access,
                mmio: None,
            };
            // c0 is whatever the host says: an abort to inject, or nothing, or junk.
            run_exit(r, pick(&seen.vcpus, c), c0, None, exit);
        }
        Op::Hvc(c, f, page, n, x3) => {
            let func = [MEM_SHARE, MEM_UNSHARE, MEM_RELINQUISH][usize::from(f)];
            let x = [func, GPA + page * p, n, x3];
            run_exit(
                r,
                pick(&seen.vcpus, c),
                0,
                Some(x),
                GuestExit::Hvc { imm: 0 },
            );
        }
        Op::GuestConvert(c) => {
            call(
                r,
                HostCall::GuestConvert,
                [pick(&seen.vcpus, c), 0, 0, 0, 0, 0],
            );
        }
        Op::Convert(g, off, n, to, mode) => {
            let mode = if mode == 2 {
                abi::host::CONVERT_MODE_DEFAULT
            } else {
                mode
            };
            let a = [pick(&seen.gmems, g), off * p, n * p, to, mode, 0];
            call(r, HostCall::Convert, a);
        }
        Op::Punch(g, off, n) => {
            call(
                r,
                HostCall::PunchHole,
                [pick(&seen.gmems, g), off * p, n * p, 0, 0, 0],
            );
        }
        Op::Pin(g, off, pin) => {
            let c = if pin {
                HostCall::HostPin
            } else {
                HostCall::HostUnpin
            };
            call(r, c, [pick(&seen.gmems, g), off * p, 0, 0, 0, 0]);
        }
        Op::HostMap(g, off) => {
            call(
                r,
                HostCall::HostMapGmem,
                [pick(&seen.gmems, g), off * p, 0, 0, 0, 0],
            );
        }
        Op::Junk(c, a) => {
            // Any call but a run, with arbitrary arguments.
            if let Some(c) = HostCall::from_id(abi::host::HOST_CALL_BASE + u64::from(c)) {
                if c != HostCall::VcpuRun {
                    let _ = r.call(c, [a[0], a[1], a[2], 0, 0, 0]);
                }
            }
        }
    }
}

/// Every page of RAM has exactly one owner in the ownership table.
fn every_page_owned(r: &Rig) -> Result<(), String> {
    let pages = r.hyp.config.ram_size / PAGE_SIZE;
    for i in 0..pages {
        let pa = r.hyp.config.ram_base + i * PAGE_SIZE;
        if r.hyp.owners.owner(pa).is_none() {
            return Err(format!("page 0x{pa:x} has no owner"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 64 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn host_and_guest_storms_keep_every_invariant(ops in prop::collection::vec(op(), 1..120)) {
        let mut r = rig();
        let host = r.host_pages(HOST_PAGES as usize);
        let mut seen = Seen::default();
        // Two VMs ready to run (a pkvm and a coco one, each with a gmem bound at GPA, a pool
        // and a vCPU), so that the storm reaches faults, conversions and teardown with data.
        for t in [VmType::Pkvm, VmType::Coco] {
            let (vm, g, vcpu) = r.configured(t, SEED_PAGES, 48);
            seen.vms.push(vm);
            seen.gmems.push(g);
            seen.vcpus.push(vcpu);
        }
        for (n, op) in ops.iter().enumerate() {
            step(&mut r, &mut seen, host, op);
            let bad = r.hyp.check_invariants();
            prop_assert!(bad.is_empty(), "step {} {:?}: {:?}", n, op, bad);
            let view = r.hyp.check_guest_views();
            prop_assert!(view.is_empty(), "step {} {:?}: {:?}", n, op, view);
            let memory = r.hyp.check_memory();
            prop_assert!(memory.is_empty(), "step {} {:?}: {:?}", n, op, memory);
            if let Err(e) = every_page_owned(&r) {
                return Err(TestCaseError::fail(format!("step {n} {op:?}: {e}")));
            }
        }
    }
}
