//! Scenarios for the host benchmarks of `hyp-core` (see `benches/convert.rs`).

use hyp_core::{
    ContentMode, ConvertRequest, ConvertTo, FakeArena, GmemBinding, GmemFlags, GmemHandle,
    Initiator, Invalidation, MemslotFlags, MemslotSpec, UserspaceAddr, VmType, World,
};

/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 4 KiB pages in 1 GiB (262,144).
pub const PAGES: u64 = GIB / abi::PAGE_SIZE;

/// A coco VM with one 1 GiB gmem (`MMAP | TRACK_SHAREABILITY | INIT_SHARED`) bound by one
/// memslot (Option 1 configuration).
pub struct Setup {
    pub world: World,
    pub arena: FakeArena,
    pub gmem: GmemHandle,
}

/// A fresh, all-shared 1 GiB file. No page is allocated (conversions only touch state).
pub fn shared_1g() -> Setup {
    let mut world = World::new();
    let vm = world.create_vm(VmType::Coco, 40).expect("vm");
    let flags = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY | GmemFlags::INIT_SHARED;
    let gmem = world.create_gmem(vm, GIB, flags.bits()).expect("gmem");
    world
        .create_memslot(
            vm,
            &MemslotSpec {
                gpa: 0x4000_0000,
                size: GIB,
                gmem: Some(GmemBinding { gmem, offset: 0 }),
                userspace_addr: UserspaceAddr::None,
                flags: (MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES)
                    .bits(),
            },
        )
        .expect("memslot");
    Setup {
        world,
        arena: FakeArena::new(0x1_0000_0000, 16),
        gmem,
    }
}

/// Converts `[offset, offset + size)` (host-initiated to private, guest-initiated to shared).
pub fn convert(s: &mut Setup, offset: u64, size: u64, to: ConvertTo) -> Invalidation {
    let initiator = match to {
        ConvertTo::Private => Initiator::Host,
        ConvertTo::Shared => Initiator::Guest,
    };
    let req = ConvertRequest {
        offset,
        size,
        to,
        mode: ContentMode::Preserve,
        initiator,
    };
    s.world
        .convert(s.gmem, &req, &mut s.arena)
        .expect("conversion")
}

/// Stage 1: the whole 1 GiB to private in one call.
pub fn all_to_private(s: &mut Setup) -> Invalidation {
    convert(s, 0, GIB, ConvertTo::Private)
}

/// Stage 2: every other 4 KiB page back to shared, one call per page (131,072 calls).
pub fn alternate(s: &mut Setup) {
    for page in (0..PAGES).step_by(2) {
        convert(s, page * abi::PAGE_SIZE, abi::PAGE_SIZE, ConvertTo::Shared);
    }
}

/// Number of runs in the shareability store.
pub fn runs(s: &Setup) -> usize {
    s.world
        .gmem(s.gmem)
        .ok()
        .and_then(|f| f.shareability_store())
        .map_or(0, |st| st.runs())
}
