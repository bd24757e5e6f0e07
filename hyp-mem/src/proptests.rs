//! Property tests: random stage-2 operation sequences against an interval model of ipa -> pa,
//! and random ownership transitions against the per-page model of `ownership_tests`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use crate::fake::{FakeArena, RecordingTlb};
use crate::ownership::Transition;
use crate::ownership_tests::{apply, op, table, Model, OPS, RAM};
use crate::stage2::*;

fn config(cases: u32, miri_cases: u32) -> Config {
    Config {
        cases: if cfg!(miri) { miri_cases } else { cases },
        failure_persistence: if cfg!(miri) {
            None
        } else {
            Some(Box::new(FileFailurePersistence::SourceParallel(
                "proptest-regressions",
            )))
        },
        ..Config::default()
    }
}

const ATTRS: [S2Attrs; 3] = [
    S2Attrs::NORMAL_RWX,
    S2Attrs::NORMAL_RW,
    S2Attrs {
        read: true,
        write: false,
        exec: false,
        mem: MemType::NormalWriteBack,
    },
];
const PA_OFFSET: u64 = 0x1_0000_0000;
const UNMAP_PAGES: [u64; 8] = [1, 2, 3, 511, 512, 513, 1024, 262_144];

#[derive(Clone, Debug)]
enum S2Op {
    Map {
        ipa: u64,
        pa: u64,
        size: u64,
        attrs: usize,
    },
    Unmap {
        ipa: u64,
        pages: u64,
    },
    SetAttrs {
        ipa: u64,
        pages: u64,
        attrs: usize,
    },
    Split {
        ipa: u64,
    },
    Merge {
        ipa: u64,
    },
}

fn addr() -> impl Strategy<Value = u64> {
    (0..2u64, 0..3u64, 0..3u64).prop_map(|(g, m, p)| g * SIZE_1G + m * SIZE_2M + p * SIZE_4K)
}

fn s2_op() -> impl Strategy<Value = (S2Op, bool)> {
    let size = prop_oneof![5 => Just(SIZE_4K), 3 => Just(SIZE_2M), 1 => Just(SIZE_1G)];
    let map = (addr(), size, any::<bool>(), addr(), 0..3usize).prop_map(
        |(ipa, size, linear, other, attrs)| {
            let ipa = ipa & !(size - 1);
            let pa = if linear {
                ipa + PA_OFFSET
            } else {
                (other + 2 * PA_OFFSET) & !(size - 1)
            };
            S2Op::Map {
                ipa,
                pa,
                size,
                attrs,
            }
        },
    );
    let op = prop_oneof![
        4 => map,
        2 => (addr(), 0..UNMAP_PAGES.len()).prop_map(|(ipa, i)| S2Op::Unmap { ipa, pages: UNMAP_PAGES[i] }),
        1 => (addr(), 0..4usize, 0..3usize)
            .prop_map(|(ipa, i, attrs)| S2Op::SetAttrs { ipa, pages: UNMAP_PAGES[i], attrs }),
        2 => addr().prop_map(|ipa| S2Op::Split { ipa }),
        2 => addr().prop_map(|ipa| S2Op::Merge { ipa: ipa & !(SIZE_2M - 1) }),
    ];
    (op, prop::bool::weighted(0.15))
}

/// ipa start -> (length, pa start, attrs), non-overlapping.
#[derive(Default, Clone)]
struct IntervalModel(BTreeMap<u64, (u64, u64, S2Attrs)>);

impl IntervalModel {
    fn overlapping(&self, lo: u64, hi: u64) -> Vec<(u64, u64, u64, S2Attrs)> {
        self.0
            .range(..hi)
            .filter(|(&s, &(len, _, _))| s + len > lo)
            .map(|(&s, &(len, pa, a))| (s, len, pa, a))
            .collect()
    }

    fn covered(&self, lo: u64, hi: u64) -> u64 {
        self.overlapping(lo, hi)
            .iter()
            .map(|&(s, len, _, _)| (s + len).min(hi) - s.max(lo))
            .sum()
    }

    fn cut(&mut self, lo: u64, hi: u64) {
        for (s, len, pa, a) in self.overlapping(lo, hi) {
            self.0.remove(&s);
            if s < lo {
                self.0.insert(s, (lo - s, pa, a));
            }
            if s + len > hi {
                self.0.insert(hi, (s + len - hi, pa + (hi - s), a));
            }
        }
    }

    fn set_attrs(&mut self, lo: u64, hi: u64, attrs: S2Attrs) {
        let parts = self.overlapping(lo, hi);
        self.cut(lo, hi);
        for (s, len, pa, _) in parts {
            let (a, b) = (s.max(lo), (s + len).min(hi));
            self.0.insert(a, (b - a, pa + (a - s), attrs));
        }
    }
}

/// Maximal runs of (ipa, len, pa, attrs) with contiguous ipa and pa and equal attrs.
fn canonical(it: impl Iterator<Item = (u64, u64, u64, S2Attrs)>) -> Vec<(u64, u64, u64, S2Attrs)> {
    let mut out: Vec<(u64, u64, u64, S2Attrs)> = Vec::new();
    for (s, len, pa, a) in it {
        if let Some(last) = out.last_mut() {
            if last.0 + last.1 == s && last.2 + last.1 == pa && last.3 == a {
                last.1 += len;
                continue;
            }
        }
        out.push((s, len, pa, a));
    }
    out
}

fn real_runs(s2: &Stage2<FakeArena, RecordingTlb>) -> Vec<(u64, u64, u64, S2Attrs)> {
    canonical(
        s2.mappings()
            .map(|m| (m.ipa_base, m.size, m.pa_base, m.attrs)),
    )
}

proptest! {
    #![proptest_config(config(256, 2))]

    #[test]
    fn stage2_matches_the_model(ops in prop::collection::vec(s2_op(), 1..if cfg!(miri) { 8 } else { 40 })) {
        let arena = FakeArena::new(if cfg!(miri) { 96 } else { 512 });
        let mut s2 = Stage2::new(arena.clone(), RecordingTlb::new(), 9, IpaSize::Bits40).unwrap();
        if !cfg!(miri) {
            let root = s2.root_pa();
            s2.tlb_mut().attach_model(arena.clone(), root, 2 * ENTRIES);
        }
        let mut model = IntervalModel::default();
        for (op, fail) in ops {
            let before: Vec<Mapping> = s2.mappings().collect();
            let live = arena.live_pages();
            arena.set_alloc_budget(if fail { Some(0) } else { None });
            let result: Result<(), MapError> = match op {
                S2Op::Map { ipa, pa, size, attrs } => {
                    let r = s2.map(ipa, pa, size, ATTRS[attrs]);
                    let hi = ipa + size;
                    let parts = model.overlapping(ipa, hi);
                    if parts.is_empty() {
                        if !(fail && r == Err(MapError::NoMemory)) {
                            prop_assert_eq!(r, Ok(()));
                            model.0.insert(ipa, (size, pa, ATTRS[attrs]));
                        }
                    } else {
                        let same = model.covered(ipa, hi) == size
                            && parts.iter().all(|&(s, _, p, a)| p.wrapping_sub(s) == pa.wrapping_sub(ipa) && a == ATTRS[attrs]);
                        if same {
                            prop_assert!(r == Ok(()) || r == Err(MapError::Exists), "{:?}", r);
                        } else {
                            prop_assert_eq!(r, Err(MapError::Exists));
                        }
                    }
                    r
                }
                S2Op::Unmap { ipa, pages } => {
                    let size = pages * SIZE_4K;
                    // Every leaf touching the range goes whole (a straddling block too), and an
                    // unmap never needs memory, even with the allocator failing.
                    let (lo, hi) = s2
                        .mappings()
                        .filter(|m| m.ipa_base < ipa + size && m.ipa_base + m.size > ipa)
                        .fold((ipa, ipa + size), |(lo, hi), m| {
                            (lo.min(m.ipa_base), hi.max(m.ipa_base + m.size))
                        });
                    let r = s2.unmap(ipa, size);
                    prop_assert_eq!(r, Ok(()));
                    model.cut(lo, hi);
                    r
                }
                S2Op::SetAttrs { ipa, pages, attrs } => {
                    let size = pages * SIZE_4K;
                    let r = s2.set_attrs(ipa, size, ATTRS[attrs]);
                    if model.covered(ipa, ipa + size) != size {
                        prop_assert_eq!(r, Err(MapError::NotMapped));
                    } else if !(fail && r == Err(MapError::NoMemory)) {
                        prop_assert_eq!(r, Ok(()));
                        model.set_attrs(ipa, ipa + size, ATTRS[attrs]);
                    }
                    r
                }
                S2Op::Split { ipa } => {
                    let old = s2.walk(ipa);
                    let r = s2.split_block(ipa);
                    match old {
                        None => prop_assert_eq!(r, Err(MapError::NotMapped)),
                        Some(m) if m.level == 3 => prop_assert_eq!(r, Err(MapError::Invalid)),
                        Some(m) => {
                            if !(fail && r == Err(MapError::NoMemory)) {
                                prop_assert_eq!(r, Ok(()));
                                prop_assert_eq!(s2.walk(ipa).unwrap().level, m.level + 1);
                            }
                        }
                    }
                    r
                }
                S2Op::Merge { ipa } => {
                    let merged = s2.try_merge_block(ipa);
                    prop_assert!(merged.is_ok());
                    if merged == Ok(true) {
                        prop_assert_eq!(s2.walk(ipa).unwrap().level, 2);
                        prop_assert_eq!(arena.live_pages() + 1, live);
                    }
                    Ok(())
                }
            };
            arena.set_alloc_budget(None);
            if result.is_err() {
                let after: Vec<Mapping> = s2.mappings().collect();
                prop_assert_eq!(after, before);
                prop_assert_eq!(arena.live_pages(), live);
            }
            let want = canonical(model.0.iter().map(|(&s, &(len, pa, a))| (s, len, pa, a)));
            prop_assert_eq!(real_runs(&s2), want);
            prop_assert_eq!(s2.table_pages(), arena.live_pages());
            prop_assert!(s2.tlb().violations.is_empty(), "{:#?}", s2.tlb().violations);
        }
        let (arena, tlb) = s2.destroy();
        prop_assert!(tlb.violations.is_empty());
        prop_assert_eq!(arena.live_pages(), 0);
    }

    #[test]
    fn ownership_matches_the_model(
        steps in prop::collection::vec((0..OPS, 0..4u64, 1..3u16), 1..if cfg!(miri) { 30 } else { 100 })
    ) {
        let mut own = table(4);
        let mut models = [Model::Host; 4];
        for (i, page, vm) in steps {
            let pa = RAM + page * SIZE_4K;
            let t: Transition = op(i, vm);
            let (want, next, zero) = models[page as usize].step(t);
            prop_assert_eq!(own.check(pa, t), want);
            let (got, zeroed) = apply(&mut own, pa, t);
            prop_assert_eq!(got, want, "{:?} on {:?}", t, models[page as usize]);
            prop_assert_eq!(zeroed, if zero { alloc::vec![pa] } else { alloc::vec![] });
            models[page as usize] = next;
            for (p, m) in models.iter().enumerate() {
                prop_assert_eq!(own.info(RAM + p as u64 * SIZE_4K).unwrap(), m.info());
            }
            let accesses = models.iter().enumerate().flat_map(|(p, m)| m.accesses(RAM + p as u64 * SIZE_4K));
            prop_assert_eq!(own.check_invariants(accesses.collect::<Vec<_>>()), alloc::vec![]);
        }
    }
}
