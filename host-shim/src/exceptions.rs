//! The host's EL1 exception vectors. An abort the hyp injects (the host touched a page it may not
//! see) or an undefined instruction it injects (an SVE instruction, a register it does not give
//! the host) lands here: inside a probe ([`probe_read`], [`probe_write`], [`probed_asm!`]) any
//! synchronous exception of the probed instruction is returned as [`HostFault`] (how the host
//! shim's software paths report `sigbus`, `abort` and `undef`) and the instruction is skipped;
//! anywhere else it is a decoded crash report and a failing exit.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use trap_frame::{
    frame_asm, restore_frame_eret, save_frame, vector_entry, vector_table, TrapFrame,
};

/// The kinds the host's vector entries put in [`TrapFrame::kind`].
const KIND_SP0: u64 = 0;
const KIND_SYNC: u64 = 1;
const KIND_ASYNC: u64 = 2;
const KIND_LOWER: u64 = 3;

// The 16 entries: current EL with SP_EL0 (any), current EL with SP_EL1 (synchronous, then IRQ,
// FIQ, SError), lower EL in AArch64 and AArch32 (any).
frame_asm!(
    "    .section .text.vectors, \"ax\"",
    "    .global host_vectors",
    vector_table!("host_vectors"),
    vector_entry!("{k_sp0}", "host_trap_common"),
    vector_entry!("{k_sp0}", "host_trap_common"),
    vector_entry!("{k_sp0}", "host_trap_common"),
    vector_entry!("{k_sp0}", "host_trap_common"),
    vector_entry!("{k_sync}", "host_trap_common"),
    vector_entry!("{k_async}", "host_trap_common"),
    vector_entry!("{k_async}", "host_trap_common"),
    vector_entry!("{k_async}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    vector_entry!("{k_lower}", "host_trap_common"),
    "host_trap_common:",
    save_frame!("el1"),
    "    bl      host_handle_exception",
    restore_frame_eret!("el1");
    k_sp0 = const KIND_SP0,
    k_sync = const KIND_SYNC,
    k_async = const KIND_ASYNC,
    k_lower = const KIND_LOWER,
);

/// Installs the vectors in `VBAR_EL1`.
pub fn install() {
    extern "C" {
        static host_vectors: u8;
    }
    let base = core::ptr::addr_of!(host_vectors) as u64;
    // SAFETY: VBAR_EL1 takes the 2 KiB-aligned table placed by the linker; `isb` makes it live.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) base, options(nostack)) };
}

/// What the vector saw when a probed access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFault {
    pub esr: u64,
    pub far: u64,
}

impl HostFault {
    /// The exception class.
    pub fn ec(&self) -> u64 {
        trap_frame::esr::ec(self.esr)
    }
}

static PROBE_ARMED: AtomicBool = AtomicBool::new(false);
static PROBE_HIT: AtomicBool = AtomicBool::new(false);
static PROBE_ESR: AtomicU64 = AtomicU64::new(0);
static PROBE_FAR: AtomicU64 = AtomicU64::new(0);
/// Where a probed exception returns to (written by [`probed_asm!`] just before its instruction;
/// 0: the instruction after the faulting one).
static PROBE_RESUME: AtomicU64 = AtomicU64::new(0);

/// Arms the probe for the next instruction(s) (see [`probed_asm!`]).
pub fn arm() {
    PROBE_HIT.store(false, Ordering::Relaxed);
    PROBE_RESUME.store(0, Ordering::Relaxed);
    PROBE_ARMED.store(true, Ordering::Relaxed);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// The slot [`probed_asm!`] writes its resume address into.
pub fn resume_slot() -> *const AtomicU64 {
    &PROBE_RESUME
}

/// Disarms the probe: the exception the probed instruction took, if any.
pub fn disarm() -> Option<HostFault> {
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    PROBE_ARMED.store(false, Ordering::Relaxed);
    PROBE_RESUME.store(0, Ordering::Relaxed);
    PROBE_HIT.swap(false, Ordering::Relaxed).then(|| HostFault {
        esr: PROBE_ESR.load(Ordering::Relaxed),
        far: PROBE_FAR.load(Ordering::Relaxed),
    })
}

/// Runs `asm!` instructions under the probe: a synchronous exception taken by any of them
/// (an injected undefined instruction or abort, a fetch from where nothing executes) returns to
/// the end of the block (label `2:`) and comes back as `Err(HostFault)`. Operands must be named
/// or explicit registers. Must be used inside `unsafe`.
#[macro_export]
macro_rules! probed_asm {
    ($($insn:literal),+ $(; $($ops:tt)*)?) => {{
        $crate::exceptions::arm();
        core::arch::asm!(
            "adr {probe_t}, 2f",
            "str {probe_t}, [{probe_slot}]",
            $($insn,)+
            "2:",
            probe_slot = in(reg) $crate::exceptions::resume_slot(),
            probe_t = out(reg) _,
            $($($ops)*)?
        );
        $crate::exceptions::disarm().map_or(Ok(()), Err)
    }};
}

/// Reads one byte at physical address `pa` (the host runs with its stage-1 MMU off, so
/// addresses are IPAs of the host stage-2). An abort is returned, not fatal.
pub fn probe_read(pa: usize) -> Result<u8, HostFault> {
    arm();
    let v: u64;
    // SAFETY: one byte load; a fault on it is caught by the armed vector, which skips it.
    unsafe {
        asm!("ldrb {v:w}, [{a}]", a = in(reg) pa, v = out(reg) v, options(nostack, readonly))
    };
    disarm().map_or(Ok(v as u8), Err)
}

/// Writes one byte at physical address `pa`; an abort is returned, not fatal.
pub fn probe_write(pa: usize, value: u8) -> Result<(), HostFault> {
    arm();
    // SAFETY: one byte store; a fault on it is caught by the armed vector, which skips it.
    unsafe {
        asm!("strb {v:w}, [{a}]", a = in(reg) pa, v = in(reg) u32::from(value), options(nostack))
    };
    disarm().map_or(Ok(()), Err)
}

/// Runs `f`, which issues one instruction that may fault (an `HLT`, a system register
/// access), under the probe: a synchronous exception taken at EL1 is returned, and the
/// instruction that took it is skipped.
pub fn probe<R>(f: impl FnOnce() -> R) -> Result<R, HostFault> {
    arm();
    let r = f();
    disarm().map_or(Ok(r), Err)
}

/// Issues one SMC from the host (x0 = `func`, x1..x3 = `args`) -> x0..x3 as they came back. An
/// exception the SMC raised at EL1 (an undefined instruction, say) is returned, not fatal.
pub fn probe_smc(func: u64, args: [u64; 3]) -> Result<[u64; 4], HostFault> {
    arm();
    // `hvc::smc` is one SMC (SMCCC: x0..x17 may come back changed, all declared); an exception
    // on it is caught by the armed vector, which skips it (x0..x3 then read as they went in).
    let r = crate::hvc::smc(func, args);
    disarm().map_or(Ok(r), Err)
}

/// A function the EL1 test harness installs to report a crash as the current test's failure.
pub type CrashHook = fn(fmt::Arguments);
static CRASH_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs the crash hook.
pub fn set_crash_hook(hook: CrashHook) {
    CRASH_HOOK.store(hook as usize, Ordering::Release);
}

/// Runs the crash hook (if any) with `reason`.
pub fn run_crash_hook(reason: fmt::Arguments) {
    let raw = CRASH_HOOK.swap(0, Ordering::AcqRel);
    if raw != 0 {
        // SAFETY: the only non-zero value ever stored is a `CrashHook` fn pointer.
        let hook: CrashHook = unsafe { core::mem::transmute::<usize, CrashHook>(raw) };
        hook(reason);
    }
}

#[no_mangle]
extern "C" fn host_handle_exception(frame: &mut TrapFrame) {
    let (esr, far): (u64, u64);
    // SAFETY: reading the EL1 syndrome registers has no side effects.
    unsafe {
        asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far, options(nomem, nostack));
    }
    if frame.kind == KIND_SYNC && PROBE_ARMED.swap(false, Ordering::Relaxed) {
        PROBE_ESR.store(esr, Ordering::Relaxed);
        PROBE_FAR.store(far, Ordering::Relaxed);
        PROBE_HIT.store(true, Ordering::Relaxed);
        frame.elr = match PROBE_RESUME.swap(0, Ordering::Relaxed) {
            0 => frame.elr + 4,
            resume => resume,
        };
        return;
    }
    let from = match frame.kind {
        KIND_SP0 => "EL1 on SP_EL0",
        KIND_SYNC => "EL1 (synchronous)",
        KIND_ASYNC => "EL1 (interrupt)",
        KIND_LOWER => "EL0",
        _ => "?",
    };
    board::eprintln_emergency!(
        "\n*** host: unexpected exception from {}: EC 0x{:02x} ESR_EL1 0x{:08x} ELR_EL1 0x{:x} FAR_EL1 0x{:x}",
        from,
        trap_frame::esr::ec(esr),
        esr,
        frame.elr,
        far
    );
    run_crash_hook(format_args!(
        "exception at {}: EC 0x{:02x} (ESR 0x{:x}, ELR 0x{:x}, FAR 0x{:x})",
        from,
        trap_frame::esr::ec(esr),
        esr,
        frame.elr,
        far
    ));
    crate::verdict::crash()
}
