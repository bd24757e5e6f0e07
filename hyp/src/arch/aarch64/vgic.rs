//! The GICv3 CPU interface across the world switch (Trust rule 6).
//!
//! While a guest runs, `HCR_EL2.IMO/FMO` are set: physical interrupts go to EL2 (and end the run
//! with an interrupt exit), and the guest's `ICC_*` accesses go to the virtual CPU interface,
//! whose state is the vCPU's ([`VgicState`]: `ICH_HCR_EL2`, `ICH_VMCR_EL2`, the list registers and
//! the active-priority registers), saved and restored here. The host's physical CPU interface
//! (its `ICC_PMR_EL1`, group enables, ...) is never touched by a guest. While the host runs,
//! `ICH_HCR_EL2.En` is clear.

use aarch64_cpu::registers::*;

use super::features;

/// `ICH_HCR_EL2.En`: the virtual CPU interface is enabled.
const ICH_HCR_EN: u64 = 1;
/// `ICC_SRE_EL2`: SRE (system-register interface at EL2) and Enable (EL1 may use
/// `ICC_SRE_EL1`).
const ICC_SRE_EL2_SRE: u64 = 1 << 0;
const ICC_SRE_EL2_ENABLE: u64 = 1 << 3;

/// A vCPU's virtual CPU interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgicState {
    pub hcr: u64,
    pub vmcr: u64,
    pub ap0r: [u64; 4],
    pub ap1r: [u64; 4],
    pub lr: [u64; 16],
}

/// Turns on the system-register interface at EL2 and lets EL1 use `ICC_SRE_EL1` (once per CPU,
/// at boot). Without a GICv3 system-register interface this does nothing.
pub fn init_el2() {
    if !features::has(features::GIC_SYSREGS) {
        return;
    }
    let sre = ICC_SRE_EL2.get();
    ICC_SRE_EL2.set(sre | ICC_SRE_EL2_SRE | ICC_SRE_EL2_ENABLE);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// (list registers, active-priority registers per group) of this CPU's virtual interface.
fn shape() -> (usize, usize) {
    let vtr = ICH_VTR_EL2.get();
    let lrs = ((vtr & 0x1f) + 1) as usize;
    let apr = match (vtr >> 26) & 7 {
        6 => 4, // 7 preemption bits
        5 => 2, // 6 bits
        _ => 1, // 5 bits
    };
    (lrs.min(16), apr)
}

macro_rules! lr_access {
    ($($n:literal => $reg:ident),* $(,)?) => {
        /// List register `n` of the live virtual interface (0 beyond the sixteenth).
        pub(super) fn read_lr(n: usize) -> u64 {
            match n { $($n => $reg.get(),)* _ => 0 }
        }
        /// Writes list register `n` of the live virtual interface.
        pub(super) fn write_lr(n: usize, v: u64) {
            match n { $($n => $reg.set(v),)* _ => {} }
        }
    };
}

/// The list registers this CPU's virtual interface has.
pub(super) fn list_registers() -> usize {
    shape().0
}

lr_access!(
    0 => ICH_LR0_EL2, 1 => ICH_LR1_EL2, 2 => ICH_LR2_EL2, 3 => ICH_LR3_EL2,
    4 => ICH_LR4_EL2, 5 => ICH_LR5_EL2, 6 => ICH_LR6_EL2, 7 => ICH_LR7_EL2,
    8 => ICH_LR8_EL2, 9 => ICH_LR9_EL2, 10 => ICH_LR10_EL2, 11 => ICH_LR11_EL2,
    12 => ICH_LR12_EL2, 13 => ICH_LR13_EL2, 14 => ICH_LR14_EL2, 15 => ICH_LR15_EL2,
);

fn read_apr(group1: bool, n: usize) -> u64 {
    match (group1, n) {
        (false, 0) => ICH_AP0R0_EL2.get(),
        (false, 1) => ICH_AP0R1_EL2.get(),
        (false, 2) => ICH_AP0R2_EL2.get(),
        (false, 3) => ICH_AP0R3_EL2.get(),
        (true, 0) => ICH_AP1R0_EL2.get(),
        (true, 1) => ICH_AP1R1_EL2.get(),
        (true, 2) => ICH_AP1R2_EL2.get(),
        (true, 3) => ICH_AP1R3_EL2.get(),
        _ => 0,
    }
}

fn write_apr(group1: bool, n: usize, v: u64) {
    match (group1, n) {
        (false, 0) => ICH_AP0R0_EL2.set(v),
        (false, 1) => ICH_AP0R1_EL2.set(v),
        (false, 2) => ICH_AP0R2_EL2.set(v),
        (false, 3) => ICH_AP0R3_EL2.set(v),
        (true, 0) => ICH_AP1R0_EL2.set(v),
        (true, 1) => ICH_AP1R1_EL2.set(v),
        (true, 2) => ICH_AP1R2_EL2.set(v),
        (true, 3) => ICH_AP1R3_EL2.set(v),
        _ => {}
    }
}

/// Loads a vCPU's virtual CPU interface and enables it (before entering the guest).
pub fn restore(s: &VgicState) {
    if !features::has(features::GIC_SYSREGS) {
        return;
    }
    let (lrs, aprs) = shape();
    for (n, &v) in s.lr.iter().enumerate().take(lrs) {
        write_lr(n, v);
    }
    for n in 0..aprs {
        write_apr(false, n, s.ap0r[n]);
        write_apr(true, n, s.ap1r[n]);
    }
    ICH_VMCR_EL2.set(s.vmcr);
    ICH_HCR_EL2.set(s.hcr | ICH_HCR_EN);
}

/// Saves a vCPU's virtual CPU interface and disables it (after the guest's last exit).
pub fn save(s: &mut VgicState) {
    if !features::has(features::GIC_SYSREGS) {
        return;
    }
    let (lrs, aprs) = shape();
    s.hcr = ICH_HCR_EL2.get() & !ICH_HCR_EN;
    ICH_HCR_EL2.set(0);
    s.vmcr = ICH_VMCR_EL2.get();
    for n in 0..aprs {
        s.ap0r[n] = read_apr(false, n);
        s.ap1r[n] = read_apr(true, n);
    }
    for (n, slot) in s.lr.iter_mut().enumerate().take(lrs) {
        *slot = read_lr(n);
    }
}
