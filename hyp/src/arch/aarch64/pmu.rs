//! The PMU, set up so instruction counts are exact under `qemu -icount shift=0`: counter 0 counts
//! INST_RETIRED at EL2 only, counter 1 at every level. Both are readable from EL1 (the host and
//! guests measure around their own operations), never reset by anyone but boot.

use core::arch::asm;

/// INST_RETIRED.
const EVENT_INST_RETIRED: u64 = 0x08;
/// PMEVTYPER<n>_EL0.P: do not count at EL1.
const FILTER_P: u64 = 1 << 31;
/// PMEVTYPER<n>_EL0.U: do not count at EL0.
const FILTER_U: u64 = 1 << 30;
/// PMEVTYPER<n>_EL0.NSH: count at EL2.
const FILTER_NSH: u64 = 1 << 27;

/// Counter 0: EL2 instructions; counter 1: instructions at all levels.
pub fn init() {
    let pmcr: u64;
    // SAFETY: reading PMCR_EL0 has no side effects.
    unsafe { asm!("mrs {}, pmcr_el0", out(reg) pmcr, options(nomem, nostack)) };
    let counters = (pmcr >> 11) & 0x1f;
    if counters < 2 {
        log::warn!("PMU has {counters} event counters: instruction counting disabled");
        return;
    }
    // MDCR_EL2: HPMN = all counters (EL1 may read them), no traps (TPM, TPMCR clear), counting
    // at EL2 allowed (HPMD clear).
    let mdcr = counters;
    let el2_only = EVENT_INST_RETIRED | FILTER_P | FILTER_U | FILTER_NSH;
    let all_levels = EVENT_INST_RETIRED | FILTER_NSH;
    // SAFETY: PMU and debug configuration only; nothing else in the hyp uses the PMU.
    unsafe {
        asm!(
            "msr mdcr_el2, {mdcr}",
            "msr pmevtyper0_el0, {t0}",
            "msr pmevtyper1_el0, {t1}",
            "msr pmcntenset_el0, {en}",
            "msr pmcr_el0, {pmcr}",
            "isb",
            mdcr = in(reg) mdcr,
            t0 = in(reg) el2_only,
            t1 = in(reg) all_levels,
            en = in(reg) 0b11u64,
            pmcr = in(reg) 0b11u64, // E: enable; P: reset the event counters
            options(nostack)
        );
    }
}

/// Reads (EL2 instructions, all-level instructions).
pub fn read() -> (u64, u64) {
    let (a, b): (u64, u64);
    // SAFETY: reading the event counters has no side effects.
    unsafe {
        asm!("isb", "mrs {a}, pmevcntr0_el0", "mrs {b}, pmevcntr1_el0", a = out(reg) a, b = out(reg) b,
             options(nomem, nostack))
    };
    (a, b)
}

/// `FAULT_PAD` extra `nop`s on the stage-2 fault path (set at build time, `make bench
/// FAULT_PAD=N`), to prove the fault benchmark counts exactly.
pub const FAULT_PAD: usize = parse_pad(option_env!("FAULT_PAD"));

const fn parse_pad(s: Option<&str>) -> usize {
    let Some(s) = s else {
        return 0;
    };
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0usize;
    while i < b.len() {
        let d = b[i];
        if d < b'0' || d > b'9' {
            return 0;
        }
        n = n * 10 + (d - b'0') as usize;
        i += 1;
    }
    n
}

/// Executes exactly [`FAULT_PAD`] `nop`s.
#[inline(always)]
pub fn fault_pad() {
    // `.rept 0` emits nothing.
    // SAFETY: `nop`s only.
    unsafe { asm!(".rept {n}", "nop", ".endr", n = const FAULT_PAD, options(nomem, nostack)) };
}

/// Stops every PMU counter the host enabled and returns which were (`PMCNTENSET_EL0`): while a
/// guest without a PMU runs, the host's counters do not count its instructions or cycles, so they
/// tell the host nothing about what the guest does.
pub fn pause_counters() -> u64 {
    if !super::features::has(super::features::PMU) {
        return 0;
    }
    let enabled: u64;
    // SAFETY: PMU counter enables only; the mask read is restored by `resume_counters`.
    unsafe {
        asm!(
            "mrs {e}, pmcntenset_el0",
            "msr pmcntenclr_el0, {e}",
            e = out(reg) enabled,
            options(nomem, nostack)
        )
    };
    enabled
}

/// Re-enables the counters [`pause_counters`] stopped.
pub fn resume_counters(enabled: u64) {
    if enabled == 0 {
        return;
    }
    // SAFETY: PMU counter enables only.
    unsafe { asm!("msr pmcntenset_el0, {}", in(reg) enabled, options(nomem, nostack)) };
}
