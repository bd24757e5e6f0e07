//! The host's own registers and instructions, for `host reg-write` / `host reg-read` /
//! `host exec` (SCENARIOS.md "Registers across the world switch"). Each access runs under the
//! probe of [`crate::exceptions`], so an undefined-instruction exception (or an abort) the hyp
//! injects comes back as a [`HostFault`] instead of ending the run, and the host goes on.
//!
//! The host shim is built soft-float and uses none of these registers itself; before any access
//! it enables FP/SIMD at EL1, and SVE and SME where the CPU has them (`CPACR_EL1`), as a kernel
//! using them would, so that their instructions reach the hyp's traps instead of the host's own.

use abi::cmd::{Insn, WorldReg};

use crate::exceptions::HostFault;
use crate::probed_asm;

/// `CPACR_EL1`: FPEN, and ZEN / SMEN where SVE / SME exist (RES0 otherwise).
fn enable_el1_features() {
    let (pfr0, pfr1, cpacr): (u64, u64, u64);
    // SAFETY: reading ID registers and CPACR_EL1 has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {a}, id_aa64pfr0_el1",
            "mrs {b}, id_aa64pfr1_el1",
            "mrs {c}, cpacr_el1",
            a = out(reg) pfr0,
            b = out(reg) pfr1,
            c = out(reg) cpacr,
            options(nomem, nostack)
        )
    };
    let mut want = cpacr | (3 << 20);
    if (pfr0 >> 32) & 0xf != 0 {
        want |= 3 << 16;
    }
    if (pfr1 >> 24) & 0xf != 0 {
        want |= 3 << 24;
    }
    if want != cpacr {
        // SAFETY: enables FP/SIMD (and SVE/SME) at EL1 for the host itself; `isb` makes it
        // take effect before the probed instruction.
        unsafe { core::arch::asm!("msr cpacr_el1, {}", "isb", in(reg) want, options(nostack)) };
    }
}

/// Writes one of the host's own registers.
pub fn write(reg: WorldReg, value: u64) -> Result<(), HostFault> {
    enable_el1_features();
    let v = value;
    // SAFETY (every arm): one write of the host's own register under the probe; the host uses
    // none of these registers (soft-float, no pointer authentication, its physical timer is
    // saved and restored around each run by the driver).
    unsafe {
        match reg {
            WorldReg::D0 => probed_asm!(".arch_extension fp", "fmov d0, {v}"; v = in(reg) v),
            WorldReg::Fpcr => probed_asm!(".arch_extension fp", "msr fpcr, {v}"; v = in(reg) v),
            WorldReg::TpidrEl0 => probed_asm!("msr tpidr_el0, {v}"; v = in(reg) v),
            // APIAKeyLo_EL1.
            WorldReg::ApiaKeyLoEl1 => probed_asm!("msr S3_0_C2_C1_0, {v}"; v = in(reg) v),
            WorldReg::CntvCvalEl0 => probed_asm!("msr cntv_cval_el0, {v}"; v = in(reg) v),
            WorldReg::CntpCvalEl0 => probed_asm!("msr cntp_cval_el0, {v}"; v = in(reg) v),
            WorldReg::PmccntrEl0 => probed_asm!("msr pmccntr_el0, {v}"; v = in(reg) v),
            // ZCR_EL1.
            WorldReg::ZcrEl1 => probed_asm!("msr S3_0_C1_C2_0, {v}"; v = in(reg) v),
            WorldReg::IccPmrEl1 => probed_asm!("msr icc_pmr_el1, {v}"; v = in(reg) v),
            // Read-only: the write is an undefined instruction.
            WorldReg::IdAa64Pfr0El1 => probed_asm!("msr S3_0_C0_C4_0, {v}"; v = in(reg) v),
            WorldReg::IdAa64Pfr1El1 => probed_asm!("msr S3_0_C0_C4_1, {v}"; v = in(reg) v),
            WorldReg::IdAa64Dfr0El1 => probed_asm!("msr S3_0_C0_C5_0, {v}"; v = in(reg) v),
        }
    }
}

/// Reads one of the host's own registers.
pub fn read(reg: WorldReg) -> Result<u64, HostFault> {
    enable_el1_features();
    let mut v: u64 = 0;
    // SAFETY: as in `write`, one probed register read.
    let r = unsafe {
        match reg {
            WorldReg::D0 => probed_asm!(".arch_extension fp", "fmov {v}, d0"; v = inout(reg) v),
            WorldReg::Fpcr => probed_asm!(".arch_extension fp", "mrs {v}, fpcr"; v = inout(reg) v),
            WorldReg::TpidrEl0 => probed_asm!("mrs {v}, tpidr_el0"; v = inout(reg) v),
            WorldReg::ApiaKeyLoEl1 => probed_asm!("mrs {v}, S3_0_C2_C1_0"; v = inout(reg) v),
            WorldReg::CntvCvalEl0 => probed_asm!("mrs {v}, cntv_cval_el0"; v = inout(reg) v),
            WorldReg::CntpCvalEl0 => probed_asm!("mrs {v}, cntp_cval_el0"; v = inout(reg) v),
            WorldReg::PmccntrEl0 => probed_asm!("mrs {v}, pmccntr_el0"; v = inout(reg) v),
            WorldReg::ZcrEl1 => probed_asm!("mrs {v}, S3_0_C1_C2_0"; v = inout(reg) v),
            WorldReg::IccPmrEl1 => probed_asm!("mrs {v}, icc_pmr_el1"; v = inout(reg) v),
            WorldReg::IdAa64Pfr0El1 => probed_asm!("mrs {v}, id_aa64pfr0_el1"; v = inout(reg) v),
            WorldReg::IdAa64Pfr1El1 => probed_asm!("mrs {v}, id_aa64pfr1_el1"; v = inout(reg) v),
            WorldReg::IdAa64Dfr0El1 => probed_asm!("mrs {v}, id_aa64dfr0_el1"; v = inout(reg) v),
        }
    };
    r.map(|()| v)
}

/// The string the semihosting probe asks the console to print.
static SEMIHOST_MSG: &[u8] = b"host shim: semihosting SYS_WRITE0\n\0";

/// The UART's address on QEMU `virt`.
const UART: u64 = 0x0900_0000;

/// Executes one instruction at EL1.
pub fn exec(insn: Insn) -> Result<(), HostFault> {
    enable_el1_features();
    // SAFETY (every arm): one probed instruction whose only effects are the registers declared
    // clobbered; the branch to the UART's address comes back through the instruction abort the
    // hyp injects (its stage-2 maps devices execute-never).
    unsafe {
        match insn {
            // rdvl x0, #1
            Insn::Sve => probed_asm!(".inst 0x04bf5020"; out("x0") _),
            // rdsvl x0, #1
            Insn::Sme => probed_asm!(".inst 0x04bf5820"; out("x0") _),
            Insn::Pmu => probed_asm!("mrs x0, pmcr_el0"; out("x0") _),
            Insn::Dbg => probed_asm!("mrs x0, mdscr_el1"; out("x0") _),
            // SYS_WRITE0 (x0 = 4, x1 = the string).
            Insn::Semihost => probed_asm!(
                "mov x0, #4",
                "mov x1, {msg}",
                "hlt #0xf000";
                msg = in(reg) SEMIHOST_MSG.as_ptr(),
                out("x0") _,
                out("x1") _
            ),
            Insn::FetchDevice => probed_asm!(
                "blr {target}";
                target = in(reg) UART,
                out("x30") _
            ),
        }
    }
}
