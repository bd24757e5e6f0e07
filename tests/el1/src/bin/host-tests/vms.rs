//! Guests at EL2, seen from the host: faults served without exits, isolation between VMs,
//! teardown, MMIO, guest hypercalls, refused host calls.

use alloc::format;
use alloc::string::String;

use abi::cmd::{OP_UNDEF, STATUS_EXCEPTION, STATUS_OK};
use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::guest::*;
use abi::{Errno, PAGE_SIZE};
use host_shim::driver::{refuse_hypercalls, GuestDriver, StepReport};
use host_shim::pages::HostPages;
use host_shim::vm::{self, GmemId, SlotId, SlotSpec, VmId};
use ontarget::{ensure, ensure_eq, register, TestResult};

pub static PAGES: spin::Mutex<Option<HostPages>> = spin::Mutex::new(None);

pub fn init_pages() {
    if let Ok((base, size)) = vm::ram() {
        *PAGES.lock() = Some(HostPages::new(
            host_shim::free_memory_start() as u64,
            host_shim::free_memory_end(base, size),
        ));
    }
}

pub fn e(err: Errno) -> String {
    format!("unexpected {err}")
}

pub fn with_pages<R>(f: impl FnOnce(&mut HostPages) -> Result<R, String>) -> Result<R, String> {
    let mut g = PAGES.lock();
    let p = g.as_mut().ok_or("no host pages")?;
    f(p)
}

/// A `plain` VM in the seed's "non-coco, faults via get_pfn" configuration, with `pool` pages
/// donated and the step guest loaded.
struct PlainVm {
    vm: VmId,
    gmem: GmemId,
    slot: SlotId,
    guest: GuestDriver,
    pool_pa: u64,
    pool_pages: u64,
}

const GPA: u64 = 0x8000_0000;

fn plain_vm(gmem_size: u64, pool: u64) -> Result<PlainVm, String> {
    with_pages(|pages| {
        let vm = vm::vm_create(VmType::Plain).map_err(e)?;
        let gmem = vm::gmem_create(vm, gmem_size, GmemFlags::MMAP | GmemFlags::NO_DIRECT_MAP)
            .map_err(e)?;
        let slot = vm::memslot_create(
            vm,
            &SlotSpec {
                gpa: GPA,
                size: gmem_size,
                gmem: Some((gmem, 0)),
                uaddr: UserspaceAddr::None,
                flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
            },
        )
        .map_err(e)?;
        let pool_pa = pages
            .alloc_contiguous(pool.max(1), PAGE_SIZE)
            .ok_or("host out of pages")?;
        // Runs of at most 511 pages never make a 2 MiB chunk: every fault is a 4 KiB fault.
        let mut done = 0;
        while done < pool {
            let n = (pool - done).min(511);
            vm::donate(vm, pool_pa + done * PAGE_SIZE, n).map_err(e)?;
            done += n;
        }
        let guest = GuestDriver::load(vm, VmType::Plain, pages).map_err(e)?;
        Ok(PlainVm {
            vm,
            gmem,
            slot,
            guest,
            pool_pa,
            pool_pages: pool,
        })
    })
}

fn read(g: &mut GuestDriver, ipa: u64) -> Result<StepReport, String> {
    with_pages(|p| g.read(ipa, p, &mut refuse_hypercalls).map_err(e))
}

fn write(g: &mut GuestDriver, ipa: u64, v: u8) -> Result<StepReport, String> {
    with_pages(|p| g.write(ipa, v, p, &mut refuse_hypercalls).map_err(e))
}

fn hvc(g: &mut GuestDriver, f: u64, a: [u64; 3]) -> Result<StepReport, String> {
    with_pages(|p| g.hvc(f, a, p, &mut refuse_hypercalls).map_err(e))
}

fn vm_1000_pages_touched_with_zero_exits_to_host() -> TestResult {
    let mut v = plain_vm(4 << 20, 1100)?;
    let before = vm::stats(v.vm).map_err(e)?;
    let r = with_pages(|p| {
        v.guest
            .step(
                abi::cmd::OP_TOUCH,
                [GPA, 1000, PAGE_SIZE, 0],
                p,
                &mut refuse_hypercalls,
            )
            .map_err(e)
    })?;
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure_eq!(after.faults_served - before.faults_served, 1000);
    // Every exit of the step is the command device's MMIO (command, 3 arguments, status):
    // no exit for any of the 1,000 faults.
    ensure_eq!(
        after.exits - before.exits,
        after.mmio_exits - before.mmio_exits
    );
    ensure_eq!(after.exits - before.exits, 5);
    ensure_eq!(after.memory_fault_exits, 0);
    ensure_eq!(r.topped_up, 0);
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn vm_two_vms_at_the_same_ipa_get_different_pages() -> TestResult {
    let mut a = plain_vm(64 << 10, 16)?;
    let mut b = plain_vm(64 << 10, 16)?;
    ensure_eq!(
        write(&mut a.guest, GPA + 0x3000, 0xaa)?.status,
        Some(STATUS_OK)
    );
    let rb = read(&mut b.guest, GPA + 0x3000)?;
    ensure_eq!(rb.results[0], 0);
    ensure_eq!(
        write(&mut b.guest, GPA + 0x3000, 0xbb)?.status,
        Some(STATUS_OK)
    );
    ensure_eq!(read(&mut a.guest, GPA + 0x3000)?.results[0], 0xaa);
    ensure_eq!(read(&mut b.guest, GPA + 0x3000)?.results[0], 0xbb);
    let pa = vm::map_gmem(a.gmem, 0x3000, false).map_err(e)?;
    let pb = vm::map_gmem(b.gmem, 0x3000, false).map_err(e)?;
    ensure!(pa != pb, "both VMs got page 0x{pa:x}");
    vm::vm_destroy(a.vm).map_err(e)?;
    vm::vm_destroy(b.vm).map_err(e)?;
    Ok(())
}

fn vm_destroy_returns_every_page_zeroed() -> TestResult {
    let mut v = plain_vm(64 << 10, 24)?;
    for i in 0..8u64 {
        ensure_eq!(
            write(&mut v.guest, GPA + i * PAGE_SIZE + 0x10, 0x5a)?.status,
            Some(STATUS_OK)
        );
    }
    let returned = vm::vm_destroy(v.vm).map_err(e)?;
    // The pool, and what VmCreate and VcpuCreate took.
    ensure_eq!(
        returned,
        v.pool_pages + abi::host::VM_CREATE_PAGES + abi::host::VCPU_CREATE_PAGES
    );
    // The pool pages are the host's again; all of them must read as zero.
    let len = (v.pool_pages * PAGE_SIZE) as usize;
    // SAFETY: the VM is gone and the hyp gave these host pages back; the host reads its own RAM.
    let bytes = unsafe { core::slice::from_raw_parts(v.pool_pa as *const u8, len) };
    let dirty = bytes.iter().position(|&b| b != 0);
    ensure!(
        dirty.is_none(),
        "byte {:?} of the returned pages is not zero",
        dirty
    );
    // The VM and its objects are gone.
    ensure_eq!(vm::stats(v.vm), Err(Errno::ENOENT));
    ensure_eq!(vm::map_gmem(v.gmem, 0, false), Err(Errno::ENOENT));
    let _ = v.slot;
    Ok(())
}

fn vm_mmio_load_and_store_round_trip() -> TestResult {
    let mut v = plain_vm(64 << 10, 8)?;
    let dev = 0x9000_0000u64; // inside the scenario window, outside every memslot
    v.guest.mmio_read_value = 0x1234_5677;
    let r = read(&mut v.guest, dev + 0x10)?;
    ensure_eq!(r.mmio, Some((dev + 0x10, false, 0)));
    // A byte load: the hyp masks the value to the access size.
    ensure_eq!(r.results[0], 0x77);
    let w = write(&mut v.guest, dev + 0x20, 0x42)?;
    ensure_eq!(w.mmio, Some((dev + 0x20, true, 0x42)));
    ensure_eq!(w.status, Some(STATUS_OK));
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn vm_guest_hypercalls_answered_at_el2() -> TestResult {
    let mut v = plain_vm(64 << 10, 8)?;
    let uid = hvc(&mut v.guest, ARM_SMCCC_VENDOR_HYP_CALL_UID, [0; 3])?;
    ensure_eq!(uid.results, [KVM_UID[0], KVM_UID[1]]);
    let f = hvc(&mut v.guest, KVM_FEATURES, [0; 3])?;
    ensure_eq!(f.results[0], features_bitmap_0());
    ensure!(
        f.results[0] & (1 << 2) != 0,
        "HYP_MEMINFO (function 2) not advertised"
    );
    let m = hvc(&mut v.guest, HYP_MEMINFO, [0; 3])?;
    ensure_eq!(m.results, [4096, 1]);
    let bad = hvc(&mut v.guest, HYP_MEMINFO, [1, 0, 0])?;
    ensure_eq!(bad.results[0], SMCCC_INVALID_PARAMETER);
    let unknown = hvc(&mut v.guest, 0xC600_00FF, [0; 3])?;
    ensure_eq!(unknown.results[0], SMCCC_NOT_SUPPORTED);
    // The guest went on: it still runs steps, and none of these calls left EL2.
    let before = vm::stats(v.vm).map_err(e)?;
    hvc(&mut v.guest, HYP_MEMINFO, [0; 3])?;
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(
        after.exits - before.exits,
        after.mmio_exits - before.mmio_exits
    );
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn vm_guest_own_exception_is_a_clean_report() -> TestResult {
    let mut v = plain_vm(64 << 10, 8)?;
    let r = with_pages(|p| {
        v.guest
            .step(OP_UNDEF, [0; 4], p, &mut refuse_hypercalls)
            .map_err(e)
    })?;
    ensure_eq!(r.status, Some(STATUS_EXCEPTION));
    ensure_eq!(r.results[0] >> 26, 0); // EC 0: undefined instruction, at the guest's own EL1
                                       // The guest (and the hyp) carry on.
    ensure_eq!(write(&mut v.guest, GPA, 1)?.status, Some(STATUS_OK));
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn vm_empty_pool_exits_for_pages_and_resumes() -> TestResult {
    // No pages at all: the guest's first faults (its code, then its memory) need a top-up.
    let mut v = plain_vm(64 << 10, 0)?;
    ensure_eq!(vm::stats(v.vm).map_err(e)?.pool_free, 0);
    let r = write(&mut v.guest, GPA + 0x2000, 7)?;
    ensure_eq!(r.status, Some(STATUS_OK));
    ensure!(r.topped_up > 0, "no NeedPages exit with an empty pool");
    ensure_eq!(read(&mut v.guest, GPA + 0x2000)?.results[0], 7);
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn vm_refused_host_calls_change_nothing() -> TestResult {
    let v = plain_vm(64 << 10, 8)?;
    let before = vm::stats(v.vm).map_err(e)?;
    let spec = |gpa: u64, size: u64| SlotSpec {
        gpa,
        size,
        gmem: Some((v.gmem, 0)),
        uaddr: UserspaceAddr::None,
        flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM,
    };
    // Unknown handles.
    ensure_eq!(vm::vm_destroy(VmId(999)), Err(Errno::ENOENT));
    ensure_eq!(
        vm::gmem_create(VmId(999), 4096, GmemFlags::MMAP),
        Err(Errno::ENOENT)
    );
    ensure_eq!(vm::map_gmem(GmemId(999), 0, false), Err(Errno::ENOENT));
    ensure_eq!(
        vm::memslot_create(VmId(999), &spec(0x1000_0000, 4096)),
        Err(Errno::ENOENT)
    );
    ensure_eq!(
        vm::run(host_shim::vm::VcpuId(999), 0, 0),
        Err(Errno::ENOENT)
    );
    // Overlap, unaligned, out of range.
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(GPA + 0x1000, 4096)),
        Err(Errno::EEXIST)
    );
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(0x1000_0800, 4096)),
        Err(Errno::EINVAL)
    );
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(abi::guest::IPA_LIMIT, 4096)),
        Err(Errno::EINVAL)
    );
    ensure_eq!(
        vm::memslot_create(v.vm, &spec(!0xfff, 4096)),
        Err(Errno::EINVAL)
    );
    ensure_eq!(
        vm::gmem_create(v.vm, 4095, GmemFlags::MMAP),
        Err(Errno::EINVAL)
    );
    ensure_eq!(vm::gmem_create_raw(v.vm, 4096, 1 << 20), Err(Errno::EINVAL));
    ensure_eq!(vm::vm_create_raw(77), Err(Errno::EINVAL));
    // Pages the host does not own: the hyp's own memory, pages already donated, unaligned,
    // beyond RAM.
    ensure_eq!(vm::donate(v.vm, 0x4100_0000, 1), Err(Errno::EPERM));
    ensure_eq!(vm::donate(v.vm, v.pool_pa, 1), Err(Errno::EPERM));
    ensure_eq!(vm::donate(v.vm, v.pool_pa + 8, 1), Err(Errno::EINVAL));
    ensure_eq!(vm::donate(v.vm, 1 << 39, 1), Err(Errno::EINVAL));
    ensure_eq!(
        vm::map_host_shared(v.vm, 0x2_0000_0000, 0x4100_0000, 1),
        Err(Errno::EPERM)
    );
    // A run of pages that ends in hyp memory is refused whole.
    let after = vm::stats(v.vm).map_err(e)?;
    ensure_eq!(after, before);
    // And the VM still works.
    let mut g = v.guest;
    ensure_eq!(write(&mut g, GPA, 3)?.status, Some(STATUS_OK));
    vm::vm_destroy(v.vm).map_err(e)?;
    Ok(())
}

fn vm_userspace_addr_anon_and_gmem_view_paths() -> TestResult {
    with_pages(|_| Ok(()))?;
    let (vm_id, slot_anon, slot_view, gmem, mut guest) = with_pages(|pages| {
        let vm = vm::vm_create(VmType::Plain).map_err(e)?;
        let gmem =
            vm::gmem_create(vm, 64 << 10, GmemFlags::MMAP | GmemFlags::NO_DIRECT_MAP).map_err(e)?;
        let gmem2 = vm::gmem_create(vm, 64 << 10, GmemFlags::MMAP).map_err(e)?;
        let flags = MemslotFlags::DONT_CHECK_MISMATCHES;
        let slot_view = vm::memslot_create(
            vm,
            &SlotSpec {
                gpa: GPA,
                size: 64 << 10,
                gmem: Some((gmem, 0)),
                uaddr: UserspaceAddr::Gmem,
                flags,
            },
        )
        .map_err(e)?;
        let slot_anon = vm::memslot_create(
            vm,
            &SlotSpec {
                gpa: GPA + (1 << 20),
                size: 64 << 10,
                gmem: Some((gmem2, 0)),
                uaddr: UserspaceAddr::Anon,
                flags,
            },
        )
        .map_err(e)?;
        let pool = pages.alloc_contiguous(32, PAGE_SIZE).ok_or("no pages")?;
        vm::donate(vm, pool, 32).map_err(e)?;
        let guest = GuestDriver::load(vm, VmType::Plain, pages).map_err(e)?;
        Ok((vm, slot_anon, slot_view, gmem, guest))
    })?;
    // userspace_addr = gmem: the host's write through the gmem view is what the guest reads.
    let pa = vm::map_gmem(gmem, 0x1000, true).map_err(e)?;
    // SAFETY: the hyp handed out this page of the mmap view for writing.
    unsafe { core::ptr::write_volatile(pa as *mut u8, 0x3c) };
    ensure_eq!(read(&mut guest, GPA + 0x1000)?.results[0], 0x3c);
    ensure_eq!(vm::map_uaddr(vm_id, slot_view, 0x1000, false), Ok(pa));
    // userspace_addr = anon: separate host memory, not the gmem's page.
    let pa_anon = vm::map_uaddr(vm_id, slot_anon, 0x1000, true).map_err(e)?;
    // SAFETY: as above, the slot's anon page.
    unsafe { core::ptr::write_volatile(pa_anon as *mut u8, 0x4d) };
    ensure_eq!(read(&mut guest, GPA + (1 << 20) + 0x1000)?.results[0], 0x4d);
    ensure!(pa_anon != pa, "anon and gmem view share page 0x{pa:x}");
    // Beyond the slot: SIGBUS.
    ensure_eq!(
        vm::map_uaddr(vm_id, slot_anon, 64 << 10, false),
        Err(Errno::EFAULT)
    );
    vm::vm_destroy(vm_id).map_err(e)?;
    Ok(())
}

fn vm_host_mmap_view_refusals() -> TestResult {
    let vm = vm::vm_create(VmType::Plain).map_err(e)?;
    let no_mmap = vm::gmem_create(vm, 16 << 10, GmemFlags::empty()).map_err(e)?;
    ensure_eq!(vm::map_gmem(no_mmap, 0, false), Err(Errno::ENODEV));
    let g = vm::gmem_create(vm, 16 << 10, GmemFlags::MMAP).map_err(e)?;
    ensure_eq!(vm::map_gmem(g, 16 << 10, false), Err(Errno::EFAULT));
    ensure_eq!(vm::map_gmem(g, u64::MAX, false), Err(Errno::EFAULT));
    vm::vm_destroy(vm).map_err(e)?;
    Ok(())
}

register!(
    vm_1000_pages_touched_with_zero_exits_to_host,
    vm_two_vms_at_the_same_ipa_get_different_pages,
    vm_destroy_returns_every_page_zeroed,
    vm_mmio_load_and_store_round_trip,
    vm_guest_hypercalls_answered_at_el2,
    vm_guest_own_exception_is_a_clean_report,
    vm_empty_pool_exits_for_pages_and_resumes,
    vm_refused_host_calls_change_nothing,
    vm_userspace_addr_anon_and_gmem_view_paths,
    vm_host_mmap_view_refusals,
);
