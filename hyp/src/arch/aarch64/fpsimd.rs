//! FP/SIMD state (`V0..V31`, `FPCR`, `FPSR`) of a world, switched eagerly around a guest run.
//!
//! The hyp is built soft-float, so EL2 code never touches these registers: the state of whichever
//! world last ran stays live in them while the hyp runs, and only the world switch moves it. The
//! instructions are enabled for the assembler with `.arch_extension` directives (the target lacks
//! the `fp-armv8`/`neon` features), scoped to these two functions.
//!
//! SVE and SME stay trapped (`CPTR_EL2.TZ`/`TSM`) for every world, so the only vector state is the
//! 128-bit V registers.

use core::arch::naked_asm;
use core::mem::offset_of;

/// One world's FP/SIMD registers.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpState {
    pub v: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

const _: () = assert!(offset_of!(FpState, fpcr) == 512);
const _: () = assert!(offset_of!(FpState, fpsr) == 520);

/// Saves the live FP/SIMD registers into `*state`.
///
/// # Safety
/// `state` must be valid for writes; `CPTR_EL2.TFP` must be clear (FP not trapped at EL2).
#[unsafe(naked)]
pub unsafe extern "C" fn save(state: *mut FpState) {
    naked_asm!(
        ".arch_extension fp",
        ".arch_extension simd",
        "stp q0, q1, [x0, #0]",
        "stp q2, q3, [x0, #32]",
        "stp q4, q5, [x0, #64]",
        "stp q6, q7, [x0, #96]",
        "stp q8, q9, [x0, #128]",
        "stp q10, q11, [x0, #160]",
        "stp q12, q13, [x0, #192]",
        "stp q14, q15, [x0, #224]",
        "stp q16, q17, [x0, #256]",
        "stp q18, q19, [x0, #288]",
        "stp q20, q21, [x0, #320]",
        "stp q22, q23, [x0, #352]",
        "stp q24, q25, [x0, #384]",
        "stp q26, q27, [x0, #416]",
        "stp q28, q29, [x0, #448]",
        "stp q30, q31, [x0, #480]",
        "mrs x1, fpcr",
        "mrs x2, fpsr",
        "add x3, x0, #512",
        "stp x1, x2, [x3]",
        "ret",
    )
}

/// Loads `*state` into the FP/SIMD registers.
///
/// # Safety
/// `state` must be valid for reads; `CPTR_EL2.TFP` must be clear.
#[unsafe(naked)]
pub unsafe extern "C" fn restore(state: *const FpState) {
    naked_asm!(
        ".arch_extension fp",
        ".arch_extension simd",
        "ldp q0, q1, [x0, #0]",
        "ldp q2, q3, [x0, #32]",
        "ldp q4, q5, [x0, #64]",
        "ldp q6, q7, [x0, #96]",
        "ldp q8, q9, [x0, #128]",
        "ldp q10, q11, [x0, #160]",
        "ldp q12, q13, [x0, #192]",
        "ldp q14, q15, [x0, #224]",
        "ldp q16, q17, [x0, #256]",
        "ldp q18, q19, [x0, #288]",
        "ldp q20, q21, [x0, #320]",
        "ldp q22, q23, [x0, #352]",
        "ldp q24, q25, [x0, #384]",
        "ldp q26, q27, [x0, #416]",
        "ldp q28, q29, [x0, #448]",
        "ldp q30, q31, [x0, #480]",
        "add x3, x0, #512",
        "ldp x1, x2, [x3]",
        "msr fpcr, x1",
        "msr fpsr, x2",
        "ret",
    )
}
