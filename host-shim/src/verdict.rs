//! How a run of the host shim ends. The product has no semihosting (Trust rule 11): the verdict
//! leaves through the console, as one final line, and the machine stops with PSCI `SYSTEM_OFF`
//! (an SMC, which traps to the hyp and is relayed to the firmware). `tools/qemu-run.py` turns
//! that line into the run's exit status. Test images (the `semihosting` feature) exit through
//! semihosting with the status instead.

/// The final line's prefix, which `tools/qemu-run.py` looks for.
pub const PREFIX: &str = "HOST VERDICT: ";

/// Prints the verdict line for `code` (0 = pass) and powers the machine off.
pub fn finish(code: i32) -> ! {
    if code == 0 {
        board::println!("{PREFIX}PASS");
    } else {
        board::println!("{PREFIX}FAIL (status {code})");
    }
    power_off(code)
}

/// After a crash report (panic, unexpected exception): a failing verdict without taking the
/// console lock, then power off.
pub fn crash() -> ! {
    board::eprintln_emergency!("{PREFIX}FAIL (status 1)");
    power_off(1)
}

#[cfg(feature = "semihosting")]
fn power_off(code: i32) -> ! {
    board::semihost::exit(code)
}

#[cfg(not(feature = "semihosting"))]
fn power_off(_code: i32) -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    loop {
        core::hint::spin_loop();
    }
}
