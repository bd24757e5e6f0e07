//! Decoding a guest exit (vector kind + `ESR_EL2`/`FAR_EL2`/`HPFAR_EL2`) into a portable
//! [`GuestExit`], once, here in the arch corner.

use super::esr;
use super::switch::GuestContext;

/// What a trapped MMIO access did, from the syndrome (ISV = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    /// Transfer register (31 = xzr).
    pub reg: u8,
    /// Sign-extend a load.
    pub sign_extend: bool,
    /// 64-bit register (else the result is 32-bit).
    pub sixty_four: bool,
    /// A 32-bit instruction (`ESR_EL2.IL`; else a 16-bit T32 one): how far its completion moves
    /// the PC.
    pub wide: bool,
}

/// The access kind of a stage-2 abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortAccess {
    Read,
    Write,
    Exec,
}

/// Why the guest left, in portable terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// A stage-2 abort on `ipa` that mapping may serve (translation or access-flag fault).
    Stage2Abort {
        ipa: u64,
        access: AbortAccess,
        /// Decoded access if the syndrome is valid (data aborts only).
        mmio: Option<MmioAccess>,
    },
    /// `HVC #imm` (the PC already points past it).
    Hvc { imm: u16 },
    /// `SMC` (trapped; the PC points at it).
    Smc,
    /// A physical interrupt (IRQ or FIQ) arrived while the guest ran.
    Interrupt,
    /// A stage-2 abort that mapping cannot fix (permission, alignment, external abort, address
    /// size, ...): the guest gets an abort at its own EL1.
    Abort { instruction: bool },
    /// A stage-2 TLB conflict: invalidate and retry.
    TlbConflict,
    /// An exception the guest cannot be given at its own EL1 (an SError routed to EL2), with its
    /// class only.
    Uncatchable { ec: u64 },
    /// Anything else the guest did that trapped to EL2 (system-register traps, SVE, SME, ...),
    /// with the raw syndrome: emulated or answered with an undefined instruction.
    Other { esr: u64 },
}

const KIND_LOWER_SYNC: u64 = 5;
const KIND_LOWER_IRQ: u64 = 6;
const KIND_LOWER_FIQ: u64 = 7;
/// The class reported for an SError that reached EL2 from a guest.
const EC_SERROR: u64 = 0x2f;

/// Decodes the exit recorded in `ctx`.
pub fn decode(ctx: &GuestContext) -> GuestExit {
    match ctx.exit_kind {
        KIND_LOWER_SYNC => {}
        KIND_LOWER_IRQ | KIND_LOWER_FIQ => return GuestExit::Interrupt,
        _ => return GuestExit::Uncatchable { ec: EC_SERROR },
    }
    let e = ctx.exit_esr;
    let ipa = ((ctx.exit_hpfar >> 4) << 12) | (ctx.exit_far & 0xfff);
    let ec = esr::ec(e);
    if matches!(ec, esr::EC_DABT_LOW | esr::EC_IABT_LOW) {
        match esr::fault_kind(e) {
            esr::FaultKind::Translation | esr::FaultKind::AccessFlag => {}
            esr::FaultKind::TlbConflict => return GuestExit::TlbConflict,
            esr::FaultKind::Other => {
                return GuestExit::Abort {
                    instruction: ec == esr::EC_IABT_LOW,
                }
            }
        }
    }
    match ec {
        esr::EC_HVC64 => GuestExit::Hvc {
            imm: (e & 0xffff) as u16,
        },
        esr::EC_SMC64 => GuestExit::Smc,
        esr::EC_DABT_LOW => {
            let isv = e & (1 << 24) != 0;
            let write = esr::is_write(e);
            let mmio = isv.then(|| MmioAccess {
                size: 1 << ((e >> 22) & 3),
                write,
                reg: ((e >> 16) & 0x1f) as u8,
                sign_extend: e & (1 << 21) != 0,
                sixty_four: e & (1 << 15) != 0,
                wide: e & super::pc::ESR_IL != 0,
            });
            GuestExit::Stage2Abort {
                ipa,
                access: if write {
                    AbortAccess::Write
                } else {
                    AbortAccess::Read
                },
                mmio,
            }
        }
        esr::EC_IABT_LOW => GuestExit::Stage2Abort {
            ipa,
            access: AbortAccess::Exec,
            mmio: None,
        },
        _ => GuestExit::Other { esr: e },
    }
}
