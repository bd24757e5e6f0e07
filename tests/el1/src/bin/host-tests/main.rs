//! On-target tests at EL1, run as the host after the EL2 tests. Prints the closing line of the
//! whole run (EL2 counts included) and exits QEMU with the verdict.
#![no_std]
#![no_main]

extern crate alloc;

use abi::host::{HostCall, ABI_VERSION};
use abi::Errno;
use host_shim::hvc;
use ontarget::{ensure, ensure_eq, register, TestResult, Totals};

mod attacks;
mod attacks_ws;
mod blocks;
mod exhaust;
mod protect;
mod psci;
mod vms;
mod worlds;

/// Must match `target_tests_el2::HANDOFF_MAGIC`.
const HANDOFF_MAGIC: u64 = 0x7e57_0c0d;

fn el1_host_runs_at_el1() -> TestResult {
    ensure_eq!(host_shim::current_el(), 1);
    Ok(())
}

fn el1_version_call_answers_abi_version() -> TestResult {
    let r = hvc::call(HostCall::Version, [0; 6]).map_err(|e| alloc::format!("{e}"))?;
    ensure_eq!(r[0], ABI_VERSION);
    Ok(())
}

fn el1_unknown_host_call_is_enosys_and_host_goes_on() -> TestResult {
    for id in [0xC600_1FFFu64, 0xC600_0FFF, 0x1234, u64::MAX] {
        ensure_eq!(hvc::call_id(id, [1, 2, 3, 4, 5, 6]), Err(Errno::ENOSYS));
    }
    // The hyp is still there and answering after the refusals.
    let r = hvc::call(HostCall::Version, [0; 6]).map_err(|e| alloc::format!("{e}"))?;
    ensure_eq!(r[0], ABI_VERSION);
    Ok(())
}

fn el1_host_call_preserves_callee_registers() -> TestResult {
    let (x6, x9, x20, x28): (u64, u64, u64, u64);
    // Raw, not `smccc`: the test needs known values in registers around the HVC itself.
    // SAFETY: a Version hypercall with known values in registers the hyp must not change; all
    // registers touched are declared.
    unsafe {
        core::arch::asm!(
            "mov x6, #0x6444",
            "mov x9, #0x9999",
            "mov x20, #0x2019",
            "mov x28, #0x2828",
            "hvc #0",
            "mov {a}, x6",
            "mov {b}, x9",
            "mov {c}, x20",
            "mov {d}, x28",
            a = out(reg) x6,
            b = out(reg) x9,
            c = out(reg) x20,
            d = out(reg) x28,
            inout("x0") HostCall::Version.id() => _,
            out("x1") _, out("x2") _, out("x3") _, out("x6") _, out("x9") _,
            out("x20") _, out("x28") _,
            options(nostack)
        );
    }
    ensure_eq!((x6, x9, x20, x28), (0x6444, 0x9999, 0x2019, 0x2828));
    Ok(())
}

fn el1_vectors_return_a_probed_abort() -> TestResult {
    // With the MMU off, an address beyond the CPU's physical address size faults at EL1 (an
    // address size fault); the host's vectors must hand it back to the probe, not crash.
    let addr = 1usize << 55;
    match host_shim::exceptions::probe_read(addr) {
        Ok(v) => Err(alloc::format!("read of {addr:#x} returned {v:#x}")),
        Err(f) => {
            ensure_eq!(f.ec(), 0x25);
            ensure_eq!(f.far, addr as u64);
            // The host's own image reads fine through the same path.
            let r = host_shim::exceptions::probe_read(board::layout::HOST_BASE);
            ensure!(r.is_ok(), "reading the host image faulted: {r:?}");
            Ok(())
        }
    }
}

register!(
    el1_host_runs_at_el1,
    el1_version_call_answers_abi_version,
    el1_unknown_host_call_is_enosys_and_host_goes_on,
    el1_host_call_preserves_callee_registers,
    el1_vectors_return_a_probed_abort,
);

#[no_mangle]
fn host_image_main(args: [u64; 4]) -> ! {
    host_shim::exceptions::set_crash_hook(ontarget::report_crash);
    vms::init_pages();
    let prior = if args[2] == HANDOFF_MAGIC {
        Totals {
            passed: args[0] as usize,
            failed: args[1] as usize,
        }
    } else {
        Totals::default()
    };
    let t = ontarget::run_all(prior);
    ontarget::finish(t)
}
