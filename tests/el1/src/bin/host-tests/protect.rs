//! Protection, seen from a malicious host and a malicious guest: the host never reads a byte the
//! guest has not shared; bad arguments get their exact error and change nothing; the ownership
//! invariant checker stays clean after every step.

use alloc::string::String;

use abi::cmd::{OP_MEM_RANGE, OP_MMIO_GUARD, OP_TOUCH, STATUS_ABORTED, STATUS_OK};
use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::guest::*;
use abi::host::HostCall;
use abi::{Errno, PAGE_SIZE};
use host_shim::driver::{GuestDriver, StepReport};
use host_shim::exceptions::probe_read;
use host_shim::runner::forward_hypercall;
use host_shim::vm::{self, GmemId, SlotSpec, VmId};
use ontarget::{ensure, ensure_eq, register, TestResult};

use crate::vms::{e, with_pages};

const GPA: u64 = 0x8000_0000;

struct Pvm {
    vm: VmId,
    gmem: GmemId,
    guest: GuestDriver,
    pool_pa: u64,
}

/// A `pkvm` VM in the seed's pKVM configuration with `pages` of gmem.
fn pkvm(gmem_pages: u64, pool: u64) -> Result<Pvm, String> {
    with_pages(|p| {
        let vm = vm::vm_create(VmType::Pkvm).map_err(e)?;
        let size = gmem_pages * PAGE_SIZE;
        let gmem = vm::gmem_create(vm, size, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY)
            .map_err(e)?;
        vm::memslot_create(
            vm,
            &SlotSpec {
                gpa: GPA,
                size,
                gmem: Some((gmem, 0)),
                uaddr: UserspaceAddr::None,
                flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
            },
        )
        .map_err(e)?;
        let pool_pa = p.alloc_contiguous(pool, PAGE_SIZE).ok_or("no host pages")?;
        vm::donate(vm, pool_pa, pool).map_err(e)?;
        let guest = GuestDriver::load(vm, VmType::Pkvm, p).map_err(e)?;
        Ok(Pvm {
            vm,
            gmem,
            guest,
            pool_pa,
        })
    })
}

fn step(v: &mut Pvm, op: u64, args: [u64; 4]) -> Result<StepReport, String> {
    let (vm_id, vcpu) = (v.vm, v.guest.vcpu);
    with_pages(|p| {
        v.guest
            .step(op, args, p, &mut |f, a| {
                forward_hypercall(vm_id, vcpu, f, a)
            })
            .map_err(e)
    })
}

fn invariants_clean() -> TestResult {
    ensure_eq!(vm::check_invariants(), Ok(0));
    Ok(())
}

fn gmem_phys(g: GmemId, offset: u64) -> Result<u64, String> {
    host_shim::hvc::call(HostCall::GmemPhys, [g.0, offset, 0, 0, 0, 0])
        .map(|r| r[0])
        .map_err(e)
}

fn prot_raw_reads_of_256_private_pages_all_abort() -> TestResult {
    let mut v = pkvm(256, 300)?;
    // The guest writes a marker into each of its 256 pages.
    let r = step(&mut v, OP_TOUCH, [GPA, 256, PAGE_SIZE, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    invariants_clean()?;
    let mut aborts = 0;
    let mut leaked = 0;
    for i in 0..256 {
        let pa = gmem_phys(v.gmem, i * PAGE_SIZE)?;
        match probe_read(pa as usize) {
            Err(f) => {
                ensure_eq!(f.ec(), 0x25);
                aborts += 1;
            }
            Ok(_) => leaked += 1,
        }
        // The software path refuses too.
        ensure_eq!(
            vm::map_gmem(v.gmem, i * PAGE_SIZE, false),
            Err(Errno::EFAULT)
        );
    }
    ensure_eq!((aborts, leaked), (256, 0));
    invariants_clean()?;
    vm::vm_destroy(v.vm).map_err(e)?;
    invariants_clean()
}

fn prot_host_calls_on_pages_it_does_not_own_are_refused() -> TestResult {
    let a = pkvm(16, 32)?;
    let b = pkvm(16, 32)?;
    let before = (vm::stats(a.vm).map_err(e)?, vm::stats(b.vm).map_err(e)?);
    // Hyp memory.
    ensure_eq!(vm::donate(b.vm, 0x4020_0000, 1), Err(Errno::EPERM));
    ensure_eq!(
        vm::map_host_shared(b.vm, 0x2_0000_0000, 0x4030_0000, 1),
        Err(Errno::EPERM)
    );
    // Another VM's pages (donated to A, named again for B).
    ensure_eq!(vm::donate(b.vm, a.pool_pa, 4), Err(Errno::EPERM));
    ensure_eq!(
        vm::map_host_shared(b.vm, 0x2_0000_0000, a.pool_pa, 1),
        Err(Errno::EPERM)
    );
    // A run that starts on host memory and ends in another VM's pool changes nothing.
    ensure_eq!(
        vm::donate(b.vm, a.pool_pa - PAGE_SIZE, 2),
        Err(Errno::EPERM)
    );
    // Overflowing and out-of-range runs.
    ensure_eq!(vm::donate(b.vm, !0xfff, 2), Err(Errno::EINVAL));
    ensure_eq!(
        vm::donate(b.vm, 0x4800_0000, u64::MAX / 2),
        Err(Errno::EINVAL)
    );
    ensure_eq!(vm::donate(b.vm, 1 << 45, 1), Err(Errno::EINVAL));
    // A guest-range conversion with no guest request behind it.
    ensure_eq!(vm::guest_convert(b.guest.vcpu), Err((Errno::EINVAL, 0)));
    let after = (vm::stats(a.vm).map_err(e)?, vm::stats(b.vm).map_err(e)?);
    ensure_eq!(after, before);
    // The page just below A's pool is still the host's: it reads fine.
    ensure!(
        probe_read((a.pool_pa - PAGE_SIZE) as usize).is_ok(),
        "host lost its own page"
    );
    // A's pool is not reachable by the host.
    ensure!(
        probe_read(a.pool_pa as usize).is_err(),
        "the host reads a VM pool page"
    );
    invariants_clean()?;
    vm::vm_destroy(a.vm).map_err(e)?;
    vm::vm_destroy(b.vm).map_err(e)?;
    invariants_clean()
}

fn prot_malicious_guest_gets_invalid_parameter_and_nothing_changes() -> TestResult {
    let mut v = pkvm(16, 32)?;
    ensure_eq!(
        step(&mut v, abi::cmd::OP_WRITE, [GPA + 0x1000, 0x42, 0, 0])?.status,
        Some(STATUS_OK)
    );
    let hvc = |v: &mut Pvm, f: u64, a: [u64; 3]| -> Result<u64, String> {
        Ok(step(v, abi::cmd::OP_HVC, [f, a[0], a[1], a[2]])?.results[0])
    };
    let exits_before = vm::stats(v.vm).map_err(e)?;
    // Outside its memslots, unaligned, must-be-zero set.
    ensure_eq!(
        hvc(&mut v, MEM_SHARE, [0x9000_0000, 1, 0])?,
        SMCCC_INVALID_PARAMETER
    );
    ensure_eq!(
        hvc(&mut v, MEM_SHARE, [GPA + 0x10, 1, 0])?,
        SMCCC_INVALID_PARAMETER
    );
    ensure_eq!(
        hvc(&mut v, MEM_SHARE, [GPA, 1, 1])?,
        SMCCC_INVALID_PARAMETER
    );
    ensure_eq!(
        hvc(&mut v, MEM_SHARE, [GPA + 15 * PAGE_SIZE, 2, 0])?,
        SMCCC_INVALID_PARAMETER
    );
    ensure_eq!(
        hvc(&mut v, MEM_RELINQUISH, [GPA, 1, 0])?,
        SMCCC_INVALID_PARAMETER
    );
    // Unshare of a page never shared.
    ensure_eq!(
        hvc(&mut v, MEM_UNSHARE, [GPA + 0x1000, 1, 0])?,
        SMCCC_INVALID_PARAMETER
    );
    // None of these reached the host: only the command device's exits happened.
    let exits_after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(
        exits_after.exits - exits_before.exits,
        exits_after.mmio_exits - exits_before.mmio_exits
    );
    // Nothing changed: the page is still private and still holds its value.
    ensure_eq!(vm::map_gmem(v.gmem, 0x1000, false), Err(Errno::EFAULT));
    ensure_eq!(
        step(&mut v, abi::cmd::OP_READ, [GPA + 0x1000, 0, 0, 0])?.results[0],
        0x42
    );
    // Share of an already shared page.
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA + 0x1000, 1, 0])?.results[0],
        SMCCC_SUCCESS
    );
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA + 0x1000, 1, 0])?.results[0],
        SMCCC_INVALID_PARAMETER
    );
    // A shared page cannot be relinquished.
    ensure_eq!(
        hvc(&mut v, MEM_RELINQUISH, [GPA + 0x1000, 0, 0])?,
        SMCCC_INVALID_PARAMETER
    );
    // Relinquish twice: the second is a no-op success, the page reads zero afterwards.
    ensure_eq!(
        step(&mut v, abi::cmd::OP_WRITE, [GPA + 0x2000, 0x99, 0, 0])?.status,
        Some(STATUS_OK)
    );
    let pa = gmem_phys(v.gmem, 0x2000)?;
    ensure_eq!(
        hvc(&mut v, MEM_RELINQUISH, [GPA + 0x2000, 0, 0])?,
        SMCCC_SUCCESS
    );
    ensure_eq!(
        hvc(&mut v, MEM_RELINQUISH, [GPA + 0x2000, 0, 0])?,
        SMCCC_SUCCESS
    );
    // The relinquished page went back to the host zeroed.
    ensure_eq!(probe_read(pa as usize), Ok(0));
    ensure_eq!(
        step(&mut v, abi::cmd::OP_READ, [GPA + 0x2000, 0, 0, 0])?.results[0],
        0
    );
    invariants_clean()?;
    vm::vm_destroy(v.vm).map_err(e)?;
    invariants_clean()
}

fn prot_512_page_share_is_stopped_early_and_resumed() -> TestResult {
    let mut v = pkvm(512, 600)?;
    let before = vm::stats(v.vm).map_err(e)?;
    let r = step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA, 512, 0])?;
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(r.results, [SMCCC_SUCCESS, 512]);
    // Two forwarded calls of 256 pages each (the hyp stops a range call at 256).
    let forwarded = (after.exits - before.exits) - (after.mmio_exits - before.mmio_exits);
    ensure_eq!(forwarded, 2);
    // All 512 pages are shared now: the host reads them.
    for i in [0u64, 255, 256, 511] {
        ensure_eq!(vm::map_gmem(v.gmem, i * PAGE_SIZE, false).is_ok(), true);
    }
    invariants_clean()?;
    let r = step(&mut v, OP_MEM_RANGE, [MEM_UNSHARE, GPA, 512, 0])?;
    ensure_eq!(r.results, [SMCCC_SUCCESS, 512]);
    ensure_eq!(
        vm::map_gmem(v.gmem, 511 * PAGE_SIZE, false),
        Err(Errno::EFAULT)
    );
    invariants_clean()?;
    vm::vm_destroy(v.vm).map_err(e)?;
    invariants_clean()
}

fn prot_mmio_guard_only_guarded_ipas_exit() -> TestResult {
    let mut v = pkvm(16, 32)?;
    let r = step(&mut v, OP_MMIO_GUARD, [0; 4])?;
    ensure_eq!(r.results, [SMCCC_SUCCESS, SMCCC_SUCCESS]);
    // Unguarded device IPA: the access aborts in the guest; the host sees no MMIO exit.
    let r = step(&mut v, abi::cmd::OP_READ, [0x9000_0000, 0, 0, 0])?;
    ensure_eq!(r.mmio, None);
    ensure_eq!(r.status, Some(STATUS_ABORTED));
    // Guard it: now it exits as MMIO.
    let r = step(
        &mut v,
        abi::cmd::OP_HVC,
        [MMIO_GUARD_MAP, 0x9000_0000, 0, 0],
    )?;
    ensure_eq!(r.results[0], SMCCC_SUCCESS);
    let r = step(&mut v, abi::cmd::OP_READ, [0x9000_0000, 0, 0, 0])?;
    ensure_eq!(r.mmio, Some((0x9000_0000, false, 0)));
    // Guest memory cannot be guarded as MMIO.
    let r = step(&mut v, abi::cmd::OP_HVC, [MMIO_GUARD_MAP, GPA, 0, 0])?;
    ensure_eq!(r.results[0], SMCCC_INVALID_PARAMETER);
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn prot_teardown_zeroes_guest_pages_before_the_host_sees_them() -> TestResult {
    let mut v = pkvm(64, 100)?;
    ensure_eq!(
        step(&mut v, OP_TOUCH, [GPA, 64, PAGE_SIZE, 0])?.status,
        Some(STATUS_OK)
    );
    let pas: alloc::vec::Vec<u64> = (0..64)
        .map(|i| gmem_phys(v.gmem, i * PAGE_SIZE))
        .collect::<Result<_, _>>()?;
    vm::vm_destroy(v.vm).map_err(e)?;
    for pa in pas {
        ensure_eq!(probe_read(pa as usize), Ok(0));
    }
    invariants_clean()
}

register!(
    prot_raw_reads_of_256_private_pages_all_abort,
    prot_host_calls_on_pages_it_does_not_own_are_refused,
    prot_malicious_guest_gets_invalid_parameter_and_nothing_changes,
    prot_512_page_share_is_stopped_early_and_resumed,
    prot_mmio_guard_only_guarded_ipas_exit,
    prot_teardown_zeroes_guest_pages_before_the_host_sees_them,
);
