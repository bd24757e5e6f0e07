//! The hyp's calls, portable: everything the hyp decides when a host or a guest calls it or
//! traps into it, written over small traits for what only the hardware can do, so that it builds
//! and is tested on the host, under Miri, and by fuzzers.
//!
//! # Rooms
//! | room | holds |
//! |---|---|
//! | [`platform`] | the traits the hyp's arch corner implements: RAM and TLB maintenance (from `hyp-mem`), a vCPU's saved registers |
//! | [`state`] | [`Hyp`]: the VM and vCPU tables, page ownership, the host stage-2; what a vCPU's exit leaves pending |
//! | [`ownership`] | page-ownership bookkeeping: the one transition a page needs, reclaim, the host stage-2, the invariant checker |
//! | [`calls`] | host calls: dispatch and validation, by object (VMs and vCPUs, gmem, memslots), introspection in its own room |
//! | [`fault`] | the guest fault path, from a decoded stage-2 abort to "resume" or an exit |
//! | [`guest`] | guest calls: MEM_SHARE / UNSHARE / RELINQUISH, the MMIO guard, the stateless SMCCC answers |
//! | [`run`] | a vCPU run: completion of the last exit, one exit handled, the exit reported |
//! | [`exit`] | the decoded exits the arch corner hands over |
//!
//! The policy itself (gmem, shareability, memslots, fault routing, conversions) is `hyp-core`'s;
//! stage-2 tables and pKVM page ownership are `hyp-mem`'s. This crate wires them to the calls and
//! keeps the two in step (SEMANTICS.md "Trust" rule 3: every page's ownership change is checked
//! before anything changes; unmaps come first and cannot fail).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod calls;
pub mod exit;
pub mod fault;
pub mod guest;
pub mod ownership;
pub mod platform;
pub mod run;
pub mod state;

pub use calls::{HostAnswer, HostResult};
pub use exit::{GuestExit, Injected, MmioAccess};
pub use platform::{Platform, VcpuContext};
pub use run::{RunTicket, Step};
pub use state::{Hyp, HypConfig, VmStats, IPA};

#[cfg(test)]
mod tests;
