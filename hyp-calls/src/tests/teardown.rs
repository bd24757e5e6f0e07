//! Trust rule 8 at scale: a VM with a lot of memory is torn down in bounded steps, and long
//! operations (punch, file destruction) keep every list they build inside a page of the VM's
//! heap (no overdraft: the checker would say so).

use super::*;
use abi::host::TEARDOWN_STEP_PAGES;
use hyp_core::GmemHandle;
use hyp_mem::ownership::{Component, PageState};

const P: u64 = PAGE_SIZE;
/// Pages of the big VM's gmem file, every one touched (more than two teardown steps).
const BIG: u64 = 1500;

/// A VM whose gmem file of `BIG` pages is all faulted in.
/// Pages of the fake RAM the host owns.
fn host_owned(r: &Rig) -> u64 {
    let end = r.hyp.owners.ram_end();
    (FAKE_BASE..end)
        .step_by(P as usize)
        .filter(|&pa| r.hyp.owners.state(pa, Component::Host) == Ok(PageState::Owned))
        .count() as u64
}

fn big_vm(r: &mut Rig, t: VmType) -> (u64, u64, u64) {
    let (vm, g, vcpu) = r.configured(t, BIG, BIG as usize + 64);
    for i in 0..BIG {
        let (step, _) = exits::touch(r, vcpu, GPA + i * P);
        assert!(matches!(step, Step::Resume), "page {i}: {step:?}");
    }
    assert_eq!(
        r.hyp
            .world
            .gmem(GmemHandle(g as u32))
            .unwrap()
            .allocated_pages() as u64,
        BIG
    );
    (vm, g, vcpu)
}

#[test]
fn a_big_vm_goes_in_bounded_steps_and_is_unreachable_meanwhile() {
    let mut r = rig_of(4 * RAM_PAGES);
    let (vm, g, vcpu) = big_vm(&mut r, VmType::Pkvm);
    let host_before = host_owned(&r);
    let donated = BIG + 64 + abi::host::VM_CREATE_PAGES + abi::host::VCPU_CREATE_PAGES;
    // The first step: the VM is dying, its stage-2 maps nothing, nothing else reaches it.
    let first = r.ok(HostCall::VmDestroy, [vm, 0, 0, 0, 0, 0]);
    assert_eq!(first, 0, "the first steps free into the pool");
    assert!(r.hyp.vms[&(vm as u32)].stage2.walk(GPA).is_none());
    r.err(HostCall::Donate, [vm, FAKE_BASE, 1, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::PunchHole, [g, 0, P, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::HostMapGmem, [g, 0, 0, 0, 0, 0], Errno::ENOENT);
    assert_eq!(r.hyp.begin_run(vcpu, 0).err(), Some(Errno::ENOENT));
    let pa = r.host_pages(1);
    r.err(
        HostCall::GmemCreate,
        [vm, 0x1000, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::VcpuCreate,
        [vm, 0x1000, 0, pa, 1, 0],
        Errno::ENOENT,
    );
    assert_eq!(r.invariants(), 0);
    // Every further step does at most a step's work; all of them give every page back.
    let mut steps = 1;
    let mut returned = 0;
    loop {
        let x = r.call(HostCall::VmDestroy, [vm, 0, 0, 0, 0, 0]).unwrap();
        assert!(
            x[0] <= TEARDOWN_STEP_PAGES + 511,
            "step {steps}: {} pages",
            x[0]
        );
        returned += x[0];
        steps += 1;
        assert_eq!(r.invariants(), 0, "after step {steps}");
        if x[1] == 0 {
            break;
        }
    }
    assert!(steps >= 4, "{steps} steps for {BIG} pages");
    assert_eq!(returned, donated);
    r.err(HostCall::VmDestroy, [vm, 0, 0, 0, 0, 0], Errno::ENOENT);
    assert_eq!(host_owned(&r), host_before + donated);
    assert_eq!(r.hyp.leaked_heaps, 0);
}

#[test]
fn a_big_punch_and_a_big_file_destruction_keep_within_the_heap() {
    let mut r = rig_of(4 * RAM_PAGES);
    let (vm, g, _) = big_vm(&mut r, VmType::Plain);
    r.ok(HostCall::PunchHole, [g, 0, (BIG - 100) * P, 0, 0, 0]);
    assert_eq!(r.invariants(), 0);
    assert_eq!(
        r.hyp
            .world
            .gmem(GmemHandle(g as u32))
            .unwrap()
            .allocated_pages(),
        100
    );
    // The file goes once no memslot binds it; its pages back to the pool, zeroed.
    r.ok(HostCall::MemslotDelete, [vm, 0, 0, 0, 0, 0]);
    let free_before = r.hyp.vms[&(vm as u32)].stage2.mm().free_pages();
    r.ok(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0]);
    assert!(r.hyp.vms[&(vm as u32)].stage2.mm().free_pages() >= free_before + 100);
    assert_eq!(r.invariants(), 0);
    r.destroy(vm);
    assert_eq!(r.invariants(), 0);
}
