//! The host's own registers and instructions, for `host reg-write` / `host reg-read` /
//! `host exec` (SCENARIOS.md "Registers across the world switch"). Each access runs under the
//! probe of [`crate::exceptions`], so an undefined-instruction exception (or an abort) the hyp
//! injects comes back as a [`HostFault`] instead of ending the run.
//!
//! Owned by the world-switch work (Trust rule 5); not built yet: every call answers a fault
//! with ESR `u64::MAX` until it is.

use abi::cmd::{Insn, WorldReg};

use crate::exceptions::HostFault;

const NOT_BUILT: HostFault = HostFault {
    esr: u64::MAX,
    far: 0,
};

/// Writes one of the host's own registers.
pub fn write(reg: WorldReg, value: u64) -> Result<(), HostFault> {
    let _ = (reg, value);
    Err(NOT_BUILT)
}

/// Reads one of the host's own registers.
pub fn read(reg: WorldReg) -> Result<u64, HostFault> {
    let _ = reg;
    Err(NOT_BUILT)
}

/// Executes one instruction at EL1.
pub fn exec(insn: Insn) -> Result<(), HostFault> {
    let _ = insn;
    Err(NOT_BUILT)
}
