//! What boot found about the machine ([`BootInfo`]: RAM, the hyp's regions, the CPUs, the
//! devices the host may reach) and where each CPU's EL2 stack is. A low module: boot fills it in,
//! PSCI and the images read it; it names no other module of the hyp.

use board::layout::{HYP_STACK_SIZE, MAX_CPUS};

/// What boot found and set up.
#[derive(Debug)]
pub struct BootInfo {
    pub cpu: usize,
    pub ram_base: usize,
    pub ram_size: usize,
    pub image_end: usize,
    pub heap: (usize, usize),
    pub frames: (usize, usize),
    pub el2_stack_top: usize,
    /// CPUs the DTB lists (the hyp serves at most `MAX_CPUS` of them).
    pub cpus: usize,
    /// The device MMIO the host stage-2 may map (from the DTB).
    pub host_mmio: HostMmio,
}

/// One device the host may reach: `[base, end)`, page-aligned, below RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRegion {
    pub name: &'static str,
    pub base: u64,
    pub end: u64,
}

/// The device MMIO the host needs, and nothing more: its console (the PL011 page), the GIC
/// distributor and the redistributor frames of the CPUs that exist. Everything else below RAM
/// (flash, fw_cfg and its DMA register, the RTC, GPIO, virtio-mmio, the PCIe windows) stays out
/// of the host stage-2, so a host access there gets an abort injected.
///
/// Redistributors that implement LPIs (`GICR_TYPER.PLPIS`) read and write LPI tables at
/// addresses their `RD_base` frame is programmed with, behind every stage-2: then the host gets
/// only each CPU's `SGI_base` frame (SGI/PPI enables, priorities, configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMmio {
    pub(crate) regions: [MmioRegion; 2 + MAX_CPUS],
    pub(crate) count: usize,
}

impl HostMmio {
    /// The regions the host may map.
    pub fn regions(&self) -> &[MmioRegion] {
        self.regions.get(..self.count).unwrap_or(&[])
    }

    /// The region holding `pa`, if any.
    pub fn region_of(&self, pa: u64) -> Option<&MmioRegion> {
        self.regions().iter().find(|r| r.base <= pa && pa < r.end)
    }

    pub(crate) fn push(&mut self, r: MmioRegion) {
        if let Some(slot) = self.regions.get_mut(self.count) {
            *slot = r;
            self.count += 1;
        }
    }
}

impl BootInfo {
    pub fn ram_end(&self) -> usize {
        self.ram_base + self.ram_size
    }
}

static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// What boot found (after boot).
pub fn info() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}

/// Records what boot found (once, by boot).
pub(crate) fn set_info(info: BootInfo) -> &'static BootInfo {
    BOOT_INFO.call_once(|| info)
}

extern "C" {
    static __stack_top: u8;
}

/// The top of CPU `cpu`'s EL2 stack (the stacks sit below `__stack_top`, CPU 0's first).
pub fn stack_top(cpu: usize) -> usize {
    core::ptr::addr_of!(__stack_top) as usize - cpu * HYP_STACK_SIZE
}
