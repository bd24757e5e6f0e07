//! What the hyp does with a trap it does not forward (Trust rule 5): a guest's system-register
//! access it emulates (the physical timer, debug registers, `ACTLR_EL1`, RAS error records, the
//! ID registers through `HCR_EL2.TID3`), and for everything else, guest or host, an
//! undefined-instruction exception injected into the world that ran the instruction, never a hyp
//! crash.

use super::debug::DebugReg;
use super::esr;
use super::inject::{inject_live, Injected};
use super::switch::GuestContext;
use super::timer::{self, PtimerReg};

/// A trapped `MRS`/`MSR`/system instruction (EC 0x18), decoded from its ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// (op0, op1, CRn, CRm, op2).
    pub enc: (u8, u8, u8, u8, u8),
    /// General register (31 = xzr).
    pub rt: usize,
    /// MRS (a read) rather than MSR.
    pub read: bool,
}

impl SysRegAccess {
    pub fn decode(esr: u64) -> Self {
        let iss = esr & 0x1ff_ffff;
        let f = |shift: u32, bits: u32| ((iss >> shift) & ((1 << bits) - 1)) as u8;
        SysRegAccess {
            enc: (f(20, 2), f(14, 3), f(10, 4), f(1, 4), f(17, 3)),
            rt: usize::from(f(5, 5)),
            read: iss & 1 != 0,
        }
    }
}

/// A trapped AArch32 `MCR`/`MRC` (EC 0x03) or `MCRR`/`MRRC` (EC 0x04) to CP15, decoded from its
/// ISS. The AArch32 world is a guest's EL0 (its EL1 is AArch64), in User mode: `R0..R14` are
/// `X0..X14`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cp15Access {
    /// `MCRR`/`MRRC` (64-bit, two registers).
    pub wide: bool,
    pub opc1: u8,
    /// 0 for the 64-bit form (no CRn, no opc2).
    pub crn: u8,
    pub crm: u8,
    pub opc2: u8,
    pub rt: usize,
    /// The second register of the 64-bit form.
    pub rt2: usize,
    /// `MRC`/`MRRC` (a read).
    pub read: bool,
}

impl Cp15Access {
    pub fn decode(esr: u64) -> Self {
        let f = |shift: u32, bits: u32| ((esr >> shift) & ((1 << bits) - 1)) as u8;
        let wide = esr::ec(esr) == esr::EC_CP15_64;
        Cp15Access {
            wide,
            opc1: if wide { f(16, 4) } else { f(14, 3) },
            crn: if wide { 0 } else { f(10, 4) },
            crm: f(1, 4),
            opc2: if wide { 0 } else { f(17, 3) },
            rt: usize::from(f(5, 5)),
            rt2: usize::from(f(10, 5)),
            read: esr & 1 != 0,
        }
    }

    /// The physical-timer register it names, if any: `CNTP_TVAL` (`p15, 0, c14, c2, 0`),
    /// `CNTP_CTL` (`p15, 0, c14, c2, 1`), `CNTP_CVAL` (`p15, 2, c14`, 64-bit).
    fn ptimer(&self) -> Option<PtimerReg> {
        match (self.wide, self.opc1, self.crn, self.crm, self.opc2) {
            (false, 0, 14, 2, 0) => Some(PtimerReg::Tval),
            (false, 0, 14, 2, 1) => Some(PtimerReg::Ctl),
            (true, 2, _, 14, _) => Some(PtimerReg::Cval),
            _ => None,
        }
    }
}

/// The AArch64 register that holds AArch32 User-mode register `n` (`R15`, the PC, is none).
fn aarch32_reg(n: usize) -> Option<usize> {
    (n < 15).then_some(n)
}

/// How the hyp answers an emulated register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emulated {
    Ptimer(PtimerReg),
    /// `PMCR_EL0` of a VM that opened the PMU (`MDCR_EL2.TPMCR`); UNDEF for one that did not.
    Pmcr,
    /// A switched debug register (`debug.rs`): taken by the guest at its first access.
    Debug(DebugReg),
    OsLar,
    OsLsr,
    /// The debug communication channel (`MDCCSR_EL0`, `DBGDTR*_EL0`): RAZ/WI, or, from the
    /// guest's EL0 with its `MDSCR_EL1.TDCC` set, the trap to its EL1 that TDCC asks for (which
    /// QEMU 7.2 does not implement: the access reaches EL2 through `MDCR_EL2.TDA` instead).
    Dcc,
    /// An ID register (op0 3, op1 0, CRn 0, CRm 1..7): read-only, sanitised.
    Id {
        crm: u8,
        op2: u8,
    },
    /// Reads as zero, writes ignored.
    RazWi,
    /// Not emulated: undefined instruction.
    Undef,
}

/// Which registers a guest's trapped access is emulated as (KVM makes the same choices: the
/// physical timer is emulated, the breakpoint/watchpoint registers, `MDSCR_EL1` and `MDCCINT_EL1`
/// are taken by the guest at its first access (`debug.rs`), the OS lock is emulated, the rest of
/// the debug space is RAZ/WI, as are `ACTLR_EL1` and the RAS error records; the PMU of a VM
/// without one, trace, LORegions, IMPLEMENTATION DEFINED registers and everything unknown are
/// UNDEF).
fn classify(enc: (u8, u8, u8, u8, u8)) -> Emulated {
    match enc {
        (3, 3, 14, 2, 0) => Emulated::Ptimer(PtimerReg::Tval),
        (3, 3, 14, 2, 1) => Emulated::Ptimer(PtimerReg::Ctl),
        (3, 3, 14, 2, 2) => Emulated::Ptimer(PtimerReg::Cval),
        (3, 3, 9, 12, 0) => Emulated::Pmcr,
        (2, 0, 0, 2, 2) => Emulated::Debug(DebugReg::Mdscr),
        (2, 0, 0, 2, 0) => Emulated::Debug(DebugReg::Mdccint),
        (2, 0, 0, n, 4) => Emulated::Debug(DebugReg::Bvr(n)),
        (2, 0, 0, n, 5) => Emulated::Debug(DebugReg::Bcr(n)),
        (2, 0, 0, n, 6) => Emulated::Debug(DebugReg::Wvr(n)),
        (2, 0, 0, n, 7) => Emulated::Debug(DebugReg::Wcr(n)),
        (2, 0, 1, 0, 4) => Emulated::OsLar,
        (2, 0, 1, 1, 4) => Emulated::OsLsr,
        (2, 3, 0, 1, 0) | (2, 3, 0, 4, 0) | (2, 3, 0, 5, 0) => Emulated::Dcc,
        (3, 0, 0, crm @ 1..=7, op2) => Emulated::Id { crm, op2 },
        // The rest of the debug space (DCC, OS double lock, claim tags, ...): op0 = 2 with
        // op1 = 0 or 3. op1 = 1 is trace: UNDEF.
        (2, 0 | 3, _, _, _) => Emulated::RazWi,
        // ACTLR_EL1 (HCR_EL2.TACR).
        (3, 0, 1, 0, 1) => Emulated::RazWi,
        // ERRIDR_EL1, ERRSELR_EL1, ERX*_EL1 (HCR_EL2.TERR).
        (3, 0, 5, 3..=5, _) => Emulated::RazWi,
        _ => Emulated::Undef,
    }
}

/// `OSLSR_EL1` of an emulated vCPU: OSLM = 0b10 (the OS lock is implemented), OSLK as written.
fn oslsr(oslk: bool) -> u64 {
    0b1000 | (u64::from(oslk) << 1)
}

/// What a guest may be shown of the CPU (its VM's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestView {
    /// The VM may use the PMU (`VmOpenPmu`).
    pub pmu: bool,
}

/// Clears 4-bit ID fields (each named by its lowest bit): "not implemented".
fn clear_fields(v: u64, fields: &[u32]) -> u64 {
    fields.iter().fold(v, |v, &lo| v & !(0xf << lo))
}

/// Caps the unsigned 4-bit ID field at bit `lo` at `max`.
fn cap_field(v: u64, lo: u32, max: u64) -> u64 {
    let f = ((v >> lo) & 0xf).min(max);
    (v & !(0xf << lo)) | (f << lo)
}

/// The value a guest reads from the ID register (CRm, op2) whose real value is `real` (Trust
/// rule 5: what a guest is told it has, it has). Hidden: EL2 (the guest has none), SVE and SME
/// (trapped: UNDEF), the PMU of a VM without one, trace, statistical profiling, AMU, MPAM, MTE,
/// LORegions (trapped), nested virtualisation, LS64, SCXTNUM (CSV2 capped at 1); the physical
/// address range is capped at the VM's 40-bit IPA space. ID registers the hyp does not know in the AArch64 space read as
/// zero: a feature the hyp has never heard of may bring registers it does not switch.
pub fn sanitized_id(crm: u8, op2: u8, real: u64, view: GuestView) -> u64 {
    let pmu: &[u32] = if view.pmu { &[] } else { &[8, 48] };
    match (crm, op2) {
        // ID_PFR1_EL1: Virtualization.
        (1, 1) => clear_fields(real, &[12]),
        // ID_DFR0_EL1: CopTrc, MMapTrc, and PerfMon without a PMU.
        (1, 2) => {
            let v = clear_fields(real, &[12, 16]);
            if view.pmu {
                v
            } else {
                clear_fields(v, &[24])
            }
        }
        // The rest of the AArch32 ID registers and MVFR0..2.
        (1..=3, _) => real,
        // ID_AA64PFR0_EL1: EL2, SVE, MPAM, AMU; CSV2 at most 1 (FEAT_CSV2_2 brings SCXTNUM_EL0/EL1,
        // which guests do not get: HCR_EL2.EnSCXT is clear while they run, as in KVM).
        (4, 0) => cap_field(clear_fields(real, &[8, 32, 40, 44]), 56, 1),
        // ID_AA64PFR1_EL1: MTE, MPAM_frac, SME, RNDR_trap, NMI, MTE_frac, GCS, THE, MTEX; CSV2_frac
        // at most 1 (FEAT_CSV2_1p2 brings SCXTNUM too).
        (4, 1) => cap_field(
            clear_fields(real, &[8, 16, 24, 28, 36, 40, 44, 48, 52]),
            32,
            1,
        ),
        // ID_AA64DFR0_EL1: TraceVer, PMSVer, TraceFilt, TraceBuffer, BRBE, HPMN0, and PMUVer,
        // MTPMU without a PMU.
        (5, 0) => clear_fields(clear_fields(real, &[4, 32, 40, 44, 52, 60]), pmu),
        // ID_AA64ISAR0/2_EL1 as they are; ISAR1 without LS64 (ACCDATA_EL1 is not switched).
        (6, 0) | (6, 2) => real,
        (6, 1) => clear_fields(real, &[60]),
        // ID_AA64MMFR0_EL1: PARange at most 40 bits (0b0010).
        (7, 0) => {
            let pa = (real & 0xf).min(0b0010);
            (real & !0xf) | pa
        }
        // ID_AA64MMFR1_EL1: VH (no EL2), LO.
        (7, 1) => clear_fields(real, &[8, 16]),
        // ID_AA64MMFR2_EL1: NV.
        (7, 2) => clear_fields(real, &[24]),
        _ => 0,
    }
}

/// What became of a trapped instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Emulated: the guest goes on after it.
    Done,
    /// Not emulated: an undefined instruction at the guest's EL1.
    Undef,
    /// A trap the guest's own EL1 asked for (and the CPU did not take): taken there with the
    /// same syndrome.
    Reflect,
}

/// Emulates a guest's trapped system-register access.
fn emulate_sysreg(ctx: &mut GuestContext, a: SysRegAccess, view: GuestView) -> Outcome {
    let value = ctx.reg(a.rt);
    let result = match classify(a.enc) {
        Emulated::Undef => return Outcome::Undef,
        // ID registers are read-only.
        Emulated::Id { .. } if !a.read => return Outcome::Undef,
        Emulated::Id { crm, op2 } => sanitized_id(crm, op2, read_id_register(crm, op2), view),
        Emulated::Ptimer(r) => ptimer_access(ctx, r, (!a.read).then_some(value)),
        Emulated::Pmcr if !view.pmu => return Outcome::Undef,
        Emulated::Pmcr => pmcr_access(ctx, (!a.read).then_some(value)),
        Emulated::Debug(r) => {
            match super::debug::guest_access(&mut ctx.debug, r, (!a.read).then_some(value)) {
                Some(v) => v,
                None => return Outcome::Undef,
            }
        }
        Emulated::Dcc if super::debug::dcc_trapped_at_el1(&ctx.debug, ctx.pstate) => {
            return Outcome::Reflect
        }
        Emulated::Dcc => 0,
        Emulated::OsLar => {
            if !a.read {
                super::debug::guest_os_lock(&mut ctx.debug, value & 1 != 0);
            }
            0
        }
        Emulated::OsLsr => oslsr(ctx.debug.oslk),
        Emulated::RazWi => 0,
    };
    if a.read {
        ctx.set_reg(a.rt, result);
    }
    Outcome::Done
}

/// A read (`write` = `None`) or write of the vCPU's emulated physical timer: one copy per vCPU,
/// whichever execution state names it. -> the value read (0 for a write).
fn ptimer_access(ctx: &mut GuestContext, r: PtimerReg, write: Option<u64>) -> u64 {
    let now = timer::counter();
    match write {
        None => ctx.ptimer.read(r, now),
        Some(v) => {
            ctx.ptimer.write(r, v, now);
            0
        }
    }
}

/// A read (`write` = `None`) or write of the emulated `PMCR_EL0` of a vCPU whose VM opened the
/// PMU (its PMU is live on this CPU). -> the value read (0 for a write).
fn pmcr_access(ctx: &mut GuestContext, write: Option<u64>) -> u64 {
    match write {
        None => super::pmu::pmcr_read(&ctx.pmu),
        Some(v) => {
            super::pmu::pmcr_write(&mut ctx.pmu, v);
            0
        }
    }
}

/// Emulates a guest's trapped AArch32 CP15 access (its EL0): the physical timer, as for AArch64
/// (KVM emulates `CNTP_*` from both states the same way), and `PMCR` of a VM that opened the
/// PMU. `false`: not emulated.
fn emulate_cp15(ctx: &mut GuestContext, a: Cp15Access, view: GuestView) -> bool {
    let pmcr = (a.wide, a.opc1, a.crn, a.crm, a.opc2) == (false, 0, 9, 12, 0);
    let reg = |ctx: &GuestContext, n: usize| aarch32_reg(n).map_or(0, |x| ctx.reg(x) & 0xffff_ffff);
    let write = (!a.read).then(|| {
        if a.wide {
            reg(ctx, a.rt) | (reg(ctx, a.rt2) << 32)
        } else {
            reg(ctx, a.rt)
        }
    });
    let v = match a.ptimer() {
        Some(r) => ptimer_access(ctx, r, write),
        None if pmcr && view.pmu => pmcr_access(ctx, write) & 0xffff_ffff,
        None => return false,
    };
    if a.read {
        let (lo, hi) = (v & 0xffff_ffff, v >> 32);
        if let Some(x) = aarch32_reg(a.rt) {
            ctx.set_reg(x, lo);
        }
        if let (true, Some(x)) = (a.wide, aarch32_reg(a.rt2)) {
            ctx.set_reg(x, hi);
        }
    }
    true
}

/// A guest's trap that is neither a stage-2 abort nor a call: emulated where the hyp emulates it,
/// else answered with an undefined-instruction exception at the guest's own EL1. A trapped
/// AArch32 instruction whose condition fails did not execute: the guest just moves past it. The
/// guest's EL1 state must be live (inside the run loop).
pub fn guest_trap(ctx: &mut GuestContext, view: GuestView) {
    let esr_el2 = ctx.exit_esr;
    let ec = esr::ec(esr_el2);
    let outcome = match ec {
        esr::EC_SYS64 => emulate_sysreg(ctx, SysRegAccess::decode(esr_el2), view),
        0x01..=esr::EC_AARCH32_LAST if !super::pc::condition_holds(esr_el2, ctx.pstate) => {
            Outcome::Done
        }
        esr::EC_CP15_32 | esr::EC_CP15_64 => {
            if emulate_cp15(ctx, Cp15Access::decode(esr_el2), view) {
                Outcome::Done
            } else {
                Outcome::Undef
            }
        }
        _ => Outcome::Undef,
    };
    match outcome {
        Outcome::Done => ctx.skip_trapped(),
        Outcome::Undef => inject_live(Injected::Undef, &mut ctx.pc, &mut ctx.pstate, esr_el2, 0),
        Outcome::Reflect => inject_live(Injected::Trap, &mut ctx.pc, &mut ctx.pstate, esr_el2, 0),
    }
}

/// A trap from the host the hyp does not handle: an undefined-instruction exception at the host's
/// EL1. `elr`/`spsr` are the host's trap frame.
pub fn host_undef(elr: &mut u64, spsr: &mut u64, esr_el2: u64) {
    inject_live(Injected::Undef, elr, spsr, esr_el2, 0);
}

/// Reads the ID register at (op0 3, op1 0, CRn 0, `crm`, `op2`): the ID space EL1 reads trap to
/// with `HCR_EL2.TID3` (encodings without a register read as zero).
fn read_id_register(crm: u8, op2: u8) -> u64 {
    macro_rules! read_id {
        ($enc:literal) => {{
            let v: u64;
            // SAFETY: a read in the ID register space (CRn 0, CRm 1..7), which has no side
            // effects and reads as zero where nothing is allocated.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) };
            v
        }};
    }
    match (crm, op2) {
        (1, 0) => read_id!("S3_0_C0_C1_0"),
        (1, 1) => read_id!("S3_0_C0_C1_1"),
        (1, 2) => read_id!("S3_0_C0_C1_2"),
        (1, 3) => read_id!("S3_0_C0_C1_3"),
        (1, 4) => read_id!("S3_0_C0_C1_4"),
        (1, 5) => read_id!("S3_0_C0_C1_5"),
        (1, 6) => read_id!("S3_0_C0_C1_6"),
        (1, 7) => read_id!("S3_0_C0_C1_7"),
        (2, 0) => read_id!("S3_0_C0_C2_0"),
        (2, 1) => read_id!("S3_0_C0_C2_1"),
        (2, 2) => read_id!("S3_0_C0_C2_2"),
        (2, 3) => read_id!("S3_0_C0_C2_3"),
        (2, 4) => read_id!("S3_0_C0_C2_4"),
        (2, 5) => read_id!("S3_0_C0_C2_5"),
        (2, 6) => read_id!("S3_0_C0_C2_6"),
        (2, 7) => read_id!("S3_0_C0_C2_7"),
        (3, 0) => read_id!("S3_0_C0_C3_0"),
        (3, 1) => read_id!("S3_0_C0_C3_1"),
        (3, 2) => read_id!("S3_0_C0_C3_2"),
        (3, 3) => read_id!("S3_0_C0_C3_3"),
        (3, 4) => read_id!("S3_0_C0_C3_4"),
        (3, 5) => read_id!("S3_0_C0_C3_5"),
        (3, 6) => read_id!("S3_0_C0_C3_6"),
        (3, 7) => read_id!("S3_0_C0_C3_7"),
        (4, 0) => read_id!("S3_0_C0_C4_0"),
        (4, 1) => read_id!("S3_0_C0_C4_1"),
        (4, 2) => read_id!("S3_0_C0_C4_2"),
        (4, 3) => read_id!("S3_0_C0_C4_3"),
        (4, 4) => read_id!("S3_0_C0_C4_4"),
        (4, 5) => read_id!("S3_0_C0_C4_5"),
        (4, 6) => read_id!("S3_0_C0_C4_6"),
        (4, 7) => read_id!("S3_0_C0_C4_7"),
        (5, 0) => read_id!("S3_0_C0_C5_0"),
        (5, 1) => read_id!("S3_0_C0_C5_1"),
        (5, 2) => read_id!("S3_0_C0_C5_2"),
        (5, 3) => read_id!("S3_0_C0_C5_3"),
        (5, 4) => read_id!("S3_0_C0_C5_4"),
        (5, 5) => read_id!("S3_0_C0_C5_5"),
        (5, 6) => read_id!("S3_0_C0_C5_6"),
        (5, 7) => read_id!("S3_0_C0_C5_7"),
        (6, 0) => read_id!("S3_0_C0_C6_0"),
        (6, 1) => read_id!("S3_0_C0_C6_1"),
        (6, 2) => read_id!("S3_0_C0_C6_2"),
        (6, 3) => read_id!("S3_0_C0_C6_3"),
        (6, 4) => read_id!("S3_0_C0_C6_4"),
        (6, 5) => read_id!("S3_0_C0_C6_5"),
        (6, 6) => read_id!("S3_0_C0_C6_6"),
        (6, 7) => read_id!("S3_0_C0_C6_7"),
        (7, 0) => read_id!("S3_0_C0_C7_0"),
        (7, 1) => read_id!("S3_0_C0_C7_1"),
        (7, 2) => read_id!("S3_0_C0_C7_2"),
        (7, 3) => read_id!("S3_0_C0_C7_3"),
        (7, 4) => read_id!("S3_0_C0_C7_4"),
        (7, 5) => read_id!("S3_0_C0_C7_5"),
        (7, 6) => read_id!("S3_0_C0_C7_6"),
        (7, 7) => read_id!("S3_0_C0_C7_7"),
        _ => 0,
    }
}
