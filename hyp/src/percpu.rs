//! The hyp's per-CPU data, beside the arch corner's (`arch::cpu`, reached through `TPIDR_EL2`):
//! this CPU's slot is the one of the arch slot's index. No `static mut`: every field is atomic
//! or only touched by its own CPU through shared references.

use core::sync::atomic::{AtomicU64, AtomicU8};

use board::layout::MAX_CPUS;

use crate::arch;
use crate::arch::boot::SecondaryBoot;

/// PSCI power state as the hyp sees it ([`PerCpu::power`]): the CPU is off (or was never
/// started).
pub const OFF: u8 = 0;
/// The hyp issued `CPU_ON` for it; it has not entered the host yet.
pub const ON_PENDING: u8 = 1;
/// It runs (the host, or the hyp on its behalf).
pub const ON: u8 = 2;

/// One CPU's private state (the arch corner's is `arch::cpu::ArchCpu`).
pub struct PerCpu {
    cpu: usize,
    /// PSCI power state as the hyp sees it ([`OFF`], [`ON_PENDING`], [`ON`]).
    pub(crate) power: AtomicU8,
    /// Where the host asked this CPU to enter EL1 (its `CPU_ON` entry point and context id).
    pub(crate) host_entry: AtomicU64,
    pub(crate) host_context: AtomicU64,
    /// What this CPU's entry reads with its MMU off when the hyp starts it.
    pub(crate) boot: SecondaryBoot,
}

impl PerCpu {
    const fn new(cpu: usize) -> Self {
        Self {
            cpu,
            power: AtomicU8::new(OFF),
            host_entry: AtomicU64::new(0),
            host_context: AtomicU64::new(0),
            boot: SecondaryBoot::new(),
        }
    }

    /// This CPU's index (MPIDR Aff0).
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

static PERCPU: [PerCpu; MAX_CPUS] = {
    let mut cpus = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        cpus[i] = PerCpu::new(i);
        i += 1;
    }
    cpus
};

/// Binds this CPU to its per-CPU slots (the arch corner's in `TPIDR_EL2`, and this one). Returns
/// false for a CPU index the hyp was not built for.
pub fn init(cpu: usize) -> bool {
    cpu < PERCPU.len() && arch::cpu::bind(cpu)
}

/// The data of CPU `cpu`, if the hyp is built for it.
pub fn get(cpu: usize) -> Option<&'static PerCpu> {
    PERCPU.get(cpu)
}

/// This CPU's data (CPU 0's before [`init`]).
pub fn this_cpu() -> &'static PerCpu {
    // The arch slot's index is always one `init` checked (or 0 before it).
    PERCPU
        .get(arch::cpu::this_cpu().cpu())
        .unwrap_or(&PERCPU[0])
}
