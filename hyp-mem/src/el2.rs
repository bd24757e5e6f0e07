//! The hyp's own stage-1 translation (EL2 regime, `HCR_EL2.E2H` = 0) on the one table engine
//! ([`crate::table`]): the EL2 leaf format and the identity map the hyp runs on.
//!
//! The map ([`build_identity_map`]) covers RAM (normal, write-back) and the device window the hyp
//! uses (device-nGnRE). Everything else, e.g. the flash at address 0 and the space above RAM, is
//! left unmapped so a stray access traps. W^X: the hyp's code is read-only and executable; its
//! read-only data read-only and execute-never; everything else (data, BSS, stacks, heap, page
//! allocator, the rest of RAM, the devices) read-write and execute-never. The arch code turns
//! on `SCTLR_EL2.WXN` too, so any writable page is execute-never whatever its descriptor says.
//!
//! 39-bit VA ([`IpaSize::Bits39`]: one level-1 root, T0SZ = 25), 4 KiB granule; 2 MiB blocks,
//! and 4 KiB pages in the 2 MiB ranges that hold the image's code and read-only data.
//!
//! EL2 stage-1 leaf attributes (Arm ARM, "VMSAv8-64 translation table format descriptors",
//! stage 1, a regime with one privilege level):
//!
//! | bits | meaning |
//! |---|---|
//! | 4:2 | AttrIndx into MAIR_EL2: [`ATTR_INDEX_DEVICE`], [`ATTR_INDEX_NORMAL`] |
//! | 6 | AP\[1\]: RES1 (one privilege level) |
//! | 7 | AP\[2\]: read-only |
//! | 9:8 | SH: 0b11 inner shareable (normal memory; 0 for device) |
//! | 10 | AF (always set) |
//! | 54 | XN |

use crate::table::{Format, PhysMem, Tables, TlbMaintenance, SIZE_2M, SIZE_4K};
pub use crate::table::{IpaSize, MapError, MemType};

/// The MAIR_EL2 attribute index of device-nGnRE memory (`Attr0`).
pub const ATTR_INDEX_DEVICE: u64 = 0;
/// The MAIR_EL2 attribute index of normal write-back memory (`Attr1`).
pub const ATTR_INDEX_NORMAL: u64 = 1;

const ATTR_INDEX_SHIFT: u32 = 2;
const ATTR_INDEX_MASK: u64 = 0b111 << ATTR_INDEX_SHIFT;
/// AP\[1\]: RES1 in a translation regime with one privilege level (EL2 with E2H = 0).
const AP1_RES1: u64 = 1 << 6;
/// AP\[2\]: read-only.
const AP_RO: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
/// XN (bit 54) in the EL2 regime.
const XN: u64 = 1 << 54;

/// Attributes of an EL2 stage-1 leaf: always readable, AF set; normal memory inner shareable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct El2Attrs {
    /// Writable (AP\[2\] clear).
    pub write: bool,
    /// Executable (XN clear).
    pub exec: bool,
    /// Memory type.
    pub mem: MemType,
}

impl El2Attrs {
    /// The hyp's code: read-only, executable.
    pub const TEXT: El2Attrs = El2Attrs {
        write: false,
        exec: true,
        mem: MemType::NormalWriteBack,
    };
    /// The hyp's read-only data: read-only, execute-never.
    pub const RODATA: El2Attrs = El2Attrs {
        write: false,
        exec: false,
        mem: MemType::NormalWriteBack,
    };
    /// Everything else in RAM: read-write, execute-never.
    pub const DATA: El2Attrs = El2Attrs {
        write: true,
        exec: false,
        mem: MemType::NormalWriteBack,
    };
    /// The device window: device-nGnRE, read-write, execute-never.
    pub const DEVICE: El2Attrs = El2Attrs {
        write: true,
        exec: false,
        mem: MemType::DeviceNGnRE,
    };

    /// Descriptor bits of these attributes (without valid/table bits and address).
    pub const fn to_bits(self) -> u64 {
        let mut bits = AF | AP1_RES1;
        bits |= match self.mem {
            MemType::NormalWriteBack => ATTR_INDEX_NORMAL << ATTR_INDEX_SHIFT | SH_INNER,
            MemType::DeviceNGnRE => ATTR_INDEX_DEVICE << ATTR_INDEX_SHIFT,
        };
        if !self.write {
            bits |= AP_RO;
        }
        if !self.exec {
            bits |= XN;
        }
        bits
    }

    /// Decodes the attributes of a leaf descriptor (an AttrIndx other than
    /// [`ATTR_INDEX_NORMAL`] is reported as device).
    pub const fn from_desc(desc: u64) -> El2Attrs {
        let index = (desc & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT;
        El2Attrs {
            write: desc & AP_RO == 0,
            exec: desc & XN == 0,
            mem: if index == ATTR_INDEX_NORMAL {
                MemType::NormalWriteBack
            } else {
                MemType::DeviceNGnRE
            },
        }
    }
}

/// The EL2 stage-1 leaf format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct El2Format;

impl Format for El2Format {
    type Attrs = El2Attrs;

    #[inline]
    fn leaf_bits(attrs: El2Attrs) -> u64 {
        attrs.to_bits()
    }

    #[inline]
    fn attrs_of(desc: u64) -> El2Attrs {
        El2Attrs::from_desc(desc)
    }
}

/// The hyp's EL2 stage-1 tables (VMID 0: the regime has none; [`VA_SIZE`]).
pub type El2Map<M, T> = Tables<El2Format, M, T>;

/// The VA size of the EL2 map (TCR_EL2.T0SZ = 64 - 39 = 25).
pub const VA_SIZE: IpaSize = IpaSize::Bits39;

/// Where the hyp image's parts are (page-aligned, from the linker script).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// First byte of code.
    pub start: u64,
    /// End of code, start of read-only data.
    pub text_end: u64,
    /// End of read-only data, start of writable data.
    pub rodata_end: u64,
}

impl ImageLayout {
    /// Attributes of the RAM page at `pa` (W^X).
    pub const fn attrs(&self, pa: u64) -> El2Attrs {
        if self.start <= pa && pa < self.text_end {
            El2Attrs::TEXT
        } else if self.text_end <= pa && pa < self.rodata_end {
            El2Attrs::RODATA
        } else {
            El2Attrs::DATA
        }
    }

    /// Whether the 2 MiB range at `va` holds code or read-only data (it needs pages).
    const fn needs_pages(&self, va: u64) -> bool {
        va < self.rodata_end && va.saturating_add(SIZE_2M) > self.start
    }
}

/// Builds the EL2 identity map of `ram` and `devices` (`[start, end)`, each rounded out to
/// 2 MiB) with W^X for `image` (see the module docs). The tables are fresh: nothing is
/// invalidated, every write is published. Errors: [`MapError::NoMemory`] without table pages,
/// [`MapError::Invalid`] for an address beyond the 39-bit VA space.
pub fn build_identity_map<M: PhysMem, T: TlbMaintenance>(
    mm: M,
    tlb: T,
    ram: (u64, u64),
    devices: (u64, u64),
    image: &ImageLayout,
) -> Result<El2Map<M, T>, MapError> {
    let mut map = Tables::new(mm, tlb, 0, VA_SIZE).map_err(|(e, _, _)| e)?;
    let mut va = devices.0 & !(SIZE_2M - 1);
    while va < devices.1 {
        map.map(va, va, SIZE_2M, El2Attrs::DEVICE)?;
        va = va.checked_add(SIZE_2M).ok_or(MapError::Invalid)?;
    }
    let mut va = ram.0 & !(SIZE_2M - 1);
    while va < ram.1 {
        if image.needs_pages(va) {
            for i in 0..SIZE_2M / SIZE_4K {
                let pa = va + i * SIZE_4K;
                map.map(pa, pa, SIZE_4K, image.attrs(pa))?;
            }
        } else {
            map.map(va, va, SIZE_2M, El2Attrs::DATA)?;
        }
        va = va.checked_add(SIZE_2M).ok_or(MapError::Invalid)?;
    }
    Ok(map)
}
