//! A vCPU run, in the three steps the hyp's glue sequences around the world switch:
//! [`Hyp::begin_run`] completes the last exit (with what the host may say: the value of an MMIO
//! load, an abort to inject; never the result of a forwarded call, Trust rule 2) and takes the
//! vCPU's context out of the table; [`Hyp::handle_exit`] decides each exit (served at EL2, or
//! handed to the host); [`Hyp::end_run`] puts the context back and reports the exit.

use alloc::boxed::Box;

use abi::guest::{
    MEM_RELINQUISH, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD_ENROLL, MMIO_GUARD_MAP,
    MMIO_GUARD_MAP_RANGE, MMIO_GUARD_UNMAP, MMIO_GUARD_UNMAP_RANGE, SMCCC_INVALID_PARAMETER,
    SMCCC_NOT_SUPPORTED,
};
use abi::host::{ExitReason, COMPLETE_INJECT_ABORT};
use abi::Errno;
use hyp_core::{VmHandle, World};

use crate::exit::GuestExit;
use crate::guest;
use crate::platform::{Platform, VcpuContext};
use crate::state::{handle32, Dying, Hyp, Pending};

/// An exit to report to the host: reason and `x1..x5`.
pub type HostExit = (ExitReason, [u64; 5]);

/// What one exit comes to.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Served at EL2: enter the guest again.
    Resume,
    /// The host must act: the exit to report, and what it leaves pending.
    Exit(HostExit, Pending),
}

/// A vCPU taken out of the table for a run: everything the world switch needs.
pub struct RunTicket<C> {
    pub vcpu: u32,
    pub vm: VmHandle,
    pub ctx: Box<C>,
    /// The guest's stage-2 (`VTTBR_EL2`, `VTCR_EL2`).
    pub vttbr: u64,
    pub vtcr: u64,
    /// The VM's `CNTVOFF_EL2`.
    pub cntvoff: u64,
    /// The VM may use the PMU.
    pub pmu_open: bool,
    /// The host's stage-2, to load back after the run.
    pub host_vttbr: u64,
    pub host_vtcr: u64,
}

/// Applies the host's completion of the last exit to the guest's registers. For a forwarded
/// MEM_SHARE / MEM_UNSHARE the host's values are ignored: the answer comes from the state the
/// hyp holds (Trust rule 2).
fn complete<C: VcpuContext>(world: &World, vm: VmHandle, ctx: &mut C, pending: Pending, c0: u64) {
    match pending {
        Pending::None => {}
        Pending::Mmio(m) => {
            if !m.write {
                ctx.set_reg(usize::from(m.reg), m.loaded(c0));
            }
            ctx.skip_instruction(m.wide);
        }
        Pending::NeedPagesCall => {
            if c0 == COMPLETE_INJECT_ABORT {
                // The host will not pay: the call fails.
                ctx.set_reg(0, SMCCC_INVALID_PARAMETER);
            } else {
                // The host topped the pool up: the guest makes the call again.
                ctx.rewind_hvc();
            }
        }
        Pending::MemoryFault { .. } | Pending::NeedPages { .. } => {
            if c0 == COMPLETE_INJECT_ABORT {
                // The abort that matches the access (a fetch gets an instruction abort), at the
                // virtual address the guest used.
                ctx.inject_abort_saved();
            }
        }
        Pending::GuestRequest(req) => {
            let (x0, x1) = guest::guest_request_answer(world, vm, &req);
            ctx.set_reg(0, x0);
            ctx.set_reg(1, x1);
        }
    }
}

impl<P: Platform> Hyp<P> {
    /// Starts a run of vCPU `vcpu`: completes its last exit with `c0`, marks the VM started
    /// (a pkvm VM's memslots and vCPUs are frozen from now on, Trust rule 9) and takes the
    /// context out of the table (`EBUSY` if it runs already; `ENOENT` unknown).
    #[inline(always)]
    pub fn begin_run(&mut self, vcpu: u64, c0: u64) -> Result<RunTicket<P::Vcpu>, Errno> {
        let id = handle32(vcpu)?;
        let c = self.vcpus.get_mut(&id).ok_or(Errno::ENOENT)?;
        let vm = c.vm;
        let v = self
            .vms
            .get(&vm.0)
            .filter(|v| v.dying == Dying::Live)
            .ok_or(Errno::ENOENT)?;
        let mut ctx = c.ctx.take().ok_or(Errno::EBUSY)?;
        let pending = core::mem::replace(&mut c.pending, Pending::None);
        complete(&self.world, vm, &mut *ctx, pending, c0);
        let ticket = RunTicket {
            vcpu: id,
            vm,
            ctx,
            vttbr: v.stage2.vttbr(),
            vtcr: v.stage2.vtcr(),
            cntvoff: v.cntvoff,
            pmu_open: v.pmu_open,
            host_vttbr: self.host_s2.vttbr(),
            host_vtcr: self.host_s2.vtcr(),
        };
        // Cannot fail: the VM exists (checked above).
        let _ = self.world.vcpu_started(vm);
        Ok(ticket)
    }

    /// Handles one exit of a vCPU of `vm`: served at EL2 ([`Step::Resume`]) or handed to the
    /// host.
    pub fn handle_exit(&mut self, vm: VmHandle, ctx: &mut P::Vcpu, exit: GuestExit) -> Step {
        match exit {
            GuestExit::Stage2Abort { ipa, access, mmio } => {
                // What the fault keeps comes from the VM's heap (Trust rule 8): short, the host
                // is asked for pages and the access retried.
                let _charge = match self.charge(vm.0) {
                    Ok(c) => c,
                    Err(wanted) => {
                        return Step::Exit(
                            (ExitReason::NeedPages, [wanted, 0, 0, 0, 0]),
                            Pending::NeedPages { ipa },
                        )
                    }
                };
                crate::fault::stage2_abort(self, vm, ctx, ipa, access, mmio)
            }
            GuestExit::Hvc { .. } => {
                let x = [ctx.reg(0), ctx.reg(1), ctx.reg(2), ctx.reg(3)];
                let keeps = matches!(
                    x[0],
                    MEM_SHARE
                        | MEM_UNSHARE
                        | MEM_RELINQUISH
                        | MMIO_GUARD_ENROLL
                        | MMIO_GUARD_MAP
                        | MMIO_GUARD_UNMAP
                        | MMIO_GUARD_MAP_RANGE
                        | MMIO_GUARD_UNMAP_RANGE
                );
                // A call that may keep something is charged to the VM's heap; short, the host is
                // asked for pages and the call made again (or failed, if the host says so).
                let _charge = match keeps.then(|| self.charge(vm.0)) {
                    Some(Err(wanted)) => {
                        return Step::Exit(
                            (ExitReason::NeedPages, [wanted, 0, 0, 0, 0]),
                            Pending::NeedPagesCall,
                        )
                    }
                    Some(Ok(c)) => Some(c),
                    None => None,
                };
                match x[0] {
                    MEM_SHARE | MEM_UNSHARE => guest::guest_share_call(self, vm, ctx, x),
                    MEM_RELINQUISH => guest::guest_relinquish(self, vm, ctx, x),
                    MMIO_GUARD_ENROLL
                    | MMIO_GUARD_MAP
                    | MMIO_GUARD_UNMAP
                    | MMIO_GUARD_MAP_RANGE
                    | MMIO_GUARD_UNMAP_RANGE => guest::mmio_guard_call(self, vm, ctx, x),
                    _ => {
                        for (i, v) in guest::stateless_answer(x).into_iter().enumerate() {
                            ctx.set_reg(i, v);
                        }
                        Step::Resume
                    }
                }
            }
            GuestExit::Smc => {
                ctx.set_reg(0, SMCCC_NOT_SUPPORTED);
                ctx.skip_trapped_instruction();
                Step::Resume
            }
            // Trust rule 6: the host gets the CPU back; the guest resumes where it was on the
            // next run.
            GuestExit::Interrupt => Step::Exit((ExitReason::Interrupt, [0; 5]), Pending::None),
            GuestExit::Abort { .. } => {
                ctx.inject_abort_live();
                Step::Resume
            }
            GuestExit::TlbConflict => {
                self.platform.flush_tlb_conflict();
                Step::Resume
            }
            GuestExit::Uncatchable { ec } => Step::Exit(
                (ExitReason::GuestException, [ec, 0, 0, 0, 0]),
                Pending::None,
            ),
            GuestExit::Other { .. } => {
                let pmu_open = self.vms.get(&vm.0).is_some_and(|v| v.pmu_open);
                ctx.emulate_trap(pmu_open);
                Step::Resume
            }
        }
    }

    /// Ends a run: the context back into the table with what the exit leaves pending, the exit
    /// counted. -> `VcpuRun`'s result registers (`x0` = the exit reason, `x1..x5` its data).
    #[inline(always)]
    pub fn end_run(
        &mut self,
        ticket: RunTicket<P::Vcpu>,
        exit: HostExit,
        pending: Pending,
    ) -> [u64; 6] {
        if let Some(v) = self.vms.get_mut(&ticket.vm.0) {
            v.stats.exits += 1;
        }
        if let Some(c) = self.vcpus.get_mut(&ticket.vcpu) {
            c.ctx = Some(ticket.ctx);
            c.pending = pending;
        }
        let (reason, d) = exit;
        [reason as u64, d[0], d[1], d[2], d[3], d[4]]
    }
}
