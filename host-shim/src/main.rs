//! The product host shim: the default demo.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::HostCall;
use host_shim::driver::{refuse_hypercalls, GuestDriver};
use host_shim::pages::HostPages;
use host_shim::{hvc, vm};

#[no_mangle]
fn host_image_main(_args: [u64; 4]) -> ! {
    log::info!("host shim up at EL{}", host_shim::current_el());
    let mut args: Vec<String> = Vec::new();
    board::semihost::for_each_arg(|a| args.push(a.to_string()));
    match args.get(1).map(String::as_str) {
        Some("scenario") => board::semihost::exit(run_scenarios(&args[2..], false)),
        Some("scenario-check") => board::semihost::exit(run_scenarios(&args[2..], true)),
        _ => {}
    }
    let code = match hvc::call(HostCall::Version, [0; 6]) {
        Ok([v, ..]) => {
            log::info!("hyp answers VERSION: ABI {}.{}", v >> 16, v & 0xffff);
            match demo() {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("demo failed: {e}");
                    1
                }
            }
        }
        Err(e) => {
            log::error!("VERSION call failed: {e}");
            1
        }
    };
    board::semihost::exit(code)
}

fn demo() -> Result<(), abi::Errno> {
    let (base, size) = vm::ram()?;
    let mut pages = HostPages::new(host_shim::free_memory_start() as u64, base + size);
    let v = vm::vm_create(VmType::Plain)?;
    let g = vm::gmem_create(v, 64 << 10, GmemFlags::MMAP | GmemFlags::NO_DIRECT_MAP)?;
    vm::memslot_create(
        v,
        &vm::SlotSpec {
            gpa: 0x8000_0000,
            size: 64 << 10,
            gmem: Some((g, 0)),
            uaddr: UserspaceAddr::None,
            flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
        },
    )?;
    let pool = pages.alloc_contiguous(32, 4096).ok_or(abi::Errno::ENOMEM)?;
    vm::donate(v, pool, 32)?;
    let mut d = GuestDriver::load(v, &mut pages)?;
    let r = d.write(0x8000_1000, 0x5a, &mut pages, &mut refuse_hypercalls)?;
    log::info!("guest write: {r:?}");
    let r = d.read(0x8000_1000, &mut pages, &mut refuse_hypercalls)?;
    log::info!("guest read: {r:?}");
    let pa = vm::map_gmem(g, 0x1000, false)?;
    // SAFETY: the hyp handed out this page of the gmem's mmap view; the host reads one byte.
    let b = unsafe { core::ptr::read_volatile(pa as *const u8) };
    log::info!("host reads gmem offset 0x1000 at pa 0x{pa:x}: 0x{b:02x}");
    log::info!("stats {:?}", vm::stats(v)?);
    Ok(())
}

/// `make scenario` / `make scenarios`: parse every file first (a parse error runs nothing), then
/// run each against its own VM. Exit status 0 only if every statement held.
fn run_scenarios(files: &[String], check: bool) -> i32 {
    let mut parsed = Vec::new();
    let mut buf = alloc::vec![0u8; 256 << 10];
    for f in files {
        let n = match board::semihost::read_file(f, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                board::println!("{f}: {e}");
                return 2;
            }
        };
        let Ok(text) = core::str::from_utf8(&buf[..n]) else {
            board::println!("{f}: not UTF-8");
            return 2;
        };
        match scenario::parse(text) {
            Ok(sc) => parsed.push((f, sc)),
            Err(e) => {
                board::println!("{f}: {e}");
                board::println!("0 passed, 1 failed");
                return 2;
            }
        }
    }
    let Ok((base, size)) = vm::ram() else {
        return 2;
    };
    let mut pages = HostPages::new(host_shim::free_memory_start() as u64, base + size);
    let mut total = host_shim::runner::Counts::default();
    for (f, sc) in &parsed {
        let c = host_shim::runner::run(f, sc, &mut pages, check);
        board::println!("   {}: {} passed, {} failed", f, c.passed, c.failed);
        total.passed += c.passed;
        total.failed += c.failed;
    }
    board::println!("{} passed, {} failed", total.passed, total.failed);
    i32::from(total.failed != 0)
}
