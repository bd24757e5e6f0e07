//! From `_start` to the image's main: per-CPU data, vectors, console, DTB, EL2 MMU, heap and page
//! allocator. Then the image (product hyp or a test image) takes over through `hyp_image_main`.
//!
//! Secondary CPUs start only when the host asks (PSCI `CPU_ON`, relayed by `crate::psci`):
//! `hyp_secondary_rust_start` gives them the same per-CPU EL2 set-up as CPU 0
//! ([`cpu_el2_init`]) and enters the host at EL1 where it asked, under the host stage-2.
//!
//! The DTB also says which devices the host may reach ([`HostMmio`]): its console, the GIC
//! distributor and one redistributor frame per CPU; nothing else below RAM is ever mapped in
//! the host stage-2 (Trust rules 1 and 11).

use board::layout::{
    DEVICE_BASE, DEVICE_END, DTB_ADDR, GICD_BASE, GICD_SIZE, GICR_BASE, GICR_SIZE_PER_CPU,
    HOST_BASE, HYP_END, HYP_HEAP_SIZE, MAX_CPUS, PL011_BASE, PL011_SIZE, RAM_BASE,
};

use core::sync::atomic::Ordering;

use crate::arch::{self, cache, el1, mmu, vectors};
use crate::crash::fatal;
pub use crate::machine::{info, stack_top, BootInfo, HostMmio, MmioRegion};
use crate::{machine, mm, percpu};

const PAGE: usize = 4096;
const BLOCK_2M: usize = 2 << 20;
/// Pages set aside at the start of the page-allocator region for the EL2 page tables, which are
/// built before any allocator exists.
const BOOT_TABLE_PAGES: usize = 16;

/// Offset of `GICR_TYPER` in a redistributor's RD_base frame, its PLPIS bit, and the offset of
/// the SGI_base frame.
const GICR_TYPER: u64 = 0x8;
const GICR_TYPER_PLPIS: u32 = 1 << 0;
const GICR_SGI_BASE: u64 = 0x1_0000;

/// Whether the redistributor frame at `frame` implements LPIs.
fn redistributor_has_lpis(frame: u64) -> bool {
    // SAFETY: `frame` is a redistributor frame of the DTB inside the device window (checked by
    // `device_reg`), read at EL2 with the MMU off (device memory); GICR_TYPER is read-only and
    // reading it has no side effect.
    let typer = unsafe { core::ptr::read_volatile((frame + GICR_TYPER) as *const u32) };
    typer & GICR_TYPER_PLPIS != 0
}

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
}

extern "Rust" {
    /// Defined by each EL2 image with `#[no_mangle]`.
    fn hyp_image_main(info: &'static BootInfo) -> !;
}

struct BumpTables {
    next: usize,
    end: usize,
    used: [usize; BOOT_TABLE_PAGES],
    count: usize,
}

// SAFETY: pages come one at a time from the reserved boot-table area of the hyp region, which
// nothing else uses, each zeroed and handed out once (never freed, so never reused); RAM is
// identity-mapped (and the MMU still off), so `table(pa)` is `pa` itself, 4 KiB aligned.
unsafe impl hyp_mem::table::PhysMem for BumpTables {
    fn alloc_pages(&mut self, count: usize) -> Option<u64> {
        if count != 1 || self.next >= self.end || self.count >= BOOT_TABLE_PAGES {
            return None;
        }
        let pa = self.next;
        self.next += PAGE;
        // SAFETY: the page lies in the reserved boot-table area of the hyp region (MMU off).
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE) };
        self.used[self.count] = pa;
        self.count += 1;
        Some(pa as u64)
    }

    /// Building a fresh map frees nothing (only a failed build would, which is fatal): a freed
    /// page is simply not reused.
    fn free_pages(&mut self, _pa: u64, _count: usize) {}

    fn table(&self, pa: u64) -> *mut [u64; hyp_mem::table::ENTRIES] {
        pa as usize as *mut _
    }
}

/// What the hyp reads from the DTB.
struct DtbFacts {
    ram: (usize, usize),
    cpus: usize,
    host_mmio: HostMmio,
}

/// The first `reg` region of `node` (`index` picks a later one), rounded out to whole pages;
/// `None` unless it lies in the device window below RAM.
fn device_reg(node: Option<fdt::node::FdtNode>, index: usize) -> Option<(u64, u64)> {
    let r = node?.reg()?.nth(index)?;
    let base = r.starting_address as u64;
    let end = base.checked_add(r.size? as u64)?;
    let (base, end) = (base & !0xfff, end.checked_next_multiple_of(0x1000)?);
    let window = DEVICE_BASE as u64..=DEVICE_END as u64;
    (base < end && window.contains(&base) && window.contains(&end)).then_some((base, end))
}

fn region(name: &'static str, found: Option<(u64, u64)>, default: (usize, usize)) -> MmioRegion {
    let (base, end) = found.unwrap_or_else(|| {
        log::info!("{name}: not in the DTB, using 0x{:x}", default.0);
        (default.0 as u64, (default.0 + default.1) as u64)
    });
    MmioRegion { name, base, end }
}

fn host_mmio_from_dtb(fdt: &fdt::Fdt, cpus: usize) -> HostMmio {
    let gic = fdt.find_compatible(&["arm,gic-v3"]);
    let uart = fdt
        .chosen_stdout()
        .or_else(|| fdt.find_compatible(&["arm,pl011"]));
    // The DTB's redistributor region covers every frame the machine could have (QEMU: 123);
    // the host gets the frames of the CPUs that exist.
    let frames = cpus.clamp(1, MAX_CPUS) * GICR_SIZE_PER_CPU;
    let gicr = device_reg(gic, 1).map(|(b, e)| (b, e.min(b + frames as u64)));
    let gicr = region("GIC redistributors", gicr, (GICR_BASE, frames));
    let empty = MmioRegion {
        name: "",
        base: 0,
        end: 0,
    };
    let mut map = HostMmio {
        regions: [empty; 2 + MAX_CPUS],
        count: 0,
    };
    map.push(region(
        "console (PL011)",
        device_reg(uart, 0),
        (PL011_BASE, PL011_SIZE),
    ));
    map.push(region(
        "GIC distributor",
        device_reg(gic, 0),
        (GICD_BASE, GICD_SIZE),
    ));
    let per_cpu = GICR_SIZE_PER_CPU as u64;
    let lpis = (gicr.base..gicr.end)
        .step_by(GICR_SIZE_PER_CPU)
        .any(|f| f + per_cpu <= gicr.end && redistributor_has_lpis(f));
    if lpis {
        log::info!(
            "the GIC redistributors implement LPIs: the host gets only their SGI_base frames"
        );
        for f in (gicr.base..gicr.end).step_by(GICR_SIZE_PER_CPU) {
            if f + per_cpu <= gicr.end {
                map.push(MmioRegion {
                    name: "GIC redistributor (SGI_base)",
                    base: f + GICR_SGI_BASE,
                    end: f + per_cpu,
                });
            }
        }
    } else {
        map.push(gicr);
    }
    map
}

trait ChosenStdout<'a> {
    fn chosen_stdout(&self) -> Option<fdt::node::FdtNode<'_, 'a>>;
}

impl<'a> ChosenStdout<'a> for fdt::Fdt<'a> {
    fn chosen_stdout(&self) -> Option<fdt::node::FdtNode<'_, 'a>> {
        self.find_node("/chosen")?;
        self.chosen().stdout()
    }
}

fn read_dtb() -> DtbFacts {
    // SAFETY: QEMU places a valid flattened device tree at the RAM base when the image leaves
    // room for it (the hyp links at 0x4020_0000 for that reason); `from_ptr` checks its header.
    let fdt = match unsafe { fdt::Fdt::from_ptr(DTB_ADDR as *const u8) } {
        Ok(fdt) => fdt,
        Err(e) => fatal(format_args!("no device tree at 0x{DTB_ADDR:x}: {e:?}")),
    };
    let cpus = fdt.find_node("/cpus").map_or(1, |n| {
        n.children()
            .filter(|c| c.name.split('@').next() == Some("cpu"))
            .count()
    });
    let host_mmio = host_mmio_from_dtb(&fdt, cpus);
    let ram = ram_from_dtb(&fdt);
    DtbFacts {
        ram,
        cpus,
        host_mmio,
    }
}

fn ram_from_dtb(fdt: &fdt::Fdt) -> (usize, usize) {
    let mut base = usize::MAX;
    let mut end = 0usize;
    for region in fdt.memory().regions() {
        let start = region.starting_address as usize;
        let size = region.size.unwrap_or(0);
        base = base.min(start);
        end = end.max(start.saturating_add(size));
    }
    if base != RAM_BASE || end <= HYP_END {
        fatal(format_args!(
            "unexpected memory in the DTB: 0x{base:x}..0x{end:x} (need RAM at 0x{RAM_BASE:x} beyond 0x{HYP_END:x})"
        ));
    }
    (base, end - base)
}

/// The per-CPU EL2 set-up every CPU makes before anything can trap (CPU 0 at boot, each
/// secondary when the hyp starts it): per-CPU data in `TPIDR_EL2`, the vectors in `VBAR_EL2`,
/// the PMU and `MDCR_EL2`. False for a CPU the hyp is not built for. The EL2 MMU comes on
/// before this (CPU 0 builds the tables; secondaries turn on the same ones in their entry);
/// the EL1-facing controls are set by `arch::el1::enter` on the way into the host.
fn cpu_el2_init(cpu: usize) -> bool {
    if !percpu::init(cpu) {
        return false;
    }
    vectors::install(crate::trap::handle_trap);
    true
}

#[no_mangle]
extern "C" fn hyp_rust_start(cpu: usize) -> ! {
    if !cpu_el2_init(cpu) {
        arch::halt();
    }
    percpu::this_cpu().power.store(percpu::ON, Ordering::SeqCst);
    board::console::init_logger("hyp", board::console::parse_level(option_env!("HYP_LOG")));
    if arch::current_el() != 2 {
        fatal(format_args!(
            "the hyp must start at EL2, found EL{}",
            arch::current_el()
        ));
    }
    let dtb = read_dtb();
    let (ram_base, ram_size) = dtb.ram;
    let image_end = core::ptr::addr_of!(__image_end) as usize;
    let stack_top = stack_top(cpu);
    let heap_start = image_end.next_multiple_of(BLOCK_2M);
    let heap_end = heap_start + HYP_HEAP_SIZE;
    let tables_start = heap_end;
    let frames_start = tables_start + BOOT_TABLE_PAGES * PAGE;
    if frames_start >= HYP_END {
        fatal(format_args!("hyp image too large: ends at 0x{image_end:x}"));
    }

    let tables = BumpTables {
        next: tables_start,
        end: frames_start,
        used: [0; BOOT_TABLE_PAGES],
        count: 0,
    };
    let image = hyp_mem::el2::ImageLayout {
        start: core::ptr::addr_of!(__image_start) as u64,
        text_end: core::ptr::addr_of!(__text_end) as u64,
        rodata_end: core::ptr::addr_of!(__rodata_end) as u64,
    };
    let map = match hyp_mem::el2::build_identity_map(
        tables,
        mmu::El2Tlb,
        (ram_base as u64, (ram_base + ram_size) as u64),
        (DEVICE_BASE as u64, DEVICE_END as u64),
        &image,
    ) {
        Ok(map) => map,
        Err(e) => fatal(format_args!("building the EL2 page tables failed: {e:?}")),
    };
    let tables = map.mm();
    mmu::enable(map.root_pa() as usize, &tables.used[..tables.count]);

    // SAFETY: [heap_start, heap_end) lies in the hyp region after the image and its stacks and
    // before the page-allocator region; nothing else uses it; it is mapped read-write.
    unsafe { mm::init_heap(heap_start, heap_end) };
    mm::init_frames(frames_start, HYP_END);
    crate::arch::pmu::init();
    let info = machine::set_info(BootInfo {
        cpu,
        ram_base,
        ram_size,
        image_end,
        heap: (heap_start, heap_end),
        frames: (frames_start, HYP_END),
        el2_stack_top: stack_top,
        cpus: dtb.cpus,
        host_mmio: dtb.host_mmio,
    });
    let host_mmio = if cfg!(feature = "unfenced-devices") {
        // Only for the check that fw_cfg DMA really writes (`make dma-check`): every address
        // below RAM, as the hyp once mapped.
        alloc::vec![(0, RAM_BASE as u64)]
    } else {
        info.host_mmio
            .regions()
            .iter()
            .map(|r| (r.base, r.end))
            .collect()
    };
    let config = hyp_calls::HypConfig {
        ram_base: ram_base as u64,
        ram_size: ram_size as u64,
        hyp_end: HYP_END as u64,
        host_mmio,
    };
    if let Err(e) = crate::glue::init(config) {
        fatal(format_args!("page ownership table: {e}"));
    }
    log::info!(
        "EL{} on CPU {}, RAM 0x{:x}..0x{:x} ({} MiB), MMU {}",
        arch::current_el(),
        cpu,
        ram_base,
        info.ram_end(),
        ram_size >> 20,
        if mmu::enabled() { "on" } else { "off" }
    );
    for r in info.host_mmio.regions() {
        log::debug!("host device: {} 0x{:x}..0x{:x}", r.name, r.base, r.end);
    }
    if info.cpus > MAX_CPUS {
        log::info!(
            "the DTB lists {} CPUs; the hyp serves {MAX_CPUS}",
            info.cpus
        );
    }
    log::debug!(
        "image ends 0x{image_end:x}; heap 0x{heap_start:x}..0x{heap_end:x}; pages 0x{frames_start:x}..0x{HYP_END:x} ({} free)",
        mm::free_page_count()
    );
    // SAFETY: every EL2 image defines `hyp_image_main` with this signature.
    unsafe { hyp_image_main(info) }
}

/// A secondary CPU the hyp started (relaying the host's `CPU_ON`), running at EL2 with its MMU
/// on and its stack set by `arch::boot`'s secondary entry.
#[no_mangle]
extern "C" fn hyp_secondary_rust_start(cpu: usize) -> ! {
    if cpu != arch::boot::cpu_index() || !cpu_el2_init(cpu) {
        arch::halt();
    }
    crate::arch::pmu::init();
    // Now set up at EL2: enters the host at the entry point its `CPU_ON` asked for (`psci.rs`),
    // `x0` = its context id.
    let slot = percpu::this_cpu();
    let entry = slot.host_entry.load(Ordering::SeqCst);
    let context = slot.host_context.load(Ordering::SeqCst);
    slot.power.store(percpu::ON, Ordering::SeqCst);
    log::debug!(
        "CPU {} enters the host at EL1: 0x{entry:x} (x0 = 0x{context:x})",
        slot.cpu()
    );
    enter_host_at(entry, [context, 0, 0, 0])
}

/// Enters the host at EL1 on this CPU at `entry`, `x0..x3 = args`, under the host stage-2,
/// with this CPU's EL2 stack reset for its traps.
pub fn enter_host_at(entry: u64, args: [u64; 4]) -> ! {
    let Some((vttbr, vtcr)) = crate::glue::host_stage2_regs() else {
        fatal(format_args!("no host stage-2"));
    };
    let cpu = percpu::this_cpu().cpu();
    el1::enter(entry, args, stack_top(cpu) as u64, vttbr, vtcr)
}

/// Copies an EL1 image to the host region and enters it at EL1 with `x0..x3 = args`.
pub fn enter_host(image: &[u8], args: [u64; 4]) -> ! {
    let Some(info) = info() else {
        fatal(format_args!("enter_host before boot"));
    };
    if image.len() > info.ram_end() - HOST_BASE {
        fatal(format_args!(
            "host image of {} bytes does not fit",
            image.len()
        ));
    }
    // SAFETY: the host region starts at HOST_BASE, is RAM identity-mapped at EL2 and is not used
    // by the hyp; the length was checked against the end of RAM.
    unsafe {
        core::ptr::copy_nonoverlapping(image.as_ptr(), HOST_BASE as *mut u8, image.len());
    }
    cache::clean_invalidate_dcache(HOST_BASE, image.len());
    cache::invalidate_icache();
    log::info!(
        "entering the host at EL1 under its stage-2: 0x{HOST_BASE:x} ({} KiB image)",
        image.len() / 1024
    );
    enter_host_at(HOST_BASE as u64, args)
}
