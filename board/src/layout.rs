//! The physical memory layout of the QEMU `virt` machine as this project uses it.
//!
//! ```text
//! 0x0900_0000  PL011 UART
//! 0x4000_0000  RAM base: QEMU places the DTB here
//! 0x4020_0000  hyp image (linker/hyp.ld), then its stacks, heap and page allocator
//! 0x4800_0000  host region: the host shim image (linker/host.ld) and its heap; everything above belongs to the host
//! 0x4A00_0000  the host input blob (mode, scenario files), put there by QEMU's generic loader
//! 0x4B00_0000  the host's free RAM (its page allocator starts here or above)
//! ```

/// PL011 UART base.
pub const PL011_BASE: usize = 0x0900_0000;
/// Where the MMIO devices the hyp maps for itself live (GIC, UART, RTC, ...).
pub const DEVICE_BASE: usize = 0x0800_0000;
/// End of the device window the hyp maps.
pub const DEVICE_END: usize = 0x0a00_0000;
/// Start of RAM; QEMU puts the DTB here when the image leaves room.
pub const RAM_BASE: usize = 0x4000_0000;
/// Address of the DTB.
pub const DTB_ADDR: usize = RAM_BASE;
/// Link address of the hyp.
pub const HYP_BASE: usize = 0x4020_0000;
/// End of the memory the hyp keeps for itself; the host owns `[HOST_BASE, ram_end)`.
pub const HYP_END: usize = 0x4800_0000;
/// Link and load address of the host shim (and of EL1 test images).
pub const HOST_BASE: usize = HYP_END;
/// Where QEMU's generic loader (`-device loader,file=F,addr=A,force-raw=on`) puts the host
/// input blob ([`crate::hostinput`]): the host shim's mode and files, in host RAM. Without a
/// blob the RAM there reads as zero and the host shim runs its demo.
pub const HOST_INPUT_BASE: usize = 0x4A00_0000;
/// Largest host input blob.
pub const HOST_INPUT_MAX: usize = 16 << 20;
/// End of the host input area: the host's page allocator starts at or above it.
pub const HOST_INPUT_END: usize = HOST_INPUT_BASE + HOST_INPUT_MAX;
/// Bytes of the hyp's heap.
pub const HYP_HEAP_SIZE: usize = 64 << 20;
/// CPUs the hyp is built for (per-CPU data and stacks).
pub const MAX_CPUS: usize = 4;
/// Bytes of stack per CPU at EL2.
pub const HYP_STACK_SIZE: usize = 64 << 10;

/// The devices the host may reach, where the DTB does not say otherwise (the hyp reads their
/// addresses from the DTB at boot and falls back to these): the GICv3 distributor, the
/// redistributor frames (one per CPU) and the PL011 (console).
pub const GICD_BASE: usize = 0x0800_0000;
/// Bytes of the GICv3 distributor.
pub const GICD_SIZE: usize = 0x1_0000;
/// First GICv3 redistributor frame.
pub const GICR_BASE: usize = 0x080A_0000;
/// Bytes of one CPU's redistributor (RD_base and SGI_base frames).
pub const GICR_SIZE_PER_CPU: usize = 0x2_0000;
/// Bytes of the PL011's register page.
pub const PL011_SIZE: usize = 0x1000;
/// QEMU's fw_cfg device (selector, data and DMA address registers). Never mapped for the host:
/// its DMA interface writes anywhere in RAM.
pub const FW_CFG_BASE: usize = 0x0902_0000;
