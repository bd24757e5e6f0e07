//! Driving the step-interpreter guest: load it into a VM, then run one step at a time through
//! its MMIO command device (`abi::cmd`), serving every exit on the way the way a VMM would.

use abi::cmd::*;
use abi::guest::CMD_DEVICE_IPA;
use abi::host::COMPLETE_INJECT_ABORT;
use abi::{Errno, PAGE_SIZE};

use crate::pages::HostPages;
use crate::vm::{self, Exit, VcpuId, VmId};

/// IPA where guests' code, data and stack live (above the scenario window).
pub const GUEST_CODE_IPA: u64 = 0x1_4000_0000;
/// Pages mapped for a guest image (code + data + bss + stack).
pub const GUEST_IMAGE_PAGES: u64 = 8;
/// Pages donated at a time when the hyp asks for more.
pub const TOP_UP_PAGES: u64 = 64;
/// The host's timer slice for one `VcpuRun`, in milliseconds: a guest that runs this long
/// without an exit is preempted (an `Interrupt` exit) and re-run.
pub const DEFAULT_TIMESLICE_MS: u64 = 100;

/// The step-interpreter guest, as a flat binary linked at [`GUEST_CODE_IPA`].
pub static STEP_GUEST: &[u8] = include_bytes!(env!("GUEST_IMAGE"));

/// Everything one step saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// `STATUS` the guest stored (`None`: the guest died on the way).
    pub status: Option<u64>,
    pub results: [u64; 2],
    /// A memory-fault exit (gpa, size, flags); an abort was injected to end the access.
    pub memory_fault: Option<(u64, u64, u64)>,
    /// An MMIO exit outside the command device (ipa, write, data).
    pub mmio: Option<(u64, bool, u64)>,
    /// The guest took an exception the hyp could not hand to its own vectors (esr, elr, far).
    pub exception: Option<(u64, u64, u64)>,
    /// Exits to the host during the step.
    pub exits: u64,
    /// Pages donated because the pool ran dry.
    pub topped_up: u64,
    /// Faults the host served (fault mode "to host" only).
    pub host_served_faults: u64,
    /// Runs the host's timer interrupted (`Interrupt` exits): the guest ran a whole slice.
    pub interrupts: u64,
}

/// Answers a forwarded guest hypercall: (func, x1..x3) -> (x0, x1) for the guest.
pub type HypercallHandler<'a> = &'a mut dyn FnMut(u64, [u64; 3]) -> (u64, u64);

/// Called after each `Interrupt` exit (the host's timer took the CPU back), with the report so
/// far, before the vCPU runs again: where the host acts on a guest that runs without trapping
/// (e.g. writes the flag a spinning guest polls).
pub type InterruptHandler<'a> = &'a mut dyn FnMut(&StepReport);

/// One VM running the step guest on one vCPU.
#[derive(Debug)]
pub struct GuestDriver {
    pub vm: VmId,
    pub vcpu: VcpuId,
    /// Value an MMIO load outside the command device returns.
    pub mmio_read_value: u64,
    /// Counter ticks of the host's timer slice for each run ([`DEFAULT_TIMESLICE_MS`]).
    pub timeslice_ticks: u64,
    dead: bool,
}

impl GuestDriver {
    /// Loads the step guest into `vm` (host pages shared at [`GUEST_CODE_IPA`]) and creates
    /// its vCPU.
    pub fn load(vm: VmId, pages: &mut HostPages) -> Result<Self, Errno> {
        let pa = pages
            .alloc_contiguous(GUEST_IMAGE_PAGES, PAGE_SIZE)
            .ok_or(Errno::ENOMEM)?;
        let len = (GUEST_IMAGE_PAGES * PAGE_SIZE) as usize;
        if STEP_GUEST.len() > len {
            return Err(Errno::E2BIG);
        }
        // SAFETY: the pages were just taken from the host's own free RAM and nothing else uses
        // them; the host runs with its MMU off, so physical addresses are directly usable.
        unsafe {
            core::ptr::write_bytes(pa as *mut u8, 0, len);
            core::ptr::copy_nonoverlapping(STEP_GUEST.as_ptr(), pa as *mut u8, STEP_GUEST.len());
        }
        vm::map_host_shared(vm, GUEST_CODE_IPA, pa, GUEST_IMAGE_PAGES)?;
        let vcpu = vm::vcpu_create(vm, GUEST_CODE_IPA, 0)?;
        // The host's timer interrupt is what preempts a guest.
        crate::gic::init();
        Ok(Self {
            vm,
            vcpu,
            mmio_read_value: 0,
            timeslice_ticks: DEFAULT_TIMESLICE_MS * crate::timer::ticks_per_ms(),
            dead: false,
        })
    }

    /// Runs one command to its `STATUS` store.
    pub fn step(
        &mut self,
        op: u64,
        args: [u64; 4],
        pages: &mut HostPages,
        hypercall: HypercallHandler<'_>,
    ) -> Result<StepReport, Errno> {
        self.step_with(op, args, pages, hypercall, None)
    }

    /// [`GuestDriver::step`], calling `on_interrupt` after every `Interrupt` exit.
    pub fn step_with(
        &mut self,
        op: u64,
        args: [u64; 4],
        pages: &mut HostPages,
        hypercall: HypercallHandler<'_>,
        mut on_interrupt: Option<InterruptHandler<'_>>,
    ) -> Result<StepReport, Errno> {
        if self.dead {
            return Err(Errno::ENODEV);
        }
        let mut report = StepReport::default();
        let (mut c0, mut c1) = (0, 0);
        loop {
            // Every run under the host's timer (Trust rule 6), which is put back afterwards.
            let saved = crate::timer::arm(self.timeslice_ticks);
            let exit = vm::run(self.vcpu, c0, c1);
            crate::timer::disarm(saved);
            let exit = exit?;
            report.exits += 1;
            (c0, c1) = (0, 0);
            match exit {
                Exit::Mmio {
                    ipa, write, data, ..
                } if (CMD_DEVICE_IPA..CMD_DEVICE_IPA + 0x100).contains(&ipa) => {
                    match (ipa - CMD_DEVICE_IPA, write) {
                        (REG_CMD, false) => c0 = op,
                        (REG_ARG0, false) => c0 = args[0],
                        (REG_ARG1, false) => c0 = args[1],
                        (REG_ARG2, false) => c0 = args[2],
                        (REG_ARG3, false) => c0 = args[3],
                        (REG_RESULT0, true) => report.results[0] = data,
                        (REG_RESULT1, true) => report.results[1] = data,
                        (REG_STATUS, true) => {
                            report.status = Some(data);
                            return Ok(report);
                        }
                        _ => {}
                    }
                }
                Exit::Mmio {
                    ipa, write, data, ..
                } => {
                    report.mmio = Some((ipa, write, data));
                    c0 = self.mmio_read_value;
                }
                Exit::MemoryFault { gpa, size, flags } => {
                    report.memory_fault = Some((gpa, size, flags));
                    c0 = COMPLETE_INJECT_ABORT;
                }
                Exit::NeedPages { pages: wanted } => {
                    let n = wanted.max(TOP_UP_PAGES);
                    let pa = pages.alloc_contiguous(n, PAGE_SIZE).ok_or(Errno::ENOMEM)?;
                    vm::donate(self.vm, pa, n)?;
                    report.topped_up += n;
                }
                Exit::Hypercall { func, args } => {
                    (c0, c1) = hypercall(func, args);
                }
                Exit::PageFault { ipa, write } => {
                    // The upstream way: donate one page, ask the hyp to map it, re-run.
                    let pa = pages.alloc().ok_or(Errno::ENOMEM)?;
                    vm::donate(self.vm, pa, 1)?;
                    vm::serve_fault(self.vm, ipa, write)?;
                    report.host_served_faults += 1;
                }
                Exit::Interrupt => {
                    report.interrupts += 1;
                    if let Some(f) = on_interrupt.as_mut() {
                        f(&report);
                    }
                }
                Exit::GuestException { esr, elr, far } => {
                    report.exception = Some((esr, elr, far));
                    self.dead = true;
                    return Ok(report);
                }
            }
        }
    }

    /// The guest spins (`OP_SPIN`): shares `share_ipa` first (0: nothing), then polls the byte at
    /// `flag_ipa` until it is non-zero. Only `on_interrupt` can end it (by writing the flag).
    /// RESULT0 = polls, RESULT1 = x0 of the share.
    pub fn spin(
        &mut self,
        share_ipa: u64,
        flag_ipa: u64,
        pages: &mut HostPages,
        h: HypercallHandler<'_>,
        on_interrupt: InterruptHandler<'_>,
    ) -> Result<StepReport, Errno> {
        self.step_with(
            OP_SPIN,
            [share_ipa, flag_ipa, 0, 0],
            pages,
            h,
            Some(on_interrupt),
        )
    }

    /// Guest reads one byte.
    pub fn read(
        &mut self,
        ipa: u64,
        pages: &mut HostPages,
        h: HypercallHandler<'_>,
    ) -> Result<StepReport, Errno> {
        self.step(OP_READ, [ipa, 0, 0, 0], pages, h)
    }

    /// Guest writes one byte.
    pub fn write(
        &mut self,
        ipa: u64,
        value: u8,
        pages: &mut HostPages,
        h: HypercallHandler<'_>,
    ) -> Result<StepReport, Errno> {
        self.step(OP_WRITE, [ipa, u64::from(value), 0, 0], pages, h)
    }

    /// Guest makes a hypercall; RESULT0/1 = its x0/x1.
    pub fn hvc(
        &mut self,
        func: u64,
        a: [u64; 3],
        pages: &mut HostPages,
        h: HypercallHandler<'_>,
    ) -> Result<StepReport, Errno> {
        self.step(OP_HVC, [func, a[0], a[1], a[2]], pages, h)
    }
}

/// A hypercall handler for guests whose hypercalls the host does not expect.
pub fn refuse_hypercalls(_func: u64, _args: [u64; 3]) -> (u64, u64) {
    (abi::guest::SMCCC_NOT_SUPPORTED, 0)
}
