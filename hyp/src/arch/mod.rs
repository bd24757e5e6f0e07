//! The hardware corner. Only code under here touches system registers or runs `asm!`.
pub mod aarch64;
pub use aarch64::*;
