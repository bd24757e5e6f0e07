//! Decoding a guest exit (vector kind + `ESR_EL2`/`FAR_EL2`/`HPFAR_EL2`) into a portable
//! portable [`GuestExit`] (`hyp_calls::exit`), once, here in the arch corner.

use super::esr;
use super::switch::GuestContext;

pub use hyp_calls::exit::{GuestExit, MmioAccess};
use hyp_core::Access;

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
                access: if write { Access::Write } else { Access::Read },
                mmio,
            }
        }
        esr::EC_IABT_LOW => GuestExit::Stage2Abort {
            ipa,
            access: Access::Exec,
            mmio: None,
        },
        _ => GuestExit::Other { esr: e },
    }
}
