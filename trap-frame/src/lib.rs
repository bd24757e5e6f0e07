//! One trap-frame layout for every exception vector in the project, and the assembly that fills
//! and empties it, parametrised by the exception level whose `ELR_ELx` / `SPSR_ELx` it uses.
//!
//! A vector entry ([`vector_entry!`]) makes room for a [`TrapFrame`] on the current stack, saves
//! `x0`/`x1` there and puts the entry's *kind* (a number the image chooses: which of the 16
//! vectors fired) in `x1`, then branches to a common path. The common path is [`save_frame!`]
//! (`x2..x30`, `ELR_ELx`, `SPSR_ELx`, the kind; `x0` = the frame), a call of the image's Rust
//! handler with `&mut TrapFrame`, and [`restore_frame_eret!`] (everything back from the frame,
//! so what the handler changed in it, `elr` say, is what `eret` uses).
//!
//! The text macros expand to string literals with named operands (`{tf_size}`, `{tf_elr}`,
//! `{tf_kind}`, `{tf_entry}`, `{tf_table}`); [`frame_asm!`] is `core::arch::global_asm!` with
//! those operands defined from [`TrapFrame`] itself and the [`vector`] geometry (more operands may
//! follow a `;`), so the layout has one definition. [`vector_table!`] starts a table.
//!
//! Users: the host shim's EL1 vectors (`host-shim/src/exceptions.rs`), the guests' EL1 vectors
//! (`guests/src/lib.rs`) and the hyp's EL2 vectors (`hyp/src/arch/aarch64/vectors.rs`, whose
//! guest-exit path relies on `x0`/`x1` being at `[sp, #0]` with the kind in `x1`, as
//! [`vector_entry!`] leaves them).
//!
//! The crate is only data and text: it has no `unsafe` and builds (and is tested) on the host.
#![no_std]
#![forbid(unsafe_code)]

use core::mem::{offset_of, size_of};

/// The interrupted context, as the vector saved it.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    /// `x0..x30`.
    pub x: [u64; 31],
    /// `ELR_ELx`: where `eret` returns to.
    pub elr: u64,
    /// `SPSR_ELx`: the PSTATE `eret` restores.
    pub spsr: u64,
    /// Which vector fired, as the image's [`vector_entry!`] numbers them.
    pub kind: u64,
}

/// Bytes a vector entry takes off the stack.
pub const FRAME_SIZE: usize = size_of::<TrapFrame>();
/// Offset of [`TrapFrame::elr`] (`spsr` follows it: the assembly stores both with one `stp`).
pub const ELR_OFFSET: usize = offset_of!(TrapFrame, elr);
/// Offset of [`TrapFrame::kind`].
pub const KIND_OFFSET: usize = offset_of!(TrapFrame, kind);

// The assembly's fixed offsets: `x[n]` at `8 * n` (its `stp`/`ldp` pairs), ELR then SPSR in one
// pair, and a frame that keeps the stack 16-byte aligned.
const _: () = assert!(offset_of!(TrapFrame, x) == 0);
const _: () = assert!(offset_of!(TrapFrame, spsr) == ELR_OFFSET + 8);
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));
// `sub sp, sp, #imm` takes a 12-bit immediate.
const _: () = assert!(FRAME_SIZE < 4096);

/// Offsets into a vector table (`VBAR_ELx`): four groups of four 128-byte entries.
pub mod vector {
    /// Exceptions from the current EL while it uses `SP_EL0`.
    pub const CURRENT_SP0: u64 = 0x000;
    /// Exceptions from the current EL while it uses `SP_ELx` (where a hyp injects an exception
    /// into the EL it interrupted, if that EL was on `SP_ELx`).
    pub const CURRENT_SPX: u64 = 0x200;
    /// Exceptions from a lower EL in AArch64.
    pub const LOWER_A64: u64 = 0x400;
    /// Exceptions from a lower EL in AArch32.
    pub const LOWER_A32: u64 = 0x600;
    /// Within a group: synchronous, IRQ, FIQ, SError, at these offsets.
    pub const SYNC: u64 = 0x000;
    pub const IRQ: u64 = 0x080;
    pub const FIQ: u64 = 0x100;
    pub const SERROR: u64 = 0x180;
    /// Bytes of one entry (and its alignment).
    pub const ENTRY_SIZE: u64 = 0x80;
    /// Alignment of a table (`VBAR_ELx` bits 10:0 are RES0).
    pub const TABLE_ALIGN: u64 = 0x800;

    /// The index (offset / [`ENTRY_SIZE`]) of the entry at `offset`, as the EL1 images number
    /// their entries' kinds.
    pub const fn index(offset: u64) -> u64 {
        offset / ENTRY_SIZE
    }
}

/// `SPSR_ELx` (the PSTATE an exception saved, and `eret` restores): the fields the images and
/// tests write.
pub mod spsr {
    /// `M[4]`: the interrupted state was AArch32 (then `M[3:0]` is an AArch32 mode).
    pub const M_AARCH32: u64 = 1 << 4;
    /// `M[3:0]` in AArch64: EL0, EL1 with `SP_EL0` (t) or `SP_EL1` (h), EL2h, EL3h.
    pub const M_EL0T: u64 = 0b0000;
    pub const M_EL1T: u64 = 0b0100;
    pub const M_EL1H: u64 = 0b0101;
    pub const M_EL2H: u64 = 0b1001;
    pub const M_EL3H: u64 = 0b1101;
    /// `M[3:0]` in AArch32: User, Supervisor, Hyp.
    pub const M32_USR: u64 = 0b0000;
    pub const M32_SVC: u64 = 0b0011;
    pub const M32_HYP: u64 = 0b1010;
    /// Mask of `M[3:0]`, and of all of `M[4:0]`.
    pub const M_MASK: u64 = 0xf;
    pub const M_ALL: u64 = 0x1f;
    /// `T` (AArch32): Thumb state.
    pub const T: u64 = 1 << 5;
    /// The masks: FIQ, IRQ, SError, debug.
    pub const F: u64 = 1 << 6;
    pub const I: u64 = 1 << 7;
    pub const A: u64 = 1 << 8;
    pub const D: u64 = 1 << 9;
    /// All four masks.
    pub const DAIF: u64 = D | A | I | F;
    /// `IL`: an illegal exception return.
    pub const IL: u64 = 1 << 20;
    /// EL1h with every exception masked: how a world is first entered (`0x3c5`).
    pub const EL1H_MASKED: u64 = DAIF | M_EL1H;
}

/// `ESR_ELx` (the syndrome of the exception taken): its class field and the classes the images
/// tell apart.
pub mod esr {
    /// `EC`, bits 31:26.
    pub const EC_SHIFT: u32 = 26;
    pub const EC_MASK: u64 = 0x3f;
    /// Unknown reason: what an undefined instruction (and an UNDEF the hyp injects) reports.
    pub const EC_UNKNOWN: u64 = 0x00;
    /// Instruction abort from a lower EL / the same EL.
    pub const EC_IABT_LOWER: u64 = 0x20;
    pub const EC_IABT_CURRENT: u64 = 0x21;
    /// Data abort from a lower EL / the same EL.
    pub const EC_DABT_LOWER: u64 = 0x24;
    pub const EC_DABT_CURRENT: u64 = 0x25;

    /// The exception class of `esr`.
    pub const fn ec(esr: u64) -> u64 {
        (esr >> EC_SHIFT) & EC_MASK
    }

    /// Whether `ec` is an instruction or data abort, from either level.
    pub const fn is_abort(ec: u64) -> bool {
        matches!(
            ec,
            EC_IABT_LOWER | EC_IABT_CURRENT | EC_DABT_LOWER | EC_DABT_CURRENT
        )
    }
}

/// One vector table entry, as assembly text: aligned to its 128-byte slot, it makes room for a
/// [`TrapFrame`], saves `x0`/`x1` at its start, puts `kind` in `x1` and branches to `target`.
/// Uses the operand `{tf_size}` (see [`frame_asm!`]).
#[macro_export]
macro_rules! vector_entry {
    ($kind:literal, $target:literal) => {
        concat!(
            "    .balign {tf_entry}\n",
            "    sub     sp, sp, #{tf_size}\n",
            "    stp     x0, x1, [sp, #0]\n",
            "    mov     x1, #",
            $kind,
            "\n",
            "    b       ",
            $target,
            "\n",
        )
    };
}

/// The start of a vector table, as assembly text: aligned as `VBAR_ELx` needs, labelled `$name`
/// (in the current section). Uses `{tf_table}`.
#[macro_export]
macro_rules! vector_table {
    ($name:literal) => {
        concat!("    .balign {tf_table}\n", $name, ":\n")
    };
}

/// The rest of the save after a [`vector_entry!`], as assembly text: `x2..x30`, then
/// `ELR_<el>` and `SPSR_<el>` (`$el` is `"el1"` or `"el2"`), then the kind from `x1`; ends with
/// `x0` = `sp` = the frame, ready for `bl handler` with `handler(frame: &mut TrapFrame)`.
/// Uses `{tf_elr}` and `{tf_kind}`.
#[macro_export]
macro_rules! save_frame {
    ($el:literal) => {
        concat!(
            "    stp     x2, x3, [sp, #16]\n",
            "    stp     x4, x5, [sp, #32]\n",
            "    stp     x6, x7, [sp, #48]\n",
            "    stp     x8, x9, [sp, #64]\n",
            "    stp     x10, x11, [sp, #80]\n",
            "    stp     x12, x13, [sp, #96]\n",
            "    stp     x14, x15, [sp, #112]\n",
            "    stp     x16, x17, [sp, #128]\n",
            "    stp     x18, x19, [sp, #144]\n",
            "    stp     x20, x21, [sp, #160]\n",
            "    stp     x22, x23, [sp, #176]\n",
            "    stp     x24, x25, [sp, #192]\n",
            "    stp     x26, x27, [sp, #208]\n",
            "    stp     x28, x29, [sp, #224]\n",
            "    str     x30, [sp, #240]\n",
            "    mrs     x2, elr_",
            $el,
            "\n",
            "    mrs     x3, spsr_",
            $el,
            "\n",
            "    stp     x2, x3, [sp, #{tf_elr}]\n",
            "    str     x1, [sp, #{tf_kind}]\n",
            "    mov     x0, sp\n",
        )
    };
}

/// The way back, as assembly text: `ELR_<el>` and `SPSR_<el>` from the frame, then `x0..x30`,
/// the frame off the stack, `eret`. Uses `{tf_size}` and `{tf_elr}`.
#[macro_export]
macro_rules! restore_frame_eret {
    ($el:literal) => {
        concat!(
            "    ldp     x2, x3, [sp, #{tf_elr}]\n",
            "    msr     elr_",
            $el,
            ", x2\n",
            "    msr     spsr_",
            $el,
            ", x3\n",
            "    ldp     x0, x1, [sp, #0]\n",
            "    ldp     x2, x3, [sp, #16]\n",
            "    ldp     x4, x5, [sp, #32]\n",
            "    ldp     x6, x7, [sp, #48]\n",
            "    ldp     x8, x9, [sp, #64]\n",
            "    ldp     x10, x11, [sp, #80]\n",
            "    ldp     x12, x13, [sp, #96]\n",
            "    ldp     x14, x15, [sp, #112]\n",
            "    ldp     x16, x17, [sp, #128]\n",
            "    ldp     x18, x19, [sp, #144]\n",
            "    ldp     x20, x21, [sp, #160]\n",
            "    ldp     x22, x23, [sp, #176]\n",
            "    ldp     x24, x25, [sp, #192]\n",
            "    ldp     x26, x27, [sp, #208]\n",
            "    ldp     x28, x29, [sp, #224]\n",
            "    ldr     x30, [sp, #240]\n",
            "    add     sp, sp, #{tf_size}\n",
            "    eret\n",
        )
    };
}

/// `core::arch::global_asm!` over the given template pieces (string literals or the macros
/// above), with `{tf_size}`, `{tf_elr}` and `{tf_kind}` defined from [`TrapFrame`] and
/// `{tf_entry}`, `{tf_table}` from [`vector`]; the image's own operands may follow a `;`. Every
/// piece that uses them must be inside one `frame_asm!`, and each must be used (as one vector
/// table with its entries and common path does: `global_asm!` refuses unused operands).
#[macro_export]
macro_rules! frame_asm {
    ($($piece:expr),+ $(,)? $(; $($ops:tt)*)?) => {
        core::arch::global_asm!(
            $($piece),+,
            tf_size = const $crate::FRAME_SIZE,
            tf_elr = const $crate::ELR_OFFSET,
            tf_kind = const $crate::KIND_OFFSET,
            tf_entry = const $crate::vector::ENTRY_SIZE,
            tf_table = const $crate::vector::TABLE_ALIGN,
            $($($ops)*)?
        );
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layout_is_what_the_assembly_assumes() {
        assert_eq!(FRAME_SIZE, 34 * 8);
        assert_eq!(ELR_OFFSET, 31 * 8);
        assert_eq!(KIND_OFFSET, 33 * 8);
    }

    /// Every `x<n>` the save stores goes to `8 * n`, and the restore loads it from there.
    #[test]
    fn every_register_has_its_slot() {
        let save = save_frame!("el1");
        let restore = restore_frame_eret!("el1");
        for n in 2..31 {
            let off = 8 * n;
            let pair = |a: usize| std::format!("x{}, x{}, [sp, #{}]", a, a + 1, 8 * a);
            let single = std::format!("x{n}, [sp, #{off}]");
            let base = n - n % 2;
            let found_save = save.contains(&pair(base)) || save.contains(&single);
            let found_restore = restore.contains(&pair(base)) || restore.contains(&single);
            assert!(found_save && found_restore, "x{n}");
        }
        assert!(restore.contains("x0, x1, [sp, #0]"));
    }

    #[test]
    fn the_architectural_numbers() {
        assert_eq!(esr::ec(0x9600_0010), esr::EC_DABT_CURRENT);
        assert!(esr::is_abort(0x20) && esr::is_abort(0x25) && !esr::is_abort(0x22));
        assert_eq!(spsr::EL1H_MASKED, 0x3c5);
        assert_eq!(spsr::DAIF | spsr::M_EL1T, 0x3c4);
        assert_eq!(vector::index(vector::CURRENT_SPX + vector::IRQ), 5);
        assert_eq!(vector::index(vector::LOWER_A64), 8);
        assert_eq!(vector::index(vector::LOWER_A32), 12);
    }

    #[test]
    fn the_exception_level_names_the_registers() {
        assert!(save_frame!("el2").contains("mrs     x2, elr_el2\n"));
        assert!(save_frame!("el2").contains("mrs     x3, spsr_el2\n"));
        assert!(restore_frame_eret!("el1").contains("msr     elr_el1, x2\n"));
        assert!(restore_frame_eret!("el1").contains("msr     spsr_el1, x3\n"));
        assert!(vector_entry!(3, "common").contains("mov     x1, #3\n"));
    }
}
