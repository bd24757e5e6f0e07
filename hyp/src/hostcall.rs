//! Host -> hyp hypercalls: decode `x0..x6` of the trapped HVC, run the call, write the result
//! back into the host's saved registers (`x0` = value or `-(errno)`, `x1..x5` = extra results).
//!
//! The introspection calls (`HostCall::INTROSPECTION`) exist only in a hyp built with the
//! `introspection` feature (scenarios, the table, benchmarks, tests); the `make run` build
//! answers them `ENOSYS`, as it answers unknown calls, and does not contain their handlers.

use abi::host::{HostCall, ABI_VERSION};
use abi::Errno;

use crate::arch::vectors::TrapFrame;
use crate::vmm::calls;

/// The outcome of a host call: up to six result registers, or an errno.
pub type HostResult = Result<[u64; 6], Errno>;

/// Runs one host call. Unknown function IDs return `-ENOSYS`; nothing else changes. The second
/// value is `x1` to return alongside an error (`error_offset` of a refused conversion).
pub fn dispatch(id: u64, a: [u64; 6]) -> Result<[u64; 6], (Errno, u64)> {
    let Some(call) = HostCall::from_id(id) else {
        return Err((Errno::ENOSYS, 0));
    };
    if !cfg!(feature = "introspection") && call.is_introspection() {
        return Err((Errno::ENOSYS, 0));
    }
    let r = match call {
        HostCall::Version => Ok(version()),
        HostCall::VmCreate => calls::vm_create(a[0]),
        HostCall::VmDestroy => calls::vm_destroy(a[0]),
        HostCall::GmemCreate => calls::gmem_create(a[0], a[1], a[2]),
        HostCall::GmemDestroy => calls::gmem_destroy(a[0]),
        HostCall::MemslotCreate => calls::memslot_create(a),
        HostCall::MemslotDelete => calls::memslot_delete(a[0], a[1]),
        HostCall::SetMemoryAttributes => calls::set_memory_attributes(a[0], a[1], a[2], a[3]),
        HostCall::Convert => return calls::convert(a),
        HostCall::PunchHole => calls::punch_hole(a[0], a[1], a[2]),
        HostCall::HostPin => calls::host_pin(a[0], a[1], true),
        HostCall::HostUnpin => calls::host_pin(a[0], a[1], false),
        HostCall::HostMapGmem => calls::host_map_gmem(a[0], a[1]),
        HostCall::HostMapUaddr => calls::host_map_uaddr(a[0], a[1], a[2]),
        HostCall::Donate => calls::donate(a[0], a[1], a[2]),
        HostCall::MapHostShared => calls::map_host_shared(a[0], a[1], a[2], a[3]),
        HostCall::VcpuCreate => calls::vcpu_create(a[0], a[1], a[2]),
        HostCall::VcpuRun => crate::vmm::vcpu_run(a[0], a[1], a[2]),
        #[cfg(feature = "introspection")]
        HostCall::VmStats => calls::vm_stats(a[0]),
        #[cfg(feature = "introspection")]
        HostCall::VmWalk => calls::vm_walk(a[0], a[1]),
        #[cfg(feature = "introspection")]
        HostCall::GmemPhys => calls::gmem_phys(a[0], a[1]),
        HostCall::GuestConvert => return calls::guest_convert(a[0]),
        #[cfg(feature = "introspection")]
        HostCall::CheckInvariants => calls::check_invariants(),
        #[cfg(feature = "introspection")]
        HostCall::VmSetFaultMode => calls::vm_set_fault_mode(a[0], a[1]),
        #[cfg(feature = "introspection")]
        HostCall::ServeFault => calls::serve_fault(a[0], a[1], a[2]),
        HostCall::PoolReclaim => calls::pool_reclaim(a[0], a[1]),
        HostCall::PoolStats => calls::pool_stats(a[0]),
        #[cfg(feature = "introspection")]
        HostCall::VmOpenPmu => calls::vm_open_pmu(a[0]),
        #[cfg(not(feature = "introspection"))]
        HostCall::VmStats
        | HostCall::VmWalk
        | HostCall::GmemPhys
        | HostCall::CheckInvariants
        | HostCall::VmSetFaultMode
        | HostCall::ServeFault
        | HostCall::VmOpenPmu => Err(Errno::ENOSYS),
    };
    r.map_err(|e| (e, 0))
}

/// `Version`: x0 = ABI version, x1 = RAM base, x2 = RAM size (so the host knows its memory
/// without reading the hyp's DTB).
fn version() -> [u64; 6] {
    let (base, size) =
        crate::boot::info().map_or((0, 0), |i| (i.ram_base as u64, i.ram_size as u64));
    [ABI_VERSION, base, size, 0, 0, 0]
}

/// Handles a trapped host HVC in place.
pub fn handle(frame: &mut TrapFrame) {
    let id = frame.x[0];
    let args = [
        frame.x[1], frame.x[2], frame.x[3], frame.x[4], frame.x[5], frame.x[6],
    ];
    match dispatch(id, args) {
        Ok(regs) => {
            log::trace!("host call 0x{id:x} -> ok 0x{:x}", regs[0]);
            frame.x[..6].copy_from_slice(&regs);
        }
        Err((e, x1)) => {
            log::debug!("host call 0x{id:x} ({:?}) -> {e}", HostCall::from_id(id));
            frame.x[0] = e.to_reg();
            frame.x[1] = x1;
        }
    }
}
