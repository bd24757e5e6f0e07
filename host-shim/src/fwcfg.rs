//! QEMU's fw_cfg DMA interface, as a hostile host would use it: a DMA-capable device of the
//! board asked to store a byte at a physical address (`host dma-write` in scenarios). The hyp
//! maps no DMA-capable device for the host (Trust rules 1 and 11), so programming it takes a
//! stage-2 abort, which comes back as a [`HostFault`].
//!
//! Owned by the firmware and devices work; not built yet: answers a fault with ESR `u64::MAX`.

use crate::exceptions::HostFault;

/// Asks fw_cfg's DMA engine to store `value` at physical address `pa`. `Err` carries the abort
/// the hyp injected when the host touched the device's register.
pub fn dma_write(pa: u64, value: u8) -> Result<(), HostFault> {
    let _ = (pa, value);
    Err(HostFault {
        esr: u64::MAX,
        far: 0,
    })
}
