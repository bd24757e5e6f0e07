//! The PMU, set up so instruction counts are exact under `qemu -icount shift=0`: counter 0 counts
//! INST_RETIRED at EL2 only, counter 1 at every level. Both are readable from EL1 (the host and
//! guests measure around their own operations), never reset by the hyp but at boot.
//!
//! A VM that opened the PMU (`VmOpenPmu`: benchmarks, introspection builds only) reaches it
//! without traps but for `PMCR_EL0` (`MDCR_EL2.TPMCR`, emulated: [`pmcr_read`], [`pmcr_write`]).
//! Everything of the PMU but the hyp's two counters is per world and switched ([`PmuState`],
//! [`enter_open`], [`exit_open`]): `PMCR_EL0`'s writable bits, `PMSELR_EL0`, `PMUSERENR_EL0`, `PMCCFILTR_EL0`,
//! `PMCCNTR_EL0`, `PMEVTYPER<n>_EL0`/`PMEVCNTR<n>_EL0` for n = 2..N, and those counters' (and
//! the cycle counter's) bits of `PMCNTENSET`, `PMINTENSET` and `PMOVSSET`. Shared by design, so
//! that the guest can measure itself with them: counters 0 and 1 (their values, types and
//! bits of the enable, interrupt-enable and overflow registers), which a benchmark guest reads
//! and could also write; and `PMCR_EL0.E` gates them too while its world runs. A VM that did
//! not open the PMU gets none of it (`TPM`: UNDEF) and the host's counters pause meanwhile.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
    COUNTERS.store(counters as u32, Ordering::Relaxed);
    if counters < 2 {
        log::info!("PMU has {counters} event counters: instruction counting disabled");
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

// ---- the per-world PMU of a VM that opened it -------------------------------------------------

/// PMCR_EL0 bits a world may write and read back: E, D, X, DP, LC, LP (P and C are write-only
/// actions, the rest read-only).
const PMCR_RW: u64 = 0b1111_1001;
const PMCR_E: u64 = 1 << 0;
const PMCR_P: u64 = 1 << 1;
const PMCR_C: u64 = 1 << 2;
/// The cycle counter's bit in PMCNTEN/PMINTEN/PMOVS.
const CYCLE: u64 = 1 << 31;

/// Event counters (PMCR_EL0.N), read at boot.
static COUNTERS: AtomicU32 = AtomicU32::new(0);

fn counters() -> usize {
    COUNTERS.load(Ordering::Relaxed).min(31) as usize
}

/// The bits of PMCNTEN/PMINTEN/PMOVS that are switched: event counters 2..N and the cycle
/// counter (0 and 1 are the hyp's).
fn switched_mask() -> u64 {
    (((1u64 << counters()) - 1) & !0b11) | CYCLE
}

// Where each register of a world's PMU is kept ([`PmuState`], [`HostPmuSave`]).
/// `PMCR_EL0 & PMCR_RW`.
const PMCR: usize = 0;
const SELR: usize = 1;
const USERENR: usize = 2;
const CCFILTR: usize = 3;
const CCNTR: usize = 4;
/// The switched counters' bits (`switched_mask`) of PMCNTENSET, PMINTENSET, PMOVSSET.
const CNTEN: usize = 5;
const INTEN: usize = 6;
const OVS: usize = 7;
/// PMEVTYPER<n>_EL0 at `EVTYPER + n`, PMEVCNTR<n>_EL0 at `EVCNTR + n` (n < 31; 0 and 1 unused).
const EVTYPER: usize = 8;
const EVCNTR: usize = EVTYPER + 31;
const SLOTS: usize = EVCNTR + 31;

/// A guest's PMU (in its context), beyond the hyp's counters 0 and 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmuState {
    r: [u64; SLOTS],
}

impl Default for PmuState {
    /// A guest's PMU when its VM opens it: enabled (PMCR_EL0.E, so the hyp's counters go on
    /// counting while it runs), everything else zero.
    fn default() -> Self {
        let mut r = [0; SLOTS];
        r[PMCR] = PMCR_E;
        Self { r }
    }
}

impl PmuState {
    fn get(&self, i: usize) -> u64 {
        self.r.get(i).copied().unwrap_or(0)
    }

    fn set(&mut self, i: usize, v: u64) {
        if let Some(slot) = self.r.get_mut(i) {
            *slot = v;
        }
    }
}

/// The host's PMU while a guest of a VM that opened the PMU runs on this CPU (in its `PerCpu`):
/// kept out of the per-run `HostSave`, which the hyp builds on every `VcpuRun`.
pub struct HostPmuSave {
    r: [AtomicU64; SLOTS],
}

impl HostPmuSave {
    pub const fn new() -> Self {
        Self {
            r: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    fn get(&self, i: usize) -> u64 {
        self.r.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }

    fn set(&self, i: usize, v: u64) {
        if let Some(a) = self.r.get(i) {
            a.store(v, Ordering::Relaxed);
        }
    }
}

impl Default for HostPmuSave {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! pmu_plain {
    ($($slot:ident => $reg:literal),* $(,)?) => {
        fn save_plain(mut store: impl FnMut(usize, u64)) {
            $(
                let v: u64;
                // SAFETY: a PMU register read at EL2, no side effects (the caller checked the
                // CPU has a PMU).
                unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack)) };
                store($slot, v);
            )*
        }
        fn load_plain(load: impl Fn(usize) -> u64) {
            $(
                // SAFETY: PMU state of the world about to run.
                unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) load($slot), options(nomem, nostack)) };
            )*
        }
    };
}

pmu_plain!(
    SELR => "pmselr_el0",
    USERENR => "pmuserenr_el0",
    CCFILTR => "pmccfiltr_el0",
    CCNTR => "pmccntr_el0",
);

macro_rules! pmu_counters {
    ($($n:literal),* $(,)?) => {
        /// Saves PMEVTYPER<n>/PMEVCNTR<n> for 2 <= n < `count`.
        fn save_counters(count: usize, mut store: impl FnMut(usize, u64)) {
            $(
                if $n >= count {
                    return;
                }
                let (t, c): (u64, u64);
                // SAFETY: n < PMCR_EL0.N: the registers exist; reads have no side effects.
                unsafe {
                    asm!(
                        concat!("mrs {t}, pmevtyper", stringify!($n), "_el0"),
                        concat!("mrs {c}, pmevcntr", stringify!($n), "_el0"),
                        t = out(reg) t, c = out(reg) c, options(nomem, nostack)
                    )
                };
                store(EVTYPER + $n, t);
                store(EVCNTR + $n, c);
            )*
        }

        /// Loads PMEVTYPER<n>/PMEVCNTR<n> for 2 <= n < `count`.
        fn load_counters(count: usize, load: impl Fn(usize) -> u64) {
            $(
                if $n >= count {
                    return;
                }
                // SAFETY: as in `save_counters`; PMU state of the world about to run.
                unsafe {
                    asm!(
                        concat!("msr pmevtyper", stringify!($n), "_el0, {t}"),
                        concat!("msr pmevcntr", stringify!($n), "_el0, {c}"),
                        t = in(reg) load(EVTYPER + $n), c = in(reg) load(EVCNTR + $n),
                        options(nomem, nostack)
                    )
                };
            )*
        }

        /// Zeroes PMEVCNTR<n> for 2 <= n < `count`.
        fn zero_counters(count: usize) {
            $(
                if $n >= count {
                    return;
                }
                // SAFETY: as in `load_counters`.
                unsafe {
                    asm!(concat!("msr pmevcntr", stringify!($n), "_el0, xzr"), options(nomem, nostack))
                };
            )*
        }
    };
}

pmu_counters!(
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
    28, 29, 30
);

fn read_pmcr() -> u64 {
    let v: u64;
    // SAFETY: reading PMCR_EL0 has no side effects.
    unsafe { asm!("mrs {}, pmcr_el0", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_pmcr(v: u64) {
    // SAFETY: only the read-write bits (never P or C: the hyp's counters are not reset).
    unsafe { asm!("msr pmcr_el0, {}", in(reg) v & PMCR_RW, options(nomem, nostack)) };
}

/// Saves the live (outgoing world's) PMU through `store`, leaving the hyp's counters 0 and 1
/// as they are. The outgoing world's counters stop before anything is read, so none counts the
/// switch or the other world.
fn save_live(mask: u64, mut store: impl FnMut(usize, u64)) {
    let (e, i, o): (u64, u64, u64);
    // SAFETY: PMU register reads, then the outgoing world's counters stop (not the hyp's).
    unsafe {
        asm!(
            "mrs {e}, pmcntenset_el0",
            "msr pmcntenclr_el0, {m}",
            "mrs {i}, pmintenset_el1",
            "mrs {o}, pmovsset_el0",
            e = out(reg) e, i = out(reg) i, o = out(reg) o, m = in(reg) mask,
            options(nomem, nostack)
        )
    };
    store(CNTEN, e & mask);
    store(INTEN, i & mask);
    store(OVS, o & mask);
    store(PMCR, read_pmcr() & PMCR_RW);
    save_plain(&mut store);
    save_counters(counters(), &mut store);
}

/// Loads the incoming world's PMU from `load` (its counters start last).
fn load_live(mask: u64, load: impl Fn(usize) -> u64) {
    load_counters(counters(), &load);
    load_plain(&load);
    write_pmcr(load(PMCR));
    // SAFETY: PMU state of the world about to run; the hyp's counters (outside `mask`) are not
    // touched.
    unsafe {
        asm!(
            "msr pmintenclr_el1, {m}",
            "msr pmovsclr_el0, {m}",
            "msr pmovsset_el0, {o}",
            "msr pmintenset_el1, {i}",
            "msr pmcntenset_el0, {e}",
            m = in(reg) mask,
            e = in(reg) load(CNTEN) & mask,
            i = in(reg) load(INTEN) & mask,
            o = in(reg) load(OVS) & mask,
            options(nomem, nostack)
        )
    };
}

/// From the host to a guest of a VM that opened the PMU: the host's PMU (but the hyp's counters)
/// into this CPU's `host`, the guest's loaded.
pub fn enter_open(host: &HostPmuSave, guest: &PmuState) {
    if !super::features::has(super::features::PMU) {
        return;
    }
    let mask = switched_mask();
    save_live(mask, |i, v| host.set(i, v));
    load_live(mask, |i| guest.get(i));
}

/// Back from such a guest: its PMU saved in its context, the host's put back.
pub fn exit_open(host: &HostPmuSave, guest: &mut PmuState) {
    if !super::features::has(super::features::PMU) {
        return;
    }
    let mask = switched_mask();
    save_live(mask, |i, v| guest.set(i, v));
    load_live(mask, |i| host.get(i));
}

/// A guest's read of its (emulated) PMCR_EL0: its own writable bits, the CPU's read-only ones.
pub fn pmcr_read(s: &PmuState) -> u64 {
    (read_pmcr() & !PMCR_RW & !(PMCR_P | PMCR_C)) | (s.get(PMCR) & PMCR_RW)
}

/// A guest's write of its (emulated) PMCR_EL0, its PMU live on this CPU: the writable bits are
/// its own; P resets its event counters (2..N, not the hyp's), C its cycle counter.
pub fn pmcr_write(s: &mut PmuState, v: u64) {
    s.set(PMCR, v & PMCR_RW);
    write_pmcr(v);
    if v & PMCR_P != 0 {
        zero_counters(counters());
    }
    if v & PMCR_C != 0 {
        // SAFETY: the guest's own cycle counter (switched).
        unsafe { asm!("msr pmccntr_el0, xzr", options(nomem, nostack)) };
    }
}
