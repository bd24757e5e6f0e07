//! A storm on the host: random sequences of host calls and guest exits, valid, invalid and
//! adversarial (stale and foreign handles, overlapping ranges, pages donated twice, lies in
//! completions, dry pools, pins under conversions, junk calls), driven through the portable
//! calls. After every step the invariant checker (ownership against every stage-2, and what each
//! guest was told) must be clean, and the reference model (`model.rs`) must agree with what the
//! implementation answered and exposes, with every page of RAM accounted for.
//!
//! Each storm is drawn from one seed: `PROPTEST_CASES` seeds (64 by default) from a random first
//! one, or the one `STORM_SEED` names. A failure prints its seed and the shrunk case; the same
//! seed replays it (with the same code). The fuzz target (`fuzz/`) decodes the same op
//! sequences from bytes ([`decode`]).

use proptest::prelude::*;

use super::model::{Answer, Before, Model};
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
pub(crate) enum Op {
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
    /// The host stores a word in a gmem page through its mmap view.
    HostWrite(usize, u64, u64),
    /// A guest (of a seeded vCPU) stores a word at `GPA + page`: its store faults, then writes
    /// the page if the fault mapped it.
    GuestWrite(usize, u64, u64),
    /// A cooperative guest call on a seeded vCPU: MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH
    /// with valid zero fields, the host carrying the request out (or not), the guest run again
    /// to hear its answer.
    Cooperate(usize, u8, u64, u64, bool),
    /// The VM's pool fails from its n-th allocation on (`None`: no more), as when a host test
    /// makes its memcache run dry (`Pool::fail_after`).
    Starve(usize, Option<u64>),
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
        // The same on the seeded VMs' files, in range.
        (0usize..2, 0..SEED_PAGES, 1u64..4, 0u64..3, 0u64..3)
            .prop_map(|(g, o, n, t, m)| Op::Convert(g, o, n, t, m)),
        (i.clone(), 0u64..70, 0u64..70).prop_map(|(g, o, n)| Op::Punch(g, o, n)),
        (i.clone(), 0u64..70, any::<bool>()).prop_map(|(g, o, p)| Op::Pin(g, o, p)),
        (i.clone(), 0u64..70).prop_map(|(g, o)| Op::HostMap(g, o)),
        (i.clone(), 0u64..70, 1u64..1000).prop_map(|(g, o, v)| Op::HostWrite(g, o, v)),
        (0usize..2, 0..SEED_PAGES + 2, 1u64..1000).prop_map(|(c, o, v)| Op::GuestWrite(c, o, v)),
        (0usize..2, 0u8..3, 0..SEED_PAGES + 2, 0u64..6, any::<bool>())
            .prop_map(|(c, f, p, n, h)| Op::Cooperate(c, f, p, n, h)),
        (0usize..2, 0u8..3, 0..SEED_PAGES + 2, 0u64..6, any::<bool>())
            .prop_map(|(c, f, p, n, h)| Op::Cooperate(c, f, p, n, h)),
        (i.clone(), 0u64..10).prop_map(|(v, n)| Op::Starve(v, (n < 8).then_some(n))),
        (0u8..40, any::<[u64; 3]>()).prop_map(|(c, a)| Op::Junk(c, a)),
    ]
}

/// Handles the storm has seen (live or not: stale ones are part of the attack).
#[derive(Default)]
pub(crate) struct Seen {
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

/// What one run of a vCPU showed: the guest's `x0, x1` after the completion of its last exit
/// (or why the run was refused), the step, and `x0, x1` after the exit was handled.
struct RunOut {
    begun: Result<(u64, u64), Errno>,
    step: Option<Step>,
    after: (u64, u64),
}

/// One exit of a vCPU, if it can run now (a destroyed VM's vCPU cannot).
fn run_exit(r: &mut Rig, vcpu: u64, c0: u64, x: Option<[u64; 4]>, exit: GuestExit) -> RunOut {
    let mut t = match r.hyp.begin_run(vcpu, c0) {
        Ok(t) => t,
        Err(e) => {
            return RunOut {
                begun: Err(e),
                step: None,
                after: (0, 0),
            }
        }
    };
    let begun = Ok((t.ctx.x[0], t.ctx.x[1]));
    if let Some(x) = x {
        for (i, v) in x.into_iter().enumerate() {
            t.ctx.set_reg(i, v);
        }
    }
    let step = r.hyp.handle_exit(t.vm, &mut t.ctx, exit);
    let after = (t.ctx.x[0], t.ctx.x[1]);
    let (e, p) = match step {
        Step::Exit(e, p) => (e, p),
        Step::Resume => (
            (abi::host::ExitReason::Interrupt, [0; 5]),
            crate::state::Pending::None,
        ),
    };
    r.hyp.end_run(t, e, p);
    RunOut {
        begun,
        step: Some(step),
        after,
    }
}

/// The VM whose pool a call may draw on (named, or owning the gmem file or vCPU named), and
/// whether the call is charged to its heap.
fn drawn_vm(m: &Model, c: HostCall, a: [u64; 6]) -> Option<(u64, bool)> {
    let gmem_vm = || m.gmems.get(&a[0]).map(|g| g.vm);
    match c {
        HostCall::Donate | HostCall::PoolReclaim | HostCall::VcpuCreate => Some((a[0], false)),
        HostCall::MemslotCreate
        | HostCall::MemslotDelete
        | HostCall::SetMemoryAttributes
        | HostCall::HostMapUaddr
        | HostCall::MapHostShared
        | HostCall::ServeFault => Some((a[0], true)),
        HostCall::Convert
        | HostCall::PunchHole
        | HostCall::HostPin
        | HostCall::HostUnpin
        | HostCall::HostMapGmem => Some((gmem_vm()?, true)),
        HostCall::GuestConvert => Some((m.vcpus.get(&a[0])?.vm, true)),
        _ => None,
    }
}

/// What a call may draw on before it runs: its VM's pool (free pages) and heap reserve.
fn before(r: &mut Rig, m: &Model, c: HostCall, a: [u64; 6]) -> Before {
    let Some((vm, charged)) = drawn_vm(m, c, a) else {
        return Before::default();
    };
    let Some(s) = r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]).ok() else {
        return Before::default();
    };
    let reserve = r
        .hyp
        .vms
        .get(&(vm as u32))
        .map_or(0, |v| v.heap.reserve() as u64);
    Before {
        vm: Some(vm),
        free: Some(s[0] + 512 * s[1]),
        reserve,
        charged,
        twin: None,
    }
}

/// A handle no VM, gmem file or vCPU of a storm ever has.
const NOBODY: u64 = 0x7fff_fff7;

/// A host call, told to the model with its answer.
fn mcall(r: &mut Rig, m: &mut Model, c: HostCall, a: [u64; 6]) -> Result<Answer, String> {
    let mut b = before(r, m, c, a);
    if c != HostCall::VmDestroy && m.names_dying(c, a) {
        // The same call on a handle that names nothing: the answer a dying VM's must match.
        b.twin = Some(r.call(c, [NOBODY, a[1], a[2], a[3], a[4], a[5]]));
    }
    let ans = r.call(c, a);
    m.host_call(r, c, a, &ans, b)?;
    Ok(ans)
}

/// `n` fresh pages for the host to donate with a call (0 if the fake RAM is full), known to
/// the model as the host's.
fn fresh(r: &mut Rig, m: &mut Model, n: u64) -> u64 {
    match Ram::alloc_pages(&mut r.ram, n as usize) {
        Some(pa) => {
            m.give_host(pa, n);
            pa
        }
        None => 0,
    }
}

fn step(r: &mut Rig, m: &mut Model, seen: &mut Seen, host: u64, op: &Op) -> Result<(), String> {
    let p = PAGE_SIZE;
    m.begin_op();
    let call = |r: &mut Rig, m: &mut Model, c: HostCall, a: [u64; 6]| {
        mcall(r, m, c, a).map(|x| x.ok().map(|x| x[0]))
    };
    match *op {
        Op::VmCreate(t) => {
            let n = abi::host::VM_CREATE_PAGES;
            let pa = fresh(r, m, n);
            if let Some(h) = call(r, m, HostCall::VmCreate, [t, pa, n, 0, 0, 0])? {
                seen.vms.push(h);
            }
        }
        Op::VmDestroy(v) => {
            call(
                r,
                m,
                HostCall::VmDestroy,
                [pick(&seen.vms, v), 0, 0, 0, 0, 0],
            )?;
        }
        Op::GmemCreate(v, pages, flags) => {
            let a = [pick(&seen.vms, v), pages * p, flags, 0, 0, 0];
            if let Some(h) = call(r, m, HostCall::GmemCreate, a)? {
                seen.gmems.push(h);
            }
        }
        Op::GmemDestroy(g) => {
            let a = [pick(&seen.gmems, g), 0, 0, 0, 0, 0];
            call(r, m, HostCall::GmemDestroy, a)?;
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
            call(r, m, HostCall::MemslotCreate, a)?;
        }
        Op::SlotDelete(v, s) => {
            let a = [pick(&seen.vms, v), s, 0, 0, 0, 0];
            call(r, m, HostCall::MemslotDelete, a)?;
        }
        Op::Donate(v, off, n) => {
            // Pages of the host's region, possibly donated already (the fake RAM's own
            // allocator knows only that region as the host's; the junk calls name others).
            let n = n.min(HOST_PAGES - off);
            let a = [pick(&seen.vms, v), host + off * p, n, 0, 0, 0];
            call(r, m, HostCall::Donate, a)?;
        }
        Op::Reclaim(v, kind) => {
            let a = [pick(&seen.vms, v), kind, 0, 0, 0, 0];
            call(r, m, HostCall::PoolReclaim, a)?;
        }
        Op::VcpuCreate(v) => {
            let pa = fresh(r, m, 1);
            let a = [pick(&seen.vms, v), 0x1_4000_0000, 0, pa, 1, 0];
            if let Some(h) = call(r, m, HostCall::VcpuCreate, a)? {
                seen.vcpus.push(h);
            }
        }
        Op::Fault(c, page, access, c0) => {
            let access = [Access::Read, Access::Write, Access::Exec][usize::from(access)];
            let ipa = GPA + page * p;
            let exit = GuestExit::Stage2Abort {
                ipa,
                access,
                mmio: None,
            };
            let vcpu = pick(&seen.vcpus, c);
            if let Some(vm) = m.vcpus.get(&vcpu).map(|c| c.vm) {
                m.allow_touch(vm, ipa);
            }
            // c0 is whatever the host says: an abort to inject, or nothing, or junk.
            let out = run_exit(r, vcpu, c0, None, exit);
            m.run_begun(vcpu, out.begun)?;
        }
        Op::Hvc(c, f, page, n, x3) => {
            let vcpu = pick(&seen.vcpus, c);
            guest_call(r, m, vcpu, f, GPA + page * p, n, x3)?;
        }
        Op::Cooperate(c, f, page, n, host_converts) => {
            let vcpu = pick(&seen.vcpus, c);
            let n = if f == 2 { 0 } else { n };
            if f == 2 {
                // A page it relinquishes is one it used.
                if let Some(vm) = m.vcpus.get(&vcpu).map(|c| c.vm) {
                    m.allow_touch(vm, GPA + page * p);
                    let exit = GuestExit::Stage2Abort {
                        ipa: GPA + page * p,
                        access: Access::Write,
                        mmio: None,
                    };
                    let out = run_exit(r, vcpu, 0, None, exit);
                    m.run_begun(vcpu, out.begun)?;
                    check_all(r, m)?;
                    m.begin_op();
                }
            }
            guest_call(r, m, vcpu, f, GPA + page * p, n, 0)?;
            if host_converts {
                call(r, m, HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0])?;
                check_all(r, m)?;
                m.begin_op();
            }
            // Run again: the completion tells the guest; an interrupt brings it back.
            let out = run_exit(r, vcpu, 0, None, GuestExit::Interrupt);
            m.run_begun(vcpu, out.begun)?;
        }
        Op::GuestConvert(c) => {
            let a = [pick(&seen.vcpus, c), 0, 0, 0, 0, 0];
            call(r, m, HostCall::GuestConvert, a)?;
        }
        Op::Convert(g, off, n, to, mode) => {
            let mode = if mode == 2 {
                abi::host::CONVERT_MODE_DEFAULT
            } else {
                mode
            };
            let a = [pick(&seen.gmems, g), off * p, n * p, to, mode, 0];
            call(r, m, HostCall::Convert, a)?;
        }
        Op::Punch(g, off, n) => {
            let a = [pick(&seen.gmems, g), off * p, n * p, 0, 0, 0];
            call(r, m, HostCall::PunchHole, a)?;
        }
        Op::Pin(g, off, pin) => {
            let c = if pin {
                HostCall::HostPin
            } else {
                HostCall::HostUnpin
            };
            call(r, m, c, [pick(&seen.gmems, g), off * p, 0, 0, 0, 0])?;
        }
        Op::HostMap(g, off) => {
            let a = [pick(&seen.gmems, g), off * p, 0, 0, 0, 0];
            call(r, m, HostCall::HostMapGmem, a)?;
        }
        Op::HostWrite(g, off, val) => {
            let g = pick(&seen.gmems, g);
            if let Some(pa) = call(r, m, HostCall::HostMapGmem, [g, off * p, 0, 0, 0, 0])? {
                // The page the fault brought in is learnt first, then written.
                m.check(r)?;
                m.host_write(r, g, off, pa, val)?;
            }
        }
        Op::GuestWrite(c, page, val) => {
            let vcpu = pick(&seen.vcpus, c);
            let ipa = GPA + page * p;
            if let Some(vm) = m.vcpus.get(&vcpu).map(|c| c.vm) {
                m.allow_touch(vm, ipa);
                let exit = GuestExit::Stage2Abort {
                    ipa,
                    access: Access::Write,
                    mmio: None,
                };
                let out = run_exit(r, vcpu, 0, None, exit);
                m.run_begun(vcpu, out.begun)?;
                check_all(r, m)?;
                m.guest_write(r, vm, ipa, val);
            }
        }
        Op::Starve(v, n) => {
            let vm = pick(&seen.vms, v);
            if let Some(x) = r.hyp.vms.get_mut(&(vm as u32)) {
                x.stage2.mm_mut().fail_after(n);
                m.starve(vm, n.is_some());
            }
        }
        Op::Junk(c, a) => {
            // Any call but a run, with arbitrary arguments; one the model does not follow only
            // where it must be refused.
            if let Some(c) = HostCall::from_id(abi::host::HOST_CALL_BASE + u64::from(c)) {
                let followed = !matches!(
                    c,
                    HostCall::SetMemoryAttributes
                        | HostCall::HostMapUaddr
                        | HostCall::MapHostShared
                        | HostCall::VmSetFaultMode
                        | HostCall::ServeFault
                        | HostCall::VmOpenPmu
                );
                // `PageCensus` only reads (and answers whatever the arguments).
                let reads = c == HostCall::PageCensus;
                if c != HostCall::VcpuRun && !reads && (followed || m.may_issue_unmodelled(a[0])) {
                    let _ = mcall(r, m, c, [a[0], a[1], a[2], 0, 0, 0])?;
                }
            }
        }
    }
    Ok(())
}

/// A guest call (`f`: MEM_SHARE, MEM_UNSHARE, MEM_RELINQUISH) of `vcpu`, told to the model.
fn guest_call(
    r: &mut Rig,
    m: &mut Model,
    vcpu: u64,
    f: u8,
    ipa: u64,
    n: u64,
    x3: u64,
) -> Result<(), String> {
    let func = [MEM_SHARE, MEM_UNSHARE, MEM_RELINQUISH][usize::from(f)];
    let x = [func, ipa, n, x3];
    if let Some(vm) = m.vcpus.get(&vcpu).map(|c| c.vm) {
        if func != MEM_RELINQUISH {
            m.allow_share_call(vm, x[1], n);
        }
    }
    let out = run_exit(r, vcpu, 0, Some(x), GuestExit::Hvc { imm: 0 });
    m.run_begun(vcpu, out.begun)?;
    match out.step {
        None => Ok(()),
        // The hyp wants pages first (pool and heap reserve short): nothing changed, which
        // the checks after the step hold it to; the guest makes the call again.
        Some(Step::Exit((abi::host::ExitReason::NeedPages, _), _)) => Ok(()),
        Some(_) if func == MEM_RELINQUISH => m.relinquish(r, vcpu, x, out.after),
        Some(Step::Exit((abi::host::ExitReason::Hypercall, d), _)) => {
            m.share_call(vcpu, x, func == MEM_SHARE, Ok((d[1], d[2])))
        }
        Some(Step::Exit(e, _)) => Err(format!("share call exit {e:?}")),
        Some(Step::Resume) => m.share_call(vcpu, x, func == MEM_SHARE, Err(out.after)),
    }
}

/// Pages donated to each seeded VM's pool.
const SEED_POOL: u64 = 48;

/// A VM ready to run, made through the model: a gmem bound at [`GPA`], a pool, one vCPU.
fn seed(r: &mut Rig, m: &mut Model, seen: &mut Seen, t: VmType, pool: u64) -> Result<(), String> {
    let ok = |r: &mut Rig, m: &mut Model, c: HostCall, a: [u64; 6]| match mcall(r, m, c, a)? {
        Ok(x) => Ok(x[0]),
        Err(e) => Err(format!("seed {c:?}: {e:?}")),
    };
    let n = abi::host::VM_CREATE_PAGES;
    let pa = fresh(r, m, n);
    let vm = ok(r, m, HostCall::VmCreate, [t as u64, pa, n, 0, 0, 0])?;
    // The pkvm one starts shared, so its guest's first touches take pages (Trust rule 9).
    let mut flags = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY;
    if t == VmType::Pkvm {
        flags |= GmemFlags::INIT_SHARED;
    }
    let a = [vm, SEED_PAGES * PAGE_SIZE, flags.bits(), 0, 0, 0];
    let g = ok(r, m, HostCall::GmemCreate, a)?;
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    let a = [vm, GPA, SEED_PAGES * PAGE_SIZE, g, 0, both.bits()];
    ok(r, m, HostCall::MemslotCreate, a)?;
    ok(r, m, HostCall::Donate, [vm, pool, SEED_POOL, 0, 0, 0])?;
    let pa = fresh(r, m, 1);
    let vcpu = ok(r, m, HostCall::VcpuCreate, [vm, 0x1_4000_0000, 0, pa, 1, 0])?;
    seen.vms.push(vm);
    seen.gmems.push(g);
    seen.vcpus.push(vcpu);
    Ok(())
}

/// The checks after every step: the invariant checker, the guests' view, the model and the
/// page accounting.
fn check_all(r: &mut Rig, m: &mut Model) -> Result<(), String> {
    let bad = r.hyp.check_invariants();
    if !bad.is_empty() {
        return Err(format!("invariants: {bad:?}"));
    }
    let view = r.hyp.check_guest_views();
    if !view.is_empty() {
        return Err(format!("guest views: {view:?}"));
    }
    let memory = r.hyp.check_memory();
    if !memory.is_empty() {
        return Err(format!("memory: {memory:?}"));
    }
    m.check(r)
}

/// One storm: two seeded VMs (a pkvm and a coco one), then `ops`, every check after each.
pub(crate) fn run_ops(ops: &[Op]) -> Result<(), String> {
    let mut r = rig();
    let mut m = Model::default();
    let total = HOST_PAGES + 2 * SEED_POOL;
    let host = r.host_pages(total as usize);
    m.give_host(host, total);
    let mut seen = Seen::default();
    for (k, t) in [VmType::Pkvm, VmType::Coco].into_iter().enumerate() {
        let pool = host + (HOST_PAGES + k as u64 * SEED_POOL) * PAGE_SIZE;
        seed(&mut r, &mut m, &mut seen, t, pool)?;
        check_all(&mut r, &mut m).map_err(|e| format!("seeding: {e}"))?;
    }
    for (n, op) in ops.iter().enumerate() {
        step(&mut r, &mut m, &mut seen, host, op).map_err(|e| format!("step {n} {op:?}: {e}"))?;
        check_all(&mut r, &mut m).map_err(|e| format!("after step {n} {op:?}: {e}"))?;
    }
    // And every VM left is torn down, step by step, every check after each: all its pages
    // come back (nothing of a VM outlives it, not even its heap).
    let left: Vec<u64> = m.vms.keys().copied().collect();
    for vm in left {
        for k in 0.. {
            let a = [vm, 0, 0, 0, 0, 0];
            let ans = mcall(&mut r, &mut m, HostCall::VmDestroy, a)
                .map_err(|e| format!("teardown of VM {vm}, step {k}: {e}"))?;
            check_all(&mut r, &mut m)
                .map_err(|e| format!("after teardown of VM {vm}, step {k}: {e}"))?;
            if ans.is_ok_and(|x| x[1] == 0) || k > 1_000 {
                break;
            }
        }
    }
    if !m.vms.is_empty() || r.hyp.leaked_heaps != 0 {
        return Err(format!(
            "after teardown: {} VMs left, {} heaps outlived their VMs",
            m.vms.len(),
            r.hyp.leaked_heaps
        ));
    }
    Ok(())
}

/// The same op sequences from bytes, for the fuzz target (`fuzz/`): each op is a tag byte and
/// its fields, drawn into the ranges of [`op`]; at most 120 ops.
pub(crate) fn decode(bytes: &[u8]) -> Vec<Op> {
    let at = core::cell::Cell::new(0usize);
    let next = |n: u64| -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            let b = bytes.get(at.get()).copied().unwrap_or(0);
            at.set(at.get() + 1);
            v = v << 8 | u64::from(b);
            if n <= 1 << 8 || v >= n {
                break;
            }
        }
        if n == 0 {
            v
        } else {
            v % n
        }
    };
    let mut out = Vec::new();
    while at.get() < bytes.len() && out.len() < 120 {
        let i = |x: u64| x as usize;
        let op = match next(25) {
            0 => Op::VmCreate(next(5)),
            1 => Op::VmDestroy(i(next(6))),
            2 => Op::GmemCreate(i(next(6)), next(70), next(16)),
            3 => Op::GmemDestroy(i(next(6))),
            4 => Op::SlotCreate(
                i(next(6)),
                i(next(6)),
                next(GPA_SLOTS),
                next(70),
                next(70),
                next(8),
            ),
            5 => Op::SlotDelete(i(next(6)), next(6)),
            6 => Op::Donate(i(next(6)), next(HOST_PAGES), next(40)),
            7 => Op::Reclaim(i(next(6)), next(3)),
            8 => Op::VcpuCreate(i(next(6))),
            9 => Op::Fault(i(next(6)), next(SEED_PAGES + 8), next(3) as u8, next(3)),
            10 => Op::Fault(
                i(next(6)),
                next(GPA_SLOTS * WINDOW + 4),
                next(3) as u8,
                next(3),
            ),
            11 => Op::Hvc(
                i(next(6)),
                next(3) as u8,
                next(SEED_PAGES + 8),
                next(40),
                next(2),
            ),
            12 => Op::Hvc(
                i(next(6)),
                next(3) as u8,
                next(GPA_SLOTS * WINDOW + 4),
                next(300),
                next(2),
            ),
            13 => Op::GuestConvert(i(next(6))),
            14 => Op::Convert(i(next(6)), next(70), next(70), next(3), next(3)),
            15 => Op::Convert(i(next(2)), next(SEED_PAGES), 1 + next(3), next(3), next(3)),
            16 => Op::Punch(i(next(6)), next(70), next(70)),
            17 => Op::Pin(i(next(6)), next(70), next(2) == 1),
            18 => Op::HostMap(i(next(6)), next(70)),
            19 => Op::HostWrite(i(next(6)), next(70), 1 + next(999)),
            20 => Op::GuestWrite(i(next(2)), next(SEED_PAGES + 2), 1 + next(999)),
            21 | 22 => Op::Cooperate(
                i(next(2)),
                next(3) as u8,
                next(SEED_PAGES + 2),
                next(6),
                next(2) == 1,
            ),
            23 => {
                let n = next(10);
                Op::Starve(i(next(6)), (n < 8).then_some(n))
            }
            _ => Op::Junk(next(40) as u8, [next(0), next(0), next(0)]),
        };
        out.push(op);
    }
    out
}

pub(crate) fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..120)
}

/// Runs the storm of one seed: the case proptest draws from it, shrunk on failure. The same
/// seed draws the same case and shrinks it the same way.
fn storm_seed(seed: u64) -> Result<(), String> {
    use proptest::test_runner::{RngAlgorithm, TestError, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let config = ProptestConfig {
        cases: 1,
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    match runner.run(&ops(), |ops| run_ops(&ops).map_err(TestCaseError::fail)) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(why, ops)) => {
            Err(format!("{why}\nminimal case ({} ops): {ops:?}", ops.len()))
        }
        Err(TestError::Abort(why)) => Err(format!("aborted: {why}")),
    }
}

/// Storms of `PROPTEST_CASES` seeds (64 by default, 2 under Miri) from a random first seed, or
/// the one storm of `STORM_SEED`. A failure names its seed.
#[test]
fn host_and_guest_storms_keep_every_invariant() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let (first, count) = match env("STORM_SEED") {
        Some(s) => (s, 1),
        None => {
            use std::hash::BuildHasher;
            let first = std::collections::hash_map::RandomState::new().hash_one(0u64);
            (
                first,
                env("PROPTEST_CASES").unwrap_or(if cfg!(miri) { 2 } else { 64 }),
            )
        }
    };
    for i in 0..count {
        let seed = first.wrapping_add(i);
        if let Err(e) = storm_seed(seed) {
            panic!(
                "storm failed, seed {seed}: {e}\nreplay: STORM_SEED={seed} cargo test -p hyp-calls \
                 --features introspection --lib -- tests::storm"
            );
        }
    }
}

/// The fuzz target's decoding (`fuzz/`, `make fuzz`) runs the same storm: a few fixed inputs
/// here, so that it keeps building and decoding into valid cases.
#[test]
fn decoded_storms_keep_every_invariant() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for len in [0usize, 1, 7, 64, 400, 1500] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let ops = decode(&bytes);
        if let Err(e) = run_ops(&ops) {
            panic!("decoded storm of {len} bytes: {e}\ncase: {ops:?}");
        }
    }
}
