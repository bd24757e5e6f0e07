//! The console: a locked PL011 writer, the `log` backend on top of it, and an emergency path that
//! takes no lock (for crash reports and panics, which may happen while the lock is held).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::layout::PL011_BASE;
use crate::pl011::Pl011;

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: the PL011 of QEMU virt lives at PL011_BASE and is identity-mapped as device
        // memory by every image that prints (or reached with the MMU off).
        let uart = unsafe { Pl011::new(PL011_BASE) };
        uart.write_str(s);
        Ok(())
    }
}

/// Prints under the console lock.
pub fn print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = Uart.write_fmt(args);
}

/// Prints without taking the lock: for crash reports only.
pub fn emergency_print(args: fmt::Arguments) {
    let _ = Uart.write_fmt(args);
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

#[macro_export]
macro_rules! eprintln_emergency {
    ($($arg:tt)*) => { $crate::console::emergency_print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger {
    prefix: &'static str,
}

static LOGGER_INSTALLED: AtomicBool = AtomicBool::new(false);
static LOGGER: spin::Once<Logger> = spin::Once::new();

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            print(format_args!(
                "[{} {:5}] {}\n",
                self.prefix,
                record.level(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

/// Parses a level name as given to `make run LOG=...`; unknown names give `Info`.
pub fn parse_level(name: Option<&str>) -> log::LevelFilter {
    match name {
        Some("off") => log::LevelFilter::Off,
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    }
}

/// Installs the console as the `log` backend, each line prefixed with `prefix` (e.g. `hyp`).
pub fn init_logger(prefix: &'static str, level: log::LevelFilter) {
    if LOGGER_INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    let logger = LOGGER.call_once(|| Logger { prefix });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}
