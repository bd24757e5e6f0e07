//! Making an EL1 world (the host or a guest) take a synchronous exception at its own EL1, as the
//! hardware would have: the syndrome in `ESR_EL1`/`FAR_EL1`, the return state in
//! `ELR_EL1`/`SPSR_EL1`, and the vector chosen by where the exception came from (EL1 on SP_EL0,
//! EL1 on SP_EL1, EL0 in AArch64, EL0 in AArch32).

use aarch64_cpu::registers::{
    Readable, Writeable, ELR_EL1, ESR_EL1, FAR_EL1, SCTLR_EL1, SPSR_EL1, VBAR_EL1,
};
use trap_frame::{spsr, vector};

/// ESR of an injected undefined-instruction exception (EC 0); the IL bit is the trapped one's.
pub const EC_UNKNOWN: u64 = 0x00;
const ESR_IL: u64 = 1 << 25;
/// DFSC/IFSC of the aborts the hyp injects: synchronous external abort.
const FSC_SEA: u64 = 0x10;

pub use hyp_calls::exit::Injected;

/// The interrupted context's PSTATE (as saved in SPSR_EL2) came from EL0 or AArch32.
fn from_lower_el(spsr: u64) -> bool {
    spsr & spsr::M_AARCH32 != 0 || (spsr >> 2) & 3 == 0
}

/// Offset of the synchronous vector from `VBAR_EL1` for an exception taken from `spsr`.
pub fn vector_offset(spsr: u64) -> u64 {
    if spsr & spsr::M_AARCH32 != 0 {
        vector::LOWER_A32
    } else if (spsr >> 2) & 3 == 0 {
        vector::LOWER_A64
    } else if spsr & 1 == 0 {
        vector::CURRENT_SP0
    } else {
        vector::CURRENT_SPX
    }
}

/// The ESR_EL1 value for `what`, taken from the context `spsr`; `trapped_esr` gives the
/// instruction length (IL) of the instruction that trapped.
pub fn esr_for(what: Injected, spsr: u64, trapped_esr: u64) -> u64 {
    let il = trapped_esr & ESR_IL;
    let lower = from_lower_el(spsr);
    match what {
        Injected::Undef => (EC_UNKNOWN << 26) | il,
        Injected::DataAbort => ((if lower { 0x24 } else { 0x25 }) << 26) | il | FSC_SEA,
        Injected::InstructionAbort => ((if lower { 0x20 } else { 0x21 }) << 26) | il | FSC_SEA,
        Injected::Trap => trapped_esr & 0xffff_ffff,
    }
}

/// PSTATE on entry to EL1h: DAIF masked, PAN set unless `SCTLR_EL1.SPAN`, SSBS from
/// `SCTLR_EL1.DSSBS`, DIT kept (AArch64 sources only), everything else clear.
pub fn entry_pstate(spsr: u64, sctlr: u64) -> u64 {
    const PAN: u64 = 1 << 22;
    const DIT: u64 = 1 << 24;
    const SSBS: u64 = 1 << 12;
    let mut p = spsr::EL1H_MASKED;
    let aarch64 = spsr & spsr::M_AARCH32 == 0;
    if sctlr & (1 << 23) == 0 {
        p |= PAN;
    } else if aarch64 {
        p |= spsr & PAN;
    }
    if aarch64 {
        p |= spsr & DIT;
    }
    if sctlr & (1 << 44) != 0 {
        p |= SSBS;
    }
    p
}

/// Makes the EL1 world whose registers are live on this CPU take `what` on return from this trap.
/// `pc`/`pstate` are the interrupted context (ELR_EL2/SPSR_EL2 values); they are rewritten to
/// enter its EL1 vector. `far` is written to FAR_EL1 for aborts.
pub fn inject_live(what: Injected, pc: &mut u64, pstate: &mut u64, trapped_esr: u64, far: u64) {
    let esr = esr_for(what, *pstate, trapped_esr);
    // EL1 state only, of the world whose exception this is; nothing runs at EL1 meanwhile.
    // FAR_EL1 is UNKNOWN after an undefined-instruction exception or a trap, so it is only
    // written for aborts.
    ESR_EL1.set(esr);
    ELR_EL1.set(*pc);
    SPSR_EL1.set(*pstate);
    let vbar = VBAR_EL1.get();
    let sctlr = SCTLR_EL1.get();
    if matches!(what, Injected::DataAbort | Injected::InstructionAbort) {
        FAR_EL1.set(far);
    }
    let new_pstate = entry_pstate(*pstate, sctlr);
    *pc = vbar.wrapping_add(vector_offset(*pstate));
    *pstate = new_pstate;
}
