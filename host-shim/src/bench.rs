//! `make bench`: instruction counts on QEMU (`-icount shift=0`), measured by the guest around its
//! own operation with the PMU counters the hyp set up (counter 0: EL2 instructions, counter 1:
//! every level). Every figure is a difference of two counter reads in the guest, minus the cost
//! of the reads themselves (the `empty` measurement). A calibration run of exactly 1,000 `nop`s
//! must count exactly 1,000, or the run fails.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::cmd::*;
use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::guest::{HYP_MEMINFO, MEM_SHARE};
use abi::{Errno, PAGE_SIZE};

use crate::driver::GuestDriver;
use crate::pages::HostPages;
use crate::runner::forward_hypercall;
use crate::vm::{self, SlotSpec, VmId};

/// Whether a figure meets its target, given the figure and a lookup of the others.
type TargetCheck = fn(u64, &dyn Fn(&str) -> Option<u64>) -> bool;

/// One figure.
pub struct Figure {
    pub key: &'static str,
    pub value: u64,
    pub levels: &'static str,
    pub what: String,
    /// The target, as text, and whether it was met (`None`: no target).
    pub target: Option<(&'static str, bool)>,
}

struct Bvm {
    vm: VmId,
    guest: GuestDriver,
}

const GPA: u64 = 0x8000_0000;

fn err(e: Errno) -> String {
    format!("{e}")
}

fn make_vm(
    pages: &mut HostPages,
    t: VmType,
    gmem_pages: u64,
    flags: GmemFlags,
    slot_flags: MemslotFlags,
    pool: u64,
    blocks: bool,
) -> Result<(Bvm, vm::GmemId), String> {
    let v = vm::vm_create(t).map_err(|e| format!("vm::vm_create: {e}"))?;
    // The guest reads the PMU around its operations: without this its PMU accesses are UNDEF.
    crate::hvc::call(abi::host::HostCall::VmOpenPmu, [v.0, 0, 0, 0, 0, 0])
        .map_err(|e| format!("crate::hvc::call: {e}"))?;
    let size = gmem_pages * PAGE_SIZE;
    let g = vm::gmem_create(v, size, flags).map_err(|e| format!("vm::gmem_create: {e}"))?;
    let spec = SlotSpec {
        gpa: GPA,
        size,
        gmem: Some((g, 0)),
        uaddr: UserspaceAddr::None,
        flags: slot_flags,
    };
    vm::memslot_create(v, &spec).map_err(|e| format!("vm::memslot_create: {e}"))?;
    donate(pages, v, pool, blocks)?;
    let guest = GuestDriver::load(v, t, pages).map_err(|e| format!("GuestDriver::load: {e}"))?;
    Ok((Bvm { vm: v, guest }, g))
}

/// Donates `n` pages: in 2 MiB-aligned chunks if `blocks` (so uniform gmem ranges are mapped
/// as 2 MiB blocks), else in runs of 511 pages, which never make a block (so every fault is a
/// 4 KiB fault).
fn donate(pages: &mut HostPages, v: VmId, n: u64, blocks: bool) -> Result<(), String> {
    let (run, align) = if blocks {
        (512, 2 << 20)
    } else {
        (511, PAGE_SIZE)
    };
    let mut left = n;
    while left > 0 {
        let chunk = left.min(run);
        let pa = pages
            .alloc_contiguous(chunk, align)
            .ok_or("host out of memory")?;
        vm::donate(v, pa, chunk).map_err(|e| format!("vm::donate: {e}"))?;
        left -= chunk;
    }
    Ok(())
}

fn pkvm_flags() -> (GmemFlags, MemslotFlags) {
    (
        GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY,
        MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
    )
}

impl Bvm {
    fn step(&mut self, pages: &mut HostPages, op: u64, args: [u64; 4]) -> Result<[u64; 2], String> {
        let (v, vcpu) = (self.vm, self.guest.vcpu);
        let r = self
            .guest
            .step(op, args, pages, &mut |f, a| {
                forward_hypercall(v, vcpu, f, a)
            })
            .map_err(|e| format!("bench.rs:108: {e}"))?;
        if r.status != Some(STATUS_OK) {
            return Err(format!("guest step failed: {r:?}"));
        }
        Ok(r.results)
    }

    /// (EL2, all levels) of one operation.
    fn measure(
        &mut self,
        pages: &mut HostPages,
        what: u64,
        a: [u64; 3],
    ) -> Result<(u64, u64), String> {
        let r = self.step(pages, OP_MEASURE, [what, a[0], a[1], a[2]])?;
        Ok((r[0], r[1]))
    }

    fn destroy(self) {
        let _ = vm::vm_destroy(self.vm);
    }
}

fn fig(key: &'static str, value: u64, levels: &'static str, what: String) -> Figure {
    Figure {
        key,
        value,
        levels,
        what,
        target: None,
    }
}

/// Runs every benchmark. `Err` if the calibration does not count exactly.
pub fn run_all(pages: &mut HostPages, convert_1g_ns: Option<u64>) -> Result<Vec<Figure>, String> {
    let mut out = Vec::new();
    let (gf, sf) = pkvm_flags();

    // Calibration and the pKVM fault.
    let (mut b, _) = make_vm(pages, VmType::Pkvm, 1024, gf, sf, 1100, false)?;
    let (_, base) = b.measure(pages, MEASURE_EMPTY, [0; 3])?;
    let (e_nop, t_nop) = b.measure(pages, MEASURE_NOPS, [0; 3])?;
    let nops = t_nop - base;
    out.push(fig(
        "calibration_nops",
        nops,
        "all",
        format!("{MEASURE_NOPS_COUNT} nops in the guest (must count exactly {MEASURE_NOPS_COUNT})"),
    ));
    if nops != MEASURE_NOPS_COUNT || e_nop != 0 {
        return Err(format!(
            "calibration failed: {MEASURE_NOPS_COUNT} nops counted {nops} (EL2 {e_nop})"
        ));
    }
    // Warm up the table pages of the region, then time a first touch of a new page.
    b.step(pages, OP_WRITE, [GPA, 1, 0, 0])?;
    let (e, t) = b.measure(pages, MEASURE_WRITE, [GPA + 0x5000, 0, 0])?;
    out.push(fig("fault_4k_el2", e, "EL2", "first-touch 4 KiB fault of a pkvm guest, served at EL2 from the pool, vector to eret (pool pages zeroed on donation, table pages already there; the pool has no 2 MiB chunk, so no block)".into()));
    out.push(fig(
        "fault_4k_total",
        t - base,
        "all",
        "the same fault as the guest sees it around its store".into(),
    ));
    let (e, _) = b.measure(pages, MEASURE_HVC, [HYP_MEMINFO, 0, 0])?;
    out.push(fig(
        "null_hvc_el2",
        e,
        "EL2",
        "HYP_MEMINFO answered at EL2".into(),
    ));
    let (_, t) = b.measure(pages, MEASURE_READ, [0x9000_0000, 0, 0])?;
    out.push(fig(
        "exit_to_host_roundtrip_total",
        t - base,
        "all",
        "an MMIO load exits to the host shim and back".into(),
    ));
    // MEM_SHARE on touched pages.
    b.step(pages, OP_TOUCH, [GPA + (512 << 12), 513, PAGE_SIZE, 0])?;
    let (e, _) = b.measure(
        pages,
        MEASURE_MEM_RANGE,
        [MEM_SHARE, GPA + (1024 << 12) - PAGE_SIZE, 1],
    )?;
    out.push(fig("mem_share_1_el2", e, "EL2", "MEM_SHARE of 1 touched page: guest call, exit, host's GuestConvert and attribute calls, re-entry".into()));
    let (e, _) = b.measure(
        pages,
        MEASURE_MEM_RANGE,
        [MEM_SHARE, GPA + (512 << 12), 512],
    )?;
    out.push(fig(
        "mem_share_512_per_page_el2",
        e / 512,
        "EL2",
        "MEM_SHARE of 512 touched pages (two 256-page calls), divided by 512".into(),
    ));
    b.destroy();

    // The upstream way: the host serves the fault.
    let (mut b, _) = make_vm(pages, VmType::Pkvm, 64, gf, sf, 64, false)?;
    let (_, base2) = b.measure(pages, MEASURE_EMPTY, [0; 3])?;
    b.step(pages, OP_WRITE, [GPA, 1, 0, 0])?;
    vm::set_fault_mode(b.vm, true).map_err(|e| format!("vm::set_fault_mode: {e}"))?;
    let (_, t) = b.measure(pages, MEASURE_WRITE, [GPA + 0x5000, 0, 0])?;
    out.push(fig("fault_4k_exit_to_host_total", t - base2, "all", "the same first touch served the upstream way: exit to the host, which donates and maps the page by hypercall, then re-runs the vCPU".into()));
    b.destroy();

    // coco, Option 1: a private first touch through the validating get_pfn.
    let (mut b, _) = make_vm(pages, VmType::Coco, 64, gf, sf, 64, false)?;
    b.step(pages, OP_WRITE, [GPA, 1, 0, 0])?;
    let (e, _) = b.measure(pages, MEASURE_WRITE, [GPA + 0x5000, 0, 0])?;
    out.push(fig(
        "fault_4k_el2_coco",
        e,
        "EL2",
        "first-touch private fault of a coco guest (Option 1, validating get_pfn)".into(),
    ));
    b.destroy();

    // The same with 64 memslots (the limit) and a gmem of 10,000 alternating shareability
    // ranges, whose metadata the VM's heap holds (about 230 KB: the pool gets 128 pages more).
    let (mut b, g) = make_vm(pages, VmType::Coco, 10_000, gf, sf, 64 + 128, false)?;
    for i in (1..10_000u64).step_by(2) {
        vm::convert(
            g,
            i * PAGE_SIZE,
            PAGE_SIZE,
            ConvertTo::Shared,
            ContentMode::Zero,
        )
        .map_err(|(e, _)| err(e))?;
    }
    // The VM has two already: the gmem one and the guest image's.
    let extra = abi::host::MEMSLOTS_PER_VM_MAX as u64 - 2;
    let small = vm::gmem_create(b.vm, extra * PAGE_SIZE, gf)
        .map_err(|e| format!("vm::gmem_create: {e}"))?;
    for i in 0..extra {
        let spec = SlotSpec {
            gpa: 0x1000_0000 + i * (2 << 20),
            size: PAGE_SIZE,
            gmem: Some((small, i * PAGE_SIZE)),
            uaddr: UserspaceAddr::None,
            flags: sf,
        };
        vm::memslot_create(b.vm, &spec).map_err(|e| format!("vm::memslot_create: {e}"))?;
    }
    let mid = GPA + 5000 * PAGE_SIZE; // an even page: private (GUEST)
    b.step(pages, OP_WRITE, [mid - 2 * PAGE_SIZE, 1, 0, 0])?;
    let (e, _) = b.measure(pages, MEASURE_WRITE, [mid, 0, 0])?;
    out.push(fig(
        "fault_4k_el2_many",
        e,
        "EL2",
        "fault_4k_el2_coco with 64 memslots and 10,000 alternating shareability ranges".into(),
    ));
    b.destroy();

    // Faults to touch 1 GiB.
    let gib_pages = 262_144u64;
    let (mut b, _) = make_vm(
        pages,
        VmType::Pkvm,
        gib_pages,
        gf,
        sf,
        gib_pages + 1024,
        true,
    )?;
    // The guest's first step brings its own image in (it touches every page of it at boot);
    // only the touch below is counted.
    b.step(pages, OP_HVC, [HYP_MEMINFO, 0, 0, 0])?;
    let before = vm::stats(b.vm).map_err(|e| format!("vm::stats: {e}"))?;
    b.step(pages, OP_TOUCH, [GPA, gib_pages, PAGE_SIZE, 0])?;
    let after = vm::stats(b.vm).map_err(|e| format!("vm::stats: {e}"))?;
    out.push(fig("faults_to_touch_1g", after.faults_served - before.faults_served, "count", "stage-2 faults while the guest writes one byte in every 4 KiB page of a uniform 1 GiB gmem".into()));
    b.destroy();

    if let Some(ns) = convert_1g_ns {
        out.push(fig("convert_1g_host", ns, "host ns", "nanoseconds on the host to convert a 1 GiB gmem to private (criterion benchmark of the core)".into()));
    }

    // The targets.
    let get = |k: &str, out: &[Figure]| out.iter().find(|f| f.key == k).map(|f| f.value);
    let targets: [(&'static str, &'static str, TargetCheck); 6] = [
        ("fault_4k_el2", "<= 200", |v, _| v <= 200),
        (
            "fault_4k_exit_to_host_total",
            ">= 5 x fault_4k_total",
            |v, g| g("fault_4k_total").is_some_and(|t| v >= 5 * t),
        ),
        ("null_hvc_el2", "<= 60", |v, _| v <= 60),
        ("mem_share_512_per_page_el2", "<= 40", |v, _| v <= 40),
        ("faults_to_touch_1g", "<= 512", |v, _| v <= 512),
        ("fault_4k_el2_many", "<= 1.5 x fault_4k_el2_coco", |v, g| {
            g("fault_4k_el2_coco").is_some_and(|c| 2 * v <= 3 * c)
        }),
    ];
    let snapshot: Vec<(&'static str, u64)> = out.iter().map(|f| (f.key, f.value)).collect();
    let lookup = |k: &str| snapshot.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    for (key, text, met) in targets {
        if let Some(v) = get(key, &out) {
            let ok = met(v, &lookup);
            if let Some(f) = out.iter_mut().find(|f| f.key == key) {
                f.target = Some((text, ok));
            }
        }
    }
    Ok(out)
}

/// Prints the table and the `BENCH-JSON` line the Makefile turns into `target/bench.json`.
pub fn print(figs: &[Figure]) {
    board::println!("| benchmark | instructions | levels | target | what was counted |");
    board::println!("|---|---:|---|---|---|");
    for f in figs {
        let target = match f.target {
            Some((t, true)) => format!("{t}: met"),
            Some((t, false)) => format!("{t}: NOT met"),
            None => String::new(),
        };
        board::println!(
            "| {} | {} | {} | {} | {} |",
            f.key,
            f.value,
            f.levels,
            target,
            f.what
        );
    }
    let mut json = String::from("{");
    for (i, f) in figs.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("\"{}\":{}", f.key, f.value));
    }
    json.push('}');
    board::println!("BENCH-JSON {json}");
}
