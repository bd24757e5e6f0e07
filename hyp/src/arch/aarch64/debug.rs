//! The self-hosted debug registers across the world switch (Trust rule 5: what a guest is told
//! it has, it has), the way KVM switches them:
//!
//! - `MDSCR_EL1` is each world's own on every switch (the guest's is live while it runs, so its
//!   controls, `TDCC` and the rest, act on its EL0), as is the OS lock (`OSLSR_EL1.OSLK`: a
//!   guest's is emulated, `MDCR_EL2.TDOSA` traps it always, and the real lock follows it while
//!   the guest runs, so the architecture itself blocks the guest's debug exceptions while its
//!   lock is set).
//! - The breakpoint and watchpoint registers (`DBGBVR/BCR/WVR/WCR<n>_EL1` for the
//!   `ID_AA64DFR0_EL1.BRPs/WRPs` the CPU has) and `MDCCINT_EL1` are switched only for a guest
//!   that uses them: until then its accesses trap (`MDCR_EL2.TDA`) and are emulated on its own
//!   copy, and the host's registers stay live (harmless: the guest's `MDSCR_EL1.MDE/KDE` are
//!   clear, so nothing of them fires in it). Its first access takes them ([`take`]): the host's
//!   are saved in this CPU's data (`cpu.rs`), the guest's loaded, `TDA` cleared for the rest of
//!   the run. At the end of the run the guest's are saved and the host's put back. A run starts
//!   with them loaded when the guest has debug exceptions on (`MDE` or `KDE`), as KVM's
//!   `kvm_vcpu_load_debug` decides.
//! - `MDSCR_EL1.TDCC` (EL0's DCC accesses trap to EL1), which QEMU 7.2 does not implement, is
//!   emulated: while it is set `TDA` stays on, the access reaches the hyp, which gives the
//!   guest's EL1 the trap it asked for ([`dcc_trapped_at_el1`]).
//!
//! Debug exceptions are never taken at EL2 (`MDCR_EL2.TDE` clear: their target is EL1, and
//! none is generated from an EL above its target), whatever a world programs (`DBGWCR.HMC`...).
//! Claim tags, the DCC and the rest of the debug space stay RAZ/WI while trapped; QEMU 7.2
//! implements no claim tags, so no state of them crosses worlds.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, ID_AA64DFR0_EL1, MDCR_EL2, MDSCR_EL1,
};

/// `MDSCR_EL1.MDE`, `KDE`: breakpoints and watchpoints on; debug exceptions at EL1.
const MDSCR_MDE: u64 = 1 << 15;
const MDSCR_KDE: u64 = 1 << 13;
/// `MDSCR_EL1.TDCC`: EL0 accesses to the debug communication channel trap to EL1.
const MDSCR_TDCC: u64 = 1 << 12;

/// A guest's debug registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugState {
    pub mdscr: u64,
    /// The emulated OS lock (`OSLSR_EL1.OSLK`); clear at reset, as in KVM.
    pub oslk: bool,
    pub mdccint: u64,
    pub bvr: [u64; 16],
    pub bcr: [u64; 16],
    pub wvr: [u64; 16],
    pub wcr: [u64; 16],
}

/// A register of the switched set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugReg {
    Bvr(u8),
    Bcr(u8),
    Wvr(u8),
    Wcr(u8),
    Mdccint,
    Mdscr,
}

/// The host's breakpoint/watchpoint registers and `MDCCINT_EL1` while a guest's are loaded on
/// this CPU (one per CPU, in `PerCpu`), and whether they are.
pub struct HostDebugSave {
    loaded: AtomicBool,
    bvr: [AtomicU64; 16],
    bcr: [AtomicU64; 16],
    wvr: [AtomicU64; 16],
    wcr: [AtomicU64; 16],
    mdccint: AtomicU64,
}

impl HostDebugSave {
    pub const fn new() -> Self {
        Self {
            loaded: AtomicBool::new(false),
            bvr: [const { AtomicU64::new(0) }; 16],
            bcr: [const { AtomicU64::new(0) }; 16],
            wvr: [const { AtomicU64::new(0) }; 16],
            wcr: [const { AtomicU64::new(0) }; 16],
            mdccint: AtomicU64::new(0),
        }
    }
}

impl Default for HostDebugSave {
    fn default() -> Self {
        Self::new()
    }
}

fn this_cpu_save() -> &'static HostDebugSave {
    &super::cpu::this_cpu().host_debug
}

/// (breakpoints, watchpoints) the CPU implements (`ID_AA64DFR0_EL1.BRPs/WRPs` + 1).
fn counts() -> (usize, usize) {
    let dfr0 = ID_AA64DFR0_EL1.get();
    let brps = ((dfr0 >> 12) & 0xf) as usize + 1;
    let wrps = ((dfr0 >> 20) & 0xf) as usize + 1;
    (brps.min(16), wrps.min(16))
}

macro_rules! indexed_debug_regs {
    ($($n:literal),* $(,)?) => {
        /// Reads breakpoint (`watch` false) or watchpoint `n`'s (value, control) registers.
        fn read_pair(watch: bool, n: usize) -> (u64, u64) {
            let (v, c): (u64, u64);
            match (watch, n) {
                $(
                    // SAFETY: debug registers of a pair the CPU implements (the caller checks n
                    // against ID_AA64DFR0_EL1); reads at EL2 have no side effects.
                    (false, $n) => unsafe {
                        asm!(
                            concat!("mrs {v}, dbgbvr", stringify!($n), "_el1"),
                            concat!("mrs {c}, dbgbcr", stringify!($n), "_el1"),
                            v = out(reg) v, c = out(reg) c, options(nomem, nostack)
                        )
                    },
                    // SAFETY: as above.
                    (true, $n) => unsafe {
                        asm!(
                            concat!("mrs {v}, dbgwvr", stringify!($n), "_el1"),
                            concat!("mrs {c}, dbgwcr", stringify!($n), "_el1"),
                            v = out(reg) v, c = out(reg) c, options(nomem, nostack)
                        )
                    },
                )*
                _ => return (0, 0),
            }
            (v, c)
        }

        /// Writes breakpoint or watchpoint `n`'s (value, control) registers.
        fn write_pair(watch: bool, n: usize, v: u64, c: u64) {
            match (watch, n) {
                $(
                    // SAFETY: as in `read_pair`; the world whose registers these are is the one
                    // about to run (or running) at EL1; nothing at EL2 takes debug exceptions.
                    (false, $n) => unsafe {
                        asm!(
                            concat!("msr dbgbvr", stringify!($n), "_el1, {v}"),
                            concat!("msr dbgbcr", stringify!($n), "_el1, {c}"),
                            v = in(reg) v, c = in(reg) c, options(nomem, nostack)
                        )
                    },
                    // SAFETY: as above.
                    (true, $n) => unsafe {
                        asm!(
                            concat!("msr dbgwvr", stringify!($n), "_el1, {v}"),
                            concat!("msr dbgwcr", stringify!($n), "_el1, {c}"),
                            v = in(reg) v, c = in(reg) c, options(nomem, nostack)
                        )
                    },
                )*
                _ => {}
            }
        }
    };
}

indexed_debug_regs!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

fn read_mdccint() -> u64 {
    let v: u64;
    // SAFETY: MDCCINT_EL1, a plain register read at EL2.
    unsafe { asm!("mrs {}, mdccint_el1", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_mdccint(v: u64) {
    // SAFETY: the running (or about to run) world's MDCCINT_EL1.
    unsafe { asm!("msr mdccint_el1, {}", in(reg) v, options(nomem, nostack)) };
}

/// The real OS lock (`OSLSR_EL1.OSLK`; aarch64-cpu has no OSLSR_EL1, hence the raw read).
fn os_lock() -> bool {
    let v: u64;
    // SAFETY: OSLSR_EL1 (S2_0_C1_C1_4), a read-only status register.
    unsafe { asm!("mrs {}, S2_0_C1_C1_4", out(reg) v, options(nomem, nostack)) };
    v & 0b10 != 0
}

fn set_os_lock(locked: bool) {
    use aarch64_cpu::registers::OSLAR_EL1;
    OSLAR_EL1.set(u64::from(locked));
}

/// What the hyp keeps of the host's debug state for the run of a guest.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostDebug {
    mdscr: u64,
    oslk: bool,
}

/// From the host to a guest (before `MDCR_EL2` is loaded; returns what [`switch_to_host`] needs).
/// The guest's `MDSCR_EL1` and OS lock become live; its breakpoint and watchpoint registers too
/// if it has debug exceptions on.
pub fn switch_to_guest(g: &DebugState) -> HostDebug {
    let host = HostDebug {
        mdscr: MDSCR_EL1.get(),
        oslk: os_lock(),
    };
    if host.oslk != g.oslk {
        set_os_lock(g.oslk);
    }
    if g.mdscr & (MDSCR_MDE | MDSCR_KDE) != 0 {
        load(g);
    }
    MDSCR_EL1.set(g.mdscr);
    host
}

/// Whether the guest running on this CPU has its breakpoint and watchpoint registers loaded.
fn guest_loaded() -> bool {
    this_cpu_save().loaded.load(Ordering::Relaxed)
}

/// Whether `MDCR_EL2.TDA` traps the running guest's debug registers: until it has taken them,
/// and, where the CPU does not honour `MDSCR_EL1.TDCC` for EL0 (QEMU 7.2), while its TDCC is
/// set, so that its EL0's DCC accesses reach the hyp, which takes them to the guest's EL1
/// ([`dcc_trapped_at_el1`]). (A guest that sets TDCC without a trap, its registers loaded, has
/// it enforced from its next run on.)
pub fn guest_tda(g: &DebugState) -> bool {
    !guest_loaded() || g.mdscr & MDSCR_TDCC != 0
}

fn update_tda(g: &DebugState) {
    MDCR_EL2.modify(if guest_tda(g) {
        MDCR_EL2::TDA::SET
    } else {
        MDCR_EL2::TDA::CLEAR
    });
}

/// Whether a trapped DCC access, from the context `pstate`, is one the guest's `MDSCR_EL1.TDCC`
/// traps to its own EL1: from its EL0 (AArch64; in AArch32 QEMU gives EL0 no DCC registers).
pub fn dcc_trapped_at_el1(g: &DebugState, pstate: u64) -> bool {
    let el0_aarch64 = pstate & 0x10 == 0 && (pstate >> 2) & 3 == 0;
    el0_aarch64 && g.mdscr & MDSCR_TDCC != 0
}

/// Saves the host's breakpoint/watchpoint registers and `MDCCINT_EL1` in this CPU's data and loads
/// the guest's.
fn load(g: &DebugState) {
    let save = this_cpu_save();
    if save.loaded.load(Ordering::Relaxed) {
        return;
    }
    let (brps, wrps) = counts();
    let sets = [
        (false, brps, &save.bvr, &save.bcr, &g.bvr, &g.bcr),
        (true, wrps, &save.wvr, &save.wcr, &g.wvr, &g.wcr),
    ];
    for (watch, count, sv, sc, gv, gc) in sets {
        let pairs = sv.iter().zip(sc).zip(gv.iter().zip(gc));
        for (n, ((sv, sc), (&gv, &gc))) in pairs.enumerate().take(count) {
            let (v, c) = read_pair(watch, n);
            sv.store(v, Ordering::Relaxed);
            sc.store(c, Ordering::Relaxed);
            write_pair(watch, n, gv, gc);
        }
    }
    save.mdccint.store(read_mdccint(), Ordering::Relaxed);
    write_mdccint(g.mdccint);
    save.loaded.store(true, Ordering::Relaxed);
}

/// From a guest back to the host (after the guest's last exit, before `MDCR_EL2` is the host's
/// again): saves the guest's live debug state into `g` and puts the host's back.
pub fn switch_to_host(g: &mut DebugState, host: &HostDebug) {
    g.mdscr = MDSCR_EL1.get();
    MDSCR_EL1.set(host.mdscr);
    let save = this_cpu_save();
    if save.loaded.load(Ordering::Relaxed) {
        let (brps, wrps) = counts();
        let sets = [
            (false, brps, &save.bvr, &save.bcr, &mut g.bvr, &mut g.bcr),
            (true, wrps, &save.wvr, &save.wcr, &mut g.wvr, &mut g.wcr),
        ];
        for (watch, count, sv, sc, gv, gc) in sets {
            let pairs = sv.iter().zip(sc).zip(gv.iter_mut().zip(gc.iter_mut()));
            for (n, ((sv, sc), (gv, gc))) in pairs.enumerate().take(count) {
                (*gv, *gc) = read_pair(watch, n);
                write_pair(
                    watch,
                    n,
                    sv.load(Ordering::Relaxed),
                    sc.load(Ordering::Relaxed),
                );
            }
        }
        g.mdccint = read_mdccint();
        write_mdccint(save.mdccint.load(Ordering::Relaxed));
        save.loaded.store(false, Ordering::Relaxed);
    }
    if host.oslk != g.oslk {
        set_os_lock(host.oslk);
    }
}

/// A guest's trapped access to a switched debug register (its registers are not loaded, so
/// `MDCR_EL2.TDA` trapped it): the guest takes its registers (loaded now, `TDA` cleared for the
/// rest of the run, as KVM's `kvm_debug_set_guest_ownership`), then the access is done on them.
/// `write` = `None` for a read. -> the value read, or `None` if the register does not exist
/// (a breakpoint or watchpoint beyond the CPU's: undefined).
pub fn guest_access(g: &mut DebugState, reg: DebugReg, write: Option<u64>) -> Option<u64> {
    let (brps, wrps) = counts();
    let ok = match reg {
        DebugReg::Bvr(n) | DebugReg::Bcr(n) => usize::from(n) < brps,
        DebugReg::Wvr(n) | DebugReg::Wcr(n) => usize::from(n) < wrps,
        DebugReg::Mdccint | DebugReg::Mdscr => true,
    };
    if !ok {
        return None;
    }
    // The shadow copy first (it is what `load` puts in place), then the live register.
    let slot = match reg {
        DebugReg::Bvr(n) => g.bvr.get_mut(usize::from(n)),
        DebugReg::Bcr(n) => g.bcr.get_mut(usize::from(n)),
        DebugReg::Wvr(n) => g.wvr.get_mut(usize::from(n)),
        DebugReg::Wcr(n) => g.wcr.get_mut(usize::from(n)),
        DebugReg::Mdccint => Some(&mut g.mdccint),
        DebugReg::Mdscr => Some(&mut g.mdscr),
    }?;
    if let Some(v) = write {
        *slot = v;
    }
    let value = *slot;
    if reg == DebugReg::Mdscr {
        // Live in every case (the shadow's twin while the registers are not loaded).
        MDSCR_EL1.set(value);
    }
    if !guest_loaded() {
        load(g);
    } else if write.is_some() {
        // Loaded and still trapped (TDCC, see `guest_tda`): every access of the run trapped,
        // so the copies are equal; the write goes to both.
        write_live(reg, g);
    }
    update_tda(g);
    Some(value)
}

/// Writes one switched register's live copy from `g`.
fn write_live(reg: DebugReg, g: &DebugState) {
    let pair = |watch: bool, n: u8, v: &[u64; 16], c: &[u64; 16]| {
        let n = usize::from(n);
        if let (Some(&v), Some(&c)) = (v.get(n), c.get(n)) {
            write_pair(watch, n, v, c);
        }
    };
    match reg {
        DebugReg::Bvr(n) | DebugReg::Bcr(n) => pair(false, n, &g.bvr, &g.bcr),
        DebugReg::Wvr(n) | DebugReg::Wcr(n) => pair(true, n, &g.wvr, &g.wcr),
        DebugReg::Mdccint => write_mdccint(g.mdccint),
        DebugReg::Mdscr => MDSCR_EL1.set(g.mdscr),
    }
}

/// A guest's write of `OSLAR_EL1` (always trapped, `MDCR_EL2.TDOSA`): its OS lock, which the real
/// one follows while it runs.
pub fn guest_os_lock(g: &mut DebugState, locked: bool) {
    g.oslk = locked;
    set_os_lock(locked);
}
