//! Host tests of the hyp's EL2 stage-1 identity map, built by the same engine as every stage-2.
//!
//! Under Miri only the cheap ones run: the engine's unsafe code is the stage-2's, which Miri
//! covers, and `out_of_table_pages_and_out_of_range` builds EL2 tables under it too; the two
//! whole-map checks (format and layout: 600 maps, 1,700 walks) would take Miri over a minute.

use alloc::vec::Vec;

use crate::el2::*;
use crate::fake::{FakeArena, RecordingTlb, TlbEvent};
use crate::table::{Mapping, SIZE_2M, SIZE_4K};

const RAM: (u64, u64) = (0x4000_0000, 0x4800_0000);
const DEVICES: (u64, u64) = (0x0800_0000, 0x0a00_0000);
/// Code from 0x4020_0000, read-only data from 0x4023_4000, data from 0x4025_0000.
const IMAGE: ImageLayout = ImageLayout {
    start: 0x4020_0000,
    text_end: 0x4023_4000,
    rodata_end: 0x4025_0000,
};

type Map = El2Map<FakeArena, RecordingTlb>;

fn build(pages: usize, image: &ImageLayout) -> (FakeArena, Result<Map, MapError>) {
    let arena = FakeArena::new(pages);
    let map = build_identity_map(arena.clone(), RecordingTlb::new(), RAM, DEVICES, image);
    (arena, map)
}

/// The descriptor the hyp's former hand-written encoder (`hyp/src/arch/aarch64/mmu.rs`) wrote
/// for the leaf that maps `va`, from its constants: AttrIndx 0 device / 1 normal, SH inner for
/// normal, AP\[1\] RES1, AP\[2\] read-only, AF, XN bit 54; blocks `0b01`, pages `0b11`.
fn former_encoder(va: u64) -> Option<u64> {
    const AF: u64 = 1 << 10;
    const AP1: u64 = 1 << 6;
    const RO: u64 = 1 << 7;
    const XN: u64 = 1 << 54;
    const NORMAL: u64 = (1 << 2) | (3 << 8) | AP1;
    let block = va & !(SIZE_2M - 1);
    if (DEVICES.0..DEVICES.1).contains(&va) {
        return Some(block | AP1 | XN | AF | 0b01);
    }
    if !(RAM.0..RAM.1).contains(&va) {
        return None;
    }
    if block < IMAGE.rodata_end && block + SIZE_2M > IMAGE.start {
        let page = va & !(SIZE_4K - 1);
        let attrs = if (IMAGE.start..IMAGE.text_end).contains(&page) {
            NORMAL | RO
        } else if (IMAGE.text_end..IMAGE.rodata_end).contains(&page) {
            NORMAL | RO | XN
        } else {
            NORMAL | XN
        };
        return Some(page | attrs | AF | 0b11);
    }
    Some(block | NORMAL | XN | AF | 0b01)
}

#[test]
#[cfg_attr(miri, ignore)] // See the module docs.
fn the_map_matches_the_former_encoder_descriptor_for_descriptor() {
    let (_, map) = build(16, &IMAGE);
    let map = map.unwrap();
    let mut va = 0;
    while va < 0x5000_0000 {
        let got = map.walk(va).map(|m| {
            let level = m.level;
            map.descriptor(va, level).unwrap().1
        });
        assert_eq!(got, former_encoder(va), "at {va:#x}");
        va += if (0x4000_0000..0x4040_0000).contains(&va) {
            SIZE_4K
        } else {
            SIZE_2M
        };
    }
    // Fresh tables: every write is only published, nothing is ever invalidated.
    assert!(map.tlb().events.iter().all(|e| *e == TlbEvent::Publish));
    // Root, one level-2 table for the devices, one for RAM, one level-3 table for the image.
    assert_eq!(map.table_pages(), 4);
}

#[test]
#[cfg_attr(miri, ignore)] // See the module docs.
fn w_xor_x_and_nothing_else_mapped() {
    let (_, map) = build(16, &IMAGE);
    let map = map.unwrap();
    let ms: Vec<Mapping<El2Attrs>> = map.mappings().collect();
    let mut covered = 0;
    for m in &ms {
        assert!(
            !(m.attrs.write && m.attrs.exec),
            "{m:?} is writable and executable"
        );
        assert_eq!(m.ipa_base, m.pa_base, "not an identity mapping: {m:?}");
        let end = m.ipa_base + m.size;
        let in_devices = DEVICES.0 <= m.ipa_base && end <= DEVICES.1;
        let in_ram = RAM.0 <= m.ipa_base && end <= RAM.1;
        assert!(in_devices || in_ram, "{m:?} is outside RAM and the devices");
        assert_eq!(m.attrs.mem == MemType::DeviceNGnRE, in_devices, "{m:?}");
        if m.attrs.exec {
            assert!(IMAGE.start <= m.ipa_base && end <= IMAGE.text_end, "{m:?}");
        }
        if !m.attrs.write {
            assert!(
                IMAGE.start <= m.ipa_base && end <= IMAGE.rodata_end,
                "{m:?}"
            );
        }
        covered += m.size;
    }
    assert_eq!(covered, (DEVICES.1 - DEVICES.0) + (RAM.1 - RAM.0));
    let text = (IMAGE.text_end - IMAGE.start) / SIZE_4K;
    assert_eq!(
        ms.iter().filter(|m| m.attrs == El2Attrs::TEXT).count() as u64,
        text
    );
}

#[test]
fn attributes_round_trip() {
    for a in [
        El2Attrs::TEXT,
        El2Attrs::RODATA,
        El2Attrs::DATA,
        El2Attrs::DEVICE,
    ] {
        assert_eq!(El2Attrs::from_desc(a.to_bits() | 0x4020_0003), a);
    }
    assert_eq!(El2Attrs::TEXT.to_bits(), 0x7c4);
    assert_eq!(El2Attrs::DEVICE.to_bits(), 0x0040_0000_0000_0440);
}

#[test]
fn out_of_table_pages_and_out_of_range() {
    // Root, two level-2 tables, the level-3 table: three pages are not enough.
    for pages in 0..4 {
        let (_, map) = build(pages, &IMAGE);
        assert_eq!(map.unwrap_err(), MapError::NoMemory);
    }
    let arena = FakeArena::new(8);
    let beyond = (1 << 39) - SIZE_2M;
    let map = build_identity_map(
        arena,
        RecordingTlb::new(),
        (beyond, 1 << 40),
        DEVICES,
        &IMAGE,
    );
    assert_eq!(map.unwrap_err(), MapError::Invalid);
}
