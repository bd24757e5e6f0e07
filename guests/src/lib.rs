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

use trap_frame::{
    frame_asm, restore_frame_eret, save_frame, vector_entry, vector_table, TrapFrame,
};

/// ESR_EL1 of the last exception the guest took, with [`ESR_TAKEN`] (0 = none since the last
/// [`take_exception`]).
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
/// Where the next exception returns to (0: the instruction after the one that took it). Set
/// by [`guarded_asm!`] just before its instruction, so even a faulting branch target comes back.
static RESUME: AtomicU64 = AtomicU64::new(0);
/// Marks [`LAST_ESR`] as holding a syndrome (an ESR of 0 is possible: EC 0, unknown reason).
const ESR_TAKEN: u64 = 1 << 63;

/// An SMCCC call (`$insn`: `"hvc #0"` or `"smc #0"`) with all 64 bits of `x0`. The `smccc`
/// crate takes the function ID as a `u32` (SMCCC passes it in `W0`) and zero-extends it, but the
/// host may ask for any `x0` (`OP_HVC`'s ARG0, `OP_ATK_SMC`'s) and the hyp decodes all of it, so
/// an ID with bits 63:32 set is issued here, with `smccc`'s registers: x0..x17 may change.
macro_rules! wide_call {
    ($insn:literal, $x0:expr, $a:expr) => {{
        let a: [u64; 3] = $a;
        let (r0, r1, r2, r3);
        // SAFETY: the call traps to the hyp, which writes at most x0..x17 of the guest, all
        // declared; no memory of the guest's is touched.
        unsafe {
            asm!(
                $insn,
                inout("x0") $x0 => r0, inout("x1") a[0] => r1, inout("x2") a[1] => r2,
                inout("x3") a[2] => r3, inout("x4") 0u64 => _, inout("x5") 0u64 => _,
                inout("x6") 0u64 => _, inout("x7") 0u64 => _, inout("x8") 0u64 => _,
                inout("x9") 0u64 => _, inout("x10") 0u64 => _, inout("x11") 0u64 => _,
                inout("x12") 0u64 => _, inout("x13") 0u64 => _, inout("x14") 0u64 => _,
                inout("x15") 0u64 => _, inout("x16") 0u64 => _, inout("x17") 0u64 => _,
                options(nostack)
            )
        };
        [r0, r1, r2, r3]
    }};
}

/// `CPACR_EL1.FPEN` = 0b11: FP/SIMD instructions do not trap at EL1 or EL0.
const CPACR_EL1_FPEN: u64 = 3 << 20;
/// `CPACR_EL1.ZEN` = 0b11: SVE instructions do not trap (RES0 without SVE).
const CPACR_EL1_ZEN: u64 = 3 << 16;
/// `CPACR_EL1.SMEN` = 0b11: SME instructions do not trap (RES0 without SME).
const CPACR_EL1_SMEN: u64 = 3 << 24;

// Boot, then the vectors' common path (in the boot section, where it fills the gap below the
// 2 KiB-aligned table: the image must stay small, see `step-guest.rs`), then the table. Every
// entry saves the whole interrupted context in a [`TrapFrame`] (the layout the host shim and the
// hyp use) and calls `guest_handle_exception`, which records the syndrome and says where to
// return (after the faulting instruction, or a guarded block's end). The kind is the entry's
// number (its offset / 0x80).
frame_asm!(
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
    mov     x10, #{cpacr_fpen}
    orr     x10, x10, #{cpacr_zen}
    orr     x10, x10, #{cpacr_smen}
    msr     cpacr_el1, x10
    isb
    mov     x0, x19
    bl      guest_main
3:  wfi
    b       3b

    .ltorg
"#,
    "guest_exception:",
    save_frame!("el1"),
    "    bl      guest_handle_exception",
    restore_frame_eret!("el1"),
    "    .section .text.vectors, \"ax\"",
    vector_table!("guest_vectors"),
    vector_entry!(0, "guest_exception"),
    vector_entry!(1, "guest_exception"),
    vector_entry!(2, "guest_exception"),
    vector_entry!(3, "guest_exception"),
    vector_entry!(4, "guest_exception"),
    vector_entry!(5, "guest_exception"),
    vector_entry!(6, "guest_exception"),
    vector_entry!(7, "guest_exception"),
    vector_entry!(8, "guest_exception"),
    vector_entry!(9, "guest_exception"),
    vector_entry!(10, "guest_exception"),
    vector_entry!(11, "guest_exception"),
    vector_entry!(12, "guest_exception"),
    vector_entry!(13, "guest_exception"),
    vector_entry!(14, "guest_exception"),
    vector_entry!(15, "guest_exception");
    cpacr_fpen = const CPACR_EL1_FPEN,
    cpacr_zen = const CPACR_EL1_ZEN,
    cpacr_smen = const CPACR_EL1_SMEN,
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
extern "C" fn guest_handle_exception(frame: &mut TrapFrame) {
    let esr: u64;
    // SAFETY: reading the guest's own syndrome register has no side effects.
    unsafe { asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack)) };
    LAST_ESR.store(esr | ESR_TAKEN, Ordering::Relaxed);
    frame.elr = match take(&RESUME) {
        0 => frame.elr.wrapping_add(4),
        resume => resume,
    };
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
    (v != 0).then_some(v & !ESR_TAKEN)
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

/// SMCCC call over `HVC #0` (`x1..x3` = `a1..a3`, the rest zero): returns x0..x3.
pub fn hvc(func: u64, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    match u32::try_from(func) {
        Ok(function) => {
            let r = smccc::hvc64(function, pad([a1, a2, a3]));
            [r[0], r[1], r[2], r[3]]
        }
        Err(_) => wide_call!("hvc #0", func, [a1, a2, a3]),
    }
}

/// SMCCC call over `SMC #0` (trapped by the hyp): returns x0..x3.
pub fn smc(func: u64, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    match u32::try_from(func) {
        Ok(function) => {
            let r = smccc::smc64(function, pad([a1, a2, a3]));
            [r[0], r[1], r[2], r[3]]
        }
        Err(_) => wide_call!("smc #0", func, [a1, a2, a3]),
    }
}

/// `x1..x3` followed by zeros, as the `x1..x17` of an SMCCC 1.2 call.
fn pad(a: [u64; 3]) -> [u64; 17] {
    let mut args = [0; 17];
    args[..3].copy_from_slice(&a);
    args
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
