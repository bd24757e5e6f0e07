//! The EL2 exception vector table and the trap frame.
//!
//! Every entry saves the interrupted context into a [`TrapFrame`] on the EL2 stack, tells Rust which
//! of the 16 vectors fired, and restores whatever Rust left in the frame before `eret`. A fault on
//! an armed probe (`probe.rs`) is answered here; every other trap goes to the [`TrapHandler`] boot
//! gave [`install`] (the hyp's `trap.rs`), so the vectors name nothing of the hyp above `arch`.

use core::mem::{offset_of, size_of};

use super::Syndrome;

/// The interrupted context, as saved by the vector.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    /// Which vector fired (see [`VectorKind`]).
    pub kind: u64,
}

const _: () = assert!(size_of::<TrapFrame>().is_multiple_of(16));

/// The vector that was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKind {
    CurrentSp0,
    CurrentSync,
    CurrentIrq,
    CurrentFiq,
    CurrentSError,
    LowerSync,
    LowerIrq,
    LowerFiq,
    LowerSError,
}

impl VectorKind {
    fn from_raw(v: u64) -> VectorKind {
        match v {
            1 => VectorKind::CurrentSync,
            2 => VectorKind::CurrentIrq,
            3 => VectorKind::CurrentFiq,
            4 => VectorKind::CurrentSError,
            5 => VectorKind::LowerSync,
            6 => VectorKind::LowerIrq,
            7 => VectorKind::LowerFiq,
            8 => VectorKind::LowerSError,
            _ => VectorKind::CurrentSp0,
        }
    }

    /// Where the exception came from, in words.
    pub fn describe(self) -> &'static str {
        match self {
            VectorKind::CurrentSp0 => "EL2 (on SP_EL0)",
            VectorKind::CurrentSync => "EL2 (synchronous)",
            VectorKind::CurrentIrq => "EL2 (IRQ)",
            VectorKind::CurrentFiq => "EL2 (FIQ)",
            VectorKind::CurrentSError => "EL2 (SError)",
            VectorKind::LowerSync => "EL1/EL0 (synchronous)",
            VectorKind::LowerIrq => "EL1/EL0 (IRQ)",
            VectorKind::LowerFiq => "EL1/EL0 (FIQ)",
            VectorKind::LowerSError => "EL1/EL0 (SError)",
        }
    }
}

impl TrapFrame {
    pub fn vector(&self) -> VectorKind {
        VectorKind::from_raw(self.kind)
    }
}

core::arch::global_asm!(
    r#"
.macro vslot kind, target
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x1, #\kind
    b       \target
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global hyp_vectors
hyp_vectors:
    vslot 0, hyp_trap_common
    vslot 0, hyp_trap_common
    vslot 0, hyp_trap_common
    vslot 0, hyp_trap_common
    vslot 1, hyp_trap_common
    vslot 2, hyp_trap_common
    vslot 3, hyp_trap_common
    vslot 4, hyp_trap_common
    vslot 5, hyp_lower_common
    vslot 6, hyp_lower_common
    vslot 7, hyp_lower_common
    vslot 8, hyp_lower_common
    vslot 5, hyp_lower_common
    vslot 6, hyp_lower_common
    vslot 7, hyp_lower_common
    vslot 8, hyp_lower_common

// From EL1 or EL0, AArch64 or AArch32 (the syndrome tells them apart, so both use the same
// kinds): a guest exit if this CPU runs a guest (see switch.rs), else a host trap.
hyp_lower_common:
    mrs     x0, tpidr_el2
    ldr     x0, [x0, #{guest}]
    cbnz    x0, hyp_guest_exit

hyp_trap_common:
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
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [sp, #{elr}]
    str     x1, [sp, #{kind}]
    mov     x0, sp
    bl      hyp_handle_trap
    ldp     x2, x3, [sp, #{elr}]
    msr     elr_el2, x2
    msr     spsr_el2, x3
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
    frame = const size_of::<TrapFrame>(),
    guest = const super::cpu::ArchCpu::GUEST_CTX_OFFSET,
    elr = const offset_of!(TrapFrame, elr),
    kind = const offset_of!(TrapFrame, kind),
);

const _: () = assert!(offset_of!(TrapFrame, spsr) == offset_of!(TrapFrame, elr) + 8);

/// What the vectors call for a trap they do not answer themselves: the saved frame (which the
/// handler may change, it is restored before `eret`) and the exception's syndrome.
pub type TrapHandler = fn(&mut TrapFrame, Syndrome);

/// The handler [`install`] was given (set once, before any `VBAR_EL2` points at the vectors).
static HANDLER: spin::Once<TrapHandler> = spin::Once::new();

/// Installs the vector table in `VBAR_EL2`, with `handler` for the traps it routes (the first
/// CPU's handler stays for every CPU).
pub fn install(handler: TrapHandler) {
    HANDLER.call_once(|| handler);
    use aarch64_cpu::registers::{Writeable, VBAR_EL2};
    extern "C" {
        static hyp_vectors: u8;
    }
    let base = core::ptr::addr_of!(hyp_vectors) as u64;
    VBAR_EL2.set(base);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

#[no_mangle]
extern "C" fn hyp_handle_trap(frame: &mut TrapFrame) {
    let syn = super::syndrome();
    if frame.vector() == VectorKind::CurrentSync {
        if let Some(resume) = super::cpu::this_cpu().probe_record(syn.esr, syn.far) {
            frame.elr = if resume != 0 { resume } else { frame.elr + 4 };
            return;
        }
    }
    match HANDLER.get() {
        Some(handler) => handler(frame, syn),
        // Unreachable: `VBAR_EL2` points here only after `install` set the handler.
        None => super::halt(),
    }
}
