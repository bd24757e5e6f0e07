//! The host's EL1 exception vectors. An abort the hyp injects (the host touched a page it may not
//! see) or an undefined instruction it injects (an SVE instruction, a register it does not give
//! the host) lands here: inside a probe ([`probe_read`], [`probe_write`], [`probed_asm!`]) any
//! synchronous exception of the probed instruction is returned as [`HostFault`] (how the host
//! shim's software paths report `sigbus`, `abort` and `undef`) and the instruction is skipped;
//! anywhere else it is a decoded crash report and a failing exit.

use core::arch::asm;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[repr(C)]
struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    kind: u64,
}

core::arch::global_asm!(
    r#"
.macro hslot kind
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x1, #\kind
    b       host_trap_common
.endm
    .section .text.vectors, "ax"
    .balign 0x800
    .global host_vectors
host_vectors:
    hslot 0
    hslot 0
    hslot 0
    hslot 0
    hslot 1
    hslot 2
    hslot 2
    hslot 2
    hslot 3
    hslot 3
    hslot 3
    hslot 3
    hslot 3
    hslot 3
    hslot 3
    hslot 3
host_trap_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #{elr}]
    str     x1, [sp, #{kind}]
    mov     x0, sp
    bl      host_handle_exception
    ldp     x2, x3, [sp, #{elr}]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const size_of::<Frame>(),
    elr = const offset_of!(Frame, elr),
    kind = const offset_of!(Frame, kind),
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
        (self.esr >> 26) & 0x3f
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
    let (r0, r1, r2, r3);
    arm();
    // SAFETY: one SMC; whoever answers it (the hyp, which traps it, or the firmware) writes
    // x0..x3 only; an exception on it is caught by the armed vector, which skips it.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") func => r0,
            inout("x1") args[0] => r1,
            inout("x2") args[1] => r2,
            inout("x3") args[2] => r3,
            // SMCCC before 1.1 lets the callee clobber these.
            lateout("x4") _, lateout("x5") _, lateout("x6") _, lateout("x7") _,
            lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
            lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
            lateout("x16") _, lateout("x17") _,
            options(nostack)
        )
    };
    disarm().map_or(Ok([r0, r1, r2, r3]), Err)
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
extern "C" fn host_handle_exception(frame: &mut Frame) {
    let (esr, far): (u64, u64);
    // SAFETY: reading the EL1 syndrome registers has no side effects.
    unsafe {
        asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far, options(nomem, nostack));
    }
    if frame.kind == 1 && PROBE_ARMED.swap(false, Ordering::Relaxed) {
        PROBE_ESR.store(esr, Ordering::Relaxed);
        PROBE_FAR.store(far, Ordering::Relaxed);
        PROBE_HIT.store(true, Ordering::Relaxed);
        frame.elr = match PROBE_RESUME.swap(0, Ordering::Relaxed) {
            0 => frame.elr + 4,
            resume => resume,
        };
        return;
    }
    let from = [
        "EL1 on SP_EL0",
        "EL1 (synchronous)",
        "EL1 (interrupt)",
        "EL0",
    ]
    .get(frame.kind as usize)
    .copied()
    .unwrap_or("?");
    board::eprintln_emergency!(
        "\n*** host: unexpected exception from {}: EC 0x{:02x} ESR_EL1 0x{:08x} ELR_EL1 0x{:x} FAR_EL1 0x{:x}",
        from,
        (esr >> 26) & 0x3f,
        esr,
        frame.elr,
        far
    );
    run_crash_hook(format_args!(
        "exception at {}: EC 0x{:02x} (ESR 0x{:x}, ELR 0x{:x}, FAR 0x{:x})",
        from,
        (esr >> 26) & 0x3f,
        esr,
        frame.elr,
        far
    ));
    crate::verdict::crash()
}
