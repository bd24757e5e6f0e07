//! Probing an address at EL2: a load, a store or an instruction fetch that may fault, with the
//! fault returned instead of crashing. Used by tests to show that the EL2 MMU really leaves an
//! address unmapped, read-only or execute-never.
//!
//! Each probe arms the per-CPU probe, writes the address of the instruction after the probed
//! one (label `2:`) into the per-CPU resume slot, and runs the instruction; a synchronous
//! exception on it is caught by the vector, which records it and resumes at that label (so a
//! faulting branch target comes back too).

use core::arch::asm;

use super::cpu;

/// What the exception vector recorded when a probed access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeFault {
    pub esr: u64,
    pub far: u64,
}

/// Reads one byte at `addr` at EL2.
pub fn read_u8(addr: usize) -> Result<u8, ProbeFault> {
    let cpu = cpu::this_cpu();
    cpu.probe_arm();
    let value: u64;
    // SAFETY: a single byte load; if it faults, the vector sees the armed probe, records the
    // fault and resumes at label 2 (`value` then holds whatever the register had, unused). The
    // resume slot is a per-CPU atomic.
    unsafe {
        asm!(
            "adr {t}, 2f",
            "str {t}, [{slot}]",
            "ldrb {v:w}, [{a}]",
            "2:",
            a = in(reg) addr,
            slot = in(reg) cpu.probe_resume_slot(),
            t = out(reg) _,
            v = out(reg) value,
            options(nostack)
        );
    }
    match cpu.probe_disarm() {
        Some(fault) => Err(fault),
        None => Ok(value as u8),
    }
}

/// Writes one byte at `addr` at EL2.
pub fn write_u8(addr: usize, value: u8) -> Result<(), ProbeFault> {
    let cpu = cpu::this_cpu();
    cpu.probe_arm();
    // SAFETY: a single byte store the caller chose (tests store a byte's own value back); a fault
    // resumes at label 2 as in `read_u8`.
    unsafe {
        asm!(
            "adr {t}, 2f",
            "str {t}, [{slot}]",
            "strb {v:w}, [{a}]",
            "2:",
            a = in(reg) addr,
            v = in(reg) u32::from(value),
            slot = in(reg) cpu.probe_resume_slot(),
            t = out(reg) _,
            options(nostack)
        );
    }
    cpu.probe_disarm().map_or(Ok(()), Err)
}

/// Branches (with link) to `addr` at EL2. If the fetch faults, the vector resumes after the
/// branch; if it does not, the code at `addr` must return (`ret`) to the link register.
///
/// # Safety
/// `addr` must hold code that returns at once (a `ret`), or be memory that must not execute.
pub unsafe fn exec(addr: usize) -> Result<(), ProbeFault> {
    let cpu = cpu::this_cpu();
    cpu.probe_arm();
    // SAFETY: per the contract, the target either returns at once or faults; a fault resumes at
    // label 2; x30 and the flags are declared clobbered.
    unsafe {
        asm!(
            "adr {t}, 2f",
            "str {t}, [{slot}]",
            "blr {a}",
            "2:",
            a = in(reg) addr,
            slot = in(reg) cpu.probe_resume_slot(),
            t = out(reg) _,
            out("x30") _,
            options(nostack)
        );
    }
    cpu.probe_disarm().map_or(Ok(()), Err)
}
