//! Host calls on VMs and vCPUs: create and destroy, the pools the host donates, vCPUs.

use alloc::boxed::Box;

use abi::flags::VmType;
use abi::Errno;
use abi::PAGE_SIZE;
use hyp_core::VmHandle;
use hyp_mem::ownership::Transition;
use hyp_mem::pool::Pool;
use hyp_mem::provider::PageProvider;
use hyp_mem::stage2::Stage2;

use super::{ok, HostResult};
use crate::platform::Platform;
use crate::state::{handle32, Dying, HeapBox, Hyp, HypVm, Pending, Vcpu, VmStats, IPA};

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
        heap: HeapBox::new(),
        dying: Dying::Live,
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

/// Tears a VM down in bounded steps (as pKVM reclaims a dying guest's pages one call at a
/// time): each call does at most [`abi::host::TEARDOWN_STEP_PAGES`] pages of work and the host
/// calls again while `x1 = 1`. -> x0 = pages this call gave back to the host (zeroed), x1 = 1
/// while the VM is not gone yet. The first call checks every page's ownership change before
/// anything changes (`EBUSY` while a vCPU runs), then the VM is dying: no other call reaches
/// it or its gmem files (`ENOENT`), and its stage-2 maps nothing any more. The steps free its
/// pages into its pool (memslots' `anon` memory, gmem pages, pins or not; host pages shared
/// into it go back to the host alone), then its records and heap go, then the pool goes back
/// to the host; the last step frees the VMID (its TLB entries invalidated first).
pub fn vm_destroy<P: Platform>(hyp: &mut Hyp<P>, vm: u64) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    let state = hyp.vms.get(&h.0).ok_or(Errno::ENOENT)?.dying;
    if state == Dying::Live {
        if hyp.vcpus.values().any(|c| c.vm == h && c.ctx.is_none()) {
            return Err(Errno::EBUSY);
        }
        hyp.world
            .try_for_each_vm_page(h, |pa| hyp.check_reclaim(h, pa))?;
        let t = Transition::HostUnshareFromGuest(h.vmid());
        for pa in hyp.world.vm(h)?.host_shared_iter() {
            hyp.owners.check(pa, t)?;
        }
        hyp.world.begin_teardown(h)?;
        let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
        v.dying = Dying::Freeing;
        // The guest runs no more: every mapping of its stage-2 goes (both coco aliases, with
        // their TLB entries) before any page is zeroed or changes hands (Trust rule 3).
        v.stage2.unmap_clamped(0, IPA.limit());
    }
    let step = abi::host::TEARDOWN_STEP_PAGES;
    if state != Dying::Draining {
        let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
        let t = hyp.world.teardown_step(h, step, v.stage2.mm_mut())?;
        // Checked at the first step: each page goes back to the hyp, each shared host page to
        // the host alone.
        for &pa in &t.freed {
            hyp.reclaim_to_pool(h, pa)?;
        }
        for &pa in &t.host_shared {
            hyp.owners.host_unshare_from_guest(pa, h.vmid())?;
        }
        if !t.freed.is_empty() || !t.host_shared.is_empty() {
            return Ok([0, 1, 0, 0, 0, 0]);
        }
        // Nothing of the VM holds a page any more: its records go (memslots, gmem files,
        // vCPU contexts, guard set), so its heap serves nothing and goes back to the pool.
        let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
        let rest = hyp.world.destroy_vm(h, v.stage2.mm_mut())?;
        // (Empty: every step took what it found.)
        for &pa in &rest.freed {
            hyp.reclaim_to_pool(h, pa)?;
        }
        for &pa in &rest.host_shared {
            hyp.owners.host_unshare_from_guest(pa, h.vmid())?;
        }
        drop(rest);
        hyp.vcpus.retain(|_, c| c.vm != h);
        let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
        v.mmio_guard = None;
        while let Some((pa, _)) = v.heap.take_page() {
            v.stage2.mm_mut().free_page(pa);
        }
        v.dying = Dying::Draining;
    }
    // The pool back to the host, a step at a time.
    let mut returned = 0u64;
    while returned < step {
        let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
        let Some((pa, pages)) = v.stage2.mm_mut().take_any() else {
            break;
        };
        for i in 0..pages {
            hyp.owners.hyp_donate_to_host(pa + i * PAGE_SIZE)?;
        }
        returned += pages;
    }
    let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
    if v.stage2.mm().free_pages() > 0 {
        return Ok([returned, 1, 0, 0, 0, 0]);
    }
    // The last step: the stage-2 goes (every TLB entry of the VMID) and the VMID is free.
    let Some(v) = hyp.vms.remove(&h.0) else {
        return Err(Errno::ENOENT);
    };
    let HypVm { stage2, heap, .. } = v;
    let (mut pool, _) = stage2.destroy();
    while let Some((pa, pages)) = pool.take_any() {
        for i in 0..pages {
            hyp.owners.hyp_donate_to_host(pa + i * PAGE_SIZE)?;
        }
        returned += pages;
    }
    if !heap.is_empty() {
        // An object of the VM outlived it (a bug the checker reports): the heap stays
        // (`HeapBox`), so that object stays valid.
        hyp.leaked_heaps += 1;
    }
    drop(heap);
    log::debug!("VM {} destroyed", h.0);
    Ok([returned, 0, 0, 0, 0, 0])
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
    let mut next = hyp.next_vcpu;
    let vcpus = &hyp.vcpus;
    let id = hyp_core::world::next_handle(&mut next, |h| vcpus.contains_key(&h))?;
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
