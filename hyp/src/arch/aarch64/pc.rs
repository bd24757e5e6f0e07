//! Moving a world past an instruction the hyp emulated or completed for it, as the CPU would
//! have moved past it (Linux KVM's `kvm_skip_instr`): 4 bytes in AArch64 and A32, 2 or 4 in T32
//! as the exit's syndrome says (`ESR_EL2.IL`), the T32 IT state advanced as if the instruction
//! had executed (`kvm_adjust_itstate`: an exception leaves ITSTATE as it was for the instruction
//! that took it), `PSTATE.BTYPE` (AArch64) and `PSTATE.SS` (the software-step state machine)
//! cleared. And whether a trapped AArch32 instruction should have executed at all
//! (`kvm_condition_valid32`): a conditional instruction may trap although its condition fails.

/// `ESR_ELx.IL`: a 32-bit instruction (else a 16-bit T32 one).
pub const ESR_IL: u64 = 1 << 25;
/// SPSR.M[4]: the interrupted context is AArch32.
const PSR_AA32: u64 = 1 << 4;
/// SPSR.T (AArch32): T32.
const PSR_T: u64 = 1 << 5;
/// SPSR.IT (AArch32): IT[7:2] in bits 15:10, IT[1:0] in bits 26:25.
const PSR_IT: u64 = 0x0600_fc00;
/// SPSR.BTYPE (AArch64 only: in AArch32 these bits are IT[3:2]).
const PSR_BTYPE: u64 = 0b11 << 10;
/// SPSR.SS.
const PSR_SS: u64 = 1 << 21;

/// Advances `pc`/`pstate` (the interrupted context, as in `ELR_EL2`/`SPSR_EL2`) past the
/// instruction that trapped; `wide` is `ESR_EL2.IL` of its exit.
pub fn skip(pc: &mut u64, pstate: &mut u64, wide: bool) {
    if *pstate & PSR_AA32 == 0 {
        *pc = pc.wrapping_add(4);
        *pstate &= !PSR_BTYPE;
    } else {
        let len = if *pstate & PSR_T != 0 && !wide { 2 } else { 4 };
        *pc = u64::from((*pc as u32).wrapping_add(len));
        *pstate = advance_it(*pstate);
    }
    *pstate &= !PSR_SS;
}

/// ITAdvance() on an AArch32 PSTATE (Arm ARM, AArch32 `ITAdvance`): the next instruction of an
/// IT block gets the next condition, the last one leaves the block.
fn advance_it(pstate: u64) -> u64 {
    if pstate & PSR_T == 0 || pstate & PSR_IT == 0 {
        return pstate;
    }
    let it = it_state(pstate);
    let next = if it & 0b111 == 0 {
        0
    } else {
        (it & 0xe0) | ((it << 1) & 0x1f)
    };
    (pstate & !PSR_IT) | ((next & 0xfc) << 8) | ((next & 0b11) << 25)
}

/// ITSTATE (IT[7:0]) of an AArch32 PSTATE.
fn it_state(pstate: u64) -> u64 {
    ((pstate >> 8) & 0xfc) | ((pstate >> 25) & 0b11)
}

/// Whether the AArch32 instruction that trapped with syndrome `esr` (EC 0x01..0x0c) should have
/// executed: the condition it names (ISS.CV/COND, or the T32 IT state when the syndrome has
/// none) holds for the flags in `pstate`. Unconditional classes (EC >= 0x10) always hold.
pub fn condition_holds(esr: u64, pstate: u64) -> bool {
    // Bits 31:30 non-zero: EC 0x10 and above, which carry no condition.
    if (esr >> 30) & 0b11 != 0 {
        return true;
    }
    let cond = if esr & (1 << 24) != 0 {
        (esr >> 20) & 0xf
    } else {
        // No valid condition in the syndrome (T32): the IT state gives it.
        let it = it_state(pstate);
        if it == 0 {
            return true;
        }
        it >> 4
    };
    let (n, z, c, v) = (
        (pstate >> 31) & 1 != 0,
        (pstate >> 30) & 1 != 0,
        (pstate >> 29) & 1 != 0,
        (pstate >> 28) & 1 != 0,
    );
    let base = match cond >> 1 {
        0 => z,
        1 => c,
        2 => n,
        3 => v,
        4 => c && !z,
        5 => n == v,
        6 => !z && n == v,
        // AL (0b1110); 0b1111 also executes (unconditional encodings).
        _ => return true,
    };
    // An odd condition is the even one inverted.
    base != (cond & 1 != 0)
}
