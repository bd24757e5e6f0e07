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
use hyp::{glue, mm};
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
        glue::host_call(0xC600_1FFF, [0; 6]),
        Err((Errno::ENOSYS, 0))
    );
    ensure_eq!(glue::host_call(0, [0; 6]), Err((Errno::ENOSYS, 0)));
    let v = glue::host_call(abi::host::HostCall::Version.id(), [0; 6]);
    ensure_eq!(v.map(|r| r[0]), Ok(abi::host::ABI_VERSION));
    Ok(())
}

/// A `ret` instruction in writable data (the `static` has interior mutability, so it is placed in
/// `.data`, which W^X maps execute-never).
static RET_IN_DATA: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0xd65f_03c0);
/// A `ret` instruction in read-only data.
static RET_IN_RODATA: u32 = 0xd65f_03c0;

fn is_permission_fault(esr: u64) -> bool {
    matches!(esr & 0x3f, 0x0c..=0x0f)
}

fn el2_wx_code_is_read_only() -> TestResult {
    ensure!(SCTLR_EL2.is_set(SCTLR_EL2::WXN), "SCTLR_EL2.WXN clear");
    // A byte of the hyp's own code: readable, not writable. The probe writes the byte's own
    // value back, so nothing changes if W^X were broken.
    let code = el2_current_el_is_2 as *const () as usize;
    let byte = probe::read_u8(code).map_err(|f| alloc::format!("reading code: {f:?}"))?;
    let f = match probe::write_u8(code, byte) {
        Ok(()) => return Err(alloc::format!("the hyp's code at {code:#x} is writable")),
        Err(f) => f,
    };
    ensure_eq!(esr::ec(f.esr), esr::EC_DABT_CUR);
    ensure!(is_permission_fault(f.esr), "ESR {:#x}", f.esr);
    ensure_eq!(f.far, code as u64);
    // The vectors too, and read-only data.
    let vbar = VBAR_EL2.get() as usize;
    let v = probe::read_u8(vbar).map_err(|f| alloc::format!("reading vectors: {f:?}"))?;
    ensure!(
        probe::write_u8(vbar, v).is_err(),
        "the vectors are writable"
    );
    let ro = core::ptr::addr_of!(RET_IN_RODATA) as usize;
    let b = probe::read_u8(ro).map_err(|f| alloc::format!("reading rodata: {f:?}"))?;
    ensure!(
        probe::write_u8(ro, b).is_err(),
        "read-only data is writable"
    );
    Ok(())
}

fn el2_wx_data_stack_heap_and_rodata_do_not_execute() -> TestResult {
    let ret = 0xd65f_03c0u32;
    let on_stack = [ret; 2];
    let on_heap = alloc::boxed::Box::new(ret);
    let targets = [
        ("data", core::ptr::addr_of!(RET_IN_DATA) as usize),
        ("rodata", core::ptr::addr_of!(RET_IN_RODATA) as usize),
        ("stack", on_stack.as_ptr() as usize),
        ("heap", &*on_heap as *const u32 as usize),
    ];
    for (what, addr) in targets {
        // SAFETY: each target holds a `ret`, so were it executable the branch would come straight
        // back; execute-never makes it an instruction abort the probe returns.
        match unsafe { probe::exec(addr) } {
            Ok(()) => return Err(alloc::format!("{what} at {addr:#x} executed")),
            Err(f) => {
                ensure_eq!(esr::ec(f.esr), esr::EC_IABT_CUR);
                ensure!(is_permission_fault(f.esr), "{what}: ESR {:#x}", f.esr);
                ensure_eq!(f.far, addr as u64);
            }
        }
    }
    // A page from the page allocator (the region stage-2 tables come from).
    let pa = mm::alloc_pages(1).ok_or("allocation failed")?;
    // SAFETY: the page was just allocated to this test; identity-mapped, writable.
    unsafe { (pa as *mut u32).write_volatile(ret) };
    // SAFETY: as above, a `ret` or an instruction abort.
    let r = unsafe { probe::exec(pa) };
    mm::free_pages(pa, 1);
    ensure!(r.is_err(), "a page-allocator page executed");
    // And the hyp's code still runs: calling through a function pointer.
    let f: fn() -> TestResult = el2_current_el_is_2;
    f()
}

fn el2_injected_exceptions_enter_the_right_vector() -> TestResult {
    use hyp::arch::inject::{entry_pstate, esr_for, vector_offset, Injected};
    // EL1h, EL1t, EL0 AArch64, EL0 AArch32 (user mode 0x10).
    ensure_eq!(vector_offset(0x3c5), 0x200);
    ensure_eq!(vector_offset(0x3c4), 0x000);
    ensure_eq!(vector_offset(0x000), 0x400);
    ensure_eq!(vector_offset(0x010), 0x600);
    // Same-EL and lower-EL classes; IL from the trapped instruction.
    ensure_eq!(esr_for(Injected::Undef, 0x3c5, 1 << 25), 1 << 25);
    ensure_eq!(esr_for(Injected::Undef, 0x010, 0), 0);
    ensure_eq!(
        esr_for(Injected::DataAbort, 0x3c5, 1 << 25),
        (0x25 << 26) | (1 << 25) | 0x10
    );
    ensure_eq!(esr_for(Injected::DataAbort, 0x0, 1 << 25) >> 26, 0x24);
    ensure_eq!(
        esr_for(Injected::InstructionAbort, 0x3c5, 1 << 25) >> 26,
        0x21
    );
    ensure_eq!(
        esr_for(Injected::InstructionAbort, 0x0, 1 << 25) >> 26,
        0x20
    );
    // DAIF masked, EL1h; PAN set when SCTLR_EL1.SPAN is clear; SSBS from DSSBS.
    ensure_eq!(entry_pstate(0x0, 1 << 23), 0x3c5);
    ensure_eq!(entry_pstate(0x0, 0), 0x3c5 | (1 << 22));
    ensure_eq!(entry_pstate(0x0, (1 << 23) | (1 << 44)), 0x3c5 | (1 << 12));
    Ok(())
}

fn el2_guest_sysreg_traps_decode_and_the_ptimer_reads_back() -> TestResult {
    use hyp::arch::timer::{PtimerReg, PtimerRegs};
    use hyp::arch::traps::SysRegAccess;
    // `mrs x3, cntp_cval_el0`: op0 3, op1 3, CRn 14, CRm 2, op2 2, Rt 3, read.
    let iss = (3 << 20) | (2 << 17) | (3 << 14) | (14 << 10) | (3 << 5) | (2 << 1) | 1;
    let a = SysRegAccess::decode((0x18 << 26) | (1 << 25) | iss);
    ensure_eq!(a.enc, (3, 3, 14, 2, 2));
    ensure_eq!(a.rt, 3);
    ensure!(a.read);
    // `msr mdscr_el1, x30`: op0 2, op1 0, CRn 0, CRm 2, op2 2, Rt 30, write.
    let iss = (2 << 20) | (2 << 17) | (30 << 5) | (2 << 1);
    let a = SysRegAccess::decode((0x18 << 26) | iss);
    ensure_eq!((a.enc, a.rt, a.read), ((2, 0, 0, 2, 2), 30, false));
    let mut t = PtimerRegs::default();
    t.write(PtimerReg::Cval, 1000, 0);
    t.write(PtimerReg::Ctl, 0xffff_ffff, 0);
    ensure_eq!(t.read(PtimerReg::Ctl, 999), 0b011);
    // Enabled, count past CVAL: ISTATUS.
    ensure_eq!(t.read(PtimerReg::Ctl, 1000), 0b111);
    ensure_eq!(t.read(PtimerReg::Tval, 900), 100);
    ensure_eq!(t.read(PtimerReg::Tval, 1100), (-100i32) as u32 as u64);
    // TVAL writes are signed 32-bit.
    t.write(PtimerReg::Tval, (-5i32) as u32 as u64, 10_000);
    ensure_eq!(t.read(PtimerReg::Cval, 0), 9_995);
    Ok(())
}

fn el2_guest_id_registers_are_sanitised() -> TestResult {
    use hyp::arch::traps::{sanitized_id, GuestView};
    let closed = GuestView { pmu: false };
    let open = GuestView { pmu: true };
    let all = u64::MAX;
    // ID_AA64PFR0_EL1: EL2 (11:8), SVE (35:32), MPAM, AMU cleared; EL0/EL1/FP/AdvSIMD kept.
    let pfr0 = sanitized_id(4, 0, all, closed);
    ensure_eq!((pfr0 >> 8) & 0xf, 0);
    ensure_eq!((pfr0 >> 32) & 0xf, 0);
    ensure_eq!(pfr0 & 0xff, 0xff);
    // ID_AA64PFR1_EL1: SME (27:24), MTE (11:8) cleared.
    let pfr1 = sanitized_id(4, 1, all, closed);
    ensure_eq!((pfr1 >> 24) & 0xf, 0);
    ensure_eq!((pfr1 >> 8) & 0xf, 0);
    // ID_AA64DFR0_EL1: PMUVer only with a PMU; trace never.
    ensure_eq!((sanitized_id(5, 0, all, closed) >> 8) & 0xf, 0);
    ensure_eq!((sanitized_id(5, 0, all, open) >> 8) & 0xf, 0xf);
    ensure_eq!((sanitized_id(5, 0, all, open) >> 4) & 0xf, 0);
    // ZFR0 / SMFR0 and unknown AArch64 ID registers read as zero; PARange capped at 40 bits.
    ensure_eq!(sanitized_id(4, 4, all, open), 0);
    ensure_eq!(sanitized_id(4, 5, all, open), 0);
    ensure_eq!(sanitized_id(7, 3, all, open), 0);
    ensure_eq!(sanitized_id(7, 0, 0x5, open), 0x2);
    ensure_eq!(sanitized_id(7, 0, 0x1, open), 0x1);
    // CSV2 (PFR0 59:56) and CSV2_frac (PFR1 35:32) at most 1: no SCXTNUM for guests.
    ensure_eq!((sanitized_id(4, 0, all, open) >> 56) & 0xf, 1);
    ensure_eq!((sanitized_id(4, 0, 2 << 56, open) >> 56) & 0xf, 1);
    ensure_eq!((sanitized_id(4, 0, 0, open) >> 56) & 0xf, 0);
    ensure_eq!((sanitized_id(4, 1, all, open) >> 32) & 0xf, 1);
    Ok(())
}

/// IMPLEMENTATION DEFINED registers trap for both worlds (QEMU 7.2 ignores the bit: a platform
/// gap, docs/ARCHITECTURE.md), and a guest's stage-1 is its own (no HCR_EL2.DC).
fn el2_tidcp_is_set_for_the_host_and_guests() -> TestResult {
    use aarch64_cpu::registers::HCR_EL2;
    let tidcp = HCR_EL2::TIDCP::SET.value;
    ensure_eq!(hyp::arch::el1::host_hcr() & tidcp, tidcp);
    ensure_eq!(hyp::arch::switch::guest_hcr() & tidcp, tidcp);
    ensure_eq!(hyp::arch::switch::guest_hcr() & HCR_EL2::DC::SET.value, 0);
    Ok(())
}

/// Moving past a completed instruction: 4 bytes in AArch64 (BTYPE, SS cleared), 2 or 4 in T32
/// with the IT state advanced, 4 in A32; the AArch32 condition check.
fn el2_skipping_a_trapped_instruction_follows_its_length_and_it_block() -> TestResult {
    use hyp::arch::pc::{condition_holds, skip};
    let (mut pc, mut ps) = (0x1000u64, 0x3c5 | (0b11 << 10) | (1 << 21));
    skip(&mut pc, &mut ps, true);
    ensure_eq!((pc, ps), (0x1004, 0x3c5));
    // A32 User: +4 whatever IL says; T32: IL decides.
    let (mut pc, mut ps) = (0x8000u64, 0x10u64);
    skip(&mut pc, &mut ps, false);
    ensure_eq!((pc, ps), (0x8004, 0x10));
    let (mut pc, mut ps) = (0x8000u64, 0x30u64);
    skip(&mut pc, &mut ps, false);
    ensure_eq!(pc, 0x8002);
    skip(&mut pc, &mut ps, true);
    ensure_eq!(pc, 0x8006);
    // AArch32 PCs wrap at 4 GiB.
    let (mut pc, mut ps) = (0xffff_fffeu64, 0x30u64);
    skip(&mut pc, &mut ps, false);
    ensure_eq!(pc, 0);
    // `ite eq` (IT = 0b0000_1100 after the IT instruction: first EQ, then NE): one advance
    // leaves IT = 0b0001_1000 (next instruction NE), the next one leaves the block.
    let it = |v: u64| ((v & 0xfc) << 8) | ((v & 0b11) << 25);
    let (mut pc, mut ps) = (0x8000u64, 0x30 | it(0b0000_1100));
    skip(&mut pc, &mut ps, true);
    ensure_eq!(ps, 0x30 | it(0b0001_1000));
    skip(&mut pc, &mut ps, false);
    ensure_eq!(ps, 0x30);
    // Conditions: an MRC with CV = 1, COND = NE (0b0001) fails with Z set, passes without; EQ
    // the other way round; AL always; EC >= 0x10 is unconditional.
    let mrc = |cond: u64| (0x03 << 26) | (1 << 25) | (1 << 24) | (cond << 20);
    let z = 1u64 << 30;
    ensure!(!condition_holds(mrc(0b0001), 0x10 | z));
    ensure!(condition_holds(mrc(0b0001), 0x10));
    ensure!(condition_holds(mrc(0b0000), 0x10 | z));
    ensure!(condition_holds(mrc(0b1110), 0x10));
    // GT: Z clear and N == V; LE otherwise.
    let (n, v) = (1u64 << 31, 1u64 << 28);
    ensure!(condition_holds(mrc(0b1100), 0x10 | n | v));
    ensure!(!condition_holds(mrc(0b1100), 0x10 | n));
    ensure!(condition_holds(mrc(0b1101), 0x10 | n));
    ensure!(condition_holds((0x18 << 26) | (1 << 25), 0x10 | z));
    // No condition in the syndrome (CV = 0, T32): the IT state's (EQ here) decides.
    let t32 = (0x03 << 26) | (1 << 25);
    ensure!(!condition_holds(t32, 0x30 | it(0b0000_1000)));
    ensure!(condition_holds(t32, 0x30 | z | it(0b0000_1000)));
    ensure!(condition_holds(t32, 0x30));
    Ok(())
}

register!(
    el2_guest_id_registers_are_sanitised,
    el2_wx_code_is_read_only,
    el2_wx_data_stack_heap_and_rodata_do_not_execute,
    el2_injected_exceptions_enter_the_right_vector,
    el2_guest_sysreg_traps_decode_and_the_ptimer_reads_back,
    el2_tidcp_is_set_for_the_host_and_guests,
    el2_skipping_a_trapped_instruction_follows_its_length_and_it_block,
);

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
