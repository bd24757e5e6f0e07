//! The hyp's on-target tests at EL2. After them the image enters the EL1 test image (the host
//! side), handing over its pass/fail counts; that image prints the closing line.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use aarch64_cpu::registers::{Readable, SCTLR_EL2, VBAR_EL2};
use abi::Errno;
use hyp::arch::{self, esr, probe};
use hyp::boot::{self, BootInfo};
use hyp::{hostcall, mm};
use ontarget::{ensure, ensure_eq, register, TestResult, Totals};
use target_tests_el2::HANDOFF_MAGIC;

static HOST_TESTS: &[u8] = include_bytes!(env!("HOST_TEST_IMAGE"));

fn info() -> Result<&'static BootInfo, alloc::string::String> {
    boot::info().ok_or_else(|| "no boot info".into())
}

fn el2_current_el_is_2() -> TestResult {
    ensure_eq!(arch::current_el(), 2);
    Ok(())
}

fn el2_mmu_and_caches_are_on() -> TestResult {
    ensure!(SCTLR_EL2.is_set(SCTLR_EL2::M), "SCTLR_EL2.M clear");
    ensure!(SCTLR_EL2.is_set(SCTLR_EL2::C), "data cache off");
    ensure!(SCTLR_EL2.is_set(SCTLR_EL2::I), "instruction cache off");
    Ok(())
}

fn el2_unmapped_access_traps_into_the_fault_path() -> TestResult {
    // Flash at 0 is not in the hyp's stage-1 map: the load must fault with a translation fault.
    let fault = match probe::read_u8(0x1000) {
        Ok(v) => return Err(alloc::format!("read of unmapped 0x1000 returned {v:#x}")),
        Err(f) => f,
    };
    ensure_eq!(esr::ec(fault.esr), esr::EC_DABT_CUR);
    ensure_eq!(fault.far, 0x1000);
    ensure_eq!(esr::fsc_name(fault.esr), "translation fault");
    // Just past the end of RAM is unmapped too.
    let end = info()?.ram_end();
    ensure!(
        probe::read_u8(end).is_err(),
        "read past RAM end at {end:#x} did not fault"
    );
    // A mapped RAM byte reads fine through the same path.
    let x: u8 = 0xa5;
    ensure_eq!(probe::read_u8(&x as *const u8 as usize), Ok(0xa5));
    Ok(())
}

fn el2_vectors_installed_and_aligned() -> TestResult {
    let vbar = VBAR_EL2.get();
    ensure!(
        vbar != 0 && vbar.is_multiple_of(0x800),
        "VBAR_EL2 {vbar:#x}"
    );
    let i = info()?;
    ensure!(
        (board::layout::HYP_BASE as u64..i.image_end as u64).contains(&vbar),
        "VBAR_EL2 {vbar:#x} outside the hyp image"
    );
    Ok(())
}

fn el2_page_allocator_gives_distinct_aligned_zeroed_pages() -> TestResult {
    let before = mm::free_page_count();
    let mut pages = Vec::new();
    for _ in 0..64 {
        let pa = mm::alloc_pages(1).ok_or("allocation failed")?;
        ensure_eq!(pa % 4096, 0);
        // SAFETY: the page was just allocated to this test and is identity-mapped.
        let page = unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, 4096) };
        ensure!(page.iter().all(|&b| b == 0), "page {pa:#x} not zeroed");
        page.fill(0xee);
        pages.push(pa);
    }
    let mut sorted = pages.clone();
    sorted.sort_unstable();
    sorted.dedup();
    ensure_eq!(sorted.len(), 64);
    let i = info()?;
    ensure!(
        pages.iter().all(|&p| p >= i.frames.0 && p < i.frames.1),
        "page outside the allocator region"
    );
    ensure_eq!(mm::free_page_count(), before - 64);
    for pa in pages {
        mm::free_pages(pa, 1);
    }
    ensure_eq!(mm::free_page_count(), before);
    // Freed pages come back zeroed when handed out again.
    let pa = mm::alloc_pages(1).ok_or("allocation failed")?;
    // SAFETY: as above.
    let page = unsafe { core::slice::from_raw_parts(pa as *const u8, 4096) };
    ensure!(page.iter().all(|&b| b == 0), "reused page not zeroed");
    mm::free_pages(pa, 1);
    Ok(())
}

fn el2_page_allocator_aligns_multi_page_blocks() -> TestResult {
    let pa = mm::alloc_pages(8).ok_or("allocation failed")?;
    ensure_eq!(pa % (8 * 4096), 0);
    let pb = mm::alloc_pages(512).ok_or("allocation of 2 MiB failed")?;
    ensure_eq!(pb % (2 << 20), 0);
    ensure!(
        pb + (2 << 20) <= pa || pa + 8 * 4096 <= pb,
        "blocks overlap"
    );
    mm::free_pages(pa, 8);
    mm::free_pages(pb, 512);
    Ok(())
}

fn el2_heap_serves_collections() -> TestResult {
    let used = mm::heap_used();
    let mut m = BTreeMap::new();
    for i in 0..1000u64 {
        m.insert(i, i * 3);
    }
    ensure!(mm::heap_used() > used, "heap use did not grow");
    ensure_eq!(m.get(&999), Some(&2997));
    drop(m);
    ensure_eq!(mm::heap_used(), used);
    Ok(())
}

fn el2_dtb_memory_size_matches_qemu() -> TestResult {
    let expected_mib: usize = option_env!("QEMU_MEM_MIB")
        .and_then(|s| s.parse().ok())
        .ok_or("built without QEMU_MEM_MIB")?;
    let i = info()?;
    ensure_eq!(i.ram_size, expected_mib << 20);
    ensure_eq!(i.ram_base, board::layout::RAM_BASE);
    Ok(())
}

fn el2_boot_regions_are_disjoint_and_ordered() -> TestResult {
    let i = info()?;
    ensure!(i.image_end <= i.heap.0, "image overlaps heap");
    ensure!(
        i.heap.0 < i.heap.1 && i.heap.1 <= i.frames.0,
        "heap overlaps pages"
    );
    ensure_eq!(i.frames.1, board::layout::HYP_END);
    ensure!(i.el2_stack_top <= i.image_end, "stack outside the image");
    Ok(())
}

fn el2_unknown_host_call_is_enosys() -> TestResult {
    ensure_eq!(
        hostcall::dispatch(0xC600_1FFF, [0; 6]),
        Err((Errno::ENOSYS, 0))
    );
    ensure_eq!(hostcall::dispatch(0, [0; 6]), Err((Errno::ENOSYS, 0)));
    let v = hostcall::dispatch(abi::host::HostCall::Version.id(), [0; 6]);
    ensure_eq!(v.map(|r| r[0]), Ok(abi::host::ABI_VERSION));
    Ok(())
}

register!(
    el2_current_el_is_2,
    el2_mmu_and_caches_are_on,
    el2_unmapped_access_traps_into_the_fault_path,
    el2_vectors_installed_and_aligned,
    el2_page_allocator_gives_distinct_aligned_zeroed_pages,
    el2_page_allocator_aligns_multi_page_blocks,
    el2_heap_serves_collections,
    el2_dtb_memory_size_matches_qemu,
    el2_boot_regions_are_disjoint_and_ordered,
    el2_unknown_host_call_is_enosys,
);

#[no_mangle]
fn hyp_image_main(_info: &'static BootInfo) -> ! {
    hyp::crash::set_crash_hook(ontarget::report_crash);
    let t = ontarget::run_all(Totals::default());
    boot::enter_host(
        HOST_TESTS,
        [t.passed as u64, t.failed as u64, HANDOFF_MAGIC, 0],
    )
}
