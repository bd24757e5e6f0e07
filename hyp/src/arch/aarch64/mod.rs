//! AArch64 at EL2: boot entry (and secondary CPUs' entry), exception vectors, the EL2 MMU,
//! entering EL1, cache maintenance, the firmware conduit (PSCI over SMC), the arch per-CPU data
//! (`cpu.rs`). A leaf of the hyp: nothing here names a hyp module above `arch`; the vectors call
//! the trap handler boot gives [`vectors::install`].
pub mod boot;
pub mod cache;
pub mod cpu;
pub mod debug;
pub mod el1;
pub mod esr;
pub mod exit;
pub mod features;
pub mod firmware;
pub mod fpsimd;
pub mod inject;
pub mod mmu;
pub mod pc;
pub mod pmu;
pub mod probe;
pub mod switch;
pub mod timer;
pub mod tlb;
pub mod traps;
pub mod vectors;
pub mod vgic;
pub mod vtimer;

use aarch64_cpu::registers::{CurrentEL, Readable};

/// The exception level the CPU runs at (2 for the hyp).
pub fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

/// Parks the CPU forever (used after a fatal error when semihosting exit is unavailable).
pub fn halt() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// The syndrome registers of the exception being handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syndrome {
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
}

/// Reads the syndrome of the exception being handled.
pub fn syndrome() -> Syndrome {
    use aarch64_cpu::registers::{ESR_EL2, FAR_EL2, HPFAR_EL2};
    Syndrome {
        esr: ESR_EL2.get(),
        far: FAR_EL2.get(),
        hpfar: HPFAR_EL2.get(),
    }
}
