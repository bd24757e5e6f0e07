//! The world switch: entering a guest and coming back on its exit.
//!
//! [`enter_guest`] is a naked function whose return *is* the guest's exit: it saves the hyp's
//! callee-saved registers and SP into the [`GuestContext`], publishes the context in the per-CPU
//! data (`TPIDR_EL2`), loads the guest's registers and `eret`s. The lower-EL vectors see the
//! published context, save the guest's registers and syndrome straight into it, restore the hyp's
//! registers and SP, and return from `enter_guest` with the vector kind in `x0`.

use core::arch::{asm, naked_asm};
use core::mem::offset_of;

use crate::percpu::PerCpu;

/// The EL1 system registers a world owns (host or guest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct El1Sys {
    pub sctlr: u64,
    pub vbar: u64,
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
    pub sp_el1: u64,
    pub sp_el0: u64,
    pub tpidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub tcr: u64,
    pub mair: u64,
    pub amair: u64,
    pub cpacr: u64,
    pub contextidr: u64,
    pub cntkctl: u64,
    pub par: u64,
    pub afsr0: u64,
    pub afsr1: u64,
    pub csselr: u64,
}

impl El1Sys {
    /// A fresh EL1 state: MMU and caches off (RES1 bits set), everything else zero.
    pub fn reset() -> Self {
        Self {
            sctlr: 0x30d0_0800,
            ..Self::default()
        }
    }
}

/// Makes the EL1 world whose registers are live on this CPU take a synchronous exception: writes
/// its ESR/FAR/ELR/SPSR_EL1 as the hardware would and returns its VBAR_EL1 (the caller points the
/// return address at `VBAR_EL1 + 0x200`, current EL with SP_ELx, and masks DAIF).
pub fn take_el1_exception(esr: u64, far: u64, elr: u64, spsr: u64) -> u64 {
    let vbar: u64;
    // SAFETY: EL1 state only, of the world whose exception this is; nothing runs at EL1 meanwhile.
    unsafe {
        asm!(
            "msr esr_el1, {esr}",
            "msr far_el1, {far}",
            "msr elr_el1, {elr}",
            "msr spsr_el1, {spsr}",
            "mrs {vbar}, vbar_el1",
            esr = in(reg) esr,
            far = in(reg) far,
            elr = in(reg) elr,
            spsr = in(reg) spsr,
            vbar = out(reg) vbar,
            options(nostack)
        );
    }
    vbar
}

/// ESR_EL1 of an injected abort: data abort at the same EL, 32-bit instruction, synchronous
/// external abort.
const INJECTED_DABT_ESR: u64 = (0x25 << 26) | (1 << 25) | 0x10;

/// Everything the world switch saves for one vCPU.
#[repr(C)]
#[derive(Debug)]
pub struct GuestContext {
    /// x0..x30.
    pub x: [u64; 31],
    pub pc: u64,
    pub pstate: u64,
    /// Syndrome of the last exit, captured by the vector.
    pub exit_esr: u64,
    pub exit_far: u64,
    pub exit_hpfar: u64,
    /// Vector kind of the last exit (see `vectors::VectorKind`).
    pub exit_kind: u64,
    /// The hyp's x19..x30 and SP while the guest runs. Everything the asm touches stays within
    /// the `stp`/`ldp` immediate range (504 bytes).
    host_save: [u64; 13],
    pub sys: El1Sys,
}

impl GuestContext {
    /// A vCPU about to start at `pc` in EL1h with interrupts masked and `x0 = arg`.
    pub fn new(pc: u64, arg: u64) -> Self {
        let mut x = [0; 31];
        x[0] = arg;
        Self {
            x,
            pc,
            pstate: 0x3c5,
            sys: El1Sys::reset(),
            exit_esr: 0,
            exit_far: 0,
            exit_hpfar: 0,
            exit_kind: 0,
            host_save: [0; 13],
        }
    }

    /// Reads general register `n` (31 = xzr).
    pub fn reg(&self, n: usize) -> u64 {
        self.x.get(n).copied().unwrap_or(0)
    }

    /// Writes general register `n` (31 = xzr: ignored).
    pub fn set_reg(&mut self, n: usize, v: u64) {
        if let Some(r) = self.x.get_mut(n) {
            *r = v;
        }
    }

    /// Makes the guest take a synchronous data abort at its own EL1 on its next entry, as if the
    /// access at `far` had failed with an external abort (what Linux KVM injects). For a vCPU
    /// whose EL1 state is saved in `self.sys` (between runs).
    pub fn inject_data_abort(&mut self, far: u64) {
        self.sys.esr = INJECTED_DABT_ESR;
        self.sys.far = far;
        self.sys.elr = self.pc;
        self.sys.spsr = self.pstate;
        // Current EL with SP_ELx, synchronous: VBAR_EL1 + 0x200.
        self.pc = self.sys.vbar.wrapping_add(0x200);
        self.pstate = 0x3c5;
    }

    /// The same for a vCPU whose EL1 state is live on this CPU (inside the run loop).
    pub fn inject_data_abort_live(&mut self, far: u64) {
        let vbar = take_el1_exception(INJECTED_DABT_ESR, far, self.pc, self.pstate);
        self.pc = vbar.wrapping_add(0x200);
        self.pstate = 0x3c5;
    }
}

/// Runs the guest until it traps to EL2. Returns the vector kind of the exit; the guest's
/// registers and the syndrome are in `ctx`.
///
/// # Safety
/// `ctx` must stay valid and unaliased until this returns; the guest's stage-2, `HCR_EL2` and EL1
/// system registers must be loaded.
#[unsafe(naked)]
pub unsafe extern "C" fn enter_guest(ctx: *mut GuestContext) -> u64 {
    naked_asm!(
        "stp x19, x20, [x0, #{hs} + 0]",
        "stp x21, x22, [x0, #{hs} + 16]",
        "stp x23, x24, [x0, #{hs} + 32]",
        "stp x25, x26, [x0, #{hs} + 48]",
        "stp x27, x28, [x0, #{hs} + 64]",
        "stp x29, x30, [x0, #{hs} + 80]",
        "mov x2, sp",
        "str x2, [x0, #{hs} + 96]",
        "mrs x2, tpidr_el2",
        "str x0, [x2, #{guest}]",
        "ldp x2, x3, [x0, #{pc}]",
        "msr elr_el2, x2",
        "msr spsr_el2, x3",
        "ldp x2, x3, [x0, #16]",
        "ldp x4, x5, [x0, #32]",
        "ldp x6, x7, [x0, #48]",
        "ldp x8, x9, [x0, #64]",
        "ldp x10, x11, [x0, #80]",
        "ldp x12, x13, [x0, #96]",
        "ldp x14, x15, [x0, #112]",
        "ldp x16, x17, [x0, #128]",
        "ldp x18, x19, [x0, #144]",
        "ldp x20, x21, [x0, #160]",
        "ldp x22, x23, [x0, #176]",
        "ldp x24, x25, [x0, #192]",
        "ldp x26, x27, [x0, #208]",
        "ldp x28, x29, [x0, #224]",
        "ldr x30, [x0, #240]",
        "ldp x0, x1, [x0, #0]",
        "eret",
        hs = const offset_of!(GuestContext, host_save),
        guest = const PerCpu::GUEST_CTX_OFFSET,
        pc = const offset_of!(GuestContext, pc),
    )
}

// The guest-exit half, branched to from the lower-EL vectors with the guest's x0/x1 at [sp],
// the vector kind in x1 and the context in x0.
core::arch::global_asm!(
    r#"
    .section .text.vectors, "ax"
    .global hyp_guest_exit
hyp_guest_exit:
    // Fast path: HYP_MEMINFO with x1..x3 = 0 is answered right here, saving nothing but the
    // two registers it uses (guest x0/x1 are already in the vector's frame at [sp]).
    cmp     x1, #5
    b.ne    .Lguest_exit_slow
    stp     x2, x3, [sp, #16]
    mrs     x2, esr_el2
    lsr     x2, x2, #26
    cmp     x2, #0x16
    b.ne    .Lguest_exit_restore
    ldp     x2, x3, [sp, #0]
    mov     x1, #{meminfo_lo}
    movk    x1, #{meminfo_hi}, lsl #16
    cmp     x2, x1
    b.ne    .Lguest_exit_restore
    ldr     x1, [sp, #16]
    orr     x3, x3, x1
    ldr     x1, [sp, #24]
    orr     x3, x3, x1
    cbnz    x3, .Lguest_exit_restore
    mov     x0, #{granule}
    mov     x1, #1
    mov     x2, xzr
    add     sp, sp, #{frame}
    eret
.Lguest_exit_restore:
    ldp     x2, x3, [sp, #16]
    mov     x1, #5
.Lguest_exit_slow:
    stp     x2, x3, [x0, #16]
    stp     x4, x5, [x0, #32]
    stp     x6, x7, [x0, #48]
    stp     x8, x9, [x0, #64]
    stp     x10, x11, [x0, #80]
    stp     x12, x13, [x0, #96]
    stp     x14, x15, [x0, #112]
    stp     x16, x17, [x0, #128]
    stp     x18, x19, [x0, #144]
    stp     x20, x21, [x0, #160]
    stp     x22, x23, [x0, #176]
    stp     x24, x25, [x0, #192]
    stp     x26, x27, [x0, #208]
    stp     x28, x29, [x0, #224]
    str     x30, [x0, #240]
    ldp     x2, x3, [sp]
    stp     x2, x3, [x0, #0]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [x0, #{pc}]
    mrs     x2, esr_el2
    mrs     x3, far_el2
    stp     x2, x3, [x0, #{esr}]
    mrs     x2, hpfar_el2
    stp     x2, x1, [x0, #{hpfar}]
    mrs     x2, tpidr_el2
    str     xzr, [x2, #{guest}]
    ldp     x19, x20, [x0, #{hs} + 0]
    ldp     x21, x22, [x0, #{hs} + 16]
    ldp     x23, x24, [x0, #{hs} + 32]
    ldp     x25, x26, [x0, #{hs} + 48]
    ldp     x27, x28, [x0, #{hs} + 64]
    ldp     x29, x30, [x0, #{hs} + 80]
    ldr     x2, [x0, #{hs} + 96]
    mov     sp, x2
    mov     x0, x1
    ret
"#,
    hs = const offset_of!(GuestContext, host_save),
    guest = const PerCpu::GUEST_CTX_OFFSET,
    pc = const offset_of!(GuestContext, pc),
    esr = const offset_of!(GuestContext, exit_esr),
    hpfar = const offset_of!(GuestContext, exit_hpfar),
    frame = const core::mem::size_of::<super::vectors::TrapFrame>(),
    meminfo_lo = const abi::guest::HYP_MEMINFO & 0xffff,
    meminfo_hi = const (abi::guest::HYP_MEMINFO >> 16) & 0xffff,
    granule = const abi::PAGE_SIZE,
);

const _: () = assert!(offset_of!(GuestContext, pstate) == offset_of!(GuestContext, pc) + 8);
const _: () = assert!(offset_of!(GuestContext, exit_far) == offset_of!(GuestContext, exit_esr) + 8);
const _: () =
    assert!(offset_of!(GuestContext, exit_kind) == offset_of!(GuestContext, exit_hpfar) + 8);
const _: () = assert!(offset_of!(GuestContext, x) == 0);
const _: () = assert!(offset_of!(GuestContext, sys) <= 504);

macro_rules! sysregs {
    ($($field:ident => $reg:literal),* $(,)?) => {
        /// Saves the EL1 system registers on the CPU into `s`.
        pub fn save_el1(s: &mut El1Sys) {
            $(
                // SAFETY: reading an EL1 system register from EL2 has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) s.$field, options(nomem, nostack)) };
            )*
        }

        /// Loads `s` into the EL1 system registers of the CPU.
        pub fn restore_el1(s: &El1Sys) {
            $(
                // SAFETY: EL1 state only; EL2 is not affected and nothing runs at EL1 meanwhile.
                unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) s.$field, options(nomem, nostack)) };
            )*
            // SAFETY: barrier only.
            unsafe { asm!("isb", options(nomem, nostack)) };
        }
    };
}

sysregs!(
    sctlr => "sctlr_el1",
    vbar => "vbar_el1",
    elr => "elr_el1",
    spsr => "spsr_el1",
    esr => "esr_el1",
    far => "far_el1",
    sp_el1 => "sp_el1",
    sp_el0 => "sp_el0",
    tpidr_el1 => "tpidr_el1",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    cpacr => "cpacr_el1",
    contextidr => "contextidr_el1",
    cntkctl => "cntkctl_el1",
    par => "par_el1",
    afsr0 => "afsr0_el1",
    afsr1 => "afsr1_el1",
    csselr => "csselr_el1",
);

/// `HCR_EL2` while a guest runs: stage-2 on, EL1 is AArch64, SMC traps, the guest's stage-1-off
/// accesses are Normal cacheable (DC), pointer-auth does not trap.
pub fn guest_hcr() -> u64 {
    use aarch64_cpu::registers::HCR_EL2;
    (HCR_EL2::VM::Enable
        + HCR_EL2::RW::EL1IsAarch64
        + HCR_EL2::TSC::SET
        + HCR_EL2::DC::SET
        + HCR_EL2::API::SET
        + HCR_EL2::APK::SET)
        .value
}

/// Loads the stage-2 of the world about to run.
pub fn load_stage2(hcr: u64, vttbr: u64, vtcr: u64) {
    use aarch64_cpu::registers::{Writeable, HCR_EL2, VTCR_EL2, VTTBR_EL2};
    VTCR_EL2.set(vtcr);
    VTTBR_EL2.set(vttbr);
    HCR_EL2.set(hcr);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
