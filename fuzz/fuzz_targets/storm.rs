//! The host storm of `hyp-calls` (`hyp-calls/src/tests/storm.rs`) under libFuzzer: the input
//! bytes decode (`storm::decode`) into the same `Op` sequences, in the same ranges, that the
//! property test draws, and every sequence runs with the same checks
//! after every step (the invariant checker, the guests' view, the reference model of
//! `tests/model.rs` and the page accounting). A failure panics with the step and the reason;
//! libFuzzer keeps the input (`cargo fuzz run storm <file>` replays it).
#![no_main]
#![allow(dead_code, unused_imports)]

extern crate alloc;

use libfuzzer_sys::fuzz_target;

// The storm's sources name the call crate's modules through `crate::`.
pub use hyp_calls::{calls, exit, fault, guest, ownership, platform, run, state};
pub use hyp_calls::{HostAnswer, IPA};

// The storm and what it needs of the test tree, built from the same files (they name each
// other through `super::`, here the crate root).
#[path = "../../hyp-calls/src/tests/model.rs"]
mod model;
#[path = "../../hyp-calls/src/tests/rig.rs"]
mod rig;
#[path = "../../hyp-calls/src/tests/storm.rs"]
mod storm;

pub(crate) use rig::*;

fuzz_target!(|data: &[u8]| {
    let ops = storm::decode(data);
    if let Err(e) = storm::run_ops(&ops) {
        panic!("storm: {e}\ncase ({} ops): {ops:?}", ops.len());
    }
});
