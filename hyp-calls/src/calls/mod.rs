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
use hyp_core::GmemHandle;

use crate::platform::Platform;
use crate::state::Hyp;

/// The outcome of a host call: up to six result registers, or an errno.
pub type HostResult = Result<[u64; 6], Errno>;

pub(crate) fn ok(v: u64) -> HostResult {
    Ok([v, 0, 0, 0, 0, 0])
}

/// The VM whose heap pays for what a host call keeps: the VM it names, or the owner of the gmem
/// file or vCPU it names. Calls that add to the hyp's own tables (`VmCreate`, `GmemCreate`,
/// `VcpuCreate`, bounded by the documented limits) or only free (`VmDestroy`, `GmemDestroy`,
/// the pool calls) charge nothing here; `VcpuCreate` charges the vCPU's context itself.
fn charged_vm<P: Platform>(hyp: &Hyp<P>, call: HostCall, a: &[u64; 6]) -> Option<u32> {
    let gmem_owner = |g: u64| {
        let g = GmemHandle(u32::try_from(g).ok()?);
        hyp.world.gmem_owner(g).ok().map(|v| v.0)
    };
    match call {
        HostCall::Convert
        | HostCall::PunchHole
        | HostCall::HostPin
        | HostCall::HostUnpin
        | HostCall::HostMapGmem => gmem_owner(a[0]),
        HostCall::GuestConvert => {
            let c = hyp.vcpus.get(&u32::try_from(a[0]).ok()?)?;
            Some(c.vm.0)
        }
        HostCall::MemslotCreate
        | HostCall::MemslotDelete
        | HostCall::SetMemoryAttributes
        | HostCall::HostMapUaddr
        | HostCall::MapHostShared
        | HostCall::ServeFault => u32::try_from(a[0]).ok(),
        _ => None,
    }
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
        // Whatever the call keeps for a VM comes from that VM's heap, whose reserve covers the
        // whole call before it starts (Trust rule 8): else ENOMEM, nothing changed.
        let _charge = match charged_vm(hyp, call, &a).map(|vm| hyp.charge(vm)) {
            Some(Err(_)) => return HostAnswer::Done(Err((Errno::ENOMEM, 0))),
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let r = match call {
            HostCall::Version => Ok([
                ABI_VERSION,
                hyp.config.ram_base,
                hyp.config.ram_size,
                0,
                0,
                0,
            ]),
            HostCall::VmCreate => vms::vm_create(hyp, a[0], a[1], a[2]),
            HostCall::VmDestroy => vms::vm_destroy(hyp, a[0]),
            HostCall::VcpuCreate => vms::vcpu_create(hyp, a[0], a[1], a[2], a[3], a[4]),
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
