//! The hyp's state: every VM and vCPU, page ownership and the host stage-2, behind one
//! [`Hyp`]; and what a vCPU's last exit leaves for the host to complete.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::marker::PhantomData;

use abi::flags::ConvertTo;
use abi::{Errno, PAGE_SIZE};
use hyp_core::{GmemHandle, GuestRangePiece, Invalidation, VmHandle, World};
use hyp_mem::heap::{VmHeap, CALL_PAGES_MAX, RESERVE_PAGES};
use hyp_mem::ownership::{Ownership, PageMeta, Transition};
use hyp_mem::pool::{HypTables, Pool};
use hyp_mem::provider::PageProvider;
use hyp_mem::stage2::{IpaSize, Stage2};

use crate::exit::MmioAccess;
use crate::platform::Platform;

/// IPA size of every VM (the coco shared bit is bit 39).
pub const IPA: IpaSize = IpaSize::Bits40;

/// The most pages one piece of a long operation (a punch, a file's destruction, a memslot's
/// deletion, a conversion's ownership moves) handles: its lists then fit a 2 KiB object of the
/// VM's heap.
pub const PIECE_PAGES: u64 = 256;

/// What the hyp knows of the machine when it sets up: RAM, its own region at the start of RAM,
/// and the device MMIO the host may reach (`[lo, hi)`, execute-never device memory).
#[derive(Clone, Debug, Default)]
pub struct HypConfig {
    pub ram_base: u64,
    pub ram_size: u64,
    /// The hyp's region is `[ram_base, hyp_end)`: the hyp's, never the host's.
    pub hyp_end: u64,
    pub host_mmio: Vec<(u64, u64)>,
}

/// Counters of one VM, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmStats {
    pub faults_served: u64,
    /// Of those, faults served through a memslot's `userspace_addr` (the rest: gmem).
    pub faults_via_uaddr: u64,
    pub exits: u64,
    pub mmio_exits: u64,
    pub memory_fault_exits: u64,
}

/// A VM's page pool over the platform's RAM.
pub type VmPool<P> = Pool<<P as Platform>::Ram>;

/// One VM at EL2: its stage-2 (with its pool), counters, MMIO guard and settings.
pub struct HypVm<P: Platform> {
    pub stage2: Stage2<VmPool<P>, P::Tlb>,
    pub stats: VmStats,
    /// MMIO guard: once enrolled, only guarded IPAs (pages) exit as MMIO.
    pub mmio_guard: Option<BTreeSet<u64>>,
    /// Serve first-touch faults the way upstream pKVM does: exit to the host, which maps the
    /// page by hypercall (`ServeFault`) and re-runs the vCPU. For comparison benchmarks.
    pub faults_to_host: bool,
    /// The VM's vCPUs may read the PMU (`VmOpenPmu`, benchmarks); else PMU accesses are UNDEF.
    pub pmu_open: bool,
    /// The VM's `CNTVOFF_EL2`: the physical count when it was created.
    pub cntvoff: u64,
    /// vCPUs created so far (the next one's index).
    pub vcpus_created: u32,
    /// The VM's metadata heap, over pages of its pool: every byte the hyp keeps for the VM
    /// (its gmem files' page maps and ranges, memslots' maps, pins, the MMIO guard set, vCPU
    /// contexts). Boxed: its pages name it. Emptied by teardown before it goes.
    pub heap: HeapBox,
    /// Where its teardown is (`VmDestroy`, in steps).
    pub dying: Dying,
}

/// A VM's heap, boxed (its pages name it, so it must not move). Dropped, it goes only if it
/// serves no object (else it stays, so that the object stays valid: teardown frees every
/// object first, and the checker reports a heap that outlived its VM).
pub struct HeapBox(Option<Box<VmHeap>>);

/// What a [`HeapBox`] reads as once its heap went (never, before it is dropped).
static NO_HEAP: VmHeap = VmHeap::new();

impl HeapBox {
    pub fn new() -> Self {
        HeapBox(Some(Box::new(VmHeap::new())))
    }
}

impl Default for HeapBox {
    fn default() -> Self {
        HeapBox::new()
    }
}

impl core::ops::Deref for HeapBox {
    type Target = VmHeap;
    fn deref(&self) -> &VmHeap {
        self.0.as_deref().unwrap_or(&NO_HEAP)
    }
}

impl Drop for HeapBox {
    fn drop(&mut self) {
        if let Some(heap) = self.0.take() {
            if heap.stats().objects == 0 {
                // No object of the heap lives: nothing refers to it any more.
                drop(heap);
            } else {
                // An object still refers to it: it stays.
                core::mem::forget(heap);
            }
        }
    }
}

/// Where a VM's teardown is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dying {
    /// Not dying.
    Live,
    /// Its pages go back into its pool, a step at a time.
    Freeing,
    /// Its records and heap are gone; its pool goes back to the host, a step at a time.
    Draining,
}

/// What the host must complete before a vCPU runs again.
#[derive(Clone, Copy, Debug)]
pub enum Pending {
    None,
    Mmio(MmioAccess),
    MemoryFault {
        ipa: u64,
    },
    /// The pool ran dry on a guest access at `ipa`: the host donates and re-runs, or completes
    /// with an injected abort.
    NeedPages {
        ipa: u64,
    },
    /// The VM's heap was short for a guest call: the host donates and re-runs (the call is
    /// made again), or completes with an injected abort (the call fails with
    /// `INVALID_PARAMETER`).
    NeedPagesCall,
    /// A validated MEM_SHARE / MEM_UNSHARE the host may carry out with `GuestConvert`.
    GuestRequest(GuestRequest),
}

/// The one piece of a guest's share/unshare request an exit covers.
#[derive(Clone, Copy, Debug)]
pub struct GuestRequest {
    pub to: ConvertTo,
    pub piece: GuestRangePiece,
    /// Set once the host carried it out.
    pub converted: bool,
}

/// While it lives, this CPU's allocations are charged to one VM's heap ([`Hyp::charge`]); then
/// to whatever was charged before.
#[must_use]
pub struct Charge<P: Platform> {
    prev: *const VmHeap,
    _p: PhantomData<fn() -> P>,
}

impl<P: Platform> Drop for Charge<P> {
    fn drop(&mut self) {
        P::set_charge(self.prev);
    }
}

/// One vCPU.
pub struct Vcpu<P: Platform> {
    pub vm: VmHandle,
    /// `None` while the vCPU runs (the context is out of the table).
    pub ctx: Option<Box<P::Vcpu>>,
    pub pending: Pending,
}

/// The hyp's state of every VM and of page ownership. One lock guards it (the hyp's glue holds
/// it around every call, never while a guest runs).
pub struct Hyp<P: Platform> {
    pub platform: P,
    pub world: World,
    /// Before `vms`: a vCPU's context lives in its VM's heap, so it goes first when the hyp's
    /// state is dropped (host tests).
    pub vcpus: BTreeMap<u32, Vcpu<P>>,
    pub vms: BTreeMap<u32, HypVm<P>>,
    pub next_vcpu: u32,
    pub owners: Ownership<Vec<PageMeta>>,
    pub host_s2: Stage2<HypTables<P::Ram>, P::Tlb>,
    pub config: HypConfig,
    /// VM heaps that still served an object when their VM went (kept, so the object stays
    /// valid): 0 unless teardown missed an object (the checker reports it).
    pub leaked_heaps: u32,
}

impl<P: Platform> Hyp<P> {
    /// Sets the hyp's state up (once, at boot): every RAM page is the host's except the hyp's
    /// own region; the host stage-2 starts empty (it fills on demand).
    pub fn new(platform: P, config: HypConfig) -> Result<Self, Errno> {
        let pages = usize::try_from(config.ram_size / PAGE_SIZE).map_err(|_| Errno::EINVAL)?;
        let mut owners = Ownership::new(config.ram_base, alloc::vec![PageMeta::default(); pages])?;
        let mut pa = config.ram_base;
        while pa < config.hyp_end {
            owners.host_donate_to_hyp(pa)?;
            pa += PAGE_SIZE;
        }
        let host_s2 = Stage2::new(HypTables(platform.ram()), platform.tlb(), 0, IPA)
            .map_err(|(e, _, _)| Errno::from(e))?;
        Ok(Hyp {
            platform,
            world: World::new(),
            vcpus: BTreeMap::new(),
            vms: BTreeMap::new(),
            next_vcpu: 0,
            owners,
            host_s2,
            config,
            leaked_heaps: 0,
        })
    }

    /// Charges this CPU's allocations to VM `vm`'s heap until the guard goes. A call may take
    /// up to [`CALL_PAGES_MAX`] pages from the heap's reserve: when the reserve is under that,
    /// it is first topped up to [`RESERVE_PAGES`] from the VM's pool (and above four times
    /// that, it gives the excess back to the pool). `Err(pages wanted)`, with nothing changed,
    /// when pool and reserve together are under [`CALL_PAGES_MAX`]. An unknown VM charges
    /// nothing (the boot heap serves the call, which fails before it keeps anything).
    pub(crate) fn charge(&mut self, vm: u32) -> Result<Charge<P>, u64> {
        let Some(v) = self.vms.get_mut(&vm).filter(|v| v.dying == Dying::Live) else {
            return Ok(Charge {
                prev: P::set_charge(core::ptr::null()),
                _p: PhantomData,
            });
        };
        let have = v.heap.reserve();
        let pool = v.stage2.mm_mut();
        if have < CALL_PAGES_MAX {
            if have + pool.free_pages() < CALL_PAGES_MAX {
                return Err((CALL_PAGES_MAX - have - pool.free_pages()) as u64);
            }
            for _ in have..RESERVE_PAGES {
                if !pool.lend_page(&v.heap) {
                    break;
                }
            }
            if v.heap.reserve() < CALL_PAGES_MAX {
                // The pool failed to give what it counted (a host test's injected failure):
                // what it lent goes back, and the call is refused with nothing changed.
                while v.heap.reserve() > have {
                    let Some((pa, _)) = v.heap.take_page() else {
                        break;
                    };
                    pool.free_page(pa);
                }
                return Err((CALL_PAGES_MAX - v.heap.reserve()) as u64);
            }
        }
        if have > 4 * RESERVE_PAGES {
            while v.heap.reserve() > RESERVE_PAGES {
                let Some((pa, _)) = v.heap.take_page() else {
                    break;
                };
                pool.free_page(pa);
            }
        }
        v.heap.begin_call();
        let heap: *const VmHeap = &*v.heap;
        Ok(Charge {
            prev: P::set_charge(heap),
            _p: PhantomData,
        })
    }

    /// A live VM (`ENOENT` for an unknown one, or one being torn down).
    pub(crate) fn vm_mut(&mut self, vm: u64) -> Result<&mut HypVm<P>, Errno> {
        self.vms
            .get_mut(&handle32(vm)?)
            .filter(|v| v.dying == Dying::Live)
            .ok_or(Errno::ENOENT)
    }

    /// Rule 5, then ownership: removes every stage-2 mapping the change invalidated (both coco
    /// aliases), then brings the pages' ownership in line (`owner` = the gmem's VM). Callers
    /// checked the ownership changes before the core changed anything, so the second step
    /// cannot fail; if it ever did, access stays removed (the unmaps happened first) and the
    /// error goes back to the caller.
    pub(crate) fn apply_and_sync(
        &mut self,
        owner: VmHandle,
        inv: &Invalidation,
    ) -> Result<(), Errno> {
        self.apply(inv);
        self.sync_after(owner, inv)
    }

    /// Rule 5: removes every stage-2 mapping the change invalidated, both coco aliases. An
    /// unmap needs no memory and cannot fail (Trust rule 3): a block straddling the range goes
    /// whole and the guest refaults the rest.
    pub(crate) fn apply(&mut self, inv: &Invalidation) {
        for u in &inv.stage2_unmap {
            let shared_bit = self.world.vm(u.vm).ok().and_then(|vm| vm.shared_bit());
            let Some(v) = self.vms.get_mut(&u.vm.0) else {
                continue;
            };
            v.stage2.unmap_clamped(u.gpa, u.size);
            if let Some(bit) = shared_bit {
                v.stage2.unmap_clamped(u.gpa | bit, u.size);
            }
        }
    }

    /// Removes every guest mapping of `[offset, offset + size)` of `g` (each memslot binding it,
    /// both coco aliases) before an operation touches the pages: a vCPU on another CPU reaches
    /// a mapped page without trapping, so nothing may be zeroed or change hands first.
    pub(crate) fn unmap_bindings(&mut self, g: GmemHandle, offset: u64, size: u64) {
        let unmaps = self.world.gmem_bindings(g, offset, size);
        self.apply(&Invalidation {
            stage2_unmap: unmaps,
            ..Invalidation::default()
        });
    }

    /// Checks, before anything changes, that every allocated page of the gmem ranges can take
    /// its new state (the host may reach it iff `host_allowed`).
    pub(crate) fn check_gmem_ranges(
        &self,
        owner: VmHandle,
        g: GmemHandle,
        ranges: &[(u64, u64)],
        host_allowed: bool,
    ) -> Result<(), Errno> {
        let file = self.world.gmem(g)?;
        for &(off, size) in ranges {
            file.try_for_each_allocated(off, size, |pa| {
                self.settle_checked(owner, pa, host_allowed).map(|_| ())
            })?;
        }
        Ok(())
    }

    /// Checks a transition on every page of a run before any page changes, then applies it.
    pub(crate) fn transition_all(
        &mut self,
        pa: u64,
        pages: u64,
        t: Transition,
        mut f: impl FnMut(&mut Ownership<Vec<PageMeta>>, u64) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        for i in 0..pages {
            self.owners.check(pa + i * PAGE_SIZE, t)?;
        }
        for i in 0..pages {
            f(&mut self.owners, pa + i * PAGE_SIZE)?;
        }
        Ok(())
    }

    /// Checks a host-named run of physical pages: aligned, non-empty, no overflow, inside RAM
    /// (so every later walk over it is bounded by RAM, Trust rule 7).
    pub(crate) fn ram_run(&self, pa: u64, pages: u64) -> Result<u64, Errno> {
        let size = page_run(pa, pages)?;
        if pa < self.owners.ram_base() || pa + size > self.owners.ram_end() {
            return Err(Errno::EINVAL);
        }
        Ok(size)
    }
}

/// A host-given handle: 32 bits, else unknown.
pub(crate) fn handle32(v: u64) -> Result<u32, Errno> {
    u32::try_from(v).map_err(|_| Errno::ENOENT)
}

/// Checks a host-named run of pages: aligned, non-empty, no overflow.
pub(crate) fn page_run(pa: u64, pages: u64) -> Result<u64, Errno> {
    let size = pages.checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
    pa.checked_add(size).ok_or(Errno::EINVAL)?;
    if pages == 0 || !pa.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    Ok(size)
}
