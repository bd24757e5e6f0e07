//! A small GICv3 driver for the host: enough to let its EL1 physical timer (PPI 30) raise an
//! interrupt, which is what brings a vCPU's run back to the host (Trust rule 6). The distributor
//! gets affinity routing and group 1 enabled, this CPU's redistributor is woken and PPI 30 put in
//! group 1 with a priority and enabled, and the CPU interface (system registers) unmasks every
//! priority and enables group 1. The host keeps `PSTATE.I` masked, so the interrupt only pends:
//! the host never takes it, the hyp sees it while a guest runs.

use core::sync::atomic::{AtomicBool, Ordering};

use board::layout::{GICD_BASE, GICR_BASE, GICR_SIZE_PER_CPU};
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

/// End of QEMU `virt`'s redistributor region (room for 123 CPUs).
const GICR_END: usize = 0x0900_0000;

register_bitfields![u32,
    /// GICD_CTLR, as the non-secure (or the only) security state sees it.
    pub GICD_CTLR [
        /// A register write is still in progress.
        RWP OFFSET(31) NUMBITS(1) [],
        /// ARE (single security state) / ARE_NS (the non-secure view): affinity routing.
        ARE OFFSET(4) NUMBITS(1) [],
        /// Group 1 enables: EnableGrp1 (bit 1) without security extensions; EnableGrp1NS
        /// (bit 0) and EnableGrp1A (bit 1) in the non-secure view with them. Bit 0 is EnableGrp0
        /// without security extensions, harmless: no interrupt is in group 0.
        ENABLE_GRP1 OFFSET(0) NUMBITS(2) []
    ],
    pub GICR_WAKER [
        CHILDREN_ASLEEP OFFSET(2) NUMBITS(1) [],
        PROCESSOR_SLEEP OFFSET(1) NUMBITS(1) []
    ]
];

register_bitfields![u64,
    pub GICR_TYPER [
        /// Aff3.Aff2.Aff1.Aff0 of the CPU this redistributor serves.
        AFFINITY OFFSET(32) NUMBITS(32) [],
        /// The last redistributor of the region.
        LAST OFFSET(4) NUMBITS(1) [],
        /// Physical LPIs are supported.
        PLPIS OFFSET(0) NUMBITS(1) []
    ]
];

register_structs! {
    /// The distributor registers the host uses.
    pub Distributor {
        (0x0000 => pub ctlr: ReadWrite<u32, GICD_CTLR::Register>),
        (0x0004 => @END),
    }
}

register_structs! {
    /// One GICv3 redistributor: its RD_base frame (64 KiB) and its SGI_base frame (the next
    /// 64 KiB), the registers of them the host and its tests use. One bit per SGI/PPI (0..31)
    /// in each 32-bit register; `ipriorityr` holds a byte per interrupt, four per word.
    pub Redistributor {
        (0x0_0000 => _rd_reserved0),
        (0x0_0008 => pub typer: ReadOnly<u64, GICR_TYPER::Register>),
        (0x0_0010 => _rd_reserved1),
        (0x0_0014 => pub waker: ReadWrite<u32, GICR_WAKER::Register>),
        (0x0_0018 => _rd_reserved2),
        (0x1_0080 => pub igroupr0: ReadWrite<u32>),
        (0x1_0084 => _sgi_reserved0),
        (0x1_0100 => pub isenabler0: ReadWrite<u32>),
        (0x1_0104 => _sgi_reserved1),
        (0x1_0180 => pub icenabler0: ReadWrite<u32>),
        (0x1_0184 => _sgi_reserved2),
        (0x1_0200 => pub ispendr0: ReadWrite<u32>),
        (0x1_0204 => _sgi_reserved3),
        (0x1_0280 => pub icpendr0: ReadWrite<u32>),
        (0x1_0284 => _sgi_reserved4),
        (0x1_0300 => pub isactiver0: ReadWrite<u32>),
        (0x1_0304 => _sgi_reserved6),
        (0x1_0400 => pub ipriorityr: [ReadWrite<u32>; 8]),
        (0x1_0420 => _sgi_reserved5),
        (0x1_0d00 => pub igrpmodr0: ReadWrite<u32>),
        (0x1_0d04 => @END),
    }
}

const _: () = assert!(core::mem::size_of::<Redistributor>() <= GICR_SIZE_PER_CPU);

fn distributor() -> &'static Distributor {
    // SAFETY: the distributor's registers, in the device window the host's stage-2 maps as
    // device memory; the host runs with its MMU off, so the physical address is the address.
    unsafe { &*(GICD_BASE as *const Distributor) }
}

/// The redistributor at `index` in QEMU `virt`'s region (0 is the boot CPU's; the region is not
/// probed: the caller knows the CPU exists).
pub fn redistributor(index: usize) -> &'static Redistributor {
    let rd = GICR_BASE + index * GICR_SIZE_PER_CPU;
    assert!(rd < GICR_END, "no redistributor {index} in the region");
    // SAFETY: a redistributor's two frames, inside the region the host's stage-2 maps as device
    // memory (checked against its end above; MMU off, so the physical address is the address).
    unsafe { &*(rd as *const Redistributor) }
}

/// The EL1 physical timer's PPI.
pub const TIMER_PPI: u32 = 30;
/// Its priority (lower is more urgent; the CPU interface's mask lets everything through).
const TIMER_PRIORITY: u32 = 0x80;

/// `ICC_SRE_EL1.SRE`: the CPU interface through system registers.
const ICC_SRE_SRE: u64 = 1 << 0;
/// `ICC_PMR_EL1`: the lowest priority mask, which lets every priority through.
const ICC_PMR_ALL: u64 = 0xff;
/// `ICC_IGRPEN1_EL1.Enable`: group 1 interrupts signalled.
const ICC_IGRPEN1_ENABLE: u64 = 1 << 0;
/// `MPIDR_EL1` Aff2.Aff1.Aff0 (bits 23:0) and Aff3 (bits 39:32).
const MPIDR_AFF0_2: u64 = 0xff_ffff;
const MPIDR_AFF3_SHIFT: u32 = 32;
const MPIDR_AFF3: u64 = 0xff;
/// Where `GICR_TYPER.Affinity_Value` keeps Aff3 (above Aff2..Aff0).
const TYPER_AFF3_SHIFT: u32 = 24;
/// One priority byte of `GICR_IPRIORITYR<n>`.
const PRIORITY_MASK: u32 = 0xff;

/// Bounded waits for the GIC (it answers at once on QEMU).
const SPIN_LIMIT: usize = 1_000_000;

static READY: AtomicBool = AtomicBool::new(false);

fn wait_rwp() {
    for _ in 0..SPIN_LIMIT {
        if !distributor().ctlr.is_set(GICD_CTLR::RWP) {
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
    (mpidr & MPIDR_AFF0_2) | ((mpidr >> MPIDR_AFF3_SHIFT) & MPIDR_AFF3) << TYPER_AFF3_SHIFT
}

/// This CPU's redistributor.
fn my_redistributor() -> Option<&'static Redistributor> {
    let aff = my_affinity();
    let mut index = 0;
    while GICR_BASE + index * GICR_SIZE_PER_CPU < GICR_END {
        let rd = redistributor(index);
        if rd.typer.read(GICR_TYPER::AFFINITY) == aff {
            return Some(rd);
        }
        if rd.typer.is_set(GICR_TYPER::LAST) {
            return None;
        }
        index += 1;
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
    let gicd = distributor();
    let ctlr = gicd.ctlr.extract();
    if !ctlr.is_set(GICD_CTLR::ARE) {
        gicd.ctlr.set(ctlr.get() | GICD_CTLR::ARE::SET.value);
        wait_rwp();
    }
    gicd.ctlr
        .set(ctlr.get() | (GICD_CTLR::ARE::SET + GICD_CTLR::ENABLE_GRP1::SET).value);
    wait_rwp();
    let Some(rd) = my_redistributor() else {
        log::warn!("GIC: no redistributor for this CPU");
        return false;
    };
    // Wake the redistributor.
    rd.waker.modify(GICR_WAKER::PROCESSOR_SLEEP::CLEAR);
    for _ in 0..SPIN_LIMIT {
        if !rd.waker.is_set(GICR_WAKER::CHILDREN_ASLEEP) {
            break;
        }
    }
    // PPI 30: non-secure group 1, a priority, enabled (level-sensitive, the reset config).
    let bit = 1u32 << TIMER_PPI;
    rd.igroupr0.set(rd.igroupr0.get() | bit);
    rd.igrpmodr0.set(rd.igrpmodr0.get() & !bit);
    let prio_reg = &rd.ipriorityr[TIMER_PPI as usize / 4];
    let shift = (TIMER_PPI % 4) * 8;
    prio_reg.set((prio_reg.get() & !(PRIORITY_MASK << shift)) | (TIMER_PRIORITY << shift));
    rd.isenabler0.set(bit);
    // CPU interface: system registers, every priority unmasked, group 1 on.
    // SAFETY: the host's own GIC CPU interface at EL1 (ICC_SRE_EL1.Enable is set by the hyp, so
    // these do not trap); `isb` after SRE before the other ICC registers are used.
    unsafe {
        core::arch::asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #{sre}",
            "msr icc_sre_el1, {t}",
            "isb",
            "msr icc_pmr_el1, {pmr}",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            t = out(reg) _,
            sre = const ICC_SRE_SRE,
            pmr = in(reg) ICC_PMR_ALL,
            one = in(reg) ICC_IGRPEN1_ENABLE,
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
