//! The arch corner's per-CPU data, reached through `TPIDR_EL2`: what the vectors, the world
//! switch, the probes, the debug and PMU switch and the virtual timer keep per CPU. The hyp's
//! own per-CPU data (`percpu.rs`: PSCI power state, the host's `CPU_ON` entry, the secondary
//! boot record) sits beside it, indexed by [`ArchCpu::cpu`]. No `static mut`: every field is
//! atomic or only touched by its own CPU through shared references.

use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{Readable, Writeable, TPIDR_EL2};
use board::layout::MAX_CPUS;

use super::debug::HostDebugSave;
use super::pmu::HostPmuSave;
use super::probe::ProbeFault;

/// One CPU's arch state.
#[repr(C)]
pub struct ArchCpu {
    /// The running guest's context while a guest runs on this CPU, else 0. Read by the
    /// lower-EL vectors to tell a guest exit from a host trap.
    guest_ctx: AtomicU64,
    cpu: AtomicUsize,
    probe_armed: AtomicBool,
    probe_hit: AtomicBool,
    probe_esr: AtomicU64,
    probe_far: AtomicU64,
    /// Where a probed instruction's exception returns to (written by the probe's asm just before
    /// the instruction; 0 = the instruction after the faulting one).
    probe_resume: AtomicU64,
    /// The host's breakpoint and watchpoint registers while a guest's are loaded on this CPU.
    pub(crate) host_debug: HostDebugSave,
    /// This CPU's GIC redistributor (RD_base; 0 = not found), for the guests' virtual timer.
    pub(crate) gicr: AtomicU64,
    /// The hyp made PPI 27 active for the guest running here (`vtimer.rs`).
    pub(crate) vtimer_active: AtomicBool,
    /// The host's PMU while a guest of a VM that opened it runs here (`pmu.rs`).
    pub(crate) host_pmu: HostPmuSave,
}

impl ArchCpu {
    /// Offset of the running guest's context pointer, for the vectors and the world switch.
    pub const GUEST_CTX_OFFSET: usize = core::mem::offset_of!(ArchCpu, guest_ctx);

    const fn new() -> Self {
        Self {
            guest_ctx: AtomicU64::new(0),
            cpu: AtomicUsize::new(0),
            probe_armed: AtomicBool::new(false),
            probe_hit: AtomicBool::new(false),
            probe_esr: AtomicU64::new(0),
            probe_far: AtomicU64::new(0),
            probe_resume: AtomicU64::new(0),
            host_debug: HostDebugSave::new(),
            gicr: AtomicU64::new(0),
            vtimer_active: AtomicBool::new(false),
            host_pmu: HostPmuSave::new(),
        }
    }

    /// This CPU's index (MPIDR Aff0).
    pub fn cpu(&self) -> usize {
        self.cpu.load(Ordering::Relaxed)
    }

    pub(crate) fn probe_arm(&self) {
        self.probe_hit.store(false, Ordering::Relaxed);
        self.probe_resume.store(0, Ordering::Relaxed);
        self.probe_armed.store(true, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
    }

    pub(crate) fn probe_disarm(&self) -> Option<ProbeFault> {
        compiler_fence(Ordering::SeqCst);
        self.probe_armed.store(false, Ordering::Relaxed);
        if self.probe_hit.swap(false, Ordering::Relaxed) {
            Some(ProbeFault {
                esr: self.probe_esr.load(Ordering::Relaxed),
                far: self.probe_far.load(Ordering::Relaxed),
            })
        } else {
            None
        }
    }

    /// The slot a probe's asm writes its resume address into.
    pub(crate) fn probe_resume_slot(&self) -> *const AtomicU64 {
        &self.probe_resume
    }

    /// Called by the vector: if a probe is armed, records the exception and returns where to
    /// resume (`Some(0)`: just after the faulting instruction; `None`: no probe was armed).
    pub(crate) fn probe_record(&self, esr: u64, far: u64) -> Option<u64> {
        if !self.probe_armed.swap(false, Ordering::Relaxed) {
            return None;
        }
        self.probe_esr.store(esr, Ordering::Relaxed);
        self.probe_far.store(far, Ordering::Relaxed);
        self.probe_hit.store(true, Ordering::Relaxed);
        Some(self.probe_resume.swap(0, Ordering::Relaxed))
    }
}

static CPUS: [ArchCpu; MAX_CPUS] = [const { ArchCpu::new() }; MAX_CPUS];

/// Binds this CPU to its arch slot (`TPIDR_EL2`). False for a CPU index the hyp was not built
/// for.
pub fn bind(cpu: usize) -> bool {
    let Some(slot) = CPUS.get(cpu) else {
        return false;
    };
    slot.cpu.store(cpu, Ordering::Relaxed);
    TPIDR_EL2.set(slot as *const ArchCpu as u64);
    true
}

/// This CPU's arch data (CPU 0's before [`bind`]).
pub fn this_cpu() -> &'static ArchCpu {
    let ptr = TPIDR_EL2.get();
    if ptr == 0 {
        return &CPUS[0];
    }
    // SAFETY: TPIDR_EL2 is only ever set by `bind`, to the address of an element of `CPUS`,
    // which is 'static.
    unsafe { &*(ptr as *const ArchCpu) }
}
