//! The EL2 exception vector table and the trap frame.
//!
//! Every entry saves the interrupted context into a [`TrapFrame`] on the EL2 stack, tells Rust which
//! of the 16 vectors fired, and restores whatever Rust left in the frame before `eret`. A fault on
//! an armed probe (`probe.rs`) is answered here; every other trap goes to the [`TrapHandler`] boot
//! gave [`install`] (the hyp's `trap.rs`), so the vectors name nothing of the hyp above `arch`.

use trap_frame::{restore_frame_eret, save_frame, vector_entry, vector_table};

use super::Syndrome;

/// The interrupted context, as saved by the vector: the project's one trap-frame layout
/// (`trap-frame`), whose save/restore assembly the vectors below use; `kind` is a [`VectorKind`].
pub use trap_frame::TrapFrame;

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
    /// The vector that saved `frame`.
    pub fn of(frame: &TrapFrame) -> VectorKind {
        match frame.kind {
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

trap_frame::frame_asm!(
    "    .section .text.vectors, \"ax\"",
    "    .global hyp_vectors",
    vector_table!("hyp_vectors"),
    vector_entry!(0, "hyp_trap_common"),
    vector_entry!(0, "hyp_trap_common"),
    vector_entry!(0, "hyp_trap_common"),
    vector_entry!(0, "hyp_trap_common"),
    vector_entry!(1, "hyp_trap_common"),
    vector_entry!(2, "hyp_trap_common"),
    vector_entry!(3, "hyp_trap_common"),
    vector_entry!(4, "hyp_trap_common"),
    vector_entry!(5, "hyp_lower_common"),
    vector_entry!(6, "hyp_lower_common"),
    vector_entry!(7, "hyp_lower_common"),
    vector_entry!(8, "hyp_lower_common"),
    vector_entry!(5, "hyp_lower_common"),
    vector_entry!(6, "hyp_lower_common"),
    vector_entry!(7, "hyp_lower_common"),
    vector_entry!(8, "hyp_lower_common"),
    // From EL1 or EL0, AArch64 or AArch32 (the syndrome tells them apart, so both use the same
    // kinds): a guest exit if this CPU runs a guest (see switch.rs, which relies on x0/x1 at
    // [sp, #0] and the kind in x1, as `vector_entry!` leaves them), else a host trap.
    "hyp_lower_common:",
    "    mrs     x0, tpidr_el2",
    "    ldr     x0, [x0, #{guest}]",
    "    cbnz    x0, hyp_guest_exit",
    "hyp_trap_common:",
    save_frame!("el2"),
    "    bl      hyp_handle_trap",
    restore_frame_eret!("el2");
    guest = const super::cpu::ArchCpu::GUEST_CTX_OFFSET,
);

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
    if VectorKind::of(frame) == VectorKind::CurrentSync {
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
