//! Entering EL1 for the first time (the host shim, or an EL1 test image).

#[allow(unused_imports)]
use aarch64_cpu::registers::Readable;
use aarch64_cpu::registers::{Writeable, CNTHCTL_EL2, CNTVOFF_EL2, CPTR_EL2, HCR_EL2, SCTLR_EL1};
use core::arch::asm;

/// `HCR_EL2` for the host: its own stage-2 on (VM), EL1 is AArch64, HVC reaches EL2 (HCD
/// clear), every SMC traps to EL2 (TSC: only the hyp talks to the firmware, `crate::psci`),
/// pointer-auth instructions do not trap.
pub fn host_hcr() -> u64 {
    (HCR_EL2::VM::Enable
        + HCR_EL2::RW::EL1IsAarch64
        + HCR_EL2::TSC::SET
        + HCR_EL2::API::SET
        + HCR_EL2::APK::SET)
        .value
}

/// Makes the host take a synchronous external abort at its EL1 on return from this trap: the
/// host touched memory its stage-2 does not give it. `frame` is the host's trap frame.
pub fn inject_host_abort(frame: &mut crate::arch::vectors::TrapFrame, far: u64, instruction: bool) {
    let ec: u64 = if instruction { 0x21 } else { 0x25 };
    let esr = (ec << 26) | (1 << 25) | 0x10;
    let vbar = super::switch::take_el1_exception(esr, far, frame.elr, frame.spsr);
    frame.elr = vbar + 0x200;
    frame.spsr = 0x3c5;
}

/// Sets up the EL1 world and `eret`s to `entry` with `x0..x3 = args`. Never returns: the host
/// comes back to EL2 only through the vectors, on a fresh stack starting at `el2_stack_top`.
pub fn enter(entry: u64, args: [u64; 4], el2_stack_top: u64, vttbr: u64, vtcr: u64) -> ! {
    super::switch::load_stage2(host_hcr(), vttbr, vtcr);
    // EL1 may use FP/SIMD and the physical/virtual timers and counters.
    CPTR_EL2.set(0x33ff);
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCEN::SET + CNTHCTL_EL2::EL1PCTEN::SET);
    CNTVOFF_EL2.set(0);
    // MMU, caches and alignment checks off at EL1, little-endian; RES1 bits set.
    SCTLR_EL1.set(0x30d0_0800);
    let spsr: u64 = 0x3c5; // EL1h, DAIF masked
                           // SAFETY: ELR/SPSR point at the loaded EL1 image; `eret` leaves EL2 for good, so nothing on
                           // the current EL2 stack is live any more and SP can be reset to this CPU's stack top.
    unsafe {
        asm!(
            "msr elr_el2, {entry}",
            "msr spsr_el2, {spsr}",
            "msr sp_el1, xzr",
            "mov sp, {stack}",
            "isb",
            "eret",
            entry = in(reg) entry,
            spsr = in(reg) spsr,
            stack = in(reg) el2_stack_top,
            in("x0") args[0],
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            options(noreturn)
        )
    }
}
