//! The generic timer across the world switch.
//!
//! - Virtual timer: each world has its own `CNTV_CTL_EL0`/`CNTV_CVAL_EL0`, switched on every
//!   world switch, and each VM its own `CNTVOFF_EL2` (the physical count when it was created), so
//!   a guest's virtual count starts near 0 and a guest's armed timer never fires in the host.
//! - Physical timer: the host's (it drives the host's preemption tick, Trust rule 6). While a
//!   guest runs, `CNTHCTL_EL2.EL1PCEN` is clear: a guest's `CNTP_*` access traps and is emulated
//!   on the vCPU's own copy ([`PtimerRegs`]), which never raises an interrupt. The physical count
//!   stays readable (`EL1PCTEN`).

use aarch64_cpu::registers::{
    Readable, Writeable, CNTHCTL_EL2, CNTPCT_EL0, CNTVOFF_EL2, CNTV_CTL_EL0, CNTV_CVAL_EL0,
};

/// `CNT*_CTL` bits a world may set (ENABLE, IMASK); ISTATUS is read-only.
const CTL_WRITABLE: u64 = 0b011;
const CTL_ENABLE: u64 = 0b001;
const CTL_ISTATUS: u64 = 0b100;

/// One world's virtual timer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtimerRegs {
    pub ctl: u64,
    pub cval: u64,
}

/// A vCPU's emulated EL1 physical timer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtimerRegs {
    pub ctl: u64,
    pub cval: u64,
}

/// The physical count.
pub fn counter() -> u64 {
    CNTPCT_EL0.get()
}

/// Saves the live virtual timer into `out` and loads `next` with `cntvoff`. The timer is disabled
/// while its compare value and offset change, so no world sees a spurious interrupt condition.
pub fn switch_vtimer(out: &mut VtimerRegs, next: &VtimerRegs, cntvoff: u64) {
    out.ctl = CNTV_CTL_EL0.get() & CTL_WRITABLE;
    out.cval = CNTV_CVAL_EL0.get();
    CNTV_CTL_EL0.set(0);
    CNTVOFF_EL2.set(cntvoff);
    CNTV_CVAL_EL0.set(next.cval);
    CNTV_CTL_EL0.set(next.ctl & CTL_WRITABLE);
}

/// `CNTHCTL_EL2` for the host: its physical timer and counter do not trap.
pub fn host_cnthctl() {
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCEN::SET + CNTHCTL_EL2::EL1PCTEN::SET);
}

/// `CNTHCTL_EL2` for a guest: the physical timer traps (emulated), the counter does not.
pub fn guest_cnthctl() {
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCEN::CLEAR + CNTHCTL_EL2::EL1PCTEN::SET);
}

/// Which emulated physical-timer register a trapped access named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtimerReg {
    Ctl,
    Cval,
    Tval,
}

impl PtimerRegs {
    /// A guest's read of its physical timer at physical count `now`.
    pub fn read(&self, reg: PtimerReg, now: u64) -> u64 {
        match reg {
            PtimerReg::Ctl => {
                let fired = self.ctl & CTL_ENABLE != 0 && now >= self.cval;
                (self.ctl & CTL_WRITABLE) | if fired { CTL_ISTATUS } else { 0 }
            }
            PtimerReg::Cval => self.cval,
            // TVAL is the signed 32-bit distance to CVAL (bits 63:32 read as zero).
            PtimerReg::Tval => self.cval.wrapping_sub(now) & 0xffff_ffff,
        }
    }

    /// A guest's write to its physical timer at physical count `now`.
    pub fn write(&mut self, reg: PtimerReg, value: u64, now: u64) {
        match reg {
            PtimerReg::Ctl => self.ctl = value & CTL_WRITABLE,
            PtimerReg::Cval => self.cval = value,
            PtimerReg::Tval => {
                self.cval = now.wrapping_add(i64::from(value as u32 as i32) as u64);
            }
        }
    }
}
