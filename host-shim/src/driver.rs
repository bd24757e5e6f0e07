//! Driving the step-interpreter guest: load it into a VM, then run one step at a time through
//! its MMIO command device (`abi::cmd`), serving every exit on the way the way a VMM would.

use alloc::vec::Vec;

use abi::cmd::*;
use abi::guest::CMD_DEVICE_IPA;
use abi::host::COMPLETE_INJECT_ABORT;
use abi::{Errno, PAGE_SIZE};

use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};

use crate::pages::HostPages;
use crate::vm::{self, Exit, GmemId, SlotId, SlotSpec, VcpuId, VmId};

/// IPA where guests' code, data and stack live (above the scenario window).
pub const GUEST_CODE_IPA: u64 = 0x1_4000_0000;
/// Pages mapped for a guest image (code + data + bss + stack).
pub const GUEST_IMAGE_PAGES: u64 = 8;
/// The page after the image: a flag page the guest shares with the host (`guest spin`).
pub const GUEST_FLAG_IPA: u64 = GUEST_CODE_IPA + GUEST_IMAGE_PAGES * PAGE_SIZE;
/// Pages of the guest's own memory: the image and the flag page.
pub const GUEST_PAGES: u64 = GUEST_IMAGE_PAGES + 1;
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
    /// The guest took an exception the hyp could not give its own vectors: its class (EC).
    pub exception: Option<u64>,
    /// Exits to the host during the step.
    pub exits: u64,
    /// Pages donated because the pool ran dry.
    pub topped_up: u64,
    /// Faults the host served (fault mode "to host" only).
    pub host_served_faults: u64,
    /// A `NeedPages` exit the host did not serve ([`GuestDriver::top_up`] off): the pages the
    /// hyp wanted. The exit was completed with an injected abort, so the step ended.
    pub need_pages: Option<u64>,
    /// `Interrupt` exits during the step (the host's timer took the CPU back).
    pub interrupts: u64,
}

/// Answers a forwarded guest hypercall: (func, x1..x3) -> (x0, x1) for the guest.
pub type HypercallHandler<'a> = &'a mut dyn FnMut(u64, [u64; 3]) -> (u64, u64);

/// Where the guest's own memory (image and flag page) lives, by VM type (Trust rule 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemory {
    /// `plain`: host pages shared into the guest (`MapHostShared`) at [`GUEST_CODE_IPA`]; the
    /// host keeps them (first physical page given).
    HostShared { pa: u64 },
    /// `pkvm` and `coco`: a gmem file of the VM behind a memslot at [`GUEST_CODE_IPA`], the
    /// guest's private memory. `pkvm`: `INIT_SHARED`, loaded through the host's mmap view, then
    /// each page the guest's at its first touch (Trust rule 9). `coco`: loaded the same way,
    /// then converted to private by the host, all but the flag page.
    Gmem { gmem: GmemId, slot: SlotId },
}
/// Called after each `Interrupt` exit (the host's timer took the CPU back), with the report so
/// far, before the vCPU runs again: where the host acts on a guest that runs without trapping
/// (e.g. writes the flag a spinning guest polls).
pub type InterruptHandler<'a> = &'a mut dyn FnMut(&StepReport);

/// One VM running the step guest on one vCPU.
#[derive(Debug)]
pub struct GuestDriver {
    pub vm: VmId,
    pub vcpu: VcpuId,
    pub vm_type: VmType,
    pub memory: GuestMemory,
    /// Value an MMIO load outside the command device returns.
    pub mmio_read_value: u64,
    /// Donate when the VM's pool runs dry (the default). Off (`pool pages=` in scenarios), a
    /// `NeedPages` exit ends the guest's access with an injected abort and is reported.
    pub top_up: bool,
    /// Runs of host pages donated on the way (physical address, pages), for the owner to take
    /// back once the VM is gone.
    pub donated: Vec<(u64, u64)>,
    /// The guest shared its flag page with the host (`pkvm`: its first spin does, with
    /// MEM_SHARE); later spins poll without sharing again.
    pub flag_shared: bool,
    /// Counter ticks of the host's timer slice for each run ([`DEFAULT_TIMESLICE_MS`]).
    pub timeslice_ticks: u64,
    dead: bool,
}

/// Copies `bytes` to physical address `pa` (the host's MMU is off).
fn copy_to(pa: u64, bytes: &[u8]) -> Result<(), Errno> {
    for (i, &b) in bytes.iter().enumerate() {
        crate::exceptions::probe_write(pa as usize + i, b).map_err(|_| Errno::EFAULT)?;
    }
    Ok(())
}

impl GuestDriver {
    /// Loads the step guest into `vm` (see [`GuestMemory`]) and creates its vCPU. The VM's
    /// pool must hold [`GUEST_PAGES`] pages for `pkvm` and `coco`.
    pub fn load(vm: VmId, vm_type: VmType, pages: &mut HostPages) -> Result<Self, Errno> {
        let image_len = (GUEST_IMAGE_PAGES * PAGE_SIZE) as usize;
        if STEP_GUEST.len() > image_len {
            return Err(Errno::E2BIG);
        }
        let memory = match vm_type {
            VmType::Plain => {
                let pa = pages
                    .alloc_contiguous(GUEST_PAGES, PAGE_SIZE)
                    .ok_or(Errno::ENOMEM)?;
                // SAFETY: the pages were just taken from the host's own free RAM and nothing
                // else uses them; the host runs with its MMU off, so physical addresses are
                // directly usable.
                unsafe {
                    core::ptr::write_bytes(pa as *mut u8, 0, (GUEST_PAGES * PAGE_SIZE) as usize);
                    core::ptr::copy_nonoverlapping(
                        STEP_GUEST.as_ptr(),
                        pa as *mut u8,
                        STEP_GUEST.len(),
                    );
                }
                vm::map_host_shared(vm, GUEST_CODE_IPA, pa, GUEST_PAGES)?;
                GuestMemory::HostShared { pa }
            }
            VmType::Pkvm | VmType::Coco => {
                let flags =
                    GmemFlags::MMAP | GmemFlags::INIT_SHARED | GmemFlags::TRACK_SHAREABILITY;
                let gmem = vm::gmem_create(vm, GUEST_PAGES * PAGE_SIZE, flags)?;
                let slot = vm::memslot_create(
                    vm,
                    &SlotSpec {
                        gpa: GUEST_CODE_IPA,
                        size: GUEST_PAGES * PAGE_SIZE,
                        gmem: Some((gmem, 0)),
                        uaddr: UserspaceAddr::None,
                        flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM
                            | MemslotFlags::DONT_CHECK_MISMATCHES,
                    },
                )?;
                // The host puts the image there through its mmap view while it is shared.
                for (i, chunk) in STEP_GUEST.chunks(PAGE_SIZE as usize).enumerate() {
                    let pa = vm::map_gmem(gmem, i as u64 * PAGE_SIZE, true)?;
                    copy_to(pa, chunk)?;
                }
                if vm_type == VmType::Coco {
                    vm::convert(
                        gmem,
                        0,
                        GUEST_IMAGE_PAGES * PAGE_SIZE,
                        ConvertTo::Private,
                        ContentMode::Preserve,
                    )
                    .map_err(|(e, _)| e)?;
                }
                GuestMemory::Gmem { gmem, slot }
            }
        };
        let vcpu = vm::vcpu_create(vm, GUEST_CODE_IPA, 0)?;
        // The host's timer interrupt is what preempts a guest.
        crate::gic::init();
        Ok(Self {
            vm,
            vcpu,
            vm_type,
            memory,
            mmio_read_value: 0,
            top_up: true,
            donated: Vec::new(),
            flag_shared: false,
            timeslice_ticks: DEFAULT_TIMESLICE_MS * crate::timer::ticks_per_ms(),
            dead: false,
        })
    }

    /// The arguments of `OP_SPIN` for this guest: the page it first shares with the host (0 if
    /// the host can write the flag page already) and the IPA of the flag byte it polls.
    pub fn spin_args(&self) -> (u64, u64) {
        match self.vm_type {
            // Its own memory since its first touch: the guest shares the flag page first.
            VmType::Pkvm if !self.flag_shared => (GUEST_FLAG_IPA, GUEST_FLAG_IPA),
            VmType::Pkvm => (0, GUEST_FLAG_IPA),
            // The flag page stays shared: the guest reads it through the shared alias.
            VmType::Coco => (0, GUEST_FLAG_IPA | abi::guest::COCO_SHARED_BIT),
            VmType::Plain => (0, GUEST_FLAG_IPA),
        }
    }

    /// Writes the flag byte the spinning guest polls, as the host may (its mmap view of the
    /// shared flag page, or its own page).
    pub fn write_spin_flag(&self, value: u8) -> Result<(), Errno> {
        let pa = match self.memory {
            GuestMemory::HostShared { pa } => pa + GUEST_IMAGE_PAGES * PAGE_SIZE,
            GuestMemory::Gmem { gmem, .. } => {
                vm::map_gmem(gmem, GUEST_IMAGE_PAGES * PAGE_SIZE, true)?
            }
        };
        crate::exceptions::probe_write(pa as usize, value).map_err(|_| Errno::EFAULT)
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
                } if (CMD_DEVICE_IPA..CMD_DEVICE_IPA + CMD_DEVICE_SIZE).contains(&ipa) => {
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
                Exit::NeedPages { pages: wanted } if !self.top_up => {
                    report.need_pages = Some(wanted);
                    c0 = COMPLETE_INJECT_ABORT;
                }
                Exit::NeedPages { pages: wanted } => {
                    let n = wanted.max(TOP_UP_PAGES);
                    let pa = pages.alloc_contiguous(n, PAGE_SIZE).ok_or(Errno::ENOMEM)?;
                    vm::donate(self.vm, pa, n)?;
                    self.donated.push((pa, n));
                    report.topped_up += n;
                }
                Exit::Hypercall { func, args } => {
                    (c0, c1) = hypercall(func, args);
                }
                Exit::PageFault { ipa, write } => {
                    // The upstream way: donate one page, ask the hyp to map it, re-run.
                    let pa = pages.alloc().ok_or(Errno::ENOMEM)?;
                    vm::donate(self.vm, pa, 1)?;
                    self.donated.push((pa, 1));
                    vm::serve_fault(self.vm, ipa, write)?;
                    report.host_served_faults += 1;
                }
                Exit::Interrupt => {
                    report.interrupts += 1;
                    if let Some(f) = on_interrupt.as_mut() {
                        f(&report);
                    }
                }
                Exit::GuestException { class } => {
                    report.exception = Some(class);
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
