//! Attacks on the trust promise (SEMANTICS.md "Trust", rules 1-4, 7-11), each replayed whole by
//! one test that asserts the SECURE outcome: a test that fails documents a break. Where it helps,
//! a positive control shows the same observation succeeds where the rules allow it, so a passing
//! test means a working defence and not a probe that cannot see anything.
//!
//! Tests named `atk_*` leave the hyp as they found it. Tests named `zz_atk_*` run last on purpose:
//! `zz_atk_3_*` uses up what the hyp never gives back (VM handles), and `zz_atk_2_*` exhausts the
//! hyp's heap for real (it only runs when the image is built with `ATK_EXHAUST=vcpu|guard|gmem` (or
//! `host-sve`, a host SVE instruction),
//! because a hyp that crashes ends the whole run).
//!
//! The guest commands `OP_ATK_*` exist only in this attacker's step guest
//! (`guests/src/bin/step-guest.rs`), not in `abi::cmd`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::cmd::*;
use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemoryFaultFlags, MemslotFlags};
use abi::flags::{UserspaceAddr, VmType};
use abi::guest::*;
use abi::host::{ExitReason, HostCall, COMPLETE_INJECT_ABORT};
use abi::{Errno, PAGE_SIZE};
use host_shim::driver::{GuestDriver, StepReport, GUEST_CODE_IPA};
use host_shim::exceptions::{probe_read, probe_write};
use host_shim::hvc;
use host_shim::runner::forward_hypercall;
use host_shim::vm::{self, GmemId, SlotId, SlotSpec, VcpuId, VmId};
use ontarget::{ensure, ensure_eq, register, TestResult};

use crate::vms::{e, with_pages};

pub(crate) const GPA: u64 = 0x8000_0000;
pub(crate) const BLOCK: u64 = 2 << 20;
pub(crate) use abi::guest::{COCO_SHARED_BIT as COCO_SHARED, IPA_LIMIT};

/// Attacker-only guest commands (same numbers as in the step guest).
pub(crate) const OP_ATK_STORE_LOOP: u64 = 0x41;
pub(crate) const OP_ATK_LDP: u64 = 0x43;
pub(crate) const OP_ATK_STORE_NARROW: u64 = 0x44;
pub(crate) const OP_ATK_SMC: u64 = 0x45;

pub(crate) const PKVM_SLOT: MemslotFlags =
    MemslotFlags::ALWAYS_FAULT_FROM_GMEM.union(MemslotFlags::DONT_CHECK_MISMATCHES);
pub(crate) const TRACKED: GmemFlags = GmemFlags::MMAP.union(GmemFlags::TRACK_SHAREABILITY);

// ---- set-up helpers ------------------------------------------------------------------------------

/// A VM with one data memslot at [`GPA`] over its own gmem file, and the step guest loaded.
pub(crate) struct Vmx {
    vm: VmId,
    gmem: GmemId,
    slot: SlotId,
    guest: GuestDriver,
}

/// Donates `pages` pages: in runs of at most 511 (never a 2 MiB chunk: 4 KiB faults only), or in
/// aligned 512-page chunks with `blocks`.
pub(crate) fn donate(vm: VmId, pages: u64, blocks: bool) -> Result<(), String> {
    with_pages(|p| {
        let mut done = 0;
        while done < pages {
            let (n, align) = if blocks {
                (512, BLOCK)
            } else {
                ((pages - done).min(511), PAGE_SIZE)
            };
            let pa = p.alloc_contiguous(n, align).ok_or("host out of pages")?;
            vm::donate(vm, pa, n).map_err(e)?;
            done += n;
        }
        Ok(())
    })
}

pub(crate) fn make_vm(
    t: VmType,
    gmem_size: u64,
    gflags: GmemFlags,
    sflags: MemslotFlags,
    pool: u64,
    blocks: bool,
) -> Result<Vmx, String> {
    let vm = vm::vm_create(t).map_err(e)?;
    let gmem = vm::gmem_create(vm, gmem_size, gflags).map_err(e)?;
    let slot = vm::memslot_create(
        vm,
        &SlotSpec {
            gpa: GPA,
            size: gmem_size,
            gmem: Some((gmem, 0)),
            uaddr: UserspaceAddr::None,
            flags: sflags,
        },
    )
    .map_err(e)?;
    donate(vm, pool, blocks)?;
    let guest = with_pages(|p| GuestDriver::load(vm, t, p).map_err(e))?;
    Ok(Vmx {
        vm,
        gmem,
        slot,
        guest,
    })
}

pub(crate) fn pkvm(gmem_pages: u64, pool: u64) -> Result<Vmx, String> {
    make_vm(
        VmType::Pkvm,
        gmem_pages * PAGE_SIZE,
        TRACKED,
        PKVM_SLOT,
        pool,
        false,
    )
}

/// The seed's "Option 1" coco configuration: every fault through gmem, no mismatch check.
pub(crate) fn coco(gmem_pages: u64, pool: u64) -> Result<Vmx, String> {
    make_vm(
        VmType::Coco,
        gmem_pages * PAGE_SIZE,
        TRACKED,
        PKVM_SLOT,
        pool,
        false,
    )
}

/// One step of the step guest; forwarded MEM_SHARE / MEM_UNSHARE are carried out as a VMM would.
pub(crate) fn step(v: &mut Vmx, op: u64, args: [u64; 4]) -> Result<StepReport, String> {
    let (vm_id, vcpu) = (v.vm, v.guest.vcpu);
    with_pages(|p| {
        v.guest
            .step(op, args, p, &mut |f, a| {
                forward_hypercall(vm_id, vcpu, f, a)
            })
            .map_err(e)
    })
}

/// One step with a custom handler for forwarded hypercalls.
pub(crate) fn step_with(
    v: &mut Vmx,
    op: u64,
    args: [u64; 4],
    h: &mut dyn FnMut(u64, [u64; 3]) -> (u64, u64),
) -> Result<StepReport, String> {
    with_pages(|p| v.guest.step(op, args, p, h).map_err(e))
}

pub(crate) fn write(v: &mut Vmx, ipa: u64, val: u8) -> Result<(), String> {
    let r = step(v, OP_WRITE, [ipa, u64::from(val), 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    Ok(())
}

pub(crate) fn read(v: &mut Vmx, ipa: u64) -> Result<u64, String> {
    let r = step(v, OP_READ, [ipa, 0, 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    Ok(r.results[0])
}

pub(crate) fn hvc_result(v: &mut Vmx, f: u64, a: [u64; 3]) -> Result<[u64; 2], String> {
    Ok(step(v, OP_HVC, [f, a[0], a[1], a[2]])?.results)
}

pub(crate) fn gmem_phys(g: GmemId, offset: u64) -> Result<u64, Errno> {
    hvc::call(HostCall::GmemPhys, [g.0, offset, 0, 0, 0, 0]).map(|r| r[0])
}

pub(crate) fn invariants_clean() -> TestResult {
    ensure_eq!(vm::check_invariants(), Ok(0));
    Ok(())
}

pub(crate) fn destroy(v: Vmx) -> TestResult {
    vm::vm_destroy(v.vm).map_err(e)?;
    invariants_clean()
}

/// Reads the whole page at `pa` as the host; `Err` if the host is refused.
pub(crate) fn host_page_is_zero(pa: u64) -> Result<bool, String> {
    for i in 0..PAGE_SIZE {
        match probe_read((pa + i) as usize) {
            Ok(0) => {}
            Ok(_) => return Ok(false),
            Err(f) => {
                return Err(format!(
                    "host read of 0x{:x} aborted (EC 0x{:x})",
                    pa + i,
                    f.ec()
                ))
            }
        }
    }
    Ok(true)
}

/// A raw `VcpuRun`: x0..x5 as the hyp left them.
pub(crate) fn run_raw(vcpu: VcpuId, c0: u64) -> [u64; 6] {
    hvc::raw6(HostCall::VcpuRun.id(), [vcpu.0, c0, 0, 0, 0, 0])
}

/// Drives the step guest through one command by raw `VcpuRun`s, answering its command device,
/// and returns the first exit that is not the command device's (or the STATUS store as an MMIO
/// exit if the step ended first).
pub(crate) fn raw_until_other_exit(
    vcpu: VcpuId,
    op: u64,
    args: [u64; 4],
) -> Result<[u64; 6], String> {
    let mut c0 = 0;
    for _ in 0..64 {
        let r = run_raw(vcpu, c0);
        c0 = 0;
        if Errno::from_reg(r[0]).is_some() {
            return Err(format!("VcpuRun failed: {r:x?}"));
        }
        if r[0] == ExitReason::Mmio as u64
            && (CMD_DEVICE_IPA..CMD_DEVICE_IPA + 0x100).contains(&r[1])
        {
            match (r[1] - CMD_DEVICE_IPA, r[3] != 0) {
                (REG_CMD, false) => c0 = op,
                (REG_ARG0, false) => c0 = args[0],
                (REG_ARG1, false) => c0 = args[1],
                (REG_ARG2, false) => c0 = args[2],
                (REG_ARG3, false) => c0 = args[3],
                (REG_STATUS, true) => return Ok(r),
                _ => {}
            }
            continue;
        }
        if r[0] == ExitReason::Interrupt as u64 {
            continue;
        }
        return Ok(r);
    }
    Err("the step never ended".into())
}

// ---- a second CPU for the host --------------------------------------------------------------------

/// PSCI functions the secondary CPU plumbing uses.
pub(crate) use smccc::psci::{PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64};

/// One PSCI call (an SMC from the host): its `x0`.
pub(crate) fn smc(function: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    host_shim::hvc::smc(u64::from(function), [a1, a2, a3])[0] as i64
}

#[repr(C, align(16))]
struct Cpu1Stack(UnsafeCell<[u8; 64 << 10]>);
// SAFETY: only CPU 1 touches the stack, and only while it runs a job (one at a time).
unsafe impl Sync for Cpu1Stack {}
static CPU1_STACK: Cpu1Stack = Cpu1Stack(UnsafeCell::new([0; 64 << 10]));

/// What CPU 1 does: run `JOB_VCPU` through one step of `JOB_OP` with `JOB_ARGS`, injecting an
/// abort on every memory-fault exit, then turn itself off.
static JOB_VCPU: AtomicU64 = AtomicU64::new(0);
static JOB_OP: AtomicU64 = AtomicU64::new(0);
static JOB_ARGS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// 0 idle, 1 the guest read its last argument (it is in its loop), 2 done.
static JOB_STATE: AtomicU64 = AtomicU64::new(0);
static JOB_STATUS: AtomicU64 = AtomicU64::new(u64::MAX);
static JOB_RESULTS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// The first memory-fault exit: gpa and flags (u64::MAX: none).
static JOB_MF_GPA: AtomicU64 = AtomicU64::new(u64::MAX);
static JOB_MF_FLAGS: AtomicU64 = AtomicU64::new(0);
/// A `VcpuRun` error or an unexpected exit reason (0: none).
static JOB_ERROR: AtomicU64 = AtomicU64::new(0);
/// An MMIO exit outside the command device ends the job: its IPA (u64::MAX: none).
static JOB_MMIO_IPA: AtomicU64 = AtomicU64::new(u64::MAX);
/// A job without a vCPU waits for this before CPU 1 turns itself off.
static JOB_RELEASE: AtomicU64 = AtomicU64::new(0);
/// Times CPU 1 entered [`atk_cpu1_main`].
static JOB_ENTRIES: AtomicU64 = AtomicU64::new(0);
/// [`JOB_VCPU`] value for a job that runs no vCPU (CPU 1 only reports that it started).
pub(crate) const NO_VCPU: u64 = u64::MAX;

core::arch::global_asm!(
    r#"
    .section .text.atk_cpu1, "ax"
    .balign 4
    .global atk_cpu1_entry
atk_cpu1_entry:
    mov     sp, x0
    bl      atk_cpu1_main
1:  wfe
    b       1b
"#
);

#[no_mangle]
extern "C" fn atk_cpu1_main() -> ! {
    host_shim::exceptions::install();
    JOB_ENTRIES.fetch_add(1, Ordering::SeqCst);
    let vcpu = VcpuId(JOB_VCPU.load(Ordering::SeqCst));
    if vcpu.0 == NO_VCPU {
        JOB_STATE.store(1, Ordering::SeqCst);
        while JOB_RELEASE.load(Ordering::SeqCst) == 0 {
            core::hint::spin_loop();
        }
        JOB_STATE.store(2, Ordering::SeqCst);
        smc(PSCI_CPU_OFF, 0, 0, 0);
        loop {
            core::hint::spin_loop();
        }
    }
    let op = JOB_OP.load(Ordering::SeqCst);
    let args: [u64; 4] = core::array::from_fn(|i| JOB_ARGS[i].load(Ordering::SeqCst));
    let mut c0 = 0;
    loop {
        let r = run_raw(vcpu, c0);
        c0 = 0;
        if Errno::from_reg(r[0]).is_some() {
            JOB_ERROR.store(r[0], Ordering::SeqCst);
            break;
        }
        match ExitReason::from_u64(r[0]) {
            Some(ExitReason::Mmio) if (CMD_DEVICE_IPA..CMD_DEVICE_IPA + 0x100).contains(&r[1]) => {
                match (r[1] - CMD_DEVICE_IPA, r[3] != 0) {
                    (REG_CMD, false) => c0 = op,
                    (REG_ARG0, false) => c0 = args[0],
                    (REG_ARG1, false) => c0 = args[1],
                    (REG_ARG2, false) => {
                        c0 = args[2];
                        JOB_STATE.store(1, Ordering::SeqCst);
                    }
                    (REG_ARG3, false) => c0 = args[3],
                    (REG_RESULT0, true) => JOB_RESULTS[0].store(r[4], Ordering::SeqCst),
                    (REG_RESULT1, true) => JOB_RESULTS[1].store(r[4], Ordering::SeqCst),
                    (REG_STATUS, true) => {
                        JOB_STATUS.store(r[4], Ordering::SeqCst);
                        break;
                    }
                    _ => {}
                }
            }
            Some(ExitReason::Mmio) => {
                JOB_MMIO_IPA.store(r[1], Ordering::SeqCst);
                break;
            }
            Some(ExitReason::MemoryFault) => {
                if JOB_MF_GPA.load(Ordering::SeqCst) == u64::MAX {
                    JOB_MF_FLAGS.store(r[3], Ordering::SeqCst);
                    JOB_MF_GPA.store(r[1], Ordering::SeqCst);
                }
                c0 = COMPLETE_INJECT_ABORT;
            }
            Some(ExitReason::Interrupt) => {}
            _ => {
                JOB_ERROR.store(0x1000 | r[0], Ordering::SeqCst);
                break;
            }
        }
    }
    JOB_STATE.store(2, Ordering::SeqCst);
    smc(PSCI_CPU_OFF, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

pub(crate) fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..400_000_000u64 {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Starts CPU 1 on one step of `vcpu` (see [`atk_cpu1_main`]).
pub(crate) fn cpu1_start(vcpu: VcpuId, op: u64, args: [u64; 4]) -> TestResult {
    JOB_VCPU.store(vcpu.0, Ordering::SeqCst);
    JOB_OP.store(op, Ordering::SeqCst);
    for (a, v) in JOB_ARGS.iter().zip(args) {
        a.store(v, Ordering::SeqCst);
    }
    JOB_STATE.store(0, Ordering::SeqCst);
    JOB_STATUS.store(u64::MAX, Ordering::SeqCst);
    JOB_MF_GPA.store(u64::MAX, Ordering::SeqCst);
    JOB_MF_FLAGS.store(0, Ordering::SeqCst);
    JOB_ERROR.store(0, Ordering::SeqCst);
    JOB_MMIO_IPA.store(u64::MAX, Ordering::SeqCst);
    JOB_RELEASE.store(0, Ordering::SeqCst);
    for r in &JOB_RESULTS {
        r.store(0, Ordering::SeqCst);
    }
    let r = smc(PSCI_CPU_ON_64, 1, cpu1_entry(), cpu1_stack_top());
    ensure_eq!(r, 0);
    Ok(())
}

pub(crate) fn cpu1_entry() -> u64 {
    extern "C" {
        fn atk_cpu1_entry();
    }
    atk_cpu1_entry as *const () as u64
}

pub(crate) fn cpu1_stack_top() -> u64 {
    CPU1_STACK.0.get() as u64 + (64 << 10)
}

/// Waits for CPU 1's job to end and for CPU 1 to be off again.
pub(crate) fn cpu1_finish() -> TestResult {
    ensure!(
        wait_for(|| JOB_STATE.load(Ordering::SeqCst) == 2),
        "CPU 1's job never ended"
    );
    ensure!(
        wait_for(|| smc(PSCI_AFFINITY_INFO_64, 1, 0, 0) == 1),
        "CPU 1 never went off"
    );
    ensure_eq!(JOB_ERROR.load(Ordering::SeqCst), 0);
    Ok(())
}

// ---- rule 3 (and 1): nothing changes hands while it is mapped --------------------------------

/// Control for the race below: with the guest stopped, a coco page the host makes shared at its
/// own initiative is zeroed first (the host never sees what the guest wrote privately).
pub(crate) fn atk_control_coco_host_convert_to_shared_zeroes_a_quiet_page() -> TestResult {
    let mut v = coco(16, 64)?;
    write(&mut v, GPA + 0x1000, 0x5a)?;
    ensure_eq!(read(&mut v, GPA + 0x1000)?, 0x5a);
    // Private: the host is refused both ways.
    ensure_eq!(vm::map_gmem(v.gmem, 0x1000, false), Err(Errno::EFAULT));
    let pa = gmem_phys(v.gmem, 0x1000).map_err(e)?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host raw read of a private coco page"
    );
    // Preserve at the host's initiative is refused for coco; the default zeroes.
    ensure_eq!(
        vm::convert(
            v.gmem,
            0x1000,
            PAGE_SIZE,
            ConvertTo::Shared,
            ContentMode::Preserve
        ),
        Err((Errno::EPERM, 0))
    );
    vm::convert_with(v.gmem, 0x1000, PAGE_SIZE, ConvertTo::Shared, None).map_err(|(x, _)| e(x))?;
    let pa2 = vm::map_gmem(v.gmem, 0x1000, false).map_err(e)?;
    ensure_eq!(pa2, pa);
    ensure!(host_page_is_zero(pa)?, "the converted page is not zero");
    // The guest's private access to the now shared page is a memory fault, nothing mapped.
    let r = step(&mut v, OP_READ, [GPA + 0x1000, 0, 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_ABORTED));
    let (gpa, _, flags) = r.memory_fault.ok_or("no memory-fault exit")?;
    ensure_eq!(gpa, GPA + 0x1000);
    ensure!(
        flags & MemoryFaultFlags::PRIVATE.bits() != 0,
        "flags 0x{flags:x}"
    );
    destroy(v)
}

/// The attack: a coco guest keeps storing into its private page on CPU 1 while the host, on CPU 0,
/// converts that page (with 127 more private pages behind it) to shared at its own initiative,
/// which must zero them: the host may not read what the guest wrote privately. The secure
/// outcome: the host reads zeroes. If the hyp zeroes the pages before it removes the guest's
/// stage-2 mapping, the stores that land in between survive the "zeroing" and the host reads the
/// guest's private byte (the other 127 pages widen that window: the hyp zeroes them all first).
pub(crate) fn atk_coco_host_convert_to_shared_while_the_guest_still_writes_leaks_nothing(
) -> TestResult {
    const RUN: u64 = 128;
    const ROUNDS: u64 = 8;
    let mut v = coco(ROUNDS * RUN, ROUNDS * RUN + 64)?;
    // Every page is faulted in and private (a 1 in each) before the races start.
    let r = step(&mut v, OP_TOUCH, [GPA, ROUNDS * RUN, PAGE_SIZE, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    let mut leaks = Vec::new();
    for round in 0..ROUNDS {
        let off = round * RUN * PAGE_SIZE;
        cpu1_start(
            v.guest.vcpu,
            OP_ATK_STORE_LOOP,
            [GPA + off, 0x5a, 1 << 28, 0],
        )?;
        ensure!(
            wait_for(|| JOB_STATE.load(Ordering::SeqCst) >= 1),
            "round {round}: the guest never started storing"
        );
        // Let the guest's loop get going.
        for _ in 0..200_000 {
            core::hint::spin_loop();
        }
        let before_state = JOB_STATE.load(Ordering::SeqCst);
        vm::convert_with(v.gmem, off, RUN * PAGE_SIZE, ConvertTo::Shared, None)
            .map_err(|(x, o)| format!("round {round}: convert: {x} at 0x{o:x}"))?;
        cpu1_finish()?;
        ensure_eq!(before_state, 1);
        // The guest's next private store faulted: the conversion reached it while it stored.
        ensure_eq!(JOB_MF_GPA.load(Ordering::SeqCst), GPA + off);
        ensure_eq!(JOB_RESULTS[1].load(Ordering::SeqCst), 1);
        let stores = JOB_RESULTS[0].load(Ordering::SeqCst);
        let pa = vm::map_gmem(v.gmem, off, false).map_err(e)?;
        let seen = probe_read(pa as usize).map_err(|f| format!("host read aborted: {f:?}"))?;
        // Control: the last page of the run (the guest wrote 1 there earlier) was zeroed.
        let last = vm::map_gmem(v.gmem, off + (RUN - 1) * PAGE_SIZE, false).map_err(e)?;
        ensure_eq!(probe_read(last as usize), Ok(0));
        board::println!(
            "    atk: round {round}: guest stored 0x5a {stores} times; after the zeroing conversion \
             the host reads 0x{seen:02x} at pa 0x{pa:x} (last page of the run: 0)"
        );
        if seen != 0 {
            leaks.push((round, seen));
        }
    }
    invariants_clean()?;
    vm::vm_destroy(v.vm).map_err(e)?;
    ensure!(
        leaks.is_empty(),
        "the host read the guest's private byte after a zeroing conversion: {leaks:x?} \
         (rounds, byte): the page was zeroed while the guest still had it mapped"
    );
    invariants_clean()
}

// ---- rule 1: what exits report -------------------------------------------------------------------

/// A guest access the hyp cannot serve or decode (an IPA beyond the VM's IPA space; a load pair
/// from MMIO, which has no valid syndrome) exits to the host as a guest exception. The exit may
/// carry the exception class and nothing more (abi: "x1 = the exception class and nothing
/// more"), never the vCPU's PC or the faulting address.
pub(crate) fn atk_guest_exception_exit_reports_only_the_class() -> TestResult {
    let mut found = Vec::new();
    for (name, op, addr) in [
        ("load beyond the IPA space", OP_READ, IPA_LIMIT + 0x1230),
        ("load pair from MMIO", OP_ATK_LDP, 0x9000_0010),
    ] {
        let v = pkvm(16, 48)?;
        let r = raw_until_other_exit(v.guest.vcpu, op, [addr, 0, 0, 0])?;
        if r[0] == ExitReason::Mmio as u64 {
            // The hyp gave the guest the abort itself: the host learns nothing but that the
            // step ended (the guest's own status store), and the guest goes on.
            ensure_eq!((r[1], r[4]), (CMD_DEVICE_IPA + REG_STATUS, STATUS_ABORTED));
            board::println!("    atk: {name}: the abort went to the guest, no exception exit");
            destroy(v)?;
            continue;
        }
        ensure_eq!(r[0], ExitReason::GuestException as u64);
        board::println!(
            "    atk: {name}: exit x1..x5 = {:#x} {:#x} {:#x} {:#x} {:#x}",
            r[1],
            r[2],
            r[3],
            r[4],
            r[5]
        );
        // The class (a data abort from a lower EL), whether given alone or inside an ESR.
        let class = if r[1] <= 0x3f {
            r[1]
        } else {
            (r[1] >> 26) & 0x3f
        };
        ensure_eq!(class, 0x24);
        if r[1] > 0x3f || r[2] != 0 || r[3] != 0 || r[4] != 0 || r[5] != 0 {
            found.push((name, r[1], r[2], r[3]));
        }
        destroy(v)?;
    }
    ensure!(
        found.is_empty(),
        "guest exception exits carry more than the class: {found:x?} (name, x1 = full ESR, \
         x2 = guest PC, x3 = address)"
    );
    Ok(())
}

// ---- rule 2: results are decided at EL2 ---------------------------------------------------------

pub(crate) fn atk_forwarded_share_result_ignores_the_hosts_claims() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA + 0x1000, 0x42)?;
    let vcpu = v.guest.vcpu;
    // The host claims success without converting: the guest is told nothing was done.
    let r = step_with(
        &mut v,
        OP_HVC,
        [MEM_SHARE, GPA + 0x1000, 1, 0],
        &mut |_, _| (SMCCC_SUCCESS, 1),
    )?;
    ensure_eq!(r.results, [SMCCC_INVALID_PARAMETER, 0]);
    ensure_eq!(vm::map_gmem(v.gmem, 0x1000, false), Err(Errno::EFAULT));
    // Converting the stale request after the re-run is refused (it is gone).
    ensure_eq!(vm::guest_convert(vcpu), Err((Errno::EINVAL, 0)));
    // The host converts (twice: the second is refused) but claims failure: the guest is told
    // the truth, one page done.
    let mut second = Ok(0);
    let r = step_with(
        &mut v,
        OP_HVC,
        [MEM_SHARE, GPA + 0x1000, 1, 0],
        &mut |_, _| {
            let first = vm::guest_convert(vcpu);
            second = vm::guest_convert(vcpu);
            let _ = first;
            (SMCCC_INVALID_PARAMETER, 77)
        },
    )?;
    ensure_eq!(second, Err((Errno::EINVAL, 0)));
    ensure_eq!(r.results, [SMCCC_SUCCESS, 1]);
    let pa = vm::map_gmem(v.gmem, 0x1000, false).map_err(e)?;
    ensure_eq!(probe_read(pa as usize), Ok(0x42));
    // A GuestConvert for a vCPU with no request, or no such vCPU.
    ensure_eq!(vm::guest_convert(vcpu), Err((Errno::EINVAL, 0)));
    ensure_eq!(vm::guest_convert(VcpuId(u64::MAX)), Err((Errno::ENOENT, 0)));
    ensure_eq!(
        vm::guest_convert(VcpuId(1 << 32 | vcpu.0)),
        Err((Errno::ENOENT, 0))
    );
    destroy(v)
}

// ---- rule 9: a pkvm guest's memory is its own from the first touch ------------------------------

pub(crate) fn atk_pkvm_first_touch_takes_an_init_shared_page_the_host_wrote() -> TestResult {
    let mut v = make_vm(
        VmType::Pkvm,
        16 * PAGE_SIZE,
        TRACKED | GmemFlags::INIT_SHARED,
        PKVM_SLOT,
        48,
        false,
    )?;
    // The host writes the page while it is shared and untouched (positive control: it may).
    let pa = vm::map_gmem(v.gmem, 0x2000, true).map_err(e)?;
    probe_write(pa as usize, 0x77).map_err(|f| format!("host write refused: {f:?}"))?;
    ensure_eq!(probe_read(pa as usize), Ok(0x77));
    // The guest's first touch takes it, content kept.
    ensure_eq!(read(&mut v, GPA + 0x2000)?, 0x77);
    write(&mut v, GPA + 0x2000, 0x99)?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host raw read after the first touch"
    );
    ensure!(
        probe_write(pa as usize, 1).is_err(),
        "host raw write after the first touch"
    );
    ensure_eq!(vm::map_gmem(v.gmem, 0x2000, false), Err(Errno::EFAULT));
    ensure_eq!(vm::pin(v.gmem, 0x2000), Err(Errno::EFAULT));
    // Only the guest gives it back.
    ensure_eq!(
        vm::convert(
            v.gmem,
            0x2000,
            PAGE_SIZE,
            ConvertTo::Shared,
            ContentMode::Zero
        ),
        Err((Errno::EPERM, 0))
    );
    ensure_eq!(
        vm::convert_with(v.gmem, 0, 16 * PAGE_SIZE, ConvertTo::Shared, None),
        Err((Errno::EPERM, 0))
    );
    // A punch keeps it the guest's: the guest reads zero, the host still may not.
    vm::punch(v.gmem, 0x2000, PAGE_SIZE).map_err(e)?;
    ensure_eq!(vm::map_gmem(v.gmem, 0x2000, false), Err(Errno::EFAULT));
    ensure_eq!(read(&mut v, GPA + 0x2000)?, 0);
    write(&mut v, GPA + 0x2000, 0x98)?;
    let pa = gmem_phys(v.gmem, 0x2000).map_err(e)?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host raw read of the refaulted page"
    );
    // A page the host pins cannot be taken: memory fault, nothing mapped.
    vm::pin(v.gmem, 0x3000).map_err(e)?;
    let r = step(&mut v, OP_READ, [GPA + 0x3000, 0, 0, 0])?;
    let (gpa, _, flags) = r.memory_fault.ok_or("no memory fault on a pinned page")?;
    ensure_eq!(
        (gpa, flags & MemoryFaultFlags::PRIVATE.bits()),
        (GPA + 0x3000, 0)
    );
    ensure_eq!(vm::walk(v.vm, GPA + 0x3000), Err(Errno::ENOENT));
    let pin_pa = vm::map_gmem(v.gmem, 0x3000, false).map_err(e)?;
    ensure_eq!(probe_read(pin_pa as usize), Ok(0));
    // A MEM_SHARE/UNSHARE over it is refused too (nothing taken).
    ensure_eq!(
        hvc_result(&mut v, MEM_UNSHARE, [GPA + 0x3000, 1, 0])?[0],
        SMCCC_INVALID_PARAMETER
    );
    ensure!(
        probe_read(pin_pa as usize).is_ok(),
        "the pinned page was taken"
    );
    vm::unpin(v.gmem, 0x3000).map_err(e)?;
    ensure_eq!(read(&mut v, GPA + 0x3000)?, 0);
    ensure!(
        probe_read(pin_pa as usize).is_err(),
        "host raw read after unpin + touch"
    );
    // The guest shares the first page: now the host reads it (positive control).
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA + 0x2000, 1, 0])?.results,
        [SMCCC_SUCCESS, 1]
    );
    ensure_eq!(probe_read(pa as usize), Ok(0x98));
    invariants_clean()?;
    destroy(v)
}

pub(crate) fn atk_pkvm_memslots_are_frozen_after_the_first_run() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA, 0x31)?;
    let g2 = vm::gmem_create(v.vm, 16 * PAGE_SIZE, TRACKED | GmemFlags::INIT_SHARED).map_err(e)?;
    let spec = |gpa: u64, size: u64| SlotSpec {
        gpa,
        size,
        gmem: Some((g2, 0)),
        uaddr: UserspaceAddr::None,
        flags: PKVM_SLOT,
    };
    // The argument checks still come first.
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(0x9000_0800, PAGE_SIZE)),
        Err(Errno::EINVAL)
    );
    // Then the freeze (SEMANTICS.md rule 9: "EPERM, after the argument checks"), before the
    // overlap: re-pointing a frozen IPA is EPERM.
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(GPA, PAGE_SIZE)),
        Err(Errno::EPERM)
    );
    // A well-formed new slot, or deleting the one the guest uses (to re-point its IPAs at a
    // page the host can read): refused.
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(0x9000_0000, PAGE_SIZE)),
        Err(Errno::EPERM)
    );
    ensure_eq!(vm::memslot_delete(v.vm, v.slot), Err(Errno::EPERM));
    if let host_shim::driver::GuestMemory::Gmem { slot, .. } = v.guest.memory {
        ensure_eq!(vm::memslot_delete(v.vm, slot), Err(Errno::EPERM));
    }
    // The bound file cannot go either; nor can the host add a vCPU that would start in the
    // guest's memory where it says (the vCPUs are fixed too).
    ensure_eq!(vm::gmem_destroy(v.gmem), Err(Errno::EBUSY));
    ensure_eq!(vm::vcpu_create(v.vm, GUEST_CODE_IPA, 0), Err(Errno::EPERM));
    ensure_eq!(vm::memslot_delete(v.vm, v.slot), Err(Errno::EPERM));
    ensure_eq!(read(&mut v, GPA)?, 0x31);
    destroy(v)
}

// ---- rules 1 and 3: no stale host access after an unshare ----------------------------------------

pub(crate) fn atk_host_keeps_no_stale_access_after_the_guest_unshares() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA + 0x4000, 0x11)?;
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA + 0x4000, 1, 0])?.results,
        [SMCCC_SUCCESS, 1]
    );
    // Shared: the host reads it through its own stage-2 (positive control) and holds a pin.
    let pa = vm::map_gmem(v.gmem, 0x4000, true).map_err(e)?;
    ensure_eq!(probe_read(pa as usize), Ok(0x11));
    probe_write(pa as usize, 0x12).map_err(|f| format!("{f:?}"))?;
    ensure_eq!(read(&mut v, GPA + 0x4000)?, 0x12);
    // While pinned the guest cannot take it back.
    vm::pin(v.gmem, 0x4000).map_err(e)?;
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_UNSHARE, GPA + 0x4000, 1, 0])?.results[0],
        SMCCC_INVALID_PARAMETER
    );
    ensure_eq!(probe_read(pa as usize), Ok(0x12));
    vm::unpin(v.gmem, 0x4000).map_err(e)?;
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_UNSHARE, GPA + 0x4000, 1, 0])?.results,
        [SMCCC_SUCCESS, 1]
    );
    write(&mut v, GPA + 0x4000, 0x99)?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host read the unshared page"
    );
    ensure!(
        probe_write(pa as usize, 0).is_err(),
        "host wrote the unshared page"
    );
    ensure_eq!(vm::map_gmem(v.gmem, 0x4000, false), Err(Errno::EFAULT));
    ensure_eq!(read(&mut v, GPA + 0x4000)?, 0x99);
    invariants_clean()?;
    destroy(v)
}

// ---- 2 MiB blocks: relinquish and punch inside one ----------------------------------------------

pub(crate) fn atk_relinquish_and_punch_inside_a_2mib_block() -> TestResult {
    let mut v = make_vm(VmType::Pkvm, 2 * BLOCK, TRACKED, PKVM_SLOT, 3 * 512, true)?;
    for i in 0..4u64 {
        write(&mut v, GPA + i * PAGE_SIZE, 0xa0 + i as u8)?;
    }
    let (base, size) = vm::walk(v.vm, GPA).map_err(e)?;
    ensure_eq!(size, BLOCK);
    let pas: Vec<u64> = (0..4)
        .map(|i| gmem_phys(v.gmem, i * PAGE_SIZE))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    ensure_eq!(pas[0], base);
    // Relinquish page 1: it goes back to the host, zeroed; the block is unmapped whole.
    ensure_eq!(
        hvc_result(&mut v, MEM_RELINQUISH, [GPA + PAGE_SIZE, 0, 0])?[0],
        SMCCC_SUCCESS
    );
    ensure!(
        host_page_is_zero(pas[1])?,
        "the relinquished page is not zero"
    );
    probe_write(pas[1] as usize, 0xee).map_err(|f| format!("{f:?}"))?;
    for i in [0usize, 2, 3] {
        ensure!(
            probe_read(pas[i] as usize).is_err(),
            "host reads page {i} of the block"
        );
    }
    ensure_eq!(read(&mut v, GPA)?, 0xa0);
    // Page 1 is a fresh page, not the one the host now owns (and wrote).
    ensure_eq!(read(&mut v, GPA + PAGE_SIZE)?, 0);
    ensure!(
        gmem_phys(v.gmem, PAGE_SIZE) != Ok(pas[1]),
        "the guest got the host's page back"
    );
    // The host punches page 2: the guest reads zero there, its other pages are intact, the
    // old page is out of everyone's reach but the hyp's.
    vm::punch(v.gmem, 2 * PAGE_SIZE, PAGE_SIZE).map_err(e)?;
    ensure!(
        probe_read(pas[2] as usize).is_err(),
        "host reads the punched page"
    );
    ensure_eq!(read(&mut v, GPA + 2 * PAGE_SIZE)?, 0);
    ensure_eq!(read(&mut v, GPA + 3 * PAGE_SIZE)?, 0xa3);
    ensure_eq!(read(&mut v, GPA + 511 * PAGE_SIZE)?, 0);
    invariants_clean()?;
    destroy(v)
}

// ---- pools: Donate, PoolReclaim, PoolStats -------------------------------------------------------

pub(crate) fn atk_pool_reclaim_never_hands_out_a_page_in_use() -> TestResult {
    let mut v = pkvm(64, 120)?;
    ensure_eq!(
        step(&mut v, OP_TOUCH, [GPA, 40, PAGE_SIZE, 0])?.status,
        Some(STATUS_OK)
    );
    let used: Vec<u64> = (0..40)
        .map(|i| gmem_phys(v.gmem, i * PAGE_SIZE))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let stats = |vm: VmId| -> Result<(u64, u64), String> {
        let r = hvc::call(HostCall::PoolStats, [vm.0, 0, 0, 0, 0, 0]).map_err(e)?;
        Ok((r[0], r[1]))
    };
    let (loose, chunks) = stats(v.vm)?;
    ensure_eq!(chunks, 0);
    let mut got = Vec::new();
    loop {
        match hvc::call(HostCall::PoolReclaim, [v.vm.0, 0, 0, 0, 0, 0]) {
            Ok(r) => got.push(r[0]),
            Err(Errno::ENOENT) => break,
            Err(x) => return Err(e(x)),
        }
        ensure!(got.len() <= 200, "PoolReclaim does not stop");
    }
    ensure_eq!(got.len() as u64, loose);
    ensure_eq!(stats(v.vm)?, (0, 0));
    for &pa in &got {
        ensure!(
            !used.contains(&pa),
            "PoolReclaim returned guest page 0x{pa:x}"
        );
        ensure!(
            host_page_is_zero(pa)?,
            "reclaimed page 0x{pa:x} is not zero"
        );
        // The host owns it now: it may write it, and the guest does not see it.
        probe_write(pa as usize, 0xcc).map_err(|f| format!("{f:?}"))?;
    }
    ensure_eq!(
        hvc::call(HostCall::PoolReclaim, [v.vm.0, 1, 0, 0, 0, 0]),
        Err(Errno::ENOENT)
    );
    ensure_eq!(
        hvc::call(HostCall::PoolReclaim, [v.vm.0, 2, 0, 0, 0, 0]),
        Err(Errno::EINVAL)
    );
    ensure_eq!(
        hvc::call(HostCall::PoolReclaim, [u64::MAX, 0, 0, 0, 0, 0]),
        Err(Errno::ENOENT)
    );
    ensure_eq!(
        hvc::call(HostCall::PoolStats, [1 << 32 | v.vm.0, 0, 0, 0, 0, 0]),
        Err(Errno::ENOENT)
    );
    invariants_clean()?;
    // The guest's memory is intact; an empty pool just makes it ask for pages again.
    for i in 0..40u64 {
        ensure_eq!(read(&mut v, GPA + i * PAGE_SIZE)?, 1);
    }
    let r = step(&mut v, OP_WRITE, [GPA + 50 * PAGE_SIZE, 5, 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure!(r.topped_up > 0, "no NeedPages with an empty pool");
    // Pages the host got back cannot be donated twice or named as someone else's.
    let reclaimed = got[0];
    vm::donate(v.vm, reclaimed, 1).map_err(e)?;
    ensure_eq!(vm::donate(v.vm, reclaimed, 1), Err(Errno::EPERM));
    ensure_eq!(vm::donate(v.vm, used[3], 1), Err(Errno::EPERM));
    invariants_clean()?;
    destroy(v)
}

// ---- hostile arguments ---------------------------------------------------------------------------

pub(crate) fn atk_hostile_and_wrapping_arguments_are_refused_and_change_nothing() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA + 0x1000, 0x61)?;
    let before = vm::stats(v.vm).map_err(e)?;
    let g = v.gmem.0;
    let vmh = v.vm.0;
    let call = |c: HostCall, a: [u64; 6]| hvc::call(c, a).map(|_| ());
    let page_max: u64 = !0xfff;
    let (ram_base, ram_size) = vm::ram().map_err(e)?;
    let cases: [(&str, HostCall, [u64; 6], Errno); 24] = [
        (
            "walk beyond the IPA space",
            HostCall::VmWalk,
            [vmh, IPA_LIMIT, 0, 0, 0, 0],
            Errno::ENOENT,
        ),
        (
            "walk at u64::MAX",
            HostCall::VmWalk,
            [vmh, u64::MAX, 0, 0, 0, 0],
            Errno::ENOENT,
        ),
        (
            "walk of a VM handle with high bits",
            HostCall::VmWalk,
            [1 << 32 | vmh, GPA, 0, 0, 0, 0],
            Errno::ENOENT,
        ),
        (
            "phys beyond the file",
            HostCall::GmemPhys,
            [g, u64::MAX, 0, 0, 0, 0],
            Errno::ENOENT,
        ),
        (
            "serve a fault beyond the IPA space",
            HostCall::ServeFault,
            [vmh, IPA_LIMIT, 1, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "serve a fault at u64::MAX",
            HostCall::ServeFault,
            [vmh, u64::MAX, 0, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "serve a fault at an MMIO IPA",
            HostCall::ServeFault,
            [vmh, 0x9000_0000, 0, 0, 0, 0],
            Errno::EFAULT,
        ),
        (
            "fault mode 2",
            HostCall::VmSetFaultMode,
            [vmh, 2, 0, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "pin beyond the file",
            HostCall::HostPin,
            [g, u64::MAX, 0, 0, 0, 0],
            Errno::EFAULT,
        ),
        (
            "unpin beyond the file",
            HostCall::HostUnpin,
            [g, u64::MAX, 0, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "punch wrapping",
            HostCall::PunchHole,
            [g, page_max, 0x2000, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "punch of size 0",
            HostCall::PunchHole,
            [g, 0, 0, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "convert wrapping",
            HostCall::Convert,
            [g, 0x1000, page_max, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "convert to 2",
            HostCall::Convert,
            [g, 0, 0x1000, 2, 0, 0],
            Errno::EINVAL,
        ),
        (
            "attributes wrapping",
            HostCall::SetMemoryAttributes,
            [vmh, page_max, 0x2000, 8, 0, 0],
            Errno::EINVAL,
        ),
        (
            "attributes with unknown bits",
            HostCall::SetMemoryAttributes,
            [vmh, GPA, 0x1000, 1, 0, 0],
            Errno::EINVAL,
        ),
        (
            "memslot wrapping",
            HostCall::MemslotCreate,
            [vmh, page_max, 0x2000, g, 0, PKVM_SLOT.bits()],
            Errno::EINVAL,
        ),
        (
            "memslot with a bad uaddr kind",
            HostCall::MemslotCreate,
            [vmh, 0x9000_0000, 0x1000, g, 0, 7 << 32],
            Errno::EINVAL,
        ),
        (
            "donate across the end of RAM",
            HostCall::Donate,
            [vmh, ram_base + ram_size - 0x1000, 2, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "donate a wrapping run",
            HostCall::Donate,
            [vmh, page_max, 2, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "donate 0 pages",
            HostCall::Donate,
            [vmh, ram_base + ram_size - 0x1000, 0, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "host pages shared into a pkvm VM",
            HostCall::MapHostShared,
            [vmh, 0x2_0000_0000, ram_base + ram_size - 0x1000, 1, 0, 0],
            Errno::EPERM,
        ),
        (
            "a file of 2^49 bytes",
            HostCall::GmemCreate,
            [vmh, 1 << 49, TRACKED.bits(), 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "run a vCPU that does not exist",
            HostCall::VcpuRun,
            [u64::MAX, 0, 0, 0, 0, 0],
            Errno::ENOENT,
        ),
    ];
    for (name, c, a, want) in cases {
        let got = call(c, a);
        ensure!(
            got == Err(want),
            "{name}: {c:?} answered {got:?}, not {want}"
        );
    }
    // Handles that name nothing.
    for c in [
        HostCall::VmDestroy,
        HostCall::VmStats,
        HostCall::PoolStats,
        HostCall::VmOpenPmu,
    ] {
        ensure_eq!(call(c, [1 << 32 | vmh, 0, 0, 0, 0, 0]), Err(Errno::ENOENT));
    }
    ensure_eq!(
        call(HostCall::GmemDestroy, [1 << 32 | g, 0, 0, 0, 0, 0]),
        Err(Errno::ENOENT)
    );
    ensure_eq!(
        call(HostCall::VcpuCreate, [vmh, IPA_LIMIT, 0, 0, 0, 0]),
        Err(Errno::EINVAL)
    );
    ensure_eq!(
        call(HostCall::VcpuCreate, [vmh, GUEST_CODE_IPA + 2, 0, 0, 0, 0]),
        Err(Errno::EINVAL)
    );
    // Nothing changed: the guest's page is private and intact, the counters are the same.
    ensure_eq!(vm::stats(v.vm).map_err(e)?, before);
    ensure_eq!(vm::map_gmem(v.gmem, 0x1000, false), Err(Errno::EFAULT));
    ensure_eq!(read(&mut v, GPA + 0x1000)?, 0x61);
    invariants_clean()?;
    destroy(v)
}

pub(crate) fn atk_guest_range_calls_with_wrapping_arguments_are_refused_at_el2() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA, 0x21)?;
    let before = vm::stats(v.vm).map_err(e)?;
    let page_max: u64 = !0xfff;
    let invalid = [
        (MEM_SHARE, [page_max, 2, 0]),
        (MEM_SHARE, [IPA_LIMIT - PAGE_SIZE, 2, 0]),
        (MEM_SHARE, [GPA + 15 * PAGE_SIZE, u64::MAX, 0]),
        (MEM_UNSHARE, [GPA - PAGE_SIZE, 2, 0]),
        (MEM_SHARE, [GPA | COCO_SHARED, 1, 0]),
        (MEM_RELINQUISH, [page_max, 0, 0]),
        (MEM_RELINQUISH, [GPA + 1, 0, 0]),
        (MMIO_GUARD_MAP, [0x9000_0000, 0, 0]),
    ];
    for (f, a) in invalid {
        let r = hvc_result(&mut v, f, a)?;
        ensure!(
            r[0] == SMCCC_INVALID_PARAMETER,
            "guest call {f:#x} {a:x?} answered {:#x}",
            r[0]
        );
    }
    // Enrolled in the MMIO guard: ranges that touch guest memory, leave the IPA space or wrap.
    ensure_eq!(
        step(&mut v, OP_MMIO_GUARD, [0; 4])?.results,
        [SMCCC_SUCCESS, SMCCC_SUCCESS]
    );
    for (f, a) in [
        (MMIO_GUARD_MAP_RANGE, [GPA - PAGE_SIZE, 2, 0]),
        (MMIO_GUARD_MAP_RANGE, [IPA_LIMIT - PAGE_SIZE, 2, 0]),
        (MMIO_GUARD_MAP_RANGE, [page_max, 2, 0]),
        (MMIO_GUARD_MAP, [GPA + 0x3000, 0, 0]),
        (MMIO_GUARD_MAP, [GUEST_CODE_IPA, 0, 0]),
    ] {
        let r = hvc_result(&mut v, f, a)?;
        ensure!(
            r[0] == SMCCC_INVALID_PARAMETER,
            "guest call {f:#x} {a:x?} answered {:#x}",
            r[0]
        );
    }
    // None of it reached the host, nothing changed.
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(
        after.exits - before.exits,
        after.mmio_exits - before.mmio_exits
    );
    ensure_eq!(read(&mut v, GPA)?, 0x21);
    ensure_eq!(vm::map_gmem(v.gmem, 0, false), Err(Errno::EFAULT));
    invariants_clean()?;
    destroy(v)
}

// ---- rule 4: one owner per page, one binding per IPA ----------------------------------------------

pub(crate) fn atk_objects_of_one_vm_cannot_be_named_for_another() -> TestResult {
    let mut a = pkvm(16, 48)?;
    let b = pkvm(16, 48)?;
    write(&mut a, GPA + 0x1000, 0x5e)?;
    let secret_pa = gmem_phys(a.gmem, 0x1000).map_err(e)?;
    let spec = |g: GmemId, gpa: u64, off: u64| SlotSpec {
        gpa,
        size: PAGE_SIZE,
        gmem: Some((g, off)),
        uaddr: UserspaceAddr::None,
        flags: PKVM_SLOT,
    };
    // B binds A's file (a fresh VM, before its first run): refused.
    let c = vm::vm_create(VmType::Pkvm).map_err(e)?;
    ensure_eq!(
        vm::memslot_create(c, &spec(a.gmem, GPA, 0x1000)),
        Err(Errno::EINVAL)
    );
    // A binds its own page twice (a second IPA for the same page): refused; C is fresh, so the
    // freeze is not what refuses it.
    let gc = vm::gmem_create(c, 4 * PAGE_SIZE, TRACKED).map_err(e)?;
    vm::memslot_create(c, &spec(gc, GPA, 0)).map_err(e)?;
    ensure_eq!(
        vm::memslot_create(c, &spec(gc, GPA + 0x10_0000, 0)),
        Err(Errno::EINVAL)
    );
    // A's private page donated to B, or shared into a plain VM: refused.
    ensure_eq!(vm::donate(b.vm, secret_pa, 1), Err(Errno::EPERM));
    let p = vm::vm_create(VmType::Plain).map_err(e)?;
    ensure_eq!(
        vm::map_host_shared(p, 0x2_0000_0000, secret_pa, 1),
        Err(Errno::EPERM)
    );
    ensure_eq!(vm::map_gmem(a.gmem, 0x1000, false), Err(Errno::EFAULT));
    ensure!(probe_read(secret_pa as usize).is_err(), "host raw read");
    ensure_eq!(read(&mut a, GPA + 0x1000)?, 0x5e);
    vm::vm_destroy(c).map_err(e)?;
    vm::vm_destroy(p).map_err(e)?;
    destroy(b)?;
    destroy(a)
}

pub(crate) fn atk_coco_shared_alias_and_deleted_slot_reach_no_private_data() -> TestResult {
    let mut v = coco(16, 64)?;
    write(&mut v, GPA + 0x1000, 0x5a)?;
    // The shared alias of a private page: a memory fault, no data.
    let r = step(&mut v, OP_READ, [(GPA + 0x1000) | COCO_SHARED, 0, 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_ABORTED));
    ensure_eq!(r.results[0], 0);
    let (gpa, _, flags) = r
        .memory_fault
        .ok_or("no memory fault at the shared alias")?;
    ensure_eq!(
        (gpa, flags & MemoryFaultFlags::PRIVATE.bits()),
        (GPA + 0x1000, 0)
    );
    ensure_eq!(
        vm::walk(v.vm, (GPA + 0x1000) | COCO_SHARED),
        Err(Errno::ENOENT)
    );
    // Delete the slot (coco memslots are not frozen): the old mapping is gone at once, the
    // guest's access is an MMIO exit the host sees, and it carries no data.
    vm::memslot_delete(v.vm, v.slot).map_err(e)?;
    ensure_eq!(vm::walk(v.vm, GPA + 0x1000), Err(Errno::ENOENT));
    let r = step(&mut v, OP_READ, [GPA + 0x1000, 0, 0, 0])?;
    ensure_eq!(r.mmio, Some((GPA + 0x1000, false, 0)));
    ensure_eq!(vm::map_gmem(v.gmem, 0x1000, false), Err(Errno::EFAULT));
    let pa = gmem_phys(v.gmem, 0x1000).map_err(e)?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host raw read of the unbound page"
    );
    invariants_clean()?;
    vm::vm_destroy(v.vm).map_err(e)?;
    // After teardown the page is the host's again, zeroed.
    ensure!(host_page_is_zero(pa)?, "teardown left the page dirty");
    invariants_clean()
}

pub(crate) fn atk_destroy_with_a_pinned_shared_page_hands_back_only_zeroes() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA + 0x5000, 0x33)?;
    write(&mut v, GPA + 0x6000, 0x34)?;
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA + 0x5000, 1, 0])?.results,
        [SMCCC_SUCCESS, 1]
    );
    let shared = vm::map_gmem(v.gmem, 0x5000, false).map_err(e)?;
    vm::pin(v.gmem, 0x5000).map_err(e)?;
    ensure_eq!(probe_read(shared as usize), Ok(0x33));
    let private = gmem_phys(v.gmem, 0x6000).map_err(e)?;
    // The file cannot go while pinned; the VM can, and takes every page back zeroed.
    ensure_eq!(vm::gmem_destroy(v.gmem), Err(Errno::EBUSY));
    vm::vm_destroy(v.vm).map_err(e)?;
    ensure!(
        host_page_is_zero(shared)?,
        "the pinned shared page came back dirty"
    );
    ensure!(
        host_page_is_zero(private)?,
        "a private page came back dirty"
    );
    probe_write(private as usize, 1).map_err(|f| format!("{f:?}"))?;
    ensure_eq!(vm::pin(v.gmem, 0x5000), Err(Errno::ENOENT));
    invariants_clean()
}

// ---- more exits: an MMIO store reports what was stored -------------------------------------------

/// Finishes a step driven by [`raw_until_other_exit`]: completes the exit with `c0` and answers
/// the command device until the STATUS store. -> the status.
pub(crate) fn raw_finish_step(vcpu: VcpuId, mut c0: u64) -> Result<u64, String> {
    for _ in 0..64 {
        let r = run_raw(vcpu, c0);
        c0 = 0;
        if r[0] == ExitReason::Mmio as u64 && r[1] == CMD_DEVICE_IPA + REG_STATUS {
            return Ok(r[4]);
        }
        if r[0] != ExitReason::Mmio as u64 && r[0] != ExitReason::Interrupt as u64 {
            return Err(format!("unexpected exit {r:x?}"));
        }
    }
    Err("the step never ended".into())
}

/// A guest stores one, two or four bytes of a register to MMIO. The exit must carry the stored
/// value (positive control: its low bytes are there) and not the rest of the register (rule 1:
/// "an MMIO access's address, size and stored value ... never the vCPU's other registers";
/// Linux masks the data to the access size).
pub(crate) fn atk_mmio_store_exit_reports_only_the_stored_bytes() -> TestResult {
    let v = pkvm(16, 48)?;
    let value = 0x1122_3344_5566_7788u64;
    let mut leaks = Vec::new();
    for width in [1u64, 2, 4] {
        let mask = (1u64 << (8 * width)) - 1;
        let r = raw_until_other_exit(
            v.guest.vcpu,
            OP_ATK_STORE_NARROW,
            [0x9000_0000, value, width, 0],
        )?;
        ensure_eq!(r[0], ExitReason::Mmio as u64);
        ensure_eq!((r[1], r[2], r[3]), (0x9000_0000, width, 1));
        ensure_eq!(r[4] & mask, value & mask);
        board::println!("    atk: {width}-byte MMIO store: exit data {:#x}", r[4]);
        if r[4] != value & mask {
            leaks.push((width, r[4]));
        }
        ensure_eq!(raw_finish_step(v.guest.vcpu, 0)?, STATUS_OK);
    }
    destroy(v)?;
    ensure!(
        leaks.is_empty(),
        "MMIO store exits carry the whole register, not the stored bytes: {leaks:x?} (width, \
         data) for a store of {value:#x}'s low bytes"
    );
    Ok(())
}

// ---- with the guest running on the other CPU -------------------------------------------------------

/// A coco guest stores into its page on CPU 1 while the host deletes the memslot on CPU 0 (coco
/// memslots are not frozen). The mapping must be gone everywhere at once: the guest's next store
/// is an MMIO exit, and the page stays out of the host's reach.
pub(crate) fn atk_memslot_delete_under_a_running_guest_leaves_no_stale_mapping() -> TestResult {
    let mut v = coco(16, 64)?;
    write(&mut v, GPA + 0x2000, 0x11)?;
    cpu1_start(
        v.guest.vcpu,
        OP_ATK_STORE_LOOP,
        [GPA + 0x2000, 0x5a, 1 << 28, 0],
    )?;
    ensure!(
        wait_for(|| JOB_STATE.load(Ordering::SeqCst) >= 1),
        "the guest never started storing"
    );
    for _ in 0..200_000 {
        core::hint::spin_loop();
    }
    vm::memslot_delete(v.vm, v.slot).map_err(e)?;
    cpu1_finish()?;
    ensure_eq!(JOB_MMIO_IPA.load(Ordering::SeqCst), GPA + 0x2000);
    ensure_eq!(vm::walk(v.vm, GPA + 0x2000), Err(Errno::ENOENT));
    let pa = gmem_phys(v.gmem, 0x2000).map_err(e)?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host raw read of the unbound private page"
    );
    ensure_eq!(vm::map_gmem(v.gmem, 0x2000, false), Err(Errno::EFAULT));
    invariants_clean()?;
    destroy(v)
}

/// While the guest runs on CPU 1, the host tries to tear its VM or file down, or to run the same
/// vCPU a second time: refused (EBUSY), the guest finishes its work, its data is intact.
pub(crate) fn atk_destroy_under_a_running_guest_is_refused() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA, 1)?;
    let stores = 1 << 22;
    cpu1_start(v.guest.vcpu, OP_ATK_STORE_LOOP, [GPA, 0x5a, stores, 0])?;
    ensure!(
        wait_for(|| JOB_STATE.load(Ordering::SeqCst) >= 1),
        "the guest never started storing"
    );
    let d = vm::vm_destroy(v.vm);
    let g = vm::gmem_destroy(v.gmem);
    let r = vm::run(v.guest.vcpu, 0, 0);
    let still_running = JOB_STATE.load(Ordering::SeqCst) == 1;
    cpu1_finish()?;
    ensure!(
        still_running,
        "inconclusive: the guest finished before the attempts ended"
    );
    ensure_eq!(d, Err(Errno::EBUSY));
    ensure_eq!(g, Err(Errno::EBUSY));
    ensure_eq!(r, Err(Errno::EBUSY));
    ensure_eq!(JOB_STATUS.load(Ordering::SeqCst), STATUS_OK);
    ensure_eq!(JOB_RESULTS[0].load(Ordering::SeqCst), stores);
    ensure_eq!(read(&mut v, GPA)?, 0x5a);
    destroy(v)
}

/// PSCI CPU_ON twice in a row for the same CPU (the second while the first is still on its way):
/// the second is refused, the CPU starts once, at EL1 where the host asked, and goes off again.
pub(crate) fn atk_cpu_on_twice_in_a_row_starts_the_cpu_once() -> TestResult {
    const ALREADY_ON: i64 = -4;
    const ON_PENDING: i64 = -5;
    for round in 1..=16 {
        let before = JOB_ENTRIES.load(Ordering::SeqCst);
        cpu1_start(VcpuId(NO_VCPU), 0, [0; 4])?;
        let second = smc(PSCI_CPU_ON_64, 1, cpu1_entry(), cpu1_stack_top());
        ensure!(
            second == ALREADY_ON || second == ON_PENDING,
            "round {round}: the second CPU_ON answered {second}"
        );
        let entered = wait_for(|| JOB_STATE.load(Ordering::SeqCst) == 1);
        let aff = smc(PSCI_AFFINITY_INFO_64, 1, 0, 0);
        let again = smc(PSCI_CPU_ON_64, 1, cpu1_entry(), cpu1_stack_top());
        ensure!(
            entered,
            "round {round}: CPU 1 never reached the host after CPU_ON answered 0 (AFFINITY_INFO \
             now {aff}, a new CPU_ON answers {again})"
        );
        ensure_eq!(aff, 0);
        ensure_eq!(again, ALREADY_ON);
        JOB_RELEASE.store(1, Ordering::SeqCst);
        cpu1_finish()?;
        ensure_eq!(JOB_ENTRIES.load(Ordering::SeqCst) - before, 1);
    }
    Ok(())
}

// ---- rule 4: host-shared pages and memslots never back the same IPA -----------------------------

pub(crate) fn atk_host_shared_pages_and_memslots_never_back_the_same_ipa() -> TestResult {
    const SHARED_IPA: u64 = 0x2_0000_0000;
    let (pa, pa2) = with_pages(|p| {
        Ok((
            p.alloc_contiguous(2, PAGE_SIZE).ok_or("no pages")?,
            p.alloc_contiguous(1, PAGE_SIZE).ok_or("no pages")?,
        ))
    })?;
    let plain = vm::vm_create(VmType::Plain).map_err(e)?;
    let g = vm::gmem_create(plain, 16 * PAGE_SIZE, GmemFlags::MMAP).map_err(e)?;
    let spec = |gpa: u64, size: u64| SlotSpec {
        gpa,
        size,
        gmem: Some((g, 0)),
        uaddr: UserspaceAddr::None,
        flags: PKVM_SLOT,
    };
    vm::memslot_create(plain, &spec(GPA, 16 * PAGE_SIZE)).map_err(e)?;
    vm::map_host_shared(plain, SHARED_IPA, pa, 2).map_err(e)?;
    // A memslot over host-shared pages, host pages over a memslot: EEXIST both ways.
    ensure_eq!(
        vm::memslot_create(plain, &spec(SHARED_IPA + PAGE_SIZE, PAGE_SIZE)),
        Err(Errno::EEXIST)
    );
    ensure_eq!(
        vm::memslot_create(plain, &spec(SHARED_IPA - PAGE_SIZE, 2 * PAGE_SIZE)),
        Err(Errno::EEXIST)
    );
    ensure_eq!(
        vm::map_host_shared(plain, GPA + 15 * PAGE_SIZE, pa2, 1),
        Err(Errno::EEXIST)
    );
    ensure_eq!(
        vm::map_host_shared(plain, SHARED_IPA + PAGE_SIZE, pa2, 1),
        Err(Errno::EEXIST)
    );
    // The same host page twice (another IPA, another VM): it is shared already.
    ensure_eq!(
        vm::map_host_shared(plain, SHARED_IPA + 0x10_0000, pa, 1),
        Err(Errno::EPERM)
    );
    let coco = vm::vm_create(VmType::Coco).map_err(e)?;
    ensure_eq!(
        vm::map_host_shared(coco, SHARED_IPA | COCO_SHARED, pa + PAGE_SIZE, 1),
        Err(Errno::EPERM)
    );
    // coco: host pages at the shared alias only (the IPA carries the shared bit).
    vm::map_host_shared(coco, SHARED_IPA | COCO_SHARED, pa2, 1).map_err(e)?;
    ensure_eq!(
        vm::map_host_shared(coco, SHARED_IPA + PAGE_SIZE, pa2 + PAGE_SIZE, 1),
        Err(Errno::EINVAL)
    );
    let gc = vm::gmem_create(coco, 16 * PAGE_SIZE, TRACKED).map_err(e)?;
    ensure_eq!(
        vm::memslot_create(
            coco,
            &SlotSpec {
                gpa: SHARED_IPA,
                size: PAGE_SIZE,
                gmem: Some((gc, 0)),
                uaddr: UserspaceAddr::None,
                flags: PKVM_SLOT,
            }
        ),
        Err(Errno::EEXIST)
    );
    // The shared pages are never donated while shared.
    ensure_eq!(vm::donate(plain, pa, 1), Err(Errno::EPERM));
    invariants_clean()?;
    vm::vm_destroy(plain).map_err(e)?;
    vm::vm_destroy(coco).map_err(e)?;
    // The host's own again, alone: it may donate them now.
    let again = vm::vm_create(VmType::Plain).map_err(e)?;
    vm::donate(again, pa, 2).map_err(e)?;
    vm::donate(again, pa2, 1).map_err(e)?;
    vm::vm_destroy(again).map_err(e)?;
    invariants_clean()
}

// ---- rule 9: a 2 MiB block only where every page may be taken ----------------------------------

/// A pkvm VM whose data file (INIT_SHARED, 2 MiB) the host has filled, before the guest ran, as
/// one physically contiguous 2 MiB chunk (so a guest fault could map it as one block); the
/// host pins page 7 if `pin`. -> the VM and the physical base of the chunk.
pub(crate) fn init_shared_chunk(pin: bool) -> Result<(Vmx, u64), String> {
    let v = make_vm(
        VmType::Pkvm,
        BLOCK,
        TRACKED | GmemFlags::INIT_SHARED,
        PKVM_SLOT,
        4 * 512,
        true,
    )?;
    // Only whole chunks left in the pool: the host's first page breaks one, and pages come
    // back from it in order.
    while hvc::call(HostCall::PoolReclaim, [v.vm.0, 0, 0, 0, 0, 0]).is_ok() {}
    let mut base = 0;
    for i in 0..512u64 {
        let pa = vm::map_gmem(v.gmem, i * PAGE_SIZE, true).map_err(e)?;
        if i == 0 {
            base = pa;
        }
        ensure_eq!(pa, base + i * PAGE_SIZE);
    }
    ensure_eq!(base % BLOCK, 0);
    let p7 = base + 7 * PAGE_SIZE;
    probe_write(p7 as usize, 0x77).map_err(|f| format!("{f:?}"))?;
    if pin {
        vm::pin(v.gmem, 7 * PAGE_SIZE).map_err(e)?;
    }
    Ok((v, base))
}

pub(crate) fn atk_a_pinned_page_keeps_a_2mib_block_from_being_taken() -> TestResult {
    // Control: nothing pinned, the guest's first touch maps (and takes) the whole block.
    let (mut c, base) = init_shared_chunk(false)?;
    ensure_eq!(read(&mut c, GPA)?, 0);
    ensure_eq!(vm::walk(c.vm, GPA), Ok((base, BLOCK)));
    ensure!(
        probe_read((base + 7 * PAGE_SIZE) as usize).is_err(),
        "control: page 7 not taken"
    );
    ensure_eq!(read(&mut c, GPA + 7 * PAGE_SIZE)?, 0x77);
    destroy(c)?;
    // Page 7 pinned: the touch of page 0 takes page 0 alone; page 7 stays the host's.
    let (mut v, base) = init_shared_chunk(true)?;
    ensure_eq!(read(&mut v, GPA)?, 0);
    ensure_eq!(vm::walk(v.vm, GPA), Ok((base, PAGE_SIZE)));
    ensure_eq!(vm::walk(v.vm, GPA + 7 * PAGE_SIZE), Err(Errno::ENOENT));
    ensure!(probe_read(base as usize).is_err(), "page 0 not taken");
    ensure_eq!(probe_read((base + 7 * PAGE_SIZE) as usize), Ok(0x77));
    let r = step(&mut v, OP_READ, [GPA + 7 * PAGE_SIZE, 0, 0, 0])?;
    ensure!(
        r.memory_fault.is_some(),
        "the pinned page was mapped: {r:?}"
    );
    ensure_eq!(probe_read((base + 7 * PAGE_SIZE) as usize), Ok(0x77));
    invariants_clean()?;
    destroy(v)
}

// ---- rule 10: only the hyp talks to the firmware; no device for a guest --------------------------

/// A guest's SMCs (PSCI CPU_ON of the host's other CPU, SYSTEM_OFF, SYSTEM_RESET, anything) are
/// answered NOT_SUPPORTED and reach no firmware: the other CPU stays off and the run goes on.
/// Its accesses to the physical addresses of the board's devices are MMIO exits to the host,
/// which sees no device behind them (the guest's stage-2 maps no device).
pub(crate) fn atk_guest_reaches_neither_firmware_nor_devices() -> TestResult {
    use smccc::psci::{PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION};
    let mut v = pkvm(16, 48)?;
    ensure_eq!(smc(PSCI_AFFINITY_INFO_64, 1, 0, 0), 1);
    for (f, a) in [
        (PSCI_CPU_ON_64, [1, cpu1_entry(), cpu1_stack_top()]),
        (PSCI_VERSION, [0, 0, 0]),
        (PSCI_SYSTEM_RESET, [0, 0, 0]),
        (PSCI_SYSTEM_OFF, [0, 0, 0]),
        (0xC200_0000, [1, 2, 3]),
    ] {
        let r = step(&mut v, OP_ATK_SMC, [u64::from(f), a[0], a[1], a[2]])?;
        ensure_eq!(r.status, Some(STATUS_OK));
        ensure!(
            r.results[0] == SMCCC_NOT_SUPPORTED,
            "guest SMC {f:#x} answered {:#x}",
            r.results[0]
        );
    }
    // CPU 1 never started.
    for _ in 0..1_000_000 {
        core::hint::spin_loop();
    }
    ensure_eq!(smc(PSCI_AFFINITY_INFO_64, 1, 0, 0), 1);
    ensure_eq!(JOB_STATE.load(Ordering::SeqCst), 2);
    // The same calls over HVC: unknown to the hyp, NOT_SUPPORTED.
    for f in [PSCI_CPU_ON_64, PSCI_SYSTEM_OFF] {
        let r = hvc_result(&mut v, u64::from(f), [1, cpu1_entry(), 0])?;
        ensure_eq!(r[0], SMCCC_NOT_SUPPORTED);
    }
    // The console, fw_cfg (and its DMA register), the GIC, flash: MMIO exits the host answers.
    v.guest.mmio_read_value = 0xab;
    for ipa in [0x0900_0018u64, 0x0902_0010, 0x0902_0000, 0x0800_0000, 0x0] {
        let r = step(&mut v, OP_READ, [ipa, 0, 0, 0])?;
        ensure_eq!(r.mmio, Some((ipa, false, 0)));
        ensure_eq!(r.results[0], 0xab);
        let w = step(&mut v, OP_WRITE, [ipa, 0x5a, 0, 0])?;
        ensure_eq!(w.mmio, Some((ipa, true, 0x5a)));
    }
    destroy(v)
}

// ---- calls twice, in odd orders, after teardown ----------------------------------------------

pub(crate) fn atk_calls_twice_in_odd_orders_and_after_teardown_change_nothing() -> TestResult {
    let mut v = pkvm(16, 48)?;
    write(&mut v, GPA + 0x1000, 0x41)?;
    let (vm_id, vcpu, gmem, slot) = (v.vm, v.guest.vcpu, v.gmem, v.slot);
    // Pins and unpins of a shared page, twice and once too often.
    ensure_eq!(
        step(&mut v, OP_MEM_RANGE, [MEM_SHARE, GPA + 0x1000, 1, 0])?.results,
        [SMCCC_SUCCESS, 1]
    );
    vm::pin(gmem, 0x1000).map_err(e)?;
    vm::pin(gmem, 0x1000).map_err(e)?;
    vm::unpin(gmem, 0x1000).map_err(e)?;
    // Still pinned once.
    ensure_eq!(vm::punch(gmem, 0x1000, PAGE_SIZE), Err(Errno::EBUSY));
    vm::unpin(gmem, 0x1000).map_err(e)?;
    ensure_eq!(vm::unpin(gmem, 0x1000), Err(Errno::EINVAL));
    // Conversions of a page already in the target state: nothing to do, content kept.
    vm::convert(
        gmem,
        0x2000,
        PAGE_SIZE,
        ConvertTo::Private,
        ContentMode::Preserve,
    )
    .map_err(|(x, _)| e(x))?;
    ensure_eq!(
        vm::convert(
            gmem,
            0x2000,
            PAGE_SIZE,
            ConvertTo::Private,
            ContentMode::Zero
        ),
        Err((Errno::EOPNOTSUPP, 0))
    );
    let pa = vm::map_gmem(gmem, 0x1000, false).map_err(e)?;
    ensure_eq!(probe_read(pa as usize), Ok(0x41));
    // The host takes the shared page back to private (allowed): the guest still reads its data.
    vm::convert(
        gmem,
        0x1000,
        PAGE_SIZE,
        ConvertTo::Private,
        ContentMode::Preserve,
    )
    .map_err(|(x, _)| e(x))?;
    vm::convert(
        gmem,
        0x1000,
        PAGE_SIZE,
        ConvertTo::Private,
        ContentMode::Preserve,
    )
    .map_err(|(x, _)| e(x))?;
    ensure!(
        probe_read(pa as usize).is_err(),
        "host reads a page it made private"
    );
    ensure_eq!(read(&mut v, GPA + 0x1000)?, 0x41);
    // ... and cannot make it shared again: only the guest can.
    ensure_eq!(
        vm::convert_with(gmem, 0x1000, PAGE_SIZE, ConvertTo::Shared, None),
        Err((Errno::EPERM, 0))
    );
    // Punch twice: the second has nothing to free.
    vm::punch(gmem, 0x3000, PAGE_SIZE).map_err(e)?;
    vm::punch(gmem, 0x3000, PAGE_SIZE).map_err(e)?;
    // Teardown, then everything again on the dead handles.
    let returned = vm::vm_destroy(vm_id).map_err(e)?;
    ensure!(returned > 0, "nothing came back");
    ensure!(host_page_is_zero(pa)?, "a page came back dirty");
    ensure_eq!(vm::vm_destroy(vm_id), Err(Errno::ENOENT));
    ensure_eq!(vm::gmem_destroy(gmem), Err(Errno::ENOENT));
    ensure_eq!(vm::memslot_delete(vm_id, slot), Err(Errno::ENOENT));
    ensure_eq!(vm::run(vcpu, 0, 0), Err(Errno::ENOENT));
    ensure_eq!(vm::guest_convert(vcpu), Err((Errno::ENOENT, 0)));
    ensure_eq!(
        vm::vcpu_create(vm_id, GUEST_CODE_IPA, 0),
        Err(Errno::ENOENT)
    );
    ensure_eq!(vm::map_gmem(gmem, 0x1000, false), Err(Errno::ENOENT));
    ensure_eq!(vm::pin(gmem, 0x1000), Err(Errno::ENOENT));
    ensure_eq!(vm::punch(gmem, 0, PAGE_SIZE), Err(Errno::ENOENT));
    ensure_eq!(
        vm::convert(
            gmem,
            0,
            PAGE_SIZE,
            ConvertTo::Private,
            ContentMode::Preserve
        ),
        Err((Errno::ENOENT, 0))
    );
    ensure_eq!(
        vm::set_attributes(vm_id, GPA, PAGE_SIZE, true),
        Err(Errno::ENOENT)
    );
    ensure_eq!(
        vm::gmem_create(vm_id, PAGE_SIZE, TRACKED),
        Err(Errno::ENOENT)
    );
    let host_pa = with_pages(|p| p.alloc().ok_or_else(|| String::from("no page")))?;
    ensure_eq!(vm::donate(vm_id, host_pa, 1), Err(Errno::ENOENT));
    ensure_eq!(
        hvc::call(HostCall::PoolReclaim, [vm_id.0, 0, 0, 0, 0, 0]).map(|_| ()),
        Err(Errno::ENOENT)
    );
    ensure_eq!(vm::serve_fault(vm_id, GPA, true), Err(Errno::ENOENT));
    // The host still owns its page (the refused donation changed nothing).
    probe_write(host_pa as usize, 1).map_err(|f| format!("{f:?}"))?;
    invariants_clean()
}

register!(
    atk_control_coco_host_convert_to_shared_zeroes_a_quiet_page,
    atk_coco_host_convert_to_shared_while_the_guest_still_writes_leaks_nothing,
    atk_guest_exception_exit_reports_only_the_class,
    atk_forwarded_share_result_ignores_the_hosts_claims,
    atk_pkvm_first_touch_takes_an_init_shared_page_the_host_wrote,
    atk_pkvm_memslots_are_frozen_after_the_first_run,
    atk_host_keeps_no_stale_access_after_the_guest_unshares,
    atk_relinquish_and_punch_inside_a_2mib_block,
    atk_pool_reclaim_never_hands_out_a_page_in_use,
    atk_hostile_and_wrapping_arguments_are_refused_and_change_nothing,
    atk_guest_range_calls_with_wrapping_arguments_are_refused_at_el2,
    atk_objects_of_one_vm_cannot_be_named_for_another,
    atk_coco_shared_alias_and_deleted_slot_reach_no_private_data,
    atk_destroy_with_a_pinned_shared_page_hands_back_only_zeroes,
    atk_mmio_store_exit_reports_only_the_stored_bytes,
    atk_memslot_delete_under_a_running_guest_leaves_no_stale_mapping,
    atk_destroy_under_a_running_guest_is_refused,
    atk_cpu_on_twice_in_a_row_starts_the_cpu_once,
    atk_host_shared_pages_and_memslots_never_back_the_same_ipa,
    atk_a_pinned_page_keeps_a_2mib_block_from_being_taken,
    atk_guest_reaches_neither_firmware_nor_devices,
    atk_calls_twice_in_odd_orders_and_after_teardown_change_nothing,
);
