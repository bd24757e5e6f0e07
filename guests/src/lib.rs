//! Shared pieces of guest payloads: boot, the EL1 vectors that turn an injected abort or an
//! exception of the guest's own into a status the host can see, and MMIO accessors that always
//! produce a valid syndrome (plain `ldr`/`str`, no writeback), so the hyp can decode them.
//!
//! Boot enables FP/SIMD at EL1 (`CPACR_EL1.FPEN`) and SVE and SME (`ZEN`, `SMEN`), although the
//! hyp hides the latter two: an SVE or SME instruction then reaches the hyp's trap, which answers
//! it with an undefined instruction. The guest is built soft-float, so only the register probes
//! touch FP registers.
#![no_std]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// ESR_EL1 of the last exception the guest took (0 = none since the last [`take_exception`]).
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
/// Where the next exception returns to (0: the instruction after the one that took it). Set
/// by [`guarded_asm!`] just before its instruction, so even a faulting branch target comes back.
static RESUME: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mov     x19, x0
    // Touch every page of the image once (code, data, stack), so all of the guest's own
    // faults happen before its first command: what a step then counts is the step's own.
    ldr     x9, =__image_start
    ldr     x10, =__stack_top
0:  ldrb    w11, [x9]
    add     x9, x9, #4096
    cmp     x9, x10
    b.lo    0b
    ldr     x9, =__stack_top
    mov     sp, x9
    ldr     x9, =__bss_start
    ldr     x10, =__bss_end
1:  cmp     x9, x10
    b.hs    2f
    str     xzr, [x9], #8
    b       1b
2:  ldr     x9, =guest_vectors
    msr     vbar_el1, x9
    // CPACR_EL1: FPEN, ZEN, SMEN. The hyp's ID registers tell this guest it has no SVE or SME;
    // it enables them anyway (as a hostile guest would), so their instructions reach the
    // hyp's trap (the fields are ignored where the CPU lacks the feature).
    mov     x10, #0x300000
    orr     x10, x10, #0x30000
    orr     x10, x10, #0x3000000
    msr     cpacr_el1, x10
    isb
    mov     x0, x19
    bl      guest_main
3:  wfi
    b       3b

    .section .text.vectors, "ax"
    .balign 0x800
guest_vectors:
    .rept 16
    .balign 0x80
    b       guest_exception
    .endr

// Saves every caller-saved register (the handler is a Rust call), records the syndrome and
// returns to where the handler says (after the faulting instruction, or a guarded block's end).
guest_exception:
    sub     sp, sp, #176
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x29, [sp, #144]
    str     x30, [sp, #160]
    mrs     x0, esr_el1
    mrs     x1, elr_el1
    bl      guest_record_exception
    msr     elr_el1, x0
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x29, [sp, #144]
    ldr     x30, [sp, #160]
    add     sp, sp, #176
    eret
    .ltorg
"#
);

// The guest runs with its MMU off, so its own memory is Device-nGnRnE: whether the exclusive
// monitors work there is IMPLEMENTATION DEFINED, so the guest uses no read-modify-write atomics
// (`swap` would be an exclusive pair). One CPU, and the guest takes exceptions only in the
// instructions it runs guarded (or the host's code it runs), never inside these helpers with
// interrupts unmasked: a load and a store suffice.

/// `slot`'s value, leaving 0 in it.
fn take(slot: &AtomicU64) -> u64 {
    let v = slot.load(Ordering::Relaxed);
    slot.store(0, Ordering::Relaxed);
    v
}

#[no_mangle]
extern "C" fn guest_record_exception(esr: u64, elr: u64) -> u64 {
    LAST_ESR.store(esr | (1 << 63), Ordering::Relaxed);
    match take(&RESUME) {
        0 => elr.wrapping_add(4),
        resume => resume,
    }
}

/// The slot [`guarded_asm!`] writes its resume address into.
pub fn resume_slot() -> *const AtomicU64 {
    &RESUME
}

/// Forgets the resume address of a guarded block that took no exception.
pub fn clear_resume() {
    RESUME.store(0, Ordering::Relaxed);
}

/// Runs `asm!` instructions so that an exception taken by any of them returns to the end of the
/// block (label `2:`) with the syndrome recorded for [`take_exception`]. Operands must be named
/// or explicit registers. Must be used inside `unsafe`.
#[macro_export]
macro_rules! guarded_asm {
    ($($insn:literal),+ $(; $($ops:tt)*)?) => {{
        core::arch::asm!(
            "adr {guard_t}, 2f",
            "str {guard_t}, [{guard_slot}]",
            $($insn,)+
            "2:",
            guard_slot = in(reg) $crate::resume_slot(),
            guard_t = out(reg) _,
            $($($ops)*)?
        );
        $crate::clear_resume();
    }};
}

/// The ESR of an exception taken since the last call (the faulting instruction was skipped).
pub fn take_exception() -> Option<u64> {
    let v = take(&LAST_ESR);
    (v != 0).then_some(v & !(1 << 63))
}

/// Whether an exception was taken since the last [`take_exception`] (without consuming it).
pub fn exception_pending() -> bool {
    LAST_ESR.load(Ordering::Relaxed) != 0
}

/// 64-bit MMIO load with a valid syndrome.
pub fn mmio_read(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: a single `ldr` from a device IPA; the hyp traps it and supplies the value.
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

/// 64-bit MMIO store with a valid syndrome.
pub fn mmio_write(addr: u64, value: u64) {
    // SAFETY: a single `str` to a device IPA; the hyp traps it and hands it to the host.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)) };
}

/// One-byte load from guest memory (may fault; an injected abort skips it and reads 0).
pub fn read_byte(addr: u64) -> u8 {
    let v: u64;
    // SAFETY: a single byte load at a guest IPA; faults are handled by the hyp or the vectors.
    unsafe {
        asm!("mov {v}, #0", "ldrb {v:w}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack))
    };
    v as u8
}

/// One-byte store to guest memory.
pub fn write_byte(addr: u64, value: u8) {
    // SAFETY: a single byte store at a guest IPA; faults are handled by the hyp or the vectors.
    unsafe {
        asm!("strb {v:w}, [{a}]", a = in(reg) addr, v = in(reg) u32::from(value), options(nostack))
    };
}

/// SMCCC call over `HVC #0`: returns x0..x3.
pub fn hvc(func: u64, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    let (r0, r1, r2, r3);
    // SAFETY: HVC traps to the hyp, which writes x0..x3 only.
    unsafe {
        asm!("hvc #0", inout("x0") func => r0, inout("x1") a1 => r1, inout("x2") a2 => r2,
             inout("x3") a3 => r3, options(nostack))
    };
    [r0, r1, r2, r3]
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        // SAFETY: executing an undefined instruction makes the hyp see a guest exception.
        unsafe { asm!("udf #0xdead", options(nostack)) };
    }
}

/// Reads (EL2 instructions, all-level instructions) from PMU counters 0 and 1.
#[inline(always)]
pub fn pmu_read() -> (u64, u64) {
    let (a, b): (u64, u64);
    // SAFETY: reading the event counters the hyp set up; no side effects.
    unsafe {
        asm!("isb", "mrs {a}, pmevcntr0_el0", "mrs {b}, pmevcntr1_el0", a = out(reg) a, b = out(reg) b,
             options(nostack))
    };
    (a, b)
}
