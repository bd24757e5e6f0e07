//! The documented limits (`abi::host::*_MAX`): each is reached with a defined error that
//! changes nothing, and the hyp goes on serving the VM and the others.

use super::*;
use abi::guest::*;
use abi::host::{
    GMEM_FILES_PER_VM_MAX, MEMSLOTS_PER_VM_MAX, MMIO_GUARD_GRANULES_MAX, VCPUS_PER_VM_MAX,
};
use abi::Errno;
use hyp_core::VmHandle;

const P: u64 = PAGE_SIZE;
const IP: (u64, u64) = (SMCCC_INVALID_PARAMETER, 0);

#[test]
fn vcpus_per_vm_end_at_their_limit_and_the_other_vms_go_on() {
    let mut r = rig();
    let (a, _, _) = r.configured(VmType::Plain, 16, 8);
    for _ in 1..VCPUS_PER_VM_MAX {
        r.vcpu(a, 0x1_4000_0000, 0);
    }
    let before = r.hyp.vcpus.len();
    let args = r.vcpu_args(a, 0x1_4000_0000, 0);
    r.err(HostCall::VcpuCreate, args, Errno::ENOSPC);
    assert_eq!(r.hyp.vcpus.len(), before);
    // Another VM gets its vCPUs, and its first is index 0 (MPIDR).
    let (b, _, vb) = r.configured(VmType::Plain, 16, 8);
    assert_eq!(r.hyp.vcpus[&(vb as u32)].vm, VmHandle(b as u32));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn gmem_files_per_vm_end_at_their_limit() {
    let mut r = rig();
    let a = r.vm(VmType::Plain);
    let files_of_a: Vec<u64> = (0..GMEM_FILES_PER_VM_MAX)
        .map(|_| r.gmem(a, 1, GmemFlags::MMAP))
        .collect();
    let files = r.hyp.world.gmem_count();
    r.err(
        HostCall::GmemCreate,
        [a, P, GmemFlags::MMAP.bits(), 0, 0, 0],
        Errno::ENOSPC,
    );
    // Bad arguments are still EINVAL first (validated before the limit).
    r.err(HostCall::GmemCreate, [a, 0, 0, 0, 0, 0], Errno::EINVAL);
    assert_eq!(r.hyp.world.gmem_count(), files);
    // The limit is the VM's: another VM creates its own; one file gone, one more fits.
    let b = r.vm(VmType::Plain);
    r.gmem(b, 1, GmemFlags::MMAP);
    r.ok(HostCall::GmemDestroy, [files_of_a[0], 0, 0, 0, 0, 0]);
    r.gmem(a, 1, GmemFlags::MMAP);
}

#[test]
fn memslots_per_vm_end_at_their_limit() {
    let mut r = rig();
    let a = r.vm(VmType::Plain);
    let g = r.gmem(a, MEMSLOTS_PER_VM_MAX as u64 + 1, GmemFlags::MMAP);
    // Slot i: one page at GPA + i pages, bound to page i of the file.
    let slot = |r: &mut Rig, i: u64| {
        r.call(HostCall::MemslotCreate, [a, GPA + i * P, P, g, i * P, 0])
            .map(|x| x[0])
            .map_err(|e| e.0)
    };
    let mut slots = Vec::new();
    for i in 0..MEMSLOTS_PER_VM_MAX as u64 {
        slots.push(slot(&mut r, i).unwrap());
    }
    // Refused without binding the page: a later slot there still works once one goes.
    assert_eq!(slot(&mut r, MEMSLOTS_PER_VM_MAX as u64), Err(Errno::ENOSPC));
    r.ok(HostCall::MemslotDelete, [a, slots[0], 0, 0, 0, 0]);
    assert!(slot(&mut r, MEMSLOTS_PER_VM_MAX as u64).is_ok());
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_guest_flooding_the_mmio_guard_is_refused_at_its_limit() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let dev = 0x9000_0000;
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_ENROLL, 0, 0, 0]),
        (SMCCC_SUCCESS, 0)
    );
    let full = MMIO_GUARD_GRANULES_MAX as u64;
    let mut done = 0;
    while done < full {
        let (ret, n) = served(
            &mut r,
            vcpu,
            [MMIO_GUARD_MAP_RANGE, dev + done * P, full - done, 0],
        );
        assert_eq!(ret, SMCCC_SUCCESS);
        done += n;
    }
    // One granule more: refused, nothing mapped; a range reaching past the limit too.
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_MAP, dev + full * P, 0, 0]),
        IP
    );
    assert_eq!(
        served(
            &mut r,
            vcpu,
            [MMIO_GUARD_MAP_RANGE, dev + (full - 1) * P, 2, 0]
        ),
        IP
    );
    let guarded = |r: &Rig| {
        r.hyp
            .vms
            .values()
            .filter_map(|v| v.mmio_guard.as_ref().map(|s| s.len()))
            .sum::<usize>()
    };
    assert_eq!(guarded(&r), MMIO_GUARD_GRANULES_MAX);
    // Mapping a granule already guarded takes nothing more; unmapping one makes room.
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_MAP, dev, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_UNMAP, dev, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_MAP, dev + full * P, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    assert_eq!(guarded(&r), MMIO_GUARD_GRANULES_MAX);
}
