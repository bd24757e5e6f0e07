//! QEMU `virt` platform support for every image (hyp at EL2, host shim and test images at EL1).
//!
//! Hardware access (the PL011, the semihosting trap) is compiled only for bare-metal aarch64; on the
//! host this crate is the memory layout constants and the host input blob's parser, so portable
//! crates may use them.
//!
//! Semihosting (`semihost`) exists only with the `semihosting` feature, which only the test images
//! (whose every EL1 is trusted test code) turn on: the product hyp and host shim contain no
//! semihosting call (Trust rule 11).
#![cfg_attr(not(test), no_std)]

pub mod hostinput;
pub mod layout;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod console;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod pl011;
#[cfg(all(target_arch = "aarch64", target_os = "none", feature = "semihosting"))]
pub mod semihost;
