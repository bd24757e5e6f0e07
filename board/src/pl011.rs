//! Arm PL011 UART, transmit side only (QEMU needs no baud set-up).

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::registers::{ReadOnly, ReadWrite};

register_bitfields![u32,
    FR [
        TXFF OFFSET(5) NUMBITS(1) [],
        BUSY OFFSET(3) NUMBITS(1) []
    ]
];

#[repr(C)]
struct Registers {
    dr: ReadWrite<u32>,
    _reserved0: [u32; 5],
    fr: ReadOnly<u32, FR::Register>,
}

/// A PL011 at a fixed MMIO address.
pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// # Safety
    /// `base` must be the address of a PL011 register block, mapped as device memory (or reached
    /// with the MMU off), for as long as the value lives.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    fn regs(&self) -> &Registers {
        // SAFETY: `new`'s contract: `base` is a live, mapped PL011 register block.
        unsafe { &*(self.base as *const Registers) }
    }

    pub fn write_byte(&self, b: u8) {
        let regs = self.regs();
        while regs.fr.is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        regs.dr.set(u32::from(b));
    }

    pub fn write_str(&self, s: &str) {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }
}
