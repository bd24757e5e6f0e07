//! Trust rules 5 and 6, from the host with real guests: each world keeps its own registers across
//! the world switch; what the hyp does not virtualise is an undefined instruction (or an abort)
//! in the world that tried, which goes on; a guest that spins forever gives the CPU back when the
//! host's timer fires.

use alloc::format;
use alloc::string::String;

use abi::cmd::*;
use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::guest::SMCCC_SUCCESS;
use abi::host::HostCall;
use abi::PAGE_SIZE;
use host_shim::driver::{GuestDriver, StepReport};
use host_shim::exceptions::HostFault;
use host_shim::runner::forward_hypercall;
use host_shim::vm::{self, GmemId, SlotSpec, VmId};
use host_shim::{gic, hvc, regs};
use ontarget::{ensure, ensure_eq, register, TestResult};

use crate::vms::{e, with_pages};

const GPA: u64 = 0x8000_0000;
/// ESR of an undefined-instruction exception the hyp injects: EC 0, IL set.
const ESR_UNDEF: u64 = 1 << 25;

struct TestVm {
    vm: VmId,
    gmem: GmemId,
    guest: GuestDriver,
}

/// A VM of type `t` with a 64 KiB gmem at [`GPA`] in the configuration the type needs (pKVM
/// row for `pkvm`, "non-coco via get_pfn" for `plain`), a pool of `pool` pages, and the step
/// guest: (VM, gmem, guest).
pub(crate) fn step_guest_vm(t: VmType, pool: u64) -> Result<(VmId, GmemId, GuestDriver), String> {
    with_pages(|pages| {
        let vm = vm::vm_create(t).map_err(e)?;
        let flags = match t {
            VmType::Plain => GmemFlags::MMAP | GmemFlags::NO_DIRECT_MAP,
            _ => GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY,
        };
        let gmem = vm::gmem_create(vm, 64 << 10, flags).map_err(e)?;
        vm::memslot_create(
            vm,
            &SlotSpec {
                gpa: GPA,
                size: 64 << 10,
                gmem: Some((gmem, 0)),
                uaddr: UserspaceAddr::None,
                flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
            },
        )
        .map_err(e)?;
        let pa = pages.alloc_contiguous(pool, PAGE_SIZE).ok_or("no pages")?;
        vm::donate(vm, pa, pool).map_err(e)?;
        let guest = GuestDriver::load(vm, t, pages).map_err(e)?;
        Ok((vm, gmem, guest))
    })
}

/// [`step_guest_vm`] with a 32-page pool.
fn test_vm(t: VmType) -> Result<TestVm, String> {
    let (vm, gmem, guest) = step_guest_vm(t, 32)?;
    Ok(TestVm { vm, gmem, guest })
}

/// What a guest's probe step ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Ok(u64),
    /// The guest took an exception of this class at its own EL1.
    Exception(u64),
    Aborted,
}

fn probe_of(r: &StepReport) -> Result<Probe, String> {
    ensure!(
        r.exception.is_none(),
        "the guest's exception left EL2: {:?}",
        r.exception
    );
    match r.status {
        Some(STATUS_OK) => Ok(Probe::Ok(r.results[0])),
        Some(STATUS_EXCEPTION) => Ok(Probe::Exception((r.results[0] >> 26) & 0x3f)),
        Some(STATUS_ABORTED) => Ok(Probe::Aborted),
        s => Err(format!("guest step status {s:?}")),
    }
}

impl TestVm {
    fn step(&mut self, op: u64, args: [u64; 4]) -> Result<StepReport, String> {
        let (v, c) = (self.vm, self.guest.vcpu);
        with_pages(|p| {
            self.guest
                .step(op, args, p, &mut |f, a| forward_hypercall(v, c, f, a))
                .map_err(e)
        })
    }

    fn reg_write(&mut self, r: WorldReg, v: u64) -> Result<Probe, String> {
        probe_of(&self.step(OP_REG_WRITE, [r as u64, v, 0, 0])?)
    }

    fn reg_read(&mut self, r: WorldReg) -> Result<Probe, String> {
        probe_of(&self.step(OP_REG_READ, [r as u64, 0, 0, 0])?)
    }

    fn exec(&mut self, i: Insn) -> Result<Probe, String> {
        probe_of(&self.step(OP_EXEC, [i as u64, 0, 0, 0])?)
    }

    /// The guest still runs steps and the VM's exits were all the host's business (command
    /// device MMIO, forwarded calls): no guest exception reached the host.
    fn still_works(&mut self) -> TestResult {
        let r = self.step(OP_WRITE, [GPA + 0x100, 7, 0, 0])?;
        ensure_eq!(r.status, Some(STATUS_OK));
        ensure!(r.exception.is_none());
        let r = self.step(OP_READ, [GPA + 0x100, 0, 0, 0])?;
        ensure_eq!(r.results[0], 7);
        Ok(())
    }

    fn destroy(self) -> TestResult {
        vm::vm_destroy(self.vm).map_err(e)?;
        Ok(())
    }
}

fn undef(f: Result<impl core::fmt::Debug, HostFault>, what: &str) -> TestResult {
    match f {
        Err(f) => {
            ensure!(
                f.esr == ESR_UNDEF,
                "{what}: ESR 0x{:x}, not an undefined instruction",
                f.esr
            );
            Ok(())
        }
        Ok(v) => Err(format!("{what}: went through ({v:?})")),
    }
}

fn host_goes_on() -> TestResult {
    let r = hvc::call(HostCall::Version, [0; 6]).map_err(e)?;
    ensure_eq!(r[0], abi::host::ABI_VERSION);
    Ok(())
}

fn ws_host_sve_sme_and_unemulated_registers_are_undef_and_the_host_goes_on() -> TestResult {
    // Each of these reaches the hyp's trap (the host enabled SVE/SME at EL1 first): before, one
    // of them ended the machine.
    undef(regs::exec(Insn::Sve), "rdvl")?;
    undef(regs::exec(Insn::Sme), "rdsvl")?;
    undef(regs::read(WorldReg::ZcrEl1), "mrs zcr_el1")?;
    undef(regs::write(WorldReg::ZcrEl1, 1), "msr zcr_el1")?;
    // An IMPLEMENTATION DEFINED register the CPU implements: L2CTLR_EL1 (S3_1_C11_C0_2) on
    // QEMU's `max` (this once probed S3_0_C15_C0_0, which QEMU does not implement at all: it is
    // undefined at EL1 without any trap, so the check passed whatever HCR_EL2.TIDCP did).
    // HCR_EL2.TIDCP traps it to the hyp, which answers with an undefined instruction; QEMU 7.2
    // does not implement the TIDCP trap, so there it reads the board's constant (the number of
    // CPUs in bits 25:24, nothing else), the same in every world (a platform gap,
    // docs/ARCHITECTURE.md; attacks_ws.rs checks both worlds).
    let l2ctlr: u64;
    // SAFETY: one probed read of an IMPLEMENTATION DEFINED register; x0 declared clobbered.
    let r = unsafe { host_shim::probed_asm!("mrs x0, S3_1_C11_C0_2"; out("x0") l2ctlr) };
    match r {
        Ok(()) => ensure!(
            l2ctlr & !(0b11 << 24) == 0,
            "L2CTLR_EL1 reads 0x{l2ctlr:x}: more than QEMU's CPU count"
        ),
        Err(_) => undef(r, "mrs l2ctlr_el1")?,
    }
    host_goes_on()?;
    // What the host owns stays usable: its PMU and its debug registers.
    ensure_eq!(regs::exec(Insn::Pmu), Ok(()));
    ensure_eq!(regs::exec(Insn::Dbg), Ok(()));
    // Many times over: no state builds up.
    for _ in 0..100 {
        undef(regs::exec(Insn::Sve), "rdvl (repeated)")?;
    }
    host_goes_on()
}

fn ws_guest_sve_sme_pmu_and_unknown_registers_are_undef_and_the_guest_goes_on() -> TestResult {
    let mut v = test_vm(VmType::Pkvm)?;
    let before = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(v.exec(Insn::Sve)?, Probe::Exception(0));
    ensure_eq!(v.exec(Insn::Sme)?, Probe::Exception(0));
    // The VM has no PMU.
    ensure_eq!(v.exec(Insn::Pmu)?, Probe::Exception(0));
    ensure_eq!(v.reg_read(WorldReg::PmccntrEl0)?, Probe::Exception(0));
    ensure_eq!(v.reg_write(WorldReg::PmccntrEl0, 5)?, Probe::Exception(0));
    ensure_eq!(v.reg_read(WorldReg::ZcrEl1)?, Probe::Exception(0));
    // Semihosting (on in test images, off in the product): it prints, or it is an undefined
    // instruction at the guest's own EL1; either way the hyp is not involved and survives.
    let sh = v.exec(Insn::Semihost)?;
    ensure!(
        matches!(sh, Probe::Ok(_) | Probe::Exception(0)),
        "semihost: {sh:?}"
    );
    // The debug registers a kernel touches at boot are emulated.
    ensure!(
        matches!(v.exec(Insn::Dbg)?, Probe::Ok(_)),
        "mdscr_el1 refused"
    );
    v.still_works()?;
    let after = vm::stats(v.vm).map_err(e)?;
    // Every exit was the command device's: nothing of the guest's exceptions reached the host.
    ensure_eq!(
        after.exits - before.exits,
        after.mmio_exits - before.mmio_exits
    );
    v.destroy()
}

fn ws_guest_pmu_works_once_the_vm_opens_it() -> TestResult {
    let mut v = test_vm(VmType::Pkvm)?;
    ensure_eq!(v.exec(Insn::Pmu)?, Probe::Exception(0));
    hvc::call(HostCall::VmOpenPmu, [v.vm.0, 0, 0, 0, 0, 0]).map_err(e)?;
    ensure!(
        matches!(v.exec(Insn::Pmu)?, Probe::Ok(_)),
        "pmcr_el0 refused"
    );
    ensure!(
        matches!(v.reg_read(WorldReg::PmccntrEl0)?, Probe::Ok(_)),
        "pmccntr_el0 refused"
    );
    v.destroy()
}

fn ws_fetch_from_device_memory_is_an_abort_in_both_worlds() -> TestResult {
    // The host: its stage-2 maps devices execute-never; the permission fault is an instruction
    // abort at the host's EL1 (once it was a livelock: mapped again and again).
    for _ in 0..3 {
        match regs::exec(Insn::FetchDevice) {
            Err(f) => {
                ensure_eq!(f.ec(), 0x21);
                ensure_eq!(f.far, 0x0900_0000);
            }
            Ok(()) => return Err("the host executed from the UART".into()),
        }
    }
    host_goes_on()?;
    // A guest: the UART's IPA is in no memslot; the fetch is an instruction abort at its own EL1,
    // not an exit.
    let mut v = test_vm(VmType::Pkvm)?;
    let before = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(v.exec(Insn::FetchDevice)?, Probe::Aborted);
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(
        after.mmio_exits - before.mmio_exits,
        after.exits - before.exits
    );
    v.still_works()?;
    v.destroy()
}

/// The registers each world writes and reads back in the test below: (register, host's value,
/// guest's value). FPCR values use its defined bits only (FZ; DN with RMode = 0b10).
const PER_WORLD: [(WorldReg, u64, u64); 5] = [
    (WorldReg::D0, 0x1111_2222_3333_4444, 0x5555_6666_7777_8888),
    (WorldReg::Fpcr, 0x0100_0000, 0x0280_0000),
    (
        WorldReg::TpidrEl0,
        0xdead_beef_0000_0001,
        0x0bad_cafe_0000_0002,
    ),
    (
        WorldReg::ApiaKeyLoEl1,
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
    ),
    (
        WorldReg::CntvCvalEl0,
        0x7fff_0000_0000_1234,
        0x7fff_0000_0000_5678,
    ),
];

fn ws_registers_keep_their_value_per_world() -> TestResult {
    let mut a = test_vm(VmType::Pkvm)?;
    for (r, host, _) in PER_WORLD {
        regs::write(r, host).map_err(|f| format!("host {}: {f:?}", r.name()))?;
    }
    for (r, _, guest) in PER_WORLD {
        ensure_eq!(a.reg_write(r, guest)?, Probe::Ok(0));
    }
    for (r, host, guest) in PER_WORLD {
        ensure!(
            regs::read(r) == Ok(host),
            "host {}: {:?}, wrote 0x{host:x}",
            r.name(),
            regs::read(r)
        );
        let g = a.reg_read(r)?;
        ensure!(
            g == Probe::Ok(guest),
            "guest {}: {g:?}, wrote 0x{guest:x}",
            r.name()
        );
    }
    // A new vCPU starts from its reset values, not from either world's.
    let mut b = test_vm(VmType::Pkvm)?;
    for (r, _, _) in PER_WORLD {
        let g = b.reg_read(r)?;
        ensure!(g == Probe::Ok(0), "new guest {}: {g:?}", r.name());
    }
    // And the first guest still has its own after the other ran.
    for (r, host, guest) in PER_WORLD {
        ensure_eq!(a.reg_read(r)?, Probe::Ok(guest));
        ensure_eq!(regs::read(r), Ok(host));
    }
    a.destroy()?;
    b.destroy()
}

fn ws_guest_physical_timer_is_emulated_and_its_own() -> TestResult {
    let mut v = test_vm(VmType::Pkvm)?;
    regs::write(WorldReg::CntpCvalEl0, 0x4000_0000_0000_0001).map_err(|f| format!("{f:?}"))?;
    ensure_eq!(v.reg_read(WorldReg::CntpCvalEl0)?, Probe::Ok(0));
    ensure_eq!(
        v.reg_write(WorldReg::CntpCvalEl0, 0x4000_0000_0000_0002)?,
        Probe::Ok(0)
    );
    ensure_eq!(
        v.reg_read(WorldReg::CntpCvalEl0)?,
        Probe::Ok(0x4000_0000_0000_0002)
    );
    ensure_eq!(regs::read(WorldReg::CntpCvalEl0), Ok(0x4000_0000_0000_0001));
    v.destroy()
}

fn ws_guest_gic_priority_mask_is_its_own() -> TestResult {
    ensure!(gic::init(), "no GIC redistributor for this CPU");
    // Every priority unmasked (0xff, as many bits as the CPU interface implements).
    let host_pmr = gic::priority_mask();
    ensure!(host_pmr >= 0xf0, "host ICC_PMR_EL1 0x{host_pmr:x}");
    let mut a = test_vm(VmType::Pkvm)?;
    ensure_eq!(a.reg_write(WorldReg::IccPmrEl1, 0x10)?, Probe::Ok(0));
    ensure_eq!(a.reg_read(WorldReg::IccPmrEl1)?, Probe::Ok(0x10));
    // The host's physical priority mask is untouched, another guest has its own.
    ensure_eq!(gic::priority_mask(), host_pmr);
    let mut b = test_vm(VmType::Pkvm)?;
    ensure_eq!(b.reg_read(WorldReg::IccPmrEl1)?, Probe::Ok(0));
    ensure_eq!(a.reg_read(WorldReg::IccPmrEl1)?, Probe::Ok(0x10));
    a.destroy()?;
    b.destroy()
}

fn ws_spinning_guest_is_preempted_by_the_host_timer() -> TestResult {
    // A pKVM guest shares a page, then polls a flag in it with plain loads: no exit at all until
    // the host's timer fires. The host leaves the flag alone at the first interrupt (the guest
    // must keep spinning across a re-run) and sets it at the second.
    let mut v = test_vm(VmType::Pkvm)?;
    v.guest.timeslice_ticks = 5 * host_shim::timer::ticks_per_ms();
    let (vm_id, vcpu, gmem) = (v.vm, v.guest.vcpu, v.gmem);
    let mut calls = 0u64;
    let mut failed: Option<String> = None;
    let r = with_pages(|p| {
        v.guest
            .spin(
                GPA,
                GPA + 0x40,
                p,
                &mut |f, a| forward_hypercall(vm_id, vcpu, f, a),
                &mut |rep: &StepReport| {
                    calls += 1;
                    if rep.interrupts < 2 {
                        return;
                    }
                    // The hyp answers with the page; the flag is at offset 0x40 in it.
                    match vm::map_gmem(gmem, 0x40, true) {
                        // SAFETY: the guest shared this page; the hyp handed it out for writing.
                        Ok(pa) => unsafe { core::ptr::write_volatile((pa + 0x40) as *mut u8, 1) },
                        Err(err) => failed = Some(format!("flag page: {err}")),
                    }
                },
            )
            .map_err(e)
    })?;
    if let Some(f) = failed {
        return Err(f);
    }
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure_eq!(r.results[1], SMCCC_SUCCESS);
    ensure!(r.interrupts >= 2, "{} interrupt exits", r.interrupts);
    ensure_eq!(calls, r.interrupts);
    ensure!(r.results[0] > 1, "{} polls", r.results[0]);
    v.still_works()?;
    v.destroy()
}

fn ws_many_interrupt_exits_in_one_step_each_resumes_the_guest() -> TestResult {
    // A plain guest polls its own memory; the host's slice is 0.2 ms: the step is interrupted
    // twenty times, each interrupt exit says nothing but "the host has the CPU", and each re-run
    // resumes the loop where it was.
    let mut v = test_vm(VmType::Plain)?;
    v.guest.timeslice_ticks = (host_shim::timer::ticks_per_ms() / 5).max(1);
    let gmem = v.gmem;
    let mut failed: Option<String> = None;
    let r = with_pages(|p| {
        v.guest
            .spin(
                0,
                GPA + 0x80,
                p,
                &mut host_shim::driver::refuse_hypercalls,
                &mut |rep: &StepReport| {
                    if rep.interrupts < 20 {
                        return;
                    }
                    match vm::map_gmem(gmem, 0x80, true) {
                        // SAFETY: a plain VM's gmem page, handed out by the hyp for writing.
                        Ok(pa) => unsafe { core::ptr::write_volatile((pa + 0x80) as *mut u8, 1) },
                        Err(err) => failed = Some(format!("flag page: {err}")),
                    }
                },
            )
            .map_err(e)
    })?;
    if let Some(f) = failed {
        return Err(f);
    }
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure!(r.exception.is_none());
    // Twenty at least: another slice may end before the guest sees the flag (the count
    // depends on how fast the machine runs; what matters is that each exit resumed the loop).
    ensure!(r.interrupts >= 20, "{} interrupt exits", r.interrupts);
    v.still_works()?;
    v.destroy()
}

fn field(v: u64, lo: u32) -> u64 {
    (v >> lo) & 0xf
}

fn ws_guest_id_registers_show_only_what_it_can_use() -> TestResult {
    // The host sees the CPU as it is (QEMU's `max` has SVE, SME, a PMU and EL2).
    let pfr0 = regs::read(WorldReg::IdAa64Pfr0El1).map_err(|f| format!("{f:?}"))?;
    let pfr1 = regs::read(WorldReg::IdAa64Pfr1El1).map_err(|f| format!("{f:?}"))?;
    let dfr0 = regs::read(WorldReg::IdAa64Dfr0El1).map_err(|f| format!("{f:?}"))?;
    let mut v = test_vm(VmType::Pkvm)?;
    let read = |v: &mut TestVm, r| match v.reg_read(r)? {
        Probe::Ok(x) => Ok(x),
        p => Err(format!("guest {}: {p:?}", WorldReg::name(r))),
    };
    let g_pfr0 = read(&mut v, WorldReg::IdAa64Pfr0El1)?;
    let g_pfr1 = read(&mut v, WorldReg::IdAa64Pfr1El1)?;
    let g_dfr0 = read(&mut v, WorldReg::IdAa64Dfr0El1)?;
    // SVE (PFR0 35:32), EL2 (11:8), SME (PFR1 27:24), PMUVer (DFR0 11:8) hidden.
    ensure_eq!(field(g_pfr0, 32), 0);
    ensure_eq!(field(g_pfr0, 8), 0);
    ensure_eq!(field(g_pfr1, 24), 0);
    ensure_eq!(field(g_dfr0, 8), 0);
    // What it has stays: EL1 AArch64 (3:0), FP (19:16), AdvSIMD (23:20), the debug version.
    for lo in [0, 16, 20] {
        ensure_eq!(field(g_pfr0, lo), field(pfr0, lo));
    }
    ensure_eq!(field(g_dfr0, 0), field(dfr0, 0));
    if field(pfr0, 32) != 0 {
        ensure!(field(g_pfr0, 32) == 0, "SVE shown");
    }
    let _ = pfr1;
    // ID registers are read-only in both worlds.
    ensure_eq!(
        v.reg_write(WorldReg::IdAa64Pfr0El1, 0)?,
        Probe::Exception(0)
    );
    undef(
        regs::write(WorldReg::IdAa64Pfr0El1, 0),
        "msr id_aa64pfr0_el1",
    )?;
    // A VM that opened its PMU is told it has one.
    hvc::call(HostCall::VmOpenPmu, [v.vm.0, 0, 0, 0, 0, 0]).map_err(e)?;
    let g_dfr0 = read(&mut v, WorldReg::IdAa64Dfr0El1)?;
    ensure_eq!(field(g_dfr0, 8), field(dfr0, 8));
    v.destroy()
}

register!(
    ws_host_sve_sme_and_unemulated_registers_are_undef_and_the_host_goes_on,
    ws_guest_sve_sme_pmu_and_unknown_registers_are_undef_and_the_guest_goes_on,
    ws_guest_pmu_works_once_the_vm_opens_it,
    ws_fetch_from_device_memory_is_an_abort_in_both_worlds,
    ws_registers_keep_their_value_per_world,
    ws_guest_physical_timer_is_emulated_and_its_own,
    ws_guest_gic_priority_mask_is_its_own,
    ws_spinning_guest_is_preempted_by_the_host_timer,
    ws_many_interrupt_exits_in_one_step_each_resumes_the_guest,
    ws_guest_id_registers_show_only_what_it_can_use,
);
