//! Host calls: the dispatch of a trapped host HVC (`abi::host::HostCall`) and the handlers, one
//! room per kind of object. Every handler validates its arguments before it changes anything;
//! a refused call changes nothing. `VcpuRun` is the one call the dispatch hands back: running a
//! guest needs the world switch ([`crate::run`]).

pub mod gmem;
#[cfg(feature = "introspection")]
pub mod introspect;
pub mod slots;
pub mod vms;

use abi::host::{HostCall, ABI_VERSION};
use abi::Errno;

use crate::platform::Platform;
use crate::state::Hyp;

/// The outcome of a host call: up to six result registers, or an errno.
pub type HostResult = Result<[u64; 6], Errno>;

pub(crate) fn ok(v: u64) -> HostResult {
    Ok([v, 0, 0, 0, 0, 0])
}

/// What [`Hyp::host_call`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAnswer {
    /// The call is done: its result registers, or an errno with `x1` (the `error_offset` of a
    /// conversion refused with `EAGAIN`, else 0).
    Done(Result<[u64; 6], (Errno, u64)>),
    /// `VcpuRun`: run the vCPU (x1) with `c0` (x2) completing its last exit.
    Run { vcpu: u64, c0: u64 },
}

impl<P: Platform> Hyp<P> {
    /// Runs one host call, function `id`, arguments `a` = x1..x6. Unknown function IDs (and, in
    /// a build without the `introspection` feature, the introspection calls) are `ENOSYS`, the
    /// errno form of SMCCC's NOT_SUPPORTED; nothing changes then.
    pub fn host_call(&mut self, id: u64, a: [u64; 6]) -> HostAnswer {
        let Some(call) = HostCall::from_id(id) else {
            return HostAnswer::Done(Err((Errno::ENOSYS, 0)));
        };
        if !cfg!(feature = "introspection") && call.is_introspection() {
            return HostAnswer::Done(Err((Errno::ENOSYS, 0)));
        }
        let hyp = self;
        let r = match call {
            HostCall::Version => Ok([
                ABI_VERSION,
                hyp.config.ram_base,
                hyp.config.ram_size,
                0,
                0,
                0,
            ]),
            HostCall::VmCreate => vms::vm_create(hyp, a[0]),
            HostCall::VmDestroy => vms::vm_destroy(hyp, a[0]),
            HostCall::VcpuCreate => vms::vcpu_create(hyp, a[0], a[1], a[2]),
            HostCall::Donate => vms::donate(hyp, a[0], a[1], a[2]),
            HostCall::PoolReclaim => vms::pool_reclaim(hyp, a[0], a[1]),
            HostCall::PoolStats => vms::pool_stats(hyp, a[0]),
            HostCall::VcpuRun => {
                return HostAnswer::Run {
                    vcpu: a[0],
                    c0: a[1],
                }
            }
            HostCall::GmemCreate => gmem::gmem_create(hyp, a[0], a[1], a[2]),
            HostCall::GmemDestroy => gmem::gmem_destroy(hyp, a[0]),
            HostCall::Convert => return HostAnswer::Done(gmem::convert(hyp, a)),
            HostCall::PunchHole => gmem::punch_hole(hyp, a[0], a[1], a[2]),
            HostCall::HostPin => gmem::host_pin(hyp, a[0], a[1], true),
            HostCall::HostUnpin => gmem::host_pin(hyp, a[0], a[1], false),
            HostCall::HostMapGmem => gmem::host_map_gmem(hyp, a[0], a[1]),
            HostCall::GuestConvert => return HostAnswer::Done(gmem::guest_convert(hyp, a[0])),
            HostCall::MemslotCreate => slots::memslot_create(hyp, a),
            HostCall::MemslotDelete => slots::memslot_delete(hyp, a[0], a[1]),
            HostCall::SetMemoryAttributes => {
                slots::set_memory_attributes(hyp, a[0], a[1], a[2], a[3])
            }
            HostCall::HostMapUaddr => slots::host_map_uaddr(hyp, a[0], a[1], a[2]),
            HostCall::MapHostShared => slots::map_host_shared(hyp, a[0], a[1], a[2], a[3]),
            #[cfg(feature = "introspection")]
            HostCall::VmStats => introspect::vm_stats(hyp, a[0]),
            #[cfg(feature = "introspection")]
            HostCall::VmWalk => introspect::vm_walk(hyp, a[0], a[1]),
            #[cfg(feature = "introspection")]
            HostCall::GmemPhys => introspect::gmem_phys(hyp, a[0], a[1]),
            #[cfg(feature = "introspection")]
            HostCall::CheckInvariants => introspect::check_invariants(hyp),
            #[cfg(feature = "introspection")]
            HostCall::VmSetFaultMode => introspect::vm_set_fault_mode(hyp, a[0], a[1]),
            #[cfg(feature = "introspection")]
            HostCall::ServeFault => introspect::serve_fault(hyp, a[0], a[1], a[2]),
            #[cfg(feature = "introspection")]
            HostCall::VmOpenPmu => introspect::vm_open_pmu(hyp, a[0]),
            #[cfg(feature = "introspection")]
            HostCall::PageCensus => introspect::page_census(hyp),
            #[cfg(not(feature = "introspection"))]
            HostCall::VmStats
            | HostCall::VmWalk
            | HostCall::GmemPhys
            | HostCall::CheckInvariants
            | HostCall::VmSetFaultMode
            | HostCall::ServeFault
            | HostCall::VmOpenPmu
            | HostCall::PageCensus => Err(Errno::ENOSYS),
        };
        HostAnswer::Done(r.map_err(|e| (e, 0)))
    }
}
