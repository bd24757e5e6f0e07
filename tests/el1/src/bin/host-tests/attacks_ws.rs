//! Attacks on the world switch and the trap boundary (SEMANTICS.md "Trust" rules 5, 6, 10, 11;
//! SCENARIOS.md "Registers across the world switch"), beyond what `worlds.rs` and `attacks.rs`
//! check. Each test asserts the SECURE outcome (what the rules promise); a failing test documents
//! a break, and its message says what leaked or what went wrong. Where it helps, a positive control
//! shows that the observation works (the probe can see an undefined instruction, a watchpoint
//! fires where it should, the page table translates on this CPU, ...), so that a passing test is a
//! defence that holds and not a probe that sees nothing.
//!
//! The guest side runs instruction words the host hands it: the attacker-only commands
//! `OP_ATK_LOAD`/`OP_ATK_RUN`/`OP_ATK_OUT`/`OP_ATK_MMU` of the step guest
//! (`guests/src/bin/step-guest.rs`, numbers 0x50.., outside `abi::cmd`) load them into a buffer
//! and run them at the guest's EL1 (`blr`) or its EL0 (`eret` with an SPSR the host chooses:
//! AArch64, A32 or T32), and report x0..x3 and the syndrome of the exception that ended them.
//! The host side runs the same words from a buffer of its own at EL1, under its probe.
//!
//! Breaks these tests found, and what fixed each (the test's message names the root cause if it
//! comes back):
//! - `ws_atk_guest_scxtnum_*`: the guest was told FEAT_CSV2_2 (SCXTNUM_EL0/EL1) and got UNDEF:
//!   now shown CSV2 <= 1 (as KVM); the host, told it has them, gets HCR_EL2.EnSCXT.
//! - `ws_atk_open_pmu_registers_*`: an opened PMU was shared with the host and other VMs: now
//!   switched, but for the hyp's benchmark counters 0 and 1 (shared by design, asserted).
//! - `ws_atk_guest_stage1_mmu_*`: HCR_EL2.DC kept every guest's stage-1 off: dropped.
//! - `ws_atk_aarch32_el0_thumb16_*`, `ws_atk_aarch32_el0_mmio_in_an_it_block_*`: MMIO completion
//!   at AArch32 EL0 skipped the next 16-bit instruction / kept a stale IT state: `arch::pc`.
//! - `ws_atk_aarch32_el0_physical_timer_*`: AArch32 EL0 physical-timer accesses were UNDEF.
//! - `ws_atk_guest_debug_registers_*`: the debug registers a guest is told of were RAZ/WI: now
//!   switched (`arch::debug`), MDSCR_EL1.TDCC (missing in QEMU 7.2) emulated.
//! - `ws_atk_guest_vtimer_interrupt_*`: a guest's virtual timer interrupt never reached it: now
//!   delivered at EL2 through a HW-mapped list register (`arch::vtimer`).
//! - `ws_atk_vcpu_moving_between_cpus_*`: a guest's MPIDR_EL1 was the physical CPU's.
//! - `ws_atk_impdef_registers_*`: IMPLEMENTATION DEFINED registers are readable in both worlds
//!   (QEMU 7.2 ignores HCR_EL2.TIDCP): a platform gap; the test asserts what holds (the same
//!   board constants in both worlds), and `worlds.rs`, which probed an encoding QEMU does not
//!   implement, now probes one it does.
//!
//! Passing from the start (the defence held): the register sweep, host watchpoints (in a guest
//! and at EL2), the host's cycle counter, a guest's firing virtual timer (now: it does not end
//! the run either) and its SGIs, storms with everything masked, exit storms against the other
//! CPU's host calls, every kind of host access to the hyp's memory and stage-1 walks through it,
//! odd ERETs, cache/TLB/AT instructions, injected UNDEFs from EL0 (now probed with an AArch32
//! debug register: the physical timer is emulated).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::cmd::*;
use abi::flags::VmType;
use abi::guest::CMD_DEVICE_IPA;
use abi::host::{ExitReason, HostCall};
use abi::PAGE_SIZE;
use host_shim::driver::{GuestDriver, StepReport};
use host_shim::exceptions::HostFault;
use host_shim::runner::forward_hypercall;
use host_shim::vm::{self, GmemId, VmId};
use host_shim::{gic, hvc};
use ontarget::{ensure, ensure_eq, register, TestResult};
use tock_registers::interfaces::{Readable, Writeable};
use trap_frame::spsr;

use crate::attacks::run_raw;
use crate::vms::{e, with_pages};

/// The data memslot of every VM here (below 4 GiB: AArch32 EL0 code runs from it).
const GPA: u64 = 0x8000_0000;
/// The UART's address: an IPA in no memslot, so a guest access there is an MMIO exit.
const UART: u64 = 0x0900_0000;

/// Attacker-only guest commands (same numbers as in the step guest).
const OP_ATK_LOAD: u64 = 0x50;
const OP_ATK_RUN: u64 = 0x51;
const OP_ATK_OUT: u64 = 0x52;
const OP_ATK_MMU: u64 = 0x53;

/// SPSRs of the EL0 runs: interrupts masked. AArch64 EL0t; AArch32 User, A32 or T32.
const SPSR_EL0_A64: u64 = spsr::DAIF | spsr::M_EL0T;
const SPSR_EL0_A32: u64 = spsr::A | spsr::I | spsr::F | spsr::M_AARCH32 | spsr::M32_USR;
const SPSR_EL0_T32: u64 = SPSR_EL0_A32 | spsr::T;

/// Exception classes.
const EC_UNKNOWN: u64 = 0x00;
const EC_ILLEGAL_STATE: u64 = 0x0e;
const EC_SVC32: u64 = 0x11;
const EC_SVC64: u64 = 0x15;
const EC_SYS64: u64 = 0x18;
const EC_DABT_CUR: u64 = 0x25;
const EC_WATCH_LOW: u64 = 0x34;
const EC_WATCH_CUR: u64 = 0x35;

fn ec(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

fn field(v: u64, lo: u32) -> u64 {
    (v >> lo) & 0xf
}

// ---- instruction words --------------------------------------------------------------------------

/// A system register's encoding (op0, op1, CRn, CRm, op2), in the MRS/MSR bit positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sys(u32, u32, u32, u32, u32);

impl Sys {
    const fn bits(self) -> u32 {
        ((self.0 - 2) << 19) | (self.1 << 16) | (self.2 << 12) | (self.3 << 8) | (self.4 << 5)
    }
}

/// `mrs x<rt>, <reg>`.
const fn mrs(r: Sys, rt: u32) -> u32 {
    0xd530_0000 | r.bits() | rt
}

/// `msr <reg>, x<rt>`.
const fn msr(r: Sys, rt: u32) -> u32 {
    0xd510_0000 | r.bits() | rt
}

/// `b` to `words` instructions away (negative: backwards).
const fn branch(words: i32) -> u32 {
    0x1400_0000 | (words as u32 & 0x03ff_ffff)
}

const RET: u32 = 0xd65f_03c0;
const ISB: u32 = 0xd503_3fdf;
const SVC0: u32 = 0xd400_0001;
const HVC0: u32 = 0xd400_0002;
const WFI: u32 = 0xd503_207f;
const WFE: u32 = 0xd503_205f;
const DAIFSET_ALL: u32 = 0xd503_4fdf;
const DAIFSET_D: u32 = 0xd503_48df;
const DAIFCLR_D: u32 = 0xd503_48ff;
/// `strb w0, [x1]`.
const STRB_W0_X1: u32 = 0x3900_0020;

// Registers used below.
const ID_AA64PFR0: Sys = Sys(3, 0, 0, 4, 0);
const ID_AA64PFR1: Sys = Sys(3, 0, 0, 4, 1);
const ID_AA64DFR0: Sys = Sys(3, 0, 0, 5, 0);
const SCXTNUM_EL1: Sys = Sys(3, 0, 13, 0, 7);
const SCXTNUM_EL0: Sys = Sys(3, 3, 13, 0, 7);
const PMCR_EL0: Sys = Sys(3, 3, 9, 12, 0);
const PMCNTENSET_EL0: Sys = Sys(3, 3, 9, 12, 1);
const PMCNTENCLR_EL0: Sys = Sys(3, 3, 9, 12, 2);
const PMSELR_EL0: Sys = Sys(3, 3, 9, 12, 5);
const PMCCNTR_EL0: Sys = Sys(3, 3, 9, 13, 0);
const PMEVTYPER3_EL0: Sys = Sys(3, 3, 14, 12, 3);
const PMCCFILTR_EL0: Sys = Sys(3, 3, 14, 15, 7);
const PMUSERENR_EL0: Sys = Sys(3, 3, 9, 14, 0);
const CNTKCTL_EL1: Sys = Sys(3, 0, 14, 1, 0);
const CNTP_CTL_EL0: Sys = Sys(3, 3, 14, 2, 1);
const CNTV_CTL_EL0: Sys = Sys(3, 3, 14, 3, 1);
const CNTV_CVAL_EL0: Sys = Sys(3, 3, 14, 3, 2);
const ICC_PMR_EL1: Sys = Sys(3, 0, 4, 6, 0);
const ICC_IGRPEN1_EL1: Sys = Sys(3, 0, 12, 12, 7);
const ICC_SGI1R_EL1: Sys = Sys(3, 0, 12, 11, 5);
const ICC_ASGI1R_EL1: Sys = Sys(3, 0, 12, 11, 6);
const ICC_SGI0R_EL1: Sys = Sys(3, 0, 12, 11, 7);
const MDSCR_EL1: Sys = Sys(2, 0, 0, 2, 2);
const OSLAR_EL1: Sys = Sys(2, 0, 1, 0, 4);
const MDCCSR_EL0: Sys = Sys(2, 3, 0, 1, 0);

const fn dbgwvr(n: u32) -> Sys {
    Sys(2, 0, 0, n, 6)
}

const fn dbgwcr(n: u32) -> Sys {
    Sys(2, 0, 0, n, 7)
}

/// MDSCR_EL1: MDE (breakpoints and watchpoints on), KDE (debug exceptions at EL1 too), TDCC.
const MDSCR_MDE: u64 = 1 << 15;
const MDSCR_KDE: u64 = 1 << 13;
const MDSCR_TDCC: u64 = 1 << 12;
/// DBGWCR: enabled, EL1 and EL0 (PAC = 0b11), loads and stores (LSC = 0b11), all 8 bytes.
const WCR_EL1_EL0_ALL: u64 = 1 | (0b11 << 1) | (0b11 << 3) | (0xff << 5);
/// DBGWCR.HMC: the watchpoint also matches at EL2.
const WCR_HMC: u64 = 1 << 13;

// ---- the host's own code buffer -------------------------------------------------------------------

#[repr(C, align(64))]
struct HostCode(UnsafeCell<[u32; 64]>);
// SAFETY: only CPU 0 (the test runner) uses it, one call at a time.
unsafe impl Sync for HostCode {}
static HOST_CODE: HostCode = HostCode(UnsafeCell::new([0; 64]));

/// Makes the instructions just written at `addr..addr + len` visible to instruction fetch.
fn sync_icache(addr: u64, len: u64) {
    let mut a = addr & !63;
    while a < addr + len {
        // SAFETY: cache maintenance by VA of the host's own memory.
        unsafe { core::arch::asm!("dc cvau, {a}", "dsb ish", "ic ivau, {a}", a = in(reg) a) };
        a += 64;
    }
    // SAFETY: barriers and an invalidation of the host's own instruction cache.
    unsafe { core::arch::asm!("dsb ish", "ic iallu", "dsb ish", "isb") };
}

/// Runs `words` (then `ret`) at the host's EL1 with x0..x3 = `x`, under the probe: the first
/// exception one of them takes ends the run and comes back as `Err`. -> x0..x3 after them.
fn h_exec(words: &[u32], x: [u64; 4]) -> Result<[u64; 4], HostFault> {
    assert!(words.len() < 63);
    let buf = HOST_CODE.0.get() as *mut u32;
    for (i, &w) in words.iter().chain(core::iter::once(&RET)).enumerate() {
        // SAFETY: the buffer is the host's own (see `HostCode`).
        unsafe { core::ptr::write_volatile(buf.add(i), w) };
    }
    sync_icache(buf as u64, 4 * (words.len() as u64 + 1));
    // FP/SIMD on at EL1 (some of the words touch FP registers).
    // SAFETY: the host's own CPACR_EL1; `isb` makes it take effect.
    unsafe {
        core::arch::asm!(
            "mrs {t}, cpacr_el1",
            "orr {t}, {t}, #(3 << 20)",
            "msr cpacr_el1, {t}",
            "isb",
            t = out(reg) _,
        )
    };
    let [mut x0, mut x1, mut x2, mut x3] = x;
    host_shim::exceptions::arm();
    // SAFETY: the words are the test's; they may use x0..x17 (declared clobbered) and return
    // with `ret`; an exception in them returns to label 2 through the armed probe.
    unsafe {
        core::arch::asm!(
            "adr {t}, 2f",
            "str {t}, [{slot}]",
            "blr {f}",
            "2:",
            f = in(reg) buf,
            slot = in(reg) host_shim::exceptions::resume_slot(),
            t = out(reg) _,
            inout("x0") x0, inout("x1") x1, inout("x2") x2, inout("x3") x3,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
            out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _, out("x30") _,
        )
    };
    host_shim::exceptions::disarm().map_or(Ok([x0, x1, x2, x3]), Err)
}

fn hr(r: Sys) -> Result<u64, HostFault> {
    h_exec(&[mrs(r, 0)], [0; 4]).map(|x| x[0])
}

fn hw(r: Sys, v: u64) -> Result<(), HostFault> {
    h_exec(&[msr(r, 0), ISB], [v, 0, 0, 0]).map(|_| ())
}

fn host_goes_on() -> TestResult {
    let r = hvc::call(HostCall::Version, [0; 6]).map_err(e)?;
    ensure_eq!(r[0], abi::host::ABI_VERSION);
    ensure_eq!(vm::check_invariants(), Ok(0));
    Ok(())
}

// ---- a VM running the step guest ----------------------------------------------------------------

struct Gvm {
    vm: VmId,
    gmem: GmemId,
    guest: GuestDriver,
}

/// A VM of type `t` as [`crate::worlds::step_guest_vm`] makes it, with a 48-page pool.
fn gvm(t: VmType) -> Result<Gvm, String> {
    let (vm, gmem, guest) = crate::worlds::step_guest_vm(t, 48)?;
    Ok(Gvm { vm, gmem, guest })
}

/// An MMIO exit outside the command device: (IPA, write, data).
type MmioSeen = (u64, bool, u64);

/// What a guest's run of instruction words ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ran {
    /// x0..x3 when it ended (EL0: when it took the exception that ended it).
    x: [u64; 4],
    /// ESR_EL1 of the exception taken in it (EL1: 0 = none) or that ended it (EL0).
    esr: u64,
    /// An MMIO exit outside the command device during the run.
    mmio: Option<MmioSeen>,
}

impl Gvm {
    fn step(&mut self, op: u64, args: [u64; 4]) -> Result<StepReport, String> {
        let (v, c) = (self.vm, self.guest.vcpu);
        let r = with_pages(|p| {
            self.guest
                .step(op, args, p, &mut |f, a| forward_hypercall(v, c, f, a))
                .map_err(e)
        })?;
        ensure!(
            r.exception.is_none(),
            "a guest exception left EL2: {:?}",
            r.exception
        );
        Ok(r)
    }

    /// Loads `words` at the start of the guest's code buffer.
    fn load(&mut self, words: &[u32]) -> TestResult {
        ensure!(words.len() <= 32);
        let slots: Vec<u64> = words
            .chunks(2)
            .map(|c| u64::from(c[0]) | (u64::from(*c.get(1).unwrap_or(&0)) << 32))
            .collect();
        for (i, three) in slots.chunks(3).enumerate() {
            let s = |k: usize| three.get(k).copied().unwrap_or(0);
            let r = self.step(OP_ATK_LOAD, [(i * 3) as u64, s(0), s(1), s(2)])?;
            ensure_eq!(r.status, Some(STATUS_OK));
        }
        Ok(())
    }

    /// Runs the loaded words: at EL1 (`spsr` 0) or at EL0 with `spsr`, copied to `dest` first
    /// (0: where they are), x0/x1 = `a`.
    fn run(&mut self, spsr: u64, dest: u64, a: [u64; 2]) -> Result<Ran, String> {
        let r = self.step(OP_ATK_RUN, [spsr, dest, a[0], a[1]])?;
        ensure_eq!(r.status, Some(STATUS_OK));
        let o = self.step(OP_ATK_OUT, [0, 0, 0, 0])?;
        let o2 = self.step(OP_ATK_OUT, [2, 0, 0, 0])?;
        Ok(Ran {
            x: [o.results[0], o.results[1], o2.results[0], o2.results[1]],
            esr: r.results[1],
            mmio: r.mmio,
        })
    }

    /// ELR_EL1, SPSR_EL1 of the exception that ended the last EL0 run.
    fn el0_return(&mut self) -> Result<(u64, u64), String> {
        let o = self.step(OP_ATK_OUT, [5, 0, 0, 0])?;
        Ok((o.results[0], o.results[1]))
    }

    /// The vector (offset / 0x80) of the exception that ended the last EL0 run.
    fn el0_vector(&mut self) -> Result<u64, String> {
        Ok(self.step(OP_ATK_OUT, [8, 0, 0, 0])?.results[0])
    }

    /// Runs `words` at the guest's EL1 (a `ret` is appended).
    fn exec(&mut self, words: &[u32], a: [u64; 2]) -> Result<Ran, String> {
        let mut w: Vec<u32> = words.to_vec();
        w.push(RET);
        self.load(&w)?;
        self.run(0, 0, a)
    }

    /// Runs `words` at the guest's EL0 (they must end with an exception, e.g. `svc`).
    fn exec_el0(
        &mut self,
        words: &[u32],
        spsr: u64,
        dest: u64,
        a: [u64; 2],
    ) -> Result<Ran, String> {
        self.load(words)?;
        self.run(spsr, dest, a)
    }

    /// Reads one of the guest's registers: `Ok(value)` or `Err(ESR)`.
    fn gr(&mut self, r: Sys) -> Result<Result<u64, u64>, String> {
        let ran = self.exec(&[mrs(r, 0)], [0, 0])?;
        Ok(if ran.esr == 0 {
            Ok(ran.x[0])
        } else {
            Err(ran.esr)
        })
    }

    /// Writes one of the guest's registers: `Ok(())` or `Err(ESR)`.
    fn gw(&mut self, r: Sys, v: u64) -> Result<Result<(), u64>, String> {
        let ran = self.exec(&[msr(r, 0), ISB], [v, 0])?;
        Ok(if ran.esr == 0 { Ok(()) } else { Err(ran.esr) })
    }

    fn destroy(self) -> TestResult {
        vm::vm_destroy(self.vm).map_err(e)?;
        ensure_eq!(vm::check_invariants(), Ok(0));
        Ok(())
    }
}

// ---- 1. SCXTNUM: told it has it, does it? ---------------------------------------------------------

/// QEMU's `max` CPU implements FEAT_CSV2_2 (ID_AA64PFR0_EL1.CSV2 = 2), which brings SCXTNUM_EL0
/// and SCXTNUM_EL1, two registers EL0/EL1 may read and write. The hyp shows a guest CSV2 as it is
/// (`traps::sanitized_id`), so the guest is told it has them (rule 5: "what a guest is told it
/// has, it has"); and once it has them, each world must keep its own (rule 5).
fn ws_atk_guest_scxtnum_it_is_told_of_is_usable_and_its_own() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    let pfr0 = v
        .gr(ID_AA64PFR0)?
        .map_err(|x| format!("id_aa64pfr0: ESR {x:#x}"))?;
    let pfr1 = v
        .gr(ID_AA64PFR1)?
        .map_err(|x| format!("id_aa64pfr1: ESR {x:#x}"))?;
    let (csv2, frac) = (field(pfr0, 56), field(pfr1, 32));
    if !(csv2 >= 2 || (csv2 == 1 && frac >= 2)) {
        // Hidden: the guest is not told of them (the defence KVM uses: CSV2 capped at 1), and
        // it does not have them: its accesses are undefined. The host, told by its own ID
        // registers that it has them, does (HCR_EL2.EnSCXT while it runs), and keeps its values
        // across a guest's run and its attempts.
        let host_can = hw(SCXTNUM_EL1, 0x5c71_1111).is_ok() && hw(SCXTNUM_EL0, 0x5c70_2222).is_ok();
        for (name, r) in [("SCXTNUM_EL1", SCXTNUM_EL1), ("SCXTNUM_EL0", SCXTNUM_EL0)] {
            let w = v.gw(r, 0x47)?;
            let rd = v.gr(r)?;
            ensure!(
                matches!(w, Err(x) if ec(x) == EC_UNKNOWN) && matches!(rd, Err(x) if ec(x) == EC_UNKNOWN),
                "the guest is not told of {name} (CSV2 {csv2}, CSV2_frac {frac}) but its write gave                  {w:x?}, its read {rd:x?}"
            );
        }
        let host_pfr0 = hr(ID_AA64PFR0).map_err(|f| format!("{f:?}"))?;
        if field(host_pfr0, 56) >= 2 {
            ensure!(
                host_can,
                "the host is told CSV2 = 2 but cannot use SCXTNUM_EL0/EL1"
            );
        }
        if host_can {
            ensure_eq!(hr(SCXTNUM_EL1).ok(), Some(0x5c71_1111));
            ensure_eq!(hr(SCXTNUM_EL0).ok(), Some(0x5c70_2222));
            let _ = hw(SCXTNUM_EL1, 0);
            let _ = hw(SCXTNUM_EL0, 0);
        }
        return v.destroy();
    }
    let mut problems = Vec::new();
    let host_can = hw(SCXTNUM_EL1, 0x1111).is_ok();
    for (name, r, g) in [
        ("SCXTNUM_EL1", SCXTNUM_EL1, 0x5c71_0001u64),
        ("SCXTNUM_EL0", SCXTNUM_EL0, 0x5c70_0002),
    ] {
        match v.gw(r, g)? {
            Ok(()) => match v.gr(r)? {
                Ok(x) if x == g => {}
                other => problems.push(format!("{name} reads back {other:x?} after 0x{g:x}")),
            },
            Err(esr) => problems.push(format!(
                "{name}: the guest's write is EC 0x{:02x} (ESR 0x{esr:x})",
                ec(esr)
            )),
        }
    }
    if host_can {
        ensure_eq!(hr(SCXTNUM_EL1).ok(), Some(0x1111));
    }
    ensure!(
        problems.is_empty(),
        "the guest is told ID_AA64PFR0_EL1.CSV2 = {csv2} (FEAT_CSV2_2: SCXTNUM_EL0/EL1 exist), \
         but {} (the host's own access: {}): HCR_EL2.EnSCXT is clear, so both trap to EL2 and are \
         answered UNDEF, and traps::sanitized_id does not cap CSV2 at 1",
        problems.join("; "),
        if host_can { "works" } else { "undefined too" }
    );
    v.destroy()
}

// ---- 2. IMPLEMENTATION DEFINED registers -----------------------------------------------------------

/// The Cortex-A57-style IMPLEMENTATION DEFINED registers QEMU's `max` CPU implements.
const IMPDEF: [(&str, Sys); 8] = [
    ("L2CTLR_EL1", Sys(3, 1, 11, 0, 2)),
    ("L2ECTLR_EL1", Sys(3, 1, 11, 0, 3)),
    ("L2ACTLR_EL1", Sys(3, 1, 15, 0, 0)),
    ("CPUACTLR_EL1", Sys(3, 1, 15, 2, 0)),
    ("CPUECTLR_EL1", Sys(3, 1, 15, 2, 1)),
    ("CPUMERRSR_EL1", Sys(3, 1, 15, 2, 2)),
    ("L2MERRSR_EL1", Sys(3, 1, 15, 2, 3)),
    ("CBAR_EL1", Sys(3, 1, 15, 3, 0)),
];

/// Rule 5 and docs/ARCHITECTURE.md: IMPLEMENTATION DEFINED registers trap (HCR_EL2.TIDCP, host
/// and guests; `el2_tidcp_is_set_for_the_host_and_guests` checks the values the hyp loads) and
/// are answered with an undefined instruction. QEMU 7.2 does not implement the TIDCP trap at
/// all: the registers it models (Cortex-A57-style, above) are reachable in both worlds, a
/// platform gap the hyp cannot close on this QEMU (stated in docs/ARCHITECTURE.md). What holds
/// here: each one is undefined in both worlds or reads the same value in both, and no world's
/// write changes what the other reads (they are constants of the board: CBAR_EL1 the GIC's
/// physical base, L2CTLR_EL1 the number of CPUs), so no world learns the other's state through
/// them. Control: an encoding QEMU does not implement (S3_0_C15_C0_0, the one `worlds.rs` once
/// probed) is undefined at EL1 in both worlds without any trap.
fn ws_atk_impdef_registers_are_undef_or_the_same_constants_in_both_worlds() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    // Control: the probe sees an undefined instruction in both worlds.
    let none = Sys(3, 0, 15, 0, 0);
    ensure!(
        matches!(hr(none), Err(f) if f.ec() == EC_UNKNOWN),
        "control: host S3_0_C15_C0_0 {:?}",
        hr(none)
    );
    ensure!(
        matches!(v.gr(none)?, Err(x) if ec(x) == EC_UNKNOWN),
        "control: guest S3_0_C15_C0_0 not undef"
    );
    let mut differ = Vec::new();
    let mut reached = Vec::new();
    for (name, r) in IMPDEF {
        let host = hr(r).ok();
        let guest = v.gr(r)?.ok();
        if host != guest {
            differ.push(format!("{name}: host {host:x?}, guest {guest:x?}"));
            continue;
        }
        let Some(x) = host else {
            // Undefined in both worlds: what TIDCP promises.
            continue;
        };
        reached.push(format!("{name} = 0x{x:x}"));
        // Each world writes (if the register takes writes at all): the other reads the same.
        let _ = v.gw(r, !x)?;
        let host_after = hr(r).ok();
        let _ = hw(r, !x ^ 0x5a5a);
        let guest_after = v.gr(r)?.ok();
        let _ = hw(r, x);
        if host_after != Some(x) || guest_after != Some(x) {
            differ.push(format!(
                "{name}: 0x{x:x}, then the host reads {host_after:x?} after the guest's write and \
                 the guest {guest_after:x?} after the host's"
            ));
        }
    }
    if !reached.is_empty() {
        board::println!(
            "    ws: platform gap (QEMU 7.2 ignores HCR_EL2.TIDCP): readable in both worlds, \
             the same constants: {}",
            reached.join(", ")
        );
    }
    ensure!(
        differ.is_empty(),
        "IMPLEMENTATION DEFINED registers that QEMU lets through (it ignores HCR_EL2.TIDCP) hold \
         state one world can see change: {}",
        differ.join("; ")
    );
    v.destroy()
}

// ---- 3. An opened PMU is not switched ------------------------------------------------------------

/// (name, read/SET encoding, CLR encoding of a set/clear pair, host value, guest value, mask).
type PmuReg = (&'static str, Sys, Option<Sys>, u64, u64, u64);

/// `VmOpenPmu` (benchmarks; hyp builds with `introspection`) lets a guest use the PMU. Rule 5:
/// each world sees only its own values of whatever the architecture lets EL1/EL0 read. What the
/// hyp switches for such a VM (`pmu.rs`), each checked here: PMCR_EL0's writable bits
/// (emulated), PMSELR_EL0, PMUSERENR_EL0, PMCCFILTR_EL0, the event counters 2..N (type and
/// value) and their bits of PMCNTENSET/PMINTENSET/PMOVSSET. What stays shared by design: the
/// hyp's benchmark counters 0 and 1 (values, types, their bits of those registers), which the
/// guest reads to measure itself (`make bench`); checked too: both worlds read the same
/// counter 1, and it goes on counting.
fn ws_atk_open_pmu_registers_stay_per_world() -> TestResult {
    // (name, read/SET encoding, CLR encoding for set/clear pairs, host value, guest value,
    // compare mask: bits 0 and 1 of the set/clear pairs are the hyp's counters, shared).
    const NOT_HYP: u64 = !0b11;
    let regs: [PmuReg; 9] = [
        ("PMSELR_EL0", PMSELR_EL0, None, 2, 5, 0x1f),
        (
            "PMEVTYPER3_EL0",
            PMEVTYPER3_EL0,
            None,
            0x11,
            0x4000_0008,
            u64::MAX,
        ),
        ("PMUSERENR_EL0", PMUSERENR_EL0, None, 0x0, 0xd, 0xf),
        (
            "PMCCFILTR_EL0",
            PMCCFILTR_EL0,
            None,
            1 << 27,
            1 << 30,
            u64::MAX,
        ),
        (
            "PMEVCNTR2_EL0",
            Sys(3, 3, 14, 8, 2),
            None,
            0x1234,
            0x5678,
            u64::MAX,
        ),
        ("PMCR_EL0", PMCR_EL0, None, 0b1001, 0b100_0001, 0xf9),
        (
            "PMCNTENSET_EL0",
            PMCNTENSET_EL0,
            Some(PMCNTENCLR_EL0),
            1 << 5,
            1 << 4,
            NOT_HYP,
        ),
        (
            "PMINTENSET_EL1",
            Sys(3, 0, 9, 14, 1),
            Some(Sys(3, 0, 9, 14, 2)),
            1 << 3,
            1 << 5,
            NOT_HYP,
        ),
        (
            "PMOVSSET_EL0",
            Sys(3, 3, 9, 14, 3),
            Some(Sys(3, 3, 9, 12, 3)),
            1 << 4,
            1 << 2,
            NOT_HYP,
        ),
    ];
    let mut saved = Vec::new();
    for (name, r, clr, h, _, mask) in regs {
        saved.push(hr(r).map_err(|f| format!("host {name}: {f:?}"))?);
        if let Some(c) = clr {
            hw(c, mask).map_err(|f| format!("host {name}: {f:?}"))?;
        }
        hw(r, h).map_err(|f| format!("host {name}: {f:?}"))?;
        ensure_eq!(hr(r).ok().map(|x| x & mask), Some(h & mask));
    }
    let put_back = |saved: &[u64]| {
        for (i, (_, r, clr, _, _, mask)) in regs.iter().enumerate() {
            let old = saved.get(i).copied().unwrap_or(0);
            if let Some(c) = clr {
                let _ = hw(*c, *mask & !old);
            }
            let _ = hw(*r, old);
        }
    };
    let mut a = gvm(VmType::Pkvm)?;
    hvc::call(HostCall::VmOpenPmu, [a.vm.0, 0, 0, 0, 0, 0]).map_err(e)?;
    let mut leaks = Vec::new();
    for (name, r, _, h, g, mask) in regs {
        if a.gr(r)?.map(|x| x & mask) == Ok(h & mask) && h & mask != 0 {
            leaks.push(format!("the guest reads the host's {name} = 0x{h:x}"));
        }
        match a.gw(r, g)? {
            Ok(()) => {}
            Err(x) => {
                put_back(&saved);
                return Err(format!("guest {name} write: ESR 0x{x:x}"));
            }
        }
        let back = a.gr(r)?.map(|x| x & mask);
        if back != Ok(g & mask) {
            leaks.push(format!(
                "the guest's {name} reads back {back:x?} after 0x{g:x}"
            ));
        }
    }
    for (name, r, _, h, g, mask) in regs {
        let now = hr(r).map_err(|f| format!("{f:?}"))? & mask;
        if now != h & mask {
            leaks.push(format!(
                "the host's {name} is 0x{now:x} after the guest wrote 0x{g:x} (host wrote 0x{h:x})"
            ));
        }
    }
    let mut b = gvm(VmType::Pkvm)?;
    hvc::call(HostCall::VmOpenPmu, [b.vm.0, 0, 0, 0, 0, 0]).map_err(e)?;
    for (name, r, _, _, g, mask) in regs {
        if b.gr(r)?.map(|x| x & mask) == Ok(g & mask) {
            leaks.push(format!(
                "a second guest reads the first one's {name} = 0x{g:x}"
            ));
        }
    }
    // Shared by design: the hyp's counter 1 (every level), read by both worlds, counts on (it
    // counts only under `-icount`, as in `make bench`: here it may read 0 throughout).
    let counter1 = Sys(3, 3, 14, 8, 1);
    let type1 = Sys(3, 3, 14, 12, 1);
    let h0 = hr(counter1).map_err(|f| format!("{f:?}"))?;
    let g0 = a.gr(counter1)?.map_err(|x| format!("ESR 0x{x:x}"))?;
    let h1 = hr(counter1).map_err(|f| format!("{f:?}"))?;
    let shared = h0 <= g0 && g0 <= h1 && a.gr(type1)?.ok() == hr(type1).ok();
    put_back(&saved);
    a.destroy()?;
    b.destroy()?;
    ensure!(
        leaks.is_empty(),
        "the PMU of a VM that opened it is shared with the host and other VMs, not switched: {}",
        leaks.join("; ")
    );
    ensure!(
        shared,
        "the hyp's counter 1 is not the same in both worlds: host 0x{h0:x}, guest 0x{g0:x}, host \
         0x{h1:x}"
    );
    Ok(())
}

// ---- 4. The host's counters count nothing of a guest --------------------------------------------

fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTPCT_EL0 has no side effects.
    unsafe { core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// docs/ARCHITECTURE.md: while a guest without a PMU runs, the host's counters are paused, so
/// they count nothing of it. The host's cycle counter, set to count at EL2 too, must not advance
/// by the time a guest spins (positive control: it advances while the host itself spins).
fn ws_atk_host_cycle_counter_counts_nothing_of_a_guest() -> TestResult {
    let pmcr = hr(PMCR_EL0).map_err(|f| format!("{f:?}"))?;
    ensure!(pmcr & 1 == 1, "PMCR_EL0.E clear: 0x{pmcr:x}");
    let filter = hr(PMCCFILTR_EL0).map_err(|f| format!("{f:?}"))?;
    let enabled = hr(PMCNTENSET_EL0).map_err(|f| format!("{f:?}"))?;
    // Count at EL1, EL0 and EL2 (NSH).
    hw(PMCCFILTR_EL0, 1 << 27).map_err(|f| format!("{f:?}"))?;
    hw(PMCNTENSET_EL0, 1 << 31).map_err(|f| format!("{f:?}"))?;
    let slice = 5 * host_shim::timer::ticks_per_ms();
    let (c0, t0) = (hr(PMCCNTR_EL0).unwrap_or(0), counter());
    while counter() - t0 < slice {}
    let (c1, t1) = (hr(PMCCNTR_EL0).unwrap_or(0), counter());
    let (host_cycles, host_ticks) = (c1.wrapping_sub(c0), t1 - t0);
    let mut v = gvm(VmType::Plain)?;
    v.guest.timeslice_ticks = slice;
    let gmem = v.gmem;
    let mut failed = None;
    let (g0, s0) = (hr(PMCCNTR_EL0).unwrap_or(0), counter());
    let r = with_pages(|p| {
        v.guest
            .spin(
                0,
                GPA + 0x80,
                p,
                &mut host_shim::driver::refuse_hypercalls,
                &mut |rep: &StepReport| {
                    if rep.interrupts < 3 {
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
    let (g1, s1) = (hr(PMCCNTR_EL0).unwrap_or(0), counter());
    let _ = hw(PMCCFILTR_EL0, filter);
    if enabled & (1 << 31) == 0 {
        let _ = hw(PMCNTENCLR_EL0, 1 << 31);
    }
    if let Some(f) = failed {
        return Err(f);
    }
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure!(
        host_cycles > 1000,
        "control: the cycle counter counted {host_cycles} while the host spun"
    );
    let expected = (u128::from(host_cycles) * u128::from(s1 - s0) / u128::from(host_ticks)) as u64;
    let counted = g1.wrapping_sub(g0);
    v.destroy()?;
    ensure!(
        counted < expected / 4,
        "the host's cycle counter advanced {counted} while a guest spun {} ticks ({expected} if it \
         counted the guest)",
        s1 - s0
    );
    Ok(())
}

// ---- 5. The guest's own stage-1 ------------------------------------------------------------------

/// The level-1 table `OP_ATK_MMU` builds, for the host's control run of the same regime.
#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);
// SAFETY: only the test runner on CPU 0 uses it.
unsafe impl Sync for Table {}
static HOST_TABLE: Table = Table(UnsafeCell::new([0; 512]));

/// The host runs, at its own EL1, the regime the guest builds in `OP_ATK_MMU` (the same table,
/// MAIR, TCR and SCTLR.M): every GiB identity-mapped but the one holding `va`, which maps to
/// `ipa`. -> the byte at VA `va`.
fn host_mmu_load(va: u64, ipa: u64) -> u8 {
    let t = HOST_TABLE.0.get() as *mut u64;
    let slot = (va >> 30) & 511;
    for i in 0..512u64 {
        let out = if i == slot {
            ipa & !((1 << 30) - 1)
        } else {
            i << 30
        };
        // Device memory for the GiB of the devices (0), normal memory elsewhere.
        let attr = if i == 0 { 1 << 2 } else { 0 };
        // SAFETY: the host's own table.
        unsafe {
            core::ptr::write_volatile(t.add(i as usize), out | (1 << 10) | (3 << 8) | attr | 1)
        };
    }
    let mair: u64 = 0x04ff;
    let tcr: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);
    let v: u64;
    // SAFETY: the host's own translation regime, on for one load: code, stack and data stay
    // identity-mapped; its previous MAIR/TCR/TTBR0/SCTLR are put back.
    unsafe {
        core::arch::asm!(
            "mrs {om}, mair_el1",
            "mrs {ot}, tcr_el1",
            "mrs {ob}, ttbr0_el1",
            "mrs {os}, sctlr_el1",
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {table}",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "orr {x}, {os}, #1",
            "msr sctlr_el1, {x}",
            "isb",
            "ldrb {v:w}, [{va}]",
            "msr sctlr_el1, {os}",
            "isb",
            "msr mair_el1, {om}",
            "msr tcr_el1, {ot}",
            "msr ttbr0_el1, {ob}",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            om = out(reg) _,
            ot = out(reg) _,
            ob = out(reg) _,
            os = out(reg) _,
            x = out(reg) _,
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            table = in(reg) t,
            va = in(reg) va,
            v = out(reg) v,
        )
    };
    v as u8
}

/// A guest kernel turns on its own stage-1 (SCTLR_EL1.M) with a table that maps VA 0xC000_1000
/// to its own page at GPA + 0x1000; the load through that VA must read its page. The hyp runs
/// every guest with HCR_EL2.DC set (`switch::guest_hcr`), which makes the CPU behave as if
/// SCTLR_EL1.M were 0 for everything but reading it back: the guest's translation tables are
/// never used, its EL0 has no isolation from its kernel, and the load goes to IPA 0xC000_1000.
/// Positive control: the same regime translates on the host's EL1 (no DC there).
fn ws_atk_guest_stage1_mmu_translates_when_it_turns_it_on() -> TestResult {
    // Control: VA 0xC800_0000 (GiB 3) -> IPA 0x4800_0000: the host image's first byte.
    let direct = host_shim::exceptions::probe_read(board::layout::HOST_BASE)
        .map_err(|f| format!("{f:?}"))?;
    ensure_eq!(host_mmu_load(0xC800_0000, 0x4000_0000), direct);
    let mut v = gvm(VmType::Pkvm)?;
    let r = v.step(OP_WRITE, [GPA + 0x1000, 0x77, 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    let r = v.step(OP_ATK_MMU, [GPA + 0x8000, 0xC000_1000, GPA, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure!(
        r.results[1] & 1 == 1,
        "SCTLR_EL1.M reads 0x{:x}",
        r.results[1]
    );
    ensure!(
        r.mmio.is_none() && r.results[0] == 0x77,
        "the guest turned its MMU on (SCTLR_EL1 reads 0x{:x}) but its load of VA 0xc0001000 was \
         not translated: it read 0x{:x}, MMIO exit {:x?} (IPA = VA: HCR_EL2.DC turns the guest's \
         stage-1 off)",
        r.results[1],
        r.results[0],
        r.mmio
    );
    v.destroy()
}

// ---- 6-8. AArch32 at a guest's EL0 -----------------------------------------------------------------

/// One EL0 store to the UART (an MMIO exit) between two counters: `x2 += 1`, `x3 += 1`, `svc`.
/// -> (r2, r3, ESR, the MMIO exit).
fn el0_mmio_probe(
    v: &mut Gvm,
    words: &[u32],
    spsr: u64,
    dest: u64,
) -> Result<(u64, u64, u64, Option<MmioSeen>), String> {
    let ran = v.exec_el0(words, spsr, dest, [0x5a, UART])?;
    Ok((
        ran.x[2] & 0xffff_ffff,
        ran.x[3] & 0xffff_ffff,
        ran.esr,
        ran.mmio,
    ))
}

/// A guest's EL0 in AArch32 (ID_AA64PFR0_EL1.EL0 = 2: the CPU has it, and the hyp shows it) makes
/// an MMIO store with a 16-bit T32 instruction. After the host completes the exit, the guest must
/// resume at the next instruction. The hyp's `vmm::complete` adds 4 to the PC whatever the
/// instruction's size (ESR_EL2.IL = 0 for a 16-bit one): the next T32 instruction is skipped.
/// Controls: the same sequence in AArch64 and in A32 (32-bit instructions) at EL0.
fn ws_atk_aarch32_el0_thumb16_mmio_resumes_at_the_next_instruction() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    let pfr0 = v.gr(ID_AA64PFR0)?.map_err(|x| format!("ESR {x:#x}"))?;
    ensure_eq!(field(pfr0, 0), 2);
    let code = GPA + 0x4000;
    let store = Some((UART, true, 0x5a));
    // AArch64: str x0, [x1]; add x2, x2, #1; add x3, x3, #1; svc #0.
    let a64 = [0xf900_0020, 0x9100_0442, 0x9100_0463, SVC0];
    let r = el0_mmio_probe(&mut v, &a64, SPSR_EL0_A64, 0)?;
    ensure_eq!((r.0, r.1, ec(r.2), r.3), (1, 1, EC_SVC64, store));
    // A32: str r0, [r1]; add r2, r2, #1; add r3, r3, #1; svc #0.
    let a32 = [0xe581_0000, 0xe282_2001, 0xe283_3001, 0xef00_0000];
    let r = el0_mmio_probe(&mut v, &a32, SPSR_EL0_A32, code)?;
    ensure_eq!((r.0, r.1, ec(r.2), r.3), (1, 1, EC_SVC32, store));
    // T32: str r0, [r1] (16-bit); adds r2, #1; adds r3, #1; svc #0.
    let t32 = [0x3201_6008, 0xdf00_3301];
    let r = el0_mmio_probe(&mut v, &t32, SPSR_EL0_T32, code)?;
    ensure_eq!((ec(r.2), r.3), (EC_SVC32, store));
    let (elr, _) = v.el0_return()?;
    ensure!(
        (r.0, r.1) == (1, 1),
        "after a 16-bit T32 MMIO store at the guest's EL0 the instruction after it did not run \
         (r2 = {}, r3 = {}, want 1, 1; the SVC returned to 0x{elr:x}): vmm::complete advances the \
         PC by 4 whatever ESR_EL2.IL says",
        r.0,
        r.1
    );
    v.destroy()
}

/// The same in a T32 IT block: `cmp r0, r0; ite eq; str.w r0, [r1]; addne r2, #1; adds r3, #1;
/// svc`. The store (eq) runs, `addne` must not, `adds` after the block must. The hyp resumes the
/// guest after the store without advancing PSTATE.IT (as `kvm_adjust_itstate` does), so the
/// next instruction runs under the store's condition. Control: the same code with a store to
/// the guest's own memory (no exit) gives r2 = 0, r3 = 1.
fn ws_atk_aarch32_el0_mmio_in_an_it_block_keeps_the_it_state() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    let code = GPA + 0x4000;
    let it = [0xbf0c_4280, 0x0000_f8c1, 0x3301_3201, 0x0000_df00];
    v.load(&it)?;
    let ctl = v.run(SPSR_EL0_T32, code, [0x5a, GPA + 0x100])?;
    ensure_eq!(ec(ctl.esr), EC_SVC32);
    ensure_eq!(
        (ctl.x[2] & 0xffff_ffff, ctl.x[3] & 0xffff_ffff, ctl.mmio),
        (0, 1, None)
    );
    let r = v.run(SPSR_EL0_T32, code, [0x5a, UART])?;
    ensure_eq!(ec(r.esr), EC_SVC32);
    ensure_eq!(r.mmio, Some((UART, true, 0x5a)));
    let (r2, r3) = (r.x[2] & 0xffff_ffff, r.x[3] & 0xffff_ffff);
    ensure!(
        (r2, r3) == (0, 1),
        "after an MMIO store in a T32 IT block the guest resumed with a stale IT state: r2 = {r2}, \
         r3 = {r3} (want 0, 1: `addne` ran, `adds` did not)"
    );
    v.destroy()
}

/// Rule 5: the physical timer a guest touches is emulated, not refused. A guest kernel that lets
/// its EL0 use the physical timer (CNTKCTL_EL1.EL0PTEN) gets AArch64 EL0 reads emulated (EC 0x18
/// at EL2); the same register read from AArch32 EL0 (`mrc p15, 0, r0, c14, c2, 1`, EC 0x03) is
/// answered with an undefined instruction.
fn ws_atk_aarch32_el0_physical_timer_is_emulated_like_aarch64() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    // The guest's (emulated) physical timer: enabled, IMASK set, far compare value.
    ensure_eq!(v.gw(Sys(3, 3, 14, 2, 2), u64::MAX >> 1)?, Ok(()));
    ensure_eq!(v.gw(CNTP_CTL_EL0, 0b11)?, Ok(()));
    ensure_eq!(v.gr(CNTP_CTL_EL0)?, Ok(0b11));
    ensure_eq!(v.gw(CNTKCTL_EL1, (1 << 9) | 1)?, Ok(()));
    let r = v.exec_el0(&[mrs(CNTP_CTL_EL0, 0), SVC0], SPSR_EL0_A64, 0, [0, 0])?;
    ensure!(
        ec(r.esr) == EC_SVC64 && r.x[0] == 0b11,
        "control: AArch64 EL0 cntp_ctl_el0: ESR 0x{:x}, x0 0x{:x}",
        r.esr,
        r.x[0]
    );
    let r = v.exec_el0(
        &[0xee1e_0f32, 0xef00_0000],
        SPSR_EL0_A32,
        GPA + 0x4000,
        [0, 0],
    )?;
    let _ = v.gw(CNTKCTL_EL1, 0)?;
    ensure!(
        ec(r.esr) == EC_SVC32 && r.x[0] & 0xffff_ffff == 0b11,
        "AArch32 EL0 `mrc p15, 0, r0, c14, c2, 1` (CNTP_CTL) is refused with EC 0x{:02x} \
         (ESR 0x{:x}), while AArch64 EL0 gets it emulated: traps::guest_trap emulates EC 0x18 only",
        ec(r.esr),
        r.esr
    );
    v.destroy()
}

// ---- 9. A sweep of the registers both worlds can reach -------------------------------------------

/// (name, write word (from x0), read word (into x0), host value, guest value, compare mask).
type Swept = (&'static str, u32, u32, u64, u64, u64);

fn sys_swept(name: &'static str, r: Sys, h: u64, g: u64) -> Swept {
    (name, msr(r, 0), mrs(r, 0), h, g, u64::MAX)
}

fn swept() -> Vec<Swept> {
    let mut v = alloc::vec![
        sys_swept("FPSR", Sys(3, 3, 4, 4, 1), 0x0800_0001, 0x0000_0090),
        sys_swept("TPIDRRO_EL0", Sys(3, 3, 13, 0, 3), 0x4841_0001, 0x4755_0002),
        sys_swept("TPIDR_EL1", Sys(3, 0, 13, 0, 4), 0x4841_0003, 0x4755_0004),
        sys_swept("TPIDR2_EL0", Sys(3, 3, 13, 0, 5), 0x4841_0005, 0x4755_0006),
        sys_swept("CONTEXTIDR_EL1", Sys(3, 0, 13, 0, 1), 0x4841, 0x4755),
        sys_swept("SP_EL0", Sys(3, 0, 4, 1, 0), 0x4841_0010, 0x4755_0020),
        sys_swept("PAR_EL1", Sys(3, 0, 7, 4, 0), 0x1234_5000, 0x5678_9000),
        sys_swept("AFSR0_EL1", Sys(3, 0, 5, 1, 0), 0x41, 0x47),
        sys_swept("AFSR1_EL1", Sys(3, 0, 5, 1, 1), 0x41, 0x47),
        sys_swept("AMAIR_EL1", Sys(3, 0, 10, 3, 0), 0x41, 0x47),
        sys_swept("MAIR_EL1", Sys(3, 0, 10, 2, 0), 0x4400_ff04, 0x0044_04ff),
        sys_swept(
            "TCR_EL1",
            Sys(3, 0, 2, 0, 2),
            0x0000_0010_0080_3519,
            0x0000_0020_0080_3520
        ),
        sys_swept("TTBR0_EL1", Sys(3, 0, 2, 0, 0), 0x4841_0000, 0x4755_0000),
        sys_swept("TTBR1_EL1", Sys(3, 0, 2, 0, 1), 0x4841_1000, 0x4755_1000),
        sys_swept("CNTKCTL_EL1", CNTKCTL_EL1, 0x2, 0x3),
        sys_swept("CSSELR_EL1", Sys(3, 2, 0, 0, 0), 2, 1),
        sys_swept(
            "APIBKeyHi_EL1",
            Sys(3, 0, 2, 1, 3),
            0x4841_4b31,
            0x4755_4b31
        ),
        sys_swept(
            "APDAKeyLo_EL1",
            Sys(3, 0, 2, 2, 0),
            0x4841_4b32,
            0x4755_4b32
        ),
        sys_swept(
            "APDBKeyHi_EL1",
            Sys(3, 0, 2, 2, 3),
            0x4841_4b33,
            0x4755_4b33
        ),
        sys_swept(
            "APGAKeyHi_EL1",
            Sys(3, 0, 2, 3, 1),
            0x4841_4b34,
            0x4755_4b34
        ),
        sys_swept("DISR_EL1", Sys(3, 0, 12, 1, 1), 0x8000_0000, 0x0000_0001),
        sys_swept("MDSCR_EL1", MDSCR_EL1, MDSCR_TDCC, MDSCR_KDE),
        sys_swept("ICC_BPR1_EL1", Sys(3, 0, 12, 12, 3), 5, 6),
        sys_swept("ICC_IGRPEN1_EL1", ICC_IGRPEN1_EL1, 1, 0),
    ];
    // CNTV_CTL_EL0 without ISTATUS (the host's compare value may be in the past).
    v.push((
        "CNTV_CTL_EL0",
        msr(CNTV_CTL_EL0, 0),
        mrs(CNTV_CTL_EL0, 0),
        0b10,
        0b11,
        0b11,
    ));
    // V31's upper half: `mov v31.d[1], x0` / `mov x0, v31.d[1]`.
    v.push((
        "V31.D[1]",
        0x4e18_1c1f,
        0x4e18_3fe0,
        0x4831_4831,
        0x4731_4731,
        u64::MAX,
    ));
    // Last: an exception taken by an access above would overwrite these.
    v.extend([
        sys_swept("ELR_EL1", Sys(3, 0, 4, 0, 1), 0x4841_0040, 0x4755_0080),
        sys_swept(
            "SPSR_EL1",
            Sys(3, 0, 4, 0, 0),
            spsr::EL1H_MASKED,
            spsr::DAIF | spsr::M_EL1T,
        ),
        sys_swept("ESR_EL1", Sys(3, 0, 5, 2, 0), 0x5600_0001, 0x5600_0002),
        sys_swept("FAR_EL1", Sys(3, 0, 6, 0, 0), 0x4841_0041, 0x4755_0081),
    ]);
    v
}

/// Rule 5 for every register both worlds can read and write without a trap that the existing
/// checks do not cover: the host writes its value, a guest its own, each reads back its own, and
/// a new vCPU reads neither. A register a world cannot hold a value in (RAZ/WI) is skipped for
/// that world.
fn ws_atk_el1_el0_registers_sweep_per_world() -> TestResult {
    let regs = swept();
    // The guest's compare value first, so its enabled virtual timer does not fire.
    let mut a = gvm(VmType::Pkvm)?;
    ensure_eq!(a.gw(CNTV_CVAL_EL0, u64::MAX >> 1)?, Ok(()));
    let mut held_h = Vec::new();
    let mut saved = Vec::new();
    for &(name, w, r, h, _, mask) in &regs {
        let old = h_exec(&[r], [0; 4]).map(|x| x[0]).ok();
        saved.push(old);
        let ok = h_exec(&[w, ISB], [h, 0, 0, 0]).is_ok()
            && h_exec(&[r], [0; 4]).map(|x| x[0] & mask) == Ok(h & mask);
        if !ok {
            board::println!("    ws: host cannot hold {name}");
        }
        held_h.push(ok);
    }
    let mut held_g = Vec::new();
    for &(name, w, r, _, g, mask) in &regs {
        let wrote = a.exec(&[w, ISB], [g, 0])?;
        let back = a.exec(&[r], [0, 0])?;
        let ok = wrote.esr == 0 && back.esr == 0 && back.x[0] & mask == g & mask;
        if !ok {
            board::println!(
                "    ws: guest cannot hold {name} (ESR 0x{:x})",
                wrote.esr | back.esr
            );
        }
        held_g.push(ok);
    }
    let mut problems = Vec::new();
    for (i, &(name, _, r, h, g, mask)) in regs.iter().enumerate() {
        if held_h[i] {
            let now = h_exec(&[r], [0; 4]).map(|x| x[0] & mask);
            if now != Ok(h & mask) {
                problems.push(format!(
                    "host {name}: {now:x?} after the guest wrote 0x{g:x}"
                ));
            }
        }
    }
    let mut b = gvm(VmType::Pkvm)?;
    for (i, &(name, _, r, h, g, mask)) in regs.iter().enumerate() {
        if held_g[i] {
            let back = a.exec(&[r], [0, 0])?;
            if back.esr != 0 || back.x[0] & mask != g & mask {
                problems.push(format!(
                    "guest {name}: 0x{:x} after the host wrote 0x{h:x}",
                    back.x[0]
                ));
            }
        }
        let fresh = b.exec(&[r], [0, 0])?;
        let x = fresh.x[0] & mask;
        // (0 is every register's reset value here: a new vCPU reading 0 reads its own.)
        if fresh.esr == 0
            && x != 0
            && ((held_h[i] && x == h & mask) || (held_g[i] && x == g & mask))
        {
            problems.push(format!("a new vCPU reads {name} = 0x{x:x}"));
        }
    }
    // Put the host's values back.
    for (i, &(_, w, _, _, _, _)) in regs.iter().enumerate() {
        if let Some(old) = saved[i] {
            let _ = h_exec(&[w, ISB], [old, 0, 0, 0]);
        }
    }
    a.destroy()?;
    b.destroy()?;
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

// ---- 10-11. Debug ---------------------------------------------------------------------------------

#[repr(C, align(64))]
struct Watched(UnsafeCell<[u8; 64]>);
// SAFETY: only the test runner on CPU 0 touches it.
unsafe impl Sync for Watched {}
static HOST_WATCHED: Watched = Watched(UnsafeCell::new([0; 64]));

/// The host arms watchpoints: one on the guest's data page (the guest's VA = IPA), one over the
/// whole hyp region 0x4000_0000..0x4800_0000 that also matches at EL2 (DBGWCR.HMC, MASK = 27),
/// one on its own buffer, with MDSCR_EL1.MDE/KDE and the OS lock clear. Positive control: its own
/// store to its buffer takes a watchpoint exception. Then: the guest's stores to the watched page,
/// from its EL1 with PSTATE.D clear and from its EL0, take none (MDSCR_EL1 is 0 while a guest
/// runs); host calls whose work touches the hyp region go on (no debug exception is taken at EL2,
/// which would end the machine); and the guest does not see the host's watchpoint registers.
fn ws_atk_host_watchpoints_fire_neither_in_a_guest_nor_at_el2() -> TestResult {
    let dfr0 = hr(ID_AA64DFR0).map_err(|f| format!("{f:?}"))?;
    ensure!(field(dfr0, 20) >= 2, "fewer than 3 watchpoints: 0x{dfr0:x}");
    let mdscr = hr(MDSCR_EL1).map_err(|f| format!("{f:?}"))?;
    let mine = HOST_WATCHED.0.get() as u64;
    let arm = |n: u32, addr: u64, ctl: u64| -> Result<(), String> {
        hw(dbgwcr(n), 0).map_err(|f| format!("{f:?}"))?;
        hw(dbgwvr(n), addr).map_err(|f| format!("{f:?}"))?;
        hw(dbgwcr(n), ctl).map_err(|f| format!("{f:?}"))
    };
    hw(OSLAR_EL1, 0).map_err(|f| format!("{f:?}"))?;
    arm(0, GPA, WCR_EL1_EL0_ALL)?;
    arm(1, 0x4000_0000, WCR_EL1_EL0_ALL | WCR_HMC | (27 << 24))?;
    arm(2, mine, WCR_EL1_EL0_ALL)?;
    hw(MDSCR_EL1, MDSCR_MDE | MDSCR_KDE).map_err(|f| format!("{f:?}"))?;
    let result = (|| -> TestResult {
        // Control: the host's own store with PSTATE.D clear is a watchpoint exception at EL1.
        let ctl = h_exec(&[DAIFCLR_D, STRB_W0_X1, DAIFSET_D], [1, mine, 0, 0]);
        // SAFETY: masks debug exceptions again (the probe resumed after the store with D clear).
        unsafe { core::arch::asm!("msr daifset, #8", options(nomem, nostack)) };
        ensure!(
            matches!(ctl, Err(f) if f.ec() == EC_WATCH_CUR),
            "control: the host's watched store gave {ctl:x?}"
        );
        let mut v = gvm(VmType::Pkvm)?;
        let el1 = v.exec(&[DAIFCLR_D, STRB_W0_X1, DAIFSET_D], [1, GPA])?;
        ensure!(
            el1.esr == 0,
            "the guest's EL1 store took EC 0x{:02x}: the host's watchpoint fired in the guest",
            ec(el1.esr)
        );
        let el0 = v.exec_el0(&[STRB_W0_X1, SVC0], SPSR_EL0_A64, 0, [2, GPA])?;
        ensure!(
            ec(el0.esr) == EC_SVC64,
            "the guest's EL0 store took EC 0x{:02x} (0x34: the host's watchpoint)",
            ec(el0.esr)
        );
        for n in 0..3 {
            for r in [dbgwvr(n), dbgwcr(n)] {
                let g = v.gr(r)?;
                ensure!(g == Ok(0), "the guest reads the host's {r:?}: {g:x?}");
            }
        }
        ensure_eq!(v.gr(MDSCR_EL1)?, Ok(0));
        // Both stores landed (the EL0 one last).
        ensure_eq!(v.step(OP_READ, [GPA, 0, 0, 0])?.results[0], 2);
        v.destroy()?;
        // The hyp's own work in its region (VM creation, teardown, invariant walk).
        for _ in 0..3 {
            let w = vm::vm_create(VmType::Plain).map_err(e)?;
            vm::vm_destroy(w).map_err(e)?;
        }
        host_goes_on()?;
        ensure_eq!(hr(MDSCR_EL1).ok(), Some(MDSCR_MDE | MDSCR_KDE));
        ensure_eq!(hr(dbgwvr(0)).ok(), Some(GPA));
        Ok(())
    })();
    for n in 0..3 {
        let _ = hw(dbgwcr(n), 0);
        let _ = hw(dbgwvr(n), 0);
    }
    let _ = hw(MDSCR_EL1, mdscr);
    let _ = hw(OSLAR_EL1, 1);
    result
}

/// Rule 5: "what a guest is told it has, it has ... registers a guest kernel touches at boot
/// (debug ...) are switched or emulated, as KVM does". A guest is told (ID_AA64DFR0_EL1) it has
/// breakpoints and watchpoints; it programs a watchpoint on its own page with MDE/KDE and the OS
/// lock clear, as a kernel debugger would, and its store must take the watchpoint exception.
/// The hyp answers every debug register but MDSCR_EL1 and the OS lock RAZ/WI and keeps the real
/// MDSCR_EL1 at 0, so nothing of it works; and MDSCR_EL1.TDCC, which the guest kernel sets to
/// keep its EL0 off the debug communication channel, does not trap its EL0's MDCCSR_EL0 read.
fn ws_atk_guest_debug_registers_it_is_told_of_work() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    let dfr0 = v.gr(ID_AA64DFR0)?.map_err(|x| format!("ESR 0x{x:x}"))?;
    let wrps = field(dfr0, 20) + 1;
    let mut broken = Vec::new();
    ensure_eq!(v.gw(OSLAR_EL1, 0)?, Ok(()));
    ensure_eq!(v.gw(dbgwvr(0), GPA + 0x40)?, Ok(()));
    ensure_eq!(v.gw(dbgwcr(0), WCR_EL1_EL0_ALL)?, Ok(()));
    ensure_eq!(v.gw(MDSCR_EL1, MDSCR_MDE | MDSCR_KDE)?, Ok(()));
    let back = v.gr(dbgwvr(0))?;
    if back != Ok(GPA + 0x40) {
        broken.push(format!(
            "DBGWVR0_EL1 reads back {back:x?} after 0x{:x}",
            GPA + 0x40
        ));
    }
    let st = v.exec(&[DAIFCLR_D, STRB_W0_X1, DAIFSET_D], [1, GPA + 0x40])?;
    if ec(st.esr) != EC_WATCH_CUR {
        broken.push(format!(
            "its watched store took {} instead of a watchpoint exception",
            if st.esr == 0 {
                String::from("nothing")
            } else {
                format!("ESR 0x{:x}", st.esr)
            }
        ));
    }
    let st = v.exec_el0(&[STRB_W0_X1, SVC0], SPSR_EL0_A64, 0, [1, GPA + 0x40])?;
    if ec(st.esr) != EC_WATCH_LOW {
        broken.push(format!(
            "its EL0's watched store ended with EC 0x{:02x}",
            ec(st.esr)
        ));
    }
    ensure_eq!(v.gw(MDSCR_EL1, MDSCR_TDCC)?, Ok(()));
    let dcc = v.exec_el0(&[mrs(MDCCSR_EL0, 0), SVC0], SPSR_EL0_A64, 0, [0, 0])?;
    if ec(dcc.esr) != EC_SYS64 {
        broken.push(format!(
            "with MDSCR_EL1.TDCC set its EL0 read MDCCSR_EL0 without a trap (x0 = 0x{:x}, then \
             EC 0x{:02x})",
            dcc.x[0],
            ec(dcc.esr)
        ));
    }
    let _ = v.gw(MDSCR_EL1, 0)?;
    let _ = v.gw(dbgwcr(0), 0)?;
    v.destroy()?;
    ensure!(
        broken.is_empty(),
        "the guest is told it has {wrps} watchpoints (ID_AA64DFR0_EL1 0x{dfr0:x}), but {}",
        broken.join("; ")
    );
    Ok(())
}

// ---- 12. The guest's virtual timer ------------------------------------------------------------------

const VTIMER_PPI: u32 = 27;

/// A guest leaves its virtual timer firing (compare value 0, enabled, unmasked). Its own view:
/// ISTATUS set. The host's: its own CNTV_CTL_EL0, and PPI 27 neither pending nor active at its
/// redistributor (the guest's timer does not fire in the host). With PPI 27 enabled by the host,
/// the guest's firing timer does not end the run either (the hyp delivers it to the guest, see
/// `ws_atk_guest_vtimer_interrupt_reaches_the_guest`: the host is not woken by a guest's timer):
/// the run ends with the guest's own next exit (its read of the command device), and leaves
/// nothing pending or active once the host runs.
fn ws_atk_guest_vtimer_left_firing_never_pends_in_the_host() -> TestResult {
    ensure!(gic::init(), "no redistributor");
    let (hctl, hcval) = (
        hr(CNTV_CTL_EL0).unwrap_or(0),
        hr(CNTV_CVAL_EL0).unwrap_or(0),
    );
    hw(CNTV_CTL_EL0, 0).map_err(|f| format!("{f:?}"))?;
    let bit = 1u32 << VTIMER_PPI;
    let rd0 = gic::redistributor(0);
    rd0.icpendr0.set(bit);
    let mut v = gvm(VmType::Pkvm)?;
    let r = v.exec(
        &[
            msr(CNTV_CVAL_EL0, 31),
            msr(CNTV_CTL_EL0, 0),
            ISB,
            mrs(CNTV_CTL_EL0, 0),
        ],
        [1, 0],
    )?;
    ensure_eq!((r.esr, r.x[0]), (0, 0b101));
    let result = (|| -> TestResult {
        ensure_eq!(hr(CNTV_CTL_EL0).ok(), Some(0));
        let pend = rd0.ispendr0.get();
        ensure!(
            pend & bit == 0,
            "PPI 27 pending in the host after the guest's timer fired: ISPENDR0 0x{pend:x}"
        );
        // The host enables PPI 27 (group 1): the next run ends at once.
        rd0.igroupr0.set(rd0.igroupr0.get() | bit);
        rd0.isenabler0.set(bit);
        let saved = host_shim::timer::arm(50 * host_shim::timer::ticks_per_ms());
        let x = run_raw(v.guest.vcpu, 0);
        host_shim::timer::disarm(saved);
        rd0.icenabler0.set(bit);
        ensure!(
            x[0] == ExitReason::Mmio as u64 && x[1] == CMD_DEVICE_IPA + REG_CMD,
            "the guest's firing timer ended its run: exit {x:x?} (want its own read of the \
             command device)"
        );
        // Answer that read with no command: the guest stores its bad-command status, which
        // leaves it where the step driver expects it.
        let y = run_raw(v.guest.vcpu, 0);
        ensure_eq!(y[0], ExitReason::Mmio as u64);
        let pend = rd0.ispendr0.get();
        let active = rd0.isactiver0.get();
        ensure!(
            (pend | active) & bit == 0,
            "PPI 27 pending or active in the host after the run: ISPENDR0 0x{pend:x}, \
             ISACTIVER0 0x{active:x}"
        );
        ensure!(
            rd0.isenabler0.get() & bit == 0,
            "PPI 27 left enabled for the host"
        );
        Ok(())
    })();
    let _ = hw(CNTV_CVAL_EL0, hcval);
    let _ = hw(CNTV_CTL_EL0, hctl);
    result?;
    // The guest turns its timer off and goes on.
    ensure_eq!(v.gw(CNTV_CTL_EL0, 0)?, Ok(()));
    ensure_eq!(v.step(OP_READ, [GPA, 0, 0, 0])?.status, Some(STATUS_OK));
    v.destroy()
}

// ---- 13. SGIs from a guest ------------------------------------------------------------------------

/// A guest writes the SGI generation registers (ICC_SGI1R_EL1, ICC_ASGI1R_EL1, ICC_SGI0R_EL1) for
/// SGI 9 to CPU 0 (the host's CPU) and to every other CPU. With HCR_EL2.IMO/FMO they trap to EL2:
/// no physical SGI may pend on any CPU. Positive control: the host's own ICC_SGI1R_EL1 write
/// makes SGI 9 pending at its redistributor.
fn ws_atk_guest_sgis_never_reach_a_cpu() -> TestResult {
    ensure!(gic::init(), "no redistributor");
    let bit = 1u32 << 9;
    // CPU 0's and CPU 1's redistributors (QEMU `virt`: the first two).
    let frames = [gic::redistributor(0), gic::redistributor(1)];
    let groups: Vec<u32> = frames.iter().map(|f| f.igroupr0.get()).collect();
    // SGI 9 in group `g` (0 or 1, non-secure: GICD_CTLR.DS) on both CPUs, not pending.
    let config = |g: u32| {
        for (f, &old) in frames.iter().zip(&groups) {
            f.igroupr0.set((old & !bit) | (g << 9));
            f.icpendr0.set(bit);
        }
    };
    let pending = || -> [u32; 2] { frames.map(|f| f.ispendr0.get() & bit) };
    let to_cpu0 = (9u64 << 24) | 1;
    let to_others = (9u64 << 24) | (1 << 40);
    let cases = [
        ("ICC_SGI1R_EL1", ICC_SGI1R_EL1, 1u32),
        ("ICC_ASGI1R_EL1", ICC_ASGI1R_EL1, 1),
        ("ICC_SGI0R_EL1", ICC_SGI0R_EL1, 0),
    ];
    let result = (|| -> TestResult {
        // Control: the host's own SGI 9 to itself pends, in either group.
        for (name, r, g) in [cases[0], cases[2]] {
            config(g);
            hw(r, to_cpu0).map_err(|f| format!("{f:?}"))?;
            let p = pending();
            ensure!(
                p[0] != 0,
                "control: the host's own {name} SGI 9 is not pending ({p:x?})"
            );
        }
        let mut v = gvm(VmType::Pkvm)?;
        let mut reached = Vec::new();
        for (name, r, g) in cases {
            for target in [to_cpu0, to_others] {
                config(g);
                let w = v.gw(r, target)?;
                let p = pending();
                if p != [0, 0] {
                    reached.push(format!("{name} 0x{target:x} ({w:x?}): pending {p:x?}"));
                }
            }
        }
        ensure_eq!(v.step(OP_READ, [GPA, 0, 0, 0])?.status, Some(STATUS_OK));
        v.destroy()?;
        ensure!(
            reached.is_empty(),
            "a guest's SGI reached a physical CPU: {}",
            reached.join("; ")
        );
        Ok(())
    })();
    for (f, &old) in frames.iter().zip(&groups) {
        f.igroupr0.set(old);
        f.icpendr0.set(bit);
    }
    result
}

// ---- 14. The host keeps control --------------------------------------------------------------------

/// Starts `OP_ATK_RUN` of the loaded (endless) code and runs the vCPU `n` times under the host's
/// 1 ms timer. -> interrupt exits seen (each run must end with one).
fn run_endless(v: &mut Gvm, n: usize) -> Result<usize, String> {
    let args = [OP_ATK_RUN, 0, 0, 0, 0];
    let mut c0 = 0;
    let mut answered = 0;
    let mut interrupts = 0;
    for _ in 0..(n + 16) {
        let saved = host_shim::timer::arm(host_shim::timer::ticks_per_ms());
        let r = run_raw(v.guest.vcpu, c0);
        host_shim::timer::disarm(saved);
        c0 = 0;
        if r[0] == ExitReason::Mmio as u64 && r[1] >= CMD_DEVICE_IPA && answered < 5 {
            c0 = args[answered];
            answered += 1;
            continue;
        }
        ensure!(
            r[0] == ExitReason::Interrupt as u64,
            "exit {:x?} after {interrupts} interrupt exits",
            r
        );
        interrupts += 1;
        if interrupts == n {
            break;
        }
    }
    Ok(interrupts)
}

/// Rule 6: whatever a guest does, the host's timer brings `VcpuRun` back. The guest first masks
/// everything it can (PSTATE.DAIF, its ICC_PMR_EL1 = 0 and ICC_IGRPEN1_EL1 = 0), then loops on
/// WFI, on WFE, on the HYP_MEMINFO call the hyp answers in its vector without taking its lock,
/// on an ID register read the hyp emulates, or on nothing at all.
fn ws_atk_guest_storms_with_everything_masked_give_the_cpu_back() -> TestResult {
    let mask = [
        msr(ICC_PMR_EL1, 31),
        msr(ICC_IGRPEN1_EL1, 31),
        DAIFSET_ALL,
        ISB,
    ];
    let meminfo = [
        0xd280_0040, // movz x0, #0x0002
        0xf2b8_c000, // movk x0, #0xc600, lsl #16
        0xaa1f_03e1, // mov x1, xzr
        0xaa1f_03e2,
        0xaa1f_03e3,
        HVC0,
    ];
    let loops: [(&str, Vec<u32>); 5] = [
        ("wfi", alloc::vec![WFI]),
        ("wfe", alloc::vec![WFE]),
        ("HYP_MEMINFO hvc", meminfo.to_vec()),
        (
            "emulated ID register read",
            alloc::vec![mrs(ID_AA64PFR0, 0)],
        ),
        ("branch to self", alloc::vec![]),
    ];
    for (name, body) in loops {
        let mut v = gvm(VmType::Pkvm)?;
        let mut code: Vec<u32> = mask.to_vec();
        let n = body.len() as i32;
        code.extend(body);
        code.push(branch(-n));
        v.load(&code)?;
        let got = run_endless(&mut v, 5).map_err(|m| format!("{name}: {m}"))?;
        ensure!(got == 5, "{name}: {got} interrupt exits");
        // The vCPU still loops; its VM goes away whole.
        v.destroy()?;
    }
    host_goes_on()
}

// ---- 15. The host's accesses to the hyp's memory, every kind ------------------------------------

macro_rules! probed {
    ($($insn:expr),+ ; $($ops:tt)*) => {{
        host_shim::exceptions::arm();
        core::arch::asm!(
            "adr {probe_t}, 2f",
            "str {probe_t}, [{probe_slot}]",
            $($insn,)+
            "2:",
            probe_slot = in(reg) host_shim::exceptions::resume_slot(),
            probe_t = out(reg) _,
            $($ops)*
        );
        host_shim::exceptions::disarm().map_or(Ok(()), Err)
    }};
}

/// Every kind of data access at `addr`: (name, may be a no-op, what happened).
fn access_zoo(addr: u64, write: bool) -> Vec<(&'static str, bool, Result<(), HostFault>)> {
    // FP/SIMD on at EL1 for the SIMD accesses (h_exec turns it on).
    let _ = h_exec(&[], [0; 4]);
    let mut v = Vec::new();
    macro_rules! one {
        ($name:literal, $nop:expr, $($insn:literal),+) => {{
            // SAFETY: one probed access at `addr`; a fault is caught and the access skipped. The
            // writes only go to the test's own buffer or to where the hyp must refuse them.
            let r: Result<(), HostFault> = unsafe {
                probed!(
                    ".arch_extension lse", ".arch_extension rcpc", ".arch_extension fp",
                    ".arch_extension simd", $($insn),+;
                    in("x1") addr, out("x0") _, out("x2") _, out("w3") _, out("v0") _,
                    options(nostack)
                )
            };
            v.push(($name, $nop, r));
        }};
    }
    one!("ldr", false, "ldr x0, [x1]");
    one!("ldp", false, "ldp x0, x2, [x1]");
    one!("ldnp", false, "ldnp x0, x2, [x1]");
    one!("ldtr", false, "ldtr x0, [x1]");
    one!("ldxr", false, "ldxr x0, [x1]");
    one!("ldar", false, "ldar x0, [x1]");
    one!("ldapr", false, "ldapr x0, [x1]");
    one!("ld1", false, "ld1 {{v0.16b}}, [x1]");
    one!("prfm", true, "prfm pldl1keep, [x1]");
    one!("dc civac", true, "dc civac, x1");
    one!("dc cvac", true, "dc cvac, x1");
    if write {
        one!("ldadd", false, "mov x0, xzr", "ldadd x0, x2, [x1]");
        one!("cas", false, "mov x0, #1", "mov x2, #1", "cas x0, x2, [x1]");
        one!("swp", false, "mov x0, xzr", "swp x0, x2, [x1]");
        one!("str", false, "mov x0, xzr", "str x0, [x1]");
        one!("stp", false, "mov x0, xzr", "stp x0, x0, [x1]");
        one!("sttr", false, "mov x0, xzr", "sttr x0, [x1]");
        one!("stlr", false, "mov x0, xzr", "stlr x0, [x1]");
        one!(
            "stxr",
            false,
            "mov x0, xzr",
            "ldxr x2, [x1]",
            "stxr w3, x0, [x1]"
        );
        one!("st1", false, "ld1 {{v0.16b}}, [x1]", "st1 {{v0.16b}}, [x1]");
        one!("dc ivac", true, "dc ivac, x1");
        one!("dc zva", false, "dc zva, x1");
    }
    v
}

#[repr(C, align(256))]
struct Scratch(UnsafeCell<[u8; 256]>);
// SAFETY: only the test runner on CPU 0 touches it.
unsafe impl Sync for Scratch {}
static SCRATCH: Scratch = Scratch(UnsafeCell::new([0; 256]));

/// Rule 1: nobody but the hyp reaches the hyp's memory, by any instruction: loads, pairs,
/// non-temporal and unprivileged accesses, exclusives, acquire/release, LSE atomics, SIMD
/// loads/stores, DC ZVA (each a data abort at the host's EL1), prefetch and cache maintenance
/// (no-ops or aborts). Writes only at the hyp's first bytes (its boot code, never run again),
/// reads across its region. Positive control: every one of them works on the host's own memory.
fn ws_atk_host_access_zoo_on_hyp_memory_all_abort() -> TestResult {
    let mine = SCRATCH.0.get() as u64;
    for (name, _, r) in access_zoo(mine, true) {
        ensure!(
            r.is_ok(),
            "control: {name} on the host's own memory: {r:x?}"
        );
    }
    let mut got_through = Vec::new();
    let hyp = board::layout::HYP_END as u64;
    for (addr, write) in [
        (0x4020_0000u64, true),
        (0x4020_0000 + 0x1_0000, false),
        (0x4060_0000, false),
        (0x4100_0000, false),
        (hyp - PAGE_SIZE, false),
    ] {
        for (name, nop, r) in access_zoo(addr, write) {
            match r {
                Err(f) if f.ec() == EC_DABT_CUR => {}
                Ok(()) if nop => {}
                other => got_through.push(format!("{name} at 0x{addr:x}: {other:x?}")),
            }
        }
    }
    host_goes_on()?;
    ensure!(
        got_through.is_empty(),
        "host accesses to the hyp's memory not refused: {}",
        got_through.join("; ")
    );
    Ok(())
}

// ---- 16. The guest's own timer interrupt -----------------------------------------------------------

/// Rule 6: "guests get the virtual one" (the virtual timer). A guest arms its virtual timer 1 ms
/// ahead, unmasks IRQs (PSTATE.I, its ICC_PMR_EL1 and ICC_IGRPEN1_EL1), and waits with WFI, up
/// to 50 times (each WFI ends at the latest when the host's 1 ms timer brings the run back and
/// the host re-runs it). Its timer's interrupt must reach it (the IRQ vector, offset 0x280). The
/// hyp never puts anything into the guest's list registers: the timer's PPI 27 goes to EL2
/// (HCR_EL2.IMO) and from there nowhere (disabled at the host's redistributor) or to the host as
/// an interrupt exit on every run (enabled, as a Linux host enables it: the guest then never runs
/// again while its timer condition holds, see ws_atk_guest_vtimer_left_firing_...).
fn ws_atk_guest_vtimer_interrupt_reaches_the_guest() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    v.guest.timeslice_ticks = host_shim::timer::ticks_per_ms();
    let cntvct = Sys(3, 3, 14, 0, 2);
    let code = [
        0xd280_1fe3, // mov x3, #0xff
        msr(ICC_PMR_EL1, 3),
        0xd280_0023, // mov x3, #1
        msr(ICC_IGRPEN1_EL1, 3),
        mrs(cntvct, 2),
        0x8b00_0042, // add x2, x2, x0
        msr(CNTV_CVAL_EL0, 2),
        0xd280_0022, // mov x2, #1
        msr(CNTV_CTL_EL0, 2),
        ISB,
        WFI,
        0xf100_0421, // subs x1, x1, #1
        0x54ff_ffc1, // b.ne (the wfi)
        SVC0,
    ];
    // EL1h with IRQs unmasked (D, A, F masked).
    let el1h_irqs = spsr::D | spsr::A | spsr::F | spsr::M_EL1H;
    let ran = v.exec_el0(&code, el1h_irqs, 0, [host_shim::timer::ticks_per_ms(), 50])?;
    let vector = v.el0_vector()?;
    let (elr, _) = v.el0_return()?;
    let ctl = v.gr(CNTV_CTL_EL0)?;
    let _ = v.gw(CNTV_CTL_EL0, 0)?;
    v.destroy()?;
    ensure!(
        vector == 5,
        "the guest's virtual timer fired (CNTV_CTL_EL0 {ctl:x?}) but its interrupt never reached \
         it: {} WFIs later it ended with vector {vector} (ESR 0x{:x}, ELR 0x{elr:x}; want the IRQ \
         vector, 5): the hyp injects no virtual interrupt",
        50 - ran.x[1],
        ran.esr
    );
    Ok(())
}

// ---- 17. Odd exception returns inside a guest -------------------------------------------------------

/// A guest's ERET to EL2, to EL3, to AArch32 EL1 (HCR_EL2.RW makes its EL1 AArch64) or with
/// SPSR.IL set is an illegal exception return: the guest stays at its EL1 and takes an Illegal
/// Execution State exception (EC 0x0E) there, nothing reaches the hyp or the host. Control: an
/// ERET to EL1t runs the code.
fn ws_atk_guest_odd_erets_stay_in_its_el1() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    let before = vm::stats(v.vm).map_err(e)?;
    let code = [0xd503_201f, SVC0]; // nop; svc #0
    let r = v.exec_el0(&code, spsr::DAIF | spsr::M_EL1T, 0, [0, 0])?;
    ensure_eq!(ec(r.esr), EC_SVC64);
    let a32 = spsr::A | spsr::I | spsr::F | spsr::M_AARCH32;
    for (what, spsr_eret) in [
        ("EL2h", spsr::DAIF | spsr::M_EL2H),
        ("EL3h", spsr::DAIF | spsr::M_EL3H),
        ("AArch32 SVC", a32 | spsr::M32_SVC),
        ("AArch32 Hyp", a32 | spsr::M32_HYP),
        ("EL1h with IL", spsr::EL1H_MASKED | spsr::IL),
    ] {
        let r = v.exec_el0(&code, spsr_eret, 0, [0, 0])?;
        let (elr, spsr_after) = v.el0_return()?;
        ensure!(
            ec(r.esr) == EC_ILLEGAL_STATE
                && spsr_after & spsr::M_MASK != 0
                && spsr_after & spsr::M_AARCH32 == 0,
            "ERET to {what}: ESR 0x{:x}, ELR 0x{elr:x}, SPSR 0x{spsr_after:x}",
            r.esr
        );
    }
    let after = vm::stats(v.vm).map_err(e)?;
    // Only the command device's exits.
    ensure_eq!(
        after.exits - before.exits,
        after.mmio_exits - before.mmio_exits
    );
    ensure_eq!(v.step(OP_READ, [GPA, 0, 0, 0])?.status, Some(STATUS_OK));
    v.destroy()
}

// ---- 18. The host's stage-1 walks and AT instructions through the hyp's memory ----------------------

/// The host points its TTBR1_EL1 at the hyp's memory and turns its MMU on (TTBR0 identity): an
/// AT S1E1R and a load of a TTBR1 address make the CPU read a "descriptor" from the hyp's image.
/// That walk must fault at stage-2 and end as an abort at the host's EL1, never as a translation
/// whose PAR_EL1 or data would show what the hyp's memory holds. Control: the same with TTBR1
/// at the host's own identity table translates.
fn ws_atk_host_stage1_walks_through_hyp_memory_abort() -> TestResult {
    let t = HOST_TABLE.0.get() as *mut u64;
    for i in 0..512u64 {
        let attr = if i == 0 { 1 << 2 } else { 0 };
        // SAFETY: the host's own table.
        unsafe {
            core::ptr::write_volatile(
                t.add(i as usize),
                (i << 30) | (1 << 10) | (3 << 8) | attr | 1,
            )
        };
    }
    // T0SZ = T1SZ = 25, 4 KiB granules, inner-shareable write-back walks, IPS 40 bits.
    let tcr: u64 = 25
        | (1 << 8)
        | (1 << 10)
        | (3 << 12)
        | (25 << 16)
        | (1 << 24)
        | (1 << 26)
        | (3 << 28)
        | (2 << 30)
        | (2 << 32);
    // TTBR1 VA 0xffff_ff81_0000_0000 + x: level-1 entry 4 of the table at TTBR1.
    let va = 0xffff_ff81_0000_0000u64 + 0x1000;
    let walk = |ttbr1: u64| -> (Result<u64, HostFault>, Result<u64, HostFault>) {
        let (mut par, mut data) = (0u64, 0u64);
        let (at, ld): (Result<u64, HostFault>, Result<u64, HostFault>);
        // SAFETY: the host's own translation regime, on for two probed accesses: code, stack and
        // data are identity-mapped by TTBR0; every register is put back before the MMU is off.
        unsafe {
            core::arch::asm!(
                "mrs {om}, mair_el1", "mrs {ot}, tcr_el1", "mrs {o0}, ttbr0_el1",
                "mrs {o1}, ttbr1_el1", "mrs {os}, sctlr_el1",
                "msr mair_el1, {mair}", "msr tcr_el1, {tcr}", "msr ttbr0_el1, {t0}",
                "msr ttbr1_el1, {t1}", "isb", "tlbi vmalle1", "dsb ish", "isb",
                "orr {x}, {os}, #1", "msr sctlr_el1, {x}", "isb",
                "str {om}, [{save}, #0]", "str {ot}, [{save}, #8]", "str {o0}, [{save}, #16]",
                "str {o1}, [{save}, #24]", "str {os}, [{save}, #32]",
                om = out(reg) _, ot = out(reg) _, o0 = out(reg) _, o1 = out(reg) _,
                os = out(reg) _, x = out(reg) _,
                mair = in(reg) 0x04ffu64, tcr = in(reg) tcr, t0 = in(reg) t, t1 = in(reg) ttbr1,
                save = in(reg) SAVED_REGIME.0.get(),
            );
            at = probed!("at s1e1r, {va}", "isb", "mrs {p}, par_el1"; va = in(reg) va, p = inout(reg) par)
                .map(|()| par);
            ld = probed!("ldr {d}, [{va}]"; va = in(reg) va, d = inout(reg) data).map(|()| data);
            let s = SAVED_REGIME.0.get() as *const u64;
            core::arch::asm!(
                "msr sctlr_el1, {os}", "isb",
                "msr mair_el1, {om}", "msr tcr_el1, {ot}", "msr ttbr0_el1, {o0}",
                "msr ttbr1_el1, {o1}", "isb", "tlbi vmalle1", "dsb ish", "isb",
                om = in(reg) *s, ot = in(reg) *s.add(1), o0 = in(reg) *s.add(2),
                o1 = in(reg) *s.add(3), os = in(reg) *s.add(4),
            );
        }
        (at, ld)
    };
    // Control: TTBR1 = the identity table: VA -> IPA 0x1_0000_1000 (no memory there: the load
    // aborts, the AT translates).
    let (at, _) = walk(t as u64);
    ensure!(
        matches!(at, Ok(par) if par & 1 == 0 && par & 0xf_ffff_f000 == 0x1_0000_1000),
        "control: AT through the host's own table: {at:x?}"
    );
    let mut leaked = Vec::new();
    for ttbr1 in [
        0x4020_0000u64,
        0x4020_0000 + 0x10_0000,
        0x4100_0000,
        0x47ff_f000,
    ] {
        let (at, ld) = walk(ttbr1);
        if !matches!(at, Err(f) if f.ec() == EC_DABT_CUR) {
            leaked.push(format!("AT S1E1R via TTBR1 0x{ttbr1:x}: {at:x?}"));
        }
        if !matches!(ld, Err(f) if f.ec() == EC_DABT_CUR) {
            leaked.push(format!("load via TTBR1 0x{ttbr1:x}: {ld:x?}"));
        }
    }
    host_goes_on()?;
    ensure!(
        leaked.is_empty(),
        "stage-1 walks through the hyp's memory: {}",
        leaked.join("; ")
    );
    Ok(())
}

struct Regime(UnsafeCell<[u64; 5]>);
// SAFETY: only the test runner on CPU 0 uses it.
unsafe impl Sync for Regime {}
static SAVED_REGIME: Regime = Regime(UnsafeCell::new([0; 5]));

// ---- 19. A vCPU that moves between physical CPUs -----------------------------------------------------

#[repr(C, align(16))]
struct Cpu1Stack(UnsafeCell<[u8; 32 << 10]>);
// SAFETY: only CPU 1 uses it, one job at a time.
unsafe impl Sync for Cpu1Stack {}
static WS_CPU1_STACK: Cpu1Stack = Cpu1Stack(UnsafeCell::new([0; 32 << 10]));
/// CPU 1's job: one step of `WS_JOB[1]` with `WS_JOB[2..6]` on vCPU `WS_JOB[0]`; it leaves
/// RESULT0/1 in `WS_JOB[6..8]`, the status in `WS_JOB[8]`, an error in `WS_JOB[9]` and sets
/// `WS_JOB[10]` when done.
/// `WS_JOB[11]` is set once the guest read its last argument (the step's work has begun).
static WS_JOB: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];

core::arch::global_asm!(
    r#"
    .section .text.ws_cpu1, "ax"
    .balign 4
    .global ws_cpu1_entry
ws_cpu1_entry:
    mov     sp, x0
    bl      ws_cpu1_main
1:  wfe
    b       1b
"#
);

#[no_mangle]
extern "C" fn ws_cpu1_main() -> ! {
    host_shim::exceptions::install();
    let job: [u64; 6] = core::array::from_fn(|i| WS_JOB[i].load(Ordering::SeqCst));
    let vcpu = host_shim::vm::VcpuId(job[0]);
    let mut c0 = 0;
    for _ in 0..64 {
        let r = run_raw(vcpu, c0);
        c0 = 0;
        if r[0] == ExitReason::Mmio as u64 && r[1] >= CMD_DEVICE_IPA {
            match (r[1] - CMD_DEVICE_IPA, r[3] != 0) {
                (REG_CMD, false) => c0 = job[1],
                (REG_ARG0, false) => c0 = job[2],
                (REG_ARG1, false) => c0 = job[3],
                (REG_ARG2, false) => c0 = job[4],
                (REG_ARG3, false) => {
                    c0 = job[5];
                    WS_JOB[11].store(1, Ordering::SeqCst);
                }
                (REG_RESULT0, true) => WS_JOB[6].store(r[4], Ordering::SeqCst),
                (REG_RESULT1, true) => WS_JOB[7].store(r[4], Ordering::SeqCst),
                (REG_STATUS, true) => {
                    WS_JOB[8].store(r[4], Ordering::SeqCst);
                    break;
                }
                _ => {}
            }
        } else if r[0] != ExitReason::Interrupt as u64 {
            WS_JOB[9].store(0x1000 | r[0], Ordering::SeqCst);
            break;
        }
    }
    WS_JOB[10].store(1, Ordering::SeqCst);
    crate::attacks::smc(crate::attacks::PSCI_CPU_OFF, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// Runs one step of `op` on `vcpu` on CPU 1 and waits for CPU 1 to be off again. -> RESULT0/1.
fn on_cpu1(vcpu: host_shim::vm::VcpuId, op: u64, args: [u64; 4]) -> Result<[u64; 2], String> {
    cpu1_go(vcpu, op, args)?;
    cpu1_wait()
}

/// Starts one step of `op` on `vcpu` on CPU 1.
fn cpu1_go(vcpu: host_shim::vm::VcpuId, op: u64, args: [u64; 4]) -> TestResult {
    use crate::attacks::{smc, PSCI_CPU_ON_64};
    let job = [
        vcpu.0,
        op,
        args[0],
        args[1],
        args[2],
        args[3],
        0,
        0,
        u64::MAX,
        0,
        0,
        0,
    ];
    for (slot, v) in WS_JOB.iter().zip(job) {
        slot.store(v, Ordering::SeqCst);
    }
    extern "C" {
        fn ws_cpu1_entry();
    }
    let top = WS_CPU1_STACK.0.get() as u64 + (32 << 10);
    ensure_eq!(
        smc(PSCI_CPU_ON_64, 1, ws_cpu1_entry as *const () as u64, top),
        0
    );
    Ok(())
}

/// Waits for CPU 1's step to end and CPU 1 to be off. -> RESULT0/1.
fn cpu1_wait() -> Result<[u64; 2], String> {
    use crate::attacks::{smc, wait_for, PSCI_AFFINITY_INFO_64};
    ensure!(
        wait_for(|| WS_JOB[10].load(Ordering::SeqCst) == 1),
        "CPU 1's job never ended"
    );
    ensure!(
        wait_for(|| smc(PSCI_AFFINITY_INFO_64, 1, 0, 0) == 1),
        "CPU 1 never went off"
    );
    ensure_eq!(WS_JOB[9].load(Ordering::SeqCst), 0);
    ensure_eq!(WS_JOB[8].load(Ordering::SeqCst), STATUS_OK);
    Ok([
        WS_JOB[6].load(Ordering::SeqCst),
        WS_JOB[7].load(Ordering::SeqCst),
    ])
}

/// A vCPU that runs on CPU 0, then on CPU 1 (the host decides where): its registers go with it
/// (TPIDR_EL0, its GIC priority mask, its virtual timer's compare value), and so must its
/// identity (rule 5: each world sees only its own values): MPIDR_EL1, which a guest reads from
/// VMPIDR_EL2, must not change with the physical CPU. The hyp never sets VMPIDR_EL2, so a guest
/// reads the MPIDR of whatever physical CPU it runs on: it learns where the host runs it, and its
/// CPU identity changes under it.
fn ws_atk_vcpu_moving_between_cpus_keeps_its_registers_and_identity() -> TestResult {
    ensure!(
        board::layout::MAX_CPUS > 1
            && crate::attacks::smc(crate::attacks::PSCI_AFFINITY_INFO_64, 1, 0, 0) == 1,
        "CPU 1 is not off"
    );
    let mut v = gvm(VmType::Pkvm)?;
    let regs = [
        ("TPIDR_EL0", Sys(3, 3, 13, 0, 2), 0x7e57_0001u64),
        ("ICC_PMR_EL1", ICC_PMR_EL1, 0x30),
        ("CNTV_CVAL_EL0", CNTV_CVAL_EL0, 0x7fff_0000_1234),
    ];
    let mut problems = Vec::new();
    for (name, r, g) in regs {
        ensure_eq!(v.gw(r, g)?, Ok(()));
        v.load(&[mrs(r, 0), RET])?;
        let got = on_cpu1(v.guest.vcpu, OP_ATK_RUN, [0, 0, 0, 0])?;
        if got != [g, 0] {
            problems.push(format!(
                "{name} on CPU 1: {got:x?} (written 0x{g:x} on CPU 0)"
            ));
        }
    }
    let mpidr = Sys(3, 0, 0, 0, 5);
    let on0 = v.gr(mpidr)?.map_err(|x| format!("ESR 0x{x:x}"))?;
    v.load(&[mrs(mpidr, 0), RET])?;
    let on1 = on_cpu1(v.guest.vcpu, OP_ATK_RUN, [0, 0, 0, 0])?;
    let host0 = hr(mpidr).map_err(|f| format!("{f:?}"))?;
    if on1[0] != on0 {
        problems.push(format!(
            "MPIDR_EL1 reads 0x{on0:x} on CPU 0 and 0x{:x} on CPU 1 (the host's CPU 0 reads \
             0x{host0:x}): the guest sees the physical CPU, VMPIDR_EL2 is never set",
            on1[0]
        ));
    }
    // Its identity is its index in its VM (KVM's reset_mpidr: Aff0 = 0, bit 31 RES1, U and MT
    // clear), and MIDR_EL1 (VPIDR_EL2) does not move either.
    if on0 != 1 << 31 {
        problems.push(format!("vCPU 0's MPIDR_EL1 is 0x{on0:x}, not 0x80000000"));
    }
    let midr = Sys(3, 0, 0, 0, 0);
    let m0 = v.gr(midr)?.map_err(|x| format!("ESR 0x{x:x}"))?;
    v.load(&[mrs(midr, 0), RET])?;
    let m1 = on_cpu1(v.guest.vcpu, OP_ATK_RUN, [0, 0, 0, 0])?;
    if m1[0] != m0 || hr(midr).ok() != Some(m0) {
        problems.push(format!(
            "MIDR_EL1 reads 0x{m0:x} on CPU 0, 0x{:x} on CPU 1",
            m1[0]
        ));
    }
    // The host still reads its own CPU's identity after the guest ran.
    ensure_eq!(hr(mpidr).ok(), Some(host0));
    v.destroy()?;
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

// ---- 20. Cache, TLB and address-translation instructions from a guest ------------------------------

/// `SYS #op1, C<n>, C<m>, #op2, x<rt>` (DC, IC, TLBI, AT).
const fn sys(op1: u32, crn: u32, crm: u32, op2: u32, rt: u32) -> u32 {
    0xd508_0000 | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5) | rt
}

/// Set/way and VA cache maintenance, TLB invalidation and AT instructions a guest kernel issues
/// stay the guest's: none reaches the host (no exit but the command device's), the guest's data
/// survives them (set/way invalidation cleans too, HCR_EL2.SWIO), an AT reports only the guest's
/// own (intermediate) address, and the EL2-only forms (AT S12E1R, AT S1E2R, TLBI ALLE1, ALLE2,
/// VMALLS12E1IS, IPAS2E1IS) are undefined instructions at its EL1.
fn ws_atk_guest_cache_tlb_and_at_instructions_stay_the_guests() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    let data = GPA + 0x2000;
    ensure_eq!(
        v.step(OP_WRITE, [data, 0x42, 0, 0])?.status,
        Some(STATUS_OK)
    );
    ensure_eq!(
        v.step(OP_WRITE, [GPA + 0x3000, 0x17, 0, 0])?.status,
        Some(STATUS_OK)
    );
    let before = vm::stats(v.vm).map_err(e)?;
    let mut wrong = Vec::new();
    let ok: [(&str, u32); 19] = [
        ("dc isw", sys(0, 7, 6, 2, 1)),
        ("dc csw", sys(0, 7, 10, 2, 1)),
        ("dc cisw", sys(0, 7, 14, 2, 1)),
        ("ic iallu", sys(0, 7, 5, 0, 31)),
        ("ic ialluis", sys(0, 7, 1, 0, 31)),
        ("ic ivau", sys(3, 7, 5, 1, 0)),
        ("dc ivac", sys(0, 7, 6, 1, 0)),
        ("dc civac", sys(3, 7, 14, 1, 0)),
        ("tlbi vmalle1", sys(0, 8, 7, 0, 31)),
        ("tlbi vmalle1is", sys(0, 8, 3, 0, 31)),
        ("tlbi vae1is", sys(0, 8, 3, 1, 0)),
        ("tlbi aside1is", sys(0, 8, 3, 2, 0)),
        ("tlbi vaae1is", sys(0, 8, 3, 3, 0)),
        ("tlbi vale1", sys(0, 8, 7, 5, 0)),
        ("at s1e1r", sys(0, 7, 8, 0, 0)),
        ("at s1e1w", sys(0, 7, 8, 1, 0)),
        ("at s1e0r", sys(0, 7, 8, 2, 0)),
        ("at s1e0w", sys(0, 7, 8, 3, 0)),
        ("at s1e1rp", sys(0, 7, 9, 0, 0)),
    ];
    for (name, insn) in ok {
        // x0 = the data page (VA and TLBI operands), x1 = set/way 0.
        let r = v.exec(
            &[
                insn,
                0xd503_3f9f, /* dsb sy */
                ISB,
                mrs(Sys(3, 0, 7, 4, 0), 0),
            ],
            [data, 0],
        )?;
        if r.esr != 0 {
            wrong.push(format!("{name}: ESR 0x{:x}", r.esr));
        } else if name.starts_with("at ") && (r.x[0] & 1 != 0 || r.x[0] & 0xf_ffff_f000 != data) {
            wrong.push(format!("{name}: PAR_EL1 0x{:x}", r.x[0]));
        }
    }
    let el2_only: [(&str, u32); 6] = [
        ("at s12e1r", sys(4, 7, 8, 4, 0)),
        ("at s1e2r", sys(4, 7, 8, 0, 0)),
        ("tlbi alle1", sys(4, 8, 7, 4, 31)),
        ("tlbi alle2", sys(4, 8, 7, 0, 31)),
        ("tlbi vmalls12e1is", sys(4, 8, 3, 6, 31)),
        ("tlbi ipas2e1is", sys(4, 8, 0, 1, 0)),
    ];
    for (name, insn) in el2_only {
        let r = v.exec(&[insn, ISB], [data >> 12, 0])?;
        if ec(r.esr) != EC_UNKNOWN || r.esr == 0 {
            wrong.push(format!("{name} at EL1: ESR 0x{:x}", r.esr));
        }
    }
    // DC ZVA on a page of its own zeroes the block there.
    let r = v.exec(&[sys(3, 7, 4, 1, 0)], [GPA + 0x3000, 0])?;
    ensure_eq!(r.esr, 0);
    ensure_eq!(v.step(OP_READ, [GPA + 0x3000, 0, 0, 0])?.results[0], 0);
    ensure_eq!(v.step(OP_READ, [data, 0, 0, 0])?.results[0], 0x42);
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(
        after.exits - before.exits,
        after.mmio_exits - before.mmio_exits
    );
    v.destroy()?;
    host_goes_on()?;
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

// ---- 21. Undefined instructions the hyp injects into a guest's EL0 ---------------------------------

/// What the hyp answers with an undefined instruction must look, at the guest's EL1, like an
/// undefined instruction taken from where it ran: from AArch64 EL0 (an SVE instruction, trapped
/// by CPTR_EL2.TZ) the lower-EL AArch64 vector (offset 0x400), from AArch32 EL0, A32 or T32 (a
/// DBGDIDR read, `mrc p14, 0, r0, c0, c0, 0`, trapped by MDCR_EL2.TDA while the guest has not
/// taken the debug registers: the hyp emulates no AArch32 debug register; the physical timer's
/// MRCs, once the probe here, are emulated) the lower-EL AArch32 one (0x600), with ELR_EL1 at
/// the instruction, SPSR_EL1 the EL0 state and ESR_EL1 EC 0 with the instruction's IL.
fn ws_atk_undef_injected_from_a_guests_el0_takes_the_lower_el_vector() -> TestResult {
    let mut v = gvm(VmType::Pkvm)?;
    ensure_eq!(v.gw(CNTKCTL_EL1, (1 << 9) | 1)?, Ok(()));
    let code = GPA + 0x4000;
    let cases: [(&str, Vec<u32>, u64, u64, u64); 3] = [
        // rdvl x0, #1 (the guest's CPACR_EL1 enables SVE at EL0: the trap is the hyp's).
        (
            "A64 rdvl",
            alloc::vec![0x04bf_5020, SVC0],
            SPSR_EL0_A64,
            code,
            8,
        ),
        (
            "A32 mrc dbgdidr",
            alloc::vec![0xee10_0e10, 0xef00_0000],
            SPSR_EL0_A32,
            code,
            12,
        ),
        (
            "T32 mrc dbgdidr",
            alloc::vec![0x0e10_ee10, 0x0000_df00],
            SPSR_EL0_T32,
            code,
            12,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, words, spsr, dest, want) in cases {
        let r = v.exec_el0(&words, spsr, dest, [0, 0])?;
        let vector = v.el0_vector()?;
        let (elr, spsr_el1) = v.el0_return()?;
        let ok = vector == want
            && r.esr == (1 << 25)
            && elr == dest
            && spsr_el1 & 0x1f == spsr & 0x1f
            && spsr_el1 & 0x20 == spsr & 0x20;
        if !ok {
            wrong.push(format!(
                "{name}: vector {vector} (want {want}), ESR 0x{:x}, ELR 0x{elr:x} (want \
                 0x{dest:x}), SPSR 0x{spsr_el1:x}",
                r.esr
            ));
        }
    }
    let _ = v.gw(CNTKCTL_EL1, 0)?;
    ensure_eq!(v.step(OP_READ, [GPA, 0, 0, 0])?.status, Some(STATUS_OK));
    v.destroy()?;
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

// ---- 22. A guest's exit storm on one CPU against the host's calls on the other ------------------------

/// The latencies (counter ticks) of `n` host calls that take the hyp's lock (PoolStats of `vm`).
fn call_latencies(vm: VmId, n: usize, until: impl Fn() -> bool) -> (u64, u64, usize) {
    let (mut max, mut sum, mut done) = (0, 0, 0);
    for _ in 0..n {
        if until() {
            break;
        }
        let t0 = counter();
        let _ = hvc::raw6(HostCall::PoolStats.id(), [vm.0, 0, 0, 0, 0, 0]);
        let dt = counter() - t0;
        max = max.max(dt);
        sum += dt;
        done += 1;
    }
    (max, sum / done.max(1) as u64, done)
}

/// Rule 6 across CPUs: a guest on CPU 1 that traps to EL2 as fast as it can (an ID register read
/// the hyp emulates: every exit takes the hyp's one lock, `vmm::HYP`, in `vcpu_run`) must not
/// keep the host's calls on CPU 0 from being served. While CPU 0 waits for that lock it spins
/// at EL2 with interrupts masked, where its own timer cannot help it. The host's calls during
/// the storm must stay within a bound (10 ms each here; they take microseconds without it).
fn ws_atk_guest_exit_storm_on_cpu1_does_not_starve_the_hosts_calls() -> TestResult {
    ensure!(
        crate::attacks::smc(crate::attacks::PSCI_AFFINITY_INFO_64, 1, 0, 0) == 1,
        "CPU 1 is not off"
    );
    let mut v = gvm(VmType::Pkvm)?;
    // x1 times: an emulated ID register read.
    v.load(&[mrs(ID_AA64PFR0, 0), 0xf100_0421, 0x54ff_ffc1, RET])?;
    let (base_max, base_avg, _) = call_latencies(v.vm, 200, || false);
    cpu1_go(v.guest.vcpu, OP_ATK_RUN, [0, 0, 0, 300_000])?;
    ensure!(
        crate::attacks::wait_for(|| WS_JOB[11].load(Ordering::SeqCst) == 1),
        "CPU 1's guest never started"
    );
    let t0 = counter();
    let (max, avg, calls) = call_latencies(v.vm, 2000, || WS_JOB[10].load(Ordering::SeqCst) == 1);
    let storm = counter() - t0;
    cpu1_wait()?;
    let ms = host_shim::timer::ticks_per_ms();
    board::println!(
        "    ws: PoolStats latency: {base_avg}/{base_max} ticks (avg/max) alone, {avg}/{max} \
         during {calls} calls of a {} ms exit storm on CPU 1 ({ms} ticks per ms)",
        storm / ms
    );
    v.destroy()?;
    ensure!(
        max < 10 * ms,
        "a host call on CPU 0 waited {} ms for the hyp's lock while a guest on CPU 1 trapped \
         without end (alone: {} us at most)",
        max / ms,
        base_max * 1000 / ms
    );
    Ok(())
}

register!(
    ws_atk_guest_exit_storm_on_cpu1_does_not_starve_the_hosts_calls,
    ws_atk_undef_injected_from_a_guests_el0_takes_the_lower_el_vector,
    ws_atk_guest_cache_tlb_and_at_instructions_stay_the_guests,
    ws_atk_vcpu_moving_between_cpus_keeps_its_registers_and_identity,
    ws_atk_guest_vtimer_interrupt_reaches_the_guest,
    ws_atk_guest_odd_erets_stay_in_its_el1,
    ws_atk_host_stage1_walks_through_hyp_memory_abort,
    ws_atk_guest_scxtnum_it_is_told_of_is_usable_and_its_own,
    ws_atk_impdef_registers_are_undef_or_the_same_constants_in_both_worlds,
    ws_atk_open_pmu_registers_stay_per_world,
    ws_atk_host_cycle_counter_counts_nothing_of_a_guest,
    ws_atk_guest_stage1_mmu_translates_when_it_turns_it_on,
    ws_atk_aarch32_el0_thumb16_mmio_resumes_at_the_next_instruction,
    ws_atk_aarch32_el0_mmio_in_an_it_block_keeps_the_it_state,
    ws_atk_aarch32_el0_physical_timer_is_emulated_like_aarch64,
    ws_atk_el1_el0_registers_sweep_per_world,
    ws_atk_host_watchpoints_fire_neither_in_a_guest_nor_at_el2,
    ws_atk_guest_debug_registers_it_is_told_of_work,
    ws_atk_guest_vtimer_left_firing_never_pends_in_the_host,
    ws_atk_guest_sgis_never_reach_a_cpu,
    ws_atk_guest_storms_with_everything_masked_give_the_cpu_back,
    ws_atk_host_access_zoo_on_hyp_memory_all_abort,
);

// The named SPSRs are the values these tests were written with.
const _: () = assert!(SPSR_EL0_A64 == 0x3c0 && SPSR_EL0_A32 == 0x1d0 && SPSR_EL0_T32 == 0x1f0);
