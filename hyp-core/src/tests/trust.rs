//! Trust rules in the core (SEMANTICS.md "Trust"): pKVM first touch and frozen memslots (9),
//! results from state (2), one binding per gmem page and one backing per IPA (4), bounded work
//! on huge files (7), and the checker's view of what a guest may have mapped (1, 3).

use super::*;
use abi::guest::RANGE_CALL_MAX_GRANULES;

const P: u64 = PAGE_SIZE;
const B: u64 = BLOCK_SIZE;

fn pkvm_shared_rig(pages: u64) -> (World, FakeArena, VmHandle, GmemHandle, SlotId) {
    let mut w = World::new();
    let vm = w.create_vm(VmType::Pkvm, IPA_BITS).unwrap();
    let flags = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY | GmemFlags::INIT_SHARED;
    let g = w.create_gmem(vm, pages * P, flags.bits()).unwrap();
    let slot = w
        .create_memslot(
            vm,
            &MemslotSpec {
                gpa: GPA,
                size: pages * P,
                gmem: Some(GmemBinding { gmem: g, offset: 0 }),
                userspace_addr: UserspaceAddr::None,
                flags: (MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES)
                    .bits(),
            },
        )
        .unwrap();
    (w, FakeArena::new(0x4000_0000, 4096), vm, g, slot)
}

fn guest_share(w: &mut World, a: &mut FakeArena, g: GmemHandle, page: u64, to: ConvertTo) {
    w.convert(
        g,
        &ConvertRequest {
            offset: page * P,
            size: P,
            to,
            mode: ContentMode::Preserve,
            initiator: Initiator::Guest,
        },
        a,
    )
    .unwrap();
}

fn mapped(r: FaultResolution) -> (u64, bool, u64) {
    match r {
        FaultResolution::Map {
            pa,
            host_access,
            size,
            ..
        } => (pa, host_access, size),
        other => panic!("expected a mapping, got {other:?}"),
    }
}

#[test]
fn pkvm_first_touch_takes_an_init_shared_page_with_its_content() {
    let (mut w, mut a, vm, g, _) = pkvm_shared_rig(4);
    a.set_blocks(false);
    // The host fills page 1 while it is shared.
    let pa = w.host_fault(g, P, &mut a).unwrap();
    assert!(a.write_byte(pa, 0x5a));
    assert!(w.gmem(g).unwrap().host_stage2_allowed(P));
    // The guest's first touch takes it: same page, content kept, the host loses it.
    let (got, host_access, _) = mapped(w.resolve_fault(vm, GPA + P, Access::Read, &mut a).unwrap());
    assert_eq!((got, host_access), (pa, false));
    assert_eq!(a.read_byte(pa), Some(0x5a));
    let f = w.gmem(g).unwrap();
    assert_eq!(f.shareability(P), Some(Shareability::Guest));
    assert!(!f.guest_shared(P) && !f.host_stage2_allowed(P));
    assert_eq!(w.host_fault(g, P, &mut a), Err(Errno::EFAULT));
    // Only the guest's own MEM_SHARE gives it back; then a fault maps it host-reachable.
    guest_share(&mut w, &mut a, g, 1, ConvertTo::Shared);
    assert!(w.gmem(g).unwrap().guest_shared(P));
    let (_, host_access, _) = mapped(w.resolve_fault(vm, GPA + P, Access::Write, &mut a).unwrap());
    assert!(host_access);
    assert_eq!(w.host_fault(g, P, &mut a), Ok(pa));
    // Unsharing clears the mark: the page is private again, not "untouched".
    guest_share(&mut w, &mut a, g, 1, ConvertTo::Private);
    assert!(!w.gmem(g).unwrap().guest_shared(P));
    // A punch keeps shareability and the marks.
    guest_share(&mut w, &mut a, g, 1, ConvertTo::Shared);
    w.punch(g, P, P, &mut a).unwrap();
    assert!(w.gmem(g).unwrap().guest_shared(P));
    assert_eq!(w.gmem(g).unwrap().shareability(P), Some(Shareability::All));
}

#[test]
fn a_page_the_host_pins_cannot_be_taken() {
    let (mut w, mut a, vm, g, _) = pkvm_shared_rig(4);
    a.set_blocks(false);
    w.pin(g, 2 * P, &mut a).unwrap();
    assert_eq!(
        w.resolve_fault(vm, GPA + 2 * P, Access::Write, &mut a),
        Ok(FaultResolution::MemoryFault {
            gpa: GPA + 2 * P,
            size: P,
            flags: MemoryFaultFlags::WRITE
        })
    );
    assert_eq!(
        w.gmem(g).unwrap().shareability(2 * P),
        Some(Shareability::All)
    );
    w.unpin(g, 2 * P).unwrap();
    let (_, host_access, _) = mapped(
        w.resolve_fault(vm, GPA + 2 * P, Access::Write, &mut a)
            .unwrap(),
    );
    assert!(!host_access);
}

#[test]
fn a_pkvm_block_is_taken_whole_or_not_mapped_as_a_block() {
    let (mut w, mut a, vm, g, _) = pkvm_shared_rig(2 * BLOCK_PAGES);
    // Every page of the first 2 MiB may be taken: one block, all GUEST.
    let (_, host_access, size) = mapped(w.resolve_fault(vm, GPA, Access::Read, &mut a).unwrap());
    assert_eq!((size, host_access), (B, false));
    let f = w.gmem(g).unwrap();
    assert!(f
        .shareability_store()
        .unwrap()
        .all_eq(0, BLOCK_PAGES, Shareability::Guest));
    // In the second, one page is pinned: no block; the others are taken one by one.
    w.pin(g, B + 7 * P, &mut a).unwrap();
    let (_, _, size) = mapped(w.resolve_fault(vm, GPA + B, Access::Read, &mut a).unwrap());
    assert_eq!(size, P);
    assert!(matches!(
        w.resolve_fault(vm, GPA + B + 7 * P, Access::Read, &mut a),
        Ok(FaultResolution::MemoryFault { .. })
    ));
    // A block mixing the guest's shared pages and taken ones is not uniform: 4 KiB.
    guest_share(&mut w, &mut a, g, 3, ConvertTo::Shared);
    let (_, _, size) = mapped(w.resolve_fault(vm, GPA + P, Access::Read, &mut a).unwrap());
    assert_eq!(size, P);
}

#[test]
fn mem_share_and_unshare_of_untouched_pages_first_take_them() {
    let (mut w, mut a, vm, g, _) = pkvm_shared_rig(8);
    // Sharing an untouched INIT_SHARED page succeeds: taken, then valid to share.
    let inv = w.guest_first_touch(vm, GPA, 2).unwrap();
    assert_eq!(
        inv.host_unmap,
        [GmemRange {
            gmem: g,
            offset: 0,
            size: 2 * P
        }]
    );
    assert!(w.guest_range(vm, GPA, 2, ConvertTo::Shared).is_ok());
    // Unsharing an untouched one: taken, then refused (it is private already).
    w.guest_first_touch(vm, GPA + 4 * P, 1).unwrap();
    assert_eq!(
        w.guest_range(vm, GPA + 4 * P, 1, ConvertTo::Private),
        Err(Errno::EPERM)
    );
    assert_eq!(
        w.gmem(g).unwrap().shareability(4 * P),
        Some(Shareability::Guest)
    );
    // A pinned page in the range: nothing is taken at all.
    w.pin(g, 6 * P, &mut a).unwrap();
    assert_eq!(w.guest_first_touch(vm, GPA + 5 * P, 2), Err(Errno::EBUSY));
    assert_eq!(
        w.gmem(g).unwrap().shareability(5 * P),
        Some(Shareability::All)
    );
    // Outside every memslot, or unaligned: EINVAL; other VM types: nothing to take.
    assert_eq!(w.guest_first_touch(vm, 0, 1), Err(Errno::EINVAL));
    assert_eq!(w.guest_first_touch(vm, GPA + 1, 1), Err(Errno::EINVAL));
    let mut r = Rig::row(Row::Opt1);
    assert_eq!(
        r.w.guest_first_touch(r.vm, GPA, 1),
        Ok(Invalidation::default())
    );
    let _ = RANGE_CALL_MAX_GRANULES;
}

#[test]
fn pages_done_come_from_state_not_from_the_host() {
    // pKVM: tracked, no attribute check.
    let (mut w, mut a, vm, g, _) = pkvm_shared_rig(8);
    w.guest_first_touch(vm, GPA, 4).unwrap();
    let piece = w.guest_range(vm, GPA, 4, ConvertTo::Shared).unwrap()[0];
    assert!(piece.tracked && !piece.attr_checked);
    // The host did nothing (refused, or lied): nothing done.
    assert_eq!(w.guest_pages_done(vm, &piece, ConvertTo::Shared), 0);
    // It converted the first two only: two done, counted from the start.
    for p in [0, 1, 3] {
        guest_share(&mut w, &mut a, g, p, ConvertTo::Shared);
    }
    assert_eq!(w.guest_pages_done(vm, &piece, ConvertTo::Shared), 2);
    guest_share(&mut w, &mut a, g, 2, ConvertTo::Shared);
    assert_eq!(w.guest_pages_done(vm, &piece, ConvertTo::Shared), 4);

    // Legacy (coco, untracked): the attribute is the state.
    let mut r = Rig::row(Row::Legacy);
    assert_eq!(
        r.w.guest_range(r.vm, GPA, 1, ConvertTo::Shared),
        Err(Errno::EPERM),
        "sharing a gfn that is shared already changes nothing"
    );
    r.set_attr(0, true);
    let piece = r.w.guest_range(r.vm, GPA, 1, ConvertTo::Shared).unwrap()[0];
    assert!(!piece.tracked && piece.attr_checked);
    assert_eq!(r.w.guest_pages_done(r.vm, &piece, ConvertTo::Shared), 0);
    r.set_attr(0, false);
    assert_eq!(r.w.guest_pages_done(r.vm, &piece, ConvertTo::Shared), 1);

    // Tracking and mismatch checks on the memslot: both must change.
    let mut c = config(Row::Opt1);
    c.sflags = MemslotFlags::ALWAYS_FAULT_FROM_GMEM;
    let mut r = Rig::build(&c).unwrap();
    let piece = r.w.guest_range(r.vm, GPA, 1, ConvertTo::Shared).unwrap()[0];
    assert!(piece.tracked && piece.attr_checked);
    r.set_attr(0, true);
    r.set_share(0, Shareability::All).unwrap();
    assert_eq!(r.w.guest_pages_done(r.vm, &piece, ConvertTo::Shared), 0);
    r.set_attr(0, false);
    assert_eq!(r.w.guest_pages_done(r.vm, &piece, ConvertTo::Shared), 1);
    // The VM gone: nothing.
    r.w.destroy_vm(r.vm, &mut r.a).unwrap();
    assert_eq!(r.w.guest_pages_done(r.vm, &piece, ConvertTo::Shared), 0);
}

fn spec(gpa: u64, size: u64, g: Option<(GmemHandle, u64)>, flags: MemslotFlags) -> MemslotSpec {
    MemslotSpec {
        gpa,
        size,
        gmem: g.map(|(gmem, offset)| GmemBinding { gmem, offset }),
        userspace_addr: UserspaceAddr::None,
        flags: flags.bits(),
    }
}

#[test]
fn pkvm_memslots_freeze_at_the_first_run() {
    let (mut w, mut a, vm, g, slot) = pkvm_shared_rig(16);
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    let g2 = w
        .create_gmem(
            vm,
            16 * P,
            (GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY).bits(),
        )
        .unwrap();
    w.vcpu_started(vm).unwrap();
    assert_eq!(
        w.create_memslot(vm, &spec(0x9000_0000, 16 * P, Some((g2, 0)), both)),
        Err(Errno::EPERM)
    );
    // The argument and flag checks come first, the state checks after (SEMANTICS.md rule 9:
    // "EPERM, after the argument checks").
    assert_eq!(
        w.create_memslot(vm, &spec(0x9000_0001, 16 * P, Some((g2, 0)), both)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        w.create_memslot(
            vm,
            &spec(
                0x9000_0000,
                16 * P,
                Some((g2, 0)),
                MemslotFlags::DONT_CHECK_MISMATCHES
            )
        ),
        Err(Errno::EINVAL),
        "a pkvm memslot needs ALWAYS_FAULT_FROM_GMEM"
    );
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, 16 * P, Some((g2, 0)), both)),
        Err(Errno::EPERM),
        "re-pointing a frozen IPA"
    );
    assert_eq!(
        w.create_memslot(vm, &spec(0x9000_0000, 16 * P, Some((g, 0)), both)),
        Err(Errno::EPERM)
    );
    assert_eq!(w.delete_memslot(vm, SlotId(99), &mut a), Err(Errno::ENOENT));
    assert_eq!(w.delete_memslot(vm, slot, &mut a), Err(Errno::EPERM));
    assert_eq!(w.gpa_to_gmem(vm, GPA).map(|(s, _)| s), Ok(slot));
    // Other VM types are not frozen.
    let mut r = Rig::row(Row::Opt1);
    r.w.vcpu_started(r.vm).unwrap();
    assert!(r.w.delete_memslot(r.vm, r.slot, &mut r.a).is_ok());
}

#[test]
fn one_binding_per_gmem_page_in_linux_order() {
    let mut r = Rig::row(Row::Opt1);
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    // The same gmem range again at another GPA: EINVAL (kvm_gmem_bind).
    assert_eq!(
        r.w.create_memslot(r.vm, &spec(0x9000_0000, 4 * P, Some((r.g, 4 * P)), both)),
        Err(Errno::EINVAL)
    );
    // Flags first, then the GPA overlap, then the binding.
    assert_eq!(
        r.w.create_memslot(
            r.vm,
            &MemslotSpec {
                flags: 1 << 9,
                ..spec(GPA, 4 * P, Some((r.g, 0)), both)
            }
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.w.create_memslot(r.vm, &spec(GPA, 4 * P, Some((r.g, 0)), both)),
        Err(Errno::EEXIST)
    );
    // Another VM's gmem: EINVAL.
    let other = r.w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    let og =
        r.w.create_gmem(
            other,
            4 * P,
            (GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY).bits(),
        )
        .unwrap();
    assert_eq!(
        r.w.create_memslot(r.vm, &spec(0x9000_0000, 4 * P, Some((og, 0)), both)),
        Err(Errno::EINVAL)
    );
    // After the slot is gone, the range can be bound again.
    r.w.delete_memslot(r.vm, r.slot, &mut r.a).unwrap();
    assert!(r
        .w
        .create_memslot(r.vm, &spec(0x9000_0000, 4 * P, Some((r.g, 4 * P)), both))
        .is_ok());
}

#[test]
fn one_backing_per_ipa_host_shared_pages() {
    // pkvm: never.
    let (mut w, _, vm, _, _) = pkvm_shared_rig(4);
    assert_eq!(
        w.map_host_shared(vm, 0x9000_0000, 0x5000_0000, 1),
        Err(Errno::EPERM)
    );
    // plain: a memslot and host pages never overlap, whichever comes first.
    let mut r = Rig::row(Row::NonCocoGetPfn);
    assert_eq!(
        r.w.map_host_shared(r.vm, GPA + 3 * P, 0x5000_0000, 1),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        r.w.map_host_shared(r.vm, 0x9000_0001, 0x5000_0000, 1),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.w.map_host_shared(r.vm, 0x9000_0000, 0x5000_0000, 0),
        Err(Errno::EINVAL)
    );
    r.w.map_host_shared(r.vm, 0x9000_0000, 0x5000_0000, 2)
        .unwrap();
    assert_eq!(
        r.w.map_host_shared(r.vm, 0x9000_1000, 0x5100_0000, 1),
        Err(Errno::EEXIST)
    );
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    let g2 =
        r.w.create_gmem(r.vm, 16 * P, GmemFlags::MMAP.bits())
            .unwrap();
    assert_eq!(
        r.w.create_memslot(r.vm, &spec(0x8fff_f000, 16 * P, Some((g2, 0)), both)),
        Err(Errno::EEXIST)
    );
    // A guest fault there is served by the host page.
    assert_eq!(
        r.w.resolve_fault(r.vm, 0x9000_1008, Access::Read, &mut r.a),
        Ok(FaultResolution::Map {
            ipa: 0x9000_1000,
            gpa: 0x9000_1000,
            pa: 0x5000_1000,
            source: FaultSource::HostShared,
            slot: None,
            size: P,
            host_access: true
        })
    );
    assert_eq!(
        r.w.expected_mapping(r.vm, 0x9000_1000),
        Some((0x5000_1000, false))
    );
    // coco: at the shared alias only.
    let mut c = Rig::row(Row::Opt1);
    let bit = c.w.vm(c.vm).unwrap().shared_bit().unwrap();
    assert_eq!(
        c.w.map_host_shared(c.vm, 0x9000_0000, 0x5000_0000, 1),
        Err(Errno::EINVAL),
        "coco: the shared alias only"
    );
    c.w.map_host_shared(c.vm, 0x9000_0000 | bit, 0x5000_0000, 1)
        .unwrap();
    assert!(matches!(
        c.w.resolve_fault(c.vm, 0x9000_0000 | bit, Access::Read, &mut c.a),
        Ok(FaultResolution::Map {
            pa: 0x5000_0000,
            ..
        })
    ));
    assert_eq!(
        c.w.resolve_fault(c.vm, 0x9000_0000, Access::Read, &mut c.a),
        Ok(FaultResolution::Mmio { ipa: 0x9000_0000 })
    );
    let td = c.w.destroy_vm(c.vm, &mut c.a).unwrap();
    assert_eq!(td.host_shared, [0x5000_0000]);
}

#[test]
fn huge_files_cost_what_is_in_them() {
    let mut w = World::new();
    let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    let tracked = (GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY).bits();
    let max = abi::host::GMEM_MAX_SIZE;
    assert_eq!(w.create_gmem(vm, max + P, tracked), Err(Errno::EINVAL));
    assert_eq!(w.create_gmem(vm, !(P - 1), tracked), Err(Errno::EINVAL));
    let g = w.create_gmem(vm, max, tracked).unwrap();
    let mut a = FakeArena::new(0x4000_0000, 64);
    // Whole-file operations on 2^36 pages finish at once: they walk runs and pages present.
    let req = |to| ConvertRequest {
        offset: 0,
        size: max,
        to,
        mode: ContentMode::Zero,
        initiator: Initiator::Host,
    };
    w.convert(g, &req(ConvertTo::Shared), &mut a).unwrap();
    for off in [0, max / 2, max - P] {
        w.host_fault(g, off, &mut a).unwrap();
    }
    w.convert(g, &req(ConvertTo::Shared), &mut a).unwrap();
    assert_eq!(w.gmem(g).unwrap().allocated_in(0, max).len(), 3);
    assert_eq!(
        w.gmem(g).unwrap().punch_plan(0, max).map(|p| p.len()),
        Ok(3)
    );
    let inv = w.punch(g, 0, max, &mut a).unwrap();
    assert_eq!(inv.freed.len(), 3);
    assert_eq!(w.gmem(g).unwrap().allocated_pages(), 0);
}

#[test]
fn the_checker_knows_what_a_guest_may_have_mapped() {
    // coco, Option 1: a private page, then made shared by the host.
    let mut r = Rig::row(Row::Opt1);
    r.a.set_blocks(false);
    let ipa = r.ipa(2, Kind::Private);
    let (pa, _, _) = mapped(r.fault(2, Kind::Private, Access::Write));
    assert_eq!(r.w.expected_mapping(r.vm, ipa), Some((pa, true)));
    assert_eq!(r.w.expected_mapping(r.vm, r.ipa(2, Kind::Shared)), None);
    r.w.convert(
        r.g,
        &ConvertRequest {
            offset: 2 * P,
            size: P,
            to: ConvertTo::Shared,
            mode: ContentMode::Zero,
            initiator: Initiator::Host,
        },
        &mut r.a,
    )
    .unwrap();
    // A private-alias mapping left over the shared page would now be reported.
    assert_eq!(r.w.expected_mapping(r.vm, ipa), None);
    assert_eq!(
        r.w.expected_mapping(r.vm, r.ipa(2, Kind::Shared)),
        Some((pa, false))
    );
    // A punched page: nothing may map it.
    r.w.punch(r.g, 2 * P, P, &mut r.a).unwrap();
    assert_eq!(r.w.expected_mapping(r.vm, r.ipa(2, Kind::Shared)), None);
    // pkvm: an untaken page is never mapped; a taken one is private.
    let (mut w, mut a, vm, g, _) = pkvm_shared_rig(4);
    a.set_blocks(false);
    let pa = w.host_fault(g, 0, &mut a).unwrap();
    assert_eq!(w.expected_mapping(vm, GPA), None);
    w.resolve_fault(vm, GPA, Access::Read, &mut a).unwrap();
    assert_eq!(w.expected_mapping(vm, GPA), Some((pa, true)));
    // Outside everything: nothing.
    assert_eq!(w.expected_mapping(vm, 0x1000), None);
    assert_eq!(w.expected_mapping(vm, u64::MAX), None);
}
