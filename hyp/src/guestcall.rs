//! Guest -> hyp hypercalls that need no VM state (SMCCC 1.1 over `HVC #0`): the discovery calls
//! and everything unknown. Plain Rust: the guest's `x0..x3` in, the answer's `x0..x3` out. The
//! calls that change state (MEM_SHARE/UNSHARE/RELINQUISH, the MMIO guard) are `vmm`'s.

use abi::guest::*;

/// The answer to a stateless guest hypercall.
pub fn answer(x: [u64; 4]) -> [u64; 4] {
    let [func, a1, a2, a3] = x;
    match func {
        ARM_SMCCC_VENDOR_HYP_CALL_UID => KVM_UID,
        KVM_FEATURES => [features_bitmap_0(), 0, 0, 0],
        HYP_MEMINFO | MMIO_GUARD_INFO if a1 | a2 | a3 != 0 => [SMCCC_INVALID_PARAMETER, 0, 0, 0],
        HYP_MEMINFO | MMIO_GUARD_INFO => [abi::PAGE_SIZE, 1, 0, 0],
        _ => [SMCCC_NOT_SUPPORTED, 0, 0, 0],
    }
}
