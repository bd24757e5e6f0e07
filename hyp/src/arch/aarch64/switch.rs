//! The world switch: entering a guest and coming back on its exit.
//!
//! [`enter_guest`] is a naked function whose return *is* the guest's exit: it saves the hyp's
//! callee-saved registers and SP into the [`GuestContext`], publishes the context in the per-CPU
//! data (`TPIDR_EL2`), loads the guest's registers and `eret`s. The lower-EL vectors see the
//! published context, save the guest's registers and syndrome straight into it, restore the hyp's
//! registers and SP, and return from `enter_guest` with the vector kind in `x0`.

use core::arch::{asm, naked_asm};
use core::mem::offset_of;

use super::cpu::{self, ArchCpu};
use super::debug::{self, DebugState, HostDebug};
use super::features;
use super::fpsimd::{self, FpState};
use super::inject::{self, Injected};
use super::pmu::{self, PmuState};
use super::timer::{self, PtimerRegs, VtimerRegs};
use super::vgic::{self, VgicState};
use super::vtimer;

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
            sctlr: super::el1::SCTLR_EL1_RESET,
            ..Self::default()
        }
    }
}

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
    /// EL1/EL0 registers beyond [`El1Sys`] that each world owns (FP/SIMD, keys, ...).
    pub regs: WorldRegs,
    /// The vCPU's virtual timer (its offset is the VM's).
    pub vtimer: VtimerRegs,
    /// The vCPU's emulated physical timer.
    pub ptimer: PtimerRegs,
    /// The vCPU's debug registers (`debug.rs`).
    pub debug: DebugState,
    /// The vCPU's GIC virtual CPU interface.
    pub vgic: VgicState,
    /// The vCPU's PMU, if its VM opened it (`pmu.rs`).
    pub pmu: PmuState,
    /// What the vCPU reads as `MPIDR_EL1` and `MIDR_EL1` (`VMPIDR_EL2`, `VPIDR_EL2`): fixed at
    /// its creation, whichever physical CPU runs it.
    pub id: VcpuIdRegs,
}

/// A vCPU's identity registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuIdRegs {
    pub vmpidr: u64,
    pub vpidr: u64,
}

impl VcpuIdRegs {
    /// The identity of the vCPU with index `index` in its VM, as KVM gives it (`reset_mpidr`):
    /// the index in Aff0 (16 per cluster, what a GICv3 SGI can name), Aff1 and Aff2; bit 31
    /// (RES1) set, U and MT clear. `MIDR_EL1` is the CPU's (every CPU here is the same).
    pub fn for_index(index: u32) -> Self {
        use aarch64_cpu::registers::{Readable, MIDR_EL1};
        let i = u64::from(index);
        Self {
            vmpidr: (1 << 31) | (i & 0xf) | (((i >> 4) & 0xff) << 8) | (((i >> 12) & 0xff) << 16),
            vpidr: MIDR_EL1.get(),
        }
    }

    /// The host's: the CPU's own `MPIDR_EL1` and `MIDR_EL1`.
    pub fn physical() -> Self {
        use aarch64_cpu::registers::{Readable, MIDR_EL1, MPIDR_EL1};
        Self {
            vmpidr: MPIDR_EL1.get(),
            vpidr: MIDR_EL1.get(),
        }
    }

    /// Makes EL1 read these as `MPIDR_EL1` and `MIDR_EL1`.
    pub fn load(&self) {
        use aarch64_cpu::registers::{Writeable, VMPIDR_EL2};
        VMPIDR_EL2.set(self.vmpidr);
        // SAFETY: VPIDR_EL2 (S3_4_C0_C0_0; aarch64-cpu does not name it) only changes what EL1
        // reads as MIDR_EL1.
        unsafe { asm!("msr S3_4_C0_C0_0, {}", in(reg) self.vpidr, options(nomem, nostack)) };
    }
}

/// Registers of a world that the switch moves besides [`El1Sys`]: the ones whose existence
/// depends on the CPU's features are only touched where they exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorldRegs {
    pub fp: FpState,
    /// APIAKeyLo/Hi, APIBKeyLo/Hi, APDAKeyLo/Hi, APDBKeyLo/Hi, APGAKeyLo/Hi (FEAT_PAuth).
    pub keys: [u64; 10],
    /// `TPIDR2_EL0` (SME; no trap controls it without FEAT_FGT, so it is switched).
    pub tpidr2: u64,
    /// `DISR_EL1` (RAS).
    pub disr: u64,
}

/// ESR_EL1 of an injected abort: data abort at the same EL, 32-bit instruction, synchronous
/// external abort.
const INJECTED_DABT_ESR: u64 = (0x25 << 26) | (1 << 25) | 0x10;

impl GuestContext {
    /// A vCPU about to start at `pc` in EL1h with interrupts masked and `x0 = arg`; `index` is
    /// its index in its VM (its `MPIDR_EL1`).
    pub fn new(pc: u64, arg: u64, index: u32) -> Self {
        let mut x = [0; 31];
        x[0] = arg;
        Self {
            x,
            pc,
            pstate: trap_frame::spsr::EL1H_MASKED,
            sys: El1Sys::reset(),
            exit_esr: 0,
            exit_far: 0,
            exit_hpfar: 0,
            exit_kind: 0,
            host_save: [0; 13],
            regs: WorldRegs::default(),
            vtimer: VtimerRegs::default(),
            ptimer: PtimerRegs::default(),
            debug: DebugState::default(),
            vgic: VgicState::default(),
            pmu: PmuState::default(),
            id: VcpuIdRegs::for_index(index),
        }
    }

    /// Moves the vCPU past the instruction of its last exit, which the hyp completed for it (an
    /// MMIO access, an emulated register): `wide` is that exit's `ESR_EL2.IL`.
    pub fn skip_instruction(&mut self, wide: bool) {
        super::pc::skip(&mut self.pc, &mut self.pstate, wide);
    }

    /// [`GuestContext::skip_instruction`] for the instruction of the last exit's syndrome.
    pub fn skip_trapped(&mut self) {
        self.skip_instruction(self.exit_esr & super::pc::ESR_IL != 0);
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
        self.inject_saved(Injected::DataAbort, far);
    }

    /// Like [`GuestContext::inject_data_abort`] for the access of the last exit: an instruction
    /// abort if it was a fetch, at the virtual address the hardware reported (FAR_EL2).
    pub fn inject_abort_saved(&mut self) {
        let what = if super::esr::ec(self.exit_esr) == super::esr::EC_IABT_LOW {
            Injected::InstructionAbort
        } else {
            Injected::DataAbort
        };
        self.inject_saved(what, self.exit_far);
    }

    /// Injects `what` into a vCPU whose EL1 state is saved in `self.sys` (between runs).
    fn inject_saved(&mut self, what: Injected, far: u64) {
        self.sys.esr = inject::esr_for(what, self.pstate, INJECTED_DABT_ESR);
        self.sys.far = far;
        self.sys.elr = self.pc;
        self.sys.spsr = self.pstate;
        self.pc = self
            .sys
            .vbar
            .wrapping_add(inject::vector_offset(self.pstate));
        self.pstate = inject::entry_pstate(self.pstate, self.sys.sctlr);
    }

    /// The same for a vCPU whose EL1 state is live on this CPU (inside the run loop).
    pub fn inject_data_abort_live(&mut self, far: u64) {
        self.inject_live(Injected::DataAbort, far);
    }

    /// Injects `what` into a vCPU whose EL1 state is live (inside the run loop), for the
    /// instruction of the last exit.
    pub fn inject_live(&mut self, what: Injected, far: u64) {
        let esr = self.exit_esr;
        inject::inject_live(what, &mut self.pc, &mut self.pstate, esr, far);
    }
}

impl hyp_calls::VcpuContext for GuestContext {
    fn reg(&self, n: usize) -> u64 {
        GuestContext::reg(self, n)
    }

    fn set_reg(&mut self, n: usize, v: u64) {
        GuestContext::set_reg(self, n, v);
    }

    fn skip_instruction(&mut self, wide: bool) {
        GuestContext::skip_instruction(self, wide);
    }

    fn skip_trapped_instruction(&mut self) {
        self.skip_trapped();
    }

    fn rewind_hvc(&mut self) {
        // HVC is 4 bytes in A64, A32 and T32; its exception returns past it.
        self.pc = self.pc.wrapping_sub(4);
    }

    fn inject_live(&mut self, what: Injected, far: u64) {
        GuestContext::inject_live(self, what, far);
    }

    fn inject_abort_live(&mut self) {
        let what = if super::esr::ec(self.exit_esr) == super::esr::EC_IABT_LOW {
            Injected::InstructionAbort
        } else {
            Injected::DataAbort
        };
        let far = self.exit_far;
        GuestContext::inject_live(self, what, far);
    }

    fn inject_abort_saved(&mut self) {
        GuestContext::inject_abort_saved(self);
    }

    fn emulate_trap(&mut self, pmu_open: bool) {
        super::traps::guest_trap(self, super::traps::GuestView { pmu: pmu_open });
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
        guest = const ArchCpu::GUEST_CTX_OFFSET,
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
    guest = const ArchCpu::GUEST_CTX_OFFSET,
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
    ($($field:ident => $reg:ident),* $(,)?) => {
        /// Saves the EL1 system registers on the CPU into `s`.
        pub fn save_el1(s: &mut El1Sys) {
            use aarch64_cpu::registers::*;
            $( s.$field = $reg.get(); )*
        }

        /// Loads `s` into the EL1 system registers of the CPU (EL1 state only: EL2 is not
        /// affected and nothing runs at EL1 meanwhile).
        pub fn restore_el1(s: &El1Sys) {
            use aarch64_cpu::registers::*;
            $( $reg.set(s.$field); )*
            aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
        }
    };
}

sysregs!(
    sctlr => SCTLR_EL1,
    vbar => VBAR_EL1,
    elr => ELR_EL1,
    spsr => SPSR_EL1,
    esr => ESR_EL1,
    far => FAR_EL1,
    sp_el1 => SP_EL1,
    sp_el0 => SP_EL0,
    tpidr_el1 => TPIDR_EL1,
    tpidr_el0 => TPIDR_EL0,
    tpidrro_el0 => TPIDRRO_EL0,
    ttbr0 => TTBR0_EL1,
    ttbr1 => TTBR1_EL1,
    tcr => TCR_EL1,
    mair => MAIR_EL1,
    amair => AMAIR_EL1,
    cpacr => CPACR_EL1,
    contextidr => CONTEXTIDR_EL1,
    cntkctl => CNTKCTL_EL1,
    par => PAR_EL1,
    afsr0 => AFSR0_EL1,
    afsr1 => AFSR1_EL1,
    csselr => CSSELR_EL1,
);

/// `HCR_EL2` while a guest runs: stage-2 on, EL1 is AArch64, SMC traps, the guest's own stage-1
/// is its own (no DC: with its MMU off its data accesses are Device-nGnRnE, as on hardware, and
/// once it turns its MMU on its tables translate), pointer-auth does not trap (the keys are
/// switched),
/// physical IRQs and FIQs go to EL2 and the guest's GIC accesses to the virtual CPU interface
/// (IMO/FMO), IMPLEMENTATION DEFINED registers and `ACTLR_EL1` trap (TIDCP/TACR), as do
/// LORegions and RAS error records where they exist (TLOR/TERR), the ID registers are emulated
/// (TID3: a guest sees only what it can use); set/way invalidation cleans too (SWIO), TLB
/// maintenance and barriers reach every CPU the vCPU may move to (FB, BSU=IS).
pub fn guest_hcr() -> u64 {
    use aarch64_cpu::registers::HCR_EL2;
    let mut hcr = (HCR_EL2::VM::Enable
        + HCR_EL2::RW::EL1IsAarch64
        + HCR_EL2::TSC::SET
        + HCR_EL2::API::SET
        + HCR_EL2::APK::SET
        + HCR_EL2::IMO::SET
        + HCR_EL2::FMO::SET
        + HCR_EL2::TIDCP::SET
        + HCR_EL2::TACR::SET
        + HCR_EL2::TID3::SET
        + HCR_EL2::SWIO::SET
        + HCR_EL2::FB::SET
        + HCR_EL2::BSU::InnerShareable)
        .value;
    if features::has(features::LOR) {
        hcr |= HCR_EL2::TLOR::SET.value;
    }
    if features::has(features::RAS) {
        hcr |= HCR_EL2::TERR::SET.value;
    }
    hcr
}

/// Loads the stage-2 of the world about to run.
pub fn load_stage2(hcr: u64, vttbr: u64, vtcr: u64) {
    use aarch64_cpu::registers::{Writeable, HCR_EL2, VTCR_EL2, VTTBR_EL2};
    VTCR_EL2.set(vtcr);
    VTTBR_EL2.set(vttbr);
    HCR_EL2.set(hcr);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

// ---- the registers each world owns beyond El1Sys ----------------------------------------------

macro_rules! raw_sysregs {
    ($save:ident, $restore:ident, $($i:literal => $enc:literal),* $(,)?) => {
        /// Reads the registers into `out` (raw encodings: `aarch64-cpu` names these registers,
        /// but by names the target's assembler rejects without the features that define them).
        fn $save(out: &mut [u64; 10]) {
            $(
                // SAFETY: reading an EL1 register from EL2 has no side effects; the caller checked
                // that the CPU implements it.
                unsafe { asm!(concat!("mrs {}, ", $enc), out(reg) out[$i], options(nomem, nostack)) };
            )*
        }

        /// Loads `v` into the registers.
        fn $restore(v: &[u64; 10]) {
            $(
                // SAFETY: EL1 state of the world about to run; the caller checked that the CPU
                // implements it.
                unsafe { asm!(concat!("msr ", $enc, ", {}"), in(reg) v[$i], options(nomem, nostack)) };
            )*
        }
    };
}

raw_sysregs!(
    save_keys,
    restore_keys,
    0 => "S3_0_C2_C1_0", // APIAKeyLo_EL1
    1 => "S3_0_C2_C1_1", // APIAKeyHi_EL1
    2 => "S3_0_C2_C1_2", // APIBKeyLo_EL1
    3 => "S3_0_C2_C1_3", // APIBKeyHi_EL1
    4 => "S3_0_C2_C2_0", // APDAKeyLo_EL1
    5 => "S3_0_C2_C2_1", // APDAKeyHi_EL1
    6 => "S3_0_C2_C2_2", // APDBKeyLo_EL1
    7 => "S3_0_C2_C2_3", // APDBKeyHi_EL1
    8 => "S3_0_C2_C3_0", // APGAKeyLo_EL1
    9 => "S3_0_C2_C3_1", // APGAKeyHi_EL1
);

fn read_tpidr2() -> u64 {
    let v: u64;
    // SAFETY: TPIDR2_EL0 (S3_3_C13_C0_5) exists (SME, checked by the caller); a plain read.
    unsafe { asm!("mrs {}, S3_3_C13_C0_5", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_tpidr2(v: u64) {
    // SAFETY: as above; EL0 state of the world about to run.
    unsafe { asm!("msr S3_3_C13_C0_5, {}", in(reg) v, options(nomem, nostack)) };
}

fn read_disr() -> u64 {
    let v: u64;
    // SAFETY: DISR_EL1 (S3_0_C12_C1_1) exists (RAS, checked by the caller); a plain read.
    unsafe { asm!("mrs {}, S3_0_C12_C1_1", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_disr(v: u64) {
    // SAFETY: as above; EL1 state of the world about to run.
    unsafe { asm!("msr S3_0_C12_C1_1, {}", in(reg) v, options(nomem, nostack)) };
}

/// Saves the live [`WorldRegs`] into `out` and loads `next`.
fn switch_world_regs(out: &mut WorldRegs, next: &WorldRegs) {
    // SAFETY: both pointers are to live, exclusively borrowed/borrowed FpState values; FP is not
    // trapped at EL2 (CPTR_EL2.TFP clear), and EL2 code never uses FP registers (soft-float).
    unsafe {
        fpsimd::save(&mut out.fp);
        fpsimd::restore(&next.fp);
    }
    let f = features::get();
    if f & features::PAUTH != 0 {
        save_keys(&mut out.keys);
        restore_keys(&next.keys);
    }
    if f & features::SME != 0 {
        out.tpidr2 = read_tpidr2();
        write_tpidr2(next.tpidr2);
    }
    if f & features::RAS != 0 {
        out.disr = read_disr();
        write_disr(next.disr);
    }
}

/// What the hyp keeps of the host while a guest runs.
#[derive(Debug, Default)]
pub struct HostSave {
    sys: El1Sys,
    regs: WorldRegs,
    vtimer: VtimerRegs,
    debug: HostDebug,
    /// PPI 27 as the host had it, if the hyp changed it for the run (`vtimer.rs`).
    ppi: vtimer::HostPpi,
    mdcr: u64,
    /// The host's PMU counters paused for a guest without a PMU (`PMCNTENSET_EL0`).
    pmcnten: u64,
    /// The guest's VM opened the PMU: the host's is switched (saved in its CPU's data).
    pmu_open: bool,
}

/// How the hyp runs one vCPU.
#[derive(Clone, Copy, Debug)]
pub struct GuestConfig {
    pub vttbr: u64,
    pub vtcr: u64,
    /// The VM's `CNTVOFF_EL2`.
    pub cntvoff: u64,
    /// The guest may use the PMU (`VmOpenPmu`); else every PMU access is UNDEF.
    pub pmu_open: bool,
}

/// `MDCR_EL2` while a guest runs: the host's (HPMN: the counters EL1 may reach) plus the debug
/// traps (TDOSA, TDRA: emulated; TDA until the guest's breakpoint and watchpoint registers are
/// loaded, `debug.rs`) and the PMU's: for a VM without a PMU every access (TPM, TPMCR: UNDEF),
/// for one that opened it `PMCR_EL0` only (TPMCR: emulated, so that neither its P bit nor
/// anything else of it resets the hyp's counters).
fn guest_mdcr(host_mdcr: u64, pmu_open: bool, tda: bool) -> u64 {
    use aarch64_cpu::registers::MDCR_EL2;
    let mut m =
        host_mdcr | (MDCR_EL2::TDOSA::SET + MDCR_EL2::TDRA::SET + MDCR_EL2::TPMCR::SET).value;
    if tda {
        m |= MDCR_EL2::TDA::SET.value;
    }
    if !pmu_open {
        m |= MDCR_EL2::TPM::SET.value;
    }
    m
}

/// From the host to a guest: saves every register the host owns and loads the vCPU's, then the
/// guest's traps and stage-2. Returns what [`switch_to_host`] needs to undo it.
pub fn switch_to_guest(ctx: &GuestContext, cfg: &GuestConfig) -> HostSave {
    use aarch64_cpu::registers::{Readable, Writeable, MDCR_EL2};
    let mut host = HostSave {
        pmu_open: cfg.pmu_open,
        ..HostSave::default()
    };
    // The PMU first (and back last): the host's counters count none of the switch, a closed
    // guest's run or the hyp's work for it.
    if cfg.pmu_open {
        pmu::enter_open(&cpu::this_cpu().host_pmu, &ctx.pmu);
    } else {
        host.pmcnten = pmu::pause_counters();
    }
    save_el1(&mut host.sys);
    restore_el1(&ctx.sys);
    switch_world_regs(&mut host.regs, &ctx.regs);
    timer::switch_vtimer(&mut host.vtimer, &ctx.vtimer, cfg.cntvoff);
    timer::guest_cnthctl();
    // The guest's MDSCR_EL1 and OS lock, and its breakpoint and watchpoint registers if it has
    // debug exceptions on: none the host armed fires in the guest (`debug.rs`).
    host.debug = debug::switch_to_guest(&ctx.debug);
    host.mdcr = MDCR_EL2.get();
    MDCR_EL2.set(guest_mdcr(
        host.mdcr,
        cfg.pmu_open,
        debug::guest_tda(&ctx.debug),
    ));
    vgic::restore(&ctx.vgic);
    // With the guest's virtual timer and virtual interface in place: its timer interrupt.
    host.ppi = vtimer::enter(&ctx.vgic);
    ctx.id.load();
    load_stage2(guest_hcr(), cfg.vttbr, cfg.vtcr);
    host
}

/// From a guest back to the host: saves the vCPU's registers, reloads the host's and its traps.
/// The caller then loads the host's stage-2.
pub fn switch_to_host(ctx: &mut GuestContext, host: &HostSave) {
    use aarch64_cpu::registers::{Writeable, MDCR_EL2};
    VcpuIdRegs::physical().load();
    vgic::save(&mut ctx.vgic);
    debug::switch_to_host(&mut ctx.debug, &host.debug);
    MDCR_EL2.set(host.mdcr);
    timer::switch_vtimer(&mut ctx.vtimer, &host.vtimer, 0);
    // With the host's virtual timer back: PPI 27 as the host had it.
    vtimer::exit(&host.ppi);
    timer::host_cnthctl();
    switch_world_regs(&mut ctx.regs, &host.regs);
    save_el1(&mut ctx.sys);
    restore_el1(&host.sys);
    if host.pmu_open {
        pmu::exit_open(&cpu::this_cpu().host_pmu, &mut ctx.pmu);
    } else {
        pmu::resume_counters(host.pmcnten);
    }
}
