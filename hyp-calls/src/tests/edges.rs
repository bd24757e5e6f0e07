//! The edges of every check: must-be-zero arguments that cancel out under the wrong operator,
//! runs that touch the first or the last page of RAM or one page past it, unaligned offsets
//! whose page has bit 12 set, the last VMID, someone else's page, a chunk with one bad page in
//! the middle, twice-arriving calls. And the order Trust rule 3 asks for: a guest's mapping of a
//! page goes (its TLB invalidation) while the page still holds the guest's data, before the
//! core zeroes it. Where a check can only refuse when the ownership table disagrees with the
//! core (the hyp's defence in depth), the table is made to disagree (`force_info`) and the call
//! must change nothing.

use super::*;
use abi::guest::*;
use abi::host::{ExitReason, CONVERT_MODE_DEFAULT};
use hyp_core::{GmemHandle, Shareability, VmHandle};
use hyp_mem::ownership::{Component, PageInfo, PageState};
#[cfg(feature = "introspection")]
use hyp_mem::stage2::S2Attrs;

const P: u64 = PAGE_SIZE;
const IP: (u64, u64) = (SMCCC_INVALID_PARAMETER, 0);
/// What a guest wrote into its page.
const MARK: u64 = 0x5eed_0000_c0de_0001;
/// The coco shared bit (IPA bit 39).
const SHARED: u64 = 1 << 39;
/// One past the last byte of the fake RAM.
const RAM_END: u64 = FAKE_BASE + RAM_PAGES as u64 * P;

/// The guest-physical page `ipa` of `vm` maps to (after a fault there).
fn mapped(r: &Rig, vm: u64, ipa: u64) -> Option<u64> {
    r.hyp.vms[&(vm as u32)].stage2.walk(ipa).map(|m| m.pa_base)
}

/// A guest write at `ipa` served at EL2: the page it maps.
fn touched(r: &mut Rig, vm: u64, vcpu: u64, ipa: u64) -> u64 {
    let (step, _) = exits::touch(r, vcpu, ipa);
    assert!(matches!(step, Step::Resume), "{ipa:#x}: {step:?}");
    match mapped(r, vm, ipa) {
        Some(pa) => pa,
        None => panic!("{ipa:#x} not mapped after the fault"),
    }
}

fn state(r: &Rig, pa: u64, who: Component) -> PageState {
    r.hyp.owners.state(pa, who).unwrap()
}

/// Host and guest `vm` states of a page.
fn states(r: &Rig, vm: u64, pa: u64) -> (PageState, PageState) {
    (
        state(r, pa, Component::Host),
        state(r, pa, Component::Guest(vm as u16)),
    )
}

/// Guest `vm` shares the page with the host (the state a shared gmem page settles to).
const SHARED_WITH_HOST: (PageState, PageState) =
    (PageState::SharedBorrowed, PageState::SharedOwned);

/// Makes the ownership table disagree with the core about one page.
fn force(r: &mut Rig, pa: u64, f: impl FnOnce(&mut PageInfo)) {
    let mut info = r.hyp.owners.info(pa).unwrap();
    f(&mut info);
    r.hyp.owners.force_info(pa, info).unwrap();
}

fn gmem_file(r: &Rig, g: u64) -> &hyp_core::GmemFile {
    r.hyp.world.gmem(GmemHandle(g as u32)).unwrap()
}

/// Watches the word at `pa` from now on (every invalidation records it).
fn watch(r: &Rig, pa: u64) {
    let mut w = r.watch.borrow_mut();
    w.pa = Some(pa);
    w.seen.clear();
}

/// The word at the watched page when `ipa` of `vm` was first invalidated.
fn seen_at_unmap(r: &Rig, vm: u64, ipa: u64) -> Option<Option<u64>> {
    r.watch.borrow().at_first_invalidation(vm as u16, ipa)
}

// ---- guest calls ----

#[test]
fn relinquish_refuses_equal_nonzero_must_be_zero_arguments() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let pa = touched(&mut r, vm, vcpu, GPA + P);
    for (a2, a3) in [(1, 1), (u64::MAX, u64::MAX), (P, P)] {
        assert_eq!(served(&mut r, vcpu, [MEM_RELINQUISH, GPA + P, a2, a3]), IP);
    }
    // Nothing left the guest.
    assert_eq!(mapped(&r, vm, GPA + P), Some(pa));
    assert_eq!(gmem_file(&r, g).page_pa(P), Some(pa));
    assert_eq!(state(&r, pa, Component::Guest(vm as u16)), PageState::Owned);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn relinquish_unmaps_the_page_while_it_still_holds_the_guests_data() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    // Page 1 and page 3 of the file: their offsets have bit 12 set.
    for page in [1, 3] {
        let ipa = GPA + page * P;
        let pa = touched(&mut r, vm, vcpu, ipa);
        r.ram.write_u64(pa, MARK);
        watch(&r, pa);
        assert_eq!(
            served(&mut r, vcpu, [MEM_RELINQUISH, ipa, 0, 0]),
            (SMCCC_SUCCESS, 1)
        );
        assert_eq!(seen_at_unmap(&r, vm, ipa), Some(Some(MARK)), "page {page}");
        assert_eq!(r.ram.read_u64(pa), Some(0));
        assert_eq!(mapped(&r, vm, ipa), None);
        assert_eq!(gmem_file(&r, g).page_pa(page * P), None);
        assert!(r.hyp.owners.host_can_access(pa));
    }
    // Twice: the page is gone, a successful no-op.
    assert_eq!(
        served(&mut r, vcpu, [MEM_RELINQUISH, GPA + P, 0, 0]),
        (SMCCC_SUCCESS, 1)
    );
    assert_eq!(r.invariants(), 0);
}

#[test]
fn relinquish_is_refused_before_anything_changes_when_the_page_cannot_go_back() {
    let mut r = rig();
    // A plain VM's untracked gmem: the guest's page is shared with the host.
    let (vm, g, vcpu) = r.configured(VmType::Plain, 16, 32);
    let pa = touched(&mut r, vm, vcpu, GPA + P);
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
    r.ram.write_u64(pa, MARK);
    // The ownership table holds a host pin on it: it cannot be reclaimed (EBUSY).
    force(&mut r, pa, |i| i.host_pins = 1);
    assert_eq!(served(&mut r, vcpu, [MEM_RELINQUISH, GPA + P, 0, 0]), IP);
    assert_eq!(gmem_file(&r, g).page_pa(P), Some(pa));
    assert_eq!(mapped(&r, vm, GPA + P), Some(pa));
    assert_eq!(r.ram.read_u64(pa), Some(MARK));
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
}

#[test]
fn mmio_guard_must_be_zero_arguments_are_checked_one_by_one() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let dev = 0x9000_0000;
    // ENROLL: x1, x2 and x3 each must be 0, whatever the others are.
    for x in [[0, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [P, P, P]] {
        assert_eq!(
            served(&mut r, vcpu, [MMIO_GUARD_ENROLL, x[0], x[1], x[2]]),
            IP,
            "{x:x?}"
        );
        assert!(r.hyp.vms[&(vm as u32)].mmio_guard.is_none());
    }
    assert_eq!(
        served(&mut r, vcpu, [MMIO_GUARD_ENROLL, 0, 0, 0]),
        (SMCCC_SUCCESS, 0)
    );
    // MAP / UNMAP of one granule: x2 and x3 must be 0, even when equal.
    for func in [MMIO_GUARD_MAP, MMIO_GUARD_UNMAP] {
        for (a2, a3) in [(1, 1), (u64::MAX, u64::MAX)] {
            assert_eq!(served(&mut r, vcpu, [func, dev, a2, a3]), IP);
        }
    }
    let guard = r.hyp.vms[&(vm as u32)].mmio_guard.as_ref().unwrap();
    assert!(guard.is_empty());
}

#[test]
fn stateless_calls_check_each_must_be_zero_argument() {
    for func in [HYP_MEMINFO, MMIO_GUARD_INFO] {
        for a in [[1, 1, 0], [0, 1, 1], [1, 0, 1], [u64::MAX, u64::MAX, 0]] {
            assert_eq!(
                crate::guest::stateless_answer([func, a[0], a[1], a[2]]),
                [SMCCC_INVALID_PARAMETER, 0, 0, 0],
                "{func:#x} {a:x?}"
            );
        }
        assert_eq!(
            crate::guest::stateless_answer([func, 0, 0, 0]),
            [P, 1, 0, 0]
        );
    }
}

// ---- unmaps come first, both aliases ----

#[test]
fn punch_unmaps_the_page_while_it_still_holds_the_guests_data() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let pa = touched(&mut r, vm, vcpu, GPA + 3 * P);
    // Word 1: word 0 of a free page is the pool's link.
    r.ram.write_u64(pa + 8, MARK);
    watch(&r, pa + 8);
    r.ok(HostCall::PunchHole, [g, 3 * P, P, 0, 0, 0]);
    assert_eq!(seen_at_unmap(&r, vm, GPA + 3 * P), Some(Some(MARK)));
    assert_eq!(r.ram.read_u64(pa + 8), Some(0));
    assert_eq!(mapped(&r, vm, GPA + 3 * P), None);
    assert_eq!(state(&r, pa, Component::Hyp), PageState::Owned);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_zeroing_conversion_unmaps_the_page_while_it_still_holds_the_guests_data() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Coco, 16, 32);
    // A private page the guest wrote; the host makes it shared (coco: zeroed).
    let pa = touched(&mut r, vm, vcpu, GPA + 5 * P);
    r.ram.write_u64(pa, MARK);
    watch(&r, pa);
    r.ok(HostCall::Convert, [g, 5 * P, P, 1, CONVERT_MODE_DEFAULT, 0]);
    assert_eq!(seen_at_unmap(&r, vm, GPA + 5 * P), Some(Some(MARK)));
    assert_eq!(r.ram.read_u64(pa), Some(0));
    assert_eq!(mapped(&r, vm, GPA + 5 * P), None);
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_coco_conversion_unmaps_the_shared_alias_too() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Coco, 16, 32);
    r.ok(HostCall::Convert, [g, 0, P, 1, CONVERT_MODE_DEFAULT, 0]);
    // The guest reaches the shared page through the shared alias.
    let pa = touched(&mut r, vm, vcpu, GPA | SHARED);
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
    r.ok(HostCall::Convert, [g, 0, P, 0, CONVERT_MODE_DEFAULT, 0]);
    assert_eq!(mapped(&r, vm, GPA | SHARED), None);
    let tlb = &r.hyp.vms[&(vm as u32)].stage2.tlb().rec;
    assert!(tlb.events.iter().any(|e| matches!(
        *e,
        hyp_mem::fake::TlbEvent::InvalidateIpa { ipa, .. } if ipa == GPA | SHARED
    )));
    assert_eq!(state(&r, pa, Component::Host), PageState::NoPage);
    assert_eq!(r.invariants(), 0);
}

// ---- gmem host calls ----

#[test]
fn a_conversion_the_ownership_table_refuses_changes_nothing() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Coco, 16, 32);
    r.ok(HostCall::Convert, [g, 0, 2 * P, 1, CONVERT_MODE_DEFAULT, 0]);
    let pa = r.ok(HostCall::HostMapGmem, [g, P, 0, 0, 0, 0]);
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
    // The ownership table holds a host pin the core does not know of: the page cannot leave
    // the host (EBUSY), and neither page of the range changes.
    force(&mut r, pa, |i| i.host_pins = 1);
    assert_eq!(
        r.call(HostCall::Convert, [g, 0, 2 * P, 0, CONVERT_MODE_DEFAULT, 0]),
        Err((Errno::EBUSY, 0))
    );
    let f = gmem_file(&r, g);
    assert_eq!(f.shareability(0), Some(Shareability::All));
    assert_eq!(f.shareability(P), Some(Shareability::All));
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
}

#[test]
fn a_pin_the_ownership_table_refuses_takes_no_pin() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Coco, 16, 32);
    r.ok(HostCall::Convert, [g, 0, P, 1, CONVERT_MODE_DEFAULT, 0]);
    let pa = r.ok(HostCall::HostMapGmem, [g, 0, 0, 0, 0, 0]);
    // The table says another guest owns the page: EPERM, and no pin is taken.
    force(&mut r, pa, |i| {
        *i = PageInfo {
            guest: PageState::Owned,
            vm: vm as u16 + 1,
            ..PageInfo::HOST_OWNED
        };
        i.host = PageState::NoPage;
    });
    r.err(HostCall::HostPin, [g, 0, 0, 0, 0, 0], Errno::EPERM);
    assert_eq!(gmem_file(&r, g).pin_count(0), 0);
    r.err(HostCall::HostMapGmem, [g, 0, 0, 0, 0, 0], Errno::EPERM);
    r.err(HostCall::HostUnpin, [g, 0, 0, 0, 0, 0], Errno::EINVAL);
}

#[test]
fn pins_and_views_at_unaligned_offsets_settle_the_page_they_name() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Coco, 16, 32);
    r.ok(HostCall::Convert, [g, 0, 8 * P, 1, CONVERT_MODE_DEFAULT, 0]);
    // Odd pages (bit 12 set), unaligned offsets.
    let pinned = r.ok(HostCall::HostPin, [g, 5 * P + 7, 0, 0, 0, 0]);
    let viewed = r.ok(HostCall::HostMapGmem, [g, 3 * P + 5, 0, 0, 0, 0]);
    let f = gmem_file(&r, g);
    assert_eq!(f.page_pa(5 * P), Some(pinned));
    assert_eq!(f.page_pa(3 * P), Some(viewed));
    assert_eq!(f.pin_count(5 * P), 1);
    assert_eq!(f.allocated_pages(), 2);
    assert_eq!(states(&r, vm, pinned), SHARED_WITH_HOST);
    assert_eq!(states(&r, vm, viewed), SHARED_WITH_HOST);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_coco_conversion_to_private_preserves_by_default() {
    let mut r = rig();
    let (vm, g, _) = r.configured(VmType::Coco, 16, 32);
    r.ok(HostCall::Convert, [g, 0, P, 1, CONVERT_MODE_DEFAULT, 0]);
    let pa = r.ok(HostCall::HostMapGmem, [g, 0, 0, 0, 0, 0]);
    r.ram.write_u64(pa, MARK);
    assert_eq!(
        r.call(HostCall::Convert, [g, 0, P, 0, CONVERT_MODE_DEFAULT, 0]),
        Ok([0; 6])
    );
    assert_eq!(r.ram.read_u64(pa), Some(MARK));
    assert_eq!(gmem_file(&r, g).shareability(0), Some(Shareability::Guest));
    assert_eq!(states(&r, vm, pa), (PageState::NoPage, PageState::Owned));
    assert_eq!(r.invariants(), 0);
}

#[test]
fn guest_convert_reports_the_pages_of_the_piece() {
    let mut r = rig();
    let (_, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let (setup, exit) = hvc([MEM_SHARE, GPA, 4, 0]);
    let (step, _) = r.exit(vcpu, 0, setup, exit);
    assert!(matches!(step, Step::Exit((ExitReason::Hypercall, _), _)));
    assert_eq!(
        r.call(HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0]),
        Ok([0, 4, 0, 0, 0, 0])
    );
    // Twice: refused.
    r.err(HostCall::GuestConvert, [vcpu, 0, 0, 0, 0, 0], Errno::EINVAL);
}

// ---- memslots and host-shared pages ----

#[test]
fn userspace_addr_views_of_gmem_settle_the_gmem_page() {
    let mut r = rig();
    let vm = r.vm(VmType::Coco);
    let g = r.gmem(vm, 16, GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY);
    let s = r
        .slot(
            vm,
            GPA,
            16,
            g,
            UserspaceAddr::Gmem,
            MemslotFlags::DONT_CHECK_MISMATCHES,
        )
        .unwrap();
    r.donate(vm, 32);
    r.ok(
        HostCall::Convert,
        [g, 0, 16 * P, 1, CONVERT_MODE_DEFAULT, 0],
    );
    // An odd page at an unaligned offset: the gmem page, shared by the guest with the host
    // (not an anon page the host lends).
    let pa = r.ok(HostCall::HostMapUaddr, [vm, s, 3 * P + 5, 0, 0, 0]);
    let f = gmem_file(&r, g);
    assert_eq!(f.page_pa(3 * P), Some(pa));
    assert_eq!(f.allocated_pages(), 1);
    assert_eq!(states(&r, vm, pa), SHARED_WITH_HOST);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn host_runs_are_checked_against_both_ends_of_ram_first() {
    let mut r = rig();
    let (vm, _, _) = r.configured(VmType::Plain, 16, 16);
    // The first and the last page of RAM are RAM.
    r.ok(
        HostCall::MapHostShared,
        [vm, 0x9000_0000, FAKE_BASE, 1, 0, 0],
    );
    r.ok(
        HostCall::MapHostShared,
        [vm, 0x9100_0000, RAM_END - P, 1, 0, 0],
    );
    assert_eq!(
        state(&r, FAKE_BASE, Component::Host),
        PageState::SharedOwned
    );
    assert_eq!(
        state(&r, RAM_END - P, Component::Host),
        PageState::SharedOwned
    );
    // A page below, one past the end, a run leaving RAM at either end: EINVAL before the IPA
    // (inside a memslot: EEXIST) is looked at.
    for (pa, n) in [
        (FAKE_BASE - P, 1),
        (FAKE_BASE - P, 2),
        (RAM_END, 1),
        (RAM_END - P, 2),
        (0, 1),
    ] {
        r.err(
            HostCall::MapHostShared,
            [vm, GPA, pa, n, 0, 0],
            Errno::EINVAL,
        );
        r.err(HostCall::Donate, [vm, pa, n, 0, 0, 0], Errno::EINVAL);
    }
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_host_shared_run_is_checked_page_by_page_before_any_changes() {
    let mut r = rig();
    let (vm, _, _) = r.configured(VmType::Plain, 16, 16);
    let p0 = r.host_pages(3);
    // The third page is the VM's pool's, not the host's.
    r.ok(HostCall::Donate, [vm, p0 + 2 * P, 1, 0, 0, 0]);
    r.err(
        HostCall::MapHostShared,
        [vm, 0x9000_0000, p0 + P, 2, 0, 0],
        Errno::EPERM,
    );
    assert_eq!(state(&r, p0 + P, Component::Host), PageState::Owned);
    let h = VmHandle(vm as u32);
    assert_eq!(r.hyp.world.vm(h).unwrap().host_shared_pa(0x9000_0000), None);
    // Nothing was recorded at the IPA: the good page alone goes there.
    r.ok(HostCall::MapHostShared, [vm, 0x9000_0000, p0 + P, 1, 0, 0]);
    assert_eq!(
        r.hyp.world.vm(h).unwrap().host_shared_pa(0x9000_0000),
        Some(p0 + P)
    );
    assert_eq!(r.invariants(), 0);
}

// ---- VMs, vCPUs, pools ----

#[test]
fn vmids_are_reused_after_destroy_under_a_new_handle() {
    // Each VM takes its own 16 pages of the fake host's memory (which never reuses them).
    let mut r = rig_of(6 * RAM_PAGES);
    // Watch a page so that the fake TLB records every invalidation.
    r.watch.borrow_mut().pa = Some(FAKE_BASE);
    let mut seen = alloc::collections::BTreeSet::new();
    let mut stale = 0;
    for _ in 0..300 {
        let vm = r.vm(VmType::Plain);
        assert_eq!(VmHandle(vm as u32).vmid(), 1, "the lowest free VMID");
        assert!(seen.insert(vm), "handle 0x{vm:x} given twice");
        if stale != 0 {
            // The previous VM's handle names nothing, although its VMID serves again.
            r.err(HostCall::VmDestroy, [stale, 0, 0, 0, 0, 0], Errno::ENOENT);
            r.err(HostCall::VcpuCreate, [stale, 0, 0, 0, 0, 0], Errno::ENOENT);
        }
        r.destroy(vm);
        stale = vm;
    }
    // Every teardown invalidated the VMID before it was free again.
    let flushes = r
        .watch
        .borrow()
        .seen
        .iter()
        .filter(|(ev, _)| *ev == TlbEvent::InvalidateVmid { vmid: 1 })
        .count();
    assert_eq!(flushes, 300);
    assert!(r.hyp.vms.is_empty());
    assert_eq!(r.invariants(), 0);
}

#[test]
fn at_most_255_vms_at_once() {
    let mut r = rig_of(5 * RAM_PAGES);
    let vms: Vec<u64> = (0..255).map(|_| r.vm(VmType::Plain)).collect();
    let vmids: alloc::collections::BTreeSet<u16> =
        vms.iter().map(|&h| VmHandle(h as u32).vmid()).collect();
    assert_eq!(vmids.len(), 255);
    assert!(!vmids.contains(&0), "VMID 0 is the host's");
    // No VMID left: refused, and neither the core nor the hyp keeps a VM behind.
    let n = abi::host::VM_CREATE_PAGES;
    let pa = r.host_pages(n as usize);
    r.err(
        HostCall::VmCreate,
        [VmType::Plain as u64, pa, n, 0, 0, 0],
        Errno::ENOSPC,
    );
    // Nothing was taken: the same pages open the next VM once one goes.
    r.ok(HostCall::Donate, [vms[0], pa, n, 0, 0, 0]);
    assert_eq!(r.hyp.vms.len(), 255);
    assert_eq!(r.hyp.world.vm_count(), 255);
    // One goes: its VMID serves the next VM, under another handle.
    let gone = vms[99];
    r.destroy(gone);
    let again = r.vm(VmType::Plain);
    assert_ne!(again, gone);
    assert_eq!(VmHandle(again as u32).vmid(), VmHandle(gone as u32).vmid());
    r.err(HostCall::VmDestroy, [gone, 0, 0, 0, 0, 0], Errno::ENOENT);
}

#[test]
fn destroying_a_vm_takes_its_vcpus_and_only_those() {
    let mut r = rig();
    let (a, _, va) = r.configured(VmType::Pkvm, 16, 8);
    let (_, _, vb) = r.configured(VmType::Pkvm, 16, 8);
    r.destroy(a);
    assert!(!r.hyp.vcpus.contains_key(&(va as u32)));
    assert!(r.hyp.vcpus.contains_key(&(vb as u32)));
    let t = r.hyp.begin_run(vb, 0).unwrap();
    r.hyp.end_run(
        t,
        (ExitReason::Interrupt, [0; 5]),
        crate::state::Pending::None,
    );
    assert!(matches!(r.hyp.begin_run(va, 0), Err(Errno::ENOENT)));
}

/// A VM whose pool holds one free 2 MiB chunk. -> (vm, the chunk).
fn vm_with_a_chunk(r: &mut Rig) -> (u64, u64) {
    let vm = r.vm(VmType::Pkvm);
    let chunk = r.host_pages(512);
    assert_eq!(chunk % hyp_mem::stage2::SIZE_2M, 0);
    r.ok(HostCall::Donate, [vm, chunk, 512, 0, 0, 0]);
    assert_eq!(
        r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]).unwrap()[..2],
        [0, 1]
    );
    (vm, chunk)
}

#[test]
fn a_2mib_chunk_goes_back_to_the_host_whole() {
    let mut r = rig();
    let (vm, chunk) = vm_with_a_chunk(&mut r);
    assert_eq!(r.ok(HostCall::PoolReclaim, [vm, 1, 0, 0, 0, 0]), chunk);
    for i in 0..512 {
        assert_eq!(
            state(&r, chunk + i * P, Component::Host),
            PageState::Owned,
            "page {i}"
        );
    }
    assert_eq!(
        r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]).unwrap()[..2],
        [0, 0]
    );
    // Twice: nothing left.
    r.err(HostCall::PoolReclaim, [vm, 1, 0, 0, 0, 0], Errno::ENOENT);
    assert_eq!(r.invariants(), 0);
}

#[test]
fn a_2mib_chunk_with_one_page_not_the_hyps_stays_in_the_pool() {
    let mut r = rig();
    let (vm, chunk) = vm_with_a_chunk(&mut r);
    force(&mut r, chunk + 5 * P, |i| *i = PageInfo::HOST_OWNED);
    r.err(HostCall::PoolReclaim, [vm, 1, 0, 0, 0, 0], Errno::EPERM);
    for i in (0..512).filter(|&i| i != 5) {
        assert_eq!(
            state(&r, chunk + i * P, Component::Hyp),
            PageState::Owned,
            "page {i}"
        );
    }
    assert_eq!(
        r.call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0]).unwrap()[..2],
        [0, 1]
    );
}

// ---- introspection ----

#[cfg(feature = "introspection")]
#[test]
fn gmem_phys_keeps_the_offset_in_the_page() {
    let mut r = rig();
    let (vm, g, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    let pa = touched(&mut r, vm, vcpu, GPA + 3 * P);
    assert_eq!(
        r.ok(HostCall::GmemPhys, [g, 3 * P + 0x18, 0, 0, 0, 0]),
        pa + 0x18
    );
    assert_eq!(
        r.ok(HostCall::GmemPhys, [g, 4 * P - 8, 0, 0, 0, 0]),
        pa + P - 8
    );
}

#[cfg(feature = "introspection")]
#[test]
fn the_fault_mode_switches_both_ways() {
    let mut r = rig();
    let (vm, _, vcpu) = r.configured(VmType::Pkvm, 16, 32);
    r.ok(HostCall::VmSetFaultMode, [vm, 1, 0, 0, 0, 0]);
    let (step, _) = exits::touch(&mut r, vcpu, GPA);
    assert!(matches!(
        step,
        Step::Exit((ExitReason::PageFault, [GPA, 1, 0, 0, 0]), _)
    ));
    assert_eq!(mapped(&r, vm, GPA), None);
    r.ok(HostCall::VmSetFaultMode, [vm, 0, 0, 0, 0, 0]);
    touched(&mut r, vm, vcpu, GPA);
    for bad in [2, u64::MAX] {
        r.err(
            HostCall::VmSetFaultMode,
            [vm, bad, 0, 0, 0, 0],
            Errno::EINVAL,
        );
    }
    assert!(!r.hyp.vms[&(vm as u32)].faults_to_host);
}

#[cfg(feature = "introspection")]
#[test]
fn check_invariants_counts_both_kinds_of_violation() {
    let mut r = rig();
    let (vm, _, _) = r.configured(VmType::Pkvm, 16, 32);
    // A host page in the guest's stage-2, outside every memslot.
    let pa = r.host_pages(1);
    let v = r.hyp.vms.get_mut(&(vm as u32)).unwrap();
    v.stage2.map(0x1000, pa, P, S2Attrs::NORMAL_RWX).unwrap();
    let owners = r.hyp.check_invariants().len() as u64;
    let views = r.hyp.check_guest_views().len() as u64;
    assert!(owners >= 1 && views >= 1 && owners * views != owners + views);
    assert_eq!(r.ok(HostCall::CheckInvariants, [0; 6]), owners + views);
}
