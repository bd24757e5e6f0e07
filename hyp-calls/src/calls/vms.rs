//! Host calls on VMs and vCPUs: create and destroy, the pools the host donates, vCPUs.

use alloc::boxed::Box;

use abi::flags::VmType;
use abi::Errno;
use abi::PAGE_SIZE;
use hyp_core::VmHandle;
use hyp_mem::ownership::Transition;
use hyp_mem::pool::Pool;
use hyp_mem::stage2::Stage2;

use super::{ok, HostResult};
use crate::platform::Platform;
use crate::state::{handle32, Hyp, HypVm, Pending, Vcpu, VmStats, IPA};

pub fn vm_create<P: Platform>(hyp: &mut Hyp<P>, vm_type: u64) -> HostResult {
    let t = VmType::from_u64(vm_type).ok_or(Errno::EINVAL)?;
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
    hyp.vms.insert(
        h.0,
        HypVm {
            stage2,
            stats: VmStats::default(),
            mmio_guard: None,
            faults_to_host: false,
            pmu_open: false,
            cntvoff: hyp.platform.counter(),
            vcpus_created: 0,
        },
    );
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
    // The guest runs no more: its stage-2 goes first (every TLB entry of the VMID, the
    // table pages back into the pool), then the core zeroes every page that held data
    // as it frees it into the pool; each goes back to the hyp's ownership, then the
    // whole pool back to the host.
    let (mut pool, _) = v.stage2.destroy();
    let mut teardown = hyp.world.destroy_vm(h, &mut pool)?;
    for &pa in &teardown.freed {
        hyp.reclaim_to_pool(h, pa)?;
    }
    for pa in core::mem::take(&mut teardown.host_shared) {
        hyp.owners.host_unshare_from_guest(pa, h.vmid())?;
    }
    let pages = pool.drain();
    for &pa in &pages {
        hyp.owners.hyp_donate_to_host(pa)?;
    }
    hyp.vcpus.retain(|_, c| c.vm != h);
    log::debug!(
        "VM {} destroyed: {} pages back to the host",
        h.0,
        pages.len()
    );
    ok(pages.len() as u64)
}

pub fn vcpu_create<P: Platform>(hyp: &mut Hyp<P>, vm: u64, entry: u64, arg: u64) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    hyp.vm_mut(vm)?;
    if entry >= IPA.limit() || !entry.is_multiple_of(4) {
        return Err(Errno::EINVAL);
    }
    // A protected VM's vCPUs, like its memslots, are fixed once it runs: a vCPU the
    // host adds later would start in the guest's memory where the host says.
    let v = hyp.world.vm(h)?;
    if v.vm_type() == VmType::Pkvm && v.started() {
        return Err(Errno::EPERM);
    }
    let id = hyp.next_vcpu.checked_add(1).ok_or(Errno::ENOSPC)?;
    let v = hyp.vm_mut(vm)?;
    let index = v.vcpus_created;
    if index >= abi::host::VCPUS_PER_VM_MAX {
        return Err(Errno::ENOSPC);
    }
    v.vcpus_created = index + 1;
    hyp.next_vcpu = id;
    let ctx = Box::new(hyp.platform.new_vcpu(entry, arg, index));
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
