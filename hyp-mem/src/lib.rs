//! Portable memory management of the hyp: stage-2 translation tables ([`stage2`]) and pKVM-style
//! page ownership ([`ownership`]).
//!
//! Nothing here touches system registers or runs `asm!`: the hyp supplies the table memory
//! ([`stage2::PhysMem`]) and TLB maintenance ([`stage2::TlbMaintenance`]), and host tests supply
//! fakes ([`fake`], with the `fake` feature or in this crate's tests).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod ownership;
pub mod pool;
pub mod provider;
pub mod stage2;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use abi::Errno;

#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod stage2_tests;
