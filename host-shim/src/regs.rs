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

/// `CPACR_EL1.FPEN`, `.ZEN`, `.SMEN` = 0b11: FP/SIMD, SVE, SME instructions do not trap at EL1.
const CPACR_EL1_FPEN: u64 = 3 << 20;
const CPACR_EL1_ZEN: u64 = 3 << 16;
const CPACR_EL1_SMEN: u64 = 3 << 24;
/// `ID_AA64PFR0_EL1.SVE` (bits 35:32) and `ID_AA64PFR1_EL1.SME` (bits 27:24): non-zero where
/// the CPU has the feature.
const PFR0_SVE_SHIFT: u32 = 32;
const PFR1_SME_SHIFT: u32 = 24;
const ID_FIELD: u64 = 0xf;

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
    let mut want = cpacr | CPACR_EL1_FPEN;
    if (pfr0 >> PFR0_SVE_SHIFT) & ID_FIELD != 0 {
        want |= CPACR_EL1_ZEN;
    }
    if (pfr1 >> PFR1_SME_SHIFT) & ID_FIELD != 0 {
        want |= CPACR_EL1_SMEN;
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
    // SAFETY: one write of the host's own register under the probe; the host uses none of these
    // registers (soft-float, no pointer authentication, its physical timer is saved and
    // restored around each run by the driver).
    unsafe { abi::world_reg_write!(probed_asm, reg, value) }
}

/// Reads one of the host's own registers.
pub fn read(reg: WorldReg) -> Result<u64, HostFault> {
    enable_el1_features();
    let mut v: u64 = 0;
    // SAFETY: as in `write`, one probed register read.
    let r = unsafe { abi::world_reg_read!(probed_asm, reg, v) };
    r.map(|()| v)
}

/// The string the semihosting probe asks the console to print.
static SEMIHOST_MSG: &[u8] = b"host shim: semihosting SYS_WRITE0\n\0";

/// Executes one instruction at EL1.
pub fn exec(insn: Insn) -> Result<(), HostFault> {
    enable_el1_features();
    // SAFETY: one probed instruction whose only effects are the registers declared clobbered;
    // the branch to the UART's address comes back through the instruction abort the hyp
    // injects (its stage-2 maps devices execute-never).
    unsafe {
        abi::world_exec!(
            probed_asm,
            insn,
            SEMIHOST_MSG.as_ptr(),
            board::layout::PL011_BASE as u64
        )
    }
}
