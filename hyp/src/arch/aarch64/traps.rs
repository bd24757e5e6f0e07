//! What the hyp does with a trap it does not forward (Trust rule 5): a guest's system-register
//! access it emulates (the physical timer, debug registers, `ACTLR_EL1`, RAS error records),
//! and for everything else, guest or host, an undefined-instruction exception injected into the
//! world that ran the instruction, never a hyp crash.

use super::esr;
use super::inject::{inject_live, Injected};
use super::switch::GuestContext;
use super::timer::{self, PtimerReg};

/// A trapped `MRS`/`MSR`/system instruction (EC 0x18), decoded from its ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// (op0, op1, CRn, CRm, op2).
    pub enc: (u8, u8, u8, u8, u8),
    /// General register (31 = xzr).
    pub rt: usize,
    /// MRS (a read) rather than MSR.
    pub read: bool,
}

impl SysRegAccess {
    pub fn decode(esr: u64) -> Self {
        let iss = esr & 0x1ff_ffff;
        let f = |shift: u32, bits: u32| ((iss >> shift) & ((1 << bits) - 1)) as u8;
        SysRegAccess {
            enc: (f(20, 2), f(14, 3), f(10, 4), f(1, 4), f(17, 3)),
            rt: usize::from(f(5, 5)),
            read: iss & 1 != 0,
        }
    }
}

/// How the hyp answers an emulated register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emulated {
    Ptimer(PtimerReg),
    Mdscr,
    OsLar,
    OsLsr,
    /// Reads as zero, writes ignored.
    RazWi,
    /// Not emulated: undefined instruction.
    Undef,
}

/// Which registers a guest's trapped access is emulated as (KVM makes the same choices: the
/// physical timer is emulated, debug registers read back what the vCPU wrote or RAZ/WI, as do
/// `ACTLR_EL1` and the RAS error records; the PMU of a VM without one, trace, LORegions,
/// IMPLEMENTATION DEFINED registers and everything unknown are UNDEF).
fn classify(enc: (u8, u8, u8, u8, u8)) -> Emulated {
    match enc {
        (3, 3, 14, 2, 0) => Emulated::Ptimer(PtimerReg::Tval),
        (3, 3, 14, 2, 1) => Emulated::Ptimer(PtimerReg::Ctl),
        (3, 3, 14, 2, 2) => Emulated::Ptimer(PtimerReg::Cval),
        (2, 0, 0, 2, 2) => Emulated::Mdscr,
        (2, 0, 1, 0, 4) => Emulated::OsLar,
        (2, 0, 1, 1, 4) => Emulated::OsLsr,
        // The rest of the debug space (breakpoints, watchpoints, DCC, OS double lock, claim
        // tags, ...): op0 = 2 with op1 = 0 or 3. op1 = 1 is trace: UNDEF.
        (2, 0 | 3, _, _, _) => Emulated::RazWi,
        // ACTLR_EL1 (HCR_EL2.TACR).
        (3, 0, 1, 0, 1) => Emulated::RazWi,
        // ERRIDR_EL1, ERRSELR_EL1, ERX*_EL1 (HCR_EL2.TERR).
        (3, 0, 5, 3..=5, _) => Emulated::RazWi,
        _ => Emulated::Undef,
    }
}

/// `OSLSR_EL1` of an emulated vCPU: OSLM = 0b10 (the OS lock is implemented), OSLK as written.
fn oslsr(oslk: bool) -> u64 {
    0b1000 | (u64::from(oslk) << 1)
}

/// Emulates a guest's trapped system-register access. `false`: the hyp does not emulate it.
fn emulate_sysreg(ctx: &mut GuestContext, a: SysRegAccess) -> bool {
    let value = ctx.reg(a.rt);
    let result = match classify(a.enc) {
        Emulated::Undef => return false,
        Emulated::Ptimer(r) => {
            let now = timer::counter();
            if a.read {
                ctx.ptimer.read(r, now)
            } else {
                ctx.ptimer.write(r, value, now);
                0
            }
        }
        Emulated::Mdscr => {
            if !a.read {
                ctx.debug.mdscr = value;
            }
            ctx.debug.mdscr
        }
        Emulated::OsLar => {
            if !a.read {
                ctx.debug.oslk = value & 1 != 0;
            }
            0
        }
        Emulated::OsLsr => oslsr(ctx.debug.oslk),
        Emulated::RazWi => 0,
    };
    if a.read {
        ctx.set_reg(a.rt, result);
    }
    true
}

/// A guest's trap that is neither a stage-2 abort nor a call: emulated where the hyp emulates it,
/// else answered with an undefined-instruction exception at the guest's own EL1. The guest's EL1
/// state must be live (inside the run loop).
pub fn guest_trap(ctx: &mut GuestContext) {
    let esr_el2 = ctx.exit_esr;
    if esr::ec(esr_el2) == esr::EC_SYS64 && emulate_sysreg(ctx, SysRegAccess::decode(esr_el2)) {
        ctx.pc = ctx.pc.wrapping_add(4);
        return;
    }
    inject_live(Injected::Undef, &mut ctx.pc, &mut ctx.pstate, esr_el2, 0);
}

/// A trap from the host the hyp does not handle: an undefined-instruction exception at the host's
/// EL1. `elr`/`spsr` are the host's trap frame.
pub fn host_undef(elr: &mut u64, spsr: &mut u64, esr_el2: u64) {
    inject_live(Injected::Undef, elr, spsr, esr_el2, 0);
}
