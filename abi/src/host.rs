//! Host -> hyp hypercalls: `HVC #0` from the host shim at EL1, function ID in `x0`, arguments in
//! `x1..x6`. Results: `x0` = 0 or a non-negative value on success, `-(errno)` on failure;
//! further results in `x1..x3`.

/// Base of the host call range (vendor-specific hypervisor service, fast call, 64-bit).
pub const HOST_CALL_BASE: u64 = 0xC600_1000;

/// Every host call the hyp answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum HostCall {
    /// x0 <- ABI version, x1 <- feature bits.
    Version = HOST_CALL_BASE,
}

impl HostCall {
    pub const ALL: [HostCall; 1] = [HostCall::Version];

    pub fn from_id(id: u64) -> Option<HostCall> {
        Self::ALL.iter().copied().find(|c| *c as u64 == id)
    }

    pub const fn id(self) -> u64 {
        self as u64
    }
}

/// ABI version answered by [`HostCall::Version`]: major << 16 | minor.
pub const ABI_VERSION: u64 = 1 << 16;
