//! Portable memory management of the hyp: the one translation-table engine ([`table`]) in its two
//! formats, the stage-2 ([`stage2`]) and the hyp's own EL2 stage-1 ([`el2`]), and pKVM-style
//! page ownership ([`ownership`]).
//!
//! Nothing here touches system registers or runs `asm!`: the hyp supplies the table memory
//! ([`table::PhysMem`]) and TLB maintenance ([`table::TlbMaintenance`]), and host tests supply
//! fakes ([`fake`], with the `fake` feature or in this crate's tests).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "fake"))]
extern crate std;

pub mod el2;
pub mod heap;
pub mod ownership;
pub mod pool;
pub mod provider;
pub mod stage2;
pub mod table;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use abi::Errno;

#[cfg(test)]
mod el2_tests;
#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod stage2_tests;
