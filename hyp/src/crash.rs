//! Trap routing and crash reports. Anything the hyp does not expect ends here: a decoded report
//! (exception class in words, ESR, ELR, FAR, the level it came from) through the lock-free console
//! path, then the end of the run: PSCI `SYSTEM_OFF` in the product (the run's wrapper,
//! `tools/qemu-run.py`, sees the report and fails the run), a failing semihosting exit in test
//! images (the `semihosting` feature). A Rust panic takes the same road.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use board::eprintln_emergency;

use crate::arch::vectors::{TrapFrame, VectorKind};
use crate::arch::Syndrome;
use crate::arch::{el1, esr, traps};
use crate::percpu;

/// A function the test harness installs to report a crash as the current test's failure.
pub type CrashHook = fn(fmt::Arguments);

static CRASH_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs the crash hook (test images use it; the product hyp has none).
pub fn set_crash_hook(hook: CrashHook) {
    CRASH_HOOK.store(hook as usize, Ordering::Release);
}

fn run_crash_hook(reason: fmt::Arguments) {
    let raw = CRASH_HOOK.swap(0, Ordering::AcqRel);
    if raw != 0 {
        // SAFETY: the only non-zero value ever stored is a `CrashHook` fn pointer.
        let hook: CrashHook = unsafe { core::mem::transmute::<usize, CrashHook>(raw) };
        hook(reason);
    }
}

/// Routes a trap taken at EL2 (called by the vector with the saved frame). A trap from the host
/// that the hyp does not handle is answered with an exception at the host's own EL1 (Trust rule
/// 5): never a hyp crash.
pub fn handle_trap(frame: &mut TrapFrame, syn: Syndrome) {
    match frame.vector() {
        VectorKind::CurrentSync => {
            if let Some(resume) = percpu::this_cpu().probe_record(syn.esr, syn.far) {
                frame.elr = if resume != 0 { resume } else { frame.elr + 4 };
                return;
            }
            fatal_exception(frame, syn)
        }
        VectorKind::LowerSync => match esr::ec(syn.esr) {
            esr::EC_HVC64 => crate::glue::host_hvc(frame),
            esr::EC_SMC64 => crate::psci::handle_host_smc(frame, syn.esr),
            ec @ (esr::EC_DABT_LOW | esr::EC_IABT_LOW) => {
                let instruction = ec == esr::EC_IABT_LOW;
                match esr::fault_kind(syn.esr) {
                    esr::FaultKind::Translation | esr::FaultKind::AccessFlag => {
                        // A host stage-2 fault: the host's IPA is the PA.
                        let ipa = ((syn.hpfar >> 4) << 12) | (syn.far & 0xfff);
                        if !crate::glue::host_abort(ipa) {
                            el1::inject_host_abort(frame, syn.far, instruction, syn.esr);
                        }
                    }
                    esr::FaultKind::TlbConflict => crate::arch::tlb::flush_local_current_vmid(),
                    // Permission (a fetch from execute-never device memory, ...), alignment,
                    // external abort, address size: mapping again would not help.
                    esr::FaultKind::Other => {
                        el1::inject_host_abort(frame, syn.far, instruction, syn.esr)
                    }
                }
            }
            // SVE, SME, trace, IMPLEMENTATION DEFINED registers, ...: undefined instruction.
            _ => traps::host_undef(&mut frame.elr, &mut frame.spsr, syn.esr),
        },
        VectorKind::LowerIrq | VectorKind::LowerFiq => {
            log::warn!("unexpected interrupt from EL1 ignored");
        }
        _ => fatal_exception(frame, syn),
    }
}

/// Ends the run after a crash report: a failing semihosting exit in test images, PSCI
/// `SYSTEM_OFF` in the product (which has no semihosting at all).
fn end_run() -> ! {
    #[cfg(feature = "semihosting")]
    board::semihost::exit(1);
    #[cfg(not(feature = "semihosting"))]
    crate::arch::firmware::system_off()
}

/// Prints the decoded report of an unexpected exception and ends the run with a failing status.
pub fn fatal_exception(frame: &TrapFrame, syn: Syndrome) -> ! {
    let ec = esr::ec(syn.esr);
    eprintln_emergency!(
        "\n*** hyp: unexpected exception taken from {}",
        frame.vector().describe()
    );
    eprintln_emergency!("    EC 0x{:02x}: {}", ec, esr::ec_name(ec));
    if matches!(
        ec,
        esr::EC_DABT_CUR | esr::EC_DABT_LOW | esr::EC_IABT_CUR | esr::EC_IABT_LOW
    ) {
        eprintln_emergency!(
            "    {} on {}",
            esr::fsc_name(syn.esr),
            if esr::is_write(syn.esr) {
                "write"
            } else {
                "read"
            }
        );
    }
    eprintln_emergency!(
        "    ESR_EL2 0x{:08x}  ELR_EL2 0x{:016x}  FAR_EL2 0x{:016x}  SPSR_EL2 0x{:08x}",
        syn.esr,
        frame.elr,
        syn.far,
        frame.spsr
    );
    run_crash_hook(format_args!(
        "exception at {}: {} (ESR 0x{:x}, ELR 0x{:x}, FAR 0x{:x})",
        frame.vector().describe(),
        esr::ec_name(ec),
        syn.esr,
        frame.elr,
        syn.far
    ));
    end_run()
}

/// Reports a fatal condition found by hyp code and ends the run with a failing status.
pub fn fatal(args: fmt::Arguments) -> ! {
    eprintln_emergency!("\n*** hyp: fatal: {}", args);
    run_crash_hook(args);
    end_run()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    eprintln_emergency!("\n*** hyp: panic: {}", info);
    run_crash_hook(format_args!("panic: {}", info));
    end_run()
}
