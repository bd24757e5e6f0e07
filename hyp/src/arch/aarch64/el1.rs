//! Entering EL1 for the first time (the host shim, or an EL1 test image), and the host's traps
//! the hyp answers with an exception at the host's own EL1.

#[allow(unused_imports)]
use aarch64_cpu::registers::Readable;
use aarch64_cpu::registers::{Writeable, CNTVOFF_EL2, CPTR_EL2, HCR_EL2, SCTLR_EL1};
use core::arch::asm;

use super::inject::{inject_live, Injected};
use super::{timer, vgic};

/// `HCR_EL2` for the host: its own stage-2 on (VM), EL1 is AArch64, HVC reaches EL2 (HCD
/// clear), every SMC traps to EL2 (TSC: only the hyp talks to the firmware, `crate::psci`),
/// pointer-auth instructions do not trap (the keys are switched), set/way invalidation
/// cleans too (SWIO: a host cannot discard the hyp's or a guest's dirty lines),
/// IMPLEMENTATION DEFINED registers trap (TIDCP: they may control the CPU the hyp relies on; the
/// hyp answers them with an undefined instruction), and `SCXTNUM_EL0/EL1` are the host's to use
/// where the CPU has them (EnSCXT; the host is told it has them). They are not switched: a
/// guest runs with EnSCXT clear, so its accesses trap and are UNDEF (its ID registers say it
/// has none), and the host's values never reach it.
pub fn host_hcr() -> u64 {
    let mut hcr = (HCR_EL2::VM::Enable
        + HCR_EL2::RW::EL1IsAarch64
        + HCR_EL2::TSC::SET
        + HCR_EL2::API::SET
        + HCR_EL2::APK::SET
        + HCR_EL2::SWIO::SET
        + HCR_EL2::TIDCP::SET)
        .value;
    if super::features::has(super::features::SCXTNUM) {
        hcr |= HCR_EL2::EnSCXT::SET.value;
    }
    hcr
}

/// `CPTR_EL2` for every world (non-VHE layout): RES1 bits 13, 9, 7:0; FP/SIMD not trapped (TFP,
/// bit 10, clear); SVE (TZ, bit 8), SME (TSM, bit 12) and trace registers (TTA, bit 20) trapped:
/// the hyp answers them with an undefined-instruction exception in the world that tried.
pub const CPTR_EL2_VALUE: u64 = CPTR_EL2_RES1 | CPTR_EL2_TZ | CPTR_EL2_TSM | CPTR_EL2_TTA;
/// `CPTR_EL2`'s RES1 bits (non-VHE): 13, 9 and 7:0.
const CPTR_EL2_RES1: u64 = (1 << 13) | (1 << 9) | 0xff;
/// `CPTR_EL2.TZ`: SVE traps.
const CPTR_EL2_TZ: u64 = 1 << 8;
/// `CPTR_EL2.TSM`: SME traps.
const CPTR_EL2_TSM: u64 = 1 << 12;
/// `CPTR_EL2.TTA`: trace-register accesses trap.
const CPTR_EL2_TTA: u64 = 1 << 20;
const _: () = assert!(CPTR_EL2_VALUE == 0x33ff | (1 << 20));

/// `SCTLR_EL1` of a world that has not run yet: MMU, caches and alignment checks off,
/// little-endian; only the RES1 bits (29:28, 23:22, 20, 11) set.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// Makes the host take a synchronous external abort at its EL1 on return from this trap: the
/// host touched memory its stage-2 does not give it (or fetched from where nothing executes).
/// `frame` is the host's trap frame.
pub fn inject_host_abort(
    frame: &mut crate::arch::vectors::TrapFrame,
    far: u64,
    instruction: bool,
    esr_el2: u64,
) {
    let what = if instruction {
        Injected::InstructionAbort
    } else {
        Injected::DataAbort
    };
    inject_live(what, &mut frame.elr, &mut frame.spsr, esr_el2, far);
}

/// Sets up the EL1 world and `eret`s to `entry` with `x0..x3 = args`. Never returns: the host
/// comes back to EL2 only through the vectors, on a fresh stack starting at `el2_stack_top`.
pub fn enter(entry: u64, args: [u64; 4], el2_stack_top: u64, vttbr: u64, vtcr: u64) -> ! {
    super::switch::load_stage2(host_hcr(), vttbr, vtcr);
    CPTR_EL2.set(CPTR_EL2_VALUE);
    // EL1 may use the physical/virtual timers and counters; the GIC's system registers.
    timer::host_cnthctl();
    CNTVOFF_EL2.set(0);
    vgic::init_el2();
    super::vtimer::init_cpu();
    // The host reads the CPU's own identity (VMPIDR_EL2/VPIDR_EL2 reset to UNKNOWN values).
    super::switch::VcpuIdRegs::physical().load();
    // MMU, caches and alignment checks off at EL1, little-endian; RES1 bits set.
    SCTLR_EL1.set(SCTLR_EL1_RESET);
    let spsr = trap_frame::spsr::EL1H_MASKED;
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
