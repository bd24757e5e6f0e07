//! The step-interpreter guest: runs what the host asks through the command device, one step at a
//! time, and reports each outcome.
#![no_std]
#![no_main]

use abi::cmd::*;
use abi::guest::CMD_DEVICE_IPA;
use guests::{
    exception_pending, guarded_asm, hvc, mmio_read, mmio_write, pmu_read, read_byte, smc,
    take_exception, write_byte,
};

// Commands only the attack tests use (`tests/el1/src/bin/host-tests/attacks.rs` has the same
// numbers; they are outside `abi::cmd` on purpose: an attacker's guest, not part of the ABI).
/// Stores ARG1 (a byte) at ARG0, ARG2 times, stopping at the first abort the host injects.
/// RESULT0 = stores done, RESULT1 = 1 if an abort stopped the loop.
const OP_ATK_STORE_LOOP: u64 = 0x41;
/// Enrolls in the MMIO guard, guards the command device, then makes ARG1 MMIO_GUARD_MAP_RANGE
/// calls of 256 granules each from ARG0 on, stopping at the first refusal. RESULT0 = calls that
/// succeeded, RESULT1 = x0 of the last call.
const OP_ATK_GUARD_FLOOD: u64 = 0x42;
/// A load pair from ARG0 (no valid syndrome if ARG0 is MMIO). RESULT0 = the first word.
const OP_ATK_LDP: u64 = 0x43;
/// A store of the low ARG2 bytes (1, 2 or 4) of the 64-bit register holding ARG1 to ARG0
/// (`strb`/`strh`/`str w`: the rest of the register is not stored).
const OP_ATK_STORE_NARROW: u64 = 0x44;
/// `SMC #0` with x0..x3 = ARG0..ARG3. RESULT0/1 = x0/x1 after it.
const OP_ATK_SMC: u64 = 0x45;

// Commands only the world-switch attack tests use (`tests/el1/src/bin/host-tests/attacks_ws.rs`
// has the same numbers; attacker-only, outside `abi::cmd`).
/// Loads instruction words into the attacker's code buffer: 64-bit slots ARG0, ARG0+1, ARG0+2
/// (two instructions each, the lower word first; 16 slots) = ARG1, ARG2, ARG3.
const OP_ATK_LOAD: u64 = 0x50;
/// Runs the code buffer. ARG0 = 0: called at EL1 (`blr`, it ends with `ret`, which the loader
/// appends after the last slot); an exception of an instruction in it skips that instruction.
/// ARG0 != 0: entered by `eret` with ARG0 as SPSR (EL0 in AArch64, A32 or T32; or EL1 with the
/// vectors below instead of the guest's); any exception (an `svc` ends the code) brings it back
/// to the interpreter. ARG1 = where the buffer is copied
/// before it runs (0: it runs where it is; AArch32 code needs an address below 4 GiB), ARG2/ARG3 =
/// x0/x1 (x2, x3 = 0). RESULT0 = x0 after it, RESULT1 = ESR_EL1 of the exception that ended (EL0)
/// or was taken inside it (EL1; 0 = none). x0..x3, ESR, ELR, SPSR, FAR: see `OP_ATK_OUT`.
const OP_ATK_RUN: u64 = 0x51;
/// RESULT0/1 = outputs ARG0 and ARG0+1 of the last `OP_ATK_RUN`: 0..3 x0..x3, 4 ESR_EL1,
/// 5 ELR_EL1, 6 SPSR_EL1, 7 FAR_EL1, 8 the vector taken (0..15: its offset / 0x80) (5..8 for an
/// EL0 run only).
const OP_ATK_OUT: u64 = 0x52;
/// Turns on its own stage-1 for one load: a level-1 table at ARG0 (4 KiB aligned, 39-bit VA,
/// 1 GiB blocks) maps every VA to the same IPA (the command device's GiB as device memory),
/// except that the GiB holding ARG1 maps to the 1 GiB-aligned IPA ARG2. Loads the byte at VA ARG1
/// with the MMU on, turns it off. RESULT0 = the byte, RESULT1 = SCTLR_EL1 read while it was on.
const OP_ATK_MMU: u64 = 0x53;

/// The attacker's code buffer (`OP_ATK_LOAD`, `OP_ATK_RUN`): 32 instructions and a `ret`. (The
/// image, bss included, must end below 0x5000 so that its 12 KiB stack stays inside the guest's
/// eight image pages, `host_shim::driver::GUEST_IMAGE_PAGES`.)
#[repr(C, align(64))]
struct AtkCode([u64; 17]);
static mut ATK_CODE: AtkCode = AtkCode([0; 17]);
/// Outputs of the last `OP_ATK_RUN` (see `OP_ATK_OUT`).
#[no_mangle]
static mut ATK_OUT: [u64; 10] = [0; 10];
/// SP_EL1 and VBAR_EL1 while an EL0 run is out (restored by `atk_el0_back`).
#[no_mangle]
static mut ATK_SAVED: [u64; 2] = [0; 2];

core::arch::global_asm!(
    r#"
    .section .text.atk_el0, "ax"
    .balign 0x800
atk_el0_vectors:
    .irp    idx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x9, #\idx
    b       atk_el0_back
    .endr

// x0 = entry, x1 = SPSR, x2/x3 = x0/x1 of the EL0 code. Returns (through atk_el0_back) when the
// EL0 code takes any exception.
    .global atk_el0_enter
atk_el0_enter:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    ldr     x9, =ATK_SAVED
    mov     x10, sp
    mrs     x11, vbar_el1
    stp     x10, x11, [x9]
    ldr     x10, =atk_el0_vectors
    msr     vbar_el1, x10
    // The EL0 code's stack (SP_EL0): 2 KiB below this one's, on the guest's own stack.
    mov     x10, sp
    sub     x10, x10, #2048
    msr     sp_el0, x10
    msr     elr_el1, x0
    msr     spsr_el1, x1
    mov     x0, x2
    mov     x1, x3
    mov     x2, xzr
    mov     x3, xzr
    isb
    eret

atk_el0_back:
    ldr     x10, =ATK_OUT
    str     x9, [x10, #64]
    mov     x9, x10
    stp     x0, x1, [x9, #0]
    stp     x2, x3, [x9, #16]
    mrs     x10, esr_el1
    mrs     x11, elr_el1
    stp     x10, x11, [x9, #32]
    mrs     x10, spsr_el1
    mrs     x11, far_el1
    stp     x10, x11, [x9, #48]
    ldr     x9, =ATK_SAVED
    ldp     x10, x11, [x9]
    msr     vbar_el1, x11
    mov     sp, x10
    isb
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     x29, x30, [sp], #96
    ret
    .ltorg
"#
);

extern "C" {
    fn atk_el0_enter(entry: u64, spsr: u64, x0: u64, x1: u64);
}

/// Makes freshly written instructions at `addr..addr+len` visible to instruction fetch.
fn sync_icache(addr: u64, len: u64) {
    let mut a = addr & !63;
    while a < addr + len {
        // SAFETY: cache maintenance by VA of the guest's own memory.
        unsafe { core::arch::asm!("dc cvau, {a}", "dsb ish", "ic ivau, {a}", a = in(reg) a) };
        a += 64;
    }
    // SAFETY: barriers and an invalidation of the guest's own instruction cache.
    unsafe { core::arch::asm!("dsb ish", "ic iallu", "dsb ish", "isb") };
}

fn atk_run(spsr: u64, dest: u64, a0: u64, a1: u64) -> (u64, u64) {
    // SAFETY: the buffer is the guest's own; a single core runs the guest, so no one else
    // touches it.
    let code = unsafe { &mut *core::ptr::addr_of_mut!(ATK_CODE) };
    code.0[16] = u64::from(INSN_RET); // the 33rd word; the 34th is unused
    let bytes = core::mem::size_of::<AtkCode>() as u64;
    let mut entry = code.0.as_ptr() as u64;
    if dest != 0 {
        // SAFETY: the host names guest memory to copy the code to (the attacker's choice).
        unsafe { core::ptr::copy_nonoverlapping(code.0.as_ptr(), dest as *mut u64, code.0.len()) };
        entry = dest;
    }
    sync_icache(entry, bytes);
    // SAFETY: as above.
    let out = unsafe { &mut *core::ptr::addr_of_mut!(ATK_OUT) };
    *out = [0; 10];
    let _ = take_exception();
    if spsr == 0 {
        let (mut x0, mut x1, mut x2, mut x3) = (a0, a1, 0u64, 0u64);
        // SAFETY: the host's code runs at EL1 with the registers it may use (x0..x17) declared
        // clobbered; an exception inside it returns to the next instruction.
        unsafe {
            core::arch::asm!(
                "blr {f}",
                f = in(reg) entry,
                inout("x0") x0, inout("x1") x1, inout("x2") x2, inout("x3") x3,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
                out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
                out("x14") _, out("x15") _, out("x16") _, out("x17") _, out("x30") _,
            )
        };
        *out = [x0, x1, x2, x3, take_exception().unwrap_or(0), 0, 0, 0, 0, 0];
    } else {
        // SAFETY: the EL0 code comes back through `atk_el0_back`, which restores every
        // callee-saved register, SP and VBAR_EL1.
        unsafe { atk_el0_enter(entry, spsr, a0, a1) };
    }
    (out[0], out[4])
}

/// `ret` (A64).
const INSN_RET: u32 = 0xd65f_03c0;

/// `OP_ATK_MMU`: see there.
fn atk_mmu(table: u64, va: u64, ipa: u64) -> (u64, u64) {
    /// A level-1 block maps 1 GiB; a table has 512 entries.
    const GIB_SHIFT: u32 = 30;
    const ENTRIES: u64 = 512;
    /// Block descriptor fields: valid block (0b01), AttrIndx (bits 4:2), SH = inner shareable
    /// (bits 9:8), AF (bit 10).
    const DESC_BLOCK: u64 = 0b01;
    const DESC_ATTR_DEVICE: u64 = 1 << 2;
    const DESC_SH_INNER: u64 = 3 << 8;
    const DESC_AF: u64 = 1 << 10;
    const DEVICE_GIB: u64 = CMD_DEVICE_IPA >> GIB_SHIFT;
    let slot = (va >> GIB_SHIFT) & (ENTRIES - 1);
    for i in 0..ENTRIES {
        // Block descriptor: AF, inner shareable, AttrIndx 0 (normal) or 1 (device).
        let out = if i == slot {
            ipa & !((1 << GIB_SHIFT) - 1)
        } else {
            i << GIB_SHIFT
        };
        let attr = if i == DEVICE_GIB { DESC_ATTR_DEVICE } else { 0 };
        let desc = out | DESC_AF | DESC_SH_INNER | attr | DESC_BLOCK;
        // SAFETY: the table page is guest memory the host named for it.
        unsafe { core::ptr::write_volatile((table + i * 8) as *mut u64, desc) };
    }
    // MAIR: attr0 normal WB, attr1 device-nGnRE. TCR: T0SZ = 25, IRGN0/ORGN0 WB, SH0 inner,
    // TG0 4 KiB, EPD1, IPS 40 bits.
    const MAIR_NORMAL_WB: u64 = 0xff;
    const MAIR_DEVICE_NGNRE: u64 = 0x04;
    const TCR_T0SZ_39BIT: u64 = 25;
    const TCR_IRGN0_WB: u64 = 1 << 8;
    const TCR_ORGN0_WB: u64 = 1 << 10;
    const TCR_SH0_INNER: u64 = 3 << 12;
    const TCR_EPD1: u64 = 1 << 23;
    const TCR_IPS_40BIT: u64 = 2 << 32;
    let mair: u64 = MAIR_NORMAL_WB | (MAIR_DEVICE_NGNRE << 8);
    let tcr: u64 =
        TCR_T0SZ_39BIT | TCR_IRGN0_WB | TCR_ORGN0_WB | TCR_SH0_INNER | TCR_EPD1 | TCR_IPS_40BIT;
    let (v, sctlr_on): (u64, u64);
    // SAFETY: the guest's own translation regime, on for one load of an address the host named
    // and off again; the code, stack and command device stay identity-mapped meanwhile.
    unsafe {
        core::arch::asm!(
            "mrs {old}, sctlr_el1",
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {table}",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "orr {t}, {old}, #1",
            "msr sctlr_el1, {t}",
            "isb",
            "mrs {on}, sctlr_el1",
            "mov {v}, #0",
            "ldrb {v:w}, [{va}]",
            "msr sctlr_el1, {old}",
            "isb",
            old = out(reg) _,
            t = out(reg) _,
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            table = in(reg) table,
            va = in(reg) va,
            on = out(reg) sctlr_on,
            v = out(reg) v,
        )
    };
    (v, sctlr_on)
}

fn reg(off: u64) -> u64 {
    CMD_DEVICE_IPA + off
}

fn finish_step() {
    match take_exception() {
        None => mmio_write(reg(REG_STATUS), STATUS_OK),
        // A data or instruction abort, from EL1 or EL0.
        Some(esr) if trap_frame::esr::is_abort(trap_frame::esr::ec(esr)) => {
            mmio_write(reg(REG_STATUS), STATUS_ABORTED)
        }
        Some(esr) => {
            mmio_write(reg(REG_RESULT0), esr);
            mmio_write(reg(REG_STATUS), STATUS_EXCEPTION)
        }
    }
}

/// Counts `N` `nop`s between two counter reads in one asm block, so the code around them is
/// identical whatever `N`: the calibration (N = 1000) minus the baseline (N = 0) is exactly N.
fn timed_nops<const N: usize>() -> (u64, u64) {
    let (e0, t0, e1, t1): (u64, u64, u64, u64);
    // SAFETY: counter reads and `nop`s only.
    unsafe {
        core::arch::asm!(
            "isb",
            "mrs {e0}, pmevcntr0_el0",
            "mrs {t0}, pmevcntr1_el0",
            ".rept {n}",
            "nop",
            ".endr",
            "isb",
            "mrs {e1}, pmevcntr0_el0",
            "mrs {t1}, pmevcntr1_el0",
            e0 = out(reg) e0,
            t0 = out(reg) t0,
            e1 = out(reg) e1,
            t1 = out(reg) t1,
            n = const N,
            options(nomem, nostack)
        )
    };
    (e1.wrapping_sub(e0), t1.wrapping_sub(t0))
}

/// Counts the instructions of one operation: (EL2 only, all levels).
fn measure(what: u64, a1: u64, a2: u64, a3: u64) -> (u64, u64) {
    let (e0, t0);
    let (e1, t1);
    match what {
        MEASURE_NOPS => return timed_nops::<1000>(),
        MEASURE_EMPTY => return timed_nops::<0>(),
        MEASURE_WRITE => {
            (e0, t0) = pmu_read();
            write_byte(a1, 1);
            (e1, t1) = pmu_read();
        }
        MEASURE_HVC => {
            (e0, t0) = pmu_read();
            let _ = hvc(a1, a2, a3, 0);
            (e1, t1) = pmu_read();
        }
        MEASURE_MEM_RANGE => {
            (e0, t0) = pmu_read();
            let _ = mem_range(a1, a2, a3);
            (e1, t1) = pmu_read();
        }
        MEASURE_READ => {
            (e0, t0) = pmu_read();
            let _ = read_byte(a1);
            (e1, t1) = pmu_read();
        }
        _ => {
            (e0, t0) = pmu_read();
            (e1, t1) = pmu_read();
        }
    }
    (e1.wrapping_sub(e0), t1.wrapping_sub(t0))
}

/// Issues a range hypercall until every page is done or the hyp refuses; (last x0, pages done).
fn mem_range(func: u64, mut ipa: u64, pages: u64) -> (u64, u64) {
    use abi::guest::{MEM_RELINQUISH, SMCCC_SUCCESS};
    let mut left = pages.max(1);
    let mut total = 0;
    loop {
        let r = if func == MEM_RELINQUISH {
            // One granule per call; x2 must be zero.
            let r = hvc(func, ipa, 0, 0);
            [r[0], 1, 0, 0]
        } else {
            hvc(func, ipa, if total == 0 { pages } else { left }, 0)
        };
        if r[0] != SMCCC_SUCCESS {
            return (r[0], total);
        }
        let done = r[1].clamp(1, left);
        total += done;
        left -= done;
        if left == 0 {
            return (SMCCC_SUCCESS, total);
        }
        ipa += done * abi::PAGE_SIZE;
    }
}

/// Writes one of the guest's own registers. An exception (undef) is left for `finish_step`.
fn reg_write(r: WorldReg, v: u64) {
    // SAFETY: one register write of the guest's own state, guarded so that an exception returns
    // to the block's end; the guest is soft-float, so nothing else uses the FP registers, and
    // nothing in the guest uses the other registers written here.
    unsafe { abi::world_reg_write!(guarded_asm, r, v) }
}

/// Reads one of the guest's own registers (0 if the read took an exception).
fn reg_read(r: WorldReg) -> u64 {
    let mut v: u64 = 0;
    // SAFETY: as in `reg_write`, one guarded register read.
    unsafe { abi::world_reg_read!(guarded_asm, r, v) };
    v
}

/// The string the semihosting probe asks the console to print.
static SEMIHOST_MSG: &[u8] = b"step guest: semihosting SYS_WRITE0\n\0";

/// The UART's address on QEMU `virt` (`board::layout::PL011_BASE`; an IPA outside every memslot
/// for a guest).
const BOARD_UART: u64 = 0x0900_0000;

/// Executes one instruction. An exception (undef, abort) is left for `finish_step`.
fn exec(i: Insn) {
    // SAFETY: one guarded instruction whose only effects are the registers declared clobbered;
    // the branch to the UART's address comes back through the injected instruction abort (or,
    // were it to run, nothing there returns: the hyp never lets it).
    unsafe { abi::world_exec!(guarded_asm, i, SEMIHOST_MSG.as_ptr(), BOARD_UART) }
}

/// Spins until the byte at `flag` is non-zero, with plain loads that never trap once the page is
/// mapped; the host's timer is what stops it. `share` (if not 0) is first shared with the host
/// (MEM_SHARE), so the host can write the flag. -> (polls, x0 of the share).
fn spin(share: u64, flag: u64) -> (u64, u64) {
    use abi::guest::{MEM_SHARE, SMCCC_SUCCESS};
    if share != 0 {
        let (x0, _) = mem_range(MEM_SHARE, share, 1);
        if x0 != SMCCC_SUCCESS {
            return (0, x0);
        }
    }
    let mut polls = 0u64;
    loop {
        polls = polls.wrapping_add(1);
        if read_byte(flag) != 0 {
            return (polls, SMCCC_SUCCESS);
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
            OP_MEM_RANGE => {
                let func = mmio_read(reg(REG_ARG0));
                let ipa = mmio_read(reg(REG_ARG1));
                let pages = mmio_read(reg(REG_ARG2));
                let (x0, done) = mem_range(func, ipa, pages);
                mmio_write(reg(REG_RESULT0), x0);
                mmio_write(reg(REG_RESULT1), done);
            }
            OP_MMIO_GUARD => {
                let e = hvc(abi::guest::MMIO_GUARD_ENROLL, 0, 0, 0);
                let m = hvc(abi::guest::MMIO_GUARD_MAP, CMD_DEVICE_IPA, 0, 0);
                mmio_write(reg(REG_RESULT0), e[0]);
                mmio_write(reg(REG_RESULT1), m[0]);
            }
            OP_MEASURE => {
                let what = mmio_read(reg(REG_ARG0));
                let a1 = mmio_read(reg(REG_ARG1));
                let a2 = mmio_read(reg(REG_ARG2));
                let a3 = mmio_read(reg(REG_ARG3));
                let (el2, all) = measure(what, a1, a2, a3);
                mmio_write(reg(REG_RESULT0), el2);
                mmio_write(reg(REG_RESULT1), all);
            }
            OP_REG_WRITE => {
                let r = mmio_read(reg(REG_ARG0));
                let v = mmio_read(reg(REG_ARG1));
                match WorldReg::from_u64(r) {
                    Some(r) => reg_write(r, v),
                    None => {
                        mmio_write(reg(REG_STATUS), STATUS_BAD_COMMAND);
                        continue;
                    }
                }
            }
            OP_REG_READ => {
                let r = mmio_read(reg(REG_ARG0));
                match WorldReg::from_u64(r) {
                    // After an exception finish_step overwrites RESULT0 with the ESR.
                    Some(r) => mmio_write(reg(REG_RESULT0), reg_read(r)),
                    None => {
                        mmio_write(reg(REG_STATUS), STATUS_BAD_COMMAND);
                        continue;
                    }
                }
            }
            OP_EXEC => match Insn::from_u64(mmio_read(reg(REG_ARG0))) {
                Some(i) => exec(i),
                None => {
                    mmio_write(reg(REG_STATUS), STATUS_BAD_COMMAND);
                    continue;
                }
            },
            OP_SPIN => {
                let share = mmio_read(reg(REG_ARG0));
                let flag = mmio_read(reg(REG_ARG1));
                let (polls, x0) = spin(share, flag);
                mmio_write(reg(REG_RESULT0), polls);
                mmio_write(reg(REG_RESULT1), x0);
            }
            OP_ATK_STORE_LOOP => {
                let addr = mmio_read(reg(REG_ARG0));
                let value = mmio_read(reg(REG_ARG1)) as u8;
                let count = mmio_read(reg(REG_ARG2));
                let mut done = 0;
                let mut aborted = 0;
                while done < count {
                    write_byte(addr, value);
                    if exception_pending() {
                        let _ = take_exception();
                        aborted = 1;
                        break;
                    }
                    done += 1;
                }
                mmio_write(reg(REG_RESULT0), done);
                mmio_write(reg(REG_RESULT1), aborted);
            }
            OP_ATK_GUARD_FLOOD => {
                use abi::guest::{
                    MMIO_GUARD_ENROLL, MMIO_GUARD_MAP, MMIO_GUARD_MAP_RANGE, SMCCC_SUCCESS,
                };
                let base = mmio_read(reg(REG_ARG0));
                let calls = mmio_read(reg(REG_ARG1));
                let _ = hvc(MMIO_GUARD_ENROLL, 0, 0, 0);
                let _ = hvc(MMIO_GUARD_MAP, CMD_DEVICE_IPA, 0, 0);
                let mut ok = 0;
                let mut last = SMCCC_SUCCESS;
                while ok < calls {
                    let ipa = base + ok * 256 * abi::PAGE_SIZE;
                    last = hvc(MMIO_GUARD_MAP_RANGE, ipa, 256, 0)[0];
                    if last != SMCCC_SUCCESS {
                        break;
                    }
                    ok += 1;
                }
                mmio_write(reg(REG_RESULT0), ok);
                mmio_write(reg(REG_RESULT1), last);
            }
            OP_ATK_LDP => {
                let addr = mmio_read(reg(REG_ARG0));
                let (a, b): (u64, u64);
                // SAFETY: a load pair at a guest IPA; a fault is the hyp's or the vectors' to
                // handle (an MMIO IPA gives the hyp no valid syndrome).
                unsafe {
                    core::arch::asm!("mov {a}, #0", "mov {b}, #0", "ldp {a}, {b}, [{p}]",
                        p = in(reg) addr, a = out(reg) a, b = out(reg) b, options(nostack))
                };
                let _ = b;
                mmio_write(reg(REG_RESULT0), a);
            }
            OP_ATK_STORE_NARROW => {
                let addr = mmio_read(reg(REG_ARG0));
                let value = mmio_read(reg(REG_ARG1));
                let width = mmio_read(reg(REG_ARG2));
                // SAFETY: one store of 1, 2 or 4 bytes at a guest IPA; a fault is the hyp's or
                // the vectors' to handle.
                unsafe {
                    match width {
                        1 => {
                            core::arch::asm!("strb {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack))
                        }
                        2 => {
                            core::arch::asm!("strh {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack))
                        }
                        _ => {
                            core::arch::asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack))
                        }
                    }
                }
            }
            OP_ATK_SMC => {
                let (x0, x1) = (mmio_read(reg(REG_ARG0)), mmio_read(reg(REG_ARG1)));
                let (x2, x3) = (mmio_read(reg(REG_ARG2)), mmio_read(reg(REG_ARG3)));
                let [x0, x1, ..] = smc(x0, x1, x2, x3);
                mmio_write(reg(REG_RESULT0), x0);
                mmio_write(reg(REG_RESULT1), x1);
            }
            OP_ATK_LOAD => {
                let at = mmio_read(reg(REG_ARG0)) as usize;
                let words = [
                    mmio_read(reg(REG_ARG1)),
                    mmio_read(reg(REG_ARG2)),
                    mmio_read(reg(REG_ARG3)),
                ];
                // SAFETY: the guest's own buffer (one core).
                let code = unsafe { &mut *core::ptr::addr_of_mut!(ATK_CODE) };
                for (i, w) in words.into_iter().enumerate() {
                    if let Some(slot) = code.0.get_mut(at + i).filter(|_| at + i < 16) {
                        *slot = w;
                    }
                }
            }
            OP_ATK_RUN => {
                let spsr = mmio_read(reg(REG_ARG0));
                let dest = mmio_read(reg(REG_ARG1));
                let (a0, a1) = (mmio_read(reg(REG_ARG2)), mmio_read(reg(REG_ARG3)));
                let (x0, esr) = atk_run(spsr, dest, a0, a1);
                mmio_write(reg(REG_RESULT0), x0);
                mmio_write(reg(REG_RESULT1), esr);
                mmio_write(reg(REG_STATUS), STATUS_OK);
                continue;
            }
            OP_ATK_OUT => {
                let i = mmio_read(reg(REG_ARG0)) as usize;
                // SAFETY: the guest's own outputs (one core).
                let out = unsafe { &*core::ptr::addr_of!(ATK_OUT) };
                mmio_write(reg(REG_RESULT0), out.get(i).copied().unwrap_or(0));
                mmio_write(reg(REG_RESULT1), out.get(i + 1).copied().unwrap_or(0));
            }
            OP_ATK_MMU => {
                let table = mmio_read(reg(REG_ARG0));
                let va = mmio_read(reg(REG_ARG1));
                let ipa = mmio_read(reg(REG_ARG2));
                let (v, sctlr) = atk_mmu(table, va, ipa);
                mmio_write(reg(REG_RESULT0), v);
                mmio_write(reg(REG_RESULT1), sctlr);
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
