//! The fake platform and the rig every host test drives the hyp with: fake RAM and a recording
//! TLB (from `hyp_mem::fake`), a fake vCPU that records what the hyp did to it, the raw host
//! calls and guest exits. Its own file so that the fuzz target (`fuzz/`) can build the storm
//! (`storm.rs`, `model.rs`) over it outside the test harness.

pub(crate) use alloc::rc::Rc;
pub(crate) use alloc::vec::Vec;
pub(crate) use core::cell::RefCell;

pub(crate) use hyp_mem::heap::VmHeap;

pub(crate) use abi::flags::{GmemFlags, MemslotFlags, UserspaceAddr, VmType};
pub(crate) use abi::host::{HostCall, SLOT_UADDR_SHIFT};
pub(crate) use abi::{Errno, PAGE_SIZE};
pub(crate) use hyp_mem::fake::{FakeArena, RecordingTlb, TlbEvent, FAKE_BASE};
pub(crate) use hyp_mem::pool::Ram;
pub(crate) use hyp_mem::stage2::TlbMaintenance;

pub(crate) use crate::exit::{GuestExit, Injected};
pub(crate) use crate::platform::{Platform, VcpuContext};
pub(crate) use crate::run::Step;
pub(crate) use crate::state::{Hyp, HypConfig};
pub(crate) use crate::HostAnswer;

/// Pages of fake RAM (16 MiB).
pub(crate) const RAM_PAGES: usize = 1024;
/// A device region the host may reach (its console, say).
pub(crate) const DEVICE: (u64, u64) = (0x0900_0000, 0x0900_1000);
/// Where tests put memslots.
pub(crate) const GPA: u64 = 0x8000_0000;

/// The tests' global allocator routes charged allocations to VM heaps, as the hyp's does
/// ([`hyp_mem::fake::Router`]).
#[global_allocator]
static ROUTER: hyp_mem::fake::Router = hyp_mem::fake::Router;

/// Charged allocations of this thread its heaps could not serve.
pub(crate) fn overdrafts() -> u64 {
    hyp_mem::fake::overdrafts()
}

/// What the hyp did to a fake vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FakeVcpu {
    pub x: [u64; 32],
    pub entry: u64,
    pub index: u32,
    pub skipped: u32,
    /// Skips over a 16-bit (T32) instruction.
    pub narrow_skips: u32,
    pub injected: Vec<(Injected, u64)>,
    pub saved_aborts: u32,
    pub live_aborts: u32,
    /// HVCs stepped back over, to be made again.
    pub rewound: u32,
    pub traps: Vec<bool>,
}

impl VcpuContext for FakeVcpu {
    fn reg(&self, n: usize) -> u64 {
        if n >= 31 {
            0
        } else {
            self.x[n]
        }
    }
    fn set_reg(&mut self, n: usize, v: u64) {
        if n < 31 {
            self.x[n] = v;
        }
    }
    fn skip_instruction(&mut self, wide: bool) {
        self.skipped += 1;
        self.narrow_skips += u32::from(!wide);
    }
    fn skip_trapped_instruction(&mut self) {
        self.skipped += 1;
    }
    fn rewind_hvc(&mut self) {
        self.rewound += 1;
    }
    fn inject_live(&mut self, what: Injected, far: u64) {
        self.injected.push((what, far));
    }
    fn inject_abort_live(&mut self) {
        self.live_aborts += 1;
    }
    fn inject_abort_saved(&mut self) {
        self.saved_aborts += 1;
    }
    fn emulate_trap(&mut self, pmu_open: bool) {
        self.traps.push(pmu_open);
    }
}

/// What every TLB of the fake platform saw while a test watched one word of RAM: each
/// invalidation with the word's value at that moment. A page must leave every stage-2 (its
/// invalidation) while it still holds the guest's data, before the hyp zeroes or frees it
/// (Trust rule 3): a vCPU on another CPU reaches a mapped page without trapping.
#[derive(Default)]
pub(crate) struct Watch {
    /// The watched word (`None`: nothing is recorded).
    pub pa: Option<u64>,
    /// `(event, word at pa)` for every invalidation of every stage-2, in order.
    pub seen: Vec<(TlbEvent, Option<u64>)>,
}

impl Watch {
    /// The word the watched page held when the first invalidation of `ipa` in the stage-2 of
    /// `vmid` happened; `None` if `ipa` was never invalidated.
    pub fn at_first_invalidation(&self, vmid: u16, ipa: u64) -> Option<Option<u64>> {
        self.seen
            .iter()
            .find(|(ev, _)| match *ev {
                TlbEvent::InvalidateIpa {
                    vmid: v,
                    ipa: at,
                    leaf_level,
                } => {
                    let size = match leaf_level {
                        Some(l) => 1u64 << (12 + 9 * (3 - u32::from(l))),
                        None => PAGE_SIZE,
                    };
                    v == vmid && (at..at.saturating_add(size)).contains(&ipa)
                }
                TlbEvent::InvalidateRange {
                    vmid: v,
                    ipa: at,
                    size,
                } => v == vmid && (at..at.saturating_add(size)).contains(&ipa),
                TlbEvent::InvalidateVmid { vmid: v } => v == vmid,
                TlbEvent::Publish => false,
            })
            .map(|&(_, word)| word)
    }
}

/// The fake platform's TLB: a [`RecordingTlb`] that also reports to the test's [`Watch`].
pub(crate) struct WatchTlb {
    pub rec: RecordingTlb,
    ram: FakeArena,
    watch: Rc<RefCell<Watch>>,
}

impl WatchTlb {
    fn saw(&mut self, ev: TlbEvent) {
        let mut w = self.watch.borrow_mut();
        if let Some(pa) = w.pa {
            let word = self.ram.read_u64(pa);
            hyp_mem::fake::uncharged(|| w.seen.push((ev, word)));
        }
    }
}

impl TlbMaintenance for WatchTlb {
    fn publish(&mut self) {
        self.rec.publish();
    }
    fn invalidate_ipa(&mut self, vmid: u16, ipa: u64, leaf_level: Option<u8>) {
        self.rec.invalidate_ipa(vmid, ipa, leaf_level);
        self.saw(TlbEvent::InvalidateIpa {
            vmid,
            ipa,
            leaf_level,
        });
    }
    fn invalidate_range(&mut self, vmid: u16, ipa: u64, size: u64) {
        self.rec.invalidate_range(vmid, ipa, size);
        self.saw(TlbEvent::InvalidateRange { vmid, ipa, size });
    }
    fn invalidate_vmid(&mut self, vmid: u16) {
        self.rec.invalidate_vmid(vmid);
        self.saw(TlbEvent::InvalidateVmid { vmid });
    }
}

/// The fake platform: RAM shared with the test (a [`FakeArena`] handle), and the test's
/// [`Watch`] shared with every TLB.
pub(crate) struct FakePlatform {
    pub ram: FakeArena,
    pub watch: Rc<RefCell<Watch>>,
}

impl Platform for FakePlatform {
    type Ram = FakeArena;
    type Tlb = WatchTlb;
    type Vcpu = FakeVcpu;

    fn ram(&self) -> FakeArena {
        self.ram.clone()
    }
    fn tlb(&self) -> WatchTlb {
        WatchTlb {
            rec: RecordingTlb::new(),
            ram: self.ram.clone(),
            watch: self.watch.clone(),
        }
    }
    fn new_vcpu(&self, entry: u64, arg: u64, index: u32) -> FakeVcpu {
        let mut v = FakeVcpu {
            entry,
            index,
            ..FakeVcpu::default()
        };
        v.x[0] = arg;
        v
    }
    fn counter(&self) -> u64 {
        0
    }
    fn flush_tlb_conflict(&self) {}
    fn set_charge(heap: *const VmHeap) -> *const VmHeap {
        hyp_mem::fake::set_charge(heap)
    }
    fn overdrafts() -> u64 {
        overdrafts()
    }
}

/// A hyp over fake RAM, with a handle to the RAM for the test's own "host memory".
pub(crate) struct Rig {
    pub hyp: Hyp<FakePlatform>,
    pub ram: FakeArena,
    pub watch: Rc<RefCell<Watch>>,
}

pub(crate) fn rig() -> Rig {
    rig_of(RAM_PAGES)
}

/// A hyp over `pages` pages of fake RAM (more than [`RAM_PAGES`] where a test needs two 2 MiB
/// chunks).
pub(crate) fn rig_of(pages: usize) -> Rig {
    let ram = FakeArena::new(pages);
    let config = HypConfig {
        ram_base: FAKE_BASE,
        ram_size: pages as u64 * PAGE_SIZE,
        hyp_end: FAKE_BASE,
        host_mmio: alloc::vec![DEVICE],
    };
    let watch = Rc::new(RefCell::new(Watch::default()));
    let platform = FakePlatform {
        ram: ram.clone(),
        watch: watch.clone(),
    };
    let hyp = match Hyp::new(platform, config) {
        Ok(h) => h,
        Err(e) => panic!("Hyp::new: {e}"),
    };
    Rig { hyp, ram, watch }
}

impl Rig {
    /// A raw host call.
    pub fn call(&mut self, c: HostCall, a: [u64; 6]) -> Result<[u64; 6], (Errno, u64)> {
        match self.hyp.host_call(c.id(), a) {
            HostAnswer::Done(r) => r,
            HostAnswer::Run { .. } => panic!("use run() for VcpuRun"),
        }
    }

    /// A host call that must succeed: its x0.
    pub fn ok(&mut self, c: HostCall, a: [u64; 6]) -> u64 {
        match self.call(c, a) {
            Ok(r) => r[0],
            Err(e) => panic!("{c:?} {a:x?} failed: {e:?}"),
        }
    }

    /// A host call that must fail with `e`.
    pub fn err(&mut self, c: HostCall, a: [u64; 6], e: Errno) {
        assert_eq!(self.call(c, a).map_err(|x| x.0), Err(e), "{c:?} {a:x?}");
    }

    /// Host pages (taken from the fake RAM, the host's until donated).
    pub fn host_pages(&mut self, n: usize) -> u64 {
        match Ram::alloc_pages(&mut self.ram, n) {
            Some(pa) => pa,
            None => panic!("fake RAM exhausted"),
        }
    }

    pub fn vm(&mut self, t: VmType) -> u64 {
        let n = abi::host::VM_CREATE_PAGES;
        let pa = self.host_pages(n as usize);
        self.ok(HostCall::VmCreate, [t as u64, pa, n, 0, 0, 0])
    }

    /// Destroys a VM, every step of it: the pages given back in all.
    pub fn destroy(&mut self, vm: u64) -> u64 {
        let mut total = 0;
        for _ in 0..1_000_000 {
            let r = self.call(HostCall::VmDestroy, [vm, 0, 0, 0, 0, 0]);
            match r {
                Ok(x) => {
                    total += x[0];
                    if x[1] == 0 {
                        return total;
                    }
                }
                Err(e) => panic!("VmDestroy {vm:#x}: {e:?}"),
            }
        }
        panic!("VmDestroy {vm:#x} never finished")
    }

    /// `VcpuCreate` with its one donated page.
    pub fn vcpu_args(&mut self, vm: u64, entry: u64, arg: u64) -> [u64; 6] {
        let pa = self.host_pages(1);
        [vm, entry, arg, pa, 1, 0]
    }

    /// `VcpuCreate` with its one donated page, which must succeed: the vCPU.
    pub fn vcpu(&mut self, vm: u64, entry: u64, arg: u64) -> u64 {
        let a = self.vcpu_args(vm, entry, arg);
        self.ok(HostCall::VcpuCreate, a)
    }

    pub fn donate(&mut self, vm: u64, n: usize) {
        let pa = self.host_pages(n);
        self.ok(HostCall::Donate, [vm, pa, n as u64, 0, 0, 0]);
    }

    pub fn gmem(&mut self, vm: u64, pages: u64, flags: GmemFlags) -> u64 {
        self.ok(
            HostCall::GmemCreate,
            [vm, pages * PAGE_SIZE, flags.bits(), 0, 0, 0],
        )
    }

    pub fn slot(
        &mut self,
        vm: u64,
        gpa: u64,
        pages: u64,
        gmem: u64,
        uaddr: UserspaceAddr,
        flags: MemslotFlags,
    ) -> Result<u64, Errno> {
        let packed = flags.bits() | ((uaddr as u64) << SLOT_UADDR_SHIFT);
        self.call(
            HostCall::MemslotCreate,
            [vm, gpa, pages * PAGE_SIZE, gmem, 0, packed],
        )
        .map(|r| r[0])
        .map_err(|e| e.0)
    }

    /// A VM of type `t` with a gmem of `pages` pages bound at [`GPA`] in the configuration the
    /// type needs (pkvm row, Option 1 for coco, non-coco via get_pfn for plain), `pool` pages
    /// and one vCPU. -> (vm, gmem, vcpu).
    pub fn configured(&mut self, t: VmType, pages: u64, pool: usize) -> (u64, u64, u64) {
        let vm = self.vm(t);
        let flags = match t {
            VmType::Plain => GmemFlags::MMAP,
            _ => GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY,
        };
        let g = self.gmem(vm, pages, flags);
        let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
        if let Err(e) = self.slot(vm, GPA, pages, g, UserspaceAddr::None, both) {
            panic!("slot: {e}");
        }
        if pool > 0 {
            self.donate(vm, pool);
        }
        let vcpu = self.vcpu(vm, 0x1_4000_0000, 0);
        (vm, g, vcpu)
    }

    /// Runs one exit of vCPU `vcpu` through the portable run steps: begin (completing the last
    /// exit with `c0`), the exit (after `setup` wrote the registers the guest would have),
    /// end. -> the step and the vCPU's context after it.
    pub fn exit(
        &mut self,
        vcpu: u64,
        c0: u64,
        setup: impl FnOnce(&mut FakeVcpu),
        exit: GuestExit,
    ) -> (Step, FakeVcpu) {
        let mut t = match self.hyp.begin_run(vcpu, c0) {
            Ok(t) => t,
            Err(e) => panic!("begin_run: {e}"),
        };
        setup(&mut t.ctx);
        let step = self.hyp.handle_exit(t.vm, &mut t.ctx, exit);
        let ctx = (*t.ctx).clone();
        let (e, p) = match step {
            Step::Exit(e, p) => (e, p),
            Step::Resume => (
                (abi::host::ExitReason::Interrupt, [0; 5]),
                crate::state::Pending::None,
            ),
        };
        self.hyp.end_run(t, e, p);
        (step, ctx)
    }

    /// The invariant checker: ownership against every stage-2, and the guests' view.
    pub fn invariants(&self) -> usize {
        let memory = self.hyp.check_memory();
        assert!(memory.is_empty(), "memory check: {memory:?}");
        self.hyp.check_invariants().len() + self.hyp.check_guest_views().len()
    }
}

/// A guest call's answer when it is served at EL2 (the guest resumes): x0, x1.
pub(crate) fn served(r: &mut Rig, vcpu: u64, x: [u64; 4]) -> (u64, u64) {
    let (setup, exit) = hvc(x);
    let (step, ctx) = r.exit(vcpu, 0, setup, exit);
    assert!(
        matches!(step, Step::Resume),
        "{x:x?} went to the host: {step:?}"
    );
    (ctx.x[0], ctx.x[1])
}

/// A guest HVC exit with `x0..x3`.
pub(crate) fn hvc(x: [u64; 4]) -> (impl FnOnce(&mut FakeVcpu), GuestExit) {
    (
        move |c: &mut FakeVcpu| {
            for (i, v) in x.into_iter().enumerate() {
                c.set_reg(i, v);
            }
        },
        GuestExit::Hvc { imm: 0 },
    )
}
