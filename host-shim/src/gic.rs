//! A small GICv3 driver for the host: enough to let its EL1 physical timer (PPI 30) raise an
//! interrupt, which is what brings a vCPU's run back to the host (Trust rule 6). The distributor
//! gets affinity routing and group 1 enabled, this CPU's redistributor is woken and PPI 30 put in
//! group 1 with a priority and enabled, and the CPU interface (system registers) unmasks every
//! priority and enables group 1. The host keeps `PSTATE.I` masked, so the interrupt only pends:
//! the host never takes it, the hyp sees it while a guest runs.

use core::sync::atomic::{AtomicBool, Ordering};

/// Distributor and redistributor region of QEMU `virt`.
const GICD_BASE: usize = 0x0800_0000;
const GICR_BASE: usize = 0x080a_0000;
const GICR_END: usize = 0x0900_0000;
/// One GICv3 redistributor: RD_base and SGI_base frames, 64 KiB each.
const GICR_STRIDE: usize = 0x2_0000;
const SGI_BASE: usize = 0x1_0000;

const GICD_CTLR: usize = 0x0000;
/// RWP: a register write is still in progress.
const CTLR_RWP: u32 = 1 << 31;
/// ARE (single security state) / ARE_NS (the non-secure view): affinity routing.
const CTLR_ARE: u32 = 1 << 4;
/// Group 1 enables: EnableGrp1 (bit 1) without security extensions; EnableGrp1NS (bit 0) and
/// EnableGrp1A (bit 1) in the non-secure view with them. Bit 0 is EnableGrp0 without security
/// extensions, harmless: no interrupt is in group 0.
const CTLR_GRP1: u32 = 0b11;

const GICR_WAKER: usize = 0x0014;
const GICR_TYPER: usize = 0x0008;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const TYPER_LAST: u64 = 1 << 4;

const GICR_IGROUPR0: usize = SGI_BASE + 0x0080;
const GICR_ISENABLER0: usize = SGI_BASE + 0x0100;
const GICR_IPRIORITYR: usize = SGI_BASE + 0x0400;
const GICR_IGRPMODR0: usize = SGI_BASE + 0x0d00;

/// The EL1 physical timer's PPI.
pub const TIMER_PPI: u32 = 30;
/// Its priority (lower is more urgent; the CPU interface's mask lets everything through).
const TIMER_PRIORITY: u32 = 0x80;

/// Bounded waits for the GIC (it answers at once on QEMU).
const SPIN_LIMIT: usize = 1_000_000;

static READY: AtomicBool = AtomicBool::new(false);

fn read32(addr: usize) -> u32 {
    // SAFETY: a GIC register in the device window the host's stage-2 maps as device memory;
    // the host runs with its MMU off, so the physical address is the address.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: usize, v: u32) {
    // SAFETY: as in `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn read64(addr: usize) -> u64 {
    // SAFETY: as in `read32` (GICR_TYPER is a 64-bit register).
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn wait_rwp() {
    for _ in 0..SPIN_LIMIT {
        if read32(GICD_BASE + GICD_CTLR) & CTLR_RWP == 0 {
            return;
        }
    }
    log::warn!("GIC distributor: register write still pending");
}

/// This CPU's affinity as GICR_TYPER reports it (Aff3.Aff2.Aff1.Aff0).
fn my_affinity() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    (mpidr & 0xff_ffff) | ((mpidr >> 32) & 0xff) << 24
}

/// This CPU's redistributor (its RD_base).
fn my_redistributor() -> Option<usize> {
    let aff = my_affinity();
    let mut rd = GICR_BASE;
    while rd < GICR_END {
        let typer = read64(rd + GICR_TYPER);
        if typer >> 32 == aff {
            return Some(rd);
        }
        if typer & TYPER_LAST != 0 {
            return None;
        }
        rd += GICR_STRIDE;
    }
    None
}

/// Sets the GIC up for the host's timer (once; later calls do nothing). `false` if this CPU's
/// redistributor was not found.
pub fn init() -> bool {
    if READY.load(Ordering::Acquire) {
        return true;
    }
    // The host never takes the interrupt itself.
    // SAFETY: masks IRQ and FIQ at EL1 (they are already masked since boot).
    unsafe { core::arch::asm!("msr daifset, #3", options(nomem, nostack)) };
    // Distributor: affinity routing first, then the group enables.
    let ctlr = read32(GICD_BASE + GICD_CTLR);
    if ctlr & CTLR_ARE == 0 {
        write32(GICD_BASE + GICD_CTLR, ctlr | CTLR_ARE);
        wait_rwp();
    }
    write32(GICD_BASE + GICD_CTLR, ctlr | CTLR_ARE | CTLR_GRP1);
    wait_rwp();
    let Some(rd) = my_redistributor() else {
        log::warn!("GIC: no redistributor for this CPU");
        return false;
    };
    // Wake the redistributor.
    let waker = read32(rd + GICR_WAKER);
    write32(rd + GICR_WAKER, waker & !WAKER_PROCESSOR_SLEEP);
    for _ in 0..SPIN_LIMIT {
        if read32(rd + GICR_WAKER) & WAKER_CHILDREN_ASLEEP == 0 {
            break;
        }
    }
    // PPI 30: non-secure group 1, a priority, enabled (level-sensitive, the reset config).
    let bit = 1u32 << TIMER_PPI;
    write32(rd + GICR_IGROUPR0, read32(rd + GICR_IGROUPR0) | bit);
    write32(rd + GICR_IGRPMODR0, read32(rd + GICR_IGRPMODR0) & !bit);
    let prio_reg = rd + GICR_IPRIORITYR + (TIMER_PPI as usize & !3);
    let shift = (TIMER_PPI % 4) * 8;
    let prio = (read32(prio_reg) & !(0xff << shift)) | (TIMER_PRIORITY << shift);
    write32(prio_reg, prio);
    write32(rd + GICR_ISENABLER0, bit);
    // CPU interface: system registers, every priority unmasked, group 1 on.
    // SAFETY: the host's own GIC CPU interface at EL1 (ICC_SRE_EL1.Enable is set by the hyp, so
    // these do not trap); `isb` after SRE before the other ICC registers are used.
    unsafe {
        core::arch::asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #1",
            "msr icc_sre_el1, {t}",
            "isb",
            "msr icc_pmr_el1, {pmr}",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            t = out(reg) _,
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            options(nostack)
        )
    };
    READY.store(true, Ordering::Release);
    true
}

/// The host's `ICC_PMR_EL1` (tests: a guest must not change it).
pub fn priority_mask() -> u64 {
    let v: u64;
    // SAFETY: reading the host's own priority mask has no side effects.
    unsafe { core::arch::asm!("mrs {}, icc_pmr_el1", out(reg) v, options(nomem, nostack)) };
    v
}
