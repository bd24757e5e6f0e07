//! The hyp's own stage-1 translation (EL2 regime): an identity map of RAM (normal, write-back) and
//! of the device window the hyp uses (device-nGnRE, never executable). Everything else, e.g. the
//! flash at address 0 and the space above RAM, is left unmapped so a stray access traps.
//!
//! Tables use 2 MiB blocks at level 2 under a level-1 root (39-bit VA, 4 KiB granule).

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
const XN: u64 = 1 << 54;
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

/// Builds the EL2 identity map and returns its root. `tables` records every page used so the
/// caller can clean them to memory before the walker reads them.
pub fn build_identity_map(
    ram: (usize, usize),
    devices: (usize, usize),
    pages: &mut dyn TablePages,
) -> Result<usize, MmuError> {
    let root = pages.alloc_zeroed_table().ok_or(MmuError::OutOfTables)?;
    map_2m_blocks(root, devices.0, devices.1, ATTR_INDEX_DEVICE | XN, pages)?;
    map_2m_blocks(root, ram.0, ram.1, ATTR_INDEX_NORMAL | SH_INNER, pages)?;
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
        + SCTLR_EL2::WXN::Disable
        + SCTLR_EL2::EE::Little;
    SCTLR_EL2.set(sctlr.value | SCTLR_EL2_RES1);
    barrier::isb(barrier::SY);
}

/// Whether the EL2 stage-1 MMU is on.
pub fn enabled() -> bool {
    use aarch64_cpu::registers::Readable;
    SCTLR_EL2.is_set(SCTLR_EL2::M)
}
