//! Host calls on VMs and vCPUs: create and destroy, the pools the host donates, vCPUs.

use alloc::boxed::Box;
use core::mem::ManuallyDrop;

use abi::flags::VmType;
use abi::Errno;
use abi::PAGE_SIZE;
use hyp_core::VmHandle;
use hyp_mem::heap::VmHeap;
use hyp_mem::ownership::Transition;
use hyp_mem::pool::Pool;
use hyp_mem::provider::PageProvider;
use hyp_mem::stage2::Stage2;

use super::{ok, HostResult};
use crate::platform::Platform;
use crate::state::{handle32, Hyp, HypVm, Pending, Vcpu, VmStats, IPA};

/// Creates a VM over the host pages it donates (`pa`, `pages`): its pool and the first
/// reserve of its metadata heap. Every argument, the VM limit and every page's ownership are
/// checked before anything changes.
pub fn vm_create<P: Platform>(hyp: &mut Hyp<P>, vm_type: u64, pa: u64, pages: u64) -> HostResult {
    let t = VmType::from_u64(vm_type).ok_or(Errno::EINVAL)?;
    if pages < abi::host::VM_CREATE_PAGES {
        return Err(Errno::EINVAL);
    }
    hyp.ram_run(pa, pages)?;
    hyp.transition_all(pa, pages, Transition::HostDonateToHyp, |_, _| Ok(()))?;
    let h = hyp.world.create_vm(t, IPA.bits())?;
    // The VMID may have served a destroyed VM: its stage-2 invalidated every TLB entry of the
    // VMID when it went (`Stage2::destroy`), before the VMID was free again.
    let stage2 = Stage2::new(
        Pool::new(hyp.platform.ram()),
        hyp.platform.tlb(),
        h.vmid(),
        IPA,
    )
    .map_err(|(e, _, _)| Errno::from(e));
    let stage2 = match stage2 {
        Ok(s) => s,
        Err(e) => {
            let _ = hyp.world.destroy_vm(h, &mut Pool::new(hyp.platform.ram()));
            return Err(e);
        }
    };
    // Checked above: every page is the host's (if that ever failed, the VM goes again).
    if let Err(e) = hyp.take_from_host(pa, pages) {
        let (mut pool, _) = stage2.destroy();
        let _ = hyp.world.destroy_vm(h, &mut pool);
        return Err(e);
    }
    let mut v = HypVm {
        stage2,
        stats: VmStats::default(),
        mmio_guard: None,
        faults_to_host: false,
        pmu_open: false,
        cntvoff: hyp.platform.counter(),
        vcpus_created: 0,
        heap: ManuallyDrop::new(Box::new(VmHeap::new())),
    };
    v.stage2.mm_mut().add_run(pa, pages);
    hyp.vms.insert(h.0, v);
    // The heap's first reserve, from the donation (all of it: `VM_CREATE_PAGES` at least).
    if let Some(v) = hyp.vms.get_mut(&h.0) {
        for _ in 0..pages {
            if !v.stage2.mm_mut().lend_page(&v.heap) {
                break;
            }
        }
    }
    log::debug!("VM {} created ({})", h.0, t.name());
    ok(u64::from(h.0))
}

/// Tears a VM down; every page it held goes back to the host zeroed. -> x0 = pages returned.
/// Every page's ownership change is checked before anything changes.
pub fn vm_destroy<P: Platform>(hyp: &mut Hyp<P>, vm: u64) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    if !hyp.vms.contains_key(&h.0) {
        return Err(Errno::ENOENT);
    }
    if hyp.vcpus.values().any(|c| c.vm == h && c.ctx.is_none()) {
        return Err(Errno::EBUSY);
    }
    let pages = hyp.world.vm_pages(h)?;
    hyp.check_reclaim_all(h, &pages)?;
    for &pa in hyp.world.vm(h)?.host_shared_pages().iter() {
        hyp.owners
            .check(pa, Transition::HostUnshareFromGuest(h.vmid()))?;
    }
    let Some(v) = hyp.vms.remove(&h.0) else {
        return Err(Errno::ENOENT);
    };
    let HypVm {
        stage2,
        mmio_guard,
        heap,
        ..
    } = v;
    // The guest runs no more: its stage-2 goes first (every TLB entry of the VMID, the
    // table pages back into the pool), then the core zeroes every page that held data
    // as it frees it into the pool; each goes back to the hyp's ownership, then the
    // whole pool back to the host.
    let (mut pool, _) = stage2.destroy();
    let mut teardown = hyp.world.destroy_vm(h, &mut pool)?;
    for &pa in &teardown.freed {
        hyp.reclaim_to_pool(h, pa)?;
    }
    for pa in core::mem::take(&mut teardown.host_shared) {
        hyp.owners.host_unshare_from_guest(pa, h.vmid())?;
    }
    drop(teardown);
    // Every object the VM's heap served is gone with the VM (its gmem files, memslots, vCPU
    // contexts, guard set): the heap's pages go back to the pool, zeroed.
    hyp.vcpus.retain(|_, c| c.vm != h);
    drop(mmio_guard);
    while let Some((pa, _)) = heap.take_page() {
        pool.free_page(pa);
    }
    if heap.is_empty() {
        // The heap serves no object and holds no page: nothing refers to it any more.
        drop(ManuallyDrop::into_inner(heap));
    } else {
        // An object of the VM outlived it (a bug the checker reports): the heap stays, so
        // that object stays valid.
        hyp.leaked_heaps += 1;
    }
    let mut returned = 0u64;
    while let Some((pa, pages)) = pool.take_any() {
        for i in 0..pages {
            hyp.owners.hyp_donate_to_host(pa + i * PAGE_SIZE)?;
        }
        returned += pages;
    }
    log::debug!("VM {} destroyed: {} pages back to the host", h.0, returned);
    ok(returned)
}

/// Creates a vCPU of `vm` starting at `entry` with `x0 = arg`, over the host pages it donates
/// to the VM's pool (`pa`, `pages`). Checked whole before anything changes.
pub fn vcpu_create<P: Platform>(
    hyp: &mut Hyp<P>,
    vm: u64,
    entry: u64,
    arg: u64,
    pa: u64,
    pages: u64,
) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    hyp.vm_mut(vm)?;
    if entry >= IPA.limit() || !entry.is_multiple_of(4) || pages < abi::host::VCPU_CREATE_PAGES {
        return Err(Errno::EINVAL);
    }
    hyp.ram_run(pa, pages)?;
    // A protected VM's vCPUs, like its memslots, are fixed once it runs: a vCPU the
    // host adds later would start in the guest's memory where the host says.
    let v = hyp.world.vm(h)?;
    if v.vm_type() == VmType::Pkvm && v.started() {
        return Err(Errno::EPERM);
    }
    let id = hyp.next_vcpu.checked_add(1).ok_or(Errno::ENOSPC)?;
    let index = hyp.vm_mut(vm)?.vcpus_created;
    if index >= abi::host::VCPUS_PER_VM_MAX {
        return Err(Errno::ENOSPC);
    }
    // The donation joins the pool first (all or nothing); the heap's reserve comes from it,
    // which must then be whole.
    let v = hyp.vm_mut(vm)?;
    let have = v.heap.reserve() + v.stage2.mm().free_pages();
    if (have as u64).saturating_add(pages) < hyp_mem::heap::CALL_PAGES_MAX as u64 {
        return Err(Errno::ENOMEM);
    }
    hyp.take_from_host(pa, pages)?;
    // The donation goes to the heap's reserve, which the context is then taken from.
    let v = hyp.vm_mut(vm)?;
    v.stage2.mm_mut().add_run(pa, pages);
    for _ in 0..pages {
        if !v.stage2.mm_mut().lend_page(&v.heap) {
            break;
        }
    }
    // The context is the VM's (its heap pays); the table entry is the hyp's (bounded by the
    // limits).
    let ctx = {
        let _charge = hyp.charge(h.0).map_err(|_| Errno::ENOMEM)?;
        Box::new(hyp.platform.new_vcpu(entry, arg, index))
    };
    hyp.vm_mut(vm)?.vcpus_created = index + 1;
    hyp.next_vcpu = id;
    hyp.vcpus.insert(
        id,
        Vcpu {
            vm: h,
            ctx: Some(ctx),
            pending: Pending::None,
        },
    );
    ok(u64::from(id))
}

/// Host pages join a VM's pool (host OWNED -> hyp OWNED). All or nothing.
pub fn donate<P: Platform>(hyp: &mut Hyp<P>, vm: u64, pa: u64, pages: u64) -> HostResult {
    hyp.vm_mut(vm)?;
    hyp.ram_run(pa, pages)?;
    hyp.take_from_host(pa, pages)?;
    let v = hyp.vm_mut(vm)?;
    v.stage2.mm_mut().add_run(pa, pages);
    ok(v.stage2.mm().free_pages() as u64)
}

/// One free page (`kind` 0) or 2 MiB chunk (`kind` 1) of the VM's pool back to the host.
pub fn pool_reclaim<P: Platform>(hyp: &mut Hyp<P>, vm: u64, kind: u64) -> HostResult {
    let block = match kind {
        0 => false,
        1 => true,
        _ => return Err(Errno::EINVAL),
    };
    let pool = hyp.vm_mut(vm)?.stage2.mm_mut();
    let pa = pool.take_free(block).ok_or(Errno::ENOENT)?;
    let pages = if block {
        hyp_mem::stage2::SIZE_2M / PAGE_SIZE
    } else {
        1
    };
    let t = Transition::HypDonateToHost;
    if let Err(e) = hyp.transition_all(pa, pages, t, |_, _| Ok(())) {
        // Not the hyp's (cannot happen for a pool page): keep it in the pool.
        hyp.vm_mut(vm)?.stage2.mm_mut().add_run(pa, pages);
        return Err(e);
    }
    hyp.transition_all(pa, pages, t, |o, p| o.hyp_donate_to_host(p))?;
    ok(pa)
}

/// Free loose pages and free 2 MiB chunks of the VM's pool.
pub fn pool_stats<P: Platform>(hyp: &mut Hyp<P>, vm: u64) -> HostResult {
    let (pages, blocks) = hyp.vm_mut(vm)?.stage2.mm().stats();
    Ok([pages as u64, blocks as u64, 0, 0, 0, 0])
}
