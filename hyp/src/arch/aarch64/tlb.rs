//! Stage-2 TLB maintenance for `hyp_mem::stage2::TlbMaintenance`.

use aarch64_cpu::registers::{Readable, Writeable, VTTBR_EL2};
use core::arch::asm;

/// The hardware TLB, for one VMID at a time.
#[derive(Debug, Default)]
pub struct HwTlb;

/// Runs `f` with `VTTBR_EL2` holding `vmid`, so `tlbi` by VMID targets it.
fn with_vmid(vmid: u16, f: impl FnOnce()) {
    let saved = VTTBR_EL2.get();
    let wanted = (saved & !(0xffff << 48)) | (u64::from(vmid) << 48);
    if wanted != saved {
        VTTBR_EL2.set(wanted);
        // SAFETY: barrier only.
        unsafe { asm!("isb", options(nostack, preserves_flags)) };
    }
    f();
    if wanted != saved {
        VTTBR_EL2.set(saved);
        // SAFETY: barrier only.
        unsafe { asm!("isb", options(nostack, preserves_flags)) };
    }
}

/// After a TLB conflict abort: drops this CPU's stage-1 and stage-2 entries of the VMID in
/// `VTTBR_EL2` (the world that took the abort), so the retried access walks the tables again.
pub fn flush_local_current_vmid() {
    // SAFETY: TLB maintenance for the current VMID on this CPU only; completes before returning.
    unsafe {
        asm!(
            "dsb nshst",
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

impl hyp_mem::stage2::TlbMaintenance for HwTlb {
    fn publish(&mut self) {
        // SAFETY: barrier only.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    }

    fn invalidate_ipa(&mut self, vmid: u16, ipa: u64, _leaf_level: Option<u8>) {
        with_vmid(vmid, || {
            // SAFETY: TLB maintenance for this VMID only; completes before returning.
            unsafe {
                asm!(
                    "dsb ishst",
                    "tlbi ipas2e1is, {}",
                    "dsb ish",
                    "tlbi vmalle1is",
                    "dsb ish",
                    "isb",
                    in(reg) ipa >> 12,
                    options(nostack, preserves_flags)
                )
            };
        });
    }

    fn invalidate_vmid(&mut self, vmid: u16) {
        with_vmid(vmid, || {
            // SAFETY: TLB maintenance for this VMID only; completes before returning.
            unsafe {
                asm!(
                    "dsb ishst",
                    "tlbi vmalls12e1is",
                    "dsb ish",
                    "isb",
                    options(nostack, preserves_flags)
                )
            };
        });
    }
}
