//! The physical memory layout of the QEMU `virt` machine as this project uses it.
//!
//! ```text
//! 0x0900_0000  PL011 UART
//! 0x4000_0000  RAM base: QEMU places the DTB here
//! 0x4020_0000  hyp image (linker/hyp.ld), then its stacks, heap and page allocator
//! 0x4800_0000  host region: the host shim image (linker/host.ld); everything above belongs to the host
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
/// Bytes of the hyp's heap.
pub const HYP_HEAP_SIZE: usize = 64 << 20;
/// CPUs the hyp is built for (per-CPU data and stacks).
pub const MAX_CPUS: usize = 4;
/// Bytes of stack per CPU at EL2.
pub const HYP_STACK_SIZE: usize = 64 << 10;
