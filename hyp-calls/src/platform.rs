//! What only the hardware can do, as the portable calls need it: RAM and stage-2 TLB
//! maintenance (the `hyp-mem` traits), and a vCPU's saved registers. The hyp's arch corner
//! implements these; host tests use fakes (`hyp_mem::fake`, and the tests' fake vCPU).

use hyp_mem::heap::VmHeap;
use hyp_mem::pool::Ram;
use hyp_mem::stage2::TlbMaintenance;

use crate::exit::Injected;

/// The hardware behind a [`crate::Hyp`].
pub trait Platform {
    /// RAM as the hyp reaches it (tables, pools, zeroing).
    type Ram: Ram + Clone;
    /// Stage-2 TLB maintenance (one object per stage-2).
    type Tlb: TlbMaintenance;
    /// A vCPU's saved state.
    type Vcpu: VcpuContext;

    /// A handle to RAM.
    fn ram(&self) -> Self::Ram;
    /// A TLB-maintenance object for a new stage-2.
    fn tlb(&self) -> Self::Tlb;
    /// A vCPU that starts at `entry` in EL1h with interrupts masked and `x0 = arg`; `index` is
    /// its number in its VM (its stable identity: MPIDR).
    fn new_vcpu(&self, entry: u64, arg: u64, index: u32) -> Self::Vcpu;
    /// The physical count now (a new VM's `CNTVOFF_EL2`).
    fn counter(&self) -> u64;
    /// Invalidates this CPU's TLB entries of the running VMID (a TLB conflict abort).
    fn flush_tlb_conflict(&self);
    /// Charges this CPU's allocations to `heap` (null: the hyp's boot heap) from now on, and
    /// returns the heap charged so far. The global allocator serves a charged allocation from
    /// that heap.
    fn set_charge(heap: *const VmHeap) -> *const VmHeap;
    /// Charged allocations the charged heap could not serve (the boot heap served them): 0
    /// unless a call needed more than the reserve it was given (a bug the checker reports).
    fn overdrafts() -> u64;
}

/// A vCPU's saved registers, as the portable handlers read and change them.
pub trait VcpuContext {
    /// General register `n` (31 = xzr: 0).
    fn reg(&self, n: usize) -> u64;
    /// Writes general register `n` (31 = xzr: ignored).
    fn set_reg(&mut self, n: usize, v: u64);
    /// Steps over an instruction the hyp completed for the guest (an emulated MMIO access), as
    /// the architecture's own return would: by its length (`wide`: 32-bit, `ESR_EL2.IL`), with
    /// the T32 IT state.
    fn skip_instruction(&mut self, wide: bool);
    /// [`VcpuContext::skip_instruction`] for the instruction of the last exit (a trapped SMC).
    fn skip_trapped_instruction(&mut self);
    /// Steps back over the `HVC` of the last exit (4 bytes in every instruction set), so that
    /// the guest makes the call again when it next runs.
    fn rewind_hvc(&mut self);
    /// Makes the guest take `what` at its own EL1 when it next runs, reporting `far`, while its
    /// EL1 state is live on this CPU (inside the run loop).
    fn inject_live(&mut self, what: Injected, far: u64);
    /// The abort that matches the last exit (an instruction abort for a fetch, at the virtual
    /// address the hardware reported), while the EL1 state is live.
    fn inject_abort_live(&mut self);
    /// The same between runs (the EL1 state saved in the context).
    fn inject_abort_saved(&mut self);
    /// Emulates a trapped system register or instruction the portable code does not handle
    /// (timers, debug, ID registers), or answers it with an undefined instruction; `pmu_open`:
    /// the VM may use the PMU.
    fn emulate_trap(&mut self, pmu_open: bool);
}
