//! QEMU `virt` platform support for every image (hyp at EL2, host shim and test images at EL1).
//!
//! Hardware access (the PL011, the semihosting trap) is compiled only for bare-metal aarch64; on the
//! host this crate is the memory layout constants and nothing else, so portable crates may use them.
#![cfg_attr(not(test), no_std)]

pub mod layout;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod console;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod pl011;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod semihost;
