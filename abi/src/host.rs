//! Host -> hyp hypercalls: `HVC #0` from the host shim at EL1, function ID in `x0`, arguments in
//! `x1..x6`. Results: `x0` = 0 or a non-negative value on success, `-(errno)` on failure;
//! further results in `x1..x5`. The hyp validates every argument; a refused call changes nothing.

/// Base of the host call range (vendor-specific hypervisor service, fast call, 64-bit).
pub const HOST_CALL_BASE: u64 = 0xC600_1000;

/// Every host call the hyp answers. Arguments are listed as `x1, x2, ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum HostCall {
    /// -> x0 = ABI version ([`ABI_VERSION`]), x1 = RAM base, x2 = RAM size.
    Version = HOST_CALL_BASE,
    /// x1 = [`crate::flags::VmType`], x2 = physical address, x3 = pages (at least
    /// [`VM_CREATE_PAGES`]): host pages donated for the VM, as pKVM's `__pkvm_init_vm` takes
    /// them; they open its pool, from which its metadata and stage-2 tables come -> x0 = VM
    /// handle. `EINVAL` for fewer pages or a run outside RAM, `EPERM` for a page not the host's,
    /// `ENOSPC` with [`VMS_MAX`] VMs alive; nothing is taken then.
    VmCreate,
    /// x1 = VM: a step of its teardown, at most [`TEARDOWN_STEP_PAGES`] pages of work; the
    /// host calls again while x1 = 1 (the VM is dying meanwhile: no other call reaches it or
    /// its gmem files). -> x0 = pages this step gave back to the host, zeroed (over all steps:
    /// every page donated for the VM), x1 = 1 while the VM is not gone. `EBUSY` (first step
    /// only) while one of its vCPUs runs.
    VmDestroy,
    /// x1 = VM, x2 = size, x3 = [`crate::flags::GmemFlags`] -> x0 = gmem handle.
    GmemCreate,
    /// x1 = gmem.
    GmemDestroy,
    /// x1 = VM, x2 = GPA, x3 = size, x4 = gmem handle (0 = none), x5 = gmem offset,
    /// x6 = [`crate::flags::MemslotFlags`] | userspace_addr kind << [`SLOT_UADDR_SHIFT`]
    /// -> x0 = slot id.
    MemslotCreate,
    /// x1 = VM, x2 = slot id.
    MemslotDelete,
    /// x1 = VM, x2 = GPA, x3 = size, x4 = [`crate::flags::MemoryAttributes`].
    SetMemoryAttributes,
    /// x1 = gmem, x2 = offset, x3 = size, x4 = [`crate::flags::ConvertTo`],
    /// x5 = [`crate::flags::ContentMode`] or [`CONVERT_MODE_DEFAULT`]. On `EAGAIN`,
    /// x1 = `error_offset`.
    Convert,
    /// x1 = gmem, x2 = offset, x3 = size.
    PunchHole,
    /// x1 = gmem, x2 = offset: a long-term host reference to one page.
    HostPin,
    /// x1 = gmem, x2 = offset.
    HostUnpin,
    /// x1 = gmem, x2 = offset, x3 = 1 for a write: the host's mmap-view fault handler
    /// (`kvm_gmem_fault`). -> x0 = physical address of the page, which the host then touches.
    /// `ENODEV` without MMAP, `EFAULT` (SIGBUS) beyond the file or on a page the host may not see.
    HostMapGmem,
    /// x1 = VM, x2 = slot id, x3 = byte offset in the slot, x4 = 1 for a write: the host's
    /// fault on the slot's `userspace_addr` -> x0 = physical address. `EFAULT` = SIGBUS.
    HostMapUaddr,
    /// x1 = VM, x2 = physical address, x3 = number of pages: host pages go to the VM's pool.
    Donate,
    /// x1 = VM, x2 = IPA, x3 = physical address, x4 = pages: share host pages with the guest
    /// at `IPA`, outside every memslot (`EEXIST` where one is). The host keeps them. `plain`
    /// and `coco` VMs only (`EPERM` for `pkvm`); for `coco` the IPA is the shared alias.
    MapHostShared,
    /// x1 = VM, x2 = entry IPA, x3 = x0 for the guest, x4 = physical address, x5 = pages (at
    /// least [`VCPU_CREATE_PAGES`]): host pages donated to the VM's pool for the vCPU's state
    /// -> x0 = vCPU handle. `EPERM` for a `pkvm` VM once one of its vCPUs ran (its vCPUs, like
    /// its memslots, are then fixed); `ENOMEM` if the VM's pool cannot keep its heap's reserve;
    /// nothing is taken on a refusal.
    VcpuCreate,
    /// x1 = vCPU, x2 = completion value 0, x3 = completion value 1 (see [`ExitReason`]):
    /// runs the vCPU until an exit that needs the host. -> x0 = [`ExitReason`], x1..x5 = data.
    VcpuRun,
    /// x1 = VM -> x0 = faults served at EL2, x1 = exits to the host, x2 = pool pages left,
    /// x3 = MMIO exits, x4 = memory-fault exits, x5 = faults served through `userspace_addr`
    /// (the others went through gmem).
    VmStats,
    /// x1 = VM, x2 = IPA -> x0 = the physical address the VM's stage-2 maps it to (`ENOENT` if
    /// unmapped), x1 = the size of the leaf that maps it (4 KiB or a 2 MiB block).
    /// Introspection: how a run shows which page served a guest access.
    VmWalk,
    /// x1 = gmem, x2 = offset -> x0 = the physical address backing it (`ENOENT` if none yet),
    /// with no access check: what a malicious host could learn anyway, used by `host raw-read`.
    GmemPhys,
    /// x1 = vCPU whose last exit was a guest MEM_SHARE / MEM_UNSHARE: carry it out (convert the
    /// gmem range the hyp validated, with the guest as initiator). -> x1 = pages converted.
    /// On `EAGAIN`, x1 = `error_offset` of the first pinned page; nothing changed.
    GuestConvert,
    /// -> x0 = number of ownership invariant violations (0 = every page reachable by a component
    /// is owned or borrowed by it, no page owned twice, every share marked on both sides).
    CheckInvariants,
    /// x1 = VM, x2 = 0 (first-touch faults served at EL2) or 1 (they exit to the host as
    /// [`ExitReason::PageFault`], the upstream pKVM way; for benchmarks).
    VmSetFaultMode,
    /// x1 = VM, x2 = IPA, x3 = 1 for a write: the host serves a `PageFault` exit. -> x0 = PA.
    ServeFault,
    /// x1 = VM, x2 = 0 (a free 4 KiB page) or 1 (a free 2 MiB chunk): takes one free page or
    /// chunk out of the VM's pool and gives it back to the host, zeroed. -> x0 = its physical
    /// address. `ENOENT` if the pool has none (pKVM's host reclaims unused memcache pages so).
    PoolReclaim,
    /// x1 = VM -> x0 = free loose pages in the VM's pool, x1 = free 2 MiB chunks.
    PoolStats,
    /// x1 = VM: the VM's vCPUs may read the PMU's counters (benchmarks). Introspection only:
    /// without it a guest's PMU access is an undefined instruction.
    VmOpenPmu,
    /// -> page census of RAM from the hyp's ownership table (introspection): x0 = RAM pages,
    /// x1 = pages the host owns alone, x2 = pages the host owns and lends (to a guest: host
    /// pages it shares, `anon` memory), x3 = pages the hyp owns (its image, stacks, heap, and
    /// every VM's pool: free pages and stage-2 tables), x4 = pages a guest owns (its own or
    /// shared with the host), x5 = free pages in all VM pools. A page with no single owner is
    /// in none of x1..x4, so x1 + x2 + x3 + x4 = x0 exactly when every page has one.
    PageCensus,
}

impl HostCall {
    pub const ALL: [HostCall; 29] = [
        HostCall::Version,
        HostCall::VmCreate,
        HostCall::VmDestroy,
        HostCall::GmemCreate,
        HostCall::GmemDestroy,
        HostCall::MemslotCreate,
        HostCall::MemslotDelete,
        HostCall::SetMemoryAttributes,
        HostCall::Convert,
        HostCall::PunchHole,
        HostCall::HostPin,
        HostCall::HostUnpin,
        HostCall::HostMapGmem,
        HostCall::HostMapUaddr,
        HostCall::Donate,
        HostCall::MapHostShared,
        HostCall::VcpuCreate,
        HostCall::VcpuRun,
        HostCall::VmStats,
        HostCall::VmWalk,
        HostCall::GmemPhys,
        HostCall::GuestConvert,
        HostCall::CheckInvariants,
        HostCall::VmSetFaultMode,
        HostCall::ServeFault,
        HostCall::PoolReclaim,
        HostCall::PoolStats,
        HostCall::VmOpenPmu,
        HostCall::PageCensus,
    ];

    /// The calls that exist only in the introspection build of the hyp (cargo feature
    /// `introspection`: scenarios, the hostile suite, the table and benchmarks). The build of
    /// `make run` answers them `ENOSYS`, as it answers unknown calls.
    pub const INTROSPECTION: [HostCall; 8] = [
        HostCall::VmStats,
        HostCall::VmWalk,
        HostCall::GmemPhys,
        HostCall::CheckInvariants,
        HostCall::VmSetFaultMode,
        HostCall::ServeFault,
        HostCall::VmOpenPmu,
        HostCall::PageCensus,
    ];

    /// Whether this call exists only in the introspection build.
    pub fn is_introspection(self) -> bool {
        Self::INTROSPECTION.contains(&self)
    }

    /// The call's name as written in this enum (`"VmCreate"`), which `host call` in scenarios uses.
    pub const fn name(self) -> &'static str {
        match self {
            HostCall::Version => "Version",
            HostCall::VmCreate => "VmCreate",
            HostCall::VmDestroy => "VmDestroy",
            HostCall::GmemCreate => "GmemCreate",
            HostCall::GmemDestroy => "GmemDestroy",
            HostCall::MemslotCreate => "MemslotCreate",
            HostCall::MemslotDelete => "MemslotDelete",
            HostCall::SetMemoryAttributes => "SetMemoryAttributes",
            HostCall::Convert => "Convert",
            HostCall::PunchHole => "PunchHole",
            HostCall::HostPin => "HostPin",
            HostCall::HostUnpin => "HostUnpin",
            HostCall::HostMapGmem => "HostMapGmem",
            HostCall::HostMapUaddr => "HostMapUaddr",
            HostCall::Donate => "Donate",
            HostCall::MapHostShared => "MapHostShared",
            HostCall::VcpuCreate => "VcpuCreate",
            HostCall::VcpuRun => "VcpuRun",
            HostCall::VmStats => "VmStats",
            HostCall::VmWalk => "VmWalk",
            HostCall::GmemPhys => "GmemPhys",
            HostCall::GuestConvert => "GuestConvert",
            HostCall::CheckInvariants => "CheckInvariants",
            HostCall::VmSetFaultMode => "VmSetFaultMode",
            HostCall::ServeFault => "ServeFault",
            HostCall::PoolReclaim => "PoolReclaim",
            HostCall::PoolStats => "PoolStats",
            HostCall::VmOpenPmu => "VmOpenPmu",
            HostCall::PageCensus => "PageCensus",
        }
    }

    /// Finds a call by [`HostCall::name`].
    pub fn from_name(name: &str) -> Option<HostCall> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    pub fn from_id(id: u64) -> Option<HostCall> {
        Self::ALL.iter().copied().find(|c| *c as u64 == id)
    }

    pub const fn id(self) -> u64 {
        self as u64
    }
}

/// ABI version answered by [`HostCall::Version`]: major << 16 | minor.
pub const ABI_VERSION: u64 = 1 << 16;

/// Where the userspace_addr kind sits in `MemslotCreate`'s x6.
pub const SLOT_UADDR_SHIFT: u32 = 32;

/// Why `VcpuRun` returned. `x1..x5` carry the data listed; the completion values of the next
/// `VcpuRun` (x2, x3) answer the exit as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ExitReason {
    /// x1 = IPA, x2 = size in bytes, x3 = 1 for a write, x4 = data written.
    /// Completion: x2 = value a load returns.
    Mmio = 1,
    /// x1 = GPA (page aligned, no coco shared bit), x2 = size, x3 = [`crate::flags::MemoryFaultFlags`].
    /// Completion: x2 = [`COMPLETE_INJECT_ABORT`] injects a data abort, 0 retries the access.
    MemoryFault = 2,
    /// The VM's page pool is empty: x1 = pages wanted. Donate and re-run; nothing changed.
    /// Completion: x2 = [`COMPLETE_INJECT_ABORT`] injects a data abort into the guest instead
    /// (a host that will not donate ends the guest's access so).
    NeedPages = 3,
    /// A guest hypercall the host must handle: x1 = function ID, x2..x4 = guest x1..x3.
    /// For a forwarded MEM_SHARE / MEM_UNSHARE the host carries the request out with
    /// `GuestConvert` (and sets memory attributes); the completion values are ignored: what the
    /// guest sees is decided by the hyp from the state it holds (Trust rule 2).
    Hypercall = 4,
    /// The guest took an exception it could not take itself: x1 = the exception class
    /// (ESR_EL2.EC) and nothing more (Trust rule 1).
    GuestException = 5,
    /// A first-touch fault the host must serve (fault mode 1 only): x1 = IPA, x2 = 1 for a
    /// write. Serve it with `ServeFault` and re-run.
    PageFault = 6,
    /// A physical interrupt (the host's own timer, say) arrived while the guest ran: the host
    /// has the CPU back (Trust rule 6). No data; re-run the vCPU to continue.
    Interrupt = 7,
}

impl ExitReason {
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Mmio),
            2 => Some(Self::MemoryFault),
            3 => Some(Self::NeedPages),
            4 => Some(Self::Hypercall),
            5 => Some(Self::GuestException),
            6 => Some(Self::PageFault),
            7 => Some(Self::Interrupt),
            _ => None,
        }
    }
}

/// `Convert` with no content mode: preserve, except where the rules always zero (a coco VM's
/// page made shared at the host's initiative).
pub const CONVERT_MODE_DEFAULT: u64 = u64::MAX;

/// `VcpuRun` completion value for a memory-fault exit: inject a data abort into the guest.
pub const COMPLETE_INJECT_ABORT: u64 = 1;

/// Largest gmem file, in bytes (Trust rule 7): 2^48. Larger is `EINVAL`.
pub const GMEM_MAX_SIZE: u64 = 1 << 48;

/// The most pages one `VmDestroy` step frees or gives back (a 2 MiB chunk counts 512).
pub const TEARDOWN_STEP_PAGES: u64 = 512;

/// Pages `VmCreate` takes at least: the first reserve of the VM's metadata heap (16 pages: the
/// most one call may need).
pub const VM_CREATE_PAGES: u64 = 16;
/// Pages `VcpuCreate` takes at least: one, for the vCPU's context (under 4 KiB).
pub const VCPU_CREATE_PAGES: u64 = 1;

/// VMs at once (VMIDs 1..=255; VMID 0 is the host's stage-2): `VmCreate` beyond it is `ENOSPC`.
pub const VMS_MAX: u32 = 255;
/// vCPUs of one VM: `VcpuCreate` beyond it is `ENOSPC`.
pub const VCPUS_PER_VM_MAX: u32 = 16;
/// gmem files one VM owns at once: `GmemCreate` beyond it is `ENOSPC`.
pub const GMEM_FILES_PER_VM_MAX: usize = 32;
/// Memslots of one VM at once: `MemslotCreate` beyond it is `ENOSPC`.
pub const MEMSLOTS_PER_VM_MAX: usize = 64;
/// MMIO granules one VM may have guarded at once: a guest `MMIO_GUARD_MAP` (or range map) that
/// would go beyond it is `INVALID_PARAMETER`, and maps nothing.
pub const MMIO_GUARD_GRANULES_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ids_are_distinct() {
        for (i, c) in HostCall::ALL.iter().enumerate() {
            assert_eq!(HostCall::from_name(c.name()), Some(*c));
            assert_eq!(HostCall::from_id(c.id()), Some(*c));
            assert_eq!(c.id(), HOST_CALL_BASE + i as u64);
        }
        assert!(HostCall::VmWalk.is_introspection());
        assert!(!HostCall::VcpuRun.is_introspection());
        assert_eq!(HostCall::from_name("NoSuchCall"), None);
    }
}
