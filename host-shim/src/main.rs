//! The product host shim: the default demo.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::HostCall;
use host_shim::driver::GuestDriver;
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
        Some("table") => board::semihost::exit(run_table(&args[2..])),
        Some("bench") => board::semihost::exit(run_bench(args.get(2).map(String::as_str))),
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

/// The default demo: the pKVM flow, each step checked. Any step that goes otherwise fails the run.
fn demo() -> Result<(), abi::Errno> {
    use abi::flags::{ContentMode, ConvertTo};
    use abi::guest::{MEM_SHARE, MEM_UNSHARE};
    use host_shim::exceptions::probe_read;
    use host_shim::runner::forward_hypercall;

    let (base, size) = vm::ram()?;
    let mut pages = HostPages::new(host_shim::free_memory_start() as u64, base + size);
    let mut failures = 0;
    let mut step = |ok: bool, what: &str| {
        if ok {
            log::info!("  [ok]   {what}");
        } else {
            log::error!("  [FAIL] {what}");
            failures += 1;
        }
    };

    log::info!("pKVM demo: a protected VM with a 64 KiB guest_memfd (MMAP, TRACK_SHAREABILITY)");
    let v = vm::vm_create(VmType::Pkvm)?;
    let g = vm::gmem_create(v, 64 << 10, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY)?;
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
    let pool_pages = 32;
    let pool = pages
        .alloc_contiguous(pool_pages, 4096)
        .ok_or(abi::Errno::ENOMEM)?;
    vm::donate(v, pool, pool_pages)?;
    let mut d = GuestDriver::load(v, VmType::Pkvm, &mut pages)?;
    let vcpu = d.vcpu;
    let h = &mut |f, a| forward_hypercall(v, vcpu, f, a);
    let secret_ipa = 0x8000_1000;

    let r = d.write(secret_ipa, 0x5a, &mut pages, h)?;
    let pa = vm::map_gmem(g, 0x1000, false).err();
    step(
        r.status == Some(0),
        "the guest writes its secret 0x5a at IPA 0x80001000",
    );
    step(
        pa == Some(abi::Errno::EFAULT),
        "the host's read through the mmap view gets SIGBUS",
    );
    let phys = host_phys(g, 0x1000)?;
    let raw = probe_read(phys as usize);
    step(
        raw.is_err(),
        &alloc::format!("the host's raw read of pa 0x{phys:x} takes an abort (the hyp's stage-2)"),
    );
    let r = d.step(
        abi::cmd::OP_MEM_RANGE,
        [MEM_SHARE, secret_ipa, 1, 0],
        &mut pages,
        h,
    )?;
    step(
        r.results[0] == 0,
        "the guest shares the page (MEM_SHARE, converted by the host)",
    );
    let read = vm::map_gmem(g, 0x1000, false).map(read_byte);
    step(read == Ok(0x5a), "the host now reads 0x5a");
    vm::pin(g, 0x1000)?;
    let r = d.step(
        abi::cmd::OP_MEM_RANGE,
        [MEM_UNSHARE, secret_ipa, 1, 0],
        &mut pages,
        h,
    )?;
    step(
        r.results[0] == abi::guest::SMCCC_INVALID_PARAMETER,
        "the host pins the page: the guest's MEM_UNSHARE is refused",
    );
    vm::unpin(g, 0x1000)?;
    let r = d.step(
        abi::cmd::OP_MEM_RANGE,
        [MEM_UNSHARE, secret_ipa, 1, 0],
        &mut pages,
        h,
    )?;
    step(
        r.results[0] == 0,
        "after the unpin, the guest's MEM_UNSHARE succeeds",
    );
    step(
        vm::map_gmem(g, 0x1000, false) == Err(abi::Errno::EFAULT)
            && probe_read(phys as usize).is_err(),
        "the host is refused again (SIGBUS, and an abort on a raw read)",
    );
    step(
        vm::convert(g, 0x1000, 4096, ConvertTo::Shared, ContentMode::Preserve)
            == Err((abi::Errno::EPERM, 0)),
        "the host cannot make the page shared on its own (EPERM)",
    );
    step(
        vm::check_invariants() == Ok(0),
        "the ownership invariant checker finds nothing wrong",
    );
    let returned = vm::vm_destroy(v)?;
    let bytes = pool_pages as usize * 4096;
    // SAFETY: the VM is gone; these pool pages are the host's again.
    let back = unsafe { core::slice::from_raw_parts(pool as *const u8, bytes) };
    step(
        returned == pool_pages && back.iter().all(|&b| b == 0),
        &alloc::format!("the VM is torn down: {returned} pages come back to the host, all zero"),
    );
    step(
        vm::check_invariants() == Ok(0),
        "and the invariants still hold",
    );
    if failures == 0 {
        log::info!("pKVM demo: every step went as expected");
        Ok(())
    } else {
        log::error!("pKVM demo: {failures} step(s) went otherwise");
        Err(abi::Errno::EINVAL)
    }
}

fn read_byte(pa: u64) -> u8 {
    host_shim::exceptions::probe_read(pa as usize).unwrap_or(0xff)
}

fn host_phys(g: vm::GmemId, offset: u64) -> Result<u64, abi::Errno> {
    hvc::call(HostCall::GmemPhys, [g.0, offset, 0, 0, 0, 0]).map(|r| r[0])
}

/// Reads and parses scenario files; a failure is printed and ends the run.
fn parse_files(files: &[String]) -> Result<Vec<(String, scenario::Scenario)>, i32> {
    let mut parsed = Vec::new();
    let mut buf = alloc::vec![0u8; 256 << 10];
    for f in files {
        let n = board::semihost::read_file(f, &mut buf).map_err(|e| {
            board::println!("{f}: {e}");
            2
        })?;
        let text = core::str::from_utf8(&buf[..n]).map_err(|_| {
            board::println!("{f}: not UTF-8");
            2
        })?;
        let sc = scenario::parse(text).map_err(|e| {
            board::println!("{f}: {e}");
            board::println!("0 passed, 1 failed");
            2
        })?;
        parsed.push((f.clone(), sc));
    }
    Ok(parsed)
}

fn host_pages() -> Option<HostPages> {
    let (base, size) = vm::ram().ok()?;
    Some(HostPages::new(
        host_shim::free_memory_start() as u64,
        base + size,
    ))
}

/// `make bench`: instruction-count benchmarks; `convert_file` holds the host benchmark's ns.
fn run_bench(convert_file: Option<&str>) -> i32 {
    let Some(mut pages) = host_pages() else {
        return 2;
    };
    let convert_ns = convert_file.and_then(|f| {
        let mut buf = [0u8; 64];
        let n = board::semihost::read_file(f, &mut buf).ok()?;
        core::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    });
    match host_shim::bench::run_all(&mut pages, convert_ns) {
        Ok(figs) => {
            host_shim::bench::print(&figs);
            0
        }
        Err(e) => {
            board::println!("bench: {e}");
            1
        }
    }
}

/// `make table`: one configuration file per row, named `<use_case>.scn`.
fn run_table(files: &[String]) -> i32 {
    let parsed = match parse_files(files) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(mut pages) = host_pages() else {
        return 2;
    };
    let mut rows = Vec::new();
    for (f, sc) in &parsed {
        let name = f
            .rsplit('/')
            .next()
            .unwrap_or(f)
            .trim_end_matches(".scn")
            .to_string();
        match host_shim::table::probe_row(sc, &mut pages) {
            Ok(row) => {
                for line in &row.evidence {
                    log::debug!("{name}: {line}");
                }
                rows.push((name, row));
            }
            Err(e) => {
                board::println!("{f}: {e}");
                return 1;
            }
        }
    }
    host_shim::table::print(&rows);
    0
}

/// `make scenario` / `make scenarios`: parse every file first (a parse error runs nothing), then
/// run each against its own VM. Exit status 0 only if every statement held.
fn run_scenarios(files: &[String], check: bool) -> i32 {
    let parsed = match parse_files(files) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(mut pages) = host_pages() else {
        return 2;
    };
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
