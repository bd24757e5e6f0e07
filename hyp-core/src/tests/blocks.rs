//! 2 MiB blocks: faults served as blocks, per-page changes inside a block, `block_mergeable`,
//! the fallbacks to 4 KiB, and the run-length page map against a per-page model.

use super::*;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use proptest::prelude::*;

const P: u64 = PAGE_SIZE;
const B: u64 = BLOCK_SIZE;
/// 2 MiB aligned.
const ARENA: u64 = 0x4000_0000;

/// One VM of the configuration of `row`, a gmem of `gmem_size` bytes, one memslot of
/// `slot_size` bytes at `gpa` binding the file from `offset`, and a block-capable arena of
/// 8 MiB.
struct BRig {
    w: World,
    a: FakeArena,
    vm: VmHandle,
    g: GmemHandle,
    gpa: u64,
}

impl BRig {
    fn new(row: Row, gmem_size: u64, gpa: u64, slot_size: u64, offset: u64) -> BRig {
        let c = config(row);
        let mut w = World::new();
        let vm = w.create_vm(c.vm_type, IPA_BITS).unwrap();
        let g = w.create_gmem(vm, gmem_size, c.gflags.bits()).unwrap();
        w.create_memslot(
            vm,
            &MemslotSpec {
                gpa,
                size: slot_size,
                gmem: Some(GmemBinding { gmem: g, offset }),
                userspace_addr: c.uaddr,
                flags: c.sflags.bits(),
            },
        )
        .unwrap();
        BRig {
            w,
            a: FakeArena::new(ARENA, 2048),
            vm,
            g,
            gpa,
        }
    }

    /// pKVM row, 4 MiB file and slot at `GPA` (2 MiB aligned).
    fn pkvm() -> BRig {
        BRig::new(Row::Pkvm, 2 * B, GPA, 2 * B, 0)
    }

    fn fault_ipa(&mut self, ipa: u64) -> FaultResolution {
        self.w
            .resolve_fault(self.vm, ipa, Access::Write, &mut self.a)
            .unwrap()
    }

    fn fault(&mut self, page: u64) -> FaultResolution {
        self.fault_ipa(self.gpa + page * P)
    }

    /// `(ipa, pa, size)` of a `Map`, else panics.
    fn map(&mut self, page: u64) -> (u64, u64, u64) {
        match self.fault(page) {
            FaultResolution::Map { ipa, pa, size, .. } => (ipa, pa, size),
            other => panic!("page {page}: {other:?}"),
        }
    }

    fn convert(&mut self, page: u64, pages: u64, to: ConvertTo) -> Invalidation {
        self.w
            .convert(
                self.g,
                &ConvertRequest {
                    offset: page * P,
                    size: pages * P,
                    to,
                    mode: ContentMode::Preserve,
                    initiator: Initiator::Guest,
                },
                &mut self.a,
            )
            .unwrap()
    }

    fn mergeable(&self, page: u64) -> Option<u64> {
        self.w.block_mergeable(self.vm, self.gpa + page * P)
    }
}

#[test]
fn block_uniform_4m_takes_two_block_faults() {
    let mut r = BRig::pkvm();
    // The hyp's stage-2, simulated: the pages a Map made reachable.
    let mut mapped = BTreeSet::new();
    let mut resolutions = Vec::new();
    for page in 0..1024u64 {
        let ipa = GPA + page * P;
        if mapped.contains(&ipa) {
            continue;
        }
        let res = r.fault(page);
        let FaultResolution::Map {
            ipa: at,
            gpa,
            pa,
            size,
            source,
            ..
        } = res
        else {
            panic!("{res:?}")
        };
        assert_eq!(source, FaultSource::Gmem);
        assert_eq!(at, gpa);
        for i in (0..size).step_by(P as usize) {
            mapped.insert(at + i);
        }
        resolutions.push((at, pa, size));
    }
    assert_eq!(resolutions.len(), 2);
    for (i, (ipa, pa, size)) in resolutions.iter().enumerate() {
        assert_eq!(*size, B);
        assert_eq!(*ipa, GPA + i as u64 * B);
        assert_eq!(pa % B, 0);
        assert_eq!(r.mergeable(i as u64 * 512), Some(*pa));
        assert_eq!(r.mergeable(i as u64 * 512 + 17), Some(*pa));
    }
    assert_eq!(r.a.block_allocs(), 2);
    assert_eq!(r.a.allocated(), 1024);
    let f = r.w.gmem(r.g).unwrap();
    assert_eq!(f.allocated_pages(), 1024);
    assert!(f.page_map().runs() <= 2);
    assert!(f.page_map().check_invariants());
    // Every page is backed by its place in the block.
    assert_eq!(f.page_pa(700 * P), Some(resolutions[1].1 + (700 - 512) * P));
    // A second fault anywhere in a block maps the same block again.
    assert_eq!(r.map(300), (GPA, resolutions[0].1, B));
}

#[test]
fn block_on_every_gmem_route() {
    // Option 1 (coco): private faults, then the shared alias after a conversion to shared.
    let mut r = BRig::new(Row::Opt1, B, GPA, B, 0);
    let bit = r.w.vm(r.vm).unwrap().shared_bit().unwrap();
    let (ipa, pa, size) = r.map(9);
    assert_eq!((ipa, size), (GPA, B));
    assert_eq!(r.w.block_mergeable(r.vm, GPA), Some(pa));
    assert_eq!(r.w.block_mergeable(r.vm, GPA | bit), None);
    // The shared alias fails validation: a memory fault for that page only.
    assert!(matches!(
        r.fault_ipa((GPA + 9 * P) | bit),
        FaultResolution::MemoryFault { .. }
    ));
    r.convert(0, 512, ConvertTo::Shared);
    let res = r.fault_ipa((GPA + 9 * P) | bit);
    assert_eq!(
        res,
        FaultResolution::Map {
            ipa: GPA | bit,
            gpa: GPA,
            pa,
            source: FaultSource::Gmem,
            slot: Some(SlotId(0)),
            size: B,
            host_access: true,
        }
    );
    assert_eq!(r.w.block_mergeable(r.vm, GPA | bit), Some(pa));
    assert_eq!(r.w.block_mergeable(r.vm, GPA), None);

    // Non-coco through get_pfn (untracked): blocks.
    let mut r = BRig::new(Row::NonCocoGetPfn, B, GPA, B, 0);
    assert_eq!(r.map(1).2, B);
    // Non-coco through the host view of gmem: UserspaceGmem blocks.
    let mut r = BRig::new(Row::NonCocoUaddr, B, GPA, B, 0);
    let FaultResolution::Map { source, size, .. } = r.fault(1) else {
        panic!()
    };
    assert_eq!((source, size), (FaultSource::UserspaceGmem, B));
    // Option 2: shared faults through the host view need every page ALL.
    let mut r = BRig::new(Row::Opt2, B, GPA, B, 0);
    r.convert(0, 512, ConvertTo::Shared);
    let res = r.fault_ipa((GPA + 5 * P) | bit);
    assert!(
        matches!(
            res,
            FaultResolution::Map {
                size: B,
                source: FaultSource::UserspaceGmem,
                ..
            }
        ),
        "{res:?}"
    );
}

#[test]
fn block_conversion_of_one_page_changes_only_that_page() {
    let mut r = BRig::pkvm();
    let (_, base, size) = r.map(0);
    assert_eq!(size, B);
    assert!(r.a.write_byte(base + 5 * P + 1, 0x55));
    assert!(r.a.write_byte(base + 6 * P + 1, 0x66));
    let inv = r.convert(5, 1, ConvertTo::Shared);
    assert_eq!(
        inv.stage2_unmap,
        [Stage2Unmap {
            vm: r.vm,
            gpa: GPA + 5 * P,
            size: P
        }]
    );
    assert_eq!(
        inv.host_grant,
        [GmemRange {
            gmem: r.g,
            offset: 5 * P,
            size: P
        }]
    );
    assert!(inv.freed.is_empty() && inv.host_unmap.is_empty());
    assert_eq!(r.mergeable(0), None);
    // The range is no longer uniform: 4 KiB faults, same pages, content kept.
    assert_eq!(r.map(5), (GPA + 5 * P, base + 5 * P, P));
    assert_eq!(r.map(6), (GPA + 6 * P, base + 6 * P, P));
    assert_eq!(r.a.read_byte(base + 5 * P + 1), Some(0x55));
    assert_eq!(r.a.read_byte(base + 6 * P + 1), Some(0x66));
    // The other 2 MiB range is unaffected.
    assert_eq!(r.map(512).2, B);
    // Back to private: uniform and still the one chunk.
    let inv = r.convert(5, 1, ConvertTo::Private);
    assert_eq!(inv.stage2_unmap.len(), 1);
    assert_eq!(inv.stage2_unmap[0].size, P);
    assert_eq!(r.mergeable(0), Some(base));
    assert_eq!(r.map(7), (GPA, base, B));
    assert_eq!(r.a.read_byte(base + 5 * P + 1), Some(0x55));
    assert_eq!(r.a.block_allocs(), 2);
}

#[test]
fn block_punch_of_one_page_frees_only_that_page() {
    let mut r = BRig::pkvm();
    let (_, base, _) = r.map(0);
    for i in 0..512 {
        assert!(r.a.write_byte(base + i * P + 8, i as u8 | 1));
    }
    let zeroes = r.a.zero_calls();
    let inv = r.w.punch(r.g, 3 * P, P, &mut r.a).unwrap();
    assert_eq!(inv.freed, [base + 3 * P]);
    assert_eq!(
        inv.stage2_unmap,
        [Stage2Unmap {
            vm: r.vm,
            gpa: GPA + 3 * P,
            size: P
        }]
    );
    assert_eq!(r.a.zero_calls(), zeroes + 1);
    assert_eq!(r.a.allocated(), 511);
    assert!(!r.a.is_allocated(base + 3 * P));
    for i in (0..512).filter(|i| *i != 3) {
        assert_eq!(r.a.read_byte(base + i * P + 8), Some(i as u8 | 1));
    }
    assert_eq!(r.mergeable(0), None);
    // Not all unallocated, not one chunk: 4 KiB for the others, no block allocation.
    assert_eq!(r.map(4), (GPA + 4 * P, base + 4 * P, P));
    // Someone else takes the freed page first: the page faulted in again is another one, so the
    // range is not one chunk any more and never merges again while those pages stay.
    let other = r.a.alloc_zeroed_page().unwrap();
    assert_eq!(other, base + 3 * P);
    let (_, pa, size) = r.map(3);
    assert_eq!(size, P);
    assert_ne!(pa, base + 3 * P);
    assert_eq!(r.a.read_byte(pa + 8), Some(0));
    assert_eq!(r.mergeable(0), None);
    assert_eq!(r.map(3).2, P);
    assert_eq!(r.a.block_allocs(), 1);
}

#[test]
fn block_punch_then_the_same_page_again_merges() {
    // With a LIFO provider (the fake arena, the hyp's pool) the next single page is the one just
    // freed: the range is one chunk again and merges.
    let mut r = BRig::pkvm();
    let (_, base, _) = r.map(0);
    r.w.punch(r.g, 3 * P, P, &mut r.a).unwrap();
    assert_eq!(r.mergeable(0), None);
    assert_eq!(r.map(3), (GPA + 3 * P, base + 3 * P, P));
    assert_eq!(r.mergeable(0), Some(base));
    // Punching the whole range gives the block back; the next fault takes a fresh block.
    let inv = r.w.punch(r.g, 0, B, &mut r.a).unwrap();
    assert_eq!(inv.freed.len(), 512);
    assert_eq!(r.a.allocated(), 0);
    assert_eq!(r.mergeable(0), None);
    let (_, pa, size) = r.map(100);
    assert_eq!(size, B);
    assert_eq!(r.mergeable(0), Some(pa));
    assert_eq!(r.a.bad_frees(), 0);
}

#[test]
fn block_relinquish_pin_and_teardown_work_per_page() {
    let mut r = BRig::pkvm();
    let vm = r.vm;
    let (_, base, _) = r.map(0);
    let inv = r.w.relinquish(vm, GPA + 10 * P, &mut r.a).unwrap();
    assert_eq!(inv.freed, [base + 10 * P]);
    assert_eq!(inv.stage2_unmap.len(), 1);
    assert_eq!(inv.stage2_unmap[0].gpa, GPA + 10 * P);
    assert_eq!(inv.stage2_unmap[0].size, P);
    assert_eq!(r.mergeable(0), None);
    // Pin a page of the other block after sharing it.
    assert_eq!(r.map(600).2, B);
    r.convert(600, 1, ConvertTo::Shared);
    assert_eq!(
        r.w.pin(r.g, 600 * P, &mut r.a),
        r.w.gmem(r.g).map(|f| f.page_pa(600 * P).unwrap())
    );
    assert_eq!(r.mergeable(512), None);
    let zeroes = r.a.zero_calls();
    let freed = r.w.destroy_vm(vm, &mut r.a).unwrap().freed;
    assert_eq!(freed.len(), 1023);
    assert_eq!(r.a.zero_calls(), zeroes + 1023);
    assert_eq!(r.a.allocated(), 0);
    assert_eq!(r.a.bad_frees(), 0);
}

#[test]
fn block_fallbacks_to_4k() {
    // Unaligned gmem offset.
    let mut r = BRig::new(Row::Pkvm, 2 * B, GPA, B, P);
    assert_eq!(r.map(0).2, P);
    // Slot smaller than 2 MiB.
    let mut r = BRig::new(Row::Pkvm, B, GPA, B / 2, 0);
    assert_eq!(r.map(0).2, P);
    // Slot not covering the aligned 2 MiB range around the fault.
    let mut r = BRig::new(Row::Pkvm, 2 * B, GPA + B / 2, B, 0);
    assert_eq!(r.map(0).2, P);
    // Mixed shareability.
    let mut r = BRig::pkvm();
    r.convert(100, 1, ConvertTo::Shared);
    assert_eq!(r.map(0).2, P);
    assert_eq!(r.map(512).2, B);
    // Partly allocated (the host touched a shared page first).
    let mut r = BRig::new(Row::NonCocoGetPfn, B, GPA, B, 0);
    r.w.host_fault(r.g, 7 * P, &mut r.a).unwrap();
    assert_eq!(r.map(0).2, P);
    // Anon memory never uses blocks (Legacy shared fault).
    let mut r = BRig::new(Row::Legacy, B, GPA, B, 0);
    let bit = r.w.vm(r.vm).unwrap().shared_bit().unwrap();
    let FaultResolution::Map { size, source, .. } = r.fault_ipa(GPA | bit) else {
        panic!()
    };
    assert_eq!((size, source), (P, FaultSource::UserspaceAnon));
    // Legacy private faults: the mismatch check needs the whole range's attributes private.
    r.w.set_attributes(r.vm, GPA, B - P, true).unwrap();
    let res = r.fault(1);
    assert!(
        matches!(res, FaultResolution::Map { size: P, .. }),
        "{res:?}"
    );
    r.w.set_attributes(r.vm, GPA, B, true).unwrap();
    let res = r.fault(1);
    assert!(
        matches!(res, FaultResolution::Map { size: P, .. }),
        "{res:?}"
    );
    // (the range is partly allocated now; a fresh file gets a block)
    let mut r = BRig::new(Row::Legacy, B, GPA, B, 0);
    r.w.set_attributes(r.vm, GPA, B, true).unwrap();
    assert_eq!(r.map(1).2, B);
}

#[test]
fn block_provider_without_blocks_never_needs_pages_for_a_block() {
    for blocks_off in [true, false] {
        let mut r = BRig::pkvm();
        if blocks_off {
            r.a.set_blocks(false);
        } else {
            r.a.set_block_fail(true);
        }
        let (_, pa0, size) = r.map(0);
        assert_eq!(size, P);
        assert_eq!(r.a.block_allocs(), 0);
        // Single pages from a fresh arena come out contiguous and aligned: after all 512 pages
        // faulted one by one, the range is one chunk and may be merged.
        for page in 1..512 {
            assert_eq!(r.mergeable(0), None);
            assert_eq!(r.map(page), (GPA + page * P, pa0 + page * P, P));
        }
        assert_eq!(pa0 % B, 0);
        assert_eq!(r.mergeable(0), Some(pa0));
        // A later fault in that range is served as the block.
        assert_eq!(r.map(3), (GPA, pa0, B));
        // No page at all: NeedPages (for the page, not the block), nothing changed.
        r.a.set_fail(true);
        assert_eq!(r.fault(512), FaultResolution::NeedPages);
        r.a.set_fail(false);
        assert_eq!(r.map(512).2, P);
    }
}

#[test]
fn block_mergeable_rejects_bad_arguments() {
    let mut r = BRig::pkvm();
    let (_, base, _) = r.map(0);
    assert_eq!(r.w.block_mergeable(VmHandle(99), GPA), None);
    assert_eq!(r.w.block_mergeable(r.vm, 1 << IPA_BITS), None);
    assert_eq!(r.w.block_mergeable(r.vm, 0), None);
    assert_eq!(r.w.block_mergeable(r.vm, GPA + B - 1), Some(base));
    assert_eq!(r.w.block_mergeable(r.vm, GPA + B), None);
}

// ---- the page map against a per-page model ----

#[derive(Clone, Debug)]
enum MapOp {
    /// Insert a run of `count` pages at `first` (only its unallocated pages are inserted, each
    /// as its own run), physically at `pa_page` pages into the arena.
    Insert {
        first: u64,
        count: u64,
        pa_page: u64,
    },
    Remove {
        first: u64,
        count: u64,
    },
}

fn map_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        3 => (0u64..40, 1u64..8, 0u64..48).prop_map(|(first, count, pa_page)| MapOp::Insert {
            first,
            count,
            pa_page
        }),
        1 => (0u64..40, 0u64..10).prop_map(|(first, count)| MapOp::Remove { first, count }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn page_map_matches_a_per_page_model(
        ops in proptest::collection::vec(map_op(), 1..if cfg!(miri) { 12 } else { 40 })
    ) {
        let mut m = crate::PageMap::new();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        for op in &ops {
            match *op {
                MapOp::Insert { first, count, pa_page } => {
                    let free = (first..first + count).all(|i| !model.contains_key(&i));
                    if free {
                        m.insert_run(first, ARENA + pa_page * P, count);
                        for i in 0..count {
                            model.insert(first + i, ARENA + (pa_page + i) * P);
                        }
                    } else {
                        let holes: Vec<u64> =
                            (first..first + count).filter(|i| !model.contains_key(i)).collect();
                        // The fault path's single-page insert, checked against the model.
                        for i in holes {
                            let pa = ARENA + (pa_page + i - first) * P;
                            prop_assert_eq!(m.get_or_insert(i, || Ok::<u64, ()>(pa)), Ok(pa));
                            model.insert(i, pa);
                        }
                        // An allocated page is returned as it is, without allocating.
                        prop_assert_eq!(
                            m.get_or_insert(first, || Err::<u64, ()>(())),
                            Ok(model[&first])
                        );
                    }
                }
                MapOp::Remove { first, count } => {
                    let mut got = Vec::new();
                    m.remove_range(first, first + count, |s, pa, c| {
                        for i in 0..c {
                            got.push((s + i, pa + i * P));
                        }
                    });
                    let want: Vec<_> = model.range(first..first + count).map(|(i, p)| (*i, *p)).collect();
                    for (i, _) in &want {
                        model.remove(i);
                    }
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert!(m.check_invariants());
            prop_assert_eq!(m.len(), model.len() as u64);
            for i in 0..50 {
                prop_assert_eq!(m.get(i), model.get(&i).copied(), "index {}", i);
            }
            // Under Miri, a sample of the windows.
            for first in (0..44).step_by(if cfg!(miri) { 5 } else { 1 }) {
                for count in [1u64, 2, 4] {
                    let want = (0..count)
                        .map(|j| model.get(&(first + j)).copied())
                        .collect::<Option<Vec<_>>>()
                        .filter(|v| v.windows(2).all(|w| w[1] == w[0] + P))
                        .map(|v| v[0]);
                    prop_assert_eq!(m.chunk(first, count), want);
                    let any = (first..first + count).any(|i| model.contains_key(&i));
                    prop_assert_eq!(m.any_in(first, first + count), any);
                }
            }
            let mut seen = Vec::new();
            m.for_each_in(5, 30, |s, pa, c| {
                for i in 0..c {
                    seen.push((s + i, pa + i * P));
                }
            });
            let want: Vec<_> = model.range(5..30).map(|(i, p)| (*i, *p)).collect();
            prop_assert_eq!(seen, want);
        }
    }
}

#[test]
fn end_after_bounds_a_range_by_the_pages_it_holds() {
    let mut m = crate::PageMap::new();
    // Runs: [2, 5) at 0x10000, [10, 20) at 0x80000 (not contiguous with the first).
    m.insert_run(2, 0x10000, 3);
    m.insert_run(10, 0x80000, 10);
    assert_eq!(m.end_after(0, 100, 0), 0);
    assert_eq!(m.end_after(0, 100, 2), 4);
    assert_eq!(m.end_after(0, 100, 3), 5);
    assert_eq!(m.end_after(0, 100, 4), 11);
    assert_eq!(m.end_after(0, 100, 13), 20);
    assert_eq!(m.end_after(0, 100, 14), 100, "fewer pages: the whole range");
    // From inside a run, and clipped to `last`.
    assert_eq!(m.end_after(3, 100, 1), 4);
    assert_eq!(m.end_after(3, 100, 3), 11);
    assert_eq!(m.end_after(12, 15, 2), 14);
    assert_eq!(m.end_after(12, 15, 5), 15);
    assert_eq!(m.end_after(30, 40, 5), 40);
}
