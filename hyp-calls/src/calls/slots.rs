//! Host calls on memslots and the guest-physical address space: memslots, memory attributes,
//! the host's `userspace_addr` faults, host pages shared into a guest.

use abi::flags::{MemoryAttributes, UserspaceAddr, VmType};
use abi::host::SLOT_UADDR_SHIFT;
use abi::{Errno, PAGE_SIZE};
use hyp_core::{GmemBinding, GmemHandle, Invalidation, MemslotSpec, SlotId, Stage2Unmap, VmHandle};
use hyp_mem::ownership::Transition;

use super::gmem::check_gmem_page;
use super::{ok, HostResult};
use crate::platform::Platform;
use crate::state::{handle32, Hyp, PIECE_PAGES};

pub fn memslot_create<P: Platform>(hyp: &mut Hyp<P>, a: [u64; 6]) -> HostResult {
    let [vm, gpa, size, gmem, offset, packed] = a;
    let uaddr = UserspaceAddr::from_u64(packed >> SLOT_UADDR_SHIFT).ok_or(Errno::EINVAL)?;
    let binding = if gmem == 0 {
        None
    } else {
        Some(GmemBinding {
            gmem: GmemHandle(handle32(gmem)?),
            offset,
        })
    };
    let spec = MemslotSpec {
        gpa,
        size,
        gmem: binding,
        userspace_addr: uaddr,
        flags: packed & 0xffff_ffff,
    };
    let slot = hyp.world.create_memslot(VmHandle(handle32(vm)?), &spec)?;
    ok(u64::from(slot.0))
}

pub fn memslot_delete<P: Platform>(hyp: &mut Hyp<P>, vm: u64, slot: u64) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    let slot = SlotId(handle32(slot)?);
    let (gpa, size) = hyp.world.delete_memslot_check(h, slot)?;
    hyp.world
        .try_for_each_slot_page(h, slot, |pa| hyp.check_reclaim(h, pa))?;
    // The slot's range leaves the guest's stage-2 (both aliases) before any page is zeroed
    // or changes hands; its `anon` pages go back in pieces (each checked above).
    hyp.apply(&Invalidation {
        stage2_unmap: alloc::vec![Stage2Unmap { vm: h, gpa, size }],
        ..Invalidation::default()
    });
    loop {
        let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
        let freed = hyp
            .world
            .slot_release_some(h, slot, PIECE_PAGES, v.stage2.mm_mut())?;
        if freed.is_empty() {
            break;
        }
        for pa in freed {
            hyp.reclaim_to_pool(h, pa)?;
        }
    }
    let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
    let inv = hyp.world.delete_memslot(h, slot, v.stage2.mm_mut())?;
    hyp.apply_and_sync(h, &inv)?;
    ok(0)
}

pub fn set_memory_attributes<P: Platform>(
    hyp: &mut Hyp<P>,
    vm: u64,
    gpa: u64,
    size: u64,
    attrs: u64,
) -> HostResult {
    let attrs = MemoryAttributes::from_bits(attrs).ok_or(Errno::EINVAL)?;
    let private = attrs.contains(MemoryAttributes::PRIVATE);
    let inv = hyp
        .world
        .set_attributes(VmHandle(handle32(vm)?), gpa, size, private)?;
    hyp.apply(&inv);
    ok(0)
}

/// The host's fault on a memslot's `userspace_addr`.
pub fn host_map_uaddr<P: Platform>(
    hyp: &mut Hyp<P>,
    vm: u64,
    slot: u64,
    offset: u64,
) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    let slot = SlotId(handle32(slot)?);
    let s = hyp.world.vm(h)?.slot(slot).ok_or(Errno::ENOENT)?;
    let view = match s.userspace_addr() {
        UserspaceAddr::Gmem => s.gmem_offset(s.gpa().saturating_add(offset)),
        _ => None,
    };
    if let Some((g, off)) = view {
        check_gmem_page(hyp, h, g, off)?;
    }
    let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
    let pa = hyp
        .world
        .host_uaddr_fault(h, slot, offset, v.stage2.mm_mut())?;
    match view {
        Some((g, off)) => hyp.sync_gmem_range(g, off & !(PAGE_SIZE - 1), PAGE_SIZE)?,
        None => hyp.sync_anon_page(h, pa)?,
    }
    ok(pa)
}

/// Host pages shared with the guest at `ipa` (host SHARED_OWNED, guest SHARED_BORROWED),
/// outside every memslot: `plain` and `coco` VMs only (for `coco` at the shared alias);
/// `EPERM` for `pkvm` (Trust rule 4). The guest's faults there map them.
pub fn map_host_shared<P: Platform>(
    hyp: &mut Hyp<P>,
    vm: u64,
    ipa: u64,
    pa: u64,
    pages: u64,
) -> HostResult {
    let h = VmHandle(handle32(vm)?);
    // The run must be host RAM before anything walks it (Trust rule 7); the pkvm
    // refusal comes first.
    if hyp.world.vm(h)?.vm_type() == VmType::Pkvm {
        return Err(Errno::EPERM);
    }
    hyp.ram_run(pa, pages)?;
    hyp.world.host_shared_check(h, ipa, pa, pages)?;
    let t = Transition::HostShareWithGuest(h.vmid());
    for i in 0..pages {
        hyp.owners.check(pa + i * PAGE_SIZE, t)?;
    }
    hyp.world.map_host_shared(h, ipa, pa, pages)?;
    for i in 0..pages {
        hyp.owners
            .host_share_with_guest(pa + i * PAGE_SIZE, h.vmid())?;
    }
    ok(0)
}
