//! Host tests of the stage-2 tables against the fake arena and the model TLB.

use alloc::vec::Vec;

use crate::fake::{FakeArena, RecordingTlb, TlbEvent, FAKE_BASE};
use crate::stage2::*;

type S2 = Stage2<FakeArena, RecordingTlb>;

const VMID: u16 = 5;

fn setup_with(ipa: IpaSize, pages: usize) -> (FakeArena, S2) {
    let (arena, mut s2) = setup_without_model(ipa, pages);
    // The model walks every table at every TLB call: too slow under Miri, which is here for
    // undefined behaviour, not for break-before-make.
    if !cfg!(miri) {
        attach_model(&arena, &mut s2);
    }
    (arena, s2)
}

fn setup_without_model(ipa: IpaSize, pages: usize) -> (FakeArena, S2) {
    let arena = FakeArena::new(pages);
    let s2 = Stage2::new(arena.clone(), RecordingTlb::new(), VMID, ipa).unwrap();
    (arena, s2)
}

fn attach_model(arena: &FakeArena, s2: &mut S2) {
    let root = s2.root_pa();
    let entries = s2.ipa_size().root_pages() * ENTRIES;
    s2.tlb_mut().attach_model(arena.clone(), root, entries);
}

fn setup() -> (FakeArena, S2) {
    setup_with(IpaSize::Bits40, 32)
}

fn leaves(s2: &S2) -> Vec<Mapping> {
    s2.mappings().collect()
}

/// Asserts that the TLB model saw no break-before-make violation.
fn assert_bbm(s2: &S2) {
    assert!(s2.tlb().violations.is_empty(), "{:#?}", s2.tlb().violations);
}

/// Runs `f`, expecting `err`, and asserts that the tables, the TLB and the arena did not change.
fn assert_unchanged_err<R: core::fmt::Debug>(
    arena: &FakeArena,
    s2: &mut S2,
    err: MapError,
    f: impl FnOnce(&mut S2) -> Result<R, MapError>,
) {
    let before = leaves(s2);
    let live = arena.live_pages();
    let events = s2.tlb().events.len();
    assert_eq!(f(s2).unwrap_err(), err);
    assert_eq!(leaves(s2), before);
    assert_eq!(arena.live_pages(), live);
    assert_eq!(s2.tlb().events.len(), events, "TLB touched on error");
}

const RWX: S2Attrs = S2Attrs::NORMAL_RWX;
/// AF | SH inner | MemAttr 0b1111 | S2AP RW.
const NORMAL_RWX_BITS: u64 = 0x400 | 0x300 | (0xf << 2) | 0xc0;

#[test]
fn registers() {
    let (arena, s2) = setup();
    let root = s2.root_pa();
    assert_eq!(root % 8192, 0);
    assert_eq!(arena.live_pages(), 2);
    assert_eq!(s2.vttbr(), root | 5 << 48);
    assert_eq!(s2.vtcr(), 0x8002_3558);
    assert_eq!(vtcr_value(IpaSize::Bits39, false), 0x8002_3559);
    assert_eq!(vtcr_value(IpaSize::Bits40, true), 0x8002_3558 | 1 << 19);
    let (arena39, s39) = setup_with(IpaSize::Bits39, 4);
    assert_eq!(arena39.live_pages(), 1);
    assert_eq!(s39.vtcr() & 0x3f, 25);
    assert_eq!(s39.table_pages(), 1);
}

#[test]
fn new_out_of_memory_hands_back_everything() {
    let arena = FakeArena::new(4);
    arena.set_alloc_budget(Some(0));
    let (e, _, _) =
        Stage2::new(arena.clone(), RecordingTlb::new(), 1, IpaSize::Bits40).unwrap_err();
    assert_eq!(e, MapError::NoMemory);
    // One free page only: no 8 KiB run.
    let arena = FakeArena::new(1);
    let (e, _, _) =
        Stage2::new(arena.clone(), RecordingTlb::new(), 1, IpaSize::Bits40).unwrap_err();
    assert_eq!(e, MapError::NoMemory);
    assert_eq!(arena.live_pages(), 0);
}

#[test]
fn concatenated_root_is_8k_aligned_even_after_a_single_page() {
    let mut arena = FakeArena::new(8);
    let one = arena.alloc_pages(1).unwrap();
    assert_eq!(one, FAKE_BASE);
    let s2 = Stage2::new(arena.clone(), RecordingTlb::new(), 1, IpaSize::Bits40).unwrap();
    assert_eq!(s2.root_pa() % 8192, 0);
    assert_ne!(s2.root_pa(), one);
}

#[test]
fn map_page_writes_exact_descriptors() {
    let (arena, mut s2) = setup();
    s2.map(0x1000, 0x8000_0000, SIZE_4K, RWX).unwrap();
    let (slot, desc) = s2.descriptor(0x1000, 3).unwrap();
    assert_eq!(desc, 0x8000_0000 | NORMAL_RWX_BITS | 0b11);
    assert_eq!(desc, 0x8000_07ff);
    assert_eq!(arena.read_u64(slot), Some(desc));
    // Level-1 and level-2 entries are table descriptors.
    let (_, l1) = s2.descriptor(0x1000, 1).unwrap();
    assert_eq!(l1 & 0b11, 0b11);
    let (_, l2) = s2.descriptor(0x1000, 2).unwrap();
    assert_eq!(l2 & 0b11, 0b11);
    assert_eq!(arena.live_pages(), 4);
    assert_eq!(s2.table_pages(), 4);
    assert_eq!(
        s2.walk(0x1abc),
        Some(Mapping {
            ipa_base: 0x1000,
            pa_base: 0x8000_0000,
            size: SIZE_4K,
            level: 3,
            attrs: RWX
        })
    );
    assert_eq!(s2.walk(0x2000), None);
    // The branch is published before it is linked and after.
    assert_eq!(s2.tlb().events, [TlbEvent::Publish, TlbEvent::Publish]);
    assert_bbm(&s2);
}

#[test]
fn map_device_and_read_only() {
    let (_, mut s2) = setup();
    s2.map(0x0900_0000, 0x0900_0000, SIZE_4K, S2Attrs::DEVICE_RW)
        .unwrap();
    let (_, desc) = s2.descriptor(0x0900_0000, 3).unwrap();
    assert_eq!(desc, 0x0040_0000_0900_07c7);
    let attrs = S2Attrs {
        read: true,
        write: false,
        exec: true,
        mem: MemType::NormalWriteBack,
    };
    s2.map(0x2000, 0x3000, SIZE_4K, attrs).unwrap();
    let (_, desc) = s2.descriptor(0x2000, 3).unwrap();
    assert_eq!(desc, 0x3000 | 0x400 | 0x300 | 0x3c | 0x40 | 0b11);
    assert_eq!(s2.walk(0x2000).unwrap().attrs, attrs);
}

#[test]
fn map_blocks() {
    let (arena, mut s2) = setup();
    s2.map(0x20_0000, 0x8020_0000, SIZE_2M, RWX).unwrap();
    let (_, desc) = s2.descriptor(0x20_0000, 2).unwrap();
    assert_eq!(desc, 0x8020_0000 | NORMAL_RWX_BITS | 0b01);
    assert_eq!(
        s2.walk(0x3f_f000).unwrap().pa_of(0x3f_f123),
        Some(0x803f_f123)
    );
    assert_eq!(s2.walk(0x3f_f000).unwrap().pa_of(0x40_0000), None);
    assert_eq!(s2.walk(0x3f_f000).unwrap().pa_of(0), None);
    s2.map(0x80_4000_0000, 0xc000_0000, SIZE_1G, RWX).unwrap();
    let (slot, desc) = s2.descriptor(0x80_4000_0000, 1).unwrap();
    assert_eq!(desc, 0xc000_0000 | NORMAL_RWX_BITS | 0b01);
    // IPA bit 39 selects the second page of the concatenated root: index 513.
    assert_eq!(slot, s2.root_pa() + 513 * 8);
    assert_eq!(arena.live_pages(), 3);
    let m = s2.walk(0x80_7fff_ffff).unwrap();
    assert_eq!(
        (m.ipa_base, m.pa_base, m.size, m.level),
        (0x80_4000_0000, 0xc000_0000, SIZE_1G, 1)
    );
    assert_bbm(&s2);
}

#[test]
fn map_rejects_bad_arguments() {
    let (arena, mut s2) = setup();
    for (ipa, pa, size) in [
        (0, 0, 0x2000),          // not a leaf size
        (0x800, 0, SIZE_4K),     // unaligned IPA
        (0, 0x10_0000, SIZE_2M), // unaligned PA
        (1 << 40, 0, SIZE_4K),   // beyond the IPA space
        (!0xfffu64, 0, SIZE_4K),
        (0, 1 << 40, SIZE_4K), // beyond the PA space
        (0, (1 << 40) - SIZE_2M, SIZE_1G),
    ] {
        assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| {
            s.map(ipa, pa, size, RWX)
        });
    }
    let (_, mut s39) = setup_with(IpaSize::Bits39, 8);
    assert_eq!(s39.map(1 << 39, 0, SIZE_4K, RWX), Err(MapError::Invalid));
    s39.map((1 << 39) - SIZE_1G, 0, SIZE_1G, RWX).unwrap();
}

#[test]
fn map_conflicts() {
    let (arena, mut s2) = setup();
    s2.map(0x1000, 0x5000, SIZE_4K, RWX).unwrap();
    s2.map(0x20_0000, 0x40_0000, SIZE_2M, RWX).unwrap();
    // Same mapping again: success, nothing written.
    let events = s2.tlb().events.len();
    s2.map(0x1000, 0x5000, SIZE_4K, RWX).unwrap();
    s2.map(0x20_0000, 0x40_0000, SIZE_2M, RWX).unwrap();
    // A page inside an identical block.
    s2.map(0x20_3000, 0x40_3000, SIZE_4K, RWX).unwrap();
    assert_eq!(s2.tlb().events.len(), events);
    // Different PA, different attributes, page inside a different block, block over a page.
    assert_unchanged_err(&arena, &mut s2, MapError::Exists, |s| {
        s.map(0x1000, 0x6000, SIZE_4K, RWX)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Exists, |s| {
        s.map(0x1000, 0x5000, SIZE_4K, S2Attrs::NORMAL_RW)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Exists, |s| {
        s.map(0x20_3000, 0x9000, SIZE_4K, RWX)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Exists, |s| {
        s.map(0, 0, SIZE_2M, RWX)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Exists, |s| {
        s.map(0, 0, SIZE_1G, RWX)
    });
    assert_bbm(&s2);
}

#[test]
fn map_out_of_table_pages_changes_nothing() {
    let (arena, mut s2) = setup();
    for budget in [0, 1] {
        arena.set_alloc_budget(Some(budget));
        assert_unchanged_err(&arena, &mut s2, MapError::NoMemory, |s| {
            s.map(0x1000, 0x1000, SIZE_4K, RWX)
        });
    }
    arena.set_alloc_budget(Some(2));
    s2.map(0x1000, 0x1000, SIZE_4K, RWX).unwrap();
    // The next page of the same table needs nothing.
    arena.set_alloc_budget(Some(0));
    s2.map(0x2000, 0x2000, SIZE_4K, RWX).unwrap();
    s2.map(0x4000_0000, 0x4000_0000, SIZE_1G, RWX).unwrap();
    assert_unchanged_err(&arena, &mut s2, MapError::NoMemory, |s| {
        s.map(0x20_0000, 0, SIZE_4K, RWX)
    });
}

#[test]
fn block_replaces_an_empty_table() {
    let (arena, mut s2) = setup();
    s2.map(0x1000, 0x1000, SIZE_4K, RWX).unwrap();
    s2.unmap(0x1000, SIZE_4K).unwrap();
    // The level-3 table stays (its span was not fully unmapped) but is empty.
    assert_eq!(arena.live_pages(), 4);
    s2.tlb_mut().clear();
    s2.map(0, 0x8000_0000, SIZE_2M, RWX).unwrap();
    assert_eq!(arena.live_pages(), 3);
    assert_eq!(
        s2.tlb().events,
        [
            TlbEvent::InvalidateIpa {
                vmid: VMID,
                ipa: 0,
                leaf_level: None
            },
            TlbEvent::Publish
        ]
    );
    // And a 1 GiB block over the now block-free level-2 table? It holds a block: EEXIST.
    assert_eq!(s2.map(0, 0, SIZE_1G, RWX), Err(MapError::Exists));
    s2.unmap(0, SIZE_2M).unwrap();
    s2.tlb_mut().clear();
    s2.map(0, 0x4000_0000, SIZE_1G, RWX).unwrap();
    assert_eq!(arena.live_pages(), 2);
    assert_eq!(
        s2.tlb().events,
        [
            TlbEvent::InvalidateRange {
                vmid: VMID,
                ipa: 0,
                size: SIZE_1G
            },
            TlbEvent::Publish
        ]
    );
    assert_bbm(&s2);
}

#[test]
fn split_2m_block_into_pages_with_bbm() {
    let (arena, mut s2) = setup();
    let attrs = S2Attrs {
        write: false,
        ..RWX
    };
    s2.map(0x20_0000, 0x8060_0000, SIZE_2M, attrs).unwrap();
    s2.tlb_mut().clear();
    s2.split_block(0x20_5000).unwrap();
    assert_eq!(
        s2.tlb().events,
        [
            TlbEvent::InvalidateIpa {
                vmid: VMID,
                ipa: 0x20_0000,
                leaf_level: Some(2)
            },
            TlbEvent::Publish
        ]
    );
    let ms: Vec<Mapping> = s2.mappings().collect();
    assert_eq!(ms.len(), 512);
    for (i, m) in ms.iter().enumerate() {
        let off = i as u64 * SIZE_4K;
        assert_eq!(
            *m,
            Mapping {
                ipa_base: 0x20_0000 + off,
                pa_base: 0x8060_0000 + off,
                size: SIZE_4K,
                level: 3,
                attrs
            }
        );
    }
    let (_, l2) = s2.descriptor(0x20_0000, 2).unwrap();
    assert_eq!(l2 & 0b11, 0b11);
    assert_eq!(arena.live_pages(), 4);
    assert_bbm(&s2);
    // Splitting a page, or nothing.
    assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| {
        s.split_block(0x20_5000)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::NotMapped, |s| {
        s.split_block(0x60_0000)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| {
        s.split_block(1 << 40)
    });
}

#[test]
fn split_1g_block_and_out_of_memory() {
    let (arena, mut s2) = setup();
    s2.map(SIZE_1G, 0, SIZE_1G, RWX).unwrap();
    arena.set_alloc_budget(Some(0));
    assert_unchanged_err(&arena, &mut s2, MapError::NoMemory, |s| {
        s.split_block(SIZE_1G + 0x1234_5000)
    });
    arena.set_alloc_budget(None);
    s2.split_block(SIZE_1G + 0x1234_5000).unwrap();
    let ms: Vec<Mapping> = s2.mappings().collect();
    assert_eq!(ms.len(), 512);
    assert!(ms
        .iter()
        .enumerate()
        .all(|(i, m)| m.level == 2 && m.pa_base == i as u64 * SIZE_2M));
    assert_bbm(&s2);
}

#[test]
fn merge_restores_the_block_and_frees_the_table() {
    let (arena, mut s2) = setup();
    s2.map(0x20_0000, 0x8060_0000, SIZE_2M, RWX).unwrap();
    let block = s2.descriptor(0x20_0000, 2).unwrap().1;
    s2.split_block(0x20_0000).unwrap();
    let live = arena.live_pages();
    s2.tlb_mut().clear();
    assert_eq!(s2.try_merge_block(0x20_0000), Ok(true));
    assert_eq!(
        s2.tlb().events,
        [
            TlbEvent::InvalidateRange {
                vmid: VMID,
                ipa: 0x20_0000,
                size: SIZE_2M
            },
            TlbEvent::Publish
        ]
    );
    assert_eq!(s2.descriptor(0x20_0000, 2).unwrap().1, block);
    assert_eq!(arena.live_pages(), live - 1);
    // Already a block; nothing there; unaligned; out of range.
    assert_eq!(s2.try_merge_block(0x20_0000), Ok(false));
    assert_eq!(s2.try_merge_block(0x40_0000), Ok(false));
    assert_eq!(s2.try_merge_block(0x20_1000), Err(MapError::Invalid));
    assert_eq!(s2.try_merge_block(1 << 40), Err(MapError::Invalid));
    assert_bbm(&s2);
}

#[test]
fn merge_refuses_nonuniform_tables() {
    let (arena, mut s2) = setup();
    // One page missing.
    for i in 0..511u64 {
        s2.map(i * SIZE_4K, 0x8000_0000 + i * SIZE_4K, SIZE_4K, RWX)
            .unwrap();
    }
    let check_no = |s2: &mut S2| {
        let before = leaves(s2);
        assert_eq!(s2.try_merge_block(0), Ok(false));
        assert_eq!(leaves(s2), before);
    };
    check_no(&mut s2);
    // Last page with different attributes.
    s2.map(
        511 * SIZE_4K,
        0x8000_0000 + 511 * SIZE_4K,
        SIZE_4K,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    check_no(&mut s2);
    // Last page not contiguous.
    s2.unmap(511 * SIZE_4K, SIZE_4K).unwrap();
    s2.map(511 * SIZE_4K, 0x9000_0000, SIZE_4K, RWX).unwrap();
    check_no(&mut s2);
    // Contiguous but not 2 MiB aligned in PA.
    s2.unmap(0, SIZE_2M).unwrap();
    for i in 0..512u64 {
        s2.map(i * SIZE_4K, 0x8000_1000 + i * SIZE_4K, SIZE_4K, RWX)
            .unwrap();
    }
    check_no(&mut s2);
    // Fixed: all 512 in order.
    s2.unmap(0, SIZE_2M).unwrap();
    for i in 0..512u64 {
        s2.map(i * SIZE_4K, 0x8000_0000 + i * SIZE_4K, SIZE_4K, RWX)
            .unwrap();
    }
    assert_eq!(s2.try_merge_block(0), Ok(true));
    assert_eq!(s2.walk(0x1f_f000).unwrap().level, 2);
    assert_eq!(arena.live_pages(), 3);
    assert_bbm(&s2);
}

#[test]
fn unmap_a_page_inside_a_block_removes_the_block() {
    let (arena, mut s2) = setup();
    s2.map(0x20_0000, 0x8020_0000, SIZE_2M, RWX).unwrap();
    s2.tlb_mut().clear();
    // No memory needed: the block goes whole (break-before-make), nothing is split.
    arena.set_alloc_budget(Some(0));
    s2.unmap(0x20_3000, SIZE_4K).unwrap();
    arena.set_alloc_budget(None);
    assert_eq!(
        s2.tlb().events,
        [TlbEvent::InvalidateIpa {
            vmid: VMID,
            ipa: 0x20_0000,
            leaf_level: Some(2)
        }]
    );
    assert_eq!(s2.walk(0x20_3000), None);
    assert_eq!(s2.walk(0x20_0000), None);
    assert_eq!(s2.mappings().count(), 0);
    // The other pages are mapped again one by one, then merge back.
    for i in 0..512u64 {
        s2.map(
            0x20_0000 + i * SIZE_4K,
            0x8020_0000 + i * SIZE_4K,
            SIZE_4K,
            RWX,
        )
        .unwrap();
    }
    assert_eq!(s2.try_merge_block(0x20_0000), Ok(true));
    assert_bbm(&s2);
}

#[test]
fn a_block_maps_over_the_pages_of_it_already_there() {
    let (arena, mut s2) = setup();
    for i in [0u64, 7, 511] {
        s2.map(i * SIZE_4K, 0x8000_0000 + i * SIZE_4K, SIZE_4K, RWX)
            .unwrap();
    }
    // A page elsewhere in the table, or other attributes: refused, nothing changed.
    s2.map(9 * SIZE_4K, 0x9000_0000, SIZE_4K, RWX).unwrap();
    let before = leaves(&s2);
    assert_eq!(s2.map_block_over_pages(0, 0x8000_0000, RWX), Ok(false));
    s2.unmap(9 * SIZE_4K, SIZE_4K).unwrap();
    assert_eq!(
        s2.map_block_over_pages(0, 0x8000_0000, S2Attrs::NORMAL_RW),
        Ok(false)
    );
    assert_ne!(leaves(&s2), before);
    assert_eq!(
        s2.map_block_over_pages(0x1000, 0x8000_0000, RWX),
        Err(MapError::Invalid)
    );
    // The pages fit the block: the table goes, the block comes, no memory needed.
    arena.set_alloc_budget(Some(0));
    assert_eq!(s2.map_block_over_pages(0, 0x8000_0000, RWX), Ok(true));
    arena.set_alloc_budget(None);
    let m = s2.walk(0x1f_f000).unwrap();
    assert_eq!((m.level, m.pa_base), (2, 0x8000_0000));
    // Nothing there to map over: not this call's business.
    assert_eq!(
        s2.map_block_over_pages(SIZE_2M, 0x8020_0000, RWX),
        Ok(false)
    );
    assert_bbm(&s2);
}

#[test]
fn unmap_inside_a_1g_block_removes_it_without_memory() {
    let (arena, mut s2) = setup();
    s2.map(0, 0x4000_0000, SIZE_1G, RWX).unwrap();
    s2.map(SIZE_1G, 0x8000_0000, SIZE_4K, RWX).unwrap();
    arena.set_alloc_budget(Some(0));
    s2.unmap(0x1234_5000, SIZE_4K).unwrap();
    arena.set_alloc_budget(None);
    assert_eq!(s2.walk(0x1234_5000), None);
    assert_eq!(s2.walk(0x1234_4000), None);
    assert_eq!(s2.walk(0x3fff_f000), None);
    // Outside the block nothing moved.
    assert_eq!(s2.walk(SIZE_1G).unwrap().pa_base, 0x8000_0000);
    assert_eq!(s2.mappings().count(), 1);
    assert_bbm(&s2);
}

#[test]
fn unmap_range_across_blocks_and_edges() {
    let (arena, mut s2) = setup();
    // Two 2 MiB blocks and a page after them; unmap from the middle of the first block to the
    // middle of the second: both blocks go whole, without memory; the page stays.
    s2.map(0, 0x8000_0000, SIZE_2M, RWX).unwrap();
    s2.map(SIZE_2M, 0x8020_0000, SIZE_2M, RWX).unwrap();
    s2.map(2 * SIZE_2M, 0x9000_0000, SIZE_4K, RWX).unwrap();
    arena.set_alloc_budget(Some(0));
    s2.unmap(0x10_0000, SIZE_2M).unwrap();
    arena.set_alloc_budget(None);
    assert_eq!(s2.walk(0xf_f000), None);
    assert_eq!(s2.walk(0x30_0000), None);
    assert_eq!(s2.walk(2 * SIZE_2M).unwrap().pa_base, 0x9000_0000);
    assert_eq!(s2.mappings().count(), 1);
    // Holes are left alone; unmapping everything frees the tables.
    s2.unmap(0, 4 * SIZE_2M).unwrap();
    assert_eq!(leaves(&s2), []);
    // The page's level-3 table went with it (its whole span was unmapped).
    assert_eq!(arena.live_pages(), 3);
    s2.unmap(0, SIZE_1G).unwrap();
    assert_eq!(arena.live_pages(), 2);
    assert_eq!(s2.table_pages(), 2);
    assert_bbm(&s2);
}

#[test]
fn unmap_clamped_rounds_out_clamps_and_never_needs_memory() {
    let (arena, mut s2) = setup();
    s2.map(0, 0x8000_0000, SIZE_2M, RWX).unwrap();
    s2.map((1 << 40) - SIZE_4K, 0x9000_0000, SIZE_4K, RWX)
        .unwrap();
    arena.set_alloc_budget(Some(0));
    // An unaligned byte range inside the block takes the block.
    s2.unmap_clamped(0x1234, 1);
    assert_eq!(s2.walk(0), None);
    // A range running past the IPA space takes what lies inside it.
    s2.unmap_clamped((1 << 40) - SIZE_4K, u64::MAX);
    assert_eq!(s2.walk((1 << 40) - SIZE_4K), None);
    // Nothing at all inside: nothing happens.
    s2.unmap_clamped(u64::MAX - 10, 100);
    s2.unmap_clamped(0, 0);
    arena.set_alloc_budget(None);
    assert_eq!(s2.mappings().count(), 0);
    assert_bbm(&s2);
}

#[test]
fn unmap_rejects_bad_ranges() {
    let (arena, mut s2) = setup();
    for (ipa, size) in [
        (0x800, SIZE_4K),
        (0, 0),
        (0, 0x800),
        ((1 << 40) - SIZE_4K, 2 * SIZE_4K),
        (!0xfffu64, SIZE_4K),
    ] {
        assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| s.unmap(ipa, size));
    }
    // Unmapping a hole is fine.
    s2.unmap(0, SIZE_4K).unwrap();
    assert!(s2.tlb().events.is_empty());
}

#[test]
fn set_attrs_splits_only_what_changes() {
    let (arena, mut s2) = setup();
    s2.map(0x20_0000, 0x8020_0000, SIZE_2M, RWX).unwrap();
    // Same attributes: nothing happens, even on a partial range.
    s2.tlb_mut().clear();
    s2.set_attrs(0x20_1000, SIZE_4K, RWX).unwrap();
    assert!(s2.tlb().events.is_empty());
    let ro = S2Attrs {
        write: false,
        ..RWX
    };
    s2.set_attrs(0x20_1000, SIZE_4K, ro).unwrap();
    assert_eq!(s2.walk(0x20_1000).unwrap().attrs, ro);
    assert_eq!(s2.walk(0x20_2000).unwrap().attrs, RWX);
    assert_eq!(s2.walk(0x20_1000).unwrap().pa_base, 0x8020_1000);
    // A hole in the range: ENOENT, nothing changed.
    assert_unchanged_err(&arena, &mut s2, MapError::NotMapped, |s| {
        s.set_attrs(0x3f_f000, 2 * SIZE_4K, ro)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| {
        s.set_attrs(0x20_0800, SIZE_4K, ro)
    });
    // Whole range: every page goes through break-before-make.
    s2.set_attrs(0x20_0000, SIZE_2M, ro).unwrap();
    assert_eq!(s2.try_merge_block(0x20_0000), Ok(true));
    assert_eq!(s2.walk(0x20_0000).unwrap().attrs, ro);
    assert_bbm(&s2);
}

#[test]
fn mappings_in_ipa_order() {
    let (_, mut s2) = setup();
    s2.map(0x80_0000_0000, 0, SIZE_1G, RWX).unwrap();
    s2.map(0x20_0000, 0x20_0000, SIZE_2M, RWX).unwrap();
    s2.map(0x2000, 0x5000, SIZE_4K, RWX).unwrap();
    let ls = leaves(&s2);
    assert_eq!(ls.len(), 3);
    assert!(matches!(
        ls[0],
        Mapping {
            ipa_base: 0x2000,
            pa_base: 0x5000,
            ..
        }
    ));
    assert!(matches!(
        ls[1],
        Mapping {
            ipa_base: 0x20_0000,
            level: 2,
            ..
        }
    ));
    assert!(matches!(
        ls[2],
        Mapping {
            ipa_base: 0x80_0000_0000,
            level: 1,
            ..
        }
    ));
}

const RAM_LO: u64 = 0x4000_0000;
const RAM_HI: u64 = 0xc000_0000;

#[test]
fn identity_map_picks_the_largest_block() {
    let (_, mut s2) = setup();
    let mut asked = Vec::new();
    let m = s2
        .map_identity_largest(0x5234_5000, RAM_LO, RAM_HI, RWX, &mut |lo, hi| {
            asked.push((lo, hi));
            true
        })
        .unwrap();
    assert_eq!(
        m,
        Mapping {
            ipa_base: 0x4000_0000,
            pa_base: 0x4000_0000,
            size: SIZE_1G,
            level: 1,
            attrs: RWX
        }
    );
    assert_eq!(asked, [(0x4000_0000, 0x8000_0000)]);
    // Already mapped: the existing mapping comes back, nothing is asked.
    let again = s2
        .map_identity_largest(0x4000_0000, RAM_LO, RAM_HI, RWX, &mut |_, _| unreachable!())
        .unwrap();
    assert_eq!(again, m);
    assert_bbm(&s2);
}

#[test]
fn identity_map_respects_policy_range_and_what_is_there() {
    let (arena, mut s2) = setup();
    // Only 2 MiB allowed.
    let m = s2
        .map_identity_largest(0x8123_4000, RAM_LO, RAM_HI, RWX, &mut |lo, hi| {
            hi - lo <= SIZE_2M
        })
        .unwrap();
    assert_eq!((m.ipa_base, m.size), (0x8120_0000, SIZE_2M));
    // A page mapped in the 2 MiB around: 4 KiB.
    s2.map(0x9000_0000, 0x9000_0000, SIZE_4K, RWX).unwrap();
    let m = s2
        .map_identity_largest(0x9000_1000, RAM_LO, RAM_HI, RWX, &mut |_, _| true)
        .unwrap();
    assert_eq!(
        (m.ipa_base, m.pa_base, m.size),
        (0x9000_1000, 0x9000_1000, SIZE_4K)
    );
    // A narrow range forces 4 KiB; outside it, EPERM; policy says no: EPERM.
    let m = s2
        .map_identity_largest(0xa000_3000, 0xa000_0000, 0xa010_0000, RWX, &mut |_, _| true)
        .unwrap();
    assert_eq!(m.size, SIZE_4K);
    assert_unchanged_err(&arena, &mut s2, MapError::Refused, |s| {
        s.map_identity_largest(0xa010_0000, 0xa000_0000, 0xa010_0000, RWX, &mut |_, _| true)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Refused, |s| {
        s.map_identity_largest(0xb000_0000, RAM_LO, RAM_HI, RWX, &mut |_, _| false)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| {
        s.map_identity_largest(0xb000_0000, RAM_HI, RAM_LO, RWX, &mut |_, _| true)
    });
    assert_unchanged_err(&arena, &mut s2, MapError::Invalid, |s| {
        s.map_identity_largest(1 << 40, 0, u64::MAX, RWX, &mut |_, _| true)
    });
    arena.set_alloc_budget(Some(0));
    assert_unchanged_err(&arena, &mut s2, MapError::NoMemory, |s| {
        s.map_identity_largest(0xb000_0000, RAM_LO, RAM_HI, RWX, &mut |lo, hi| {
            hi - lo == SIZE_4K
        })
    });
    arena.set_alloc_budget(None);
    assert_bbm(&s2);
}

#[test]
fn identity_map_reuses_an_emptied_table() {
    let (arena, mut s2) = setup();
    s2.map(0x4000_0000, 0x4000_0000, SIZE_4K, RWX).unwrap();
    s2.unmap(0x4000_0000, SIZE_4K).unwrap();
    let live = arena.live_pages();
    let m = s2
        .map_identity_largest(0x4000_0000, RAM_LO, RAM_HI, RWX, &mut |_, _| true)
        .unwrap();
    assert_eq!(m.size, SIZE_1G);
    assert_eq!(arena.live_pages(), live - 2);
    assert_bbm(&s2);
}

#[test]
fn destroy_frees_everything() {
    let (arena, mut s2) = setup();
    s2.map(0x1000, 0x1000, SIZE_4K, RWX).unwrap();
    s2.map(0x80_0020_0000, 0x20_0000, SIZE_2M, RWX).unwrap();
    assert_eq!(arena.live_pages(), 2 + 2 + 1);
    assert_eq!(s2.table_pages(), arena.live_pages());
    let (arena2, tlb) = s2.destroy();
    assert_eq!(
        tlb.events.last(),
        Some(&TlbEvent::InvalidateVmid { vmid: VMID })
    );
    assert!(tlb.violations.is_empty());
    assert_eq!(arena2.live_pages(), 0);
}

#[test]
fn the_tlb_model_catches_a_missing_break_before_make() {
    let (arena, mut s2) = setup_without_model(IpaSize::Bits39, 8);
    attach_model(&arena, &mut s2);
    s2.map(0x1000, 0x5000, SIZE_4K, RWX).unwrap();
    let (slot, desc) = s2.descriptor(0x1000, 3).unwrap();
    // Change the output address in place, without break-before-make.
    arena.write_u64(slot, desc ^ 0x1000);
    s2.tlb_mut().publish();
    assert_eq!(s2.tlb().violations.len(), 1);
    // Break without invalidation, then make: also caught.
    let (arena, mut s2) = setup_without_model(IpaSize::Bits39, 8);
    attach_model(&arena, &mut s2);
    s2.map(0x1000, 0x5000, SIZE_4K, RWX).unwrap();
    let (slot, desc) = s2.descriptor(0x1000, 3).unwrap();
    arena.write_u64(slot, 0);
    s2.tlb_mut().publish();
    arena.write_u64(slot, desc ^ 0x1000);
    s2.tlb_mut().publish();
    assert_eq!(s2.tlb().violations.len(), 1);
}

#[test]
fn errors_become_errno_at_the_abi_edge() {
    use abi::Errno;
    assert_eq!(Errno::from(MapError::Invalid), Errno::EINVAL);
    assert_eq!(Errno::from(MapError::Exists), Errno::EEXIST);
    assert_eq!(Errno::from(MapError::NotMapped), Errno::ENOENT);
    assert_eq!(Errno::from(MapError::NoMemory), Errno::ENOMEM);
    assert_eq!(Errno::from(MapError::Refused), Errno::EPERM);
}
