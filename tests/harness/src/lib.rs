//! On-target test harness.
//!
//! Tests are plain functions returning [`TestResult`], registered with [`register!`], which puts a
//! [`TestCase`] record into the `.testcases` linker section (bracketed by `__testcases_start` /
//! `__testcases_end` in `linker/common.ld`). The runner sorts them by name, prints
//! `test NAME ... ok` or `test NAME ... FAILED: reason` through semihosting, and the last image of
//! a run prints `N passed, M failed` alone on a line and exits QEMU with status 0 only if nothing
//! failed. A panic or an unexpected exception inside a test is reported as that test's failure
//! through [`report_crash`] and ends the run with a failing status.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

pub use board::semihost::write_line;

/// A test's verdict: `Err` carries the reason.
pub type TestResult = Result<(), String>;

/// One registered test.
#[repr(C)]
pub struct TestCase {
    pub name: &'static str,
    pub run: fn() -> TestResult,
}

/// Registers test functions: `ontarget::register!(test_a, test_b);`.
#[macro_export]
macro_rules! register {
    ($($f:ident),* $(,)?) => {
        $(
            const _: () = {
                #[link_section = ".testcases"]
                #[used]
                static CASE: $crate::TestCase = $crate::TestCase { name: stringify!($f), run: $f };
            };
        )*
    };
}

/// Fails the test with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(alloc::format!($($arg)+));
        }
    };
    ($cond:expr) => {
        if !$cond {
            return Err(alloc::format!("assertion failed: {}", stringify!($cond)));
        }
    };
}

/// Fails the test unless `left == right`, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(alloc::format!(
                "{} == {} failed: left {:?}, right {:?}",
                stringify!($left),
                stringify!($right),
                l,
                r
            ));
        }
    }};
}

/// Pass and fail counts, carried from one image to the next (EL2 tests hand theirs to EL1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
}

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static CURRENT: AtomicPtr<TestCase> = AtomicPtr::new(core::ptr::null_mut());

extern "C" {
    static __testcases_start: u8;
    static __testcases_end: u8;
}

fn cases() -> &'static [TestCase] {
    let start = core::ptr::addr_of!(__testcases_start).cast::<TestCase>();
    let end = core::ptr::addr_of!(__testcases_end);
    let bytes = (end as usize).saturating_sub(start as usize);
    let len = bytes / core::mem::size_of::<TestCase>();
    // SAFETY: the linker script places only `TestCase` records (from `register!`) between the
    // two symbols, 8-byte aligned, and they live for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Runs every registered test, counting on from `prior`.
pub fn run_all(prior: Totals) -> Totals {
    PASSED.store(prior.passed, Ordering::Relaxed);
    FAILED.store(prior.failed, Ordering::Relaxed);
    let mut tests: Vec<&'static TestCase> = cases().iter().collect();
    tests.sort_by_key(|t| t.name);
    for test in tests {
        CURRENT.store(test as *const TestCase as *mut TestCase, Ordering::Release);
        let result = (test.run)();
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        match result {
            Ok(()) => {
                PASSED.fetch_add(1, Ordering::Relaxed);
                write_line(format_args!("test {} ... ok", test.name));
            }
            Err(reason) => {
                FAILED.fetch_add(1, Ordering::Relaxed);
                write_line(format_args!("test {} ... FAILED: {}", test.name, reason));
            }
        }
    }
    totals()
}

/// The counts so far.
pub fn totals() -> Totals {
    Totals {
        passed: PASSED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// Prints the closing line and exits QEMU: status 0 only if nothing failed.
pub fn finish(t: Totals) -> ! {
    write_line(format_args!("{} passed, {} failed", t.passed, t.failed));
    board::semihost::exit(if t.failed == 0 { 0 } else { 1 })
}

/// Crash hook: reports a panic or trap as the running test's failure and prints the closing
/// line. The caller exits with a failing status afterwards.
pub fn report_crash(reason: fmt::Arguments) {
    let current = CURRENT.swap(core::ptr::null_mut(), Ordering::AcqRel);
    let mut t = totals();
    t.failed += 1;
    if current.is_null() {
        write_line(format_args!("harness: crash outside any test: {}", reason));
    } else {
        // SAFETY: CURRENT only ever holds a pointer into the 'static test-case slice.
        let name = unsafe { (*current).name };
        write_line(format_args!("test {} ... FAILED: {}", name, reason));
    }
    write_line(format_args!("{} passed, {} failed", t.passed, t.failed));
}
