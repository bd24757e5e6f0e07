//! Allocation failure at every site (Trust rule 8): a scripted sequence of host calls and guest
//! exits runs once for every n, with the VM's memcache (its pool) failing from its n-th
//! allocation on. The step where it first fails must give the documented error (`ENOMEM` for a
//! host call, a `NeedPages` exit for a guest fault or call) and change nothing (the hyp's whole
//! state compared before and after); once the host tops up, the same step succeeds, the script
//! goes on, and at the end every page donated comes back and every check is clean.

use super::*;
use abi::guest::{MEM_SHARE, MMIO_GUARD_ENROLL, MMIO_GUARD_MAP, SMCCC_SUCCESS};
use abi::host::{ExitReason, CONVERT_MODE_DEFAULT};
use hyp_mem::ownership::{Component, PageState};

const P: u64 = PAGE_SIZE;

/// What one step came to.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Ok,
    /// Refused for memory: `ENOMEM`, or a `NeedPages` exit.
    Memory,
    Other(String),
}

#[derive(Default)]
struct Ids {
    vm: u64,
    g: u64,
    vcpu: u64,
}

fn host(r: &mut Rig, c: HostCall, a: [u64; 6]) -> Out {
    match r.call(c, a) {
        Ok(_) => Out::Ok,
        Err((Errno::ENOMEM, _)) => Out::Memory,
        Err(e) => Out::Other(format!("{c:?}: {e:?}")),
    }
}

fn fault(r: &mut Rig, vcpu: u64, ipa: u64) -> Out {
    match exits::touch(r, vcpu, ipa).0 {
        Step::Resume => Out::Ok,
        Step::Exit((ExitReason::NeedPages, _), _) => Out::Memory,
        s => Out::Other(format!("fault {ipa:#x}: {s:?}")),
    }
}

fn guest_call(r: &mut Rig, vcpu: u64, x: [u64; 4]) -> Out {
    let (setup, exit) = hvc(x);
    match r.exit(vcpu, 0, setup, exit) {
        (Step::Resume, c) if c.x[0] == SMCCC_SUCCESS => Out::Ok,
        (Step::Exit((ExitReason::NeedPages, _), _), _) => Out::Memory,
        // A MEM_SHARE of a coco VM goes to the host: carried out by GuestConvert.
        (Step::Exit((ExitReason::Hypercall, _), _), _) => {
            host(r, HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0])
        }
        (s, c) => Out::Other(format!("call {x:x?}: {s:?} x0 {:#x}", c.x[0])),
    }
}

type StepFn = Box<dyn Fn(&mut Rig, &mut Ids) -> Out>;

/// One step per call or exit (so that a refused one is compared with the state just before).
fn faults(pages: core::ops::Range<u64>) -> Vec<(String, StepFn)> {
    pages
        .map(|p| {
            let f: StepFn = Box::new(move |r: &mut Rig, i: &mut Ids| fault(r, i.vcpu, GPA + p * P));
            (format!("fault {p}"), f)
        })
        .collect()
}

/// The script: every kind of call that keeps something for the VM.
fn script() -> Vec<(String, StepFn)> {
    let mut steps = named(vec![
        ("gmem", |r, i| {
            let flags = (GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY).bits();
            match r.call(HostCall::GmemCreate, [i.vm, 64 * P, flags, 0, 0, 0]) {
                Ok(x) => {
                    i.g = x[0];
                    Out::Ok
                }
                Err(e) => Out::Other(format!("{e:?}")),
            }
        }),
        ("memslot", |r, i| {
            let f = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
            let packed = f.bits();
            host(
                r,
                HostCall::MemslotCreate,
                [i.vm, GPA, 64 * P, i.g, 0, packed],
            )
        }),
        ("vcpu", |r, i| {
            let a = r.vcpu_args(i.vm, 0x1_4000_0000, 0);
            match r.call(HostCall::VcpuCreate, a) {
                Ok(x) => {
                    i.vcpu = x[0];
                    Out::Ok
                }
                Err((Errno::ENOMEM, _)) => Out::Memory,
                Err(e) => Out::Other(format!("{e:?}")),
            }
        }),
        // The first run marks the VM started (a change of its own, before any fault).
        ("first run", |r, i| {
            let (setup, exit) = hvc([0x8000_0000, 0, 0, 0]);
            match r.exit(i.vcpu, 0, setup, exit).0 {
                Step::Resume => Out::Ok,
                s => Out::Other(format!("{s:?}")),
            }
        }),
    ]);
    steps.extend(faults(0..10));
    steps.extend(named(vec![
        ("convert to shared", |r, i| {
            host(
                r,
                HostCall::Convert,
                [i.g, 2 * P, 3 * P, 1, CONVERT_MODE_DEFAULT, 0],
            )
        }),
        ("convert back", |r, i| {
            host(
                r,
                HostCall::Convert,
                [i.g, 3 * P, P, 0, CONVERT_MODE_DEFAULT, 0],
            )
        }),
        ("guest share", |r, i| {
            guest_call(r, i.vcpu, [MEM_SHARE, GPA + 6 * P, 0, 0])
        }),
        ("pin", |r, i| {
            host(r, HostCall::HostPin, [i.g, 2 * P, 0, 0, 0, 0])
        }),
        ("host view", |r, i| {
            host(r, HostCall::HostMapGmem, [i.g, 2 * P, 0, 0, 0, 0])
        }),
        ("unpin", |r, i| {
            host(r, HostCall::HostUnpin, [i.g, 2 * P, 0, 0, 0, 0])
        }),
        ("punch", |r, i| {
            host(r, HostCall::PunchHole, [i.g, 8 * P, 2 * P, 0, 0, 0])
        }),
        ("fault after punch", |r, i| fault(r, i.vcpu, GPA + 8 * P)),
        ("attributes", |r, i| {
            host(
                r,
                HostCall::SetMemoryAttributes,
                [i.vm, GPA + 32 * P, 8 * P, 0, 0, 0],
            )
        }),
        ("guard enroll", |r, i| {
            guest_call(r, i.vcpu, [MMIO_GUARD_ENROLL, 0, 0, 0])
        }),
        ("guard map", |r, i| {
            guest_call(r, i.vcpu, [MMIO_GUARD_MAP, 0x900_0000, 0, 0])
        }),
    ]));
    steps.extend(faults(10..40));
    steps
}

type Plain = fn(&mut Rig, &mut Ids) -> Out;

fn named(v: Vec<(&'static str, Plain)>) -> Vec<(String, StepFn)> {
    v.into_iter()
        .map(|(n, f)| (n.to_string(), Box::new(f) as StepFn))
        .collect()
}

/// The hyp's whole state, as far as a refused call may not change it (a `NeedPages` exit
/// leaves its pending completion and exit count, which are not in here).
fn snapshot(r: &Rig) -> String {
    let mut s = format!("{:?}\n", r.hyp.world);
    for (id, v) in &r.hyp.vms {
        let h = v.heap.stats();
        let maps: Vec<_> = v
            .stage2
            .mappings()
            .map(|m| (m.ipa_base, m.pa_base, m.size))
            .collect();
        s += &format!(
            "vm {id}: pool {:?} heap {} {} {} {} guard {:?} vcpus {} maps {maps:x?}\n",
            v.stage2.mm().stats(),
            h.pages,
            h.reserve,
            h.objects,
            h.bytes,
            v.mmio_guard,
            v.vcpus_created,
        );
    }
    s += &format!("vcpus {:?}\n", r.hyp.vcpus.keys().collect::<Vec<_>>());
    let end = r.hyp.owners.ram_end();
    for pa in (FAKE_BASE..end).step_by(P as usize) {
        s += &format!("{:?}", r.hyp.owners.info(pa));
    }
    s
}

fn host_owned(r: &Rig) -> usize {
    let end = r.hyp.owners.ram_end();
    (FAKE_BASE..end)
        .step_by(P as usize)
        .filter(|&pa| r.hyp.owners.state(pa, Component::Host) == Ok(PageState::Owned))
        .count()
}

/// Runs the script with the pool failing from its `n`-th allocation: -> whether a failure
/// was injected (a step was refused for memory).
fn run_with_failure_at(n: Option<u64>) -> bool {
    let mut r = rig_of(2 * RAM_PAGES);
    let host_before = host_owned(&r);
    let mut ids = Ids {
        vm: r.vm(VmType::Coco),
        ..Ids::default()
    };
    r.donate(ids.vm, 64);
    r.hyp
        .vms
        .get_mut(&(ids.vm as u32))
        .unwrap()
        .stage2
        .mm_mut()
        .fail_after(n);
    let mut failed = false;
    for (name, step) in script() {
        let before = snapshot(&r);
        match step(&mut r, &mut ids) {
            Out::Ok => {}
            Out::Memory => {
                assert!(
                    n.is_some(),
                    "{name}: refused for memory with no failure injected"
                );
                assert!(!failed, "{name}: a second failure (n = {n:?})");
                failed = true;
                let after = snapshot(&r);
                assert!(
                    before == after,
                    "n = {n:?}, {name}: a refused step changed the state:\n{}",
                    first_difference(&before, &after)
                );
                // The host tops up (here: the failures end) and the step succeeds.
                let v = r.hyp.vms.get_mut(&(ids.vm as u32)).unwrap();
                v.stage2.mm_mut().fail_after(None);
                assert_eq!(step(&mut r, &mut ids), Out::Ok, "n = {n:?}, {name} again");
            }
            Out::Other(e) => panic!("n = {n:?}, {name}: {e}"),
        }
        assert_eq!(r.invariants(), 0, "n = {n:?}, after {name}");
    }
    let donated = r.destroy(ids.vm) as usize;
    assert!(donated > 64);
    assert_eq!(
        host_owned(&r),
        host_before,
        "n = {n:?}: a page was not given back"
    );
    assert_eq!(r.hyp.leaked_heaps, 0);
    failed
}

fn first_difference(a: &str, b: &str) -> String {
    for (x, y) in a.lines().zip(b.lines()) {
        if x != y {
            return format!("before: {x}\nafter:  {y}");
        }
    }
    "(one is longer)".into()
}

#[test]
fn every_allocation_failure_is_refused_whole_and_nothing_leaks() {
    // The script runs clean without failures.
    assert!(!run_with_failure_at(None));
    // Then with the memcache failing from its n-th allocation, for every n until the script
    // no longer reaches a failure.
    let mut n = 0;
    while run_with_failure_at(Some(n)) {
        n += 1;
        assert!(n < 10_000, "the script never stops failing");
    }
    assert!(n > 20, "only {n} allocation sites reached");
    std::println!("alloc_fail: the script's {n} allocations each failed once, refused whole");
}
