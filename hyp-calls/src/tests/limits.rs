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

/// Every VM filled to every limit at once: 255 VMs, each with 16 vCPUs, 32 gmem files, 64
/// memslots and 1024 guarded MMIO granules. What the hyp keeps for them outside the VMs' own
/// (donated) heaps is bounded by the limits and fits the hyp's 64 MiB boot heap many times
/// over; what each VM's heap holds is measured (the figures of the note).
#[test]
fn every_vm_filled_to_every_limit_fits_what_the_hyp_reserved() {
    let vms = abi::host::VMS_MAX as usize;
    let mut r = rig_of(16 * RAM_PAGES);
    let boot_before = hyp_mem::fake::system_bytes();
    let mut heap_pages = 0;
    for n in 0..vms {
        let vm = r.vm(VmType::Plain);
        r.donate(vm, 16);
        let mut vcpus = Vec::new();
        for _ in 0..VCPUS_PER_VM_MAX {
            vcpus.push(r.vcpu(vm, 0x1_4000_0000, 0));
        }
        let files: Vec<u64> = (0..GMEM_FILES_PER_VM_MAX)
            .map(|_| r.gmem(vm, 2, GmemFlags::MMAP))
            .collect();
        let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
        for i in 0..MEMSLOTS_PER_VM_MAX as u64 {
            let g = files[(i / 2) as usize];
            let packed = both.bits();
            r.ok(
                HostCall::MemslotCreate,
                [vm, GPA + i * P, P, g, (i % 2) * P, packed],
            );
        }
        let vcpu = vcpus[0];
        assert_eq!(
            served(&mut r, vcpu, [MMIO_GUARD_ENROLL, 0, 0, 0]).0,
            SMCCC_SUCCESS
        );
        let full = MMIO_GUARD_GRANULES_MAX as u64;
        let mut done = 0;
        while done < full {
            let (ret, k) = served(
                &mut r,
                vcpu,
                [MMIO_GUARD_MAP_RANGE, 0x9000_0000 + done * P, full - done, 0],
            );
            assert_eq!(ret, SMCCC_SUCCESS, "VM {n}");
            done += k;
        }
        let s = r.hyp.vms[&(vm as u32)].heap.stats();
        heap_pages += s.pages;
        if n == 0 {
            std::println!(
                "one VM at every limit: its heap {} pages ({} objects, {} bytes)",
                s.pages,
                s.objects,
                s.bytes
            );
        }
    }
    let boot = hyp_mem::fake::system_bytes() - boot_before;
    std::println!(
        "{vms} VMs at every limit: {boot} bytes outside their heaps ({} a VM), {heap_pages} heap pages",
        boot / vms as isize
    );
    assert!(boot < 64 << 20, "{boot} bytes");
    assert_eq!(r.invariants(), 0);
    // One more of anything is refused; every VM goes, and every page with it.
    r.err(HostCall::GmemCreate, [1, P, 0, 0, 0, 0], Errno::ENOSPC);
    let ids: Vec<u32> = r.hyp.vms.keys().copied().collect();
    for id in ids {
        r.destroy(u64::from(id));
    }
    assert_eq!(r.hyp.vms.len(), 0);
    assert_eq!(r.invariants(), 0);
}

/// What a VM's heap holds per object (the note's figures), with bounds: per vCPU, per gmem page
/// touched (in the worst case, no two pages physically adjacent), per shareability range.
#[test]
fn what_a_vm_costs_its_heap() {
    let mut r = rig_of(4 * RAM_PAGES);
    let vm = r.vm(VmType::Coco);
    let bytes = |r: &Rig| r.hyp.vms[&(vm as u32)].heap.stats().bytes as i64;
    let empty = bytes(&r);
    let v0 = bytes(&r);
    let vcpu = r.vcpu(vm, 0x1_4000_0000, 0);
    let per_vcpu = bytes(&r) - v0;
    let pages = 1024u64;
    let g = r.gmem(vm, pages, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY);
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    r.slot(vm, GPA, pages, g, UserspaceAddr::None, both)
        .unwrap();
    r.donate(vm, pages as usize + 64);
    let t0 = bytes(&r);
    // Every other page: no two touched pages are neighbours, so each is a run of its own.
    for i in (0..pages).step_by(2) {
        assert!(matches!(
            exits::touch(&mut r, vcpu, GPA + i * P).0,
            Step::Resume
        ));
    }
    let per_page = (bytes(&r) - t0) / (pages as i64 / 2);
    // Shareability ranges: every fourth page shared (two range boundaries each).
    let c0 = bytes(&r);
    let ranges = pages / 4;
    for i in 0..ranges {
        r.ok(
            HostCall::Convert,
            [g, i * 4 * P, P, 1, abi::host::CONVERT_MODE_DEFAULT, 0],
        );
    }
    let per_range = (bytes(&r) - c0) / (2 * ranges as i64);
    std::println!(
        "a VM's heap: {empty} bytes empty, {per_vcpu} a vCPU, {per_page} a gmem page touched \
         (worst case), {per_range} a shareability range"
    );
    assert!(per_page <= 64, "{per_page}");
    assert!(per_range <= 64, "{per_range}");
    assert_eq!(r.invariants(), 0);
}
