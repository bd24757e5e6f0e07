//! The hyp's own stage-1 translation (EL2 regime): turning it on, and its TLB maintenance.
//!
//! The tables are built by the same engine as every stage-2, in the EL2 descriptor format:
//! `hyp_mem::el2::build_identity_map` (an identity map of RAM, normal write-back, and of the
//! device window the hyp uses, device-nGnRE; W^X: code read-only and executable, read-only data
//! read-only and execute-never, everything else execute-never). This module programs
//! MAIR_EL2 to match that format's attribute indices, TCR_EL2 for its 39-bit VA and 40-bit PA,
//! and `SCTLR_EL2.WXN`, which makes any writable page execute-never whatever its descriptor
//! says.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Writeable, MAIR_EL2, SCTLR_EL2, TCR_EL2, TTBR0_EL2};
use core::arch::asm;

use super::cache;

/// RES1 bits of SCTLR_EL2 when HCR_EL2.E2H is 0.
const SCTLR_EL2_RES1: u64 = 0x30c5_0830;
/// RES1 bits of TCR_EL2 when HCR_EL2.E2H is 0.
const TCR_EL2_RES1: u64 = (1 << 31) | (1 << 23);

// MAIR_EL2 below puts device-nGnRE in Attr0 and normal write-back in Attr1.
const _: () = assert!(hyp_mem::el2::ATTR_INDEX_DEVICE == 0 && hyp_mem::el2::ATTR_INDEX_NORMAL == 1);

/// TLB maintenance of the EL2 regime for the table engine. The regime has no VMID or ASID:
/// the `vmid` arguments (0) are ignored.
#[derive(Debug, Default)]
pub struct El2Tlb;

impl hyp_mem::table::TlbMaintenance for El2Tlb {
    fn publish(&mut self) {
        // SAFETY: barrier only.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    }

    fn invalidate_ipa(&mut self, _vmid: u16, va: u64, _leaf_level: Option<u8>) {
        // SAFETY: invalidates the EL2 entries of one VA (all levels, so walk-cache entries of a
        // table descriptor go too); completes before returning.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi vae2is, {}",
                "dsb ish",
                "isb",
                in(reg) va >> 12,
                options(nostack, preserves_flags)
            )
        };
    }

    fn invalidate_vmid(&mut self, _vmid: u16) {
        // SAFETY: invalidates every EL2 entry; completes before returning.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi alle2is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    }
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
    let tcr = TCR_EL2::T0SZ.val(u64::from(64 - hyp_mem::el2::VA_SIZE.bits()))
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
