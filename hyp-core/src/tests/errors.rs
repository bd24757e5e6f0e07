//! Every error of the gmem, memslot, attribute and conversion rules, with its exact errno; and
//! the behaviour around them (nothing changes on failure, content, invalidation lists).

use super::*;
use alloc::vec::Vec;

const P: u64 = PAGE_SIZE;

fn mt() -> GmemFlags {
    GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY
}

fn both() -> MemslotFlags {
    MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES
}

fn spec(gpa: u64, size: u64, gmem: Option<(GmemHandle, u64)>) -> MemslotSpec {
    MemslotSpec {
        gpa,
        size,
        gmem: gmem.map(|(gmem, offset)| GmemBinding { gmem, offset }),
        userspace_addr: UserspaceAddr::None,
        flags: 0,
    }
}

fn req(offset: u64, size: u64, to: ConvertTo, mode: ContentMode, who: Initiator) -> ConvertRequest {
    ConvertRequest {
        offset,
        size,
        to,
        mode,
        initiator: who,
    }
}

fn errno<T: core::fmt::Debug>(r: Result<T, ConvertError>) -> Errno {
    r.unwrap_err().errno
}

// ---------------------------------------------------------------- gmem creation

#[test]
fn gmem_create_errors() {
    let mut w = World::new();
    let vm = w.create_vm(VmType::Pkvm, IPA_BITS).unwrap();
    assert_eq!(w.create_gmem(vm, 4 * P, 1 << 4), Err(Errno::EINVAL));
    assert_eq!(w.create_gmem(vm, 4 * P, 1 << 63), Err(Errno::EINVAL));
    assert_eq!(w.create_gmem(vm, 0, 0), Err(Errno::EINVAL));
    assert_eq!(w.create_gmem(vm, P + 1, 0), Err(Errno::EINVAL));
    assert_eq!(w.create_gmem(vm, 100, 0), Err(Errno::EINVAL));
    assert_eq!(w.create_gmem(VmHandle(99), P, 0), Err(Errno::ENOENT));
    assert!(w.create_gmem(vm, P, GmemFlags::all().bits()).is_ok());
}

#[test]
fn initial_shareability_follows_init_shared() {
    let mut w = World::new();
    let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    let a = w.create_gmem(vm, 2 * P, mt().bits()).unwrap();
    let b = w
        .create_gmem(vm, 2 * P, (mt() | GmemFlags::INIT_SHARED).bits())
        .unwrap();
    let c = w
        .create_gmem(vm, 2 * P, GmemFlags::INIT_SHARED.bits())
        .unwrap();
    assert_eq!(
        w.gmem(a).unwrap().shareability(P),
        Some(Shareability::Guest)
    );
    assert_eq!(w.gmem(b).unwrap().shareability(P), Some(Shareability::All));
    assert_eq!(w.gmem(c).unwrap().shareability(P), None);
}

#[test]
fn vm_create_errors() {
    let mut w = World::new();
    assert_eq!(w.create_vm(VmType::Coco, 31), Err(Errno::EINVAL));
    assert_eq!(w.create_vm(VmType::Coco, 53), Err(Errno::EINVAL));
    assert_eq!(w.create_vm(VmType::Coco, 0), Err(Errno::EINVAL));
    let v = w.create_vm(VmType::Coco, 40).unwrap();
    assert_eq!(w.vm(v).unwrap().shared_bit(), Some(1 << 39));
    let mut a = FakeArena::new(0, 4);
    assert_eq!(w.destroy_vm(VmHandle(77), &mut a), Err(Errno::ENOENT));
    assert!(w.destroy_vm(v, &mut a).is_ok());
    assert_eq!(w.vm(v).err(), Some(Errno::ENOENT));
}

// ---------------------------------------------------------------- memslots

struct Slots {
    w: World,
    vm: VmHandle,
    g: GmemHandle,
}

fn slots(ty: VmType, gflags: GmemFlags) -> Slots {
    let mut w = World::new();
    let vm = w.create_vm(ty, IPA_BITS).unwrap();
    let g = w.create_gmem(vm, 16 * P, gflags.bits()).unwrap();
    Slots { w, vm, g }
}

fn with(mut s: MemslotSpec, uaddr: UserspaceAddr, flags: MemslotFlags) -> MemslotSpec {
    s.userspace_addr = uaddr;
    s.flags = flags.bits();
    s
}

#[test]
fn memslot_range_errors() {
    let mut s = slots(VmType::Plain, GmemFlags::MMAP);
    let g = Some((s.g, 0));
    let vm = s.vm;
    let w = &mut s.w;
    assert_eq!(
        w.create_memslot(vm, &spec(GPA + 1, P, g)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, P + 1, g)),
        Err(Errno::EINVAL)
    );
    assert_eq!(w.create_memslot(vm, &spec(GPA, 0, g)), Err(Errno::EINVAL));
    assert_eq!(
        w.create_memslot(vm, &spec(u64::MAX - P + 1, 2 * P, g)),
        Err(Errno::EINVAL)
    );
    // Beyond the IPA space.
    assert_eq!(
        w.create_memslot(vm, &spec(1 << IPA_BITS, P, g)),
        Err(Errno::EINVAL)
    );
    // Unknown flag bits.
    let mut bad = spec(GPA, P, g);
    bad.flags = 1 << 7;
    assert_eq!(w.create_memslot(vm, &bad), Err(Errno::EINVAL));
    // Unknown VM.
    assert_eq!(
        w.create_memslot(VmHandle(9), &spec(GPA, P, g)),
        Err(Errno::ENOENT)
    );
}

#[test]
fn memslot_coco_gpa_must_be_below_the_shared_bit() {
    let mut s = slots(VmType::Coco, mt());
    let bit = 1u64 << (IPA_BITS - 1);
    assert_eq!(
        s.w.create_memslot(s.vm, &spec(bit, P, Some((s.g, 0)))),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        s.w.create_memslot(s.vm, &spec(bit - P, 2 * P, Some((s.g, 0)))),
        Err(Errno::EINVAL)
    );
    assert!(s
        .w
        .create_memslot(s.vm, &spec(bit - P, P, Some((s.g, 0))))
        .is_ok());
}

#[test]
fn memslot_gmem_binding_errors() {
    let mut s = slots(VmType::Plain, GmemFlags::MMAP);
    let vm = s.vm;
    let g = s.g;
    let w = &mut s.w;
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, P, Some((GmemHandle(42), 0)))),
        Err(Errno::ENOENT)
    );
    // Offset unaligned, range beyond the file, overflow.
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, P, Some((g, 1)))),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, 2 * P, Some((g, 15 * P)))),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, 17 * P, Some((g, 0)))),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        w.create_memslot(vm, &spec(GPA, P, Some((g, u64::MAX - P + 1)))),
        Err(Errno::EINVAL)
    );
    // A file of another VM.
    let other = w.create_vm(VmType::Plain, IPA_BITS).unwrap();
    assert_eq!(
        w.create_memslot(other, &spec(GPA, P, Some((g, 0)))),
        Err(Errno::EINVAL)
    );
    // The whole file is fine.
    assert!(w
        .create_memslot(vm, &spec(GPA, 16 * P, Some((g, 0))))
        .is_ok());
}

#[test]
fn memslot_combinations_that_cannot_work() {
    // userspace_addr = gmem without MMAP.
    let mut s = slots(VmType::Plain, GmemFlags::TRACK_SHAREABILITY);
    let sp = with(
        spec(GPA, P, Some((s.g, 0))),
        UserspaceAddr::Gmem,
        MemslotFlags::empty(),
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // userspace_addr = gmem without any gmem.
    let mut s = slots(VmType::Plain, GmemFlags::MMAP);
    let sp = with(
        spec(GPA, P, None),
        UserspaceAddr::Gmem,
        MemslotFlags::empty(),
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // ALWAYS_FAULT_FROM_GMEM without gmem.
    let sp = with(
        spec(GPA, P, None),
        UserspaceAddr::Anon,
        MemslotFlags::ALWAYS_FAULT_FROM_GMEM,
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // pkvm: gmem lacking TRACK_SHAREABILITY.
    let mut s = slots(VmType::Pkvm, GmemFlags::MMAP);
    let sp = with(spec(GPA, P, Some((s.g, 0))), UserspaceAddr::None, both());
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // pkvm: memslot lacking ALWAYS_FAULT_FROM_GMEM.
    let mut s = slots(VmType::Pkvm, mt());
    let sp = with(
        spec(GPA, P, Some((s.g, 0))),
        UserspaceAddr::None,
        MemslotFlags::DONT_CHECK_MISMATCHES,
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // pkvm: no gmem at all.
    let sp = with(
        spec(GPA, P, None),
        UserspaceAddr::Anon,
        MemslotFlags::empty(),
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // pkvm: the good one (DONT_CHECK_MISMATCHES not required).
    let sp = with(
        spec(GPA, P, Some((s.g, 0))),
        UserspaceAddr::None,
        MemslotFlags::ALWAYS_FAULT_FROM_GMEM,
    );
    assert!(s.w.create_memslot(s.vm, &sp).is_ok());
    // coco: DONT_CHECK_MISMATCHES with a gmem lacking TRACK_SHAREABILITY, or without gmem.
    let mut s = slots(VmType::Coco, GmemFlags::MMAP);
    let sp = with(
        spec(GPA, P, Some((s.g, 0))),
        UserspaceAddr::Anon,
        MemslotFlags::DONT_CHECK_MISMATCHES,
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    let sp = with(
        spec(GPA, P, None),
        UserspaceAddr::Anon,
        MemslotFlags::DONT_CHECK_MISMATCHES,
    );
    assert_eq!(s.w.create_memslot(s.vm, &sp), Err(Errno::EINVAL));
    // coco without the flag and without tracking: the legacy case, fine.
    let sp = with(
        spec(GPA, P, Some((s.g, 0))),
        UserspaceAddr::Anon,
        MemslotFlags::empty(),
    );
    assert!(s.w.create_memslot(s.vm, &sp).is_ok());
}

#[test]
fn memslot_overlap_is_eexist_and_delete_works() {
    let mut s = slots(VmType::Plain, GmemFlags::MMAP);
    let mut a = FakeArena::new(0, 8);
    let id =
        s.w.create_memslot(s.vm, &spec(GPA, 4 * P, Some((s.g, 0))))
            .unwrap();
    for (gpa, size) in [
        (GPA, P),
        (GPA - P, 2 * P),
        (GPA + 3 * P, 4 * P),
        (GPA - P, 8 * P),
    ] {
        assert_eq!(
            s.w.create_memslot(s.vm, &spec(gpa, size, Some((s.g, 4 * P)))),
            Err(Errno::EEXIST),
            "{gpa:#x}+{size:#x}"
        );
    }
    // Adjacent slots do not overlap.
    assert!(s
        .w
        .create_memslot(s.vm, &spec(GPA + 4 * P, P, Some((s.g, 4 * P))))
        .is_ok());
    assert!(s.w.create_memslot(s.vm, &spec(GPA - P, P, None)).is_ok());
    let inv = s.w.delete_memslot(s.vm, id, &mut a).unwrap();
    assert_eq!(
        inv.stage2_unmap,
        [Stage2Unmap {
            vm: s.vm,
            gpa: GPA,
            size: 4 * P
        }]
    );
    assert_eq!(
        s.w.delete_memslot(s.vm, id, &mut a).err(),
        Some(Errno::ENOENT)
    );
    assert!(s
        .w
        .create_memslot(s.vm, &spec(GPA, 4 * P, Some((s.g, 0))))
        .is_ok());
}

#[test]
fn gmem_destroy_busy_while_bound_or_pinned() {
    let mut s = slots(VmType::Plain, GmemFlags::MMAP);
    let mut a = FakeArena::new(0, 8);
    let id =
        s.w.create_memslot(s.vm, &spec(GPA, P, Some((s.g, 0))))
            .unwrap();
    assert_eq!(s.w.destroy_gmem(s.g, &mut a), Err(Errno::EBUSY));
    s.w.delete_memslot(s.vm, id, &mut a).unwrap();
    s.w.pin(s.g, 0, &mut a).unwrap();
    assert_eq!(s.w.destroy_gmem(s.g, &mut a), Err(Errno::EBUSY));
    s.w.unpin(s.g, 0).unwrap();
    assert_eq!(s.w.destroy_gmem(s.g, &mut a).unwrap().len(), 1);
    assert_eq!(s.w.destroy_gmem(s.g, &mut a), Err(Errno::ENOENT));
    assert_eq!(a.allocated(), 0);
    assert_eq!(a.bad_frees(), 0);
}

// ---------------------------------------------------------------- attributes

#[test]
fn attribute_errors_and_unmap() {
    let mut w = World::new();
    let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    let bit = 1u64 << (IPA_BITS - 1);
    assert_eq!(w.set_attributes(vm, 1, P, true).err(), Some(Errno::EINVAL));
    assert_eq!(
        w.set_attributes(vm, 0, P - 1, true).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(w.set_attributes(vm, 0, 0, true).err(), Some(Errno::EINVAL));
    assert_eq!(
        w.set_attributes(vm, bit, P, true).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        w.set_attributes(vm, u64::MAX - P + 1, 2 * P, true).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        w.set_attributes(VmHandle(5), 0, P, true).err(),
        Some(Errno::ENOENT)
    );
    // Any range, covered by memslots or not.
    let inv = w.set_attributes(vm, 0x1000_0000, 3 * P, true).unwrap();
    assert_eq!(
        inv.stage2_unmap,
        [Stage2Unmap {
            vm,
            gpa: 0x1000_0000,
            size: 3 * P
        }]
    );
    let v = w.vm(vm).unwrap();
    assert!(v.attr_private(0x1000_2000));
    assert!(!v.attr_private(0x1000_3000));
    assert_eq!(v.attributes().runs(), 3);
}

// ---------------------------------------------------------------- conversions

fn conv_rig(ty: VmType, extra: GmemFlags) -> Rig {
    let sflags = if ty == VmType::Plain {
        MemslotFlags::ALWAYS_FAULT_FROM_GMEM
    } else {
        both()
    };
    Rig::build(&Config {
        vm_type: ty,
        gflags: mt() | extra,
        uaddr: UserspaceAddr::None,
        sflags,
    })
    .unwrap()
}

fn state(r: &Rig) -> Vec<(Option<Shareability>, Option<u64>, u32)> {
    let f = r.w.gmem(r.g).unwrap();
    (0..PAGES)
        .map(|p| (f.shareability(p * P), f.page_pa(p * P), f.pin_count(p * P)))
        .collect()
}

#[test]
fn convert_eopnotsupp_decided_from_the_request_alone() {
    use ContentMode::*;
    use ConvertTo::*;
    let mut r = conv_rig(VmType::Coco, GmemFlags::empty());
    // Even with a bad range, an unknown handle or a file without tracking.
    for (off, size) in [(0, P), (1, 0), (u64::MAX, P), (0, 1 << 40)] {
        assert_eq!(
            errno(r.w.convert(
                r.g,
                &req(off, size, Private, Zero, Initiator::Guest),
                &mut r.a
            )),
            Errno::EOPNOTSUPP
        );
    }
    assert_eq!(
        errno(r.w.convert(
            GmemHandle(77),
            &req(0, P, Private, Zero, Initiator::Host),
            &mut r.a
        )),
        Errno::EOPNOTSUPP
    );
    assert_eq!(
        errno(r.w.convert(
            GmemHandle(77),
            &req(0, P, Private, Preserve, Initiator::Host),
            &mut r.a
        )),
        Errno::ENOENT
    );
}

#[test]
fn convert_einval() {
    use ConvertTo::*;
    let mut r = conv_rig(VmType::Coco, GmemFlags::INIT_SHARED);
    let before = state(&r);
    let m = ContentMode::Preserve;
    let g = Initiator::Guest;
    for (off, size) in [
        (1, P),
        (0, P + 1),
        (P, 0),
        (0, 0),
        (u64::MAX - P + 1, 2 * P),
        (15 * P, 2 * P),
        (16 * P, P),
        (0, 17 * P),
    ] {
        for to in [Private, Shared] {
            assert_eq!(
                errno(r.w.convert(r.g, &req(off, size, to, m, g), &mut r.a)),
                Errno::EINVAL,
                "{off:#x}+{size:#x}"
            );
        }
    }
    assert_eq!(state(&r), before);
    // No TRACK_SHAREABILITY.
    let mut w = World::new();
    let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    let u = w.create_gmem(vm, 4 * P, GmemFlags::MMAP.bits()).unwrap();
    for to in [Private, Shared] {
        assert_eq!(
            errno(w.convert(u, &req(0, P, to, m, g), &mut r.a)),
            Errno::EINVAL
        );
    }
}

#[test]
fn convert_eperm_host_to_shared() {
    use ContentMode::*;
    use ConvertTo::*;
    // pkvm: only the guest may share its memory, whatever the mode.
    let mut r = conv_rig(VmType::Pkvm, GmemFlags::empty());
    for m in [Preserve, Zero] {
        assert_eq!(
            errno(r.w.convert(r.g, &req(0, P, Shared, m, Initiator::Host), &mut r.a)),
            Errno::EPERM
        );
    }
    assert!(r
        .w
        .convert(
            r.g,
            &req(0, P, Shared, Preserve, Initiator::Guest),
            &mut r.a
        )
        .is_ok());
    // Host-initiated to-private is allowed for pkvm.
    assert!(r
        .w
        .convert(
            r.g,
            &req(0, P, Private, Preserve, Initiator::Host),
            &mut r.a
        )
        .is_ok());
    // coco: preserve refused, zero allowed.
    let mut r = conv_rig(VmType::Coco, GmemFlags::empty());
    let before = state(&r);
    assert_eq!(
        errno(r.w.convert(r.g, &req(0, P, Shared, Preserve, Initiator::Host), &mut r.a)),
        Errno::EPERM
    );
    assert_eq!(state(&r), before);
    assert!(r
        .w
        .convert(r.g, &req(0, P, Shared, Zero, Initiator::Host), &mut r.a)
        .is_ok());
    // plain: the host may share with preserve.
    let mut r = conv_rig(VmType::Plain, GmemFlags::empty());
    assert!(r
        .w
        .convert(r.g, &req(0, P, Shared, Preserve, Initiator::Host), &mut r.a)
        .is_ok());
}

#[test]
fn convert_eagain_reports_first_pinned_offset_and_changes_nothing() {
    use ContentMode::*;
    use ConvertTo::*;
    let mut r = conv_rig(VmType::Pkvm, GmemFlags::INIT_SHARED);
    let pa5 = r.w.pin(r.g, 5 * P + 17, &mut r.a).unwrap();
    r.w.pin(r.g, 9 * P, &mut r.a).unwrap();
    r.a.write_byte(pa5, 0xab);
    let before = state(&r);
    let e =
        r.w.convert(
            r.g,
            &req(4 * P, 8 * P, Private, Preserve, Initiator::Host),
            &mut r.a,
        )
        .unwrap_err();
    assert_eq!(
        e,
        ConvertError {
            errno: Errno::EAGAIN,
            error_offset: 5 * P
        }
    );
    let e =
        r.w.convert(
            r.g,
            &req(6 * P, 8 * P, Private, Preserve, Initiator::Guest),
            &mut r.a,
        )
        .unwrap_err();
    assert_eq!(e.error_offset, 9 * P);
    assert_eq!(state(&r), before);
    assert_eq!(r.a.read_byte(pa5), Some(0xab));
    // A range without pins converts; to-shared is never blocked by pins.
    assert!(r
        .w
        .convert(
            r.g,
            &req(0, 5 * P, Private, Preserve, Initiator::Host),
            &mut r.a
        )
        .is_ok());
    assert!(r
        .w
        .convert(
            r.g,
            &req(0, 16 * P, Shared, Preserve, Initiator::Guest),
            &mut r.a
        )
        .is_ok());
    // Unpin, then the conversion goes through and preserves content.
    r.w.unpin(r.g, 5 * P).unwrap();
    r.w.unpin(r.g, 9 * P).unwrap();
    assert_eq!(r.w.unpin(r.g, 9 * P), Err(Errno::EINVAL));
    assert!(r
        .w
        .convert(
            r.g,
            &req(4 * P, 8 * P, Private, Preserve, Initiator::Host),
            &mut r.a
        )
        .is_ok());
    assert_eq!(r.a.read_byte(pa5), Some(0xab));
}

#[test]
fn convert_content_rules() {
    use ContentMode::*;
    use ConvertTo::*;
    let mut r = conv_rig(VmType::Coco, GmemFlags::INIT_SHARED);
    // Pages 0..4 get data through the host view, then 0 and 1 become private.
    let pas: Vec<u64> = (0..4).map(|p| r.host(p).unwrap()).collect();
    for (i, pa) in pas.iter().enumerate() {
        r.a.write_byte(*pa + 7, 0x10 + i as u8);
    }
    r.w.convert(
        r.g,
        &req(0, 2 * P, Private, Preserve, Initiator::Guest),
        &mut r.a,
    )
    .unwrap();
    assert_eq!(
        r.a.read_byte(pas[0] + 7),
        Some(0x10),
        "to-private preserves"
    );
    // Guest to-shared with ZERO over 0..4: only pages 0, 1 change and are zeroed.
    let inv =
        r.w.convert(
            r.g,
            &req(0, 4 * P, Shared, Zero, Initiator::Guest),
            &mut r.a,
        )
        .unwrap();
    assert_eq!(r.a.read_byte(pas[0] + 7), Some(0));
    assert_eq!(r.a.read_byte(pas[1] + 7), Some(0));
    assert_eq!(
        r.a.read_byte(pas[2] + 7),
        Some(0x12),
        "already shared: untouched"
    );
    assert_eq!(r.a.read_byte(pas[3] + 7), Some(0x13));
    assert_eq!(
        inv.host_grant,
        [GmemRange {
            gmem: r.g,
            offset: 0,
            size: 2 * P
        }]
    );
    // Guest to-shared with PRESERVE keeps data.
    r.a.write_byte(pas[2] + 7, 0x22);
    r.w.convert(
        r.g,
        &req(2 * P, P, Private, Preserve, Initiator::Host),
        &mut r.a,
    )
    .unwrap();
    r.w.convert(
        r.g,
        &req(2 * P, P, Shared, Preserve, Initiator::Guest),
        &mut r.a,
    )
    .unwrap();
    assert_eq!(r.a.read_byte(pas[2] + 7), Some(0x22));
    // Host-initiated coco to-shared always zeroes.
    r.w.convert(
        r.g,
        &req(3 * P, P, Private, Preserve, Initiator::Host),
        &mut r.a,
    )
    .unwrap();
    r.w.convert(r.g, &req(3 * P, P, Shared, Zero, Initiator::Host), &mut r.a)
        .unwrap();
    assert_eq!(r.a.read_byte(pas[3] + 7), Some(0));
    // A pkvm guest's private data survives its share (protection by isolation).
    let mut r = conv_rig(VmType::Pkvm, GmemFlags::empty());
    let FaultResolution::Map { pa, .. } = r.fault(1, Kind::Plain, Access::Write) else {
        panic!()
    };
    r.a.write_byte(pa, 0x5a);
    assert_eq!(r.host(1), Err(Errno::EFAULT));
    r.w.convert(
        r.g,
        &req(P, P, Shared, Preserve, Initiator::Guest),
        &mut r.a,
    )
    .unwrap();
    assert_eq!(r.host(1), Ok(pa));
    assert_eq!(r.a.read_byte(pa), Some(0x5a));
}

#[test]
fn convert_reports_every_binding_to_unmap() {
    use ConvertTo::*;
    let mut w = World::new();
    let mut a = FakeArena::new(0x1000_0000, 64);
    let vm = w.create_vm(VmType::Pkvm, IPA_BITS).unwrap();
    let g = w.create_gmem(vm, 16 * P, mt().bits()).unwrap();
    let f = MemslotFlags::ALWAYS_FAULT_FROM_GMEM.bits();
    let mk = |gpa, off| MemslotSpec {
        gpa,
        size: 4 * P,
        gmem: Some(GmemBinding {
            gmem: g,
            offset: off,
        }),
        userspace_addr: UserspaceAddr::None,
        flags: f,
    };
    w.create_memslot(vm, &mk(0x4000_0000, 0)).unwrap();
    w.create_memslot(vm, &mk(0x8000_0000, 4 * P)).unwrap();
    w.create_memslot(vm, &mk(0x9000_0000, 12 * P)).unwrap();
    let inv = w
        .convert(
            g,
            &req(
                2 * P,
                4 * P,
                Shared,
                ContentMode::Preserve,
                Initiator::Guest,
            ),
            &mut a,
        )
        .unwrap();
    assert_eq!(
        inv.stage2_unmap,
        [
            Stage2Unmap {
                vm,
                gpa: 0x4000_2000,
                size: 2 * P
            },
            Stage2Unmap {
                vm,
                gpa: 0x8000_0000,
                size: 2 * P
            }
        ]
    );
    assert_eq!(
        inv.host_grant,
        [GmemRange {
            gmem: g,
            offset: 2 * P,
            size: 4 * P
        }]
    );
    let inv = w
        .convert(
            g,
            &req(0, 16 * P, Private, ContentMode::Preserve, Initiator::Host),
            &mut a,
        )
        .unwrap();
    assert_eq!(inv.stage2_unmap.len(), 3);
    assert_eq!(
        inv.host_unmap,
        [GmemRange {
            gmem: g,
            offset: 2 * P,
            size: 4 * P
        }]
    );
}

// ---------------------------------------------------------------- punch, pins, host access

#[test]
fn punch_errors_and_effects() {
    let mut r = conv_rig(VmType::Coco, GmemFlags::INIT_SHARED);
    for (off, size) in [
        (1, P),
        (0, 0),
        (0, P + 1),
        (15 * P, 2 * P),
        (u64::MAX - P + 1, P),
    ] {
        assert_eq!(
            r.w.punch(r.g, off, size, &mut r.a).err(),
            Some(Errno::EINVAL)
        );
    }
    assert_eq!(
        r.w.punch(GmemHandle(8), 0, P, &mut r.a).err(),
        Some(Errno::ENOENT)
    );
    let pa = r.host(3).unwrap();
    r.a.write_byte(pa, 9);
    r.w.convert(
        r.g,
        &req(
            3 * P,
            P,
            ConvertTo::Private,
            ContentMode::Preserve,
            Initiator::Host,
        ),
        &mut r.a,
    )
    .unwrap();
    r.w.pin(r.g, 4 * P, &mut r.a).unwrap();
    assert_eq!(r.w.punch(r.g, 0, 8 * P, &mut r.a).err(), Some(Errno::EBUSY));
    assert!(r.a.is_allocated(pa));
    let inv = r.w.punch(r.g, 0, 4 * P, &mut r.a).unwrap();
    assert_eq!(inv.freed, [pa]);
    assert!(!r.a.is_allocated(pa));
    assert_eq!(inv.stage2_unmap[0].gpa, GPA);
    assert_eq!(inv.stage2_unmap[0].size, 4 * P);
    // Shareability unchanged; the page reads as zero when it comes back.
    let f = r.w.gmem(r.g).unwrap();
    assert_eq!(f.shareability(3 * P), Some(Shareability::Guest));
    assert_eq!(f.page_pa(3 * P), None);
    r.set_attr(3, true);
    let FaultResolution::Map { pa, .. } = r.fault(3, Kind::Private, Access::Read) else {
        panic!()
    };
    assert_eq!(r.a.read_byte(pa), Some(0));
}

#[test]
fn pin_and_host_access_errors() {
    // No MMAP: no host mapping at all.
    let mut w = World::new();
    let mut a = FakeArena::new(0, 8);
    let vm = w.create_vm(VmType::Plain, IPA_BITS).unwrap();
    let g = w.create_gmem(vm, 2 * P, 0).unwrap();
    assert_eq!(w.host_fault(g, 0, &mut a), Err(Errno::ENODEV));
    assert_eq!(w.pin(g, 0, &mut a), Err(Errno::ENODEV));
    assert_eq!(w.host_fault(GmemHandle(3), 0, &mut a), Err(Errno::ENOENT));
    // Beyond the file: SIGBUS (EFAULT).
    let g = w.create_gmem(vm, 2 * P, GmemFlags::MMAP.bits()).unwrap();
    assert_eq!(w.host_fault(g, 2 * P, &mut a), Err(Errno::EFAULT));
    assert_eq!(w.host_fault(g, u64::MAX, &mut a), Err(Errno::EFAULT));
    assert_eq!(w.pin(g, 2 * P, &mut a), Err(Errno::EFAULT));
    assert_eq!(w.unpin(g, 2 * P), Err(Errno::EINVAL));
    assert_eq!(w.unpin(g, 0), Err(Errno::EINVAL));
    // Pins count.
    let pa = w.pin(g, 100, &mut a).unwrap();
    assert_eq!(w.pin(g, 0, &mut a), Ok(pa));
    assert_eq!(w.gmem(g).unwrap().pin_count(0), 2);
    w.unpin(g, 0).unwrap();
    w.unpin(g, 0).unwrap();
    assert_eq!(w.unpin(g, 0), Err(Errno::EINVAL));
    // A GUEST page cannot be mapped or pinned by the host.
    let t = w.create_gmem(vm, 2 * P, mt().bits()).unwrap();
    assert_eq!(w.host_fault(t, 0, &mut a), Err(Errno::EFAULT));
    assert_eq!(w.pin(t, 0, &mut a), Err(Errno::EFAULT));
    // The provider running dry shows as ENOMEM on host paths.
    let s = w
        .create_gmem(vm, 2 * P, (GmemFlags::MMAP | GmemFlags::INIT_SHARED).bits())
        .unwrap();
    a.set_fail(true);
    assert_eq!(w.host_fault(s, 0, &mut a), Err(Errno::ENOMEM));
    assert_eq!(w.pin(s, 0, &mut a), Err(Errno::ENOMEM));
    assert_eq!(w.gmem(s).unwrap().pin_count(0), 0);
}

#[test]
fn untracked_private_gmem_is_kept_from_the_host() {
    // A coco VM's gmem without tracking holds private memory only.
    let mut w = World::new();
    let mut a = FakeArena::new(0, 8);
    let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    let g = w.create_gmem(vm, 2 * P, GmemFlags::MMAP.bits()).unwrap();
    assert_eq!(w.host_fault(g, 0, &mut a), Err(Errno::EFAULT));
    assert!(!w.gmem(g).unwrap().host_stage2_allowed(0));
    // Tracked: only ALL pages; plain untracked: every page, even without MMAP.
    let t = w
        .create_gmem(vm, 2 * P, (mt() | GmemFlags::INIT_SHARED).bits())
        .unwrap();
    assert!(w.gmem(t).unwrap().host_stage2_allowed(P));
    assert!(!w.gmem(t).unwrap().host_stage2_allowed(2 * P));
    w.convert(
        t,
        &req(
            P,
            P,
            ConvertTo::Private,
            ContentMode::Preserve,
            Initiator::Host,
        ),
        &mut a,
    )
    .unwrap();
    assert!(!w.gmem(t).unwrap().host_stage2_allowed(P));
    let plain = w.create_vm(VmType::Plain, IPA_BITS).unwrap();
    let p = w.create_gmem(plain, P, 0).unwrap();
    assert!(w.gmem(p).unwrap().host_stage2_allowed(0));
}

// ---------------------------------------------------------------- faults

#[test]
fn fault_mmio_and_bad_ipas() {
    let mut r = Rig::row(Row::Opt1);
    let bit = 1u64 << (IPA_BITS - 1);
    assert_eq!(
        r.w.resolve_fault(r.vm, 0x1234, Access::Read, &mut r.a),
        Ok(FaultResolution::Mmio { ipa: 0x1234 })
    );
    assert_eq!(
        r.w.resolve_fault(r.vm, bit | 0x1234, Access::Read, &mut r.a),
        Ok(FaultResolution::Mmio { ipa: bit | 0x1234 })
    );
    assert_eq!(
        r.w.resolve_fault(r.vm, GPA + PAGES * P, Access::Read, &mut r.a),
        Ok(FaultResolution::Mmio {
            ipa: GPA + PAGES * P
        })
    );
    assert_eq!(
        r.w.resolve_fault(r.vm, 1 << IPA_BITS, Access::Read, &mut r.a),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.w.resolve_fault(VmHandle(50), GPA, Access::Read, &mut r.a),
        Err(Errno::ENOENT)
    );
}

#[test]
fn memory_fault_carries_gpa_without_shared_bit_and_access_flags() {
    let mut r = Rig::row(Row::Opt1);
    // Page 2 is GUEST: a shared write faults.
    let bit = 1u64 << (IPA_BITS - 1);
    let res =
        r.w.resolve_fault(r.vm, bit | (GPA + 2 * P + 0x18), Access::Write, &mut r.a)
            .unwrap();
    assert_eq!(
        res,
        FaultResolution::MemoryFault {
            gpa: GPA + 2 * P,
            size: P,
            flags: MemoryFaultFlags::WRITE
        }
    );
    r.set_share(2, Shareability::All).unwrap();
    let res = r.fault(2, Kind::Private, Access::Exec);
    assert_eq!(
        res,
        FaultResolution::MemoryFault {
            gpa: GPA + 2 * P,
            size: P,
            flags: MemoryFaultFlags::EXEC | MemoryFaultFlags::PRIVATE
        }
    );
    // Mapping keeps the alias in ipa and strips it from gpa.
    let res =
        r.w.resolve_fault(r.vm, bit | (GPA + 2 * P + 5), Access::Read, &mut r.a)
            .unwrap();
    let FaultResolution::Map { ipa, gpa, .. } = res else {
        panic!("{res:?}")
    };
    assert_eq!((ipa, gpa), (bit | (GPA + 2 * P), GPA + 2 * P));
}

#[test]
fn fault_routed_to_gmem_without_gmem_is_a_memory_fault() {
    let mut w = World::new();
    let mut a = FakeArena::new(0, 8);
    let vm = w.create_vm(VmType::Coco, IPA_BITS).unwrap();
    w.create_memslot(
        vm,
        &MemslotSpec {
            gpa: GPA,
            size: P,
            gmem: None,
            userspace_addr: UserspaceAddr::Anon,
            flags: 0,
        },
    )
    .unwrap();
    w.set_attributes(vm, GPA, P, true).unwrap();
    assert_eq!(
        w.resolve_fault(vm, GPA, Access::Read, &mut a),
        Ok(FaultResolution::MemoryFault {
            gpa: GPA,
            size: P,
            flags: MemoryFaultFlags::READ | MemoryFaultFlags::PRIVATE
        })
    );
    // A shared fault goes to the anon memory.
    w.set_attributes(vm, GPA, P, false).unwrap();
    let res = w
        .resolve_fault(vm, GPA | (1 << (IPA_BITS - 1)), Access::Read, &mut a)
        .unwrap();
    assert!(matches!(
        res,
        FaultResolution::Map {
            source: FaultSource::UserspaceAnon,
            ..
        }
    ));
}

#[test]
fn opt2_shared_fault_on_guest_page_is_memory_fault_private_0() {
    let mut r = Rig::row(Row::Opt2);
    let res = r.fault(4, Kind::Shared, Access::Read);
    assert_eq!(
        res,
        FaultResolution::MemoryFault {
            gpa: GPA + 4 * P,
            size: P,
            flags: MemoryFaultFlags::READ
        }
    );
}

#[test]
fn anon_and_gmem_give_different_pages_view_and_gmem_the_same() {
    // Legacy: the shared alias hits anon memory, the private alias gmem: different pages.
    let mut r = Rig::row(Row::Legacy);
    let FaultResolution::Map { pa: shared, .. } = r.fault(1, Kind::Shared, Access::Write) else {
        panic!()
    };
    r.set_attr(1, true);
    let FaultResolution::Map { pa: private, .. } = r.fault(1, Kind::Private, Access::Write) else {
        panic!()
    };
    assert_ne!(shared, private);
    r.a.write_byte(shared, 1);
    assert_eq!(r.a.read_byte(private), Some(0));
    // Option 2: the userspace_addr path through the gmem view and the gmem path: same page.
    let mut r = Rig::row(Row::Opt2);
    r.agree(1, Kind::Private);
    let FaultResolution::Map { pa: private, .. } = r.fault(1, Kind::Private, Access::Write) else {
        panic!()
    };
    r.a.write_byte(private, 0x77);
    r.w.convert(
        r.g,
        &req(
            P,
            P,
            ConvertTo::Shared,
            ContentMode::Preserve,
            Initiator::Guest,
        ),
        &mut r.a,
    )
    .unwrap();
    r.set_attr(1, false);
    let FaultResolution::Map {
        pa: shared, source, ..
    } = r.fault(1, Kind::Shared, Access::Read)
    else {
        panic!()
    };
    assert_eq!(source, FaultSource::UserspaceGmem);
    assert_eq!(shared, private);
    assert_eq!(r.a.read_byte(shared), Some(0x77));
}

#[test]
fn need_pages_when_the_provider_is_empty() {
    for row in [Row::Pkvm, Row::Legacy, Row::NonCocoUaddr] {
        let mut r = Rig::row(row);
        let kind = if r.ty == VmType::Coco {
            Kind::Shared
        } else {
            Kind::Plain
        };
        r.a.set_fail(true);
        assert_eq!(r.fault(0, kind, Access::Read), FaultResolution::NeedPages);
        assert_eq!(r.a.allocated(), 0);
        r.a.set_fail(false);
        assert!(matches!(
            r.fault(0, kind, Access::Read),
            FaultResolution::Map { .. }
        ));
    }
}

#[test]
fn host_uaddr_paths() {
    let mut r = Rig::row(Row::Legacy);
    assert_eq!(
        r.w.host_uaddr_fault(r.vm, r.slot, PAGES * P, &mut r.a),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        r.w.host_uaddr_fault(r.vm, SlotId(9), 0, &mut r.a),
        Err(Errno::ENOENT)
    );
    let pa = r.w.host_uaddr_fault(r.vm, r.slot, 5, &mut r.a).unwrap();
    assert_eq!(
        r.w.vm(r.vm).unwrap().slot(r.slot).unwrap().anon_pa(0),
        Some(pa)
    );
    let mut r = Rig::row(Row::Opt1);
    assert_eq!(
        r.w.host_uaddr_fault(r.vm, r.slot, 0, &mut r.a),
        Err(Errno::ENODEV)
    );
    let mut r = Rig::row(Row::Opt2);
    assert_eq!(
        r.w.host_uaddr_fault(r.vm, r.slot, 0, &mut r.a),
        Err(Errno::EFAULT)
    );
}

// ---------------------------------------------------------------- guest requests

#[test]
fn guest_range_validation() {
    let mut r = Rig::row(Row::Pkvm);
    let vm = r.vm;
    use ConvertTo::*;
    assert_eq!(r.w.guest_range(vm, GPA + 1, 1, Shared), Err(Errno::EINVAL));
    assert_eq!(r.w.guest_range(vm, GPA, 0, Shared), Err(Errno::EINVAL));
    assert_eq!(r.w.guest_range(vm, GPA - P, 2, Shared), Err(Errno::EINVAL));
    assert_eq!(
        r.w.guest_range(vm, GPA, PAGES + 1, Shared),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.w.guest_range(vm, GPA, u64::MAX, Shared),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.w.guest_range(vm, 1 << IPA_BITS, 1, Shared),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.w.guest_range(VmHandle(3), GPA, 1, Shared),
        Err(Errno::ENOENT)
    );
    // Unsharing a page never shared.
    assert_eq!(r.w.guest_range(vm, GPA, 1, Private), Err(Errno::EPERM));
    let pieces = r.w.guest_range(vm, GPA + P, 2, Shared).unwrap();
    assert_eq!(
        pieces,
        [GuestRangePiece {
            gpa: GPA + P,
            size: 2 * P,
            slot: r.slot,
            gmem: Some((r.g, P)),
            tracked: true,
            attr_checked: false,
        }]
    );
    r.set_share(2, Shareability::All).unwrap();
    // Sharing a shared page.
    assert_eq!(r.w.guest_range(vm, GPA + P, 2, Shared), Err(Errno::EPERM));
    assert!(r.w.guest_range(vm, GPA + 2 * P, 1, Private).is_ok());
    assert_eq!(
        r.w.gpa_to_gmem(vm, GPA + 3 * P + 8),
        Ok((r.slot, Some((r.g, 3 * P))))
    );
    assert_eq!(r.w.gpa_to_gmem(vm, 0), Err(Errno::EINVAL));
}

#[test]
fn guest_range_spans_adjacent_slots() {
    let mut w = World::new();
    let vm = w.create_vm(VmType::Pkvm, IPA_BITS).unwrap();
    let g = w.create_gmem(vm, 8 * P, mt().bits()).unwrap();
    let f = MemslotFlags::ALWAYS_FAULT_FROM_GMEM.bits();
    let mk = |gpa, off| MemslotSpec {
        gpa,
        size: 2 * P,
        gmem: Some(GmemBinding {
            gmem: g,
            offset: off,
        }),
        userspace_addr: UserspaceAddr::None,
        flags: f,
    };
    let s0 = w.create_memslot(vm, &mk(GPA, 6 * P)).unwrap();
    let s1 = w.create_memslot(vm, &mk(GPA + 2 * P, 0)).unwrap();
    let pieces = w.guest_range(vm, GPA + P, 2, ConvertTo::Shared).unwrap();
    assert_eq!(pieces.len(), 2);
    assert_eq!((pieces[0].slot, pieces[0].gmem), (s0, Some((g, 7 * P))));
    assert_eq!((pieces[1].slot, pieces[1].gmem), (s1, Some((g, 0))));
    // A gap after the second slot.
    assert_eq!(
        w.guest_range(vm, GPA + 3 * P, 2, ConvertTo::Shared),
        Err(Errno::EINVAL)
    );
}

#[test]
fn relinquish_rules() {
    let mut r = Rig::row(Row::Pkvm);
    let vm = r.vm;
    // Untouched page: no-op.
    assert_eq!(
        r.w.relinquish(vm, GPA, &mut r.a),
        Ok(Invalidation::default())
    );
    assert_eq!(
        r.w.relinquish(vm, GPA + 1, &mut r.a).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(r.w.relinquish(vm, 0, &mut r.a).err(), Some(Errno::EINVAL));
    let FaultResolution::Map { pa, .. } = r.fault(1, Kind::Plain, Access::Write) else {
        panic!()
    };
    r.a.write_byte(pa, 3);
    let zeroes = r.a.zero_calls();
    let inv = r.w.relinquish(vm, GPA + P, &mut r.a).unwrap();
    assert_eq!(inv.freed, [pa]);
    assert_eq!(r.a.zero_calls(), zeroes + 1);
    assert_eq!(inv.stage2_unmap[0].gpa, GPA + P);
    // Faults back as a zeroed page.
    let FaultResolution::Map { pa, .. } = r.fault(1, Kind::Plain, Access::Read) else {
        panic!()
    };
    assert_eq!(r.a.read_byte(pa), Some(0));
    // A shared page cannot be relinquished.
    r.set_share(1, Shareability::All).unwrap();
    assert_eq!(
        r.w.relinquish(vm, GPA + P, &mut r.a).err(),
        Some(Errno::EPERM)
    );
}

#[test]
fn teardown_frees_every_page_once() {
    let mut r = Rig::row(Row::Legacy);
    r.set_attr(0, true);
    assert!(matches!(
        r.fault(0, Kind::Private, Access::Write),
        FaultResolution::Map { .. }
    ));
    assert!(matches!(
        r.fault(1, Kind::Shared, Access::Write),
        FaultResolution::Map { .. }
    ));
    assert_eq!(r.a.allocated(), 2);
    let freed = r.w.destroy_vm(r.vm, &mut r.a).unwrap().freed;
    assert_eq!(freed.len(), 2);
    assert_eq!(r.a.allocated(), 0);
    assert_eq!(r.a.bad_frees(), 0);
    assert_eq!(r.w.gmem(r.g).err(), Some(Errno::ENOENT));
}

#[test]
fn handles_wrap_to_the_free_ones_and_never_run_out() {
    let mut c = 0u32;
    assert_eq!(crate::world::next_handle(&mut c, |_| false), Ok(1));
    assert_eq!(crate::world::next_handle(&mut c, |_| false), Ok(2));
    // At the top the counter wraps past 0 and skips the handles in use.
    let mut c = u32::MAX - 1;
    assert_eq!(crate::world::next_handle(&mut c, |_| false), Ok(u32::MAX));
    assert_eq!(crate::world::next_handle(&mut c, |h| h < 4), Ok(4));
    assert_eq!(c, 4);
}
