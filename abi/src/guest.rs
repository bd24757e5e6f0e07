//! Guest -> hyp hypercalls: SMCCC 1.1 over `HVC #0`, function ID in `x0`, arguments in `x1..x3`.
//! Numbers from Linux pKVM / the Android common kernel.

pub const ARM_SMCCC_VENDOR_HYP_CALL_UID: u64 = 0x8600_FF01;
pub const KVM_FEATURES: u64 = 0x8600_0000;
pub const HYP_MEMINFO: u64 = 0xC600_0002;
pub const MEM_SHARE: u64 = 0xC600_0003;
pub const MEM_UNSHARE: u64 = 0xC600_0004;
pub const MMIO_GUARD_INFO: u64 = 0xC600_0005;
pub const MMIO_GUARD_ENROLL: u64 = 0xC600_0006;
pub const MMIO_GUARD_MAP: u64 = 0xC600_0007;
pub const MMIO_GUARD_UNMAP: u64 = 0xC600_0008;
pub const MEM_RELINQUISH: u64 = 0xC600_0009;
pub const MMIO_GUARD_MAP_RANGE: u64 = 0xC600_000A;
pub const MMIO_GUARD_UNMAP_RANGE: u64 = 0xC600_000B;

/// KVM's vendor hyp UID (28b46fb6-2ec5-11e9-a9ca-4b564d003a74) as returned in x0..x3.
pub const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// SMCCC return codes.
pub const SMCCC_SUCCESS: u64 = 0;
pub const SMCCC_NOT_SUPPORTED: u64 = -1i64 as u64;
pub const SMCCC_NOT_REQUIRED: u64 = -2i64 as u64;
pub const SMCCC_INVALID_PARAMETER: u64 = -3i64 as u64;

/// Function numbers (bit positions in the FEATURES bitmap) of the vendor calls this hyp answers.
pub const FEATURE_BITS: [u32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// The FEATURES bitmap for function numbers 0-31 (x0); x1..x3 are zero.
pub const fn features_bitmap_0() -> u64 {
    let mut bits = 0u64;
    let mut i = 0;
    while i < FEATURE_BITS.len() {
        bits |= 1 << FEATURE_BITS[i];
        i += 1;
    }
    bits
}

/// Most granules a range call (MEM_SHARE / MEM_UNSHARE) handles before stopping early.
pub const RANGE_CALL_MAX_GRANULES: u64 = 256;

/// Guest physical address of the MMIO command device the step-interpreter guest talks through.
/// It lies above the scenario window (below 4 GiB) on purpose.
pub const CMD_DEVICE_IPA: u64 = 0x1_0000_0000;

/// Bits of every VM's IPA space (the hyp gives each VM a 40-bit stage-2).
pub const IPA_BITS: u32 = 40;
/// One past the highest IPA of a VM.
pub const IPA_LIMIT: u64 = 1 << IPA_BITS;
/// The coco shared alias bit, the top IPA bit: a coco VM's memory lies below it, and the same
/// GPA with it set is the page's shared alias.
pub const COCO_SHARED_BIT: u64 = 1 << (IPA_BITS - 1);

// The command device lies below the shared alias (a coco guest reaches it at its private IPA).
const _: () = assert!(CMD_DEVICE_IPA < COCO_SHARED_BIT);

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the hyp and the host shim used before these constants existed.
    #[test]
    fn ipa_constants_keep_their_values() {
        assert_eq!(IPA_LIMIT, 1 << 40);
        assert_eq!(COCO_SHARED_BIT, 1 << 39);
    }
}
