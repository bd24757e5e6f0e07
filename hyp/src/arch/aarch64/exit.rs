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
    /// A stage-2 abort on `ipa` (translation, access-flag or permission fault).
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
    /// An interrupt arrived while the guest ran.
    Interrupt,
    /// Anything else the guest did that trapped to EL2 (undefined at EL2's view, system-register
    /// traps, ...), with the raw syndrome.
    Other { esr: u64 },
}

const KIND_LOWER_SYNC: u64 = 5;

/// Decodes the exit recorded in `ctx`.
pub fn decode(ctx: &GuestContext) -> GuestExit {
    if ctx.exit_kind != KIND_LOWER_SYNC {
        return GuestExit::Interrupt;
    }
    let e = ctx.exit_esr;
    let ipa = ((ctx.exit_hpfar >> 4) << 12) | (ctx.exit_far & 0xfff);
    match esr::ec(e) {
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
