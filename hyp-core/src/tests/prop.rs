//! Property test: random sequences of conversions, punches, pins/unpins, host accesses and guest
//! faults against a simple per-page reference model. After every step the range store, the pin
//! counts, the allocated pages and the page contents must agree with the model, including after
//! every failed call (a failed `EAGAIN` changes nothing).

use super::*;
use alloc::vec::Vec;
use proptest::collection::vec;
use proptest::prelude::*;

const N: u64 = 8;
const P: u64 = PAGE_SIZE;
/// The byte of each page the test writes and checks.
const BYTE: u64 = 0x10;

#[derive(Clone, Debug)]
enum Op {
    Convert {
        first: u64,
        len: u64,
        misalign: bool,
        to_private: bool,
        zero: bool,
        host: bool,
    },
    Punch {
        first: u64,
        len: u64,
        misalign: bool,
    },
    Pin(u64),
    Unpin(u64),
    HostWrite {
        page: u64,
        val: u8,
        fail: bool,
    },
    HostRead(u64),
    Fault {
        page: u64,
        private: bool,
        write: Option<u8>,
        fail: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..=N;
    prop_oneof![
        4 => (0..=N, 0..=N, proptest::bool::weighted(0.1), any::<bool>(), proptest::bool::weighted(0.2), any::<bool>())
            .prop_map(|(first, len, misalign, to_private, zero, host)| Op::Convert {
                first, len, misalign, to_private, zero, host
            }),
        1 => (0..=N, 0..=N, proptest::bool::weighted(0.1))
            .prop_map(|(first, len, misalign)| Op::Punch { first, len, misalign }),
        2 => page.clone().prop_map(Op::Pin),
        2 => page.clone().prop_map(Op::Unpin),
        2 => (page.clone(), any::<u8>(), proptest::bool::weighted(0.1))
            .prop_map(|(page, val, fail)| Op::HostWrite { page, val, fail }),
        1 => page.clone().prop_map(Op::HostRead),
        3 => (page, any::<bool>(), proptest::option::of(any::<u8>()), proptest::bool::weighted(0.1))
            .prop_map(|(page, private, write, fail)| Op::Fault { page, private, write, fail }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Page {
    share: Shareability,
    pins: u32,
    allocated: bool,
    byte: u8,
}

struct Model {
    pages: Vec<Page>,
}

impl Model {
    fn page(&mut self, p: u64) -> &mut Page {
        &mut self.pages[p as usize]
    }

    fn range_ok(first: u64, len: u64, misalign: bool) -> bool {
        !misalign && len > 0 && first + len <= N
    }
}

fn check(r: &Rig, m: &Model) -> Result<(), TestCaseError> {
    let f = r.w.gmem(r.g).unwrap();
    let store = f.shareability_store().unwrap();
    prop_assert!(store.check_invariants());
    let mut runs = 0;
    for (p, mp) in m.pages.iter().enumerate() {
        let off = p as u64 * P;
        prop_assert_eq!(f.shareability(off), Some(mp.share), "page {}", p);
        prop_assert_eq!(f.pin_count(off), mp.pins, "page {}", p);
        let pa = f.page_pa(off);
        prop_assert_eq!(pa.is_some(), mp.allocated, "page {}", p);
        match pa {
            Some(pa) => prop_assert_eq!(r.a.read_byte(pa + BYTE), Some(mp.byte), "page {}", p),
            None => prop_assert_eq!(mp.byte, 0, "page {}", p),
        }
        if p == 0 || m.pages[p - 1].share != mp.share {
            runs += 1;
        }
    }
    prop_assert_eq!(store.runs(), runs);
    // The one-pass view a conversion's ownership update uses agrees with the per-page one, for
    // windows that start and end anywhere (a page, several runs, past the end).
    for (first, len) in [(0, N), (1, N), (N / 2, 3), (3, N / 3), (N - 1, 4)] {
        let want: Vec<(u64, bool)> = (first..(first + len).min(N))
            .filter_map(|p| {
                f.page_pa(p * P)
                    .map(|pa| (pa, f.host_stage2_allowed(p * P)))
            })
            .collect();
        prop_assert_eq!(f.allocated_with_host_access(first * P, len * P), want);
    }
    prop_assert_eq!(
        r.a.allocated(),
        m.pages.iter().filter(|p| p.allocated).count()
    );
    prop_assert_eq!(r.a.bad_frees(), 0);
    Ok(())
}

fn step(r: &mut Rig, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Convert {
            first,
            len,
            misalign,
            to_private,
            zero,
            host,
        } => {
            let req = ConvertRequest {
                offset: first * P + u64::from(misalign),
                size: len * P,
                to: if to_private {
                    ConvertTo::Private
                } else {
                    ConvertTo::Shared
                },
                mode: if zero {
                    ContentMode::Zero
                } else {
                    ContentMode::Preserve
                },
                initiator: if host {
                    Initiator::Host
                } else {
                    Initiator::Guest
                },
            };
            let got = r.w.convert(r.g, &req, &mut r.a).map(|_| ());
            let expected = (|| {
                if to_private && zero {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                if !Model::range_ok(first, len, misalign) {
                    return Err(Errno::EINVAL.into());
                }
                // Coco: a host-initiated to-shared must zero.
                if !to_private && host && !zero {
                    return Err(Errno::EPERM.into());
                }
                if to_private {
                    if let Some(p) = (first..first + len).find(|p| m.pages[*p as usize].pins > 0) {
                        return Err(ConvertError {
                            errno: Errno::EAGAIN,
                            error_offset: p * P,
                        });
                    }
                }
                let target = if to_private {
                    Shareability::Guest
                } else {
                    Shareability::All
                };
                for p in first..first + len {
                    let pg = m.page(p);
                    if pg.share != target {
                        if !to_private && (zero || host) {
                            pg.byte = 0;
                        }
                        pg.share = target;
                    }
                }
                Ok(())
            })();
            prop_assert_eq!(got, expected);
        }
        Op::Punch {
            first,
            len,
            misalign,
        } => {
            let got =
                r.w.punch(r.g, first * P + u64::from(misalign), len * P, &mut r.a)
                    .map(|_| ());
            let expected = if !Model::range_ok(first, len, misalign) {
                Err(Errno::EINVAL)
            } else if (first..first + len).any(|p| m.pages[p as usize].pins > 0) {
                Err(Errno::EBUSY)
            } else {
                for p in first..first + len {
                    let pg = m.page(p);
                    pg.allocated = false;
                    pg.byte = 0;
                }
                Ok(())
            };
            prop_assert_eq!(got, expected);
        }
        Op::Pin(page) => {
            let got = r.w.pin(r.g, page * P, &mut r.a).map(|_| ());
            let expected = if page >= N || m.page(page).share != Shareability::All {
                Err(Errno::EFAULT)
            } else {
                let pg = m.page(page);
                pg.pins += 1;
                pg.allocated = true;
                Ok(())
            };
            prop_assert_eq!(got, expected);
        }
        Op::Unpin(page) => {
            let got = r.w.unpin(r.g, page * P);
            let expected = if page >= N || m.page(page).pins == 0 {
                Err(Errno::EINVAL)
            } else {
                m.page(page).pins -= 1;
                Ok(())
            };
            prop_assert_eq!(got, expected);
        }
        Op::HostWrite { page, val, fail } => {
            r.a.set_fail(fail);
            let got = r.host(page);
            r.a.set_fail(false);
            let expected = if page >= N || m.page(page).share != Shareability::All {
                Err(Errno::EFAULT)
            } else if fail && !m.page(page).allocated {
                Err(Errno::ENOMEM)
            } else {
                Ok(())
            };
            prop_assert_eq!(got.map(|_| ()), expected);
            if let Ok(pa) = got {
                prop_assert!(r.a.write_byte(pa + BYTE, val));
                let pg = m.page(page);
                pg.allocated = true;
                pg.byte = val;
            }
        }
        Op::HostRead(page) => {
            let got = r.host(page);
            if page >= N || m.page(page).share != Shareability::All {
                prop_assert_eq!(got, Err(Errno::EFAULT));
            } else {
                let pa = got.map_err(|e| TestCaseError::fail(alloc::format!("{e}")))?;
                let pg = m.page(page);
                pg.allocated = true;
                prop_assert_eq!(r.a.read_byte(pa + BYTE), Some(pg.byte));
            }
        }
        Op::Fault {
            page,
            private,
            write,
            fail,
        } => {
            let kind = if private { Kind::Private } else { Kind::Shared };
            let access = if write.is_some() {
                Access::Write
            } else {
                Access::Read
            };
            r.a.set_fail(fail);
            let got = r.fault(page, kind, access);
            r.a.set_fail(false);
            if page >= N {
                prop_assert_eq!(
                    got,
                    FaultResolution::Mmio {
                        ipa: r.ipa(page, kind)
                    }
                );
                return Ok(());
            }
            let need = if private {
                Shareability::Guest
            } else {
                Shareability::All
            };
            let pg = m.page(page);
            if pg.share != need {
                let mut flags = if write.is_some() {
                    MemoryFaultFlags::WRITE
                } else {
                    MemoryFaultFlags::READ
                };
                if private {
                    flags |= MemoryFaultFlags::PRIVATE;
                }
                prop_assert_eq!(
                    got,
                    FaultResolution::MemoryFault {
                        gpa: GPA + page * P,
                        size: P,
                        flags
                    }
                );
                prop_assert_eq!(r.w.expected_mapping(r.vm, r.ipa(page, kind)), None);
            } else if fail && !pg.allocated {
                prop_assert_eq!(got, FaultResolution::NeedPages);
            } else {
                let FaultResolution::Map { pa, source, .. } = got else {
                    return Err(TestCaseError::fail(alloc::format!("{got:?}")));
                };
                prop_assert_eq!(source, FaultSource::Gmem);
                // The checker's second reading of the rules agrees with the fault path.
                prop_assert_eq!(
                    r.w.expected_mapping(r.vm, r.ipa(page, kind)),
                    Some((pa, private))
                );
                pg.allocated = true;
                prop_assert_eq!(r.a.read_byte(pa + BYTE), Some(pg.byte));
                if let Some(v) = write {
                    prop_assert!(r.a.write_byte(pa + BYTE, v));
                    pg.byte = v;
                }
            }
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if cfg!(miri) {
        c.cases = 8;
        c.failure_persistence = None;
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_and_pages_agree_with_a_per_page_model(
        init_shared in any::<bool>(),
        ops in vec(op(), 1..48),
    ) {
        let mut gflags = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY;
        if init_shared {
            gflags |= GmemFlags::INIT_SHARED;
        }
        let mut w = World::new();
        let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
        let g = w.create_gmem(vm, N * P, gflags.bits()).unwrap();
        let slot = w
            .create_memslot(
                vm,
                &MemslotSpec {
                    gpa: GPA,
                    size: N * P,
                    gmem: Some(GmemBinding { gmem: g, offset: 0 }),
                    userspace_addr: UserspaceAddr::None,
                    flags: (MemslotFlags::ALWAYS_FAULT_FROM_GMEM
                        | MemslotFlags::DONT_CHECK_MISMATCHES)
                        .bits(),
                },
            )
            .unwrap();
        let mut r = Rig { w, a: FakeArena::new(0x4000_0000, 4 * N), vm, g, slot, ty: VmType::Coco };
        let share = if init_shared { Shareability::All } else { Shareability::Guest };
        let mut m = Model {
            pages: (0..N).map(|_| Page { share, pins: 0, allocated: false, byte: 0 }).collect(),
        };
        check(&r, &m)?;
        for op in &ops {
            step(&mut r, &mut m, op)?;
            check(&r, &m)?;
        }
        let freed = r.w.destroy_vm(vm, &mut r.a).unwrap().freed;
        prop_assert_eq!(freed.len(), m.pages.iter().filter(|p| p.allocated).count());
        prop_assert_eq!(r.a.allocated(), 0);
        prop_assert_eq!(r.a.bad_frees(), 0);
    }
}

proptest! {
    #![proptest_config(config())]

    /// The range store against a plain array, with arbitrary sets.
    #[test]
    fn range_store_matches_an_array(sets in vec((0u64..64, 0u64..65, 0u8..3), 1..64)) {
        let mut s = RangeStore::new(64, 0u8);
        let mut a = [0u8; 64];
        for (start, end, v) in sets {
            let got = s.set(start, end, v);
            if start < end {
                prop_assert_eq!(got, Ok(()));
                for x in &mut a[start as usize..end as usize] {
                    *x = v;
                }
            } else {
                prop_assert_eq!(got, Err(Errno::EINVAL));
            }
            prop_assert!(s.check_invariants());
            for (i, x) in a.iter().enumerate() {
                prop_assert_eq!(s.get(i as u64), Some(*x));
            }
            let runs = 1 + a.windows(2).filter(|w| w[0] != w[1]).count();
            prop_assert_eq!(s.runs(), runs);
            let segs: Vec<_> = s.segments(0, 64).collect();
            prop_assert_eq!(segs.len(), runs);
        }
    }
}
