//! ARMv8-A VMSAv8-64 stage-2 translation (the host's and every VM's), 4 KiB granule, on the one
//! table engine ([`crate::table`]): this module is the stage-2 leaf format, VTCR/VTTBR, and the
//! names the hyp uses ([`Stage2`], [`S2Attrs`]).
//!
//! Stage-2 leaf attributes (Arm ARM, "VMSAv8-64 translation table format descriptors",
//! stage 2):
//!
//! | bits | meaning |
//! |---|---|
//! | 5:2 | MemAttr: 0b1111 normal write-back, 0b0001 device-nGnRE |
//! | 7:6 | S2AP: bit 6 read, bit 7 write |
//! | 9:8 | SH: 0b11 inner shareable |
//! | 10 | AF (always set, no access-flag faults) |
//! | 54:53 | XN\[1:0\]: 0b00 executable, 0b10 execute-never |

use crate::table::{Format, Tables};
pub use crate::table::{
    IpaSize, MapError, MemType, PhysMem, TlbMaintenance, ENTRIES, PAGE_SIZE, PA_BITS, SIZE_1G,
    SIZE_2M, SIZE_4K,
};

const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0b1111 << MEMATTR_SHIFT;
const MEMATTR_NORMAL_WB: u64 = 0b1111;
const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const XN_NEVER: u64 = 0b10 << 53;
const XN_MASK: u64 = 0b11 << 53;

/// Attributes of a stage-2 leaf. Shareability (inner) and AF (set) are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct S2Attrs {
    /// S2AP\[0\].
    pub read: bool,
    /// S2AP\[1\].
    pub write: bool,
    /// Executable at EL1 and EL0 (XN = 0b00); otherwise XN = 0b10.
    pub exec: bool,
    /// Memory type.
    pub mem: MemType,
}

impl S2Attrs {
    /// Normal write-back memory, read/write/exec.
    pub const NORMAL_RWX: S2Attrs = S2Attrs {
        read: true,
        write: true,
        exec: true,
        mem: MemType::NormalWriteBack,
    };
    /// Normal write-back memory, read/write, not executable.
    pub const NORMAL_RW: S2Attrs = S2Attrs {
        read: true,
        write: true,
        exec: false,
        mem: MemType::NormalWriteBack,
    };
    /// Device-nGnRE, read/write, not executable.
    pub const DEVICE_RW: S2Attrs = S2Attrs {
        read: true,
        write: true,
        exec: false,
        mem: MemType::DeviceNGnRE,
    };

    /// Descriptor bits of these attributes (without valid/table bits and address).
    /// Includes AF and SH.
    pub const fn to_bits(self) -> u64 {
        let mut bits = AF | SH_INNER;
        bits |= match self.mem {
            MemType::NormalWriteBack => MEMATTR_NORMAL_WB << MEMATTR_SHIFT,
            MemType::DeviceNGnRE => MEMATTR_DEVICE_NGNRE << MEMATTR_SHIFT,
        };
        if self.read {
            bits |= S2AP_R;
        }
        if self.write {
            bits |= S2AP_W;
        }
        if !self.exec {
            bits |= XN_NEVER;
        }
        bits
    }

    /// Decodes the attributes of a leaf descriptor. MemAttr values other than 0b0001 decode
    /// as normal memory only when they are 0b1111; everything else is reported as device.
    pub const fn from_desc(desc: u64) -> S2Attrs {
        let memattr = (desc & MEMATTR_MASK) >> MEMATTR_SHIFT;
        S2Attrs {
            read: desc & S2AP_R != 0,
            write: desc & S2AP_W != 0,
            exec: desc & XN_MASK == 0,
            mem: if memattr == MEMATTR_NORMAL_WB {
                MemType::NormalWriteBack
            } else {
                MemType::DeviceNGnRE
            },
        }
    }
}

/// The stage-2 leaf format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Format;

impl Format for Stage2Format {
    type Attrs = S2Attrs;

    #[inline]
    fn leaf_bits(attrs: S2Attrs) -> u64 {
        attrs.to_bits()
    }

    #[inline]
    fn attrs_of(desc: u64) -> S2Attrs {
        S2Attrs::from_desc(desc)
    }
}

/// A stage-2 address space: root table, VMID and IPA size, over a [`PhysMem`] and a
/// [`TlbMaintenance`] (the engine's [`Tables`] in the stage-2 format).
pub type Stage2<M, T> = Tables<Stage2Format, M, T>;

/// One stage-2 leaf mapping.
pub type Mapping = crate::table::Mapping<S2Attrs>;

/// VTCR_EL2 for this layout: T0SZ = 64 - IPA bits, SL0 = 1 (start at level 1), IRGN0 = ORGN0 =
/// 0b01 (write-back read/write-allocate), SH0 = 0b11 (inner), TG0 = 0b00 (4 KiB), PS = 0b010
/// (40-bit PA), RES1 bit 31, and VS (bit 19, 16-bit VMIDs, needs FEAT_VMID16) if `vmid16`.
pub const fn vtcr_value(ipa: IpaSize, vmid16: bool) -> u64 {
    let t0sz = (64 - ipa.bits()) as u64;
    let sl0 = 1 << 6;
    let irgn0 = 0b01 << 8;
    let orgn0 = 0b01 << 10;
    let sh0 = 0b11 << 12;
    let tg0 = 0b00 << 14;
    let ps = 0b010 << 16;
    let vs = if vmid16 { 1 << 19 } else { 0 };
    let res1 = 1 << 31;
    t0sz | sl0 | irgn0 | orgn0 | sh0 | tg0 | ps | vs | res1
}

impl<M: PhysMem, T: TlbMaintenance> Tables<Stage2Format, M, T> {
    /// VTTBR_EL2: root PA | VMID << 48 (CnP = 0).
    pub const fn vttbr(&self) -> u64 {
        self.root_pa() | (self.vmid() as u64) << 48
    }
    /// VTCR_EL2 for this stage-2 ([`vtcr_value`]; VS set iff the VMID is above 255).
    pub const fn vtcr(&self) -> u64 {
        vtcr_value(self.ipa_size(), self.vmid() > 0xff)
    }
}
