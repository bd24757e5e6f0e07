//! The EL2 hypervisor library: everything an EL2 image (the product `hyp` binary and the on-target
//! test images) needs to boot, trap, allocate and report.
//!
//! Layout: `arch/` is the hardware corner (boot, vectors, MMU, system registers, entering EL1);
//! everything else is plain Rust that talks to it through small functions.
#![no_std]

extern crate alloc;

pub mod arch;
pub mod boot;
pub mod crash;
pub mod glue;
pub mod mm;
pub mod percpu;
pub mod pool;
pub mod psci;
