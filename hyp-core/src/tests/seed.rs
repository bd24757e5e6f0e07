//! One test per cell of the seed table (6 rows x 6 columns), each deciding its cell from
//! behaviour: which path and physical page served a fault, whether a memory-fault exit came
//! back, whether a host access was refused, whether a configuration was refused.

use super::*;

/// Columns 1 and 2: which path served the fault.
#[derive(Debug, PartialEq, Eq)]
enum Via {
    /// `kvm_gmem_get_pfn()`.
    GetPfn,
    /// `slot->userspace_addr`.
    UserspaceAddr,
}

/// Column 3: does KVM check for private/shared mismatches against the attributes?
#[derive(Debug, PartialEq, Eq)]
enum Mismatch {
    MustCheck,
    DontCheck,
}

/// Column 4: what `kvm_gmem_get_pfn()` validates.
#[derive(Debug, PartialEq, Eq)]
enum GetPfnValidation {
    /// gmem keeps no shareability: there is nothing to validate ("No need").
    NothingToValidate,
    /// Shareability is tracked but faults carry no private/shared bit: served whatever the
    /// shareability ("Can't, no concept of private or shared faults").
    CannotNoFaultKind,
    /// Private faults need GUEST and shared faults need ALL.
    AllOrGuestByIsPrivate,
    /// Only private faults reach get_pfn, and they need GUEST ("== GUEST").
    GuestOnlyPrivateReach,
}

/// Column 5: what the host's mmap fault path validates.
#[derive(Debug, PartialEq, Eq)]
enum HostValidation {
    /// The host cannot map gmem at all: it is not used for shared memory ("No need").
    NotMappable,
    /// Host access needs ALL ("== ALL").
    MustBeAll,
    /// Host access always allowed ("No need": no private/shared concept).
    NoCheck,
}

/// Column 6: is shareability tracking needed?
#[derive(Debug, PartialEq, Eq)]
enum Tracking {
    Needed,
    NotNeeded,
}

/// Which path served a mapped fault, cross-checked against the physical pages: a gmem fault
/// must get the gmem page; a userspace_addr fault must get the page the host's
/// userspace_addr view reaches (for `anon`, a page that is not gmem's).
fn served_by(r: &mut Rig, page: u64, res: FaultResolution) -> Via {
    let FaultResolution::Map { pa, source, .. } = res else {
        panic!("expected a mapping, got {res:?}");
    };
    match source {
        FaultSource::Gmem => {
            assert_eq!(Some(pa), r.gmem_pa(page), "gmem fault served another page");
            Via::GetPfn
        }
        FaultSource::UserspaceAnon | FaultSource::UserspaceGmem => {
            let host =
                r.w.host_uaddr_fault(r.vm, r.slot, page * PAGE_SIZE, &mut r.a)
                    .unwrap();
            assert_eq!(pa, host, "userspace_addr fault served another page");
            if source == FaultSource::UserspaceAnon {
                assert_ne!(Some(pa), r.gmem_pa(page));
            }
            Via::UserspaceAddr
        }
        FaultSource::HostShared => {
            panic!("a memslot fault served by a host-shared page")
        }
    }
}

fn col1(row: Row) -> Via {
    let mut r = Rig::row(row);
    let kind = if r.ty == VmType::Coco {
        Kind::Shared
    } else {
        Kind::Plain
    };
    // A shared page: ALL (if tracked), attribute shared.
    let page = 3;
    if r.tracked() {
        r.set_share(page, Shareability::All).unwrap();
    }
    r.set_attr(page, false);
    let res = r.fault(page, kind, Access::Write);
    served_by(&mut r, page, res)
}

fn col2(row: Row) -> Via {
    let mut r = Rig::row(row);
    let kind = if r.ty == VmType::Coco {
        Kind::Private
    } else {
        Kind::Plain
    };
    let page = 5;
    r.agree(page, kind);
    let res = r.fault(page, kind, Access::Read);
    served_by(&mut r, page, res)
}

fn col3(row: Row) -> Mismatch {
    let mut r = Rig::row(row);
    let mut checked = false;
    let mut page = 0;
    for &kind in r.kinds() {
        // Shareability agrees with the access; the attribute says the opposite (for accesses
        // without a private/shared bit, try both attribute values).
        let attrs: &[bool] = match kind {
            Kind::Private => &[false],
            Kind::Shared => &[true],
            Kind::Plain => &[false, true],
        };
        for &attr in attrs {
            r.agree(page, kind);
            r.set_attr(page, attr);
            match r.fault(page, kind, Access::Read) {
                FaultResolution::MemoryFault { gpa, size, flags } => {
                    assert_eq!(gpa, GPA + page * PAGE_SIZE);
                    assert_eq!(size, PAGE_SIZE);
                    assert_eq!(
                        flags.contains(MemoryFaultFlags::PRIVATE),
                        kind == Kind::Private
                    );
                    // It is the attribute that refused: fixing it lets the fault through.
                    r.set_attr(page, kind == Kind::Private);
                    assert!(matches!(
                        r.fault(page, kind, Access::Read),
                        FaultResolution::Map { .. }
                    ));
                    checked = true;
                }
                FaultResolution::Map { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
            page += 1;
        }
    }
    if checked {
        Mismatch::MustCheck
    } else {
        Mismatch::DontCheck
    }
}

fn col4(row: Row) -> GetPfnValidation {
    let mut r = Rig::row(row);
    let probe = r.set_share(0, Shareability::Guest);
    if let Err(e) = probe {
        // gmem keeps no shareability; faults are served whatever gmem would say.
        assert_eq!(e.errno, Errno::EINVAL);
        for &kind in r.kinds() {
            r.set_attr(1, kind != Kind::Shared);
            assert!(matches!(
                r.fault(1, kind, Access::Read),
                FaultResolution::Map { .. }
            ));
        }
        return GetPfnValidation::NothingToValidate;
    }
    let mut reaches = [false, false];
    let mut validated = [false, false];
    let mut page = 2;
    for &kind in r.kinds() {
        let i = usize::from(kind == Kind::Shared);
        // With agreeing shareability: does this kind of fault reach get_pfn?
        r.agree(page, kind);
        let res = r.fault(page, kind, Access::Read);
        let FaultResolution::Map { source, .. } = res else {
            panic!("agreeing fault refused: {res:?}");
        };
        page += 1;
        if source != FaultSource::Gmem {
            continue;
        }
        reaches[i] = true;
        // With the opposite shareability (attribute still agreeing).
        let opposite = if kind == Kind::Shared {
            Shareability::Guest
        } else {
            Shareability::All
        };
        r.set_share(page, opposite).unwrap();
        r.set_attr(page, kind != Kind::Shared);
        match r.fault(page, kind, Access::Read) {
            FaultResolution::MemoryFault { flags, .. } => {
                assert_eq!(
                    flags.contains(MemoryFaultFlags::PRIVATE),
                    kind == Kind::Private
                );
                validated[i] = true;
            }
            FaultResolution::Map { source, .. } => assert_eq!(source, FaultSource::Gmem),
            other => panic!("unexpected {other:?}"),
        }
        page += 1;
    }
    match (r.ty, reaches, validated) {
        (VmType::Coco, [true, true], [true, true]) => GetPfnValidation::AllOrGuestByIsPrivate,
        (VmType::Coco, [true, false], [true, false]) => GetPfnValidation::GuestOnlyPrivateReach,
        (_, [true, false], [false, false]) => GetPfnValidation::CannotNoFaultKind,
        other => panic!("no seed cell matches {other:?}"),
    }
}

fn col5(row: Row) -> HostValidation {
    let mut r = Rig::row(row);
    if r.host(0) == Err(Errno::ENODEV) {
        return HostValidation::NotMappable;
    }
    // A page the guest holds privately, if there is such a state:
    let guest_page_refused = if r.tracked() {
        r.set_share(1, Shareability::Guest).unwrap();
        match r.host(1) {
            Err(Errno::EFAULT) => true,
            Ok(_) => false,
            Err(e) => panic!("unexpected {e}"),
        }
    } else {
        // No shareability: after the guest faulted a page in, the host still reaches it.
        let kind = r.kinds()[0];
        r.set_attr(1, kind != Kind::Shared);
        let res = r.fault(1, kind, Access::Write);
        assert!(matches!(res, FaultResolution::Map { .. }));
        r.host(1).is_err()
    };
    // A page in the ALL state (or any page without tracking) is reachable.
    if r.tracked() {
        r.set_share(2, Shareability::All).unwrap();
    }
    assert!(r.host(2).is_ok());
    if guest_page_refused {
        HostValidation::MustBeAll
    } else {
        HostValidation::NoCheck
    }
}

fn col6(row: Row) -> Tracking {
    let mut r = Rig::row(row);
    let converts = r.set_share(0, Shareability::All).is_ok();
    let mut c = config(row);
    c.gflags.remove(GmemFlags::TRACK_SHAREABILITY);
    let without = Rig::build(&c);
    match (converts, without) {
        (true, Err(Errno::EINVAL)) => Tracking::Needed,
        (false, Ok(_)) => Tracking::NotNeeded,
        (c, w) => panic!("inconsistent: converts={c} without tracking={:?}", w.err()),
    }
}

macro_rules! cell {
    ($name:ident, $f:ident, $row:expr, $expect:expr) => {
        #[test]
        fn $name() {
            assert_eq!($f($row), $expect);
        }
    };
}

// Row "Legacy": coco, gmem without flags, userspace_addr = anon.
cell!(
    seed_legacy_col1_shared_faults_via_userspace_addr,
    col1,
    Row::Legacy,
    Via::UserspaceAddr
);
cell!(
    seed_legacy_col2_private_faults_via_get_pfn,
    col2,
    Row::Legacy,
    Via::GetPfn
);
cell!(
    seed_legacy_col3_must_check_mismatches,
    col3,
    Row::Legacy,
    Mismatch::MustCheck
);
cell!(
    seed_legacy_col4_no_validation_needed,
    col4,
    Row::Legacy,
    GetPfnValidation::NothingToValidate
);
cell!(
    seed_legacy_col5_no_host_mapping,
    col5,
    Row::Legacy,
    HostValidation::NotMappable
);
cell!(
    seed_legacy_col6_no_tracking,
    col6,
    Row::Legacy,
    Tracking::NotNeeded
);

// Row "pKVM".
cell!(
    seed_pkvm_col1_shared_faults_via_gmem,
    col1,
    Row::Pkvm,
    Via::GetPfn
);
cell!(
    seed_pkvm_col2_private_faults_via_gmem,
    col2,
    Row::Pkvm,
    Via::GetPfn
);
cell!(
    seed_pkvm_col3_dont_check_mismatches,
    col3,
    Row::Pkvm,
    Mismatch::DontCheck
);
cell!(
    seed_pkvm_col4_cannot_validate_no_fault_kind,
    col4,
    Row::Pkvm,
    GetPfnValidation::CannotNoFaultKind
);
cell!(
    seed_pkvm_col5_host_needs_all,
    col5,
    Row::Pkvm,
    HostValidation::MustBeAll
);
cell!(
    seed_pkvm_col6_tracking_needed,
    col6,
    Row::Pkvm,
    Tracking::Needed
);

// Row "Option 1": coco, all faults via gmem.
cell!(
    seed_opt1_col1_shared_faults_via_gmem,
    col1,
    Row::Opt1,
    Via::GetPfn
);
cell!(
    seed_opt1_col2_private_faults_via_gmem,
    col2,
    Row::Opt1,
    Via::GetPfn
);
cell!(
    seed_opt1_col3_dont_check_mismatches,
    col3,
    Row::Opt1,
    Mismatch::DontCheck
);
cell!(
    seed_opt1_col4_all_or_guest_by_is_private,
    col4,
    Row::Opt1,
    GetPfnValidation::AllOrGuestByIsPrivate
);
cell!(
    seed_opt1_col5_host_needs_all,
    col5,
    Row::Opt1,
    HostValidation::MustBeAll
);
cell!(
    seed_opt1_col6_tracking_needed,
    col6,
    Row::Opt1,
    Tracking::Needed
);

// Row "Option 2": coco, shared faults via userspace_addr = gmem view.
cell!(
    seed_opt2_col1_shared_faults_via_userspace_addr,
    col1,
    Row::Opt2,
    Via::UserspaceAddr
);
cell!(
    seed_opt2_col2_private_faults_via_gmem,
    col2,
    Row::Opt2,
    Via::GetPfn
);
cell!(
    seed_opt2_col3_dont_check_mismatches,
    col3,
    Row::Opt2,
    Mismatch::DontCheck
);
cell!(
    seed_opt2_col4_validates_guest_for_private,
    col4,
    Row::Opt2,
    GetPfnValidation::GuestOnlyPrivateReach
);
cell!(
    seed_opt2_col5_host_needs_all,
    col5,
    Row::Opt2,
    HostValidation::MustBeAll
);
cell!(
    seed_opt2_col6_tracking_needed,
    col6,
    Row::Opt2,
    Tracking::Needed
);

// Row "non-coco, faults via get_pfn" (Patrick).
cell!(
    seed_noncoco_getpfn_col1_shared_faults_via_gmem,
    col1,
    Row::NonCocoGetPfn,
    Via::GetPfn
);
cell!(
    seed_noncoco_getpfn_col2_private_faults_via_gmem,
    col2,
    Row::NonCocoGetPfn,
    Via::GetPfn
);
cell!(
    seed_noncoco_getpfn_col3_dont_check_mismatches,
    col3,
    Row::NonCocoGetPfn,
    Mismatch::DontCheck
);
cell!(
    seed_noncoco_getpfn_col4_no_validation_needed,
    col4,
    Row::NonCocoGetPfn,
    GetPfnValidation::NothingToValidate
);
cell!(
    seed_noncoco_getpfn_col5_no_host_check,
    col5,
    Row::NonCocoGetPfn,
    HostValidation::NoCheck
);
cell!(
    seed_noncoco_getpfn_col6_no_tracking,
    col6,
    Row::NonCocoGetPfn,
    Tracking::NotNeeded
);

// Row "non-coco, faults via userspace_addr" (Nikita).
cell!(
    seed_noncoco_uaddr_col1_shared_faults_via_userspace_addr,
    col1,
    Row::NonCocoUaddr,
    Via::UserspaceAddr
);
cell!(
    seed_noncoco_uaddr_col2_private_faults_via_userspace_addr,
    col2,
    Row::NonCocoUaddr,
    Via::UserspaceAddr
);
cell!(
    seed_noncoco_uaddr_col3_dont_check_mismatches,
    col3,
    Row::NonCocoUaddr,
    Mismatch::DontCheck
);
cell!(
    seed_noncoco_uaddr_col4_no_validation_needed,
    col4,
    Row::NonCocoUaddr,
    GetPfnValidation::NothingToValidate
);
cell!(
    seed_noncoco_uaddr_col5_no_host_check,
    col5,
    Row::NonCocoUaddr,
    HostValidation::NoCheck
);
cell!(
    seed_noncoco_uaddr_col6_no_tracking,
    col6,
    Row::NonCocoUaddr,
    Tracking::NotNeeded
);
