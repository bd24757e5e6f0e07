//! Flag bits shared by the host shim and the hyp (numbers follow Linux where Linux has them).

use bitflags::bitflags;

bitflags! {
    /// guest_memfd creation flags (`GUEST_MEMFD_FLAG_*` in Linux, NO_DIRECT_MAP as proposed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct GmemFlags: u64 {
        /// The host may mmap the file.
        const MMAP = 1 << 0;
        /// Pages start shared (`ALL`) instead of private (`GUEST`).
        const INIT_SHARED = 1 << 1;
        /// Pages are absent from the host kernel's linear map.
        const NO_DIRECT_MAP = 1 << 2;
        /// Keep per-page shareability and allow conversions (the seed's proposal).
        const TRACK_SHAREABILITY = 1 << 3;
    }
}

bitflags! {
    /// Memslot flags proposed by the seed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MemslotFlags: u64 {
        /// Guest faults are always served through `kvm_gmem_get_pfn()`.
        const ALWAYS_FAULT_FROM_GMEM = 1 << 0;
        /// KVM does not exit on a private/shared mismatch; validation (if any) is gmem's.
        const DONT_CHECK_MISMATCHES = 1 << 1;
    }
}

bitflags! {
    /// `KVM_EXIT_MEMORY_FAULT` flags, numbered as in Linux.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MemoryFaultFlags: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXEC = 1 << 2;
        const PRIVATE = 1 << 3;
    }
}

bitflags! {
    /// Per-VM memory attributes (`KVM_MEMORY_ATTRIBUTE_PRIVATE` is bit 3 in Linux).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MemoryAttributes: u64 {
        const PRIVATE = 1 << 3;
    }
}

/// Where a memslot's `userspace_addr` points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u64)]
pub enum UserspaceAddr {
    /// No userspace mapping.
    #[default]
    None = 0,
    /// Separate host memory (the legacy "shmem" case).
    Anon = 1,
    /// The host's mmap view of the same gmem.
    Gmem = 2,
}

impl UserspaceAddr {
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Anon),
            2 => Some(Self::Gmem),
            _ => None,
        }
    }
}

/// VM types; they decide whether a fault carries a private/shared bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum VmType {
    /// Protected VM: no private/shared bit; the hyp keeps unshared pages from the host.
    Pkvm = 1,
    /// Confidential VM: two aliases per gfn, the shared one with the top IPA bit set.
    Coco = 2,
    /// Non-confidential VM.
    Plain = 3,
}

impl VmType {
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Pkvm),
            2 => Some(Self::Coco),
            3 => Some(Self::Plain),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            VmType::Pkvm => "pkvm",
            VmType::Coco => "coco",
            VmType::Plain => "plain",
        }
    }
}

/// Direction of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ConvertTo {
    /// `ALL` -> `GUEST`.
    Private = 0,
    /// `GUEST` -> `ALL`.
    Shared = 1,
}

/// Content mode of a conversion (proposed `ZERO` bit 0 / `PRESERVE` bit 1; default preserve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u64)]
pub enum ContentMode {
    #[default]
    Preserve = 0,
    Zero = 1,
}
