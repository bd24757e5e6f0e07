//! Per-CPU data, reached through `TPIDR_EL2`. No `static mut`: every field is atomic or only
//! touched by its own CPU through shared references.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use board::layout::MAX_CPUS;

use crate::arch;
use crate::arch::boot::SecondaryBoot;
use crate::arch::probe::ProbeFault;

/// One CPU's private state.
#[repr(C)]
pub struct PerCpu {
    /// The running guest's context while a guest runs on this CPU, else 0. Read by the
    /// lower-EL vectors to tell a guest exit from a host trap.
    guest_ctx: AtomicU64,
    cpu: AtomicUsize,
    probe_armed: AtomicBool,
    probe_hit: AtomicBool,
    probe_esr: AtomicU64,
    probe_far: AtomicU64,
    /// PSCI power state as the hyp sees it (`crate::psci::{OFF, ON_PENDING, ON}`).
    pub(crate) power: AtomicU8,
    /// Where the host asked this CPU to enter EL1 (its `CPU_ON` entry point and context id).
    pub(crate) host_entry: AtomicU64,
    pub(crate) host_context: AtomicU64,
    /// What this CPU's entry reads with its MMU off when the hyp starts it.
    pub(crate) boot: SecondaryBoot,
    /// Where a probed instruction's exception returns to (written by the probe's asm just before
    /// the instruction; 0 = the instruction after the faulting one).
    probe_resume: AtomicU64,
    /// The host's breakpoint and watchpoint registers while a guest's are loaded on this CPU.
    pub(crate) host_debug: arch::debug::HostDebugSave,
    /// This CPU's GIC redistributor (RD_base; 0 = not found), for the guests' virtual timer.
    pub(crate) gicr: AtomicU64,
    /// The hyp made PPI 27 active for the guest running here (`arch::vtimer`).
    pub(crate) vtimer_active: AtomicBool,
    /// The host's PMU while a guest of a VM that opened it runs here (`arch::pmu`).
    pub(crate) host_pmu: arch::pmu::HostPmuSave,
}

impl PerCpu {
    /// Offset of the running guest's context pointer, for the vectors and the world switch.
    pub const GUEST_CTX_OFFSET: usize = core::mem::offset_of!(PerCpu, guest_ctx);

    const fn new() -> Self {
        Self {
            guest_ctx: AtomicU64::new(0),
            cpu: AtomicUsize::new(0),
            probe_armed: AtomicBool::new(false),
            probe_hit: AtomicBool::new(false),
            probe_esr: AtomicU64::new(0),
            probe_far: AtomicU64::new(0),
            power: AtomicU8::new(0),
            host_entry: AtomicU64::new(0),
            host_context: AtomicU64::new(0),
            boot: SecondaryBoot::new(),
            probe_resume: AtomicU64::new(0),
            host_debug: arch::debug::HostDebugSave::new(),
            gicr: AtomicU64::new(0),
            vtimer_active: AtomicBool::new(false),
            host_pmu: arch::pmu::HostPmuSave::new(),
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
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    }

    pub(crate) fn probe_disarm(&self) -> Option<ProbeFault> {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
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

static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Binds this CPU to its per-CPU slot. Returns false for a CPU index the hyp was not built for.
pub fn init(cpu: usize) -> bool {
    let Some(slot) = PERCPU.get(cpu) else {
        return false;
    };
    slot.cpu.store(cpu, Ordering::Relaxed);
    arch::set_percpu_ptr(slot as *const PerCpu as u64);
    true
}

/// The data of CPU `cpu`, if the hyp is built for it.
pub fn get(cpu: usize) -> Option<&'static PerCpu> {
    PERCPU.get(cpu)
}

/// This CPU's data.
pub fn this_cpu() -> &'static PerCpu {
    let ptr = arch::percpu_ptr();
    if ptr == 0 {
        return &PERCPU[0];
    }
    // SAFETY: TPIDR_EL2 is only ever set by `init` to the address of an element of `PERCPU`,
    // which is 'static.
    unsafe { &*(ptr as *const PerCpu) }
}
