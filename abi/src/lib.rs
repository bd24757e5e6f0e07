//! The ABI between the three worlds (hyp at EL2, host shim at EL1, guests at EL1 under stage-2).
//!
//! Everything numeric that crosses a world boundary lives here and nowhere else: host -> hyp
//! hypercall numbers, guest -> hyp hypercall numbers (pKVM's, from Linux), flag bits,
//! error codes (Linux errno names, SMCCC return codes) and the layout of a vCPU exit.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cmd;
pub mod errno;
pub mod flags;
pub mod guest;
pub mod host;

pub use errno::Errno;

/// The hyp's translation granule, in bytes, for stage-1 and stage-2.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
