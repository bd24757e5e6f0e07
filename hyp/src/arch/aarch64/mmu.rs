//! The hyp's own stage-1 translation (EL2 regime): an identity map of RAM (normal, write-back) and
//! of the device window the hyp uses (device-nGnRE). Everything else, e.g. the flash at address 0
//! and the space above RAM, is left unmapped so a stray access traps.
//!
//! W^X: the hyp's code is read-only and executable; its read-only data read-only and
//! execute-never; everything else (data, BSS, stacks, heap, page allocator, the rest of RAM, the
//! devices) read-write and execute-never, and `SCTLR_EL2.WXN` makes any writable page
//! execute-never whatever its descriptor says.
//!
//! Tables use 2 MiB blocks at level 2 under a level-1 root (39-bit VA, 4 KiB granule), and 4 KiB
//! pages at level 3 in the 2 MiB ranges that hold the image's code and read-only data.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Writeable, MAIR_EL2, SCTLR_EL2, TCR_EL2, TTBR0_EL2};
use core::arch::asm;

use super::cache;

const DESC_VALID: u64 = 1 << 0;
const DESC_TABLE: u64 = 1 << 1;
const ATTR_INDEX_DEVICE: u64 = 0 << 2;
const ATTR_INDEX_NORMAL: u64 = 1 << 2;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
/// AP[1]: RES1 in a translation regime with one privilege level (EL2 with E2H = 0).
const AP1_RES1: u64 = 1 << 6;
/// AP[2]: read-only.
const AP_RO: u64 = 1 << 7;
/// XN (bit 54) in the EL2 regime.
const XN: u64 = 1 << 54;
/// Level-3 page descriptor type.
const DESC_PAGE: u64 = 0b11;
const PAGE: usize = 4096;
const BLOCK_2M: usize = 2 << 20;
const GIB: usize = 1 << 30;
const ENTRIES: usize = 512;
/// RES1 bits of SCTLR_EL2 when HCR_EL2.E2H is 0.
const SCTLR_EL2_RES1: u64 = 0x30c5_0830;
/// RES1 bits of TCR_EL2 when HCR_EL2.E2H is 0.
const TCR_EL2_RES1: u64 = (1 << 31) | (1 << 23);

/// Where a table page comes from: the caller's page allocator, zeroed, PA == VA.
pub trait TablePages {
    fn alloc_zeroed_table(&mut self) -> Option<usize>;
}

/// Errors building the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmuError {
    OutOfTables,
    AddressTooHigh,
}

fn table(pa: usize) -> *mut u64 {
    pa as *mut u64
}

fn level2_for(root: usize, va: usize, pages: &mut dyn TablePages) -> Result<usize, MmuError> {
    let l1 = va / GIB;
    if l1 >= ENTRIES {
        return Err(MmuError::AddressTooHigh);
    }
    // SAFETY: `root` is a table page this module allocated; index < 512.
    let entry = unsafe { table(root).add(l1).read_volatile() };
    if entry & DESC_VALID != 0 {
        return Ok((entry & 0x0000_ffff_ffff_f000) as usize);
    }
    let l2 = pages.alloc_zeroed_table().ok_or(MmuError::OutOfTables)?;
    // SAFETY: as above.
    unsafe {
        table(root)
            .add(l1)
            .write_volatile(l2 as u64 | DESC_TABLE | DESC_VALID)
    };
    Ok(l2)
}

/// Where the hyp image's parts are (page-aligned, from the linker script).
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    /// First byte of code.
    pub start: usize,
    /// End of code, start of read-only data.
    pub text_end: usize,
    /// End of read-only data, start of writable data.
    pub rodata_end: usize,
}

impl ImageLayout {
    /// Attributes of the RAM page at `pa`.
    fn page_attrs(&self, pa: usize) -> u64 {
        let normal = ATTR_INDEX_NORMAL | SH_INNER | AP1_RES1;
        if (self.start..self.text_end).contains(&pa) {
            normal | AP_RO
        } else if (self.text_end..self.rodata_end).contains(&pa) {
            normal | AP_RO | XN
        } else {
            normal | XN
        }
    }

    /// Whether the 2 MiB range at `va` holds code or read-only data (it needs pages).
    fn needs_pages(&self, va: usize) -> bool {
        va < self.rodata_end && va + BLOCK_2M > self.start
    }
}

/// Maps the 2 MiB range at `va` (RAM holding part of the image) with 4 KiB pages.
fn map_2m_as_pages(
    root: usize,
    va: usize,
    image: &ImageLayout,
    pages: &mut dyn TablePages,
) -> Result<(), MmuError> {
    let l2 = level2_for(root, va, pages)?;
    let l3 = pages.alloc_zeroed_table().ok_or(MmuError::OutOfTables)?;
    for i in 0..ENTRIES {
        let pa = va + i * PAGE;
        // SAFETY: `l3` is a table page this module just allocated; index < 512.
        unsafe {
            table(l3)
                .add(i)
                .write_volatile(pa as u64 | image.page_attrs(pa) | AF | DESC_PAGE)
        };
    }
    let idx = (va / BLOCK_2M) % ENTRIES;
    // SAFETY: `l2` is a level-2 table page this module allocated; index < 512.
    unsafe {
        table(l2)
            .add(idx)
            .write_volatile(l3 as u64 | DESC_TABLE | DESC_VALID)
    };
    Ok(())
}

fn map_2m_blocks(
    root: usize,
    start: usize,
    end: usize,
    attrs: u64,
    pages: &mut dyn TablePages,
) -> Result<(), MmuError> {
    let mut va = start & !(BLOCK_2M - 1);
    while va < end {
        let l2 = level2_for(root, va, pages)?;
        let idx = (va / BLOCK_2M) % ENTRIES;
        // SAFETY: `l2` is a level-2 table page this module allocated; index < 512.
        unsafe {
            table(l2)
                .add(idx)
                .write_volatile(va as u64 | attrs | AF | DESC_VALID)
        };
        va += BLOCK_2M;
    }
    Ok(())
}

/// Builds the EL2 identity map and returns its root: the devices execute-never, RAM
/// execute-never except the image's code (see the module docs). The caller records every table
/// page used so it can clean them to memory before the walker reads them.
pub fn build_identity_map(
    ram: (usize, usize),
    devices: (usize, usize),
    image: &ImageLayout,
    pages: &mut dyn TablePages,
) -> Result<usize, MmuError> {
    let root = pages.alloc_zeroed_table().ok_or(MmuError::OutOfTables)?;
    map_2m_blocks(
        root,
        devices.0,
        devices.1,
        ATTR_INDEX_DEVICE | AP1_RES1 | XN,
        pages,
    )?;
    let mut va = ram.0 & !(BLOCK_2M - 1);
    while va < ram.1 {
        if image.needs_pages(va) {
            map_2m_as_pages(root, va, image, pages)?;
        } else {
            let attrs = ATTR_INDEX_NORMAL | SH_INNER | AP1_RES1 | XN;
            map_2m_blocks(root, va, va + BLOCK_2M, attrs, pages)?;
        }
        va += BLOCK_2M;
    }
    Ok(root)
}

/// Turns the EL2 MMU and caches on with `root` as TTBR0_EL2. The tables must already be cleaned
/// to the point of coherency (they were written with the data cache off).
pub fn enable(root: usize, table_pages: &[usize]) {
    for &t in table_pages {
        cache::clean_invalidate_dcache(t, 4096);
    }
    MAIR_EL2.write(
        MAIR_EL2::Attr0_Device::nonGathering_nonReordering_EarlyWriteAck
            + MAIR_EL2::Attr1_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
            + MAIR_EL2::Attr1_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc,
    );
    let tcr = TCR_EL2::T0SZ.val(25)
        + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + TCR_EL2::SH0::Inner
        + TCR_EL2::TG0::KiB_4
        + TCR_EL2::PS::Bits_40;
    TCR_EL2.set(tcr.value | TCR_EL2_RES1);
    TTBR0_EL2.set(root as u64);
    barrier::dsb(barrier::ISH);
    barrier::isb(barrier::SY);
    // SAFETY: invalidating all EL2 TLB entries before the first enable; barriers only otherwise.
    unsafe {
        asm!(
            "tlbi alle2",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
    let sctlr = SCTLR_EL2::M::Enable
        + SCTLR_EL2::C::Cacheable
        + SCTLR_EL2::I::Cacheable
        + SCTLR_EL2::SA::Enable
        + SCTLR_EL2::WXN::Enable
        + SCTLR_EL2::EE::Little;
    SCTLR_EL2.set(sctlr.value | SCTLR_EL2_RES1);
    barrier::isb(barrier::SY);
}

/// Whether the EL2 stage-1 MMU is on.
pub fn enabled() -> bool {
    use aarch64_cpu::registers::Readable;
    SCTLR_EL2.is_set(SCTLR_EL2::M)
}
