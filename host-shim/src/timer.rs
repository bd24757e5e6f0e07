//! The host's preemption tick: its EL1 physical timer (PPI 30), armed around every `VcpuRun` so a
//! guest that never traps still gives the CPU back (Trust rule 6). The host keeps `PSTATE.I`
//! masked: the interrupt only pends, which is enough for the hyp to end the guest's run with an
//! interrupt exit; disarming the timer drops the (level-sensitive) interrupt again.

use core::arch::asm;

/// `CNTP_CTL_EL0.ENABLE` (IMASK clear).
const CTL_ENABLE: u64 = 1;

/// The host's own timer state around an armed run, put back by [`disarm`].
#[derive(Clone, Copy, Debug)]
pub struct Saved {
    ctl: u64,
    cval: u64,
}

/// Counter ticks per millisecond.
pub fn ticks_per_ms() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    (f / 1000).max(1)
}

/// Arms the physical timer to fire in `ticks`; returns what it held before.
pub fn arm(ticks: u64) -> Saved {
    let (ctl, cval): (u64, u64);
    let tval = ticks.min(i32::MAX as u64);
    // SAFETY: the host's own EL1 physical timer; interrupts stay masked at EL1.
    unsafe {
        asm!(
            "mrs {ctl}, cntp_ctl_el0",
            "mrs {cval}, cntp_cval_el0",
            "msr cntp_tval_el0, {tval}",
            "msr cntp_ctl_el0, {en}",
            "isb",
            ctl = out(reg) ctl,
            cval = out(reg) cval,
            tval = in(reg) tval,
            en = in(reg) CTL_ENABLE,
            options(nostack)
        )
    };
    Saved { ctl: ctl & 3, cval }
}

/// Disarms the timer and puts back what [`arm`] found.
pub fn disarm(saved: Saved) {
    // SAFETY: as in `arm`; disabling first drops the interrupt before the old values return.
    unsafe {
        asm!(
            "msr cntp_ctl_el0, xzr",
            "msr cntp_cval_el0, {cval}",
            "msr cntp_ctl_el0, {ctl}",
            "isb",
            cval = in(reg) saved.cval,
            ctl = in(reg) saved.ctl,
            options(nostack)
        )
    };
}
