//! Guest -> hyp hypercalls answered at EL2 (SMCCC 1.1 over `HVC #0`). Plain Rust: takes the
//! guest's `x0..x3`, says what to answer or that the call needs the host.

use abi::guest::*;

/// What to do with a guest hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestCall {
    /// Answer at EL2 with these `x0..x3`; the guest goes on.
    Answer([u64; 4]),
    /// The host must handle it (a conversion the host performs).
    Forward,
}

/// Decides a guest hypercall from its registers.
pub fn decide(x: [u64; 4]) -> GuestCall {
    let [func, a1, a2, a3] = x;
    let answer = |r0: u64| GuestCall::Answer([r0, 0, 0, 0]);
    match func {
        ARM_SMCCC_VENDOR_HYP_CALL_UID => GuestCall::Answer(KVM_UID),
        KVM_FEATURES => GuestCall::Answer([features_bitmap_0(), 0, 0, 0]),
        HYP_MEMINFO | MMIO_GUARD_INFO => {
            if a1 | a2 | a3 != 0 {
                answer(SMCCC_INVALID_PARAMETER)
            } else {
                GuestCall::Answer([abi::PAGE_SIZE, 1, 0, 0])
            }
        }
        MEM_SHARE | MEM_UNSHARE | MEM_RELINQUISH => GuestCall::Forward,
        _ => answer(SMCCC_NOT_SUPPORTED),
    }
}
