//! A guest's exit as the arch corner decodes it (once, from the vector kind and the syndrome),
//! and the exceptions the hyp can give a guest.

use hyp_core::Access;

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

impl MmioAccess {
    /// The bytes a store of register value `v` wrote (the rest of the register is the guest's
    /// and never leaves it, Trust rule 1).
    pub fn stored(&self, v: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        if bits >= 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        }
    }

    /// The register value a load of `c` (the host's completion) gives: truncated to the access,
    /// sign-extended if asked, to 32 bits for a W register.
    pub fn loaded(&self, c: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        let mut v = self.stored(c);
        if self.sign_extend && bits < 64 && v & (1 << (bits - 1)) != 0 {
            v |= !((1u64 << bits) - 1);
        }
        if !self.sixty_four {
            v &= 0xffff_ffff;
        }
        v
    }
}

/// Why the guest left, in portable terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// A stage-2 abort on `ipa` that mapping may serve (translation or access-flag fault).
    Stage2Abort {
        ipa: u64,
        access: Access,
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

/// An exception the hyp makes a world take at its own EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// An undefined-instruction exception (EC 0).
    Undef,
    /// A synchronous external abort on a data access.
    DataAbort,
    /// A synchronous external abort on an instruction fetch.
    InstructionAbort,
    /// The trap the world's own EL1 configured for the instruction (its syndrome is the one the
    /// instruction trapped to EL2 with: a system-register trap, EC 0x18).
    Trap,
}
