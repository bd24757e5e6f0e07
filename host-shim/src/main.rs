//! The product host shim: its mode and files come from the host input blob that QEMU's generic
//! loader put at `board::layout::HOST_INPUT_BASE` (`tools/mkblob.py`; no semihosting, Trust rule
//! 11); without a blob it runs the demo. Every run ends with one verdict line on the console and
//! PSCI `SYSTEM_OFF` (`host_shim::verdict`).
//!
//! Modes (the blob's first argument):
//!
//! | mode | operands | what |
//! |---|---|---|
//! | `demo` (or no blob) | | the pKVM demo, each step checked; uses no introspection call |
//! | `scenario`, `scenario-check` | scenario file names | run the files (`-check`: the invariant checker after every statement) |
//! | `table` | one configuration file per row | the seed's table from live probes |
//! | `bench` | the file holding the host benchmark's ns | instruction-count benchmarks |
//! | `storm` | a seed, a number of calls, [checks every, [from call]] | the storm on target (`host_shim::storm`): random host calls and guest steps, the invariant checker and the page census every 100 calls and at the end |
//! | `introspection-enosys` | | passes only if every introspection call is answered `ENOSYS` (the `make run` hyp) |
//! | `semihost-probe` | a marker, a path | asks semihosting to print the marker and to create the file: passes only if both are refused with an undefined-instruction exception |
//! | `dma-probe` | `fenced` or `unfenced` | asks fw_cfg's DMA to write a host page: `fenced` passes only if the first touch of the device takes the hyp's abort, `unfenced` only if the byte arrives |
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::HostCall;
use board::hostinput::{BlobError, HostInput};
use board::layout::{HOST_INPUT_BASE, HOST_INPUT_END};
use host_shim::driver::GuestDriver;
use host_shim::pages::HostPages;
use host_shim::{hvc, verdict, vm};

#[no_mangle]
fn host_image_main(_args: [u64; 4]) -> ! {
    log::info!("host shim up at EL{}", host_shim::current_el());
    let code = match host_input() {
        Ok(None) => run_demo(),
        Ok(Some(input)) => run_mode(&input),
        Err(e) => {
            board::println!("{e}");
            2
        }
    };
    verdict::finish(code)
}

/// The host input blob, if QEMU loaded one.
fn host_input() -> Result<Option<HostInput<'static>>, BlobError> {
    let (base, size) = vm::ram().map_err(|_| BlobError::Length)?;
    if ((base + size) as usize) < HOST_INPUT_END {
        return Ok(None);
    }
    // SAFETY: [HOST_INPUT_BASE, HOST_INPUT_END) is host RAM (checked against the end of RAM)
    // that nothing in the host writes: the heap ends below it, the page allocator starts above
    // it (`host_shim::free_memory_start`). QEMU's loader wrote it before any CPU ran.
    let area: &'static [u8] = unsafe {
        core::slice::from_raw_parts(
            HOST_INPUT_BASE as *const u8,
            HOST_INPUT_END - HOST_INPUT_BASE,
        )
    };
    match HostInput::parse(area) {
        Ok(input) => Ok(Some(input)),
        Err(BlobError::NoBlob) => Ok(None),
        Err(e) => Err(e),
    }
}

fn run_mode(input: &HostInput<'static>) -> i32 {
    let args: Vec<&str> = input.args().collect();
    let operands = args.get(1..).unwrap_or(&[]);
    match args.first().copied() {
        Some("demo") => run_demo(),
        Some("scenario") => run_scenarios(input, operands, false),
        Some("scenario-check") => run_scenarios(input, operands, true),
        Some("table") => run_table(input, operands),
        Some("bench") => run_bench(operands.first().and_then(|f| input.file(f))),
        Some("introspection-enosys") => introspection_enosys(),
        Some("storm") => {
            let num = |i: usize, default: u64| match operands.get(i) {
                Some(v) => v.parse().ok(),
                None => Some(default),
            };
            let every = num(2, host_shim::storm::CHECK_EVERY);
            match (num(0, 1), num(1, 0), every, num(3, 0), host_pages()) {
                (Some(seed), Some(n), Some(every), Some(from), Some(mut pages))
                    if (2..=4).contains(&operands.len()) =>
                {
                    host_shim::storm::run(seed, n, every, from, &mut pages)
                }
                _ => usage("storm <seed> <calls> [<check every> [<from call>]]"),
            }
        }
        Some("semihost-probe") => match operands {
            [marker, path] => semihost_probe(marker, path),
            _ => usage("semihost-probe <marker> <path>"),
        },
        Some("dma-probe") => match operands {
            ["fenced"] => dma_probe(true),
            ["unfenced"] => dma_probe(false),
            _ => usage("dma-probe fenced|unfenced"),
        },
        Some(other) => {
            board::println!("host input: unknown mode {other:?}");
            2
        }
        None => run_demo(),
    }
}

fn usage(what: &str) -> i32 {
    board::println!("host input: usage: {what}");
    2
}

fn run_demo() -> i32 {
    match hvc::call(HostCall::Version, [0; 6]) {
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
    }
}

/// `introspection-enosys`: the `make run` hyp has no introspection calls: each must be answered
/// `ENOSYS`, whatever its arguments.
fn introspection_enosys() -> i32 {
    let mut failed = 0;
    for call in HostCall::INTROSPECTION {
        for args in [[0; 6], [1, 0x1000, 1, 0, 0, 0]] {
            let r = hvc::call(call, args);
            let ok = r == Err(abi::Errno::ENOSYS);
            board::println!(
                "{}  {}({:x?}) -> {:x?}",
                if ok { "ok  " } else { "FAIL" },
                call.name(),
                &args[..3],
                r
            );
            failed += u32::from(!ok);
        }
    }
    board::println!(
        "introspection calls: {} answered ENOSYS, {failed} answered otherwise",
        HostCall::INTROSPECTION.len() * 2 - failed as usize
    );
    i32::from(failed != 0)
}

/// One semihosting call (`HLT #0xF000`, operation in `w0`, parameter in `x1`) under the host's
/// probe: without `-semihosting` QEMU treats it as an undefined instruction, taken at EL1.
fn semihost_call(op: u64, param: u64) -> Result<u64, host_shim::exceptions::HostFault> {
    host_shim::exceptions::probe(|| semihost_hlt(op, param))
}

/// The attack's one instruction, kept out of line: `tools/check-no-semihosting.sh` allows an
/// `HLT` in the product host shim only inside a function of this name (the hostile-host probes).
#[inline(never)]
fn semihost_hlt(op: u64, param: u64) -> u64 {
    let r: u64;
    // SAFETY: a semihosting request: QEMU either serves it (it reads the parameter block, which
    // the caller keeps alive) or the CPU takes an undefined-instruction exception, which the
    // caller's armed probe catches and steps over.
    unsafe {
        core::arch::asm!("hlt #0xf000", inout("x0") op => r, in("x1") param, options(nostack));
    }
    r
}

/// `semihost-probe`: what a hostile host would try through semihosting: print `marker` on the
/// machine running QEMU (`SYS_WRITE0`) and create the file `path` there (`SYS_OPEN`, mode "w").
/// Passes only if both are undefined instructions. The marker is never printed here: the
/// wrapper checks that it does not appear in QEMU's output, and that the file does not exist.
fn semihost_probe(marker: &str, path: &str) -> i32 {
    const SYS_OPEN: u64 = 0x01;
    const SYS_WRITE0: u64 = 0x04;
    const MODE_W: u64 = 4;
    let mut text = marker.as_bytes().to_vec();
    text.push(0);
    let mut cpath = path.as_bytes().to_vec();
    cpath.push(0);
    let open_block = [cpath.as_ptr() as u64, MODE_W, path.len() as u64];
    let write = semihost_call(SYS_WRITE0, text.as_ptr() as u64);
    let open = semihost_call(SYS_OPEN, open_block.as_ptr() as u64);
    let mut failed = 0;
    for (what, r) in [
        ("SYS_WRITE0 of the marker", write),
        ("SYS_OPEN of the path", open),
    ] {
        match r {
            Err(f) if f.ec() == 0 => {
                board::println!(
                    "ok    semihosting {what}: undefined instruction (ESR 0x{:x})",
                    f.esr
                );
            }
            Err(f) => {
                board::println!(
                    "FAIL  semihosting {what}: exception ESR 0x{:x}, not UNDEF",
                    f.esr
                );
                failed += 1;
            }
            Ok(v) => {
                board::println!("FAIL  semihosting {what}: served (x0 = 0x{v:x})");
                failed += 1;
            }
        }
    }
    i32::from(failed != 0)
}

/// `dma-probe`: fw_cfg's DMA asked to write bytes into a host page.
fn dma_probe(fenced: bool) -> i32 {
    use host_shim::fwcfg;
    let Some(mut pages) = host_pages() else {
        return 2;
    };
    let Some(pa) = pages.alloc() else {
        return 2;
    };
    // SAFETY: a free page of host RAM, just allocated; nothing else uses it.
    let page = unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, 4096) };
    const FILL: u8 = 0xee;
    page.fill(FILL);
    let mut failed = 0;
    for (i, value) in [0x5au8, 0, 0xa7, 0xff].into_iter().enumerate() {
        let at = pa + 8 * i as u64;
        let r = fwcfg::dma_write(at, value);
        // SAFETY: `at` lies in the page above.
        let seen = unsafe { core::ptr::read_volatile(at as *const u8) };
        let ok = if fenced {
            // Stopped at the first touch of the device's register, by the hyp's abort.
            matches!(r, Err(f) if f.esr != fwcfg::NOT_A_FAULT
                && f.ec() == trap_frame::esr::EC_DABT_CURRENT
                && f.far == board::layout::FW_CFG_BASE as u64)
                && seen == FILL
        } else {
            r.is_ok() && seen == value
        };
        board::println!(
            "{}  dma-write 0x{value:02x} to pa 0x{at:x}: {:x?}, the byte there is now 0x{seen:02x}",
            if ok { "ok  " } else { "FAIL" },
            r
        );
        failed += u32::from(!ok);
    }
    i32::from(failed != 0)
}

/// The default demo: the pKVM flow, each step checked. Any step that goes otherwise fails the run.
fn demo() -> Result<(), abi::Errno> {
    use abi::flags::{ContentMode, ConvertTo};
    use abi::guest::{MEM_SHARE, MEM_UNSHARE};
    use host_shim::exceptions::probe_read;
    use host_shim::runner::forward_hypercall;

    let (base, size) = vm::ram()?;
    let mut pages = HostPages::new(
        host_shim::free_memory_start() as u64,
        host_shim::free_memory_end(base, size),
    );
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
    // The host does not know which page holds the secret (it learns that only once the guest
    // shares it, below), but it came from the pool the host donated: every page of it is out
    // of the host's reach, but for the pages of the guest's image the host loaded itself
    // (INIT_SHARED) that the guest has not touched yet (rule 9: they are the guest's from its
    // first touch; which ones it has touched by now depends on the image's layout).
    let image_shared: Vec<u64> = match d.memory {
        host_shim::driver::GuestMemory::Gmem { gmem, .. } => {
            (0..host_shim::driver::STEP_GUEST.len().div_ceil(4096) as u64)
                .filter_map(|i| vm::map_gmem(gmem, i * 4096, false).ok())
                .collect()
        }
        host_shim::driver::GuestMemory::HostShared { .. } => Vec::new(),
    };
    let pool_end = pool + pool_pages * 4096;
    let readable = (pool..pool_end)
        .step_by(4096)
        .filter(|p| !image_shared.contains(p))
        .filter(|&p| probe_read(p as usize).is_ok())
        .count();
    step(
        readable == 0,
        &alloc::format!(
            "the host's raw reads of the {pool_pages} donated pages (one holds the secret) all take an abort (the hyp's stage-2)"
        ),
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
    let phys = vm::map_gmem(g, 0x1000, false);
    let read = phys.map(read_byte);
    step(read == Ok(0x5a), "the host now reads 0x5a");
    let phys = phys?;
    step(
        (pool..pool_end).contains(&phys),
        &alloc::format!("the shared page, pa 0x{phys:x}, is one of the donated pages probed above"),
    );
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
    let returned = vm::vm_destroy(v)?;
    let bytes = pool_pages as usize * 4096;
    // SAFETY: the VM is gone; these pool pages are the host's again.
    let back = unsafe { core::slice::from_raw_parts(pool as *const u8, bytes) };
    // The pool, and the pages VmCreate and VcpuCreate took (the VM's heap's).
    let donated = pool_pages + abi::host::VM_CREATE_PAGES + abi::host::VCPU_CREATE_PAGES;
    step(
        returned == donated && back.iter().all(|&b| b == 0),
        &alloc::format!(
            "the VM is torn down: all {returned} pages donated for it come back to the host, \
             the pool's all zero"
        ),
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

/// Reads and parses scenario files (from the host input blob); a failure is printed and ends
/// the run.
fn parse_files(
    input: &HostInput<'static>,
    files: &[&str],
) -> Result<Vec<(String, scenario::Scenario)>, i32> {
    let mut parsed = Vec::new();
    for &f in files {
        let bytes = input.file(f).ok_or_else(|| {
            board::println!("{f}: not in the host input blob");
            2
        })?;
        let text = core::str::from_utf8(bytes).map_err(|_| {
            board::println!("{f}: not UTF-8");
            2
        })?;
        let sc = scenario::parse(text).map_err(|e| {
            board::println!("{f}: {e}");
            board::println!("0 passed, 1 failed");
            2
        })?;
        parsed.push((f.to_string(), sc));
    }
    Ok(parsed)
}

fn host_pages() -> Option<HostPages> {
    let (base, size) = vm::ram().ok()?;
    Some(HostPages::new(
        host_shim::free_memory_start() as u64,
        host_shim::free_memory_end(base, size),
    ))
}

/// `make bench`: instruction-count benchmarks; `convert_file` holds the host benchmark's ns.
fn run_bench(convert_file: Option<&[u8]>) -> i32 {
    let Some(mut pages) = host_pages() else {
        return 2;
    };
    let convert_ns = convert_file.and_then(|f| core::str::from_utf8(f).ok()?.trim().parse().ok());
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
fn run_table(input: &HostInput<'static>, files: &[&str]) -> i32 {
    let parsed = match parse_files(input, files) {
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
fn run_scenarios(input: &HostInput<'static>, files: &[&str], check: bool) -> i32 {
    let parsed = match parse_files(input, files) {
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
