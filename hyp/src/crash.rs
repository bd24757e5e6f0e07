//! Crash reports. Anything the hyp does not expect ends here: a decoded report
//! (exception class in words, ESR, ELR, FAR, the level it came from) through the lock-free console
//! path, then the end of the run: PSCI `SYSTEM_OFF` in the product (the run's wrapper,
//! `tools/qemu-run.py`, sees the report and fails the run), a failing semihosting exit in test
//! images (the `semihosting` feature). A Rust panic takes the same road.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use board::eprintln_emergency;

use crate::arch::esr;
use crate::arch::vectors::{TrapFrame, VectorKind};
use crate::arch::Syndrome;

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
        VectorKind::of(frame).describe()
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
        VectorKind::of(frame).describe(),
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
