//! The introspection and benchmark host calls (`abi::host::HostCall::INTROSPECTION`), which
//! exist only with the `introspection` feature (scenarios, the hostile suite, the table and
//! benchmarks; the build of `make run` answers them `ENOSYS`). They obey the same rules as
//! every call: hostile arguments are refused and change nothing.

use abi::{Errno, PAGE_SIZE};
use hyp_core::{Access, FaultResolution, GmemHandle, VmHandle};

use super::{ok, HostResult};
use crate::platform::Platform;
use crate::state::{handle32, Hyp};

/// The physical address `ipa` maps to in the VM's stage-2.
pub fn vm_walk<P: Platform>(hyp: &mut Hyp<P>, vm: u64, ipa: u64) -> HostResult {
    let v = hyp.vm_mut(vm)?;
    let m = v.stage2.walk(ipa).ok_or(Errno::ENOENT)?;
    Ok([m.pa_of(ipa).ok_or(Errno::ENOENT)?, m.size, 0, 0, 0, 0])
}

/// The physical page behind a gmem offset, without any check (introspection).
pub fn gmem_phys<P: Platform>(hyp: &mut Hyp<P>, gmem: u64, offset: u64) -> HostResult {
    let f = hyp.world.gmem(GmemHandle(handle32(gmem)?))?;
    let pa = f.page_pa(offset).ok_or(Errno::ENOENT)?;
    ok(pa + offset % PAGE_SIZE)
}

/// Switches a VM between serving first-touch faults at EL2 (0, the default) and exiting to
/// the host for them (1, the upstream pKVM way).
pub fn vm_set_fault_mode<P: Platform>(hyp: &mut Hyp<P>, vm: u64, mode: u64) -> HostResult {
    let v = hyp.vm_mut(vm)?;
    v.faults_to_host = match mode {
        0 => false,
        1 => true,
        _ => return Err(Errno::EINVAL),
    };
    ok(0)
}

/// The host serves a guest's page fault at `ipa` (after a `PageFault` exit): resolve and
/// map it, as the EL2 fault path would have.
pub fn serve_fault<P: Platform>(hyp: &mut Hyp<P>, vm: u64, ipa: u64, write: u64) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    let access = if write != 0 {
        Access::Write
    } else {
        Access::Read
    };
    let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
    if !v.stage2.mm().can_map_fault(v.stage2.tables_needed(ipa)) {
        return Err(Errno::ENOMEM);
    }
    match hyp.world.resolve_fault(h, ipa, access, v.stage2.mm_mut())? {
        FaultResolution::Map {
            ipa: page,
            pa,
            source,
            size,
            host_access,
            ..
        } => {
            crate::fault::map_resolved(hyp, h, ipa, (page, pa, size), source, host_access)?;
            ok(pa)
        }
        FaultResolution::NeedPages => Err(Errno::ENOMEM),
        _ => Err(Errno::EFAULT),
    }
}

/// Lets the VM's vCPUs read the PMU (benchmarks).
pub fn vm_open_pmu<P: Platform>(hyp: &mut Hyp<P>, vm: u64) -> HostResult {
    hyp.vm_mut(vm)?.pmu_open = true;
    ok(0)
}

/// Runs the invariant checker: -> x0 = number of violations (the first ones reported on
/// the console): ownership against every stage-2, and the guests' view.
pub fn check_invariants<P: Platform>(hyp: &mut Hyp<P>) -> HostResult {
    let owners = hyp.check_invariants();
    let views = hyp.check_guest_views();
    let memory = hyp.check_memory();
    for violation in owners.iter().take(16) {
        log::error!("invariant violated: {violation:?}");
    }
    for violation in views.iter().take(16) {
        log::error!("invariant violated: {violation:?}");
    }
    for violation in &memory {
        log::error!("invariant violated: {violation:?}");
    }
    ok((owners.len() + views.len() + memory.len()) as u64)
}

pub fn vm_stats<P: Platform>(hyp: &mut Hyp<P>, vm: u64) -> HostResult {
    let v = hyp.vm_mut(vm)?;
    let s = v.stats;
    let free = v.stage2.mm().free_pages() as u64;
    Ok([
        s.faults_served,
        s.exits,
        free,
        s.mmio_exits,
        s.memory_fault_exits,
        s.faults_via_uaddr,
    ])
}

/// Counts every RAM page by owner, from the ownership table (see `HostCall::PageCensus`), and
/// the free pages of every VM's pool. O(RAM pages).
pub fn page_census<P: Platform>(hyp: &mut Hyp<P>) -> HostResult {
    use hyp_mem::ownership::{Component, PageState};
    let (base, end) = (hyp.owners.ram_base(), hyp.owners.ram_end());
    let mut counts = [0u64; 4];
    let mut pa = base;
    while pa < end {
        if let Ok(info) = hyp.owners.info(pa) {
            let slot = match info.owner() {
                Some(Component::Host) if info.host == PageState::Owned => Some(0),
                Some(Component::Host) => Some(1),
                Some(Component::Hyp) => Some(2),
                Some(Component::Guest(_)) => Some(3),
                None => None,
            };
            if let Some(c) = slot.and_then(|i| counts.get_mut(i)) {
                *c += 1;
            }
        }
        pa += PAGE_SIZE;
    }
    let pool_free: u64 = hyp
        .vms
        .values()
        .map(|v| v.stage2.mm().free_pages() as u64)
        .sum();
    let [host, lent, own, guests] = counts;
    Ok([(end - base) / PAGE_SIZE, host, lent, own, guests, pool_free])
}

#[cfg(test)]
mod tests {
    use crate::tests::rig;
    use abi::flags::VmType;
    use abi::host::HostCall;

    fn census(r: &mut crate::tests::Rig) -> [u64; 6] {
        r.call(HostCall::PageCensus, [0; 6]).unwrap_or([0; 6])
    }

    /// Every page is counted once; pages donated move from the host to the hyp, a guest's
    /// first touch to the guest, and a teardown gives every one of them back.
    #[test]
    fn page_census_follows_the_pages() {
        let mut r = rig();
        let c0 = census(&mut r);
        assert_eq!(c0[0], c0[1..5].iter().sum::<u64>());
        assert_eq!((c0[2], c0[4], c0[5]), (0, 0, 0));
        let (vm, _, _) = r.configured(VmType::Pkvm, 16, 32);
        // The pool's 32, and what VmCreate and VcpuCreate took (the VM's heap's).
        let donated = 32 + abi::host::VM_CREATE_PAGES + abi::host::VCPU_CREATE_PAGES;
        let c1 = census(&mut r);
        assert_eq!(c1[0], c1[1..5].iter().sum::<u64>());
        assert_eq!(c1[1], c0[1] - donated);
        assert_eq!(c1[3] + c1[4], c0[3] + donated);
        assert!(c1[5] <= 32);
        assert_eq!(r.destroy(vm), donated);
        assert_eq!(census(&mut r), c0);
    }
}
