//! Probing an address at EL2: a load that may fault, with the fault returned instead of crashing.
//! Used by tests to show that the EL2 MMU really leaves an address unmapped.

use core::arch::asm;

use crate::percpu;

/// What the exception vector recorded when a probed access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeFault {
    pub esr: u64,
    pub far: u64,
}

/// Reads one byte at `addr` at EL2. A synchronous exception on that one instruction is caught by
/// the vector, which records it, steps over the load and returns here.
pub fn read_u8(addr: usize) -> Result<u8, ProbeFault> {
    let cpu = percpu::this_cpu();
    cpu.probe_arm();
    let value: u64;
    // SAFETY: a single byte load; if it faults, the vector sees the armed probe, records the
    // fault and resumes after this instruction (`value` then holds whatever x-reg had, unused).
    unsafe {
        asm!("ldrb {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, readonly));
    }
    match cpu.probe_disarm() {
        Some(fault) => Err(fault),
        None => Ok(value as u8),
    }
}
