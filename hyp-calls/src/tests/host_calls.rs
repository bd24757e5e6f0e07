//! Every host call's validation: each refusal with its exact errno, and that a refused call
//! changes nothing (the invariant checker stays clean, a retry with good arguments works).

use super::*;
use abi::flags::ContentMode;
use abi::host::{ABI_VERSION, CONVERT_MODE_DEFAULT};
use hyp_mem::ownership::{Component, PageState};

const P: u64 = PAGE_SIZE;

#[test]
fn version_and_unknown_calls() {
    let mut r = rig();
    let v = r.call(HostCall::Version, [0; 6]).unwrap();
    assert_eq!(v[..3], [ABI_VERSION, FAKE_BASE, RAM_PAGES as u64 * P]);
    assert_eq!(
        r.hyp.host_call(0, [0; 6]),
        HostAnswer::Done(Err((Errno::ENOSYS, 0)))
    );
    assert_eq!(
        r.hyp.host_call(abi::host::HOST_CALL_BASE + 0xfff, [0; 6]),
        HostAnswer::Done(Err((Errno::ENOSYS, 0)))
    );
    // VcpuRun is handed back to the world switch, whatever its arguments.
    assert_eq!(
        r.hyp.host_call(HostCall::VcpuRun.id(), [7, 9, 0, 0, 0, 0]),
        HostAnswer::Run { vcpu: 7, c0: 9 }
    );
}

#[cfg(not(feature = "introspection"))]
#[test]
fn introspection_calls_are_enosys_without_the_feature() {
    let mut r = rig();
    for c in HostCall::INTROSPECTION {
        r.err(c, [1, 0, 0, 0, 0, 0], Errno::ENOSYS);
    }
}

#[test]
fn vm_create_and_destroy() {
    let mut r = rig();
    for t in [0u64, 4, u64::MAX] {
        r.err(HostCall::VmCreate, [t, 0, 0, 0, 0, 0], Errno::EINVAL);
    }
    let vm = r.vm(VmType::Pkvm);
    for bad in [vm + 1, 1 << 32, u64::MAX] {
        r.err(HostCall::VmDestroy, [bad, 0, 0, 0, 0, 0], Errno::ENOENT);
    }
    r.donate(vm, 8);
    // Teardown returns every donated page (those of VmCreate too), and they are the host's
    // again.
    assert_eq!(r.destroy(vm), 8 + abi::host::VM_CREATE_PAGES);
    r.err(HostCall::VmDestroy, [vm, 0, 0, 0, 0, 0], Errno::ENOENT);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_vm_whose_vcpu_runs_cannot_be_destroyed() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let t = r.hyp.begin_run(vcpu, 0).unwrap();
    r.err(HostCall::VmDestroy, [vm, 0, 0, 0, 0, 0], Errno::EBUSY);
    // The same vCPU twice at once: EBUSY.
    assert!(matches!(r.hyp.begin_run(vcpu, 0), Err(Errno::EBUSY)));
    r.hyp.end_run(
        t,
        (abi::host::ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    r.destroy(vm);
    assert!(matches!(r.hyp.begin_run(vcpu, 0), Err(Errno::ENOENT)));
    assert!(matches!(r.hyp.begin_run(1 << 40, 0), Err(Errno::ENOENT)));
}

#[test]
fn gmem_create_and_destroy() {
    let mut r = rig();
    let vm = r.vm(VmType::Coco);
    let t = GmemFlags::TRACK_SHAREABILITY.bits();
    r.err(HostCall::GmemCreate, [vm + 1, P, t, 0, 0, 0], Errno::ENOENT);
    for (size, flags) in [(0, t), (P + 1, t), ((1 << 48) + P, t), (P, 1 << 20)] {
        r.err(
            HostCall::GmemCreate,
            [vm, size, flags, 0, 0, 0],
            Errno::EINVAL,
        );
    }
    let g = r.gmem(vm, 4, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY);
    r.err(HostCall::GmemDestroy, [g + 1, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(
        HostCall::GmemDestroy,
        [u64::MAX, 0, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    // Bound by a memslot: EBUSY; pinned: EBUSY.
    let s = r
        .slot(
            vm,
            GPA,
            4,
            g,
            UserspaceAddr::None,
            MemslotFlags::DONT_CHECK_MISMATCHES,
        )
        .unwrap();
    r.err(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0], Errno::EBUSY);
    r.ok(HostCall::MemslotDelete, [vm, s, 0, 0, 0, 0]);
    r.donate(vm, 4);
    r.ok(HostCall::Convert, [g, 0, P, 1, CONVERT_MODE_DEFAULT, 0]);
    r.ok(HostCall::HostPin, [g, 0, 0, 0, 0, 0]);
    r.err(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0], Errno::EBUSY);
    r.ok(HostCall::HostUnpin, [g, 0, 0, 0, 0, 0]);
    r.ok(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0]);
    r.err(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0], Errno::ENOENT);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn memslot_create_and_delete() {
    let mut r = rig();
    let vm = r.vm(VmType::Pkvm);
    let g = r.gmem(vm, 16, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY);
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    let packed = both.bits();
    // Unknown VM, unknown userspace_addr kind, unknown flag bits, bad gmem handle.
    r.err(
        HostCall::MemslotCreate,
        [vm + 1, GPA, 16 * P, g, 0, packed],
        Errno::ENOENT,
    );
    r.err(
        HostCall::MemslotCreate,
        [vm, GPA, 16 * P, g, 0, packed | (3 << SLOT_UADDR_SHIFT)],
        Errno::EINVAL,
    );
    r.err(
        HostCall::MemslotCreate,
        [vm, GPA, 16 * P, g, 0, packed | 1 << 7],
        Errno::EINVAL,
    );
    r.err(
        HostCall::MemslotCreate,
        [vm, GPA, 16 * P, 1 << 33, 0, packed],
        Errno::ENOENT,
    );
    r.err(
        HostCall::MemslotCreate,
        [vm, GPA, 16 * P, g + 1, 0, packed],
        Errno::ENOENT,
    );
    let s = r.slot(vm, GPA, 16, g, UserspaceAddr::None, both).unwrap();
    r.err(
        HostCall::MemslotDelete,
        [vm, s + 1, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::MemslotDelete,
        [vm, 1 << 32, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::MemslotDelete,
        [vm + 1, s, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    // After the first run a pkvm VM's memslots are frozen.
    let vcpu = r.vcpu(vm, 0x1000, 0);
    let t = r.hyp.begin_run(vcpu, 0).unwrap();
    r.hyp.end_run(
        t,
        (abi::host::ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    r.err(HostCall::MemslotDelete, [vm, s, 0, 0, 0, 0], Errno::EPERM);
    let g2 = r.gmem(vm, 16, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY);
    assert_eq!(
        r.slot(vm, 0x9000_0000, 16, g2, UserspaceAddr::None, both),
        Err(Errno::EPERM)
    );
    // ... and so are its vCPUs.
    let a = r.vcpu_args(vm, 0x1000, 0);
    r.err(HostCall::VcpuCreate, a, Errno::EPERM);
}

#[test]
fn memory_attributes() {
    let mut r = rig();
    let vm = r.vm(VmType::Coco);
    r.err(
        HostCall::SetMemoryAttributes,
        [vm, GPA, P, 1 << 2, 0, 0],
        Errno::EINVAL,
    );
    r.err(
        HostCall::SetMemoryAttributes,
        [vm + 1, GPA, P, 1 << 3, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::SetMemoryAttributes,
        [vm, GPA + 1, P, 1 << 3, 0, 0],
        Errno::EINVAL,
    );
    r.ok(HostCall::SetMemoryAttributes, [vm, GPA, P, 1 << 3, 0, 0]);
}

#[test]
fn convert_and_punch() {
    let mut r = rig();
    let (_, g, _) = r.configured(VmType::Coco, 16, 32);
    let conv = |g, off, size, to, mode| [g, off, size, to, mode, 0];
    // Direction and mode are checked first; to-private with ZERO is EOPNOTSUPP before the handle.
    assert_eq!(
        r.call(HostCall::Convert, conv(g, 0, P, 2, 0))
            .map_err(|e| e.0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.call(HostCall::Convert, conv(g, 0, P, 0, 7))
            .map_err(|e| e.0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.call(
            HostCall::Convert,
            conv(g + 9, 0, P, 0, ContentMode::Zero as u64)
        )
        .map_err(|e| e.0),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        r.call(HostCall::Convert, conv(g + 9, 0, P, 0, 0))
            .map_err(|e| e.0),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        r.call(HostCall::Convert, conv(g, 1, P, 1, CONVERT_MODE_DEFAULT))
            .map_err(|e| e.0),
        Err(Errno::EINVAL)
    );
    // A coco page made shared by the host must be zeroed: an explicit preserve is EPERM.
    assert_eq!(
        r.call(
            HostCall::Convert,
            conv(g, 0, P, 1, ContentMode::Preserve as u64)
        )
        .map_err(|e| e.0),
        Err(Errno::EPERM)
    );
    r.ok(
        HostCall::Convert,
        conv(g, 0, 2 * P, 1, CONVERT_MODE_DEFAULT),
    );
    // A pinned page keeps the range shared: EAGAIN and the file offset of the first pin.
    r.ok(HostCall::HostPin, [g, P, 0, 0, 0, 0]);
    assert_eq!(
        r.call(HostCall::Convert, conv(g, 0, 2 * P, 0, 0)),
        Err((Errno::EAGAIN, P))
    );
    // Punch: EINVAL for a bad range, EBUSY over the pin, ENOENT for an unknown file.
    r.err(HostCall::PunchHole, [g, 0, 0, 0, 0, 0], Errno::EINVAL);
    r.err(HostCall::PunchHole, [g, 0, 17 * P, 0, 0, 0], Errno::EINVAL);
    r.err(HostCall::PunchHole, [g, 0, 2 * P, 0, 0, 0], Errno::EBUSY);
    r.err(HostCall::PunchHole, [g + 9, 0, P, 0, 0, 0], Errno::ENOENT);
    r.ok(HostCall::HostUnpin, [g, P, 0, 0, 0, 0]);
    r.ok(HostCall::PunchHole, [g, 0, 2 * P, 0, 0, 0]);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn pins_and_the_hosts_views() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Coco, 16, 32);
    // A private page: SIGBUS (EFAULT) for the mmap view and for a pin.
    r.err(HostCall::HostMapGmem, [g, 0, 0, 0, 0, 0], Errno::EFAULT);
    r.err(HostCall::HostPin, [g, 0, 0, 0, 0, 0], Errno::EFAULT);
    r.err(
        HostCall::HostMapGmem,
        [g, 16 * P, 0, 0, 0, 0],
        Errno::EFAULT,
    );
    r.err(HostCall::HostMapGmem, [g + 9, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::HostUnpin, [g, 0, 0, 0, 0, 0], Errno::EINVAL);
    r.err(HostCall::HostUnpin, [g, 16 * P, 0, 0, 0, 0], Errno::EINVAL);
    // Without MMAP there is no view at all.
    let g2 = r.gmem(vm, 4, GmemFlags::TRACK_SHAREABILITY);
    r.err(HostCall::HostMapGmem, [g2, 0, 0, 0, 0, 0], Errno::ENODEV);
    // A shared page: the view maps it and the host may reach it.
    r.ok(HostCall::Convert, [g, 0, P, 1, CONVERT_MODE_DEFAULT, 0]);
    let pa = r.ok(HostCall::HostMapGmem, [g, 0, 1, 0, 0, 0]);
    assert!(r.hyp.owners.host_can_access(pa));
    // userspace_addr faults: unknown slot, beyond the slot, a slot without userspace_addr.
    let s = r
        .hyp
        .world
        .gpa_to_gmem(hyp_core::VmHandle(vm as u32), GPA)
        .unwrap()
        .0;
    r.err(
        HostCall::HostMapUaddr,
        [vm, u64::from(s.0) + 5, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::HostMapUaddr,
        [vm + 9, u64::from(s.0), 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::HostMapUaddr,
        [vm, u64::from(s.0), 16 * P, 0, 0, 0],
        Errno::EFAULT,
    );
    r.err(
        HostCall::HostMapUaddr,
        [vm, u64::from(s.0), 0, 0, 0, 0],
        Errno::ENODEV,
    );
    assert_eq!(r.invariants(), 0);
}

#[test]
fn donate_and_pools() {
    let mut r = rig();
    let vm = r.vm(VmType::Pkvm);
    let pa = r.host_pages(8);
    for (p, n) in [
        (pa + 1, 1),
        (pa, 0),
        (!(P - 1), 2),
        (0x1000, 1),
        (FAKE_BASE + RAM_PAGES as u64 * P, 1),
        (pa, 1 << 60),
    ] {
        r.err(HostCall::Donate, [vm, p, n, 0, 0, 0], Errno::EINVAL);
    }
    r.err(HostCall::Donate, [vm + 1, pa, 1, 0, 0, 0], Errno::ENOENT);
    assert_eq!(r.ok(HostCall::Donate, [vm, pa, 8, 0, 0, 0]), 8);
    // The same pages again: not the host's any more.
    r.err(HostCall::Donate, [vm, pa, 1, 0, 0, 0], Errno::EPERM);
    assert_eq!(
        r.hyp.owners.state(pa, Component::Host).unwrap(),
        PageState::NoPage
    );
    // Pool statistics and reclaim.
    assert_eq!(
        r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]).unwrap()[..2],
        [8, 0]
    );
    r.err(HostCall::PoolStats, [vm + 1, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::PoolReclaim, [vm, 2, 0, 0, 0, 0], Errno::EINVAL);
    r.err(HostCall::PoolReclaim, [vm, 1, 0, 0, 0, 0], Errno::ENOENT);
    let back = r.ok(HostCall::PoolReclaim, [vm, 0, 0, 0, 0, 0]);
    assert_eq!(
        r.hyp.owners.state(back, Component::Host).unwrap(),
        PageState::Owned
    );
    for _ in 0..7 {
        r.ok(HostCall::PoolReclaim, [vm, 0, 0, 0, 0, 0]);
    }
    r.err(HostCall::PoolReclaim, [vm, 0, 0, 0, 0, 0], Errno::ENOENT);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn host_pages_shared_into_a_guest() {
    let mut r = rig();
    let pk = r.vm(VmType::Pkvm);
    let pa = r.host_pages(2);
    r.err(
        HostCall::MapHostShared,
        [pk, 0x9000_0000, pa, 1, 0, 0],
        Errno::EPERM,
    );
    let (vm, _, _) = r.configured(VmType::Plain, 16, 16);
    r.err(
        HostCall::MapHostShared,
        [vm, 0x9000_0000, pa + 1, 1, 0, 0],
        Errno::EINVAL,
    );
    r.err(
        HostCall::MapHostShared,
        [vm, 0x9000_0000, pa, 1 << 30, 0, 0],
        Errno::EINVAL,
    );
    r.err(
        HostCall::MapHostShared,
        [vm, 0x9000_0001, pa, 1, 0, 0],
        Errno::EINVAL,
    );
    r.err(
        HostCall::MapHostShared,
        [vm, GPA, pa, 1, 0, 0],
        Errno::EEXIST,
    );
    r.err(
        HostCall::MapHostShared,
        [vm + 9, 0x9000_0000, pa, 1, 0, 0],
        Errno::ENOENT,
    );
    r.ok(HostCall::MapHostShared, [vm, 0x9000_0000, pa, 2, 0, 0]);
    // The host keeps them, shared with the guest; a second share of one of them is EPERM.
    let pb = r.host_pages(1);
    r.err(
        HostCall::MapHostShared,
        [vm, 0x9000_1000, pb, 1, 0, 0],
        Errno::EEXIST,
    );
    r.err(
        HostCall::MapHostShared,
        [vm, 0xa000_0000, pa, 1, 0, 0],
        Errno::EPERM,
    );
    // coco: the shared alias only.
    let cc = r.vm(VmType::Coco);
    r.err(
        HostCall::MapHostShared,
        [cc, 0x9000_0000, pb, 1, 0, 0],
        Errno::EINVAL,
    );
    r.ok(
        HostCall::MapHostShared,
        [cc, 0x9000_0000 | 1 << 39, pb, 1, 0, 0],
    );
    assert_eq!(r.invariants(), 0);
    r.destroy(vm);
    r.destroy(cc);
    assert_eq!(
        r.hyp.owners.state(pa, Component::Host).unwrap(),
        PageState::Owned
    );
}

#[test]
fn vcpus_and_guest_convert() {
    let mut r = rig();
    let vm = r.vm(VmType::Plain);
    r.err(HostCall::VcpuCreate, [vm + 1, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::VcpuCreate, [vm, 2, 0, 0, 0, 0], Errno::EINVAL);
    r.err(
        HostCall::VcpuCreate,
        [vm, 1 << 40, 0, 0, 0, 0],
        Errno::EINVAL,
    );
    // Without its donation, or with a page not the host's, nothing is created.
    r.err(
        HostCall::VcpuCreate,
        [vm, 0x1000, 7, 0, 0, 0],
        Errno::EINVAL,
    );
    let taken = r.host_pages(1);
    r.ok(HostCall::Donate, [vm, taken, 1, 0, 0, 0]);
    r.err(
        HostCall::VcpuCreate,
        [vm, 0x1000, 7, taken, 1, 0],
        Errno::EPERM,
    );
    assert!(r.hyp.vcpus.is_empty());
    let a = r.vcpu(vm, 0x1000, 7);
    let b = r.vcpu(vm, 0x2000, 0);
    assert_ne!(a, b);
    // Each vCPU knows its index in the VM (its stable identity).
    assert_eq!(r.hyp.vcpus[&(a as u32)].ctx.as_ref().unwrap().index, 0);
    assert_eq!(r.hyp.vcpus[&(b as u32)].ctx.as_ref().unwrap().index, 1);
    assert_eq!(r.hyp.vcpus[&(a as u32)].ctx.as_ref().unwrap().x[0], 7);
    // GuestConvert needs a pending guest request of that vCPU.
    r.err(HostCall::GuestConvert, [a, 0, 0, 0, 0, 0], Errno::EINVAL);
    r.err(
        HostCall::GuestConvert,
        [b + 9, 0, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::GuestConvert,
        [1 << 33, 0, 0, 0, 0, 0],
        Errno::ENOENT,
    );
}

#[cfg(feature = "introspection")]
#[test]
fn introspection_calls_refuse_hostile_arguments() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Pkvm, 16, 32);
    r.err(HostCall::VmWalk, [vm, GPA, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::VmWalk, [vm + 9, GPA, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::VmWalk, [vm, u64::MAX, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::GmemPhys, [g, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::GmemPhys, [g + 9, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::VmSetFaultMode, [vm, 2, 0, 0, 0, 0], Errno::EINVAL);
    r.err(
        HostCall::VmSetFaultMode,
        [vm + 9, 0, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(
        HostCall::ServeFault,
        [vm, 0x1000, 0, 0, 0, 0],
        Errno::EFAULT,
    );
    r.err(
        HostCall::ServeFault,
        [vm, u64::MAX, 0, 0, 0, 0],
        Errno::EINVAL,
    );
    r.err(
        HostCall::ServeFault,
        [vm + 9, GPA, 0, 0, 0, 0],
        Errno::ENOENT,
    );
    r.err(HostCall::VmOpenPmu, [vm + 9, 0, 0, 0, 0, 0], Errno::ENOENT);
    r.err(HostCall::VmStats, [vm + 9, 0, 0, 0, 0, 0], Errno::ENOENT);
    // ServeFault maps what the fault path would: the walk then finds it.
    let pa = r.ok(HostCall::ServeFault, [vm, GPA, 1, 0, 0, 0]);
    assert_eq!(r.ok(HostCall::VmWalk, [vm, GPA, 0, 0, 0, 0]), pa);
    assert_eq!(r.ok(HostCall::GmemPhys, [g, 0, 0, 0, 0, 0]), pa);
    assert_eq!(r.ok(HostCall::CheckInvariants, [0; 6]), 0);
    // An empty pool: ServeFault is ENOMEM.
    let (vm2, _, _) = r.configured(VmType::Pkvm, 16, 0);
    r.err(HostCall::ServeFault, [vm2, GPA, 1, 0, 0, 0], Errno::ENOMEM);
}

#[test]
fn the_host_stage2_maps_only_what_the_host_may_reach() {
    let mut r = rig();
    // Its devices, as device memory; nothing else below RAM; nothing above it.
    assert!(r.hyp.host_stage2_fault(DEVICE.0 + 8));
    assert!(!r.hyp.host_stage2_fault(0x0902_0000));
    assert!(!r.hyp.host_stage2_fault(FAKE_BASE + RAM_PAGES as u64 * P));
    // Its own RAM; not a page it donated.
    let pa = r.host_pages(1);
    assert!(r.hyp.host_stage2_fault(pa));
    let vm = r.vm(VmType::Pkvm);
    r.ok(HostCall::Donate, [vm, pa, 1, 0, 0, 0]);
    assert!(!r.hyp.host_stage2_fault(pa));
    assert_eq!(r.invariants(), 0);
}
