//! The step-interpreter guest: runs what the host asks through the command device, one step at a
//! time, and reports each outcome.
#![no_std]
#![no_main]

use abi::cmd::*;
use abi::guest::CMD_DEVICE_IPA;
use guests::{hvc, mmio_read, mmio_write, read_byte, take_exception, write_byte};

fn reg(off: u64) -> u64 {
    CMD_DEVICE_IPA + off
}

fn finish_step() {
    match take_exception() {
        None => mmio_write(reg(REG_STATUS), STATUS_OK),
        Some(esr) if (esr >> 26) & 0x3f == 0x25 => mmio_write(reg(REG_STATUS), STATUS_ABORTED),
        Some(esr) => {
            mmio_write(reg(REG_RESULT0), esr);
            mmio_write(reg(REG_STATUS), STATUS_EXCEPTION)
        }
    }
}

#[no_mangle]
extern "C" fn guest_main(_arg: u64) -> ! {
    loop {
        let op = mmio_read(reg(REG_CMD));
        match op {
            OP_READ => {
                let v = read_byte(mmio_read(reg(REG_ARG0)));
                mmio_write(reg(REG_RESULT0), u64::from(v));
            }
            OP_WRITE => {
                let addr = mmio_read(reg(REG_ARG0));
                write_byte(addr, mmio_read(reg(REG_ARG1)) as u8);
            }
            OP_HVC => {
                let f = mmio_read(reg(REG_ARG0));
                let a1 = mmio_read(reg(REG_ARG1));
                let a2 = mmio_read(reg(REG_ARG2));
                let a3 = mmio_read(reg(REG_ARG3));
                let r = hvc(f, a1, a2, a3);
                mmio_write(reg(REG_RESULT0), r[0]);
                mmio_write(reg(REG_RESULT1), r[1]);
            }
            OP_TOUCH => {
                let base = mmio_read(reg(REG_ARG0));
                let count = mmio_read(reg(REG_ARG1));
                let stride = mmio_read(reg(REG_ARG2));
                for i in 0..count {
                    write_byte(base + i * stride, 1);
                }
            }
            OP_UNDEF => {
                // SAFETY: deliberately undefined: the guest's own exception, caught by its vectors.
                unsafe { core::arch::asm!("udf #1", options(nostack)) };
            }
            OP_HALT => loop {
                // SAFETY: parks the vCPU; WFI traps to the hyp or simply waits.
                unsafe { core::arch::asm!("wfi", options(nostack)) };
            },
            _ => {
                mmio_write(reg(REG_STATUS), STATUS_BAD_COMMAND);
                continue;
            }
        }
        finish_step();
    }
}
