//! What this CPU implements, read once from the ID registers: which optional registers the
//! world switch must save and restore, which traps exist, what a guest may be shown.
//!
//! Every CPU of the machine is assumed to implement the same features (QEMU `virt` CPUs are
//! identical); the first CPU to boot records them.

use aarch64_cpu::registers::{
    Readable, ID_AA64DFR0_EL1, ID_AA64ISAR1_EL1, ID_AA64MMFR1_EL1, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1,
};
use core::sync::atomic::{AtomicU32, Ordering};

/// Pointer authentication (FEAT_PAuth): the five key pairs exist.
pub const PAUTH: u32 = 1 << 0;
/// SME: `TPIDR2_EL0` exists (and is not trapped without FEAT_FGT).
pub const SME: u32 = 1 << 1;
/// SVE.
pub const SVE: u32 = 1 << 2;
/// The GICv3 system-register CPU interface.
pub const GIC_SYSREGS: u32 = 1 << 3;
/// RAS (FEAT_RAS): error records (HCR_EL2.TERR) and `DISR_EL1`.
pub const RAS: u32 = 1 << 4;
/// Limited ordering regions (HCR_EL2.TLOR).
pub const LOR: u32 = 1 << 5;
/// A PMUv3.
pub const PMU: u32 = 1 << 6;
/// `SCXTNUM_EL0/EL1` (FEAT_CSV2_2 or FEAT_CSV2_1p2): `HCR_EL2.EnSCXT` exists.
pub const SCXTNUM: u32 = 1 << 7;
/// Bit set once the features were read.
const KNOWN: u32 = 1 << 31;

static FEATURES: AtomicU32 = AtomicU32::new(0);

fn field(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xf
}

/// `ID_AA64ISAR2_EL1` (aarch64-cpu lacks it; an all-zero ID register on CPUs before v8.7).
fn id_aa64isar2() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register has no side effects; the encoding is in the ID space, which
    // reads as zero where the register is not implemented (Armv8.0 onwards).
    unsafe { core::arch::asm!("mrs {}, S3_0_C0_C6_2", out(reg) v, options(nomem, nostack)) };
    v
}

fn detect() -> u32 {
    let pfr0 = ID_AA64PFR0_EL1.get();
    let pfr1 = ID_AA64PFR1_EL1.get();
    let isar1 = ID_AA64ISAR1_EL1.get();
    let isar2 = id_aa64isar2();
    let mmfr1 = ID_AA64MMFR1_EL1.get();
    let dfr0 = ID_AA64DFR0_EL1.get();
    let mut f = KNOWN;
    // APA (7:4), API (11:8) of ISAR1, APA3 (15:12) of ISAR2: address authentication.
    if field(isar1, 4) | field(isar1, 8) | field(isar2, 12) != 0 {
        f |= PAUTH;
    }
    if field(pfr1, 24) != 0 {
        f |= SME;
    }
    if field(pfr0, 32) != 0 {
        f |= SVE;
    }
    if field(pfr0, 24) != 0 {
        f |= GIC_SYSREGS;
    }
    if field(pfr0, 28) != 0 {
        f |= RAS;
    }
    if field(mmfr1, 16) != 0 {
        f |= LOR;
    }
    // CSV2 (PFR0 59:56) 2 or more, or CSV2 1 with CSV2_frac (PFR1 35:32) 2 or more.
    let (csv2, frac) = (field(pfr0, 56), field(pfr1, 32));
    if csv2 >= 2 || (csv2 == 1 && frac >= 2) {
        f |= SCXTNUM;
    }
    // PMUVer: 0 = none, 0xf = IMPLEMENTATION DEFINED (not PMUv3).
    if !matches!(field(dfr0, 8), 0 | 0xf) {
        f |= PMU;
    }
    f
}

/// The features of this CPU (bits above).
pub fn get() -> u32 {
    let f = FEATURES.load(Ordering::Relaxed);
    if f & KNOWN != 0 {
        return f;
    }
    let f = detect();
    FEATURES.store(f, Ordering::Relaxed);
    f
}

/// Whether this CPU implements `feature`.
pub fn has(feature: u32) -> bool {
    get() & feature != 0
}
