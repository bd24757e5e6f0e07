//! The EL2 hypervisor library: everything an EL2 image (the product `hyp` binary and the on-target
//! test images) needs to boot, trap, allocate and report.
//!
//! Layout: `arch/` is the hardware corner (boot, vectors, MMU, system registers, entering EL1,
//! its own per-CPU data), a leaf that names nothing above it; everything else is plain Rust that
//! talks to it through small functions and hands the vectors their trap handler (`trap.rs`). The
//! top-level modules import each other without a circle (`tests/house.py`).
#![no_std]

extern crate alloc;

pub mod arch;
pub mod boot;
pub mod crash;
pub mod glue;
pub mod machine;
pub mod mm;
pub mod percpu;
pub mod pool;
pub mod psci;
pub mod trap;
