//! 2 MiB blocks: a uniform, physically contiguous gmem range is mapped as one block; a conversion
//! of one page inside it unmaps the whole block (no memory needed) and the guest faults the mixed
//! range back page by page; when the range is uniform again (and still the one chunk) a fault maps
//! the block over those pages. Checked by walking the tables.

use abi::cmd::{OP_MEM_RANGE, OP_READ, OP_WRITE, STATUS_OK};
use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::guest::{MEM_SHARE, MEM_UNSHARE, SMCCC_SUCCESS};
use abi::PAGE_SIZE;
use host_shim::driver::GuestDriver;
use host_shim::runner::forward_hypercall;
use host_shim::vm::{self, SlotSpec};
use ontarget::{ensure, ensure_eq, register, TestResult};

use crate::vms::{e, with_pages};

const GPA: u64 = 0x8000_0000;
const BLOCK: u64 = 2 << 20;

/// The byte the test writes into page `i`.
fn val(i: u64) -> u64 {
    (0xa0 + i) & 0xff
}

fn blk_split_and_merge_by_walking_the_tables() -> TestResult {
    let (vm_id, mut guest) = with_pages(|p| {
        let vm = vm::vm_create(VmType::Pkvm).map_err(e)?;
        let g = vm::gmem_create(
            vm,
            2 * BLOCK,
            GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY,
        )
        .map_err(e)?;
        let spec = SlotSpec {
            gpa: GPA,
            size: 2 * BLOCK,
            gmem: Some((g, 0)),
            uaddr: UserspaceAddr::None,
            flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
        };
        vm::memslot_create(vm, &spec).map_err(e)?;
        for _ in 0..3 {
            let pa = p.alloc_contiguous(512, BLOCK).ok_or("no 2 MiB chunk")?;
            vm::donate(vm, pa, 512).map_err(e)?;
        }
        let guest = GuestDriver::load(vm, VmType::Pkvm, p).map_err(e)?;
        Ok((vm, guest))
    })?;
    let mut step = |op: u64, a: [u64; 4]| {
        let vcpu = guest.vcpu;
        with_pages(|p| {
            guest
                .step(op, a, p, &mut |f, x| forward_hypercall(vm_id, vcpu, f, x))
                .map_err(e)
        })
    };
    // One fault maps the whole 2 MiB range as a block.
    ensure_eq!(step(OP_WRITE, [GPA, val(0), 0, 0])?.status, Some(STATUS_OK));
    let (base, size) = vm::walk(vm_id, GPA).map_err(e)?;
    ensure_eq!(size, BLOCK);
    ensure_eq!(base % BLOCK, 0);
    let stats = vm::stats(vm_id).map_err(e)?;
    for i in [1u64, 5, 6, 511] {
        ensure_eq!(
            step(OP_WRITE, [GPA + i * PAGE_SIZE, val(i), 0, 0])?.status,
            Some(STATUS_OK)
        );
    }
    ensure_eq!(
        vm::stats(vm_id).map_err(e)?.faults_served,
        stats.faults_served
    );
    // The guest shares page 5: the unmap takes the whole block (it needs no memory, Trust rule
    // 3); the guest faults the pages back as 4 KiB pages (the range is mixed now), same physical
    // pages, same content.
    let r = step(OP_MEM_RANGE, [MEM_SHARE, GPA + 5 * PAGE_SIZE, 1, 0])?;
    ensure_eq!(r.results[0], SMCCC_SUCCESS);
    for i in [0u64, 1, 4, 5, 6, 511] {
        ensure!(
            vm::walk(vm_id, GPA + i * PAGE_SIZE).is_err(),
            "page {i} still mapped after the block was unmapped"
        );
    }
    for i in [1u64, 5, 6, 511] {
        ensure_eq!(
            step(OP_READ, [GPA + i * PAGE_SIZE, 0, 0, 0])?.results[0],
            val(i)
        );
        ensure_eq!(
            vm::walk(vm_id, GPA + i * PAGE_SIZE),
            Ok((base + i * PAGE_SIZE, PAGE_SIZE))
        );
    }
    ensure!(vm::walk(vm_id, GPA).is_err(), "page 0 mapped untouched");
    // Unshared again and touched: the range is uniform and one chunk: merged back.
    let r = step(OP_MEM_RANGE, [MEM_UNSHARE, GPA + 5 * PAGE_SIZE, 1, 0])?;
    ensure_eq!(r.results[0], SMCCC_SUCCESS);
    ensure_eq!(
        step(OP_READ, [GPA + 5 * PAGE_SIZE, 0, 0, 0])?.results[0],
        val(5)
    );
    ensure_eq!(vm::walk(vm_id, GPA), Ok((base, BLOCK)));
    ensure_eq!(
        vm::walk(vm_id, GPA + 5 * PAGE_SIZE),
        Ok((base + 5 * PAGE_SIZE, BLOCK))
    );
    for i in [0u64, 1, 5, 6, 511] {
        ensure_eq!(
            step(OP_READ, [GPA + i * PAGE_SIZE, 0, 0, 0])?.results[0],
            val(i)
        );
    }
    ensure_eq!(vm::check_invariants(), Ok(0));
    vm::vm_destroy(vm_id).map_err(e)?;
    ensure_eq!(vm::check_invariants(), Ok(0));
    Ok(())
}

register!(blk_split_and_merge_by_walking_the_tables);
