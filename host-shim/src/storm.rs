//! `make storm-target SEED=s N=n`: the host storm of `hyp-calls` (`tests::storm`), on target.
//! The host shim makes `n` random calls against the real hyp, chosen by a PRNG seeded with `s`:
//! host calls (VMs, gmem files, memslots, donations and pool reclaims, vCPUs, conversions,
//! punches, pins, host reads of guest memory, junk calls with random ids and arguments, stale
//! and foreign handles) and steps of step guests (faults, MEM_SHARE / MEM_UNSHARE /
//! MEM_RELINQUISH, MMIO), whose exits it completes honestly, with lies or not at all.
//!
//! The host keeps its own model of what it did (which of its pages it donated or lent to which
//! VM, the memslots and pins it holds, which guest pages hold a byte the guest wrote privately)
//! and holds every answer of the hyp to it ([`Storm::observe`]). It fails on the first of:
//! - a Trust rule broken in what the hyp answered: a page given to two VMs or given back twice, a
//!   host read of a page the guest has not shared (the mmap view, `userspace_addr`, or a raw
//!   read of the physical page), a guest's private byte changed behind its back, a guest told
//!   `SUCCESS` for no page, a page handed to the host that is not zero, or not the VM's;
//! - a violation of the hyp's invariant checker (`CheckInvariants`, every [`CHECK_EVERY`] calls);
//! - page accounting (`PageCensus`, every [`CHECK_EVERY`] calls and at the end): every RAM page
//!   has one owner, the pages away from the host are the hyp's own and those the host donated or
//!   lent, and once every VM is torn down the census is what it was at the start.
//!
//! VMs and vCPUs are made over arena pages the storm donates (`VmCreate`'s 16, `VcpuCreate`'s
//! one; the step guest's vCPU comes from the creation region through `vm::vcpu_create`), and
//! torn down in `VmDestroy`'s steps, at times left dying between them: every call naming a
//! dying VM, its gmem files or vCPUs must be refused, and over all steps every page donated for
//! it must come back, zeroed. A charged call may be refused `ENOMEM` only while the VM's pool
//! holds fewer than 8 free pages.
//!
//! A hyp crash or hang fails the run through the verdict wrapper (`tools/qemu-run.py`); the
//! progress lines name the last call reached. A failure prints the seed and the call index,
//! which `make storm-target SEED=s N=<index + 1>` replays.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::cmd::{
    CMD_DEVICE_SIZE, OP_HVC, OP_MEM_RANGE, OP_MMIO_GUARD, OP_READ, OP_TOUCH, OP_UNDEF, OP_WRITE,
    REG_ARG0, REG_ARG1, REG_ARG2, REG_ARG3, REG_CMD, REG_RESULT0, REG_RESULT1, REG_STATUS,
    STATUS_OK,
};
use abi::flags::{GmemFlags, VmType};
use abi::guest::{
    CMD_DEVICE_IPA, COCO_SHARED_BIT, MEM_RELINQUISH, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD_ENROLL,
    MMIO_GUARD_MAP, SMCCC_INVALID_PARAMETER, SMCCC_SUCCESS,
};
use abi::host::{ExitReason, HostCall, COMPLETE_INJECT_ABORT, HOST_CALL_BASE, SLOT_UADDR_SHIFT};
use abi::{Errno, PAGE_SIZE};
use scenario::ForwardMode;

use crate::driver::{GuestDriver, GuestMemory, GUEST_CODE_IPA, GUEST_PAGES};
use crate::exceptions::{probe_read, probe_write};
use crate::pages::HostPages;
use crate::runner::forward_with;
use crate::vm::{VcpuId, VmId};
use crate::{hvc, timer};

/// The invariant checker and the census run every this many calls (by default).
pub const CHECK_EVERY: u64 = 100;
/// Host pages the storm donates and lends from (32 MiB, 2 MiB aligned so that whole chunks can
/// be donated and reclaimed).
const ARENA_PAGES: u64 = 8192;
const CHUNK_PAGES: u64 = 512;
/// VMs alive at once (the storm creates more only after it destroyed some).
const MAX_VMS: usize = 6;
/// The guest windows memslots are made in: 4 windows of 64 pages from `WINDOW_BASE`.
const WINDOW_BASE: u64 = 0x8000_0000;
const WINDOWS: u64 = 4;
const WINDOW_PAGES: u64 = 64;
/// An IPA window no memslot of the storm's own covers: guest accesses there are MMIO exits.
const MMIO_BASE: u64 = 0x2_0000_0000;
/// Exits one guest step may take before the host gives up on the guest (it is wedged).
const STEP_EXITS_MAX: u32 = 64;
/// Interrupt exits one step may take (a guest that no longer traps: its code is gone).
const STEP_INTERRUPTS_MAX: u32 = 8;
/// The host's timer slice for each run, in milliseconds.
const TIMESLICE_MS: u64 = 10;
/// Pages donated to a new VM that runs the step guest.
const SETUP_POOL: u64 = 48;
/// Memory-fault exits a step answers with a retry before it injects an abort.
const RETRIES_MAX: u32 = 2;

/// The call running now and the seed: what the crash hook prints.
static CUR_CALL: AtomicU64 = AtomicU64::new(0);
static CUR_SEED: AtomicU64 = AtomicU64::new(0);

fn crash_hook(reason: core::fmt::Arguments) {
    let (i, s) = (
        CUR_CALL.load(Ordering::Relaxed),
        CUR_SEED.load(Ordering::Relaxed),
    );
    board::eprintln_emergency!(
        "storm-target: FAIL at call {i} (seed {s}): the host crashed: {reason}\n\
         storm-target: replay: make storm-target SEED={s} N={}",
        i + 1
    );
}

/// splitmix64: small, fast, and every seed gives a full-period sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 for n = 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        v.get(self.below(v.len() as u64) as usize).copied()
    }
}

/// What the host knows of one of its arena pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Free,
    /// In the pool or memory of the VM with this storm id.
    Donated(u64),
    /// Shared into that VM (`MapHostShared`); still the host's.
    Lent(u64),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u64,
    gpa: u64,
    size: u64,
    /// 0: none.
    gmem: u64,
    off: u64,
    uaddr: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuestState {
    Ready,
    /// It took an exception it could not take itself.
    Dead,
    /// It stopped answering its command device (its code or stack went).
    Wedged,
}

struct Guest {
    vcpu: u64,
    state: GuestState,
}

struct Vm {
    /// The storm's own id (handles are reused).
    uid: u64,
    handle: u64,
    t: VmType,
    guest: Option<Guest>,
    vcpus: Vec<u64>,
    slots: Vec<Slot>,
    /// Host pages shared into it: (IPA, pages).
    lent: Vec<(u64, u64)>,
    /// One of its vCPUs ran (a pkvm VM's memslots and vCPUs are fixed then).
    started: bool,
    /// An MMIO guard call was made (MMIO outside the guarded pages may then abort).
    guarded: bool,
    /// Another vCPU ran the step guest's image (from its entry, on the same stack and data):
    /// what the step guest reports is no longer its own, so it is not checked.
    tampered: bool,
    /// Its teardown began (`VmDestroy` said x1 = 1): every other call naming it, its gmem
    /// files or its vCPUs is answered as for a handle naming nothing.
    dying: bool,
    /// Pages its teardown steps gave back so far.
    back: u64,
    /// Pages donated for it outside the arena (the creation region: the step guest's vCPU,
    /// made by `vm::vcpu_create`).
    create_pages: u64,
}

#[derive(Clone, Copy, Debug)]
struct Gmem {
    handle: u64,
    vm_uid: u64,
    size: u64,
}

/// A byte a guest wrote to its private memory: (gmem, page) -> (offset in page, value).
type Secrets = BTreeMap<(u64, u64), (u64, u8)>;

/// What one guest step saw.
#[derive(Clone, Copy, Debug, Default)]
struct StepOut {
    status: Option<u64>,
    results: [u64; 2],
    /// The last MMIO exit outside the command device: (ipa, write, data, value given).
    mmio: Option<(u64, bool, u64, u64)>,
}

/// Counters for the final report.
#[derive(Default)]
struct Tally {
    hvcs: u64,
    ok: u64,
    refused: u64,
    steps: u64,
    steps_ok: u64,
    exits: u64,
    secrets_checked: u64,
    vms_created: u64,
    vms_destroyed: u64,
    checks: u64,
    /// Calls naming a dying VM, its gmem files or vCPUs (all refused).
    dying_calls: u64,
    /// Charged calls refused ENOMEM (the VM's pool and heap reserve short).
    enomem: u64,
    /// VmDestroy steps that left the VM dying.
    dying_steps: u64,
    /// Pages a dying VM's steps gave back that the host gave away again before it was gone.
    reclaimed_early: u64,
}

pub struct Storm {
    rng: Rng,
    seed: u64,
    n: u64,
    every: u64,
    /// Checks every `every` calls only from this call on (every [`CHECK_EVERY`] before it).
    pub from: u64,
    call: u64,
    ram_base: u64,
    arena: u64,
    pages: Vec<Page>,
    vms: Vec<Vm>,
    next_uid: u64,
    gmems: Vec<Gmem>,
    /// Every handle seen, live or not (stale ones are part of the attack).
    seen_vms: Vec<u64>,
    seen_gmems: Vec<u64>,
    seen_vcpus: Vec<u64>,
    pins: BTreeMap<(u64, u64), u32>,
    secrets: Secrets,
    /// pkvm pages the guest asked to share (its later writes leave them shared): (gmem, page).
    guest_shared: BTreeSet<(u64, u64)>,
    census0: [u64; 6],
    /// Pages of each VM that a guest relinquished back to the host without the host being able
    /// to tell which (a page it could read before, as the INIT_SHARED image it loaded, that the
    /// guest took at first touch and then gave up): counted from the census, by VM.
    unannounced: BTreeMap<u64, u64>,
    /// What the current call did: (call id or guest step op, arguments, x0 of the answer),
    /// printed when it fails.
    trace: Vec<(u64, [u64; 4], u64)>,
    ticks: u64,
    t: Tally,
}

type Check = Result<(), String>;

fn fail<T>(s: String) -> Result<T, String> {
    Err(s)
}

fn census() -> Result<[u64; 6], String> {
    let r = hvc::raw6(HostCall::PageCensus.id(), [0; 6]);
    match Errno::from_reg(r[0]) {
        Some(e) => fail(format!("PageCensus failed: {e}")),
        None => Ok(r),
    }
}

fn invariants() -> Check {
    match hvc::call(HostCall::CheckInvariants, [0; 6]) {
        Ok([0, ..]) => Ok(()),
        Ok([n, ..]) => fail(format!("CheckInvariants: {n} violations")),
        Err(e) => fail(format!("CheckInvariants failed: {e}")),
    }
}

/// Reads page `pa` (the host's again): `Err` unless it is readable and all zero.
fn page_is_zero(pa: u64) -> Check {
    if let Err(f) = probe_read(pa as usize) {
        return fail(format!(
            "page 0x{pa:x}, the host's again, takes an abort (ESR 0x{:x})",
            f.esr
        ));
    }
    // SAFETY: the page is host RAM the hyp gave back (its first byte just read without a
    // fault: the host stage-2 maps the whole page); nothing else uses it now.
    let words = unsafe { core::slice::from_raw_parts(pa as *const u64, 512) };
    match words.iter().position(|&w| w != 0) {
        None => Ok(()),
        Some(i) => fail(format!(
            "page 0x{pa:x}, given back to the host, is not zero: word {i} = 0x{:x}",
            words[i]
        )),
    }
}

impl Storm {
    /// A storm of `n` calls from `seed` over host pages from `pages`.
    pub fn new(seed: u64, n: u64, every: u64, pages: &mut HostPages) -> Result<Self, String> {
        let (ram_base, _) = crate::vm::ram().map_err(|e| format!("Version: {e}"))?;
        let arena = pages
            .alloc_contiguous(ARENA_PAGES, CHUNK_PAGES * PAGE_SIZE)
            .ok_or_else(|| String::from("no room for the storm's host pages"))?;
        crate::gic::init();
        Ok(Storm {
            rng: Rng(seed),
            seed,
            n,
            every: every.max(1),
            from: 0,
            call: 0,
            ram_base,
            arena,
            pages: alloc::vec![Page::Free; ARENA_PAGES as usize],
            vms: Vec::new(),
            next_uid: 1,
            gmems: Vec::new(),
            seen_vms: Vec::new(),
            seen_gmems: Vec::new(),
            seen_vcpus: Vec::new(),
            pins: BTreeMap::new(),
            secrets: BTreeMap::new(),
            guest_shared: BTreeSet::new(),
            census0: census()?,
            unannounced: BTreeMap::new(),
            trace: Vec::new(),
            ticks: TIMESLICE_MS * timer::ticks_per_ms(),
            t: Tally::default(),
        })
    }

    /// Runs the storm: `Ok` with the final report line, or `Err` naming the failing call.
    pub fn run(&mut self) -> Result<String, String> {
        CUR_SEED.store(self.seed, Ordering::Relaxed);
        crate::exceptions::set_crash_hook(crash_hook);
        let c = self.census0;
        if c[1] + c[2] + c[3] + c[4] != c[0] || c[2] + c[4] + c[5] != 0 {
            return fail(format!("call 0: the census at the start is off: {c:?}"));
        }
        let progress = (self.n / 20).max(1000);
        while self.call < self.n {
            CUR_CALL.store(self.call, Ordering::Relaxed);
            self.trace.clear();
            let r = self.one().and_then(|()| {
                let every = if self.call >= self.from {
                    self.every
                } else {
                    CHECK_EVERY
                };
                if (self.call + 1).is_multiple_of(every) {
                    self.t.checks += 1;
                    invariants()?;
                    self.check_census()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = r {
                for &(id, a, x0) in &self.trace {
                    let name = HostCall::from_id(id).map_or("guest step op", |c| c.name());
                    board::println!("storm-target:   did {name} (0x{id:x}) {a:x?} -> 0x{x0:x}");
                }
                return fail(format!("call {}: {e}", self.call));
            }
            self.call += 1;
            if self.call.is_multiple_of(progress) {
                board::println!(
                    "storm-target: {} calls, {} VMs live, {} guest steps",
                    self.call,
                    self.vms.len(),
                    self.t.steps
                );
            }
        }
        self.teardown()
            .map_err(|e| format!("call {} (the teardown at the end): {e}", self.n))?;
        let t = &self.t;
        Ok(format!(
            "{} hypercalls ({} answered, {} refused), {} guest steps ({} completed, {} exits), \
             {} VMs created, {} destroyed ({} teardown steps left one dying, {} calls naming a \
             dying VM refused, {} pages they gave back early given away again), {} charged calls ENOMEM, {} private guest bytes checked, {} invariant checks",
            t.hvcs,
            t.ok,
            t.refused,
            t.steps,
            t.steps_ok,
            t.exits,
            t.vms_created,
            t.vms_destroyed,
            t.dying_steps,
            t.dying_calls,
            t.reclaimed_early,
            t.enomem,
            t.secrets_checked,
            t.checks
        ))
    }

    // ---- the model ----------------------------------------------------------------------

    fn vm_idx(&self, handle: u64) -> Option<usize> {
        self.vms.iter().position(|v| v.handle == handle)
    }

    /// The VM whose memslots a host call the hyp accepted changed: it must exist (else
    /// `no_vm`) and not be a pkvm VM that ran (rule 9).
    fn slots_open(&self, handle: u64, no_vm: &str) -> Result<usize, String> {
        let Some(vi) = self.vm_idx(handle) else {
            return fail(String::from(no_vm));
        };
        let v = &self.vms[vi];
        if v.t == VmType::Pkvm && v.started {
            return fail(String::from(
                "a running pkvm VM's memslots changed (rule 9)",
            ));
        }
        Ok(vi)
    }

    fn gmem_idx(&self, handle: u64) -> Option<usize> {
        self.gmems.iter().position(|g| g.handle == handle)
    }

    fn vm_of_vcpu(&self, vcpu: u64) -> Option<usize> {
        self.vms.iter().position(|v| v.vcpus.contains(&vcpu))
    }

    /// Arena page index of `pa`, if it is one.
    fn arena_idx(&self, pa: u64) -> Option<usize> {
        (pa >= self.arena
            && pa < self.arena + ARENA_PAGES * PAGE_SIZE
            && pa.is_multiple_of(PAGE_SIZE))
        .then(|| ((pa - self.arena) / PAGE_SIZE) as usize)
    }

    fn arena_pa(&self, i: u64) -> u64 {
        self.arena + i * PAGE_SIZE
    }

    /// Pages `pa..+n` as the model has them: `None` if any is outside the arena.
    fn run_pages(&self, pa: u64, n: u64) -> Option<Vec<usize>> {
        (0..n)
            .map(|i| self.arena_idx(pa.checked_add(i.checked_mul(PAGE_SIZE)?)?))
            .collect()
    }

    fn count(&self, p: Page) -> u64 {
        self.pages.iter().filter(|&&x| x == p).count() as u64
    }

    /// The first run of `n` free arena pages at or after a random page.
    fn free_run(&mut self, n: u64) -> Option<u64> {
        let start = self.rng.below(ARENA_PAGES);
        let mut len = 0;
        for k in 0..2 * ARENA_PAGES {
            let i = (start + k) % ARENA_PAGES;
            if i == 0 {
                len = 0;
            }
            if self.pages[i as usize] == Page::Free {
                len += 1;
                if len == n {
                    return Some(self.arena_pa(i + 1 - n));
                }
            } else {
                len = 0;
            }
        }
        None
    }

    /// The gmem page and byte behind `ipa` of VM `vi` (through the memslots the model knows),
    /// with the slot's `userspace_addr` kind.
    fn gmem_at(&self, vi: usize, ipa: u64) -> Option<(u64, u64, u64)> {
        let gpa = ipa & !COCO_SHARED_BIT;
        let v = self.vms.get(vi)?;
        let s = v
            .slots
            .iter()
            .find(|s| gpa >= s.gpa && gpa - s.gpa < s.size)?;
        (s.gmem != 0).then(|| {
            let off = s.off + (gpa - s.gpa);
            (s.gmem, off / PAGE_SIZE, off % PAGE_SIZE)
        })
    }

    /// Whether anything the model knows of backs `ipa` in VM `vi` (a memslot or lent pages).
    fn backed(&self, vi: usize, ipa: u64) -> bool {
        let gpa = ipa & !COCO_SHARED_BIT;
        self.vms.get(vi).is_none_or(|v| {
            v.slots.iter().any(|s| gpa >= s.gpa && gpa - s.gpa < s.size)
                || v.lent.iter().any(|&(i, n)| {
                    let i = i & !COCO_SHARED_BIT;
                    gpa >= i && gpa - i < n * PAGE_SIZE
                })
        })
    }

    fn drop_secrets(&mut self, gmem: u64, off: u64, size: u64) {
        let (lo, hi) = (
            off / PAGE_SIZE,
            off.saturating_add(size).div_ceil(PAGE_SIZE),
        );
        self.secrets
            .retain(|&(g, p), _| g != gmem || p < lo || p >= hi);
    }

    /// A host change to a step guest's own image (its code, data, stack): it is tampered with.
    fn touch_image(&mut self, gmem: u64) {
        let image: Vec<usize> = (0..self.vms.len())
            .filter(|&i| {
                self.vms[i]
                    .slots
                    .iter()
                    .any(|s| s.gpa == GUEST_CODE_IPA && s.gmem == gmem)
            })
            .collect();
        for i in image {
            self.vms[i].tampered = true;
        }
    }

    fn forget_gmem(&mut self, gmem: u64) {
        self.gmems.retain(|g| g.handle != gmem);
        self.secrets.retain(|&(g, _), _| g != gmem);
        self.pins.retain(|&(g, _), _| g != gmem);
        self.guest_shared.retain(|&(g, _)| g != gmem);
    }

    fn pinned_in(&self, gmem: u64, off: u64, size: u64) -> bool {
        let (lo, hi) = (
            off / PAGE_SIZE,
            off.saturating_add(size).div_ceil(PAGE_SIZE),
        );
        self.pins
            .iter()
            .any(|(&(g, p), &n)| g == gmem && p >= lo && p < hi && n > 0)
    }

    /// Page accounting: every page has one owner; the pages away from the host are the hyp's
    /// own and the ones the host donated, plus the ones it lent.
    fn check_census(&self) -> Check {
        let c = census()?;
        let c0 = self.census0;
        let owned = c[1] + c[2] + c[3] + c[4];
        if c[0] != c0[0] || owned != c[0] {
            return fail(format!(
                "page census: {} RAM pages, {owned} with one owner (host {} + lent {} + hyp {} + guests {}): {} pages have none or two",
                c[0], c[1], c[2], c[3], c[4], c[0].abs_diff(owned)
            ));
        }
        let lent: u64 = self.count_lent();
        let donated = self.donated();
        // Lent pages and `anon` memory (pool pages lent to a guest) are the host's, shared.
        // Pages the teardown steps of dying VMs gave back already count as away still.
        let away = c[3] + c[4] + c[2] + self.back();
        let unannounced: u64 = self.unannounced.values().sum();
        if c[2] < lent || away - lent + unannounced != c0[3] + donated {
            return fail(format!(
                "page census: hyp {} + guests {} + host-lent {} - pages the host lent {lent} = {}, \
                 but the hyp's own {} + pages the host donated {donated} - pages relinquished \
                 unannounced {unannounced} = {}",
                c[3],
                c[4],
                c[2],
                away.saturating_sub(lent),
                c0[3],
                (c0[3] + donated).saturating_sub(unannounced)
            ));
        }
        if c[5] > c[3] - c0[3] {
            return fail(format!(
                "page census: {} free pool pages, but only {} hyp pages beyond its own",
                c[5],
                c[3] - c0[3]
            ));
        }
        Ok(())
    }

    /// Pages donated for the VMs: arena pages and creation-region pages.
    fn donated(&self) -> u64 {
        let arena = self
            .pages
            .iter()
            .filter(|p| matches!(p, Page::Donated(_)))
            .count() as u64;
        arena + self.vms.iter().map(|v| v.create_pages).sum::<u64>()
    }

    /// Pages the teardown steps of dying VMs gave back so far.
    fn back(&self) -> u64 {
        self.vms.iter().map(|v| v.back).sum()
    }

    fn count_lent(&self) -> u64 {
        self.pages
            .iter()
            .filter(|p| matches!(p, Page::Lent(_)))
            .count() as u64
    }

    // ---- host calls, and what their answers must be ----------------------------------------

    /// One host call through the model: every answer is held to what the host knows.
    fn host(&mut self, c: HostCall, a: [u64; 6]) -> Result<Result<[u64; 6], Errno>, String> {
        self.host_id(c.id(), a)
    }

    fn host_id(&mut self, id: u64, a: [u64; 6]) -> Result<Result<[u64; 6], Errno>, String> {
        self.t.hvcs += 1;
        let r = hvc::raw6(id, a);
        if self.trace.len() < 64 {
            self.trace.push((id, [a[0], a[1], a[2], a[3]], r[0]));
        }
        let r = match Errno::from_reg(r[0]) {
            Some(e) => Err(e),
            None => Ok(r),
        };
        if r.is_ok() {
            self.t.ok += 1;
        } else {
            self.t.refused += 1;
        }
        let Some(c) = HostCall::from_id(id) else {
            return match r {
                Err(Errno::ENOSYS) => Ok(r),
                _ => fail(format!("unknown call 0x{id:x} answered {r:x?}, not ENOSYS")),
            };
        };
        self.observe(c, a, r)
            .map_err(|e| format!("{}({:x?}) -> {:x?}: {e}", c.name(), &a[..4], r))?;
        Ok(r)
    }

    fn observe(&mut self, c: HostCall, a: [u64; 6], r: Result<[u64; 6], Errno>) -> Check {
        let Ok(x) = r else {
            return self.observe_refusal(c, a, r);
        };
        if c != HostCall::VmDestroy && self.names_dying(c, a[0]) {
            return fail(String::from(
                "a call naming a dying VM (or its gmem file or vCPU) was carried out",
            ));
        }
        match c {
            HostCall::VmCreate => {
                if self.vm_idx(x[0]).is_some() {
                    return fail(String::from("the handle of a live VM, again"));
                }
                let Some(t) = VmType::from_u64(a[0]) else {
                    return fail(String::from("a VM of no type"));
                };
                if a[2] < abi::host::VM_CREATE_PAGES {
                    return fail(format!("a VM made over {} pages", a[2]));
                }
                self.take_donation(a[1], a[2], self.next_uid)?;
                self.seen_vms.push(x[0]);
                self.vms.push(Vm {
                    uid: self.next_uid,
                    handle: x[0],
                    t,
                    guest: None,
                    vcpus: Vec::new(),
                    slots: Vec::new(),
                    lent: Vec::new(),
                    started: false,
                    guarded: false,
                    tampered: false,
                    dying: false,
                    back: 0,
                    create_pages: 0,
                });
                self.next_uid += 1;
                self.t.vms_created += 1;
            }
            HostCall::VmDestroy => {
                let Some(vi) = self.vm_idx(a[0]) else {
                    return fail(String::from("a VM the host does not have was destroyed"));
                };
                let uid = self.vms[vi].uid;
                let donated = self.count(Page::Donated(uid)) + self.vms[vi].create_pages;
                let unannounced = self.unannounced.get(&uid).copied().unwrap_or(0);
                let back = self.vms[vi].back + x[0];
                if back + unannounced > donated || x[1] > 1 {
                    return fail(format!(
                        "{back} pages back so far (and {unannounced} relinquished before, x1 = {}), \
                         but the host donated {donated} (Trust rule 8)",
                        x[1]
                    ));
                }
                if x[1] == 1 {
                    self.t.dying_steps += 1;
                    let v = &mut self.vms[vi];
                    v.dying = true;
                    v.back = back;
                    return Ok(());
                }
                // The last step: every page donated for it is back, zeroed.
                if back + unannounced != donated {
                    return fail(format!(
                        "{back} pages back (and {unannounced} relinquished before), but the host donated {donated} (Trust rule 8)"
                    ));
                }
                self.unannounced.remove(&uid);
                for i in 0..ARENA_PAGES {
                    let p = self.pages[i as usize];
                    if p == Page::Donated(uid) {
                        page_is_zero(self.arena_pa(i))?;
                    }
                    if p == Page::Donated(uid) || p == Page::Lent(uid) {
                        self.pages[i as usize] = Page::Free;
                    }
                }
                let create = crate::vm::release_create_pages(VmId(a[0]));
                if create != self.vms[vi].create_pages {
                    return fail(format!(
                        "the creation region gave {create} pages for it, the model {}",
                        self.vms[vi].create_pages
                    ));
                }
                let gone: Vec<u64> = self
                    .gmems
                    .iter()
                    .filter(|g| g.vm_uid == uid)
                    .map(|g| g.handle)
                    .collect();
                for g in gone {
                    self.forget_gmem(g);
                }
                self.vms.remove(vi);
                self.t.vms_destroyed += 1;
            }
            HostCall::GmemCreate => {
                let Some(vi) = self.vm_idx(a[0]) else {
                    return fail(String::from("a gmem file for no VM"));
                };
                if self.gmem_idx(x[0]).is_some() {
                    return fail(String::from("the handle of a live gmem file, again"));
                }
                self.seen_gmems.push(x[0]);
                self.gmems.push(Gmem {
                    handle: x[0],
                    vm_uid: self.vms[vi].uid,
                    size: a[1],
                });
            }
            HostCall::GmemDestroy => {
                if self.gmem_idx(a[0]).is_none() {
                    return fail(String::from("a gmem file the host does not have"));
                }
                let bound = self
                    .vms
                    .iter()
                    .any(|v| v.slots.iter().any(|s| s.gmem == a[0]));
                if bound || self.pinned_in(a[0], 0, u64::MAX / 2) {
                    return fail(String::from("destroyed while bound or pinned"));
                }
                self.forget_gmem(a[0]);
            }
            HostCall::MemslotCreate => {
                let vi = self.slots_open(a[0], "a memslot for no VM")?;
                let v = &mut self.vms[vi];
                v.slots.push(Slot {
                    id: x[0],
                    gpa: a[1],
                    size: a[2],
                    gmem: a[3],
                    off: a[4],
                    uaddr: a[5] >> SLOT_UADDR_SHIFT,
                });
                // A second view of a step guest's own image (its code, data, stack): what the
                // guest writes, shares or gives up there changes itself, so it is tampered with.
                if a[3] != 0 && a[1] != GUEST_CODE_IPA {
                    self.touch_image(a[3]);
                }
            }
            HostCall::MemslotDelete => {
                let vi = self.slots_open(a[0], "a memslot of no VM deleted")?;
                let v = &mut self.vms[vi];
                let Some(si) = v.slots.iter().position(|s| s.id == a[1]) else {
                    return fail(String::from("a memslot the host never made was deleted"));
                };
                v.slots.remove(si);
            }
            HostCall::Donate => {
                let Some(vi) = self.vm_idx(a[0]) else {
                    return fail(String::from("pages donated to no VM"));
                };
                let uid = self.vms[vi].uid;
                self.take_donation(a[1], a[2], uid)?;
            }
            HostCall::MapHostShared => {
                let Some(vi) = self.vm_idx(a[0]) else {
                    return fail(String::from("pages shared with no VM"));
                };
                let (uid, t) = (self.vms[vi].uid, self.vms[vi].t);
                if t == VmType::Pkvm {
                    return fail(String::from("host pages shared into a pkvm VM (rule 4)"));
                }
                let Some(idx) = self.run_pages(a[2], a[3]) else {
                    return fail(String::from("shared pages the host does not hold"));
                };
                if let Some(i) = self.unclaimable(&idx) {
                    return fail(format!(
                        "shared page 0x{:x}, which is {:?}",
                        self.arena_pa(i as u64),
                        self.pages[i]
                    ));
                }
                for i in idx {
                    self.pages[i] = Page::Lent(uid);
                }
                self.vms[vi].lent.push((a[1], a[3]));
            }
            HostCall::PoolReclaim => {
                let Some(vi) = self.vm_idx(a[0]) else {
                    return fail(String::from("pages reclaimed from no VM"));
                };
                let uid = self.vms[vi].uid;
                let n = if a[1] == 1 { CHUNK_PAGES } else { 1 };
                let Some(idx) = self.run_pages(x[0], n) else {
                    return fail(String::from("handed the host pages it never donated"));
                };
                if let Some(&i) = idx.iter().find(|&&i| self.pages[i] != Page::Donated(uid)) {
                    return fail(format!(
                        "handed back page 0x{:x}, which is {:?}, not this VM's",
                        self.arena_pa(i as u64),
                        self.pages[i]
                    ));
                }
                for i in idx {
                    page_is_zero(self.arena_pa(i as u64))?;
                    self.pages[i] = Page::Free;
                }
            }
            HostCall::VcpuCreate => {
                let Some(vi) = self.vm_idx(a[0]) else {
                    return fail(String::from("a vCPU for no VM"));
                };
                if a[4] < abi::host::VCPU_CREATE_PAGES {
                    return fail(format!("a vCPU made over {} pages", a[4]));
                }
                let uid = self.vms[vi].uid;
                self.take_donation(a[3], a[4], uid)?;
                let v = &mut self.vms[vi];
                if v.t == VmType::Pkvm && v.started {
                    return fail(String::from("a vCPU added to a running pkvm VM"));
                }
                v.vcpus.push(x[0]);
                self.seen_vcpus.push(x[0]);
            }
            HostCall::Convert => {
                if self.gmem_idx(a[0]).is_none() {
                    return fail(String::from("a gmem file the host does not have"));
                }
                let to_private = a[3] == 0;
                if to_private && self.pinned_in(a[0], a[1], a[2]) {
                    return fail(String::from("converted a pinned page to private"));
                }
                self.drop_secrets(a[0], a[1], a[2]);
                self.touch_image(a[0]);
            }
            HostCall::PunchHole => {
                if self.pinned_in(a[0], a[1], a[2]) {
                    return fail(String::from("punched a pinned page"));
                }
                self.drop_secrets(a[0], a[1], a[2]);
                self.touch_image(a[0]);
            }
            HostCall::HostPin => {
                if self.gmem_idx(a[0]).is_none() {
                    return fail(String::from("a gmem file the host does not have"));
                }
                *self.pins.entry((a[0], a[1] / PAGE_SIZE)).or_insert(0) += 1;
            }
            HostCall::HostUnpin => match self.pins.get_mut(&(a[0], a[1] / PAGE_SIZE)) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return fail(String::from("unpinned a page the host never pinned")),
            },
            HostCall::HostMapGmem => {
                let key = (a[0], a[1] / PAGE_SIZE);
                if self.secrets.contains_key(&key) {
                    return fail(format!(
                        "the host may map gmem page {} that the guest wrote privately and has not shared (Trust rule 1)",
                        key.1
                    ));
                }
                let uid = self.gmem_idx(a[0]).map(|g| self.gmems[g].vm_uid);
                self.host_page_ok(uid, x[0], a[2] != 0)?;
                if a[2] != 0 {
                    self.touch_image(a[0]);
                }
            }
            HostCall::HostMapUaddr => {
                let vi = self.vm_idx(a[0]);
                let slot = vi.and_then(|vi| self.vms[vi].slots.iter().find(|s| s.id == a[1]));
                if let Some(s) = slot.copied() {
                    let key = (s.gmem, (s.off + a[2]) / PAGE_SIZE);
                    if s.uaddr == 2 && self.secrets.contains_key(&key) {
                        return fail(String::from(
                            "the host may map, through userspace_addr, a gmem page the guest wrote privately (Trust rule 1)",
                        ));
                    }
                }
                let uid = vi.map(|vi| self.vms[vi].uid);
                self.host_page_ok(uid, x[0], a[3] != 0)?;
            }
            HostCall::GuestConvert => {
                // The guest's conversion was carried out: what it had private may be shared.
                if let Some(vi) = self.vm_of_vcpu(a[0]) {
                    let uid = self.vms[vi].uid;
                    let gs: Vec<u64> = self
                        .gmems
                        .iter()
                        .filter(|g| g.vm_uid == uid)
                        .map(|g| g.handle)
                        .collect();
                    for g in gs {
                        self.drop_secrets(g, 0, u64::MAX / 2);
                    }
                }
            }
            HostCall::CheckInvariants if x[0] != 0 => {
                return fail(format!("{} invariant violations", x[0]));
            }
            _ => {}
        }
        Ok(())
    }

    /// A refusal the model says cannot be.
    fn observe_refusal(&mut self, c: HostCall, a: [u64; 6], r: Result<[u64; 6], Errno>) -> Check {
        let e = r.err().unwrap_or(Errno::EINVAL);
        if c != HostCall::VmDestroy && self.names_dying(c, a[0]) {
            self.t.dying_calls += 1;
        }
        match c {
            HostCall::VmDestroy if self.vm_idx(a[0]).is_some() => {
                return fail(String::from(
                    "a live VM whose vCPUs are idle was not torn down",
                ));
            }
            HostCall::VmCreate => {
                let free = self.donation_free(a[1], a[2]);
                if VmType::from_u64(a[0]).is_some()
                    && a[2] >= abi::host::VM_CREATE_PAGES
                    && free
                    && self.vms.len() < 255
                {
                    return fail(format!("a VM over free host pages refused: {e}"));
                }
            }
            HostCall::VcpuCreate => {
                let v = self.vm_idx(a[0]).map(|vi| &self.vms[vi]);
                let ok_args = a[1] == GUEST_CODE_IPA && a[4] >= abi::host::VCPU_CREATE_PAGES;
                if let Some(v) = v.filter(|v| !v.dying && ok_args) {
                    let (pkvm, full) = (v.t == VmType::Pkvm, v.vcpus.len() >= 16);
                    if self.donation_free(a[3], a[4]) {
                        let why = match e {
                            Errno::EPERM if pkvm => None,
                            Errno::ENOSPC if full => None,
                            Errno::ENOMEM => self.enomem_ok(a[0], a[4]),
                            _ => Some(String::new()),
                        };
                        if let Some(why) = why {
                            return fail(format!("a vCPU over free host pages refused: {e}{why}"));
                        }
                    }
                }
            }
            _ if e == Errno::ENOMEM => {
                if let Some(vm) = self.charged_vm(c, a[0]) {
                    self.t.enomem += 1;
                    if let Some(why) = self.enomem_ok(vm, 0) {
                        return fail(format!("a charged call refused ENOMEM{why}"));
                    }
                }
            }
            _ => {}
        }
        match c {
            HostCall::Donate => {
                let live = self.vm_idx(a[0]).is_some_and(|vi| !self.vms[vi].dying);
                let free = a[2] > 0
                    && self
                        .run_pages(a[1], a[2])
                        .is_some_and(|idx| idx.iter().all(|&i| self.pages[i] == Page::Free));
                if live && free {
                    return fail(format!("free host pages refused: {r:?}"));
                }
            }
            HostCall::CheckInvariants | HostCall::PageCensus | HostCall::Version => {
                return fail(format!("refused: {r:?}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// A page the hyp let the host map for VM `uid`: it must be one of that VM's, and readable.
    fn host_page_ok(&mut self, uid: Option<u64>, pa: u64, write: bool) -> Check {
        let page = pa & !(PAGE_SIZE - 1);
        let mine = self
            .arena_idx(page)
            .map(|i| self.pages[i])
            .filter(|&p| Some(p) == uid.map(Page::Donated) || Some(p) == uid.map(Page::Lent));
        if mine.is_none() {
            return fail(format!(
                "the host was given pa 0x{pa:x}, which is not a page of this VM's"
            ));
        }
        match probe_read(pa as usize) {
            Ok(v) if write => probe_write(pa as usize, v ^ 0xa5).map_err(|f| {
                format!(
                    "a write of pa 0x{pa:x} the hyp granted aborts (ESR 0x{:x})",
                    f.esr
                )
            }),
            Ok(_) => Ok(()),
            Err(f) => fail(format!(
                "a read of pa 0x{pa:x} the hyp granted aborts (ESR 0x{:x})",
                f.esr
            )),
        }
    }

    /// The first of arena pages `idx` the host cannot give away now: not free, and not one a
    /// dying VM's teardown steps may have given back already (they say how many, not which).
    /// The others are taken: those from a dying VM count as given back by it.
    fn unclaimable(&mut self, idx: &[usize]) -> Option<usize> {
        let mut from: BTreeMap<u64, u64> = BTreeMap::new();
        for &i in idx {
            match self.pages[i] {
                Page::Free => {}
                Page::Donated(uid) => {
                    let n = from.entry(uid).or_insert(0);
                    *n += 1;
                    let back = self
                        .vms
                        .iter()
                        .find(|v| v.uid == uid && v.dying)
                        .map(|v| v.back);
                    if back.is_none_or(|b| b < *n) {
                        return Some(i);
                    }
                }
                Page::Lent(_) => return Some(i),
            }
        }
        for (uid, n) in from {
            if let Some(v) = self.vms.iter_mut().find(|v| v.uid == uid) {
                v.back -= n;
                self.t.reclaimed_early += n;
            }
        }
        None
    }

    /// Whether `pa..+n` is a run of free arena pages (one the host may donate).
    fn donation_free(&self, pa: u64, n: u64) -> bool {
        n > 0
            && self
                .run_pages(pa, n)
                .is_some_and(|idx| idx.iter().all(|&i| self.pages[i] == Page::Free))
    }

    /// A creation donation the hyp took (`VmCreate`, `VcpuCreate`): free arena pages, now VM
    /// `uid`'s.
    fn take_donation(&mut self, pa: u64, n: u64, uid: u64) -> Check {
        let Some(idx) = self.run_pages(pa, n) else {
            return fail(String::from(
                "took pages the host does not hold (hyp or outside RAM)",
            ));
        };
        if let Some(i) = self.unclaimable(&idx) {
            return fail(format!(
                "took page 0x{:x}, which is {:?} already (donated twice)",
                self.arena_pa(i as u64),
                self.pages[i]
            ));
        }
        for i in idx {
            self.pages[i] = Page::Donated(uid);
        }
        Ok(())
    }

    /// Whether `a0` of call `c` names a dying VM, or a gmem file or vCPU of one.
    fn names_dying(&self, c: HostCall, a0: u64) -> bool {
        use HostCall as H;
        let dying = |uid: u64| self.vms.iter().any(|v| v.uid == uid && v.dying);
        match c {
            H::GmemDestroy
            | H::Convert
            | H::PunchHole
            | H::HostPin
            | H::HostUnpin
            | H::HostMapGmem
            | H::GmemPhys => self
                .gmem_idx(a0)
                .is_some_and(|g| dying(self.gmems[g].vm_uid)),
            H::GuestConvert | H::VcpuRun => {
                self.vm_of_vcpu(a0).is_some_and(|vi| self.vms[vi].dying)
            }
            H::GmemCreate
            | H::MemslotCreate
            | H::MemslotDelete
            | H::SetMemoryAttributes
            | H::HostMapUaddr
            | H::Donate
            | H::MapHostShared
            | H::VcpuCreate
            | H::VmStats
            | H::VmWalk
            | H::VmSetFaultMode
            | H::ServeFault
            | H::PoolReclaim
            | H::PoolStats
            | H::VmOpenPmu
            | H::VmDestroy => self.vm_idx(a0).is_some_and(|vi| self.vms[vi].dying),
            _ => false,
        }
    }

    /// The live VM (its handle) whose heap pays for call `c` naming `a0`, if the model has it.
    fn charged_vm(&self, c: HostCall, a0: u64) -> Option<u64> {
        use HostCall as H;
        let vi = match c {
            H::Convert | H::PunchHole | H::HostPin | H::HostUnpin | H::HostMapGmem => {
                let uid = self.gmems[self.gmem_idx(a0)?].vm_uid;
                self.vms.iter().position(|v| v.uid == uid)?
            }
            H::GuestConvert => self.vm_of_vcpu(a0)?,
            H::MemslotCreate
            | H::MemslotDelete
            | H::SetMemoryAttributes
            | H::HostMapUaddr
            | H::MapHostShared
            | H::ServeFault => self.vm_idx(a0)?,
            _ => return None,
        };
        let v = &self.vms[vi];
        (!v.dying).then_some(v.handle)
    }

    /// An `ENOMEM` for VM `vm` (with `pages` more donated by the call): `None` if the rules
    /// allow it (the pool and the heap's reserve together under `CALL_PAGES_MAX` = 8, so the
    /// pool's free pages under 8), else why not.
    fn enomem_ok(&mut self, vm: u64, pages: u64) -> Option<String> {
        self.t.hvcs += 1;
        let r = hvc::raw6(HostCall::PoolStats.id(), [vm, 0, 0, 0, 0, 0]);
        if let Some(e) = Errno::from_reg(r[0]) {
            return Some(format!(" (and PoolStats of the VM: {e})"));
        }
        let free = r[0] + r[1] * CHUNK_PAGES;
        (free + pages >= 8).then(|| format!(", with {free} free pool pages (+ {pages} donated)"))
    }

    // ---- guests -------------------------------------------------------------------------

    /// One step of VM `vi`'s step guest: serves the exits, completing them at random (honest,
    /// lying, refusing). `None` if the guest could not finish it.
    fn step(&mut self, vi: usize, op: u64, args: [u64; 4]) -> Result<Option<StepOut>, String> {
        let Some(g) = self.vms.get(vi).and_then(|v| v.guest.as_ref()) else {
            return Ok(None);
        };
        if g.state != GuestState::Ready {
            return Ok(None);
        }
        let vcpu = g.vcpu;
        self.t.steps += 1;
        let out = self.run_vcpu(vcpu, Some((op, args)))?;
        if self.trace.len() < 64 {
            let st = out.and_then(|o| o.status).unwrap_or(u64::MAX);
            self.trace.push((op, args, st));
        }
        if out.is_some() {
            self.t.steps_ok += 1;
        }
        Ok(out)
    }

    /// Runs `vcpu` until its command step ends (`cmd`), or for a few exits (`None`: a vCPU
    /// the host drives blindly, completing whatever exits come with junk).
    fn run_vcpu(
        &mut self,
        vcpu: u64,
        cmd: Option<(u64, [u64; 4])>,
    ) -> Result<Option<StepOut>, String> {
        let mut out = StepOut::default();
        let (mut c0, mut c1) = if cmd.is_some() {
            (0, 0)
        } else {
            (self.rng.next(), self.rng.next())
        };
        let mut asked = false;
        let (mut retries, mut interrupts) = (0, 0);
        let limit = if cmd.is_some() { STEP_EXITS_MAX } else { 4 };
        let vi = self.vm_of_vcpu(vcpu);
        for _ in 0..limit {
            self.t.hvcs += 1;
            self.t.exits += 1;
            let saved = timer::arm(self.ticks);
            let r = hvc::raw6(HostCall::VcpuRun.id(), [vcpu, c0, c1, 0, 0, 0]);
            timer::disarm(saved);
            let dying = vi.is_some_and(|vi| self.vms[vi].dying);
            if dying {
                self.t.dying_calls += 1;
            }
            if dying && Errno::from_reg(r[0]) != Some(Errno::ENOENT) {
                return fail(format!(
                    "VcpuRun of vCPU {vcpu} of a dying VM: {r:x?}, not ENOENT"
                ));
            }
            if let Some(e) = Errno::from_reg(r[0]) {
                if vi.is_some() && !dying && cmd.is_some() && e == Errno::ENOENT {
                    return fail(format!("VcpuRun of a live VM's vCPU {vcpu}: {e}"));
                }
                return Ok(None);
            }
            if let Some(vi) = vi {
                self.vms[vi].started = true;
            } else {
                return fail(format!("vCPU {vcpu} of no live VM ran: exit {r:x?}"));
            }
            let Some(reason) = ExitReason::from_u64(r[0]) else {
                return fail(format!("VcpuRun: an exit of no known reason: {r:x?}"));
            };
            (c0, c1) = (0, 0);
            match reason {
                ExitReason::Mmio
                    if (CMD_DEVICE_IPA..CMD_DEVICE_IPA + CMD_DEVICE_SIZE).contains(&r[1]) =>
                {
                    let Some((op, args)) = cmd else {
                        c0 = self.rng.next();
                        continue;
                    };
                    let write = r[3] != 0;
                    match (r[1] - CMD_DEVICE_IPA, write) {
                        (REG_CMD, false) => {
                            c0 = op;
                            asked = true;
                            out = StepOut::default();
                        }
                        (REG_ARG0, false) => c0 = args[0],
                        (REG_ARG1, false) => c0 = args[1],
                        (REG_ARG2, false) => c0 = args[2],
                        (REG_ARG3, false) => c0 = args[3],
                        (REG_RESULT0, true) => out.results[0] = r[4],
                        (REG_RESULT1, true) => out.results[1] = r[4],
                        // A STATUS before this step's command ends an older one.
                        (REG_STATUS, true) if asked => {
                            out.status = Some(r[4]);
                            return Ok(Some(out));
                        }
                        _ => {}
                    }
                }
                ExitReason::Mmio => {
                    let v = self.rng.next();
                    out.mmio = Some((r[1], r[3] != 0, r[4], v));
                    c0 = v;
                }
                ExitReason::MemoryFault => {
                    c0 = match self.rng.below(10) {
                        0 => self.rng.next(),
                        1 | 2 if retries < RETRIES_MAX => {
                            retries += 1;
                            0
                        }
                        _ => COMPLETE_INJECT_ABORT,
                    };
                }
                ExitReason::NeedPages => match self.rng.below(10) {
                    0 => c0 = COMPLETE_INJECT_ABORT,
                    1 => {}
                    _ => {
                        let n = r[1].clamp(1, 64);
                        if let Some(pa) = self.free_run(n) {
                            let h = self.vms[vi_or(vi)?].handle;
                            let _ = self.host(HostCall::Donate, [h, pa, n, 0, 0, 0])?;
                        } else {
                            c0 = COMPLETE_INJECT_ABORT;
                        }
                    }
                },
                ExitReason::Hypercall => {
                    let (func, args) = (r[1], [r[2], r[3], r[4]]);
                    if func == MEM_SHARE || func == MEM_UNSHARE {
                        let mode = match self.rng.below(8) {
                            0 => ForwardMode::Lie,
                            1 => ForwardMode::Refuse,
                            _ => ForwardMode::Honest,
                        };
                        let v = &self.vms[vi_or(vi)?];
                        let (h, uid) = (v.handle, v.uid);
                        if mode == ForwardMode::Honest {
                            // The host carries it out: whatever it covers may be shared now.
                            self.forget_secrets_of(uid);
                        }
                        self.t.hvcs += 2;
                        (c0, c1) = forward_with(mode, VmId(h), VcpuId(vcpu), func, args);
                        if self.rng.pct(10) {
                            (c0, c1) = (self.rng.next(), self.rng.next());
                        }
                    } else {
                        (c0, c1) = (self.rng.next(), self.rng.next());
                    }
                }
                ExitReason::PageFault => {
                    if let Some(pa) = self.free_run(1) {
                        let h = self.vms[vi_or(vi)?].handle;
                        let _ = self.host(HostCall::Donate, [h, pa, 1, 0, 0, 0])?;
                        let _ = self.host(HostCall::ServeFault, [h, r[1], r[2], 0, 0, 0])?;
                    }
                }
                ExitReason::GuestException => {
                    // Trust rule 1: the class, and nothing more.
                    if r[2..].iter().any(|&x| x != 0) {
                        return fail(format!(
                            "a guest-exception exit says more than the class: {r:x?}"
                        ));
                    }
                    self.set_guest(vcpu, GuestState::Dead);
                    return Ok(None);
                }
                ExitReason::Interrupt => {
                    // Trust rule 1: an interrupt exit carries no data.
                    if r[1..].iter().any(|&x| x != 0) {
                        return fail(format!("an interrupt exit carries data: {r:x?}"));
                    }
                    interrupts += 1;
                    if interrupts > STEP_INTERRUPTS_MAX {
                        break;
                    }
                }
            }
        }
        if cmd.is_some() {
            self.set_guest(vcpu, GuestState::Wedged);
        }
        Ok(None)
    }

    fn forget_secrets_of(&mut self, uid: u64) {
        let gs: Vec<u64> = self
            .gmems
            .iter()
            .filter(|g| g.vm_uid == uid)
            .map(|g| g.handle)
            .collect();
        for g in gs {
            self.drop_secrets(g, 0, u64::MAX / 2);
        }
    }

    fn set_guest(&mut self, vcpu: u64, s: GuestState) {
        for v in &mut self.vms {
            if let Some(g) = v.guest.as_mut().filter(|g| g.vcpu == vcpu) {
                g.state = s;
            }
        }
    }

    /// A new VM, and (mostly) the step guest in it.
    fn op_vm_create(&mut self) -> Check {
        let t = match self.rng.below(20) {
            0 => self.rng.pick(&[0, 4, u64::MAX]).unwrap_or(0),
            k => 1 + k % 3,
        };
        if self.vms.len() >= MAX_VMS && t != 0 {
            return self.op_vm_destroy(true);
        }
        // Its creation donation: mostly VM_CREATE_PAGES free arena pages, sometimes more,
        // too few, or pages the host does not hold.
        let n = match self.rng.below(20) {
            0 => self.rng.below(abi::host::VM_CREATE_PAGES),
            1 => abi::host::VM_CREATE_PAGES + 1 + self.rng.below(8),
            _ => abi::host::VM_CREATE_PAGES,
        };
        let pa = if self.rng.pct(5) {
            self.pa_arg()
        } else {
            match self.free_run(n.max(1)) {
                Some(pa) => pa,
                None => return Ok(()),
            }
        };
        let Ok(x) = self.host(HostCall::VmCreate, [t, pa, n, 0, 0, 0])? else {
            return Ok(());
        };
        let handle = x[0];
        if self.rng.pct(20) {
            return Ok(());
        }
        let Some(vi) = self.vm_idx(handle) else {
            return Ok(());
        };
        let (uid, vt) = (self.vms[vi].uid, self.vms[vi].t);
        if let Some(pa) = self.free_run(SETUP_POOL) {
            let _ = self.host(HostCall::Donate, [handle, pa, SETUP_POOL, 0, 0, 0])?;
        }
        // A plain guest's image lives in host pages: a free run of the arena, lent.
        let mut img = HostPages::new(0, 0);
        let mut img_run = None;
        if vt == VmType::Plain {
            let Some(pa) = self.free_run(GUEST_PAGES) else {
                return Ok(());
            };
            img = HostPages::new(pa, pa + GUEST_PAGES * PAGE_SIZE);
            img_run = Some(pa);
        }
        self.t.hvcs += 16;
        match GuestDriver::load(VmId(handle), vt, &mut img) {
            Ok(d) => {
                let v = &mut self.vms[vi];
                v.guest = Some(Guest {
                    vcpu: d.vcpu.0,
                    state: GuestState::Ready,
                });
                v.vcpus.push(d.vcpu.0);
                v.create_pages += abi::host::VCPU_CREATE_PAGES;
                self.seen_vcpus.push(d.vcpu.0);
                match d.memory {
                    GuestMemory::HostShared { pa } => {
                        v.lent.push((GUEST_CODE_IPA, GUEST_PAGES));
                        for i in self.run_pages(pa, GUEST_PAGES).unwrap_or_default() {
                            self.pages[i] = Page::Lent(uid);
                        }
                    }
                    GuestMemory::Gmem { gmem, slot } => {
                        v.slots.push(Slot {
                            id: slot.0,
                            gpa: GUEST_CODE_IPA,
                            size: GUEST_PAGES * PAGE_SIZE,
                            gmem: gmem.0,
                            off: 0,
                            uaddr: 0,
                        });
                        self.seen_gmems.push(gmem.0);
                        self.gmems.push(Gmem {
                            handle: gmem.0,
                            vm_uid: uid,
                            size: GUEST_PAGES * PAGE_SIZE,
                        });
                        if vt == VmType::Coco {
                            // Its image is private from the start: the host must not read it.
                            for p in 0..crate::driver::GUEST_IMAGE_PAGES {
                                self.secrets.insert((gmem.0, p), (PAGE_SIZE, 0));
                            }
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Half made (the pool ran short, say): it goes, with whatever it was given.
                log::debug!("storm: guest load into VM {handle} failed: {e}");
                if let Some(pa) = img_run {
                    for i in self.run_pages(pa, GUEST_PAGES).unwrap_or_default() {
                        self.pages[i] = Page::Lent(uid);
                    }
                }
                self.destroy_all(handle)
                    .map_err(|e| format!("a half-made VM could not be torn down: {e}"))
            }
        }
    }

    fn op_vm_destroy(&mut self, live: bool) -> Check {
        let h = if live || self.rng.pct(70) {
            match self
                .rng
                .pick(&self.vms.iter().map(|v| v.handle).collect::<Vec<_>>())
            {
                Some(h) => h,
                None => return Ok(()),
            }
        } else {
            self.any_vm()
        };
        // Unpin first, or not (the pins go with the VM).
        if self.rng.pct(50) {
            self.unpin_vm(h)?;
        }
        // Mostly every step; else one (the VM is left dying, for the calls that name it to
        // find), unless host pages are shared into it (when the steps give those back is
        // not for the host to know, so the census could not be exact).
        let lent = self
            .vm_idx(h)
            .is_some_and(|vi| self.count(Page::Lent(self.vms[vi].uid)) > 0);
        if self.vm_idx(h).is_some() && (lent || self.rng.pct(60)) {
            return self.destroy_all(h);
        }
        self.host(HostCall::VmDestroy, [h, 0, 0, 0, 0, 0])
            .map(|_| ())
    }

    /// Every step of VM `h`'s teardown (`Err` if one was refused).
    fn destroy_all(&mut self, h: u64) -> Check {
        for _ in 0..100_000 {
            match self.host(HostCall::VmDestroy, [h, 0, 0, 0, 0, 0])? {
                Ok(x) if x[1] == 0 => return Ok(()),
                Ok(_) => {}
                Err(e) => return fail(format!("VmDestroy of VM {h}: {e}")),
            }
        }
        fail(format!("VmDestroy of VM {h}: 100000 steps and not gone"))
    }

    fn unpin_vm(&mut self, h: u64) -> Check {
        // (A dying VM's pins go with it: its gmem files answer nothing.)
        let Some(vi) = self.vm_idx(h).filter(|&vi| !self.vms[vi].dying) else {
            return Ok(());
        };
        let uid = self.vms[vi].uid;
        let mine: BTreeSet<u64> = self
            .gmems
            .iter()
            .filter(|g| g.vm_uid == uid)
            .map(|g| g.handle)
            .collect();
        let pins: Vec<((u64, u64), u32)> = self
            .pins
            .iter()
            .filter(|(k, _)| mine.contains(&k.0))
            .map(|(&k, &n)| (k, n))
            .collect();
        for ((g, p), n) in pins {
            for _ in 0..n {
                match self.host(HostCall::HostUnpin, [g, p * PAGE_SIZE, 0, 0, 0, 0])? {
                    Ok(_) => {}
                    // The VM's heap is short (checked in `observe_refusal`): the pins go with
                    // the VM instead.
                    Err(Errno::ENOMEM) => return Ok(()),
                    Err(e) => return fail(format!("HostUnpin of a page the host pins: {e}")),
                }
            }
        }
        Ok(())
    }

    /// A VM handle: mostly a live one, else a stale or made-up one.
    fn any_vm(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => self.rng.next(),
            1 => self.rng.below(8),
            2..=3 => self.rng.pick(&self.seen_vms).unwrap_or(0x77),
            _ => {
                let hs: Vec<u64> = self.vms.iter().map(|v| v.handle).collect();
                self.rng.pick(&hs).unwrap_or(0x77)
            }
        }
    }

    fn any_gmem(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => self.rng.next(),
            1 => self.rng.below(8),
            2 => self.rng.pick(&self.seen_gmems).unwrap_or(0x77),
            _ => {
                let hs: Vec<u64> = self.gmems.iter().map(|g| g.handle).collect();
                self.rng.pick(&hs).unwrap_or(0x77)
            }
        }
    }

    fn any_vcpu(&mut self) -> u64 {
        match self.rng.below(6) {
            0 => self.rng.next(),
            _ => self.rng.pick(&self.seen_vcpus).unwrap_or(0x77),
        }
    }

    /// A page count: mostly small, sometimes 0 or huge.
    fn pages_arg(&mut self) -> u64 {
        match self.rng.below(20) {
            0 => 0,
            1 => self.rng.next() >> self.rng.below(64),
            _ => 1 + self.rng.below(70),
        }
    }

    /// A byte offset or size: mostly pages, sometimes unaligned or huge.
    fn bytes_arg(&mut self, pages: u64) -> u64 {
        match self.rng.below(20) {
            0 => self.rng.next(),
            1 => pages * PAGE_SIZE + 1 + self.rng.below(PAGE_SIZE - 1),
            _ => pages * PAGE_SIZE,
        }
    }

    /// A page to donate or lend: mostly the arena (free or not), sometimes the hyp's own
    /// memory or outside RAM.
    fn pa_arg(&mut self) -> u64 {
        // Room for a run of 64 pages after it, inside the arena or the hyp's memory.
        let (hyp, arena) = (self.census0[3].saturating_sub(64), ARENA_PAGES - 64);
        match self.rng.below(20) {
            0 => self.ram_base + self.rng.below(hyp) * PAGE_SIZE,
            1 => self.rng.next() | (1 << 63),
            2 => {
                let i = self.rng.below(arena);
                self.arena_pa(i) + 8
            }
            _ => {
                let i = self.rng.below(arena);
                self.arena_pa(i)
            }
        }
    }

    /// An IPA in the memslot windows (or, rarely, the guest's image: the step guest that gets
    /// it may then write, share or give up its own code, data or stack, so it is tampered with).
    fn window_ipa(&mut self) -> u64 {
        if self.rng.pct(3) {
            for v in &mut self.vms {
                v.tampered = true;
            }
            return GUEST_CODE_IPA + self.rng.below(GUEST_PAGES) * PAGE_SIZE;
        }
        WINDOW_BASE + self.rng.below(WINDOWS * WINDOW_PAGES) * PAGE_SIZE
    }

    /// One random call.
    fn one(&mut self) -> Check {
        match self.rng.below(100) {
            0..=3 => self.op_vm_create(),
            4..=5 => self.op_vm_destroy(false),
            6..=9 => self.op_gmem_create(),
            10..=11 => {
                let g = self.any_gmem();
                self.host(HostCall::GmemDestroy, [g, 0, 0, 0, 0, 0])
                    .map(|_| ())
            }
            12..=17 => self.op_slot_create(),
            18..=19 => self.op_slot_delete(),
            20..=23 => self.op_donate(),
            24..=25 => {
                let (v, k) = (self.any_vm(), self.rng.below(3));
                self.host(HostCall::PoolReclaim, [v, k, 0, 0, 0, 0])
                    .map(|_| ())
            }
            26 => {
                let v = self.any_vm();
                let entry = match self.rng.below(4) {
                    0 => self.rng.next(),
                    _ => GUEST_CODE_IPA,
                };
                // Its donation: mostly one free arena page, sometimes more, none, or pages the
                // host does not hold.
                let n = match self.rng.below(10) {
                    0 => 0,
                    1 => 2 + self.rng.below(8),
                    _ => abi::host::VCPU_CREATE_PAGES,
                };
                let pa = match self.free_run(n.max(1)) {
                    Some(pa) if self.rng.pct(90) => pa,
                    _ => self.pa_arg(),
                };
                self.host(HostCall::VcpuCreate, [v, entry, 0, pa, n, 0])
                    .map(|_| ())
            }
            27..=29 => {
                // A vCPU run blind, with junk completions: a guest that was left in the middle
                // of something (a range call of a wedged guest, say) may relinquish pages.
                let c = self.any_vcpu();
                let ready = self.vms.iter().any(|v| {
                    v.guest
                        .as_ref()
                        .is_some_and(|g| g.vcpu == c && g.state == GuestState::Ready)
                });
                let watch = self
                    .vm_of_vcpu(c)
                    .filter(|_| !ready)
                    .and_then(|vi| self.watch(vi, MEM_RELINQUISH));
                self.run_vcpu(c, None)?;
                if let Some(v) = self
                    .vms
                    .iter_mut()
                    .find(|v| v.vcpus.contains(&c) && v.guest.as_ref().is_some_and(|g| g.vcpu != c))
                {
                    v.tampered = true;
                }
                self.settle(watch)
            }
            30..=54 => self.op_guest(),
            55..=58 => self.op_convert(),
            59..=60 => {
                let (g, o, n) = (self.any_gmem(), self.rng.below(70), self.pages_arg());
                let (o, n) = (self.bytes_arg(o), self.bytes_arg(n));
                self.host(HostCall::PunchHole, [g, o, n, 0, 0, 0])
                    .map(|_| ())
            }
            61..=64 => self.op_pin(),
            65..=71 => self.op_host_read(),
            72..=73 => self.op_raw_read(),
            74 => self.op_uaddr(),
            75..=76 => {
                let (v, gpa) = (self.any_vm(), self.window_ipa());
                let size = self.pages_arg() * PAGE_SIZE;
                let junk = self.rng.next();
                let attrs = self.rng.pick(&[0, 8, 8, junk]).unwrap_or(0);
                self.host(HostCall::SetMemoryAttributes, [v, gpa, size, attrs, 0, 0])
                    .map(|_| ())
            }
            77 => {
                let (v, ipa, pa) = (self.any_vm(), self.window_ipa(), self.pa_arg());
                let n = 1 + self.rng.below(8);
                self.host(HostCall::MapHostShared, [v, ipa, pa, n, 0, 0])
                    .map(|_| ())
            }
            78 => {
                let (v, m) = (self.any_vm(), self.rng.below(3));
                self.host(HostCall::VmSetFaultMode, [v, m, 0, 0, 0, 0])
                    .map(|_| ())
            }
            79 => {
                let c = self.any_vcpu();
                self.host(HostCall::GuestConvert, [c, 0, 0, 0, 0, 0])
                    .map(|_| ())
            }
            _ => self.op_junk(),
        }
    }

    fn op_gmem_create(&mut self) -> Check {
        let v = self.any_vm();
        let pages = self.pages_arg();
        let size = self.bytes_arg(pages);
        let flags = match self.rng.below(10) {
            0 => self.rng.next(),
            1..=2 => self.rng.below(16),
            _ => {
                let base = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY;
                let more = if self.rng.pct(30) {
                    GmemFlags::INIT_SHARED
                } else {
                    GmemFlags::empty()
                };
                (base | more).bits()
            }
        };
        self.host(HostCall::GmemCreate, [v, size, flags, 0, 0, 0])
            .map(|_| ())
    }

    fn op_slot_create(&mut self) -> Check {
        let v = self.any_vm();
        let w = self.rng.below(WINDOWS);
        let mut gpa = WINDOW_BASE + w * WINDOW_PAGES * PAGE_SIZE;
        if self.rng.pct(20) {
            gpa += {
                let t = self.rng.below(WINDOW_PAGES);
                self.bytes_arg(t)
            };
        }
        let size = match self.rng.below(10) {
            0 => {
                let t = self.pages_arg();
                self.bytes_arg(t)
            }
            _ => (1 + self.rng.below(WINDOW_PAGES)) * PAGE_SIZE,
        };
        // Mostly a gmem file of this VM's, else anyone's, a stale one or none.
        let own: Vec<u64> = self
            .vm_idx(v)
            .map(|vi| self.vms[vi].uid)
            .map(|uid| {
                self.gmems
                    .iter()
                    .filter(|g| g.vm_uid == uid)
                    .map(|g| g.handle)
                    .collect()
            })
            .unwrap_or_default();
        let g = match self.rng.below(10) {
            0 => 0,
            1..=2 => self.any_gmem(),
            _ => self.rng.pick(&own).unwrap_or(0),
        };
        let gsize = self
            .gmem_idx(g)
            .map_or(0, |i| self.gmems[i].size / PAGE_SIZE);
        let off = match self.rng.below(10) {
            0 => {
                let t = self.rng.below(70);
                self.bytes_arg(t)
            }
            1..=4 => self.rng.below(gsize.max(1)) * PAGE_SIZE,
            _ => 0,
        };
        let flags = match self.rng.below(10) {
            0 => self.rng.next(),
            k => (k & 3) | ((k % 3) << SLOT_UADDR_SHIFT),
        };
        self.host(HostCall::MemslotCreate, [v, gpa, size, g, off, flags])
            .map(|_| ())
    }

    fn op_slot_delete(&mut self) -> Check {
        let v = self.any_vm();
        let ids: Vec<u64> = self
            .vm_idx(v)
            .map(|vi| self.vms[vi].slots.iter().map(|s| s.id).collect())
            .unwrap_or_default();
        let s = match self.rng.below(5) {
            0 => self.rng.below(70),
            _ => self.rng.pick(&ids).unwrap_or(0),
        };
        self.host(HostCall::MemslotDelete, [v, s, 0, 0, 0, 0])
            .map(|_| ())
    }

    fn op_donate(&mut self) -> Check {
        let v = self.any_vm();
        let (pa, n) = match self.rng.below(10) {
            // A free 2 MiB chunk, if there is one.
            0 => match self.free_chunk() {
                Some(pa) => (pa, CHUNK_PAGES),
                None => return Ok(()),
            },
            // Pages that may be donated or lent already.
            1..=3 => (self.pa_arg(), self.pages_arg().min(64)),
            _ => {
                let n = 1 + self.rng.below(40);
                match self.free_run(n) {
                    Some(pa) => (pa, n),
                    None => return Ok(()),
                }
            }
        };
        self.host(HostCall::Donate, [v, pa, n, 0, 0, 0]).map(|_| ())
    }

    fn free_chunk(&mut self) -> Option<u64> {
        let first = self.rng.below(ARENA_PAGES / CHUNK_PAGES);
        (0..ARENA_PAGES / CHUNK_PAGES)
            .map(|k| (first + k) % (ARENA_PAGES / CHUNK_PAGES) * CHUNK_PAGES)
            .find(|&i| {
                self.pages[i as usize..(i + CHUNK_PAGES) as usize]
                    .iter()
                    .all(|&p| p == Page::Free)
            })
            .map(|i| self.arena_pa(i))
    }

    fn op_convert(&mut self) -> Check {
        let g = self.any_gmem();
        let (o, n) = (self.rng.below(70), self.pages_arg());
        let (o, n) = (self.bytes_arg(o), self.bytes_arg(n));
        let to = self.rng.pick(&[0, 0, 1, 1, 2]).unwrap_or(0);
        let mode = self
            .rng
            .pick(&[0, 1, abi::host::CONVERT_MODE_DEFAULT, 7])
            .unwrap_or(0);
        self.host(HostCall::Convert, [g, o, n, to, mode, 0])
            .map(|_| ())
    }

    fn op_pin(&mut self) -> Check {
        let pinned: Vec<(u64, u64)> = self
            .pins
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(&k, _)| k)
            .collect();
        if self.rng.pct(50) {
            if let Some((g, p)) = self.rng.pick(&pinned) {
                return self
                    .host(HostCall::HostUnpin, [g, p * PAGE_SIZE, 0, 0, 0, 0])
                    .map(|_| ());
            }
        }
        let g = self.any_gmem();
        let o = {
            let t = self.rng.below(70);
            self.bytes_arg(t)
        };
        let c = if self.rng.pct(70) {
            HostCall::HostPin
        } else {
            HostCall::HostUnpin
        };
        self.host(c, [g, o, 0, 0, 0, 0]).map(|_| ())
    }

    /// The host reads guest memory through its mmap view: a page the guest wrote privately must
    /// be refused (Trust rule 1), mostly one of those.
    fn op_host_read(&mut self) -> Check {
        let keys: Vec<(u64, u64)> = self.secrets.keys().copied().collect();
        let (g, off) = match self.rng.pick(&keys) {
            Some((g, p)) if self.rng.pct(60) => {
                self.t.secrets_checked += 1;
                (g, p * PAGE_SIZE + self.rng.below(PAGE_SIZE))
            }
            _ => (self.any_gmem(), {
                let t = self.rng.below(70);
                self.bytes_arg(t)
            }),
        };
        let w = u64::from(self.rng.pct(20));
        self.host(HostCall::HostMapGmem, [g, off, w, 0, 0, 0])
            .map(|_| ())
    }

    /// The host skips its fault handler and reads the physical page of a guest's private byte,
    /// or the hyp's own memory: the hyp's stage-2 must abort it (Trust rule 1).
    fn op_raw_read(&mut self) -> Check {
        let keys: Vec<(u64, u64)> = self.secrets.keys().copied().collect();
        if let Some((g, p)) = self.rng.pick(&keys).filter(|_| self.rng.pct(80)) {
            let Ok(x) = self.host(HostCall::GmemPhys, [g, p * PAGE_SIZE, 0, 0, 0, 0])? else {
                return Ok(());
            };
            self.t.secrets_checked += 1;
            return match probe_read(x[0] as usize) {
                Ok(v) => fail(format!(
                    "a raw host read of pa 0x{:x}, gmem {g} page {p}, which the guest wrote privately, read 0x{v:02x} (Trust rule 1)",
                    x[0]
                )),
                Err(_) => Ok(()),
            };
        }
        let pa = self.ram_base + self.rng.below(self.census0[3]) * PAGE_SIZE;
        match probe_read(pa as usize) {
            Ok(v) => fail(format!(
                "a raw host read of the hyp's page 0x{pa:x} read 0x{v:02x} (Trust rule 1)"
            )),
            Err(_) => Ok(()),
        }
    }

    fn op_uaddr(&mut self) -> Check {
        let v = self.any_vm();
        let ids: Vec<u64> = self
            .vm_idx(v)
            .map(|vi| self.vms[vi].slots.iter().map(|s| s.id).collect())
            .unwrap_or_default();
        let s = self.rng.pick(&ids).unwrap_or(0);
        let off = {
            let t = self.rng.below(70);
            self.bytes_arg(t)
        };
        let w = u64::from(self.rng.pct(20));
        self.host(HostCall::HostMapUaddr, [v, s, off, w, 0, 0])
            .map(|_| ())
    }

    /// Any call but a run, with arguments made up or taken from live and stale objects.
    fn op_junk(&mut self) -> Check {
        let id = match self.rng.below(12) {
            0 => HOST_CALL_BASE + 29 + self.rng.below(64),
            1 => self.rng.next(),
            _ => HOST_CALL_BASE + self.rng.below(29),
        };
        if id == HostCall::VcpuRun.id() || id == HostCall::ServeFault.id() {
            return Ok(());
        }
        let mut a = [0u64; 6];
        for x in &mut a {
            *x = match self.rng.below(8) {
                0 => self.rng.next(),
                1 => self.rng.below(16),
                2 => self.any_vm(),
                3 => self.any_gmem(),
                4 => {
                    let t = self.rng.below(70);
                    self.bytes_arg(t)
                }
                5 => self.window_ipa(),
                6 => self.any_vcpu(),
                _ => 0,
            };
        }
        // Calls that take a physical address get one the host may give away (or must not).
        match HostCall::from_id(id) {
            Some(HostCall::Donate) => (a[1], a[2]) = (self.pa_arg(), self.pages_arg().min(64)),
            Some(HostCall::VmCreate) => (a[1], a[2]) = (self.pa_arg(), self.pages_arg().min(64)),
            Some(HostCall::VcpuCreate) => (a[3], a[4]) = (self.pa_arg(), self.pages_arg().min(8)),
            Some(HostCall::MapHostShared) => {
                (a[2], a[3]) = (self.pa_arg(), self.pages_arg().min(64))
            }
            _ => {}
        }
        let _ = self.host_id(id, a)?;
        // A VM left dying with host pages shared into it is torn down to the end (when its
        // steps give those back is not for the host to know: the census could not be exact).
        if id == HostCall::VmDestroy.id() {
            let lent = self.vm_idx(a[0]).is_some_and(|vi| {
                self.vms[vi].dying && self.count(Page::Lent(self.vms[vi].uid)) > 0
            });
            if lent {
                self.destroy_all(a[0])?;
            }
        }
        Ok(())
    }

    /// One step of a step guest.
    fn op_guest(&mut self) -> Check {
        let ready: Vec<usize> = (0..self.vms.len())
            .filter(|&i| {
                !self.vms[i].dying
                    && self.vms[i]
                        .guest
                        .as_ref()
                        .is_some_and(|g| g.state == GuestState::Ready)
            })
            .collect();
        let Some(vi) = self.rng.pick(&ready) else {
            return self.op_vm_create();
        };
        let t = self.vms[vi].t;
        match self.rng.below(20) {
            0..=4 => {
                let ipa = self.guest_ipa(t);
                let val = 1 + self.rng.below(255);
                let out = self.step(vi, OP_WRITE, [ipa, val, 0, 0])?;
                self.after_access(vi, ipa, Some(val as u8), out)
            }
            5..=9 => {
                let ipa = if self.rng.pct(30) {
                    self.secret_ipa(vi).unwrap_or(self.guest_ipa(t))
                } else {
                    self.guest_ipa(t)
                };
                let out = self.step(vi, OP_READ, [ipa, 0, 0, 0])?;
                self.after_access(vi, ipa, None, out)
            }
            10..=11 => {
                let ipa = MMIO_BASE + self.rng.below(64) * PAGE_SIZE + self.rng.below(PAGE_SIZE);
                let write = self.rng.pct(50);
                let val = self.rng.below(256);
                let out = if write {
                    self.step(vi, OP_WRITE, [ipa, val, 0, 0])?
                } else {
                    self.step(vi, OP_READ, [ipa, 0, 0, 0])?
                };
                self.after_access(vi, ipa, write.then_some(val as u8), out)
            }
            12..=15 => {
                // A share or unshare, through the hyp's answer as the guest sees it.
                let func = if self.rng.pct(60) {
                    MEM_SHARE
                } else {
                    MEM_UNSHARE
                };
                let ipa = self.guest_ipa(t) & !(PAGE_SIZE - 1);
                let n = match self.rng.below(10) {
                    0 => 0,
                    1 => 300,
                    _ => 1 + self.rng.below(8),
                };
                self.before_range(vi, func, ipa, n);
                let out = self.step(vi, OP_HVC, [func, ipa, n, 0])?;
                self.after_share(vi, func, n, out)
            }
            16..=17 => {
                let func = self
                    .rng
                    .pick(&[MEM_SHARE, MEM_UNSHARE, MEM_RELINQUISH])
                    .unwrap_or(MEM_SHARE);
                let ipa = self.guest_ipa(t) & !(PAGE_SIZE - 1);
                let n = 1 + self.rng.below(16);
                self.before_range(vi, func, ipa, n);
                let watch = self.watch(vi, func);
                self.step(vi, OP_MEM_RANGE, [func, ipa, n, 0])?;
                self.settle(watch)
            }
            18 => {
                let ipa = self.guest_ipa(t) & !(PAGE_SIZE - 1);
                let n = 1 + self.rng.below(8);
                // Writes of 1 at each page: no private byte the storm follows survives them.
                self.before_range(vi, MEM_RELINQUISH, ipa, n);
                self.step(vi, OP_TOUCH, [ipa, n, PAGE_SIZE, 0]).map(|_| ())
            }
            _ => match self.rng.below(6) {
                0 => self.step(vi, OP_UNDEF, [0; 4]).map(|_| ()),
                1 => {
                    self.vms[vi].guarded = true;
                    self.step(vi, OP_MMIO_GUARD, [0; 4]).map(|_| ())
                }
                _ => {
                    let f = match self.rng.below(4) {
                        0 => self.rng.next(),
                        1 => MMIO_GUARD_MAP,
                        2 => MMIO_GUARD_ENROLL,
                        _ => 0xC600_0000 + self.rng.below(16),
                    };
                    self.vms[vi].guarded = true;
                    let a = [self.window_ipa(), self.rng.below(4), self.rng.next()];
                    self.before_range(vi, MEM_SHARE, a[0], 1);
                    self.forget_secrets_of(self.vms[vi].uid);
                    let watch = self.watch(vi, f);
                    self.step(vi, OP_HVC, [f, a[0], a[1], a[2]])?;
                    self.settle(watch)
                }
            },
        }
    }

    /// Before a guest call that may relinquish pages (they go straight back to the host, which
    /// is not told which): the VM's pages the host can read now (`None`: nothing to watch).
    fn watch(&mut self, vi: usize, func: u64) -> Option<(u64, BTreeSet<usize>)> {
        let uid = self.vms.get(vi).map(|v| v.uid)?;
        if func != MEM_RELINQUISH {
            return None;
        }
        let readable = (0..ARENA_PAGES as usize)
            .filter(|&i| self.pages[i] == Page::Donated(uid))
            .filter(|&i| probe_read(self.arena_pa(i as u64) as usize).is_ok())
            .collect();
        Some((uid, readable))
    }

    /// After it: the VM's pages (donated before or during the call) that the host can read now
    /// but could not before are the host's again, and must be zero.
    fn settle(&mut self, watch: Option<(u64, BTreeSet<usize>)>) -> Check {
        let Some((uid, before)) = watch else {
            return Ok(());
        };
        for i in 0..ARENA_PAGES as usize {
            if self.pages[i] != Page::Donated(uid) || before.contains(&i) {
                continue;
            }
            let pa = self.arena_pa(i as u64);
            if probe_read(pa as usize).is_ok() {
                page_is_zero(pa)?;
                self.pages[i] = Page::Free;
            }
        }
        // Pages the host could read before (and can now) that went back to it: the census
        // tells how many.
        let c = census()?;
        let lent = self.count_lent();
        let donated = self.donated();
        let unannounced: u64 = self.unannounced.values().sum();
        let away = (c[2] + c[3] + c[4] + self.back()).saturating_sub(lent) + unannounced;
        let expected = self.census0[3] + donated;
        if away > expected {
            return fail(format!(
                "after a relinquish, {away} pages are away from the host, but it gave only {expected}"
            ));
        }
        if away < expected {
            *self.unannounced.entry(uid).or_insert(0) += expected - away;
        }
        Ok(())
    }

    /// An IPA for a guest access: the windows, on the shared alias for some coco accesses.
    fn guest_ipa(&mut self, t: VmType) -> u64 {
        let ipa = self.window_ipa() + self.rng.below(PAGE_SIZE);
        if t == VmType::Coco && self.rng.pct(30) {
            ipa | COCO_SHARED_BIT
        } else {
            ipa
        }
    }

    /// The IPA of a private byte VM `vi`'s guest wrote, if the storm follows one.
    fn secret_ipa(&mut self, vi: usize) -> Option<u64> {
        let v = self.vms.get(vi)?;
        let mut found = Vec::new();
        for s in &v.slots {
            for (&(g, p), &(off, _)) in &self.secrets {
                let at = p * PAGE_SIZE + off;
                if g == s.gmem && off < PAGE_SIZE && at >= s.off && at - s.off < s.size {
                    found.push(s.gpa + (at - s.off));
                }
            }
        }
        self.rng.pick(&found)
    }

    /// A range call of the guest may share, unshare or free pages: the storm stops following
    /// private bytes there (and, for pkvm, remembers that the guest shared them).
    fn before_range(&mut self, vi: usize, func: u64, ipa: u64, n: u64) {
        for k in 0..n.min(WINDOWS * WINDOW_PAGES) {
            if let Some((g, p, _)) = self.gmem_at(vi, ipa + k * PAGE_SIZE) {
                self.secrets.remove(&(g, p));
                if func == MEM_SHARE || func == MEM_UNSHARE {
                    self.guest_shared.insert((g, p));
                }
            }
        }
    }

    /// Trust rule 2: `SUCCESS` with the number of pages done (1..=n), or INVALID_PARAMETER with
    /// none, whatever the host completed.
    fn after_share(&mut self, vi: usize, func: u64, n: u64, out: Option<StepOut>) -> Check {
        if self.vms.get(vi).is_none_or(|v| v.tampered) {
            return Ok(());
        }
        let Some(out) = out.filter(|o| o.status == Some(STATUS_OK)) else {
            return Ok(());
        };
        let [x0, x1] = out.results;
        let what = if func == MEM_SHARE {
            "MEM_SHARE"
        } else {
            "MEM_UNSHARE"
        };
        // 0 pages means 1 (ABI-FACTS.md).
        let n = n.max(1);
        if x0 == SMCCC_SUCCESS && !(1..=n).contains(&x1) {
            return fail(format!(
                "the guest's {what} of {n} pages was told SUCCESS with {x1} pages done (Trust rule 2)"
            ));
        }
        if x0 == SMCCC_INVALID_PARAMETER && x1 != 0 {
            return fail(format!(
                "the guest's {what} was told INVALID_PARAMETER with x1 = {x1} (Trust rule 2)"
            ));
        }
        Ok(())
    }

    /// After a guest access: a private byte it wrote is followed; one it reads back must be what
    /// it wrote; an access nothing backs is an MMIO exit with the value the host gave.
    fn after_access(
        &mut self,
        vi: usize,
        ipa: u64,
        write: Option<u8>,
        out: Option<StepOut>,
    ) -> Check {
        let Some(out) = out else {
            return Ok(());
        };
        let ok = out.status == Some(STATUS_OK);
        let Some(v) = self.vms.get(vi) else {
            return Ok(());
        };
        let (t, guarded, tampered) = (v.t, v.guarded, v.tampered);
        if !self.backed(vi, ipa) && !guarded && !tampered && ipa < COCO_SHARED_BIT {
            let seen = out.mmio;
            let good = match (write, seen) {
                (Some(val), Some((at, true, data, _))) => {
                    at == ipa && data & 0xff == u64::from(val)
                }
                (None, Some((at, false, _, given))) => at == ipa && out.results[0] == given & 0xff,
                _ => false,
            };
            if !ok || !good {
                return fail(format!(
                    "a guest {} at 0x{ipa:x}, where nothing is mapped: status {:?}, MMIO exit {:x?}, result 0x{:x}",
                    if write.is_some() { "write" } else { "read" },
                    out.status,
                    seen,
                    out.results[0]
                ));
            }
            return Ok(());
        }
        let Some((g, p, off)) = self.gmem_at(vi, ipa) else {
            return Ok(());
        };
        let private_alias = ipa & COCO_SHARED_BIT == 0;
        match write {
            Some(val) if ok && !tampered => {
                let private = match t {
                    VmType::Pkvm => !self.guest_shared.contains(&(g, p)),
                    VmType::Coco => private_alias,
                    VmType::Plain => false,
                };
                if private {
                    self.secrets.insert((g, p), (off, val));
                } else {
                    self.secrets.remove(&(g, p));
                }
            }
            Some(_) if tampered => {
                self.secrets.remove(&(g, p));
            }
            Some(_) => {}
            None if ok && private_alias => {
                if let Some(&(o, val)) = self.secrets.get(&(g, p)).filter(|_| !tampered) {
                    if o == off {
                        self.t.secrets_checked += 1;
                        if out.results[0] != u64::from(val) {
                            return fail(format!(
                                "the guest wrote 0x{val:02x} privately at 0x{ipa:x} and reads 0x{:x} back",
                                out.results[0]
                            ));
                        }
                    }
                }
            }
            None => {}
        }
        Ok(())
    }

    /// The end: every pin dropped, every VM torn down (each giving back what it was given,
    /// zeroed), then the census must be what it was at the start and the invariants clean.
    fn teardown(&mut self) -> Check {
        let hs: Vec<u64> = self.vms.iter().map(|v| v.handle).collect();
        for h in hs {
            self.unpin_vm(h)?;
            self.destroy_all(h)?;
        }
        invariants()?;
        let c = census()?;
        if c != self.census0 {
            return fail(format!(
                "page census after every VM went: {c:?}, at the start: {:?} (RAM pages, host, lent, hyp, guests, pool)",
                self.census0
            ));
        }
        if let Some(i) = self.pages.iter().position(|&p| p != Page::Free) {
            return fail(format!(
                "arena page 0x{:x} is still {:?}",
                self.arena_pa(i as u64),
                self.pages[i]
            ));
        }
        Ok(())
    }
}

fn vi_or(vi: Option<usize>) -> Result<usize, String> {
    vi.ok_or_else(|| String::from("a vCPU of no live VM"))
}

/// `storm <seed> <n> [<every>]`: the host shim's mode for `make storm-target`; the checks run
/// every `every` calls ([`CHECK_EVERY`] by default; 1 finds the call that broke one).
pub fn run(seed: u64, n: u64, every: u64, from: u64, pages: &mut HostPages) -> i32 {
    board::println!(
        "storm-target: seed {seed}, {n} calls, checks every {every} (replay: make storm-target SEED={seed} N={n})"
    );
    let mut storm = match Storm::new(seed, n, every, pages) {
        Ok(s) => Storm { from, ..s },
        Err(e) => {
            board::println!("storm-target: cannot start: {e}");
            return 2;
        }
    };
    match storm.run() {
        Ok(report) => {
            board::println!("storm-target: {report}");
            board::println!("storm-target: {n} calls, seed {seed}, 0 violations");
            0
        }
        Err(e) => {
            let i = storm.call;
            board::println!("storm-target: FAIL at call {i} (seed {seed}): {e}");
            board::println!(
                "storm-target: replay: make storm-target SEED={seed} N={}",
                (i + 1).min(n)
            );
            board::println!("storm-target: {i} calls, seed {seed}, 1 violation");
            1
        }
    }
}
