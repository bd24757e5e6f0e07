//! Host tests of page ownership: every transition from every state against an independent
//! model, the zeroing contract, and the invariant checker on deliberately broken states.

use alloc::vec;
use alloc::vec::Vec;

use abi::Errno;

use crate::fake::{FakeArena, RecordingTlb};
use crate::ownership::*;
use crate::stage2::{IpaSize, MapError, S2Attrs, Stage2, SIZE_2M, SIZE_4K};

pub(crate) const RAM: u64 = 0x4000_0000;

pub(crate) fn table(pages: usize) -> Ownership<Vec<PageMeta>> {
    Ownership::new(RAM, vec![PageMeta::default(); pages]).unwrap()
}

/// The model: the whole state of one page as one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Model {
    Host,
    Hyp,
    HypShared { pins: u16 },
    Guest { vm: VmHandle },
    LentToGuest { vm: VmHandle },
    BorrowedFromGuest { vm: VmHandle, pins: u16 },
}

pub(crate) const OPS: usize = 18;

/// Transition number `i` (0..OPS) for `vm`.
pub(crate) fn op(i: usize, vm: VmHandle) -> Transition {
    use Transition as T;
    [
        T::HostDonateToHyp,
        T::HypDonateToHost,
        T::HostShareWithHyp,
        T::HostUnshareFromHyp,
        T::HostDonateToGuest(vm),
        T::HostShareWithGuest(vm),
        T::HostUnshareFromGuest(vm),
        T::GuestShareWithHost(vm),
        T::GuestUnshareFromHost(vm),
        T::GuestRelinquishToHost(vm),
        T::HostReclaimFromGuest(vm),
        T::HostPin,
        T::HostUnpin,
        T::HypPin,
        T::HypUnpin,
        T::HypDonateToGuest { vm, shared: false },
        T::HypDonateToGuest { vm, shared: true },
        T::GuestReclaimToHyp(vm),
    ][i % OPS]
}

impl Model {
    fn guest_vm(self) -> Option<VmHandle> {
        match self {
            Model::Guest { vm }
            | Model::LentToGuest { vm }
            | Model::BorrowedFromGuest { vm, .. } => Some(vm),
            _ => None,
        }
    }

    /// Expected result, next state and whether the page is zeroed.
    pub(crate) fn step(self, t: Transition) -> (Result<(), Errno>, Model, bool) {
        use Model as M;
        use Transition as T;
        let guest_side = match t {
            T::HostUnshareFromGuest(vm)
            | T::GuestShareWithHost(vm)
            | T::GuestUnshareFromHost(vm)
            | T::GuestRelinquishToHost(vm)
            | T::HostReclaimFromGuest(vm)
            | T::GuestReclaimToHyp(vm) => Some(vm),
            _ => None,
        };
        if let (Some(vm), Some(have)) = (guest_side, self.guest_vm()) {
            if vm != have {
                return (Err(Errno::ENOENT), self, false);
            }
        }
        let ok = |m| (Ok(()), m, false);
        let err = |e| (Err(e), self, false);
        match (self, t) {
            (M::Host, T::HostDonateToHyp) => ok(M::Hyp),
            (M::Hyp, T::HypDonateToHost) => ok(M::Host),
            (M::Host, T::HostShareWithHyp) => ok(M::HypShared { pins: 0 }),
            (M::HypShared { pins }, T::HostUnshareFromHyp) => {
                if pins > 0 {
                    err(Errno::EBUSY)
                } else {
                    ok(M::Host)
                }
            }
            (M::Host, T::HostDonateToGuest(vm)) => ok(M::Guest { vm }),
            (M::Hyp, T::HypDonateToGuest { vm, shared: false }) => ok(M::Guest { vm }),
            (M::Hyp, T::HypDonateToGuest { vm, shared: true }) => {
                ok(M::BorrowedFromGuest { vm, pins: 0 })
            }
            (M::Host, T::HostShareWithGuest(vm)) => ok(M::LentToGuest { vm }),
            (M::LentToGuest { .. }, T::HostUnshareFromGuest(_)) => ok(M::Host),
            (M::Guest { vm }, T::GuestShareWithHost(_)) => ok(M::BorrowedFromGuest { vm, pins: 0 }),
            (M::BorrowedFromGuest { vm, pins }, T::GuestUnshareFromHost(_)) => {
                if pins > 0 {
                    err(Errno::EBUSY)
                } else {
                    ok(M::Guest { vm })
                }
            }
            (M::Guest { .. }, T::GuestRelinquishToHost(_)) => (Ok(()), M::Host, true),
            (M::Guest { .. }, T::HostReclaimFromGuest(_)) => (Ok(()), M::Host, true),
            (M::BorrowedFromGuest { pins, .. }, T::HostReclaimFromGuest(_)) => {
                if pins > 0 {
                    err(Errno::EBUSY)
                } else {
                    (Ok(()), M::Host, true)
                }
            }
            (M::LentToGuest { .. }, T::HostReclaimFromGuest(_)) => ok(M::Host),
            (M::Guest { .. } | M::LentToGuest { .. }, T::GuestReclaimToHyp(_)) => {
                (Ok(()), M::Hyp, true)
            }
            (M::BorrowedFromGuest { pins, .. }, T::GuestReclaimToHyp(_)) => {
                if pins > 0 {
                    err(Errno::EBUSY)
                } else {
                    (Ok(()), M::Hyp, true)
                }
            }
            (M::BorrowedFromGuest { vm, pins }, T::HostPin) => match pins.checked_add(1) {
                Some(pins) => ok(M::BorrowedFromGuest { vm, pins }),
                None => err(Errno::ERANGE),
            },
            (M::BorrowedFromGuest { vm, pins }, T::HostUnpin) if pins > 0 => {
                ok(M::BorrowedFromGuest { vm, pins: pins - 1 })
            }
            (M::HypShared { pins }, T::HypPin) => match pins.checked_add(1) {
                Some(pins) => ok(M::HypShared { pins }),
                None => err(Errno::ERANGE),
            },
            (M::HypShared { pins }, T::HypUnpin) if pins > 0 => ok(M::HypShared { pins: pins - 1 }),
            _ => err(Errno::EPERM),
        }
    }

    pub(crate) fn info(self) -> PageInfo {
        use PageState::*;
        let base = PageInfo::HOST_OWNED;
        match self {
            Model::Host => base,
            Model::Hyp => PageInfo {
                host: NoPage,
                hyp: Owned,
                ..base
            },
            Model::HypShared { pins } => PageInfo {
                host: SharedOwned,
                hyp: SharedBorrowed,
                hyp_pins: pins,
                ..base
            },
            Model::Guest { vm } => PageInfo {
                host: NoPage,
                guest: Owned,
                vm,
                ..base
            },
            Model::LentToGuest { vm } => PageInfo {
                host: SharedOwned,
                guest: SharedBorrowed,
                vm,
                ..base
            },
            Model::BorrowedFromGuest { vm, pins } => PageInfo {
                host: SharedBorrowed,
                guest: SharedOwned,
                vm,
                host_pins: pins,
                ..base
            },
        }
    }

    /// Who may reach the page, as the stage-2s of a correct hyp would map it.
    pub(crate) fn accesses(self, pa: u64) -> Vec<Access> {
        let i = self.info();
        let mut out = Vec::new();
        for who in [Component::Host, Component::Hyp, Component::Guest(i.vm)] {
            let s = i.state_of(who);
            if s.accessible() {
                out.push(Access {
                    pa,
                    size: SIZE_4K,
                    who,
                });
            }
        }
        out
    }
}

/// Applies `t` through the public function for it; returns the result and the pages zeroed.
pub(crate) fn apply(
    own: &mut Ownership<Vec<PageMeta>>,
    pa: u64,
    t: Transition,
) -> (Result<(), Errno>, Vec<u64>) {
    use Transition as T;
    let mut zeroed = Vec::new();
    let mut z = |p: u64| zeroed.push(p);
    let r = match t {
        T::HostDonateToHyp => own.host_donate_to_hyp(pa),
        T::HypDonateToHost => own.hyp_donate_to_host(pa),
        T::HostShareWithHyp => own.host_share_with_hyp(pa),
        T::HostUnshareFromHyp => own.host_unshare_from_hyp(pa),
        T::HostDonateToGuest(vm) => own.host_donate_to_guest(pa, vm),
        T::HostShareWithGuest(vm) => own.host_share_with_guest(pa, vm),
        T::HostUnshareFromGuest(vm) => own.host_unshare_from_guest(pa, vm),
        T::GuestShareWithHost(vm) => own.guest_share_with_host(pa, vm),
        T::GuestUnshareFromHost(vm) => own.guest_unshare_from_host(pa, vm),
        T::GuestRelinquishToHost(vm) => own.guest_relinquish_to_host(pa, vm, &mut z),
        T::HostReclaimFromGuest(vm) => own.host_reclaim_from_guest(pa, vm, &mut z),
        T::HostPin => own.host_pin(pa),
        T::HostUnpin => own.host_unpin(pa),
        T::HypPin => own.hyp_pin(pa),
        T::HypUnpin => own.hyp_unpin(pa),
        T::HypDonateToGuest { vm, shared } => own.hyp_donate_to_guest(pa, vm, shared),
        T::GuestReclaimToHyp(vm) => own.guest_reclaim_to_hyp(pa, vm, &mut z),
    };
    (r, zeroed)
}

/// Every model state worth starting from, with how to reach it from host-owned.
fn reachable_states() -> Vec<(Model, Vec<Transition>)> {
    use Transition as T;
    vec![
        (Model::Host, vec![]),
        (Model::Hyp, vec![T::HostDonateToHyp]),
        (Model::HypShared { pins: 0 }, vec![T::HostShareWithHyp]),
        (
            Model::HypShared { pins: 1 },
            vec![T::HostShareWithHyp, T::HypPin],
        ),
        (Model::Guest { vm: 1 }, vec![T::HostDonateToGuest(1)]),
        (Model::LentToGuest { vm: 1 }, vec![T::HostShareWithGuest(1)]),
        (
            Model::BorrowedFromGuest { vm: 1, pins: 0 },
            vec![T::HostDonateToGuest(1), T::GuestShareWithHost(1)],
        ),
        (
            Model::BorrowedFromGuest { vm: 1, pins: 2 },
            vec![
                T::HostDonateToGuest(1),
                T::GuestShareWithHost(1),
                T::HostPin,
                T::HostPin,
            ],
        ),
    ]
}

#[test]
fn every_transition_from_every_state() {
    let pa = RAM + 3 * SIZE_4K;
    let mut checked = 0;
    for (start, path) in reachable_states() {
        for i in 0..OPS {
            for vm in [1, 2] {
                let t = op(i, vm);
                let mut own = table(8);
                for p in &path {
                    assert_eq!(apply(&mut own, pa, *p).0, Ok(()));
                }
                assert_eq!(own.info(pa).unwrap(), start.info());
                let (want, next, zero) = start.step(t);
                assert_eq!(own.check(pa, t), want, "check {t:?} from {start:?}");
                let (got, zeroed) = apply(&mut own, pa, t);
                assert_eq!(got, want, "{t:?} from {start:?}");
                assert_eq!(own.info(pa).unwrap(), next.info(), "{t:?} from {start:?}");
                assert_eq!(
                    zeroed,
                    if zero { vec![pa] } else { vec![] },
                    "{t:?} from {start:?}"
                );
                // The neighbours never change, and the whole table stays consistent.
                assert_eq!(own.info(pa - SIZE_4K).unwrap(), PageInfo::HOST_OWNED);
                assert_eq!(own.info(pa + SIZE_4K).unwrap(), PageInfo::HOST_OWNED);
                assert_eq!(own.check_invariants(next.accesses(pa)), []);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * OPS * 2);
}

#[test]
fn bad_addresses_are_einval() {
    let mut own = table(4);
    assert_eq!(
        Ownership::new(RAM + 1, vec![PageMeta::default(); 1]).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        Ownership::new(!0xfffu64, vec![PageMeta::default(); 2]).unwrap_err(),
        Errno::EINVAL
    );
    for pa in [RAM - SIZE_4K, RAM + 4 * SIZE_4K, RAM + 8, 0, u64::MAX] {
        for i in 0..OPS {
            assert_eq!(apply(&mut own, pa, op(i, 1)), (Err(Errno::EINVAL), vec![]));
        }
        assert_eq!(own.info(pa), Err(Errno::EINVAL));
        assert_eq!(own.state(pa, Component::Host), Err(Errno::EINVAL));
        assert!(!own.host_can_access(pa));
        assert_eq!(own.owner(pa), None);
    }
    assert_eq!(own.ram_base(), RAM);
    assert_eq!(own.ram_end(), RAM + 4 * SIZE_4K);
    assert_eq!(table_bytes(1 << 30), 2 << 20);
    assert_eq!(core::mem::size_of::<PageMeta>(), 8);
}

#[test]
fn pin_overflow_is_erange() {
    let mut own = table(1);
    own.host_donate_to_guest(RAM, 4).unwrap();
    own.guest_share_with_host(RAM, 4).unwrap();
    own.force_info(
        RAM,
        PageInfo {
            host_pins: u16::MAX,
            ..own.info(RAM).unwrap()
        },
    )
    .unwrap();
    assert_eq!(own.host_pin(RAM), Err(Errno::ERANGE));
    assert_eq!(own.info(RAM).unwrap().host_pins, u16::MAX);
}

#[test]
fn queries() {
    let mut own = table(4);
    let (a, b, c) = (RAM, RAM + SIZE_4K, RAM + 2 * SIZE_4K);
    own.host_donate_to_guest(a, 7).unwrap();
    own.host_donate_to_hyp(b).unwrap();
    own.host_share_with_guest(c, 7).unwrap();
    assert!(!own.host_can_access(a) && !own.host_can_access(b) && own.host_can_access(c));
    assert_eq!(own.owner(a), Some(Component::Guest(7)));
    assert_eq!(own.owner(b), Some(Component::Hyp));
    assert_eq!(own.owner(c), Some(Component::Host));
    assert_eq!(own.state(a, Component::Guest(7)), Ok(PageState::Owned));
    assert_eq!(own.state(a, Component::Guest(8)), Ok(PageState::NoPage));
    assert_eq!(
        own.state(c, Component::Guest(7)),
        Ok(PageState::SharedBorrowed)
    );
    assert!(own.host_can_access_range(c, c + SIZE_4K));
    assert!(!own.host_can_access_range(b, c + SIZE_4K));
    assert!(own.host_can_access_range(c, RAM + 4 * SIZE_4K));
    assert!(!own.host_can_access_range(c, RAM + 5 * SIZE_4K));
    assert!(!own.host_can_access_range(c, c));
}

fn broken(info: PageInfo) -> Vec<Violation> {
    let mut own = table(2);
    own.force_info(RAM, info).unwrap();
    own.check_invariants([])
}

#[test]
fn checker_reports_broken_tables() {
    use PageState::*;
    let base = PageInfo::HOST_OWNED;
    assert_eq!(table(4).check_invariants([]), []);
    assert_eq!(
        broken(PageInfo { hyp: Owned, ..base }),
        [Violation::OwnedTwice {
            pa: RAM,
            first: Component::Host,
            second: Component::Hyp
        }]
    );
    assert_eq!(
        broken(PageInfo {
            guest: SharedOwned,
            vm: 3,
            ..base
        }),
        [
            Violation::OwnedTwice {
                pa: RAM,
                first: Component::Host,
                second: Component::Guest(3)
            },
            Violation::UnmatchedShare { pa: RAM }
        ]
    );
    assert_eq!(
        broken(PageInfo {
            host: NoPage,
            ..base
        }),
        [Violation::NoOwner { pa: RAM }]
    );
    // Shared on one side only.
    assert_eq!(
        broken(PageInfo {
            host: SharedOwned,
            ..base
        }),
        [Violation::UnmatchedShare { pa: RAM }]
    );
    assert_eq!(
        broken(PageInfo {
            guest: SharedBorrowed,
            vm: 1,
            ..base
        }),
        [Violation::UnmatchedShare { pa: RAM }]
    );
    // Two borrowers.
    assert_eq!(
        broken(PageInfo {
            host: SharedOwned,
            hyp: SharedBorrowed,
            guest: SharedBorrowed,
            vm: 1,
            ..base
        }),
        [Violation::UnmatchedShare { pa: RAM }]
    );
    // Borrowed by host, nobody owns.
    assert_eq!(
        broken(PageInfo {
            host: SharedBorrowed,
            ..base
        }),
        [
            Violation::NoOwner { pa: RAM },
            Violation::UnmatchedShare { pa: RAM }
        ]
    );
    assert_eq!(
        broken(PageInfo {
            host_pins: 1,
            hyp_pins: 2,
            ..base
        }),
        [
            Violation::PinWithoutBorrow {
                pa: RAM,
                who: Component::Host
            },
            Violation::PinWithoutBorrow {
                pa: RAM,
                who: Component::Hyp
            }
        ]
    );
}

#[test]
fn checker_reports_unauthorized_accesses() {
    let mut own = table(4);
    let (a, b) = (RAM, RAM + SIZE_4K);
    own.host_donate_to_guest(a, 1).unwrap();
    own.host_donate_to_guest(b, 2).unwrap();
    own.guest_share_with_host(b, 2).unwrap();
    let acc = |pa, size, who| Access { pa, size, who };
    // The host maps all of RAM in one range: pages a (guest 1's) is reported, b (borrowed) not.
    let v = own.check_invariants([acc(RAM, 4 * SIZE_4K, Component::Host)]);
    assert_eq!(
        v,
        [Violation::Unauthorized {
            pa: a,
            who: Component::Host,
            state: PageState::NoPage
        }]
    );
    // Guest 2 maps guest 1's page; the hyp maps b; guest 2 maps the page it shares.
    let v = own.check_invariants([
        acc(a, SIZE_4K, Component::Guest(2)),
        acc(b, SIZE_4K, Component::Hyp),
        acc(b, SIZE_4K, Component::Guest(2)),
        acc(a, SIZE_4K, Component::Guest(1)),
    ]);
    assert_eq!(
        v,
        [
            Violation::Unauthorized {
                pa: a,
                who: Component::Guest(2),
                state: PageState::NoPage
            },
            Violation::Unauthorized {
                pa: b,
                who: Component::Hyp,
                state: PageState::NoPage
            },
        ]
    );
    // Ranges outside RAM (MMIO) and huge ranges do not overflow or report.
    assert_eq!(
        own.check_invariants([acc(0x900_0000, SIZE_4K, Component::Host)]),
        []
    );
    assert_eq!(
        own.check_invariants([acc(b, u64::MAX, Component::Host)]),
        []
    );
}

/// The pKVM flow end to end with real tables: donate to a guest, share back, and the checker
/// fed from both stage-2s' leaves.
#[test]
fn checker_over_real_stage2_tables() {
    let pages = 1024usize; // 4 MiB of RAM
    let mut own = table(pages);
    let arena = FakeArena::new(64);
    let mut host = Stage2::new(arena.clone(), RecordingTlb::new(), 0, IpaSize::Bits40).unwrap();
    let mut guest = Stage2::new(arena.clone(), RecordingTlb::new(), 1, IpaSize::Bits40).unwrap();
    let ram_hi = RAM + pages as u64 * SIZE_4K;
    let page = RAM + SIZE_2M + 5 * SIZE_4K;
    let gfn = 0x80;

    let gather = |host: &Stage2<FakeArena, RecordingTlb>,
                  guest: &Stage2<FakeArena, RecordingTlb>| {
        let mut acc = Vec::new();
        for m in host.mappings() {
            acc.push(Access {
                pa: m.pa_base,
                size: m.size,
                who: Component::Host,
            });
        }
        for m in guest.mappings() {
            acc.push(Access {
                pa: m.pa_base,
                size: m.size,
                who: Component::Guest(1),
            });
        }
        acc
    };

    // The host faults the whole 2 MiB in; the page is donated: unmap from the host first.
    let m = host
        .map_identity_largest(page, RAM, ram_hi, S2Attrs::NORMAL_RWX, &mut |lo, hi| {
            own.host_can_access_range(lo, hi)
        })
        .unwrap();
    assert_eq!(m.size, SIZE_2M);
    own.check(page, Transition::HostDonateToGuest(1)).unwrap();
    host.unmap(page, SIZE_4K).unwrap();
    own.host_donate_to_guest(page, 1).unwrap();
    guest
        .map(gfn << 12, page, SIZE_4K, S2Attrs::NORMAL_RWX)
        .unwrap();
    assert_eq!(own.check_invariants(gather(&host, &guest)), []);
    // A host fault on the donated page is refused.
    assert_eq!(
        host.map_identity_largest(page, RAM, ram_hi, S2Attrs::NORMAL_RWX, &mut |lo, hi| own
            .host_can_access_range(lo, hi)),
        Err(MapError::Refused)
    );

    // The guest shares it: the host maps it.
    own.guest_share_with_host(page, 1).unwrap();
    let m = host
        .map_identity_largest(page, RAM, ram_hi, S2Attrs::NORMAL_RWX, &mut |lo, hi| {
            own.host_can_access_range(lo, hi)
        })
        .unwrap();
    // The unmap took the host's whole block; every page of it is the host's to reach again, so
    // the fault maps the 2 MiB block afresh.
    assert_eq!(m.size, SIZE_2M);
    assert_eq!(own.check_invariants(gather(&host, &guest)), []);

    // A buggy unshare that forgets the host's mapping is caught.
    own.guest_unshare_from_host(page, 1).unwrap();
    let v = own.check_invariants(gather(&host, &guest));
    assert_eq!(
        v,
        [Violation::Unauthorized {
            pa: page,
            who: Component::Host,
            state: PageState::NoPage
        }]
    );
    // Fixing it (unmapping the page, which takes its block) makes the checker clean again.
    host.unmap(page, SIZE_4K).unwrap();
    assert_eq!(own.check_invariants(gather(&host, &guest)), []);
    assert!(host.tlb().violations.is_empty() && guest.tlb().violations.is_empty());
}
