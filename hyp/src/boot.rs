//! From `_start` to the image's main: per-CPU data, vectors, console, DTB, EL2 MMU, heap and page
//! allocator. Then the image (product hyp or a test image) takes over through `hyp_image_main`.

use board::layout::{
    DEVICE_BASE, DEVICE_END, DTB_ADDR, HOST_BASE, HYP_END, HYP_HEAP_SIZE, HYP_STACK_SIZE, RAM_BASE,
};

use crate::arch::{self, cache, el1, mmu, vectors};
use crate::crash::fatal;
use crate::{mm, percpu};

const PAGE: usize = 4096;
const BLOCK_2M: usize = 2 << 20;
/// Pages set aside at the start of the page-allocator region for the EL2 page tables, which are
/// built before any allocator exists.
const BOOT_TABLE_PAGES: usize = 16;

/// What boot found and set up.
#[derive(Debug)]
pub struct BootInfo {
    pub cpu: usize,
    pub ram_base: usize,
    pub ram_size: usize,
    pub image_end: usize,
    pub heap: (usize, usize),
    pub frames: (usize, usize),
    pub el2_stack_top: usize,
}

impl BootInfo {
    pub fn ram_end(&self) -> usize {
        self.ram_base + self.ram_size
    }
}

static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// What boot found (after boot).
pub fn info() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
    static __stack_top: u8;
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

impl mmu::TablePages for BumpTables {
    fn alloc_zeroed_table(&mut self) -> Option<usize> {
        if self.next >= self.end || self.count >= BOOT_TABLE_PAGES {
            return None;
        }
        let pa = self.next;
        self.next += PAGE;
        // SAFETY: the page lies in the reserved boot-table area of the hyp region (MMU off).
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE) };
        self.used[self.count] = pa;
        self.count += 1;
        Some(pa)
    }
}

fn ram_from_dtb() -> (usize, usize) {
    // SAFETY: QEMU places a valid flattened device tree at the RAM base when the image leaves
    // room for it (the hyp links at 0x4020_0000 for that reason); `from_ptr` checks its header.
    let fdt = match unsafe { fdt::Fdt::from_ptr(DTB_ADDR as *const u8) } {
        Ok(fdt) => fdt,
        Err(e) => fatal(format_args!("no device tree at 0x{DTB_ADDR:x}: {e:?}")),
    };
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

#[no_mangle]
extern "C" fn hyp_rust_start(cpu: usize) -> ! {
    if !percpu::init(cpu) {
        arch::halt();
    }
    vectors::install();
    board::console::init_logger("hyp", board::console::parse_level(option_env!("HYP_LOG")));
    if arch::current_el() != 2 {
        fatal(format_args!(
            "the hyp must start at EL2, found EL{}",
            arch::current_el()
        ));
    }
    let (ram_base, ram_size) = ram_from_dtb();
    let image_end = core::ptr::addr_of!(__image_end) as usize;
    let stack_top = core::ptr::addr_of!(__stack_top) as usize - cpu * HYP_STACK_SIZE;
    let heap_start = image_end.next_multiple_of(BLOCK_2M);
    let heap_end = heap_start + HYP_HEAP_SIZE;
    let tables_start = heap_end;
    let frames_start = tables_start + BOOT_TABLE_PAGES * PAGE;
    if frames_start >= HYP_END {
        fatal(format_args!("hyp image too large: ends at 0x{image_end:x}"));
    }

    let mut tables = BumpTables {
        next: tables_start,
        end: frames_start,
        used: [0; BOOT_TABLE_PAGES],
        count: 0,
    };
    let image = mmu::ImageLayout {
        start: core::ptr::addr_of!(__image_start) as usize,
        text_end: core::ptr::addr_of!(__text_end) as usize,
        rodata_end: core::ptr::addr_of!(__rodata_end) as usize,
    };
    let root = match mmu::build_identity_map(
        (ram_base, ram_base + ram_size),
        (DEVICE_BASE, DEVICE_END),
        &image,
        &mut tables,
    ) {
        Ok(root) => root,
        Err(e) => fatal(format_args!("building the EL2 page tables failed: {e:?}")),
    };
    mmu::enable(root, &tables.used[..tables.count]);

    // SAFETY: [heap_start, heap_end) lies in the hyp region after the image and its stacks and
    // before the page-allocator region; nothing else uses it; it is mapped read-write.
    unsafe { mm::init_heap(heap_start, heap_end) };
    mm::init_frames(frames_start, HYP_END);
    crate::arch::pmu::init();
    if let Err(e) = crate::vmm::init(ram_base, ram_size) {
        fatal(format_args!("page ownership table: {e}"));
    }

    let info = BOOT_INFO.call_once(|| BootInfo {
        cpu,
        ram_base,
        ram_size,
        image_end,
        heap: (heap_start, heap_end),
        frames: (frames_start, HYP_END),
        el2_stack_top: stack_top,
    });
    log::info!(
        "EL{} on CPU {}, RAM 0x{:x}..0x{:x} ({} MiB), MMU {}",
        arch::current_el(),
        cpu,
        ram_base,
        info.ram_end(),
        ram_size >> 20,
        if mmu::enabled() { "on" } else { "off" }
    );
    log::debug!(
        "image ends 0x{image_end:x}; heap 0x{heap_start:x}..0x{heap_end:x}; pages 0x{frames_start:x}..0x{HYP_END:x} ({} free)",
        mm::free_page_count()
    );
    // SAFETY: every EL2 image defines `hyp_image_main` with this signature.
    unsafe { hyp_image_main(info) }
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
    let Some((vttbr, vtcr)) = crate::vmm::host_stage2_regs() else {
        fatal(format_args!("no host stage-2"));
    };
    log::info!(
        "entering the host at EL1 under its stage-2: 0x{HOST_BASE:x} ({} KiB image)",
        image.len() / 1024
    );
    el1::enter(
        HOST_BASE as u64,
        args,
        info.el2_stack_top as u64,
        vttbr,
        vtcr,
    )
}
