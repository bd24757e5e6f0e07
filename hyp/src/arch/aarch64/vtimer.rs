//! Delivering a guest's virtual-timer interrupt to it, the way KVM does on GICv3: the timer's
//! physical PPI 27 is mapped to the guest's virtual INTID 27 through a hardware list register
//! (`ICH_LR.HW` with pINTID 27).
//!
//! - While a guest whose timer is enabled (`CNTV_CTL_EL0.ENABLE` at entry) runs, PPI 27 is a
//!   group-1 interrupt enabled at this CPU's redistributor (the hyp makes it so for the run and
//!   puts the host's configuration back after), so a firing guest timer is an IRQ at EL2
//!   (`HCR_EL2.IMO`) even while the guest waits in WFI. (A guest that enables its timer in the
//!   middle of a run gets it signalled from its next run on: a host tick later at most.)
//! - That IRQ is the guest's, never the host's: the hyp ([`guest_irq`], on the exit) marks the
//!   physical interrupt active (so it does not fire again) and puts virtual INTID 27 in a list
//!   register, pending, HW-mapped; the guest resumes and takes it as soon as it unmasks it. Its
//!   EOI deactivates the physical interrupt through the HW bit, so a timer still firing then
//!   fires again. The run does not end: the host is not woken by a guest's timer. Any other
//!   interrupt (the host's timer, PPI 30) still ends the run (Trust rule 6).
//! - Around the run ([`enter`], [`exit`]): a virtual INTID 27 still pending or active in the
//!   vCPU's list registers keeps the physical interrupt active while the vCPU runs, and is made
//!   inactive again for the host (KVM's `kvm_timer_vcpu_load_gic` sets the physical active state
//!   from the virtual one on every load). A timer whose condition holds at entry while its
//!   interrupt is not in a list register is delivered right away, so the guest gets it even
//!   where the physical interrupt cannot be signalled (a host that never enabled its GIC).

use core::sync::atomic::Ordering;

use aarch64_cpu::registers::{Readable, CNTV_CTL_EL0, MPIDR_EL1};

use super::{features, vgic};

/// The virtual timer's PPI, and the guest's virtual INTID for it.
pub const VTIMER_PPI: u32 = 27;
/// The priority of the guest's virtual timer interrupt (the GIC's default, as in KVM: the guest
/// has no virtual distributor to set another).
const VIRQ_PRIORITY: u64 = 0xa0;

/// ICH_LR<n>_EL2 fields.
const LR_STATE_SHIFT: u32 = 62;
const LR_PENDING: u64 = 0b01 << LR_STATE_SHIFT;
const LR_HW: u64 = 1 << 61;
const LR_GROUP1: u64 = 1 << 60;
const LR_VINTID: u64 = 0xffff_ffff;

/// The list-register value of the guest's pending timer interrupt.
const fn timer_lr() -> u64 {
    LR_PENDING
        | LR_HW
        | LR_GROUP1
        | (VIRQ_PRIORITY << 48)
        | ((VTIMER_PPI as u64) << 32)
        | VTIMER_PPI as u64
}

/// Whether list register value `lr` holds the timer's interrupt, pending or active.
fn holds_timer(lr: u64) -> bool {
    lr >> LR_STATE_SHIFT != 0 && lr & LR_VINTID == u64::from(VTIMER_PPI)
}

/// `CNTV_CTL_EL0` bits.
const CTL_ENABLE: u64 = 0b001;
const CTL_FIRES: u64 = 0b111;

// ---- this CPU's redistributor --------------------------------------------------------------------

const GICR_TYPER: u64 = 0x0008;
const TYPER_LAST: u64 = 1 << 4;
const SGI_BASE: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = SGI_BASE + 0x0080;
const GICR_ISENABLER0: u64 = SGI_BASE + 0x0100;
const GICR_ICENABLER0: u64 = SGI_BASE + 0x0180;
const GICR_ICPENDR0: u64 = SGI_BASE + 0x0280;
const GICR_ISACTIVER0: u64 = SGI_BASE + 0x0300;
const GICR_ICACTIVER0: u64 = SGI_BASE + 0x0380;
const BIT: u32 = 1 << VTIMER_PPI;

/// Finds this CPU's redistributor (its RD_base) among the frames of the board's GIC, by the
/// affinity its GICR_TYPER reports, and records it in this CPU's data (once per CPU, at its first
/// entry to EL1). Without one, delivery falls back to what [`enter`] sees.
pub fn init_cpu() {
    if !features::has(features::GIC_SYSREGS) {
        return;
    }
    let mpidr = MPIDR_EL1.get();
    let aff = (mpidr & 0xff_ffff) | (((mpidr >> 32) & 0xff) << 24);
    let base = board::layout::GICR_BASE as u64;
    let stride = board::layout::GICR_SIZE_PER_CPU as u64;
    let end = board::layout::DEVICE_END as u64;
    for i in 0..board::layout::MAX_CPUS as u64 {
        let rd = base + i * stride;
        if rd + stride > end {
            break;
        }
        // SAFETY: a redistributor frame in the device window the hyp maps for itself
        // (`mmu.rs`, device memory); GICR_TYPER is read-only, reading it has no side effect.
        let typer = unsafe { core::ptr::read_volatile((rd + GICR_TYPER) as *const u64) };
        if typer >> 32 == aff {
            super::cpu::this_cpu().gicr.store(rd, Ordering::Relaxed);
            return;
        }
        if typer & TYPER_LAST != 0 {
            break;
        }
    }
}

/// This CPU's redistributor, if [`init_cpu`] found it (never without the GIC's system registers).
fn gicr() -> Option<u64> {
    let rd = super::cpu::this_cpu().gicr.load(Ordering::Relaxed);
    (rd != 0).then_some(rd)
}

fn read32(rd: u64, off: u64) -> u32 {
    // SAFETY: a register of this CPU's redistributor (found by `init_cpu`), device memory
    // mapped at EL2; the reads used here have no side effect.
    unsafe { core::ptr::read_volatile((rd + off) as *const u32) }
}

fn write32(rd: u64, off: u64, v: u32) {
    // SAFETY: as in `read32`: the PPI 27 bits of this CPU's redistributor, written only while
    // this CPU runs a guest (or to put the host's configuration back).
    unsafe { core::ptr::write_volatile((rd + off) as *mut u32, v) }
}

// ---- around a run -------------------------------------------------------------------------------

/// The host's configuration of PPI 27 that the hyp changed for a run, put back by [`exit`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HostPpi {
    /// The hyp enabled PPI 27 for the run (the host had it disabled).
    enabled: bool,
    /// The hyp put PPI 27 in group 1 for the run (the host had it in group 0).
    grouped: bool,
}

/// Whether the guest's virtual timer (its registers live on this CPU) asserts its interrupt:
/// ENABLE, not IMASK, ISTATUS.
fn fires(ctl: u64) -> bool {
    ctl & CTL_FIRES == 0b101
}

/// Marks the physical PPI 27 active (it does not fire again until the guest's EOI deactivates
/// it through the HW bit, or [`exit`]).
fn activate(rd: u64) {
    write32(rd, GICR_ISACTIVER0, BIT);
    super::cpu::this_cpu()
        .vtimer_active
        .store(true, Ordering::Relaxed);
}

/// The list register holding the timer's interrupt, or the first free one (live registers).
fn find_lr() -> (Option<usize>, Option<usize>) {
    let (mut held, mut free) = (None, None);
    for n in 0..vgic::list_registers() {
        let lr = vgic::read_lr(n);
        if holds_timer(lr) {
            held = Some(n);
            break;
        }
        if lr >> LR_STATE_SHIFT == 0 && free.is_none() {
            free = Some(n);
        }
    }
    (held, free)
}

/// Makes the guest's timer interrupt pending in a list register (unless one holds it already)
/// and the physical interrupt active. The vCPU's virtual interface must be loaded. `false` if
/// no list register was free (the hyp uses one only, so this does not happen).
fn deliver(rd: u64) -> bool {
    let (held, free) = find_lr();
    if held.is_none() {
        let Some(n) = free else {
            return false;
        };
        vgic::write_lr(n, timer_lr());
    }
    activate(rd);
    true
}

/// After the vCPU's timer and virtual CPU interface (saved in `vgic`, and loaded) are loaded,
/// before it runs: if its timer is enabled, PPI 27 is made a group-1 interrupt enabled at this
/// CPU's redistributor for the run; a timer interrupt the vCPU already has in a list register
/// keeps the physical one active; a firing timer whose interrupt it has not is delivered now.
/// -> what [`exit`] puts back.
pub fn enter(vgic: &vgic::VgicState) -> HostPpi {
    let mut host = HostPpi::default();
    let Some(rd) = gicr() else {
        return host;
    };
    let ctl = CNTV_CTL_EL0.get();
    let held = vgic
        .lr
        .iter()
        .take(vgic::list_registers())
        .any(|&lr| holds_timer(lr));
    if ctl & CTL_ENABLE == 0 && !held {
        return host;
    }
    if read32(rd, GICR_IGROUPR0) & BIT == 0 {
        host.grouped = true;
        write32(rd, GICR_IGROUPR0, read32(rd, GICR_IGROUPR0) | BIT);
    }
    if read32(rd, GICR_ISENABLER0) & BIT == 0 {
        host.enabled = true;
        write32(rd, GICR_ISENABLER0, BIT);
    }
    if held {
        activate(rd);
    } else if fires(ctl) {
        deliver(rd);
    }
    host
}

/// A physical IRQ reached EL2 while the guest ran: if it is the guest's virtual timer (PPI 27),
/// it is delivered to the guest and the guest resumes (`true`); anything else is the host's
/// (`false`: the run ends with an interrupt exit).
pub fn guest_irq() -> bool {
    if !features::has(features::GIC_SYSREGS) {
        return false;
    }
    let hppir: u64;
    // SAFETY: ICC_HPPIR1_EL1 (S3_0_C12_C12_2; not in aarch64-cpu), read at EL2: the physical CPU
    // interface's highest-priority pending group-1 interrupt, without acknowledging it.
    unsafe { core::arch::asm!("mrs {}, S3_0_C12_C12_2", out(reg) hppir, options(nomem, nostack)) };
    if hppir & 0xff_ffff != u64::from(VTIMER_PPI) {
        return false;
    }
    // Without this CPU's redistributor the interrupt could not be stopped from firing again:
    // the host gets it, as any other.
    let Some(rd) = gicr() else {
        return false;
    };
    if fires(CNTV_CTL_EL0.get()) {
        return deliver(rd);
    }
    // Pending but not from the guest's timer (set by software): cleared, so that it cannot
    // keep the guest from running.
    write32(rd, GICR_ICPENDR0, BIT);
    true
}

/// After the vCPU's last exit, its virtual interface saved and the host's virtual timer loaded:
/// the physical PPI 27 is left inactive for the host and its configuration put back.
pub fn exit(host: &HostPpi) {
    let Some(rd) = gicr() else {
        return;
    };
    let cpu = super::cpu::this_cpu();
    if cpu.vtimer_active.swap(false, Ordering::Relaxed) {
        write32(rd, GICR_ICACTIVER0, BIT);
    }
    if host.enabled {
        write32(rd, GICR_ICENABLER0, BIT);
    }
    if host.grouped {
        write32(rd, GICR_IGROUPR0, read32(rd, GICR_IGROUPR0) & !BIT);
    }
}
