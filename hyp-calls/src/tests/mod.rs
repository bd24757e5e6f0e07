//! Host tests of the portable calls over a fake platform: fake RAM and a recording TLB (from
//! `hyp_mem::fake`), a fake vCPU that records what the hyp did to it. Every host and guest call's
//! refusals are checked with their exact error (`host_calls.rs`, `guest_calls.rs`), and the fault
//! path's outcomes and the completion of exits (`exits.rs`). `edges.rs` pins every argument
//! check, bound and mask with huge, wrapping, unaligned, off-by-one, someone-else's and
//! twice-arriving arguments, and the order of unmaps and zeroing (the [`WatchTlb`]). `storm.rs`
//! drives random sequences of host calls and guest exits and holds them, after every step, to
//! the invariant checker and to an independent reference model (`model.rs`) with its page
//! accounting. The fakes and the rig are in `rig.rs`.

mod alloc_fail;
mod edges;
mod edges2;
mod exits;
mod guest_calls;
mod host_calls;
mod limits;
mod model;
mod rig;
mod storm;
mod teardown;

pub(crate) use rig::*;
