//! The glue between the arch corner and the portable calls (`hyp_calls`): the one lock around
//! the hyp's state, the platform the portable code runs on (RAM through the EL2 identity map,
//! the hardware TLB, the world switch's vCPU context), host traps into host calls, and the vCPU
//! run loop around the world switch. Every decision is `hyp_calls`'s; this file only sequences.
//!
//! Lock order: [`HYP`] (all VM, vCPU, gmem and ownership state) -> `mm::FRAMES` (the hyp's page
//! allocator) -> the heap lock -> the console lock. [`HYP`] is never held while a guest runs:
//! the vCPU's context is taken out of the table for the run and put back at the exit.

use abi::host::{ExitReason, HostCall};
use abi::{Errno, PAGE_SIZE};
use hyp_calls::state::Pending;
use hyp_calls::{GuestExit, HostAnswer, Hyp, HypConfig, Platform, Step};

use crate::arch::switch::{self, GuestConfig, GuestContext};
use crate::arch::tlb::HwTlb;
use crate::arch::vectors::TrapFrame;
use crate::arch::{el1, exit, pmu, timer, tlb, vtimer};
use crate::pool::HypRam;

/// The hardware under the portable calls.
#[derive(Debug, Default)]
pub struct HypPlatform;

impl Platform for HypPlatform {
    type Ram = HypRam;
    type Tlb = HwTlb;
    type Vcpu = GuestContext;

    fn ram(&self) -> HypRam {
        HypRam
    }

    fn tlb(&self) -> HwTlb {
        HwTlb
    }

    fn new_vcpu(&self, entry: u64, arg: u64, index: u32) -> GuestContext {
        GuestContext::new(entry, arg, index)
    }

    fn counter(&self) -> u64 {
        timer::counter()
    }

    fn flush_tlb_conflict(&self) {
        tlb::flush_local_current_vmid();
    }

    fn set_charge(heap: *const hyp_mem::heap::VmHeap) -> *const hyp_mem::heap::VmHeap {
        crate::mm::set_charge(heap)
    }

    fn overdrafts() -> u64 {
        crate::mm::overdrafts()
    }
}

// A vCPU's context is one object of its VM's heap.
const _: () = assert!(core::mem::size_of::<GuestContext>() <= hyp_mem::heap::BIG_MAX);

/// All VM state, behind one lock (first in the lock order).
pub static HYP: spin::Mutex<Option<Hyp<HypPlatform>>> = spin::Mutex::new(None);

/// Sets up the VM manager (once, at boot).
pub fn init(config: HypConfig) -> Result<(), Errno> {
    *HYP.lock() = Some(Hyp::new(HypPlatform, config)?);
    Ok(())
}

/// `VTTBR_EL2` and `VTCR_EL2` of the host's stage-2.
pub fn host_stage2_regs() -> Option<(u64, u64)> {
    HYP.lock()
        .as_ref()
        .map(|h| (h.host_s2.vttbr(), h.host_s2.vtcr()))
}

/// A stage-2 abort taken by the host: maps what the host may reach; `false` if it may not.
pub fn host_abort(ipa: u64) -> bool {
    HYP.lock()
        .as_mut()
        .is_some_and(|h| h.host_stage2_fault(ipa))
}

/// Whether the host owns or borrows the RAM page holding `pa` (where it may ask a CPU it
/// starts to begin: anywhere else it would only take aborts).
pub fn host_may_reach(pa: u64) -> bool {
    HYP.lock()
        .as_ref()
        .is_some_and(|h| h.owners.host_can_access(pa & !(PAGE_SIZE - 1)))
}

/// Runs one host call, function `id`, arguments `a` = x1..x6: `Ok(x0..x5)`, or the errno and
/// `x1` to return with it.
pub fn host_call(id: u64, a: [u64; 6]) -> Result<[u64; 6], (Errno, u64)> {
    let mut out = [0; 6];
    match host_call_into(id, a, &mut out) {
        Ok(()) => Ok(out),
        Err(e) => Err(e),
    }
}

/// [`host_call`] writing its result registers into `out` (a run's exit lands there in place,
/// without moving through the `Result`s of the layers: the `VcpuRun` round trip is hot).
fn host_call_into(id: u64, a: [u64; 6], out: &mut [u64; 6]) -> Result<(), (Errno, u64)> {
    let answer = {
        let mut guard = HYP.lock();
        let Some(hyp) = guard.as_mut() else {
            return Err((Errno::ENODEV, 0));
        };
        hyp.host_call(id, a)
    };
    match answer {
        HostAnswer::Done(Ok(r)) => {
            *out = r;
            Ok(())
        }
        HostAnswer::Done(Err(e)) => Err(e),
        HostAnswer::Run { vcpu, c0 } => vcpu_run(vcpu, c0, out).map_err(|e| (e, 0)),
    }
}

/// Handles a trapped host HVC in place: `x0` = value or `-(errno)`, `x1..x5` = extra results.
pub fn host_hvc(frame: &mut TrapFrame) {
    let id = frame.x[0];
    let args = [
        frame.x[1], frame.x[2], frame.x[3], frame.x[4], frame.x[5], frame.x[6],
    ];
    let mut out = [0; 6];
    match host_call_into(id, args, &mut out) {
        Ok(()) => {
            log::trace!("host call 0x{id:x} -> ok 0x{:x}", out[0]);
            frame.x[..6].copy_from_slice(&out);
        }
        Err((e, x1)) => {
            log::debug!("host call 0x{id:x} ({:?}) -> {e}", HostCall::from_id(id));
            frame.x[0] = e.to_reg();
            frame.x[1] = x1;
        }
    }
}

/// Runs a vCPU until an exit the host must see (its registers in `out`); `c0` completes the
/// previous exit.
fn vcpu_run(vcpu: u64, c0: u64, out: &mut [u64; 6]) -> Result<(), Errno> {
    let mut t = {
        let mut guard = HYP.lock();
        let hyp = guard.as_mut().ok_or(Errno::ENODEV)?;
        hyp.begin_run(vcpu, c0)?
    };
    let cfg = GuestConfig {
        vttbr: t.vttbr,
        vtcr: t.vtcr,
        cntvoff: t.cntvoff,
        pmu_open: t.pmu_open,
    };
    // Every register the host owns is saved here and the vCPU's loaded (Trust rule 5); the
    // loop below serves exits at EL2 without touching them, since EL2 code uses none of them.
    let host = switch::switch_to_guest(&t.ctx, &cfg);
    let host_hcr = el1::host_hcr();
    let (exit, pending) = loop {
        // SAFETY: the context is ours for the run, the guest's stage-2, HCR_EL2 and EL1 state
        // are loaded.
        unsafe { switch::enter_guest(&mut *t.ctx) };
        let e = exit::decode(&t.ctx);
        if matches!(e, GuestExit::Stage2Abort { .. }) {
            pmu::fault_pad();
        }
        // The guest's own virtual timer is delivered to it at EL2 (`arch::vtimer`): not the
        // host's business, no lock needed.
        if e == GuestExit::Interrupt && vtimer::guest_irq() {
            continue;
        }
        let mut guard = HYP.lock();
        let Some(hyp) = guard.as_mut() else {
            break ((ExitReason::GuestException, [0; 5]), Pending::None);
        };
        match hyp.handle_exit(t.vm, &mut t.ctx, e) {
            Step::Resume => continue,
            Step::Exit(e, p) => break (e, p),
        }
    };
    switch::switch_to_host(&mut t.ctx, &host);
    switch::load_stage2(host_hcr, t.host_vttbr, t.host_vtcr);
    log::debug!("vcpu {vcpu} exit {:?} {:x?}", exit.0, exit.1);
    let mut guard = HYP.lock();
    let hyp = guard.as_mut().ok_or(Errno::ENODEV)?;
    *out = hyp.end_run(t, exit, pending);
    Ok(())
}
