//! `ESR_EL2` decoding into words, for crash reports and trace lines.

/// The exception class field of an ESR.
pub fn ec(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

pub const EC_UNKNOWN: u64 = 0x00;
/// Trapped `MCR`/`MRC` to CP15 (AArch32).
pub const EC_CP15_32: u64 = 0x03;
/// Trapped `MCRR`/`MRRC` to CP15 (AArch32).
pub const EC_CP15_64: u64 = 0x04;
/// The last exception class from AArch32 state that can name a condition (`ESR.CV/COND`).
pub const EC_AARCH32_LAST: u64 = 0x0c;
pub const EC_HVC64: u64 = 0x16;
pub const EC_SMC64: u64 = 0x17;
pub const EC_SYS64: u64 = 0x18;
pub const EC_IABT_LOW: u64 = 0x20;
pub const EC_IABT_CUR: u64 = 0x21;
pub const EC_DABT_LOW: u64 = 0x24;
pub const EC_DABT_CUR: u64 = 0x25;

/// The exception class in words.
pub fn ec_name(ec: u64) -> &'static str {
    match ec {
        EC_UNKNOWN => "unknown reason (undefined instruction)",
        0x01 => "trapped WFI/WFE",
        EC_CP15_32 => "trapped MCR/MRC (CP15, AArch32)",
        EC_CP15_64 => "trapped MCRR/MRRC (CP15, AArch32)",
        0x05 | 0x06 | 0x0c => "trapped CP14 access (AArch32)",
        0x07 => "access to SIMD/FP trapped",
        0x0e => "illegal execution state",
        0x11 | 0x15 => "SVC",
        EC_HVC64 => "HVC (AArch64)",
        EC_SMC64 => "SMC (AArch64)",
        EC_SYS64 => "trapped MSR/MRS/system instruction",
        0x19 => "access to SVE trapped",
        0x1c => "pointer authentication failure",
        EC_IABT_LOW => "instruction abort from a lower EL",
        EC_IABT_CUR => "instruction abort at the same EL",
        0x22 => "PC alignment fault",
        EC_DABT_LOW => "data abort from a lower EL",
        EC_DABT_CUR => "data abort at the same EL",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "reserved or unhandled exception class",
    }
}

/// The fault status code of an abort in words.
pub fn fsc_name(fsc: u64) -> &'static str {
    match fsc & 0x3f {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x09..=0x0b => "access flag fault",
        0x0d..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        _ => "other fault",
    }
}

/// Whether an abort was caused by a write (ISS.WnR).
pub fn is_write(esr: u64) -> bool {
    esr & (1 << 6) != 0
}

/// What kind of fault an abort's fault status code (DFSC/IFSC) reports, as far as the hyp's
/// answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Translation fault (any level): nothing is mapped; mapping may fix it.
    Translation,
    /// Access flag fault: the entry exists without AF; mapping again fixes it.
    AccessFlag,
    /// TLB conflict abort: invalidating the TLB and retrying fixes it.
    TlbConflict,
    /// Everything mapping cannot fix: permission (e.g. a fetch from execute-never memory),
    /// alignment, external abort, address size, ...: the world that made the access gets an abort.
    Other,
}

/// Classifies the fault status code of an abort syndrome (EC 0x20/0x21/0x24/0x25).
pub fn fault_kind(esr: u64) -> FaultKind {
    match esr & 0x3f {
        0x04..=0x07 | 0x2b => FaultKind::Translation,
        0x08..=0x0b => FaultKind::AccessFlag,
        0x30 => FaultKind::TlbConflict,
        _ => FaultKind::Other,
    }
}
