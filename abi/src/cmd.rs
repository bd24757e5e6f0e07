//! The MMIO command device through which the host drives the step-interpreter guest, the way a
//! VMM talks to a guest through a virtual device. It sits at [`crate::guest::CMD_DEVICE_IPA`],
//! outside every memslot, so each access is an MMIO exit to the host.
//!
//! The guest loads `CMD` (the host answers with the next command), loads the arguments it needs,
//! runs the step, stores results and finally stores `STATUS`, which ends the step.

/// Register offsets.
pub const REG_CMD: u64 = 0x00;
pub const REG_ARG0: u64 = 0x08;
pub const REG_ARG1: u64 = 0x10;
pub const REG_ARG2: u64 = 0x18;
pub const REG_ARG3: u64 = 0x20;
pub const REG_RESULT0: u64 = 0x40;
pub const REG_RESULT1: u64 = 0x48;
pub const REG_STATUS: u64 = 0x50;
/// Bytes of the device's register window at [`crate::guest::CMD_DEVICE_IPA`]: an MMIO exit in it
/// is the command device's.
pub const CMD_DEVICE_SIZE: u64 = 0x100;

/// Commands (value of `CMD`).
pub const OP_READ: u64 = 1; // ARG0 = IPA -> RESULT0 = byte
pub const OP_WRITE: u64 = 2; // ARG0 = IPA, ARG1 = byte
pub const OP_HVC: u64 = 3; // ARG0 = function ID, ARG1..3 = x1..x3 -> RESULT0/1 = x0/x1
pub const OP_TOUCH: u64 = 4; // ARG0 = IPA, ARG1 = count, ARG2 = stride: write 1 byte each
pub const OP_UNDEF: u64 = 5; // execute an undefined instruction (a guest's own exception)
pub const OP_HALT: u64 = 6; // stop: the guest parks
/// A pKVM range call the way a Linux guest makes it: ARG0 = function ID (MEM_SHARE,
/// MEM_UNSHARE, MEM_RELINQUISH), ARG1 = IPA, ARG2 = pages. Calls again from where the hyp
/// stopped until done or refused. RESULT0 = the last x0, RESULT1 = pages done in all.
pub const OP_MEM_RANGE: u64 = 7;
/// Enrolls in the MMIO guard and guards the command device's page in one step (after ENROLL
/// an unguarded device access would abort). RESULT0/1 = x0 of ENROLL / of MAP.
pub const OP_MMIO_GUARD: u64 = 8;
/// Measures one operation with the PMU's instruction counters (the hyp sets counter 0 to EL2
/// instructions, counter 1 to all levels): ARG0 = what (`MEASURE_*`), ARG1..3 = its arguments.
/// RESULT0 = EL2 instructions, RESULT1 = instructions at all levels, between the two reads.
pub const OP_MEASURE: u64 = 9;

/// Writes one of the guest's own registers: ARG0 = [`WorldReg`] number, ARG1 = value.
/// A refused access ends the step with `STATUS_EXCEPTION` (RESULT0 = ESR_EL1, EC 0 = undef).
pub const OP_REG_WRITE: u64 = 10;
/// Reads one of the guest's own registers: ARG0 = [`WorldReg`] number -> RESULT0 = value.
pub const OP_REG_READ: u64 = 11;
/// Executes one instruction: ARG0 = [`Insn`] number. An exception ends the step with
/// `STATUS_EXCEPTION` (undef) or `STATUS_ABORTED` (an abort).
pub const OP_EXEC: u64 = 12;
/// Spins without trapping until a flag byte becomes non-zero: ARG0 = IPA of a page the guest
/// first shares with the host (MEM_SHARE; 0 = none), ARG1 = IPA of the flag byte it polls (the
/// coco shared alias, where it applies). RESULT0 = number of polls, RESULT1 = x0 of the MEM_SHARE
/// (SUCCESS when there was none; on a refusal the guest does not poll). The host stops it by
/// writing the flag after its timer brought `VcpuRun` back (`GuestDriver::spin` in the host shim).
pub const OP_SPIN: u64 = 13;

/// Nothing between the two reads (the baseline of the reads themselves).
pub const MEASURE_EMPTY: u64 = 0;
/// Exactly [`MEASURE_NOPS_COUNT`] `nop`s (calibration).
pub const MEASURE_NOPS: u64 = 1;
/// A one-byte store at ARG1.
pub const MEASURE_WRITE: u64 = 2;
/// `HVC` with x0 = ARG1, x1 = ARG2, x2 = ARG3.
pub const MEASURE_HVC: u64 = 3;
/// A range call as in [`OP_MEM_RANGE`]: ARG1 = function, ARG2 = IPA, ARG3 = pages.
pub const MEASURE_MEM_RANGE: u64 = 4;
/// A one-byte load at ARG1 (an MMIO round trip when no memslot covers it).
pub const MEASURE_READ: u64 = 5;
/// Number of `nop`s of [`MEASURE_NOPS`].
pub const MEASURE_NOPS_COUNT: u64 = 1000;

/// `STATUS` values.
pub const STATUS_OK: u64 = 0;
/// The access took an abort the host injected (after a memory-fault exit).
pub const STATUS_ABORTED: u64 = 1;
/// The guest took an exception of its own (RESULT0 = ESR_EL1).
pub const STATUS_EXCEPTION: u64 = 2;
/// Unknown command.
pub const STATUS_BAD_COMMAND: u64 = 3;

/// Registers a world may read and write in `reg-read` / `reg-write` (SCENARIOS.md "Registers
/// across the world switch"), by number (`OP_REG_*` ARG0, and the host shim's own probes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum WorldReg {
    /// FP/SIMD `d0` (the low 64 bits of `v0`).
    D0 = 0,
    Fpcr = 1,
    TpidrEl0 = 2,
    /// Pointer authentication key IA, low half.
    ApiaKeyLoEl1 = 3,
    CntvCvalEl0 = 4,
    CntpCvalEl0 = 5,
    PmccntrEl0 = 6,
    ZcrEl1 = 7,
    /// The GIC CPU interface's priority mask (a guest's is its virtual interface's).
    IccPmrEl1 = 8,
    /// ID registers (read-only): what the world is told it has. A guest's are sanitised by the
    /// hyp (`HCR_EL2.TID3`): no SVE, no SME, no EL2, no PMU unless its VM has one.
    IdAa64Pfr0El1 = 9,
    IdAa64Pfr1El1 = 10,
    IdAa64Dfr0El1 = 11,
}

impl WorldReg {
    pub const ALL: [WorldReg; 12] = [
        WorldReg::D0,
        WorldReg::Fpcr,
        WorldReg::TpidrEl0,
        WorldReg::ApiaKeyLoEl1,
        WorldReg::CntvCvalEl0,
        WorldReg::CntpCvalEl0,
        WorldReg::PmccntrEl0,
        WorldReg::ZcrEl1,
        WorldReg::IccPmrEl1,
        WorldReg::IdAa64Pfr0El1,
        WorldReg::IdAa64Pfr1El1,
        WorldReg::IdAa64Dfr0El1,
    ];

    /// The scenario name (`d0`, `fpcr`, `apiakeylo_el1`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            WorldReg::D0 => "d0",
            WorldReg::Fpcr => "fpcr",
            WorldReg::TpidrEl0 => "tpidr_el0",
            WorldReg::ApiaKeyLoEl1 => "apiakeylo_el1",
            WorldReg::CntvCvalEl0 => "cntv_cval_el0",
            WorldReg::CntpCvalEl0 => "cntp_cval_el0",
            WorldReg::PmccntrEl0 => "pmccntr_el0",
            WorldReg::ZcrEl1 => "zcr_el1",
            WorldReg::IccPmrEl1 => "icc_pmr_el1",
            WorldReg::IdAa64Pfr0El1 => "id_aa64pfr0_el1",
            WorldReg::IdAa64Pfr1El1 => "id_aa64pfr1_el1",
            WorldReg::IdAa64Dfr0El1 => "id_aa64dfr0_el1",
        }
    }

    pub fn from_name(name: &str) -> Option<WorldReg> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }

    pub fn from_u64(v: u64) -> Option<WorldReg> {
        Self::ALL.iter().copied().find(|r| *r as u64 == v)
    }
}

/// Instructions a world may execute in `exec` (SCENARIOS.md), by number (`OP_EXEC` ARG0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Insn {
    /// `rdvl x0, #1` (SVE).
    Sve = 0,
    /// `rdsvl x0, #1` (SME).
    Sme = 1,
    /// `mrs x0, pmcr_el0`.
    Pmu = 2,
    /// `mrs x0, mdscr_el1` (emulated for guests).
    Dbg = 3,
    /// `HLT #0xF000` asking semihosting to write a string to the console.
    Semihost = 4,
    /// A branch to the UART's address (an instruction fetch from device memory).
    FetchDevice = 5,
}

impl Insn {
    pub const ALL: [Insn; 6] = [
        Insn::Sve,
        Insn::Sme,
        Insn::Pmu,
        Insn::Dbg,
        Insn::Semihost,
        Insn::FetchDevice,
    ];

    /// The scenario name (`sve`, `sme`, `pmu`, `dbg`, `semihost`, `fetch-device`).
    pub const fn name(self) -> &'static str {
        match self {
            Insn::Sve => "sve",
            Insn::Sme => "sme",
            Insn::Pmu => "pmu",
            Insn::Dbg => "dbg",
            Insn::Semihost => "semihost",
            Insn::FetchDevice => "fetch-device",
        }
    }

    pub fn from_name(name: &str) -> Option<Insn> {
        Self::ALL.iter().copied().find(|i| i.name() == name)
    }

    pub fn from_u64(v: u64) -> Option<Insn> {
        Self::ALL.iter().copied().find(|i| *i as u64 == v)
    }
}

/// `rdvl x0, #1` ([`Insn::Sve`]): an SVE instruction, as the word the assembler is given (the
/// images are built without SVE).
pub const INSN_RDVL_X0_1: u32 = 0x04bf_5020;
/// `rdsvl x0, #1` ([`Insn::Sme`]): an SME instruction.
pub const INSN_RDSVL_X0_1: u32 = 0x04bf_5820;
/// The semihosting operation [`Insn::Semihost`] asks for in `x0`: SYS_WRITE0 (write the
/// NUL-terminated string at `x1` to the console).
pub const SEMIHOST_SYS_WRITE0: u64 = 0x04;
/// The immediate of the A64 semihosting trap, `HLT #0xF000`.
pub const SEMIHOST_HLT_IMM: u32 = 0xf000;

/// What each [`WorldReg`] is, as the instruction that writes it: expands to a `match` on `$reg`
/// whose arms are `$guard!(instructions; operands)` with the value `$v` in `{v}`. The host shim
/// (`$guard` = its `probed_asm`) and the step guest (`guarded_asm`) share this one table; each
/// names its own guard macro, in scope where this is expanded, and the expansion must be inside
/// `unsafe`. Read-only registers are written too (the write is an undefined instruction).
#[macro_export]
macro_rules! world_reg_write {
    ($guard:ident, $reg:expr, $v:expr) => {
        match $reg {
            $crate::cmd::WorldReg::D0 => {
                $guard!(".arch_extension fp", "fmov d0, {v}"; v = in(reg) $v)
            }
            $crate::cmd::WorldReg::Fpcr => {
                $guard!(".arch_extension fp", "msr fpcr, {v}"; v = in(reg) $v)
            }
            $crate::cmd::WorldReg::TpidrEl0 => $guard!("msr tpidr_el0, {v}"; v = in(reg) $v),
            // APIAKeyLo_EL1.
            $crate::cmd::WorldReg::ApiaKeyLoEl1 => $guard!("msr S3_0_C2_C1_0, {v}"; v = in(reg) $v),
            $crate::cmd::WorldReg::CntvCvalEl0 => $guard!("msr cntv_cval_el0, {v}"; v = in(reg) $v),
            $crate::cmd::WorldReg::CntpCvalEl0 => $guard!("msr cntp_cval_el0, {v}"; v = in(reg) $v),
            $crate::cmd::WorldReg::PmccntrEl0 => $guard!("msr pmccntr_el0, {v}"; v = in(reg) $v),
            // ZCR_EL1.
            $crate::cmd::WorldReg::ZcrEl1 => $guard!("msr S3_0_C1_C2_0, {v}"; v = in(reg) $v),
            $crate::cmd::WorldReg::IccPmrEl1 => $guard!("msr icc_pmr_el1, {v}"; v = in(reg) $v),
            // Read-only (ID_AA64PFR0_EL1, ID_AA64PFR1_EL1, ID_AA64DFR0_EL1): undefined.
            $crate::cmd::WorldReg::IdAa64Pfr0El1 => $guard!("msr S3_0_C0_C4_0, {v}"; v = in(reg) $v),
            $crate::cmd::WorldReg::IdAa64Pfr1El1 => $guard!("msr S3_0_C0_C4_1, {v}"; v = in(reg) $v),
            $crate::cmd::WorldReg::IdAa64Dfr0El1 => $guard!("msr S3_0_C0_C5_0, {v}"; v = in(reg) $v),
        }
    };
}

/// What each [`WorldReg`] is, as the instruction that reads it into the place `$v` (a `u64`
/// variable, `inout`: it keeps its value if the read takes an exception). As
/// [`world_reg_write!`].
#[macro_export]
macro_rules! world_reg_read {
    ($guard:ident, $reg:expr, $v:ident) => {
        match $reg {
            $crate::cmd::WorldReg::D0 => {
                $guard!(".arch_extension fp", "fmov {v}, d0"; v = inout(reg) $v)
            }
            $crate::cmd::WorldReg::Fpcr => {
                $guard!(".arch_extension fp", "mrs {v}, fpcr"; v = inout(reg) $v)
            }
            $crate::cmd::WorldReg::TpidrEl0 => $guard!("mrs {v}, tpidr_el0"; v = inout(reg) $v),
            $crate::cmd::WorldReg::ApiaKeyLoEl1 => $guard!("mrs {v}, S3_0_C2_C1_0"; v = inout(reg) $v),
            $crate::cmd::WorldReg::CntvCvalEl0 => $guard!("mrs {v}, cntv_cval_el0"; v = inout(reg) $v),
            $crate::cmd::WorldReg::CntpCvalEl0 => $guard!("mrs {v}, cntp_cval_el0"; v = inout(reg) $v),
            $crate::cmd::WorldReg::PmccntrEl0 => $guard!("mrs {v}, pmccntr_el0"; v = inout(reg) $v),
            $crate::cmd::WorldReg::ZcrEl1 => $guard!("mrs {v}, S3_0_C1_C2_0"; v = inout(reg) $v),
            $crate::cmd::WorldReg::IccPmrEl1 => $guard!("mrs {v}, icc_pmr_el1"; v = inout(reg) $v),
            $crate::cmd::WorldReg::IdAa64Pfr0El1 => {
                $guard!("mrs {v}, id_aa64pfr0_el1"; v = inout(reg) $v)
            }
            $crate::cmd::WorldReg::IdAa64Pfr1El1 => {
                $guard!("mrs {v}, id_aa64pfr1_el1"; v = inout(reg) $v)
            }
            $crate::cmd::WorldReg::IdAa64Dfr0El1 => {
                $guard!("mrs {v}, id_aa64dfr0_el1"; v = inout(reg) $v)
            }
        }
    };
}

/// What each [`Insn`] is: a `match` on `$insn` of `$guard!(...)` arms, as in
/// [`world_reg_write!`]. `$msg` is the address of the NUL-terminated string
/// [`Insn::Semihost`] asks the console to print, `$target` the device address
/// [`Insn::FetchDevice`] branches to (it comes back through the instruction abort the hyp
/// injects: its stage-2 maps devices execute-never). The only effects are on the registers each
/// arm declares.
#[macro_export]
macro_rules! world_exec {
    ($guard:ident, $insn:expr, $msg:expr, $target:expr) => {
        match $insn {
            $crate::cmd::Insn::Sve => {
                $guard!(".inst {w}"; w = const $crate::cmd::INSN_RDVL_X0_1, out("x0") _)
            }
            $crate::cmd::Insn::Sme => {
                $guard!(".inst {w}"; w = const $crate::cmd::INSN_RDSVL_X0_1, out("x0") _)
            }
            $crate::cmd::Insn::Pmu => $guard!("mrs x0, pmcr_el0"; out("x0") _),
            $crate::cmd::Insn::Dbg => $guard!("mrs x0, mdscr_el1"; out("x0") _),
            $crate::cmd::Insn::Semihost => $guard!(
                "mov x0, #{op}",
                "mov x1, {msg}",
                "hlt #{imm}";
                op = const $crate::cmd::SEMIHOST_SYS_WRITE0,
                imm = const $crate::cmd::SEMIHOST_HLT_IMM,
                msg = in(reg) $msg,
                out("x0") _,
                out("x1") _
            ),
            $crate::cmd::Insn::FetchDevice => $guard!(
                "blr {target}";
                target = in(reg) $target,
                out("x30") _
            ),
        }
    };
}
