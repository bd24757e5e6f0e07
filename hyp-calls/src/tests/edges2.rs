//! The fault path's 2 MiB blocks (every page of the chunk checked before any moves, the block
//! mapped over the range's own 4 KiB pages, the faulting page alone where other pages are
//! there) and the MMIO guard's page mask. Found by a mutation run: none of the suites faulted a
//! block in.

use super::*;
use hyp_core::Access;
use hyp_mem::ownership::{Component, PageInfo, PageState};
use hyp_mem::stage2::SIZE_2M;

use crate::exit::MmioAccess;

const P: u64 = PAGE_SIZE;

/// A pkvm VM with a 512-page gmem bound at [`GPA`] (2 MiB aligned), a pool holding one free
/// 2 MiB chunk and 8 loose pages (for tables), and one vCPU. -> (vm, gmem, vcpu, chunk).
fn block_vm(r: &mut Rig) -> (u64, u64, u64, u64) {
    let vm = r.vm(VmType::Pkvm);
    let g = r.gmem(vm, 512, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY);
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    assert!(r.slot(vm, GPA, 512, g, UserspaceAddr::None, both).is_ok());
    let chunk = r.host_pages(512);
    assert_eq!(chunk % SIZE_2M, 0);
    r.ok(HostCall::Donate, [vm, chunk, 512, 0, 0, 0]);
    r.donate(vm, 8);
    let vcpu = r.vcpu(vm, 0x1_4000_0000, 0);
    (vm, g, vcpu, chunk)
}

/// The leaf mapping `ipa` of `vm`: (pa of `ipa`, leaf size).
fn leaf(r: &Rig, vm: u64, ipa: u64) -> Option<(u64, u64)> {
    let m = r.hyp.vms[&(vm as u32)].stage2.walk(ipa)?;
    Some((m.pa_base + (ipa - m.ipa_base), m.size))
}

/// A guest write at `ipa`: the step and what was injected.
fn write_at(r: &mut Rig, vcpu: u64, ipa: u64) -> (Step, Vec<(Injected, u64)>) {
    let (step, ctx) = exits::touch(r, vcpu, ipa);
    (step, ctx.injected)
}

fn state(r: &Rig, pa: u64, who: Component) -> PageState {
    r.hyp.owners.state(pa, who).unwrap()
}

#[test]
fn a_block_fault_moves_every_page_of_the_chunk_to_the_guest() {
    let mut r = rig();
    let (vm, _, vcpu, chunk) = block_vm(&mut r);
    let (step, injected) = write_at(&mut r, vcpu, GPA + 5 * P);
    assert!(matches!(step, Step::Resume), "{step:?}");
    assert_eq!(injected, []);
    assert_eq!(leaf(&r, vm, GPA + 5 * P), Some((chunk + 5 * P, SIZE_2M)));
    for i in 0..512 {
        let pa = chunk + i * P;
        assert_eq!(state(&r, pa, Component::Guest(vm as u16)), PageState::Owned);
        assert_eq!(state(&r, pa, Component::Host), PageState::NoPage, "{i}");
        assert_eq!(state(&r, pa, Component::Hyp), PageState::NoPage, "{i}");
    }
    // (The invariant checker over a block runs in the remap test: costly under Miri.)
}

#[test]
fn a_block_with_one_page_the_table_refuses_moves_no_page() {
    let mut r = rig();
    let (vm, _, vcpu, chunk) = block_vm(&mut r);
    // The ownership table says the host owns a page in the middle of the chunk.
    let bad = chunk + 300 * P;
    r.hyp.owners.force_info(bad, PageInfo::HOST_OWNED).unwrap();
    let (step, injected) = write_at(&mut r, vcpu, GPA + 5 * P);
    assert!(matches!(step, Step::Resume), "{step:?}");
    assert_eq!(injected, [(Injected::DataAbort, GPA + 5 * P)]);
    assert_eq!(leaf(&r, vm, GPA + 5 * P), None);
    // All or nothing: every other page of the chunk is still the hyp's.
    for i in (0..512).filter(|&i| i != 300) {
        let pa = chunk + i * P;
        assert_eq!(state(&r, pa, Component::Hyp), PageState::Owned, "{i}");
        assert_eq!(
            state(&r, pa, Component::Guest(vm as u16)),
            PageState::NoPage,
            "{i}"
        );
    }
    assert_eq!(state(&r, bad, Component::Host), PageState::Owned);
}

#[test]
fn a_block_is_mapped_again_over_the_ranges_own_pages() {
    // Room for a second chunk: a block fault is considered only while the pool has one.
    let mut r = rig_of(2 * RAM_PAGES);
    let (vm, g, vcpu, chunk) = block_vm(&mut r);
    assert!(matches!(write_at(&mut r, vcpu, GPA).0, Step::Resume));
    // A punched page: the block goes whole; the page goes back to the pool, the last freed,
    // so the next fault there (4 KiB: the range is not all allocated) gets it back.
    r.ok(HostCall::PunchHole, [g, 9 * P, P, 0, 0, 0]);
    assert_eq!(leaf(&r, vm, GPA), None);
    assert_eq!(write_at(&mut r, vcpu, GPA + 9 * P).1, []);
    assert_eq!(leaf(&r, vm, GPA + 9 * P), Some((chunk + 9 * P, P)));
    // The range is one chunk again: a fault elsewhere maps the block over page 9 (and leaves
    // the pool's chunk alone).
    let spare = r.host_pages(512);
    r.ok(HostCall::Donate, [vm, spare, 512, 0, 0, 0]);
    let (step, injected) = write_at(&mut r, vcpu, GPA + 5 * P);
    assert!(matches!(step, Step::Resume), "{step:?}");
    assert_eq!(injected, []);
    assert_eq!(leaf(&r, vm, GPA + 5 * P), Some((chunk + 5 * P, SIZE_2M)));
    assert_eq!(leaf(&r, vm, GPA + 9 * P), Some((chunk + 9 * P, SIZE_2M)));
    assert_eq!(
        r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0])
            .map(|x| x[1]),
        Ok(1)
    );
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_block_over_a_foreign_page_maps_the_faulting_page_alone() {
    let mut r = rig();
    let (vm, _, vcpu, chunk) = block_vm(&mut r);
    // A page of the range mapped to some other page (the table disagreeing with the core):
    // the block does not replace it; the faulting page (bit 12 set, unaligned) goes alone.
    let other = r.host_pages(1);
    let v = r.hyp.vms.get_mut(&(vm as u32)).unwrap();
    v.stage2
        .map(GPA + 9 * P, other, P, hyp_mem::stage2::S2Attrs::NORMAL_RWX)
        .unwrap();
    let (step, injected) = write_at(&mut r, vcpu, GPA + 5 * P + 0x18);
    assert!(matches!(step, Step::Resume), "{step:?}");
    assert_eq!(injected, []);
    assert_eq!(leaf(&r, vm, GPA + 5 * P), Some((chunk + 5 * P, P)));
    assert_eq!(leaf(&r, vm, GPA + 4 * P), None);
    assert_eq!(leaf(&r, vm, GPA + 6 * P), None);
    assert_eq!(leaf(&r, vm, GPA + 9 * P), Some((other, P)));
}

#[test]
fn a_guarded_mmio_page_exits_at_any_offset_in_it() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    // A device page whose address has bit 12 set.
    let dev = 0x9000_1000;
    for x in [
        [abi::guest::MMIO_GUARD_ENROLL, 0, 0, 0],
        [abi::guest::MMIO_GUARD_MAP, dev, 0, 0],
    ] {
        let (setup, exit) = hvc(x);
        let (_, ctx) = r.exit(vcpu, 0, setup, exit);
        assert_eq!(ctx.x[0], abi::guest::SMCCC_SUCCESS);
    }
    let load = MmioAccess {
        size: 4,
        write: false,
        reg: 1,
        sign_extend: false,
        sixty_four: true,
        wide: true,
    };
    let (step, ctx) = r.exit(
        vcpu,
        0,
        |_| {},
        GuestExit::Stage2Abort {
            ipa: dev + 0x18,
            access: Access::Read,
            mmio: Some(load),
        },
    );
    assert!(
        matches!(
            step,
            Step::Exit((abi::host::ExitReason::Mmio, [a, 4, 0, 0, 0]), _) if a == dev + 0x18
        ),
        "{step:?}"
    );
    assert_eq!(ctx.injected, []);
}

// ---- ownership bookkeeping ----

#[test]
fn a_second_vms_fault_gives_the_page_to_that_vm() {
    let mut r = rig();
    r.vm(VmType::Pkvm);
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 8);
    assert_eq!(vm, 2);
    assert_eq!(write_at(&mut r, vcpu, GPA).1, []);
    let Some((pa, _)) = leaf(&r, vm, GPA) else {
        panic!("not mapped")
    };
    assert_eq!(state(&r, pa, Component::Guest(2)), PageState::Owned);
    assert_eq!(r.hyp.owners.info(pa).map(|i| i.vm), Ok(2));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_donation_with_one_page_not_the_hosts_changes_no_page() {
    let mut r = rig();
    let vm = r.vm(VmType::Pkvm);
    let p0 = r.host_pages(3);
    r.ok(HostCall::Donate, [vm, p0 + 2 * P, 1, 0, 0, 0]);
    let before = r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]);
    r.err(HostCall::Donate, [vm, p0, 3, 0, 0, 0], Errno::EPERM);
    for pa in [p0, p0 + P] {
        assert_eq!(state(&r, pa, Component::Host), PageState::Owned);
    }
    assert_eq!(r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]), before);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_page_made_private_leaves_the_host_stage2() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Coco, 16, 32);
    r.ok(
        HostCall::Convert,
        [g, 0, P, 1, abi::host::CONVERT_MODE_DEFAULT, 0],
    );
    let pa = r.ok(HostCall::HostMapGmem, [g, 0, 0, 0, 0, 0]);
    // The host touches the shared page: its stage-2 maps it.
    assert!(r.hyp.host_stage2_fault(pa));
    assert!(r.hyp.host_s2.walk(pa).is_some());
    r.ok(
        HostCall::Convert,
        [g, 0, P, 0, abi::host::CONVERT_MODE_DEFAULT, 0],
    );
    assert_eq!(r.hyp.host_s2.walk(pa), None);
    assert_eq!(state(&r, pa, Component::Host), PageState::NoPage);
    assert_eq!(state(&r, pa, Component::Guest(vm as u16)), PageState::Owned);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn an_anon_page_is_the_hosts_shared_with_the_guest() {
    let mut r = rig();
    let vm = r.vm(VmType::Plain);
    let s = match r.slot(vm, GPA, 16, 0, UserspaceAddr::Anon, MemslotFlags::empty()) {
        Ok(s) => s,
        Err(e) => panic!("slot: {e}"),
    };
    r.donate(vm, 8);
    let pa = r.ok(HostCall::HostMapUaddr, [vm, s, 3 * P + 5, 0, 0, 0]);
    assert_eq!(state(&r, pa, Component::Host), PageState::SharedOwned);
    assert_eq!(
        state(&r, pa, Component::Guest(vm as u16)),
        PageState::SharedBorrowed
    );
    assert_eq!(state(&r, pa, Component::Hyp), PageState::NoPage);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_punch_the_ownership_table_refuses_changes_nothing() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    assert_eq!(write_at(&mut r, vcpu, GPA + 3 * P).1, []);
    let Some((pa, _)) = leaf(&r, vm, GPA + 3 * P) else {
        panic!("not mapped")
    };
    r.ram.write_u64(pa, 0x5eed);
    // A host pin the core does not know of: the page cannot go back to the hyp.
    let mut info = r.hyp.owners.info(pa).unwrap();
    info.host_pins = 1;
    r.hyp.owners.force_info(pa, info).unwrap();
    r.err(HostCall::PunchHole, [g, 3 * P, P, 0, 0, 0], Errno::EBUSY);
    let f = r.hyp.world.gmem(hyp_core::GmemHandle(g as u32)).unwrap();
    assert_eq!(f.page_pa(3 * P), Some(pa));
    assert_eq!(leaf(&r, vm, GPA + 3 * P), Some((pa, P)));
    assert_eq!(r.ram.read_u64(pa), Some(0x5eed));
    assert_eq!(state(&r, pa, Component::Guest(vm as u16)), PageState::Owned);
}

#[test]
fn the_host_stage2_maps_the_first_page_of_ram() {
    let mut r = rig();
    assert!(r.hyp.host_stage2_fault(FAKE_BASE));
    assert!(r.hyp.host_s2.walk(FAKE_BASE).is_some());
    assert!(!r.hyp.host_stage2_fault(FAKE_BASE - P));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn the_guest_view_check_names_a_wrong_page_and_a_private_page_the_host_holds() {
    use crate::ownership::GuestViewViolation;
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    for ipa in [GPA, GPA + P] {
        assert_eq!(write_at(&mut r, vcpu, ipa).1, []);
    }
    let (Some((p0, _)), Some((p1, _))) = (leaf(&r, vm, GPA), leaf(&r, vm, GPA + P)) else {
        panic!("not mapped")
    };
    assert_eq!(r.hyp.check_guest_views(), []);
    // The table says the host borrows the guest's private page 0 (the guest still owns it);
    // page 1 is mapped to a page of the host's.
    let mut info = r.hyp.owners.info(p0).unwrap();
    info.host = PageState::SharedBorrowed;
    r.hyp.owners.force_info(p0, info).unwrap();
    let other = r.host_pages(1);
    let v = r.hyp.vms.get_mut(&(vm as u32)).unwrap();
    v.stage2.unmap(GPA + P, P).unwrap();
    v.stage2
        .map(GPA + P, other, P, hyp_mem::stage2::S2Attrs::NORMAL_RWX)
        .unwrap();
    let id = vm as u32;
    assert_eq!(
        r.hyp.check_guest_views(),
        [
            GuestViewViolation::PrivateNotOwned {
                vm: id,
                ipa: GPA,
                pa: p0
            },
            GuestViewViolation::WrongPage {
                vm: id,
                ipa: GPA + P,
                pa: other,
                expected: Some(p1)
            },
        ]
    );
}
