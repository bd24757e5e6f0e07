//! Shared bits of the EL2 test images.
#![no_std]

/// `x2` value the EL2 image passes to the EL1 test image so it knows `x0`/`x1` are prior counts.
pub const HANDOFF_MAGIC: u64 = 0x7e57_0c0d;
