//! Host -> hyp hypercalls: decode `x0..x6` of the trapped HVC, run the call, write the result
//! back into the host's saved registers (`x0` = value or `-(errno)`, `x1..x3` = extra results).

use abi::host::{HostCall, ABI_VERSION};
use abi::Errno;

use crate::arch::vectors::TrapFrame;

/// The outcome of a host call: up to four result registers, or an errno.
pub type HostResult = Result<[u64; 4], Errno>;

/// Runs one host call. Unknown function IDs return `-ENOSYS`; nothing else changes.
pub fn dispatch(id: u64, _args: [u64; 6]) -> HostResult {
    match HostCall::from_id(id) {
        Some(HostCall::Version) => Ok([ABI_VERSION, 0, 0, 0]),
        None => Err(Errno::ENOSYS),
    }
}

/// Handles a trapped host HVC in place.
pub fn handle(frame: &mut TrapFrame) {
    let id = frame.x[0];
    let args = [
        frame.x[1], frame.x[2], frame.x[3], frame.x[4], frame.x[5], frame.x[6],
    ];
    let result = dispatch(id, args);
    match result {
        Ok(regs) => {
            log::debug!("host call 0x{id:x} -> ok 0x{:x}", regs[0]);
            frame.x[..4].copy_from_slice(&regs);
        }
        Err(e) => {
            log::debug!("host call 0x{id:x} -> {e}");
            frame.x[0] = e.to_reg();
        }
    }
}
