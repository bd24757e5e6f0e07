//! A deliberately failing image: proves the harness reports failures. `make test-target` runs it
//! and requires a non-zero exit status, the failing lines and `1 passed, 2 failed`.
#![no_std]
#![no_main]

extern crate alloc;

use hyp::boot::BootInfo;
use ontarget::{ensure_eq, register, TestResult, Totals};

fn selfcheck_a_passes() -> TestResult {
    ensure_eq!(1 + 1, 2);
    Ok(())
}

fn selfcheck_b_fails_an_assertion() -> TestResult {
    ensure_eq!(1 + 1, 3);
    Ok(())
}

fn selfcheck_c_traps_at_el2() -> TestResult {
    // SAFETY: deliberately unsound: reads unmapped flash at address 0x2000 to take a data abort
    // at EL2, which the harness must report as this test's failure.
    let v = unsafe { core::ptr::read_volatile(0x2000 as *const u8) };
    ensure_eq!(v, 0);
    Ok(())
}

register!(
    selfcheck_a_passes,
    selfcheck_b_fails_an_assertion,
    selfcheck_c_traps_at_el2
);

#[no_mangle]
fn hyp_image_main(_info: &'static BootInfo) -> ! {
    hyp::crash::set_crash_hook(ontarget::report_crash);
    let t = ontarget::run_all(Totals::default());
    ontarget::finish(t)
}
