//! The portable policy core of the hyp: guest_memfd files with per-page shareability, memslots,
//! memory attributes, guest fault routing and conversions, as plain `no_std` Rust.
//!
//! This crate is the home of the policy of the seed table (`shared/seed`) as stated in
//! `shared/spec/SEMANTICS.md`; the hyp runs it at EL2 and backs [`PageProvider`] with pages
//! donated by the host. It holds no hardware state: the hyp applies what it returns (pages to
//! map, exits to take, ranges to unmap).
//!
//! Entry point: [`World`], holding VMs and gmem files by handle. Errors are [`abi::Errno`]
//! everywhere (conversions add the `EAGAIN` `error_offset` in [`ConvertError`]). Nothing here
//! panics on any input; heap allocation failure is the global allocator's business.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod fault;
pub mod gmem;
pub mod pages;
pub mod provider;
pub mod range;
pub mod vm;
pub mod world;

pub use abi::flags::{
    ContentMode, ConvertTo, GmemFlags, MemoryFaultFlags, MemslotFlags, UserspaceAddr, VmType,
};
pub use abi::Errno;
pub use fault::{Access, FaultResolution, FaultSource};
pub use gmem::{BlockCheck, ConvertError, ConvertRequest, GmemFile, Initiator, Shareability};
pub use pages::PageMap;
pub use provider::{FakeArena, PageProvider, BLOCK_PAGES, BLOCK_SIZE};
pub use range::RangeStore;
pub use vm::{
    GmemBinding, GmemHandle, Memslot, MemslotSpec, SlotId, Vm, VmHandle, MAX_VMS, VMID_BITS,
};
pub use world::{GmemRange, GuestRangePiece, Invalidation, Stage2Unmap, Teardown, World};

#[cfg(test)]
mod tests;
