//! A reference model of who may reach what, for the storm (`storm.rs`): small, written from the
//! rules of SEMANTICS.md and not from the implementation's code. It knows, from each call's
//! arguments and the rules alone:
//!
//! - per VM: its type, whether a vCPU has run, its memslots, and the physical pages the host
//!   donated for it and has not got back (`donated`: `VmCreate`'s and `VcpuCreate`'s donations
//!   and the pool's); whether its teardown began (dying: every call on it, its gmem files or
//!   vCPUs is answered as on a handle that names nothing) and the pages its steps gave back;
//! - per gmem file and page: allocated or not (and then which physical page, and the word the
//!   last writer left at its start), its shareability where the file tracks it, whether the
//!   guest shared it itself (a `pkvm` guest, Trust rule 9), the host's pins;
//! - per vCPU: the MEM_SHARE / MEM_UNSHARE it asked for last and what it must be told.
//!
//! The storm tells it each call and its answer; the model predicts the answer where the rules
//! decide it (success or the class of refusal, the values returned) and otherwise holds the
//! implementation to the safety direction: pages appear only where the call may allocate, come
//! only from the VM's own donation, start zeroed; the host reaches a gmem page exactly when the
//! rules say so; a guest maps only its own pages at the place they are bound. [`Model::check`]
//! compares everything the implementation exposes after every call, and the page accounting
//! (host + pools + guests + hyp = RAM; per VM, donated = pool free + table pages + gmem pages +
//! anon pages + heap pages, serving or in reserve) from counts that come from different places.
//! A call charged to a VM whose pool and heap reserve together are under what a call may take
//! must be `ENOMEM` with nothing changed.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::flags::{GmemFlags, MemslotFlags, VmType};
use abi::guest::{
    COCO_SHARED_BIT, RANGE_CALL_MAX_GRANULES, SMCCC_INVALID_PARAMETER, SMCCC_SUCCESS,
};
use abi::host::{CONVERT_MODE_DEFAULT, SLOT_UADDR_SHIFT};
use abi::{Errno, PAGE_SIZE};
use hyp_mem::heap::{CALL_PAGES_MAX, RESERVE_PAGES};
use hyp_mem::ownership::{Component, PageState};

use super::Rig;
use abi::host::HostCall;

/// A call's answer as the host sees it.
pub(crate) type Answer = Result<[u64; 6], (Errno, u64)>;

type R<T = ()> = Result<T, String>;

/// A gmem page: (handle, page index).
type GmemPage = (u64, u64);

macro_rules! ensure {
    ($c:expr, $($f:tt)*) => {
        if !$c {
            return Err(format!($($f)*));
        }
    };
}

/// One page of a gmem file that holds memory.
#[derive(Clone, Debug)]
pub(crate) struct MPage {
    pub pa: u64,
    /// The first word of the page, as its last writer left it (0 for a fresh page).
    pub word: u64,
    pub pins: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct MGmem {
    pub vm: u64,
    pub pages: u64,
    pub flags: GmemFlags,
    /// Per page: `ALL` (true) or `GUEST` (false); only with `TRACK_SHAREABILITY`.
    pub all: Option<Vec<bool>>,
    /// Per page: the (pkvm) guest shared it itself.
    pub guest_shared: Vec<bool>,
    pub mem: BTreeMap<u64, MPage>,
}

impl MGmem {
    fn tracked(&self) -> bool {
        self.all.is_some()
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct MSlot {
    pub gpa: u64,
    pub pages: u64,
    /// (gmem handle, first page index).
    pub gmem: Option<(u64, u64)>,
    /// `userspace_addr` kind (0 none, 1 anon, 2 the gmem's view).
    pub uaddr: u64,
}

impl MSlot {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa < self.gpa + self.pages * PAGE_SIZE
    }
}

#[derive(Clone, Debug)]
pub(crate) struct MVm {
    pub ty: VmType,
    pub started: bool,
    pub vcpus_created: u32,
    pub slots: BTreeMap<u64, MSlot>,
    pub donated: BTreeSet<u64>,
    /// Its teardown began (`VmDestroy`'s first step): no call reaches it or its gmem files.
    pub dying: bool,
    /// Pages its teardown's steps gave back so far.
    pub returned: u64,
}

/// What a call may draw on, read before it runs: the free pages of its VM's pool and its
/// heap's reserve, and whether the call is charged to that heap.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Before {
    /// The VM (its pool counts read).
    pub vm: Option<u64>,
    pub free: Option<u64>,
    pub reserve: u64,
    pub charged: bool,
    /// For a call naming a dying VM (or its file or vCPU): the answer of the same call on a
    /// handle that names nothing.
    pub twin: Option<Answer>,
}

impl Before {
    /// The VM's heap cannot cover a call: pool and reserve together under what one call may
    /// take ([`CALL_PAGES_MAX`]).
    fn short(&self) -> bool {
        self.free
            .is_some_and(|f| f + self.reserve < CALL_PAGES_MAX as u64)
    }
}

/// A forwarded MEM_SHARE / MEM_UNSHARE: the piece the host may carry out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MReq {
    pub to_shared: bool,
    pub pages: u64,
    /// (gmem, first index) where the piece is a tracked gmem's.
    pub tracked: Option<(u64, u64)>,
    pub converted: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct MVcpu {
    pub vm: u64,
    pub pending: Option<MReq>,
}

/// What the op in flight may do that the model cannot decide alone (it depends on pools
/// running dry): allocate these gmem pages, take these (pkvm first touch).
#[derive(Default, Debug)]
pub(crate) struct Allow {
    pub alloc: BTreeSet<(u64, u64)>,
    pub take: BTreeSet<(u64, u64)>,
}

#[derive(Default)]
pub(crate) struct Model {
    pub vms: BTreeMap<u64, MVm>,
    pub gmems: BTreeMap<u64, MGmem>,
    pub vcpus: BTreeMap<u64, MVcpu>,
    /// Pages the host holds (of those the storm took for it).
    pub host: BTreeSet<u64>,
    /// Every page the storm took for the host (held or donated).
    pub host_total: usize,
    /// `anon` pages the host lent a guest: pa -> (vm, slot).
    pub anon: BTreeMap<u64, (u64, u64)>,
    pub allow: Allow,
    /// A pin on a page the pin call itself brought in (counted once [`Model::check`] saw it).
    pub pending_pin: Option<(u64, u64)>,
    /// Which closed page the host tries next.
    pub probe: usize,
    /// Gmem files and vCPUs of dying VMs (handle -> VM): every call on them is `ENOENT`.
    pub dead_gmems: BTreeMap<u64, u64>,
    pub dead_vcpus: BTreeMap<u64, u64>,
    /// VMs whose pool is told to fail its allocations from some point on (`Pool::fail_after`).
    pub starved: BTreeSet<u64>,
}

fn p(n: u64) -> u64 {
    n * PAGE_SIZE
}

/// Host reach of a gmem page by the rules: `ALL` in a tracked file; any page of a `plain` VM's
/// untracked file; nothing else (a `pkvm` or `coco` VM's untracked gmem is private memory).
fn host_may_reach(ty: VmType, all: Option<bool>) -> bool {
    match all {
        Some(a) => a,
        None => ty == VmType::Plain,
    }
}

impl Model {
    pub fn give_host(&mut self, pa: u64, pages: u64) {
        for i in 0..pages {
            self.host.insert(pa + p(i));
        }
        self.host_total += pages as usize;
    }

    fn gmem_slot(&self, vm: u64, g: u64, idx: u64) -> Option<(u64, MSlot)> {
        let v = self.vms.get(&vm)?;
        v.slots.iter().find_map(|(&id, s)| match s.gmem {
            Some((sg, first)) if sg == g && idx >= first && idx < first + s.pages => Some((id, *s)),
            _ => None,
        })
    }

    /// The slot of `vm` holding `gpa` (coco shared bit ignored) and the gmem page behind it.
    fn at_gpa(&self, vm: u64, gpa: u64) -> Option<(u64, MSlot, Option<GmemPage>)> {
        let v = self.vms.get(&vm)?;
        let gpa = if v.ty == VmType::Coco {
            gpa & !COCO_SHARED_BIT
        } else {
            gpa
        };
        let (&id, s) = v.slots.iter().find(|(_, s)| s.contains(gpa))?;
        let page = s
            .gmem
            .map(|(g, first)| (g, first + (gpa - s.gpa) / PAGE_SIZE));
        Some((id, *s, page))
    }

    /// Before an op: what it may allocate or take without the model deciding it.
    pub fn begin_op(&mut self) {
        self.allow = Allow::default();
    }

    /// A guest access (fault) of `vm` at `gpa`: it may bring the page in.
    pub fn allow_touch(&mut self, vm: u64, gpa: u64) {
        if let Some((_, _, Some(page))) = self.at_gpa(vm, gpa) {
            self.allow.alloc.insert(page);
            self.allow.take.insert(page);
        }
    }

    // ---- host calls ----------------------------------------------------------------------

    /// A host call and the implementation's answer. `free` is the VM pool's free page count
    /// before the call (`PoolStats`), for calls whose outcome hinges on a dry pool.
    pub fn host_call(
        &mut self,
        r: &mut Rig,
        c: HostCall,
        a: [u64; 6],
        ans: &Answer,
        before: Before,
    ) -> R {
        let who = format!("{c:?} {a:x?} -> {ans:x?}");
        let free = before.free;
        if c != HostCall::VmDestroy && self.names_dying(c, a) {
            // A dying VM, or a file or vCPU of one: unreachable, answered as a handle that
            // names nothing is (`ENOENT`, or an argument refused in itself first). But
            // `GuestConvert` on a vCPU with no request to carry out is `EINVAL` first, as for
            // a live one.
            let einval = c == HostCall::GuestConvert && *ans == Err((Errno::EINVAL, 0));
            let twin = before.twin.ok_or("no twin call")?;
            ensure!(
                twin.is_err() && (*ans == twin || einval),
                "{who}: a call on a dying VM must be answered as on no VM: {twin:x?}"
            );
            return Ok(());
        }
        if before.charged && before.short() {
            // The VM's heap cannot pay for the call: refused before it starts.
            ensure!(
                *ans == Err((Errno::ENOMEM, 0)),
                "{who}: pool + reserve short ({before:?}): ENOMEM expected"
            );
            return Ok(());
        }
        if before.vm.is_some_and(|vm| self.starved.contains(&vm)) && *ans == Err((Errno::ENOMEM, 0))
        {
            // The VM's pool failed an allocation, which the model does not count: refused,
            // with nothing changed (as the checks after the step see).
            return Ok(());
        }
        let res = match c {
            HostCall::VmCreate => self.vm_create(a, ans),
            HostCall::VmDestroy => self.vm_destroy(r, a, ans),
            HostCall::VcpuCreate => self.vcpu_create(a, ans, before),
            HostCall::Donate => self.donate(a, ans, free),
            HostCall::PoolReclaim => self.pool_reclaim(a, ans, free),
            HostCall::GmemCreate => self.gmem_create(a, ans),
            HostCall::GmemDestroy => self.gmem_destroy(a, ans),
            HostCall::MemslotCreate => self.slot_create(a, ans),
            HostCall::MemslotDelete => self.slot_delete(a, ans),
            HostCall::Convert => self.convert(a, ans),
            HostCall::PunchHole => self.punch(a, ans),
            HostCall::HostPin | HostCall::HostMapGmem => self.host_fault(c, a, ans, before),
            HostCall::HostUnpin => self.unpin(a, ans),
            HostCall::GuestConvert => self.guest_convert(a, ans),
            // Read-only calls.
            HostCall::Version
            | HostCall::PoolStats
            | HostCall::VmStats
            | HostCall::VmWalk
            | HostCall::GmemPhys
            | HostCall::CheckInvariants => Ok(()),
            // Calls the model does not follow: the storm issues them only where they must be
            // refused (no live VM named: none, or a dying one, seen above), so they must
            // change nothing.
            _ => {
                ensure!(ans.is_err(), "an unmodelled call on no live VM succeeded");
                Ok(())
            }
        };
        res.map_err(|e| format!("{who}: {e}"))
    }

    /// Whether the storm may issue an unmodelled call with these arguments (see above).
    pub fn may_issue_unmodelled(&self, a0: u64) -> bool {
        self.vms.get(&a0).is_none_or(|v| v.dying)
    }

    /// A VM's pool fails its allocations from some point on, or no more.
    pub fn starve(&mut self, vm: u64, on: bool) {
        if on {
            self.starved.insert(vm);
        } else {
            self.starved.remove(&vm);
        }
    }

    /// Whether a call names a dying VM (its first argument, as a VM, gmem file or vCPU).
    pub fn names_dying(&self, c: HostCall, a: [u64; 6]) -> bool {
        let vm_dying = |vm: u64| self.vms.get(&vm).is_some_and(|v| v.dying);
        match c {
            HostCall::Version | HostCall::VmCreate | HostCall::CheckInvariants => false,
            HostCall::GmemDestroy
            | HostCall::Convert
            | HostCall::PunchHole
            | HostCall::HostPin
            | HostCall::HostUnpin
            | HostCall::HostMapGmem
            | HostCall::GmemPhys => self.dead_gmems.contains_key(&a[0]),
            HostCall::GuestConvert | HostCall::VcpuRun => self.dead_vcpus.contains_key(&a[0]),
            _ => vm_dying(a[0]),
        }
    }

    /// Whether `n` pages from `pa` are all the host's, a run a call may take.
    fn host_run(&self, pa: u64, n: u64) -> bool {
        n > 0
            && n < 1 << 20
            && pa.is_multiple_of(PAGE_SIZE)
            && (0..n).all(|i| self.host.contains(&(pa + p(i))))
    }

    /// A donation taken: from the host to the VM.
    fn take(&mut self, vm: u64, pa: u64, n: u64) {
        let v = self.vms.get_mut(&vm).unwrap_or_else(|| unreachable!());
        for i in 0..n {
            self.host.remove(&(pa + p(i)));
            v.donated.insert(pa + p(i));
        }
    }

    fn refused(ans: &Answer, what: &str) -> R {
        ensure!(ans.is_err(), "must be refused: {what}");
        Ok(())
    }

    fn vm_create(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let Some(ty) = VmType::from_u64(a[0]) else {
            return Self::refused(ans, "unknown VM type");
        };
        if self.vms.len() >= abi::host::VMS_MAX as usize {
            return Self::refused(ans, "VM limit");
        }
        let (pa, n) = (a[1], a[2]);
        if n < abi::host::VM_CREATE_PAGES || !self.host_run(pa, n) {
            return Self::refused(ans, "a donation short or not the host's");
        }
        let h = ans.map_err(|e| format!("refused a valid VM: {e:?}"))?[0];
        ensure!(
            !self.vms.contains_key(&h),
            "handle {h} of a live VM given again"
        );
        self.vms.insert(
            h,
            MVm {
                ty,
                started: false,
                vcpus_created: 0,
                slots: BTreeMap::new(),
                donated: BTreeSet::new(),
                dying: false,
                returned: 0,
            },
        );
        self.take(h, pa, n);
        Ok(())
    }

    fn vm_destroy(&mut self, r: &mut Rig, a: [u64; 6], ans: &Answer) -> R {
        let h = a[0];
        let Some(v) = self.vms.get_mut(&h) else {
            return Self::refused(ans, "no such VM");
        };
        // (No vCPU of the storm's runs while it calls: the first step cannot be EBUSY.)
        let x = ans.map_err(|e| format!("refused: {e:?}"))?;
        ensure!(x[1] <= 1, "x1 = {} (1 or 0)", x[1]);
        ensure!(
            x[0] <= abi::host::TEARDOWN_STEP_PAGES,
            "{} pages back in one step",
            x[0]
        );
        if !v.dying {
            // The first step: unreachable from now on. Its slots map nothing any more.
            v.dying = true;
            v.slots.clear();
            let gmems: Vec<u64> = self
                .gmems
                .iter()
                .filter(|(_, g)| g.vm == h)
                .map(|(&g, _)| g)
                .collect();
            for g in gmems {
                self.gmems.remove(&g);
                self.dead_gmems.insert(g, h);
            }
            let vcpus: Vec<u64> = self
                .vcpus
                .iter()
                .filter(|(_, c)| c.vm == h)
                .map(|(&c, _)| c)
                .collect();
            for c in vcpus {
                self.vcpus.remove(&c);
                self.dead_vcpus.insert(c, h);
            }
        }
        let v = self.vms.get_mut(&h).unwrap_or_else(|| unreachable!());
        v.returned += x[0];
        ensure!(
            v.returned <= v.donated.len() as u64,
            "{} pages back, {} donated",
            v.returned,
            v.donated.len()
        );
        if x[1] == 1 {
            return Ok(());
        }
        // The last step. Trust rule 8: every page donated for it back with the host, zeroed.
        ensure!(
            v.returned == v.donated.len() as u64,
            "{} pages back over the steps, {} donated",
            v.returned,
            v.donated.len()
        );
        let v = self.vms.remove(&h).unwrap_or_else(|| unreachable!());
        for &pa in &v.donated {
            let info = r.hyp.owners.info(pa).map_err(|e| format!("{e:?}"))?;
            ensure!(
                info.owner() == Some(Component::Host)
                    && info.state_of(Component::Host) == PageState::Owned,
                "page 0x{pa:x} not back with the host: {info:?}"
            );
            ensure!(r.ram.read_u64(pa) == Some(0), "page 0x{pa:x} back unzeroed");
            self.host.insert(pa);
        }
        self.starved.remove(&h);
        // Its handles name nothing now (and may be given again).
        self.dead_gmems.retain(|_, vm| *vm != h);
        self.dead_vcpus.retain(|_, vm| *vm != h);
        self.anon.retain(|_, (vm, _)| *vm != h);
        Ok(())
    }

    fn vcpu_create(&mut self, a: [u64; 6], ans: &Answer, before: Before) -> R {
        let (pa, n) = (a[3], a[4]);
        let host_run = self.host_run(pa, n);
        let Some(v) = self.vms.get_mut(&a[0]) else {
            return Self::refused(ans, "no such VM");
        };
        if (v.ty == VmType::Pkvm && v.started) || v.vcpus_created >= abi::host::VCPUS_PER_VM_MAX {
            return Self::refused(ans, "pkvm started or vCPU limit");
        }
        if n < abi::host::VCPU_CREATE_PAGES || !host_run {
            return Self::refused(ans, "a donation short or not the host's");
        }
        let have = before.free.ok_or("no pool count")? + before.reserve;
        if have + n < CALL_PAGES_MAX as u64 {
            ensure!(
                *ans == Err((Errno::ENOMEM, 0)),
                "pool + reserve + donation short: ENOMEM expected"
            );
            return Ok(());
        }
        let id = ans.map_err(|e| format!("refused: {e:?}"))?[0];
        v.vcpus_created += 1;
        ensure!(
            !self.vcpus.contains_key(&id),
            "vCPU handle {id} given twice"
        );
        self.vcpus.insert(
            id,
            MVcpu {
                vm: a[0],
                pending: None,
            },
        );
        self.take(a[0], pa, n);
        Ok(())
    }

    fn donate(&mut self, a: [u64; 6], ans: &Answer, free: Option<u64>) -> R {
        let [vm, pa, n, ..] = a;
        if !self.vms.contains_key(&vm) {
            return Self::refused(ans, "no such VM");
        }
        if !self.host_run(pa, n) {
            return Self::refused(ans, "a page the host does not hold");
        }
        let x0 = ans.map_err(|e| format!("refused: {e:?}"))?[0];
        if let Some(f) = free {
            // (A pool told to fail counts only the allocations it has left.)
            let starved = self.starved.contains(&vm);
            ensure!(
                x0 == f + n || (starved && x0 < f + n),
                "pool has {x0} free pages, {f} + {n} expected"
            );
        }
        self.take(vm, pa, n);
        Ok(())
    }

    fn pool_reclaim(&mut self, a: [u64; 6], ans: &Answer, free: Option<u64>) -> R {
        let [vm, kind, ..] = a;
        if kind > 1 || !self.vms.contains_key(&vm) {
            return Self::refused(ans, "bad kind or no such VM");
        }
        let Ok(x) = ans else {
            // A loose page exists whenever the pool has free pages but no whole chunk.
            if kind == 0 {
                ensure!(free == Some(0), "refused with {free:?} pages free");
            }
            return Ok(());
        };
        let pages = if kind == 1 { 512 } else { 1 };
        let pa = x[0];
        let used = self.used_pages();
        let v = self.vms.get_mut(&vm).unwrap_or_else(|| unreachable!());
        for i in 0..pages {
            let q = pa + p(i);
            ensure!(
                v.donated.contains(&q),
                "0x{q:x} was not donated for this VM"
            );
            ensure!(!used.contains(&q), "0x{q:x} holds memory");
            v.donated.remove(&q);
            self.host.insert(q);
        }
        Ok(())
    }

    /// Every physical page the model knows holds memory (gmem pages, anon pages).
    fn used_pages(&self) -> BTreeSet<u64> {
        let mut s: BTreeSet<u64> = self.anon.keys().copied().collect();
        for g in self.gmems.values() {
            s.extend(g.mem.values().map(|m| m.pa));
        }
        s
    }

    fn gmem_create(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let [vm, size, flags, ..] = a;
        let Some(v) = self.vms.get(&vm) else {
            return Self::refused(ans, "no such VM");
        };
        let Some(fl) = GmemFlags::from_bits(flags) else {
            return Self::refused(ans, "unknown flags");
        };
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size > abi::host::GMEM_MAX_SIZE {
            return Self::refused(ans, "bad size");
        }
        let _ = v;
        let owned = self.gmems.values().filter(|g| g.vm == vm).count();
        if owned >= abi::host::GMEM_FILES_PER_VM_MAX {
            return Self::refused(ans, "file limit");
        }
        let h = ans.map_err(|e| format!("refused: {e:?}"))?[0];
        ensure!(!self.gmems.contains_key(&h), "gmem handle {h} given twice");
        let pages = size / PAGE_SIZE;
        let shared = fl.contains(GmemFlags::INIT_SHARED);
        self.gmems.insert(
            h,
            MGmem {
                vm,
                pages,
                flags: fl,
                all: fl
                    .contains(GmemFlags::TRACK_SHAREABILITY)
                    .then(|| alloc::vec![shared; pages as usize]),
                guest_shared: alloc::vec![false; pages as usize],
                mem: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn bound(&self, g: u64) -> bool {
        self.vms.values().any(|v| {
            v.slots
                .values()
                .any(|s| s.gmem.is_some_and(|(sg, _)| sg == g))
        })
    }

    fn gmem_destroy(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let g = a[0];
        let Some(f) = self.gmems.get(&g) else {
            return Self::refused(ans, "no such gmem");
        };
        // Bound by a memslot, or a page the host pins (as for a punch): refused.
        if self.bound(g) || f.mem.values().any(|m| m.pins > 0) {
            return Self::refused(ans, "bound or pinned");
        }
        ans.map_err(|e| format!("refused: {e:?}"))?;
        // Its pages go back to the VM's pool (still donated for it).
        self.gmems.remove(&g);
        Ok(())
    }

    fn slot_create(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let [vm, gpa, size, gmem, off, packed] = a;
        let Some(v) = self.vms.get(&vm) else {
            return Self::refused(ans, "no such VM");
        };
        let uaddr = packed >> SLOT_UADDR_SHIFT;
        let Some(flags) = MemslotFlags::from_bits(packed & 0xffff_ffff) else {
            return Self::refused(ans, "unknown flags");
        };
        let always = flags.contains(MemslotFlags::ALWAYS_FAULT_FROM_GMEM);
        let dont = flags.contains(MemslotFlags::DONT_CHECK_MISMATCHES);
        let has_gmem = gmem != 0;
        let bad_args = uaddr > 2
            || size == 0
            || !size.is_multiple_of(PAGE_SIZE)
            || !gpa.is_multiple_of(PAGE_SIZE)
            || (always && !has_gmem)
            || (uaddr == 2 && !has_gmem)
            || (v.ty == VmType::Pkvm && (!has_gmem || !always));
        if bad_args {
            return Self::refused(ans, "arguments");
        }
        if v.ty == VmType::Pkvm && v.started {
            return Self::refused(ans, "pkvm memslots frozen");
        }
        let pages = size / PAGE_SIZE;
        let overlap = v
            .slots
            .values()
            .any(|s| gpa < s.gpa + p(s.pages) && s.gpa < gpa + size);
        if overlap {
            return Self::refused(ans, "overlaps a memslot");
        }
        let binding = if has_gmem {
            let Some(f) = self.gmems.get(&gmem) else {
                return Self::refused(ans, "no such gmem");
            };
            let first = off / PAGE_SIZE;
            let bad = f.vm != vm
                || !off.is_multiple_of(PAGE_SIZE)
                || first + pages > f.pages
                || (uaddr == 2 && !f.flags.contains(GmemFlags::MMAP))
                || (v.ty == VmType::Pkvm && !f.tracked())
                || (v.ty == VmType::Coco && dont && !f.tracked())
                || (first..first + pages).any(|i| self.gmem_slot(vm, gmem, i).is_some());
            if bad {
                return Self::refused(ans, "gmem binding");
            }
            Some((gmem, first))
        } else {
            None
        };
        if v.slots.len() >= abi::host::MEMSLOTS_PER_VM_MAX {
            return Self::refused(ans, "memslot limit");
        }
        // Past every rule the model knows: a memslot with neither gmem nor userspace_addr
        // backs nothing; the implementation may refuse it.
        let id = match (ans, binding.is_none() && uaddr == 0) {
            (Ok(x), _) => x[0],
            (Err(_), true) => return Ok(()),
            (Err(e), false) => return Err(format!("refused a valid memslot: {e:?}")),
        };
        let v = self.vms.get_mut(&vm).unwrap_or_else(|| unreachable!());
        ensure!(!v.slots.contains_key(&id), "slot id {id} given twice");
        v.slots.insert(
            id,
            MSlot {
                gpa,
                pages,
                gmem: binding,
                uaddr,
            },
        );
        Ok(())
    }

    fn slot_delete(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let [vm, id, ..] = a;
        let Some(v) = self.vms.get_mut(&vm) else {
            return Self::refused(ans, "no such VM");
        };
        if !v.slots.contains_key(&id) || (v.ty == VmType::Pkvm && v.started) {
            return Self::refused(ans, "no such slot or frozen");
        }
        ans.map_err(|e| format!("refused: {e:?}"))?;
        v.slots.remove(&id);
        // Its anon pages go back to the pool (still donated for the VM).
        self.anon.retain(|_, &mut (avm, s)| !(avm == vm && s == id));
        Ok(())
    }

    /// The range check of a gmem call: `[off, off + n)` pages, aligned, non-empty, inside.
    fn range(f: &MGmem, off: u64, size: u64) -> Option<(u64, u64)> {
        let end = off.checked_add(size)?;
        (off.is_multiple_of(PAGE_SIZE)
            && size.is_multiple_of(PAGE_SIZE)
            && size > 0
            && end <= p(f.pages))
        .then_some((off / PAGE_SIZE, end / PAGE_SIZE))
    }

    fn convert(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let [g, off, size, to, mode, _] = a;
        let zero = match mode {
            0 => Some(false),
            1 => Some(true),
            CONVERT_MODE_DEFAULT => None,
            _ => return Self::refused(ans, "bad mode"),
        };
        if to > 1 {
            return Self::refused(ans, "bad target");
        }
        let to_shared = to == 1;
        if !to_shared && zero == Some(true) {
            ensure!(
                matches!(ans, Err((Errno::EOPNOTSUPP, _))) || g > u64::from(u32::MAX),
                "to-private with ZERO must be EOPNOTSUPP"
            );
            return Ok(());
        }
        let Some(f) = self.gmems.get(&g) else {
            return Self::refused(ans, "no such gmem");
        };
        let ty = self.vms[&f.vm].ty;
        let Some(all) = &f.all else {
            return Self::refused(ans, "untracked");
        };
        let Some((lo, hi)) = Self::range(f, off, size) else {
            return Self::refused(ans, "bad range");
        };
        let changing: Vec<u64> = (lo..hi).filter(|&i| all[i as usize] != to_shared).collect();
        if to_shared && ty == VmType::Pkvm {
            // Only the guest may give its memory away.
            ensure!(
                matches!(ans, Err((Errno::EPERM, _))),
                "pkvm host to-shared must be EPERM"
            );
            return Ok(());
        }
        let coco_zero = to_shared && ty == VmType::Coco;
        if coco_zero && zero == Some(false) {
            ensure!(
                matches!(ans, Err((Errno::EPERM, _))),
                "coco preserve to-shared must be EPERM"
            );
            return Ok(());
        }
        if !to_shared {
            if let Some(&i) = changing
                .iter()
                .find(|&&i| f.mem.get(&i).is_some_and(|m| m.pins > 0))
            {
                ensure!(
                    *ans == Err((Errno::EAGAIN, p(i))),
                    "pinned page {i}: EAGAIN at 0x{:x} expected",
                    p(i)
                );
                return Ok(());
            }
        }
        ans.map_err(|e| format!("refused: {e:?}"))?;
        let zero_it = to_shared && (zero == Some(true) || coco_zero);
        let f = self.gmems.get_mut(&g).unwrap_or_else(|| unreachable!());
        for i in changing {
            if let Some(a) = f.all.as_mut() {
                a[i as usize] = to_shared;
            }
            if zero_it {
                if let Some(m) = f.mem.get_mut(&i) {
                    m.word = 0;
                }
            }
        }
        Ok(())
    }

    fn punch(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let [g, off, size, ..] = a;
        let Some(f) = self.gmems.get(&g) else {
            return Self::refused(ans, "no such gmem");
        };
        let Some((lo, hi)) = Self::range(f, off, size) else {
            return Self::refused(ans, "bad range");
        };
        if f.mem.range(lo..hi).any(|(_, m)| m.pins > 0) {
            ensure!(
                matches!(ans, Err((Errno::EBUSY, _))),
                "pinned: EBUSY expected"
            );
            return Ok(());
        }
        ans.map_err(|e| format!("refused: {e:?}"))?;
        let f = self.gmems.get_mut(&g).unwrap_or_else(|| unreachable!());
        // Freed back to the pool (still donated); shareability kept.
        f.mem.retain(|&i, _| i < lo || i >= hi);
        Ok(())
    }

    /// HostPin and HostMapGmem: the host's fault through the mmap view.
    fn host_fault(&mut self, c: HostCall, a: [u64; 6], ans: &Answer, before: Before) -> R {
        // The pool after the charge topped the heap's reserve up (to RESERVE_PAGES from under
        // CALL_PAGES_MAX): what the page may come from.
        let free = before.free.map(|f| {
            if before.reserve < CALL_PAGES_MAX as u64 {
                f - f.min(RESERVE_PAGES as u64 - before.reserve)
            } else {
                f
            }
        });
        let [g, off, ..] = a;
        let Some(f) = self.gmems.get(&g) else {
            return Self::refused(ans, "no such gmem");
        };
        let ty = self.vms[&f.vm].ty;
        let idx = off / PAGE_SIZE;
        if !f.flags.contains(GmemFlags::MMAP) {
            ensure!(
                matches!(ans, Err((Errno::ENODEV, _))),
                "no MMAP: ENODEV expected"
            );
            return Ok(());
        }
        if idx >= f.pages {
            return Self::refused(ans, "beyond the file");
        }
        let all = f.all.as_ref().map(|a| a[idx as usize]);
        if !host_may_reach(ty, all) {
            return Self::refused(ans, "a page the host may not reach");
        }
        if !f.mem.contains_key(&idx) && free == Some(0) {
            ensure!(
                matches!(ans, Err((Errno::ENOMEM, _))),
                "dry pool: ENOMEM expected"
            );
            return Ok(());
        }
        let pa = ans.map_err(|e| format!("refused: {e:?}"))?[0];
        if let Some(m) = f.mem.get(&idx) {
            ensure!(m.pa == pa, "the page moved: 0x{:x} -> 0x{pa:x}", m.pa);
        } else {
            self.allow.alloc.insert((g, idx));
        }
        if c == HostCall::HostPin {
            match self.gmems.get_mut(&g).and_then(|f| f.mem.get_mut(&idx)) {
                Some(m) => m.pins += 1,
                // The page appears in `check`; the pin is counted then.
                None => self.pending_pin = Some((g, idx)),
            }
        }
        Ok(())
    }
}

impl Model {
    fn unpin(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let [g, off, ..] = a;
        let m = self
            .gmems
            .get_mut(&g)
            .and_then(|f| f.mem.get_mut(&(off / PAGE_SIZE)))
            .filter(|m| m.pins > 0);
        let Some(m) = m else {
            return Self::refused(ans, "not pinned");
        };
        ans.map_err(|e| format!("refused: {e:?}"))?;
        m.pins -= 1;
        Ok(())
    }

    fn guest_convert(&mut self, a: [u64; 6], ans: &Answer) -> R {
        let req = match self.vcpus.get(&a[0]) {
            Some(MVcpu {
                pending: Some(req), ..
            }) if !req.converted => *req,
            _ => return Self::refused(ans, "no request to carry out"),
        };
        if let Some((g, first)) = req.tracked {
            let f = &self.gmems[&g];
            let all = f.all.as_ref().ok_or("tracked piece of an untracked file")?;
            let changing = |i: &u64| all[*i as usize] != req.to_shared;
            if !req.to_shared {
                let pinned = (first..first + req.pages)
                    .filter(changing)
                    .find(|i| f.mem.get(i).is_some_and(|m| m.pins > 0));
                if let Some(i) = pinned {
                    ensure!(
                        *ans == Err((Errno::EAGAIN, p(i))),
                        "pinned: EAGAIN at page {i}"
                    );
                    return Ok(());
                }
            }
            let x = ans.map_err(|e| format!("refused: {e:?}"))?;
            ensure!(
                x[1] == req.pages,
                "x1 = {} pages, {} expected",
                x[1],
                req.pages
            );
            let f = self.gmems.get_mut(&g).unwrap_or_else(|| unreachable!());
            for i in first..first + req.pages {
                if let Some(a) = f.all.as_mut() {
                    a[i as usize] = req.to_shared;
                }
                if req.to_shared {
                    f.guest_shared[i as usize] = true;
                }
            }
        } else {
            ans.map_err(|e| format!("refused: {e:?}"))?;
        }
        if let Some(MVcpu {
            pending: Some(req), ..
        }) = self.vcpus.get_mut(&a[0])
        {
            req.converted = true;
        }
        Ok(())
    }

    // ---- guest exits -----------------------------------------------------------------------

    /// The start of a run of `vcpu`: `begun` is why the implementation refused it, else
    /// the guest's `x0, x1` after the completion of its last exit (what it was told).
    pub fn run_begun(&mut self, vcpu: u64, begun: Result<(u64, u64), Errno>) -> R {
        let Some(c) = self.vcpus.get_mut(&vcpu) else {
            ensure!(begun.is_err(), "vCPU {vcpu} ran without existing");
            if self.dead_vcpus.contains_key(&vcpu) {
                ensure!(
                    begun == Err(Errno::ENOENT),
                    "vCPU {vcpu} of a dying VM: {begun:?}, ENOENT expected"
                );
            }
            return Ok(());
        };
        let told = begun.map_err(|e| format!("vCPU {vcpu} refused to run: {e:?}"))?;
        let vm = c.vm;
        let pending = c.pending.take();
        if let Some(v) = self.vms.get_mut(&vm) {
            v.started = true;
        }
        let Some(req) = pending else {
            return Ok(());
        };
        // Trust rule 2: decided from the state: the leading pages in the target state (the
        // request was only forwarded with every page in the source state).
        let done = match req.tracked {
            Some((g, first)) => match self.gmems.get(&g).and_then(|f| f.all.as_ref()) {
                Some(all) => (first..first + req.pages)
                    .take_while(|&i| all[i as usize] == req.to_shared)
                    .count() as u64,
                None => 0,
            },
            // Untracked: only the PRIVATE attribute would count, and nothing here sets it.
            None => 0,
        };
        let want = if done > 0 {
            (SMCCC_SUCCESS, done)
        } else {
            (SMCCC_INVALID_PARAMETER, 0)
        };
        ensure!(
            told == want,
            "{req:x?}: the guest was told {told:x?}, the rules say {want:x?}"
        );
        Ok(())
    }

    /// Before a guest MEM_SHARE / MEM_UNSHARE: a `pkvm` guest's call may take its pages (a
    /// first touch, kept even if the call is refused).
    pub fn allow_share_call(&mut self, vm: u64, ipa: u64, n: u64) {
        if self.vms.get(&vm).is_some_and(|v| v.ty == VmType::Pkvm) {
            for i in 0..n.clamp(1, RANGE_CALL_MAX_GRANULES) {
                self.allow_touch(vm, ipa.wrapping_add(p(i)));
            }
        }
    }

    /// A guest MEM_SHARE / MEM_UNSHARE: `forwarded` is the exit's `(ipa, pages)` when the hyp
    /// handed it to the host, else the guest's `(x0, x1)` (a refusal).
    pub fn share_call(
        &mut self,
        vcpu: u64,
        x: [u64; 4],
        to_shared: bool,
        forwarded: Result<(u64, u64), (u64, u64)>,
    ) -> R {
        let [_, ipa, n, x3] = x;
        let Some(vm) = self.vcpus.get(&vcpu).map(|c| c.vm) else {
            return Ok(());
        };
        let (fipa, pages) = match forwarded {
            Err(told) => {
                ensure!(
                    told == (SMCCC_INVALID_PARAMETER, 0),
                    "a refusal told {told:x?}"
                );
                return Ok(());
            }
            Ok(f) => f,
        };
        ensure!(
            x3 == 0 && ipa.is_multiple_of(PAGE_SIZE),
            "forwarded with bad arguments"
        );
        ensure!(fipa == ipa, "forwarded at 0x{fipa:x}");
        let n = n.clamp(1, RANGE_CALL_MAX_GRANULES);
        let Some((_, slot, page)) = self.at_gpa(vm, ipa) else {
            return Err("forwarded outside every memslot".into());
        };
        let room = (slot.gpa + p(slot.pages) - ipa) / PAGE_SIZE;
        ensure!(
            pages >= 1 && pages <= n.min(room),
            "forwarded {pages} pages of {n}, room {room}"
        );
        let ty = self.vms[&vm].ty;
        // A pkvm first touch of the whole range: every ALL page it did not share itself is
        // the guest's now (the range was valid, or the call would not have been forwarded).
        if ty == VmType::Pkvm {
            for i in 0..n {
                if let Some((_, _, Some((g, idx)))) = self.at_gpa(vm, ipa + p(i)) {
                    let f = self.gmems.get_mut(&g).ok_or("slot of a dead gmem")?;
                    if let Some(all) = f.all.as_mut() {
                        if all[idx as usize] && !f.guest_shared[idx as usize] {
                            all[idx as usize] = false;
                        }
                    }
                }
            }
        }
        let tracked = match page {
            Some((g, idx)) if self.gmems.get(&g).is_some_and(MGmem::tracked) => Some((g, idx)),
            _ => None,
        };
        if let Some((g, first)) = tracked {
            let all = self.gmems[&g].all.as_ref().ok_or("untracked")?;
            let bad = (first..first + pages).find(|&i| all[i as usize] == to_shared);
            ensure!(
                bad.is_none(),
                "forwarded with page {bad:?} in the target state already"
            );
        }
        if let Some(c) = self.vcpus.get_mut(&vcpu) {
            c.pending = Some(MReq {
                to_shared,
                pages,
                tracked,
                converted: false,
            });
        }
        Ok(())
    }

    /// A guest MEM_RELINQUISH, `told` its answer (x0, x1).
    pub fn relinquish(&mut self, r: &Rig, vcpu: u64, x: [u64; 4], told: (u64, u64)) -> R {
        let [_, ipa, a2, a3] = x;
        let Some(vm) = self.vcpus.get(&vcpu).map(|c| c.vm) else {
            return Ok(());
        };
        let refused = told == (SMCCC_INVALID_PARAMETER, 0);
        let page = match self.at_gpa(vm, ipa) {
            Some((_, _, Some(page))) if a2 | a3 == 0 && ipa.is_multiple_of(PAGE_SIZE) => page,
            _ => {
                ensure!(refused, "bad relinquish answered {told:x?}");
                return Ok(());
            }
        };
        let (g, idx) = page;
        let f = self.gmems.get(&g).ok_or("slot of a dead gmem")?;
        let all = f.all.as_ref().is_some_and(|a| a[idx as usize]);
        let ty = self.vms[&vm].ty;
        if all && ty == VmType::Pkvm && !f.guest_shared[idx as usize] {
            // An ALL page a pkvm guest neither shared nor touched (INIT_SHARED): the rules
            // say a never-touched page is a no-op success, the implementation refuses it as
            // a shared page. Either way nothing may change.
            ensure!(refused || told.0 == SMCCC_SUCCESS, "told {told:x?}");
            return Ok(());
        }
        if all {
            ensure!(refused, "a page the guest shared relinquished: {told:x?}");
            return Ok(());
        }
        let Some(m) = f.mem.get(&idx) else {
            ensure!(
                told.0 == SMCCC_SUCCESS,
                "untouched page: a no-op success, told {told:x?}"
            );
            return Ok(());
        };
        if m.pins > 0 {
            ensure!(refused, "a pinned page relinquished: {told:x?}");
            return Ok(());
        }
        ensure!(told.0 == SMCCC_SUCCESS, "relinquish refused: {told:x?}");
        let pa = m.pa;
        let f = self.gmems.get_mut(&g).unwrap_or_else(|| unreachable!());
        f.mem.remove(&idx);
        // Back to the host, zeroed.
        let info = r.hyp.owners.info(pa).map_err(|e| format!("{e:?}"))?;
        ensure!(
            info.owner() == Some(Component::Host),
            "0x{pa:x} not the host's: {info:?}"
        );
        ensure!(r.ram.read_u64(pa) == Some(0), "0x{pa:x} back unzeroed");
        let v = self.vms.get_mut(&vm).ok_or("no VM")?;
        ensure!(v.donated.remove(&pa), "0x{pa:x} was not donated for the VM");
        self.host.insert(pa);
        Ok(())
    }

    /// The guest stores `val` at the start of the page it maps at `ipa` (if it maps one).
    pub fn guest_write(&mut self, r: &mut Rig, vm: u64, ipa: u64, val: u64) {
        let Some(m) = r.hyp.vms.get(&(vm as u32)).and_then(|v| v.stage2.walk(ipa)) else {
            return;
        };
        let Some(pa) = m.pa_of(ipa & !(PAGE_SIZE - 1)) else {
            return;
        };
        if let Some((_, _, Some((g, idx)))) = self.at_gpa(vm, ipa) {
            if let Some(mp) = self.gmems.get_mut(&g).and_then(|f| f.mem.get_mut(&idx)) {
                if mp.pa == pa {
                    r.ram.write_u64(pa, val);
                    mp.word = val;
                }
            }
        }
    }

    /// The host stores `val` at the start of gmem page `(g, idx)` at `pa` (which its mmap view
    /// fault answered). Its stage-2 must let it.
    pub fn host_write(&mut self, r: &mut Rig, g: u64, idx: u64, pa: u64, val: u64) -> R {
        ensure!(
            host_reach(r, pa),
            "the host may map 0x{pa:x} but its stage-2 refuses"
        );
        let m = self
            .gmems
            .get_mut(&g)
            .and_then(|f| f.mem.get_mut(&idx))
            .ok_or("host write to an unknown page")?;
        ensure!(m.pa == pa, "host write: page moved");
        r.ram.write_u64(pa, val);
        m.word = val;
        Ok(())
    }
}

/// Whether the host reaches `pa`: mapped in its stage-2 already, or its fault there is served.
fn host_reach(r: &mut Rig, pa: u64) -> bool {
    r.hyp.host_s2.walk(pa).is_some() || r.hyp.host_stage2_fault(pa)
}

impl Model {
    /// After every op: the model against everything the implementation exposes, then the page
    /// accounting. Learns what the op was allowed to do without the model deciding it.
    pub fn check(&mut self, r: &mut Rig) -> R {
        ensure!(
            r.hyp.vms.len() == self.vms.len(),
            "VMs: {} live or dying, model {}",
            r.hyp.vms.len(),
            self.vms.len()
        );
        for (&h, v) in &self.vms {
            let d = r.hyp.vms.get(&(h as u32)).map(|x| x.dying);
            ensure!(
                d.is_some_and(|d| (d != crate::state::Dying::Live) == v.dying),
                "VM {h}: {d:?}, model dying: {}",
                v.dying
            );
        }
        // A dying VM's files and vCPUs stay in the core until its records go.
        let in_core = |vm: u64| r.hyp.world.is_dying(hyp_core::VmHandle(vm as u32));
        let gmems = self.gmems.len() + self.dead_gmems.values().filter(|&&v| in_core(v)).count();
        ensure!(
            r.hyp.world.gmem_count() == gmems,
            "gmems: {} in the core, model {gmems}",
            r.hyp.world.gmem_count()
        );
        let vcpus = self.vcpus.len() + self.dead_vcpus.values().filter(|&&v| in_core(v)).count();
        ensure!(
            r.hyp.vcpus.len() == vcpus,
            "vCPUs: {} in the hyp, model {vcpus}",
            r.hyp.vcpus.len()
        );
        self.check_gmem_pages(r)?;
        self.check_guest_maps(r)?;
        self.check_accounts(r)
    }

    fn check_gmem_pages(&mut self, r: &mut Rig) -> R {
        let mut used = self.used_pages();
        let handles: Vec<u64> = self.gmems.keys().copied().collect();
        for g in handles {
            let (vm, pages) = (self.gmems[&g].vm, self.gmems[&g].pages);
            let ty = self.vms[&vm].ty;
            for idx in 0..pages {
                let phys = r
                    .call(HostCall::GmemPhys, [g, p(idx), 0, 0, 0, 0])
                    .map(|x| x[0]);
                let f = self.gmems.get_mut(&g).unwrap_or_else(|| unreachable!());
                match (f.mem.get(&idx), phys) {
                    (Some(m), Ok(pa)) => ensure!(
                        m.pa == pa,
                        "gmem {g} page {idx} moved: 0x{:x} -> 0x{pa:x}",
                        m.pa
                    ),
                    (Some(m), Err(e)) => {
                        return Err(format!(
                            "gmem {g} page {idx} (0x{:x}) vanished: {e:?}",
                            m.pa
                        ))
                    }
                    (None, Ok(pa)) => {
                        ensure!(
                            self.allow.alloc.contains(&(g, idx)),
                            "gmem {g} page {idx} appeared (0x{pa:x}) where nothing may allocate"
                        );
                        ensure!(
                            self.vms[&vm].donated.contains(&pa),
                            "gmem {g} page {idx}: 0x{pa:x} is not from its VM's donation"
                        );
                        ensure!(
                            used.insert(pa),
                            "gmem {g} page {idx}: 0x{pa:x} already holds memory"
                        );
                        ensure!(
                            r.ram.read_u64(pa) == Some(0),
                            "gmem {g} page {idx}: fresh page 0x{pa:x} not zeroed"
                        );
                        f.mem.insert(
                            idx,
                            MPage {
                                pa,
                                word: 0,
                                pins: 0,
                            },
                        );
                    }
                    (None, Err(_)) => {}
                }
                if self.pending_pin == Some((g, idx)) {
                    if let Some(m) = f.mem.get_mut(&idx) {
                        m.pins += 1;
                    }
                    self.pending_pin = None;
                }
                // Shareability: the core's own record must be the model's, but for a pkvm
                // first touch the op was allowed to make (ALL -> GUEST, never back).
                if let Some(all) = f.all.as_mut() {
                    let core = r
                        .hyp
                        .world
                        .gmem(hyp_core::GmemHandle(g as u32))
                        .ok()
                        .and_then(|file| file.shareability(p(idx)))
                        .map(|s| s == hyp_core::Shareability::All);
                    let i = idx as usize;
                    let takeable = ty == VmType::Pkvm
                        && all[i]
                        && !f.guest_shared[i]
                        && self.allow.take.contains(&(g, idx))
                        && f.mem.get(&idx).is_none_or(|m| m.pins == 0);
                    if takeable && core == Some(false) {
                        all[i] = false;
                    }
                    ensure!(
                        core == Some(all[i]),
                        "gmem {g} page {idx}: shareability {core:?}, model ALL={}",
                        all[i]
                    );
                }
                let Some(m) = f.mem.get(&idx) else { continue };
                let (pa, word) = (m.pa, m.word);
                let reach = host_may_reach(ty, f.all.as_ref().map(|a| a[idx as usize]));
                let seen = host_reach(r, pa);
                ensure!(seen == reach, "gmem {g} page {idx} (0x{pa:x}, {ty:?}): host reaches it: {seen}, rules: {reach}");
                let now = r.ram.read_u64(pa);
                ensure!(
                    now == Some(word),
                    "gmem {g} page {idx} (0x{pa:x}) holds {now:x?}, model {word:x}"
                );
            }
        }
        ensure!(self.pending_pin.is_none(), "a pin on no page");
        Ok(())
    }

    fn check_guest_maps(&mut self, r: &mut Rig) -> R {
        let mut used = self.used_pages();
        let mut maps = Vec::new();
        for (&id, v) in &r.hyp.vms {
            for m in v.stage2.mappings() {
                for i in 0..m.size / PAGE_SIZE {
                    maps.push((u64::from(id), m.ipa_base + p(i), m.pa_base + p(i)));
                }
            }
        }
        for (vm, ipa, pa) in maps {
            let (slot_id, slot, page) = self.at_gpa(vm, ipa).ok_or_else(|| {
                format!("VM {vm} maps 0x{ipa:x} -> 0x{pa:x} outside every memslot")
            })?;
            if let Some((g, idx)) = page {
                let f = &self.gmems[&g];
                if let Some(m) = f.mem.get(&idx).filter(|m| m.pa == pa) {
                    let ty = self.vms[&vm].ty;
                    let all = f.all.as_ref().is_some_and(|a| a[idx as usize]);
                    ensure!(
                        !(ty == VmType::Pkvm && all && !f.guest_shared[idx as usize]),
                        "pkvm VM {vm} maps 0x{ipa:x}, an ALL page it never took or shared"
                    );
                    let _ = m;
                    continue;
                }
            }
            ensure!(
                slot.uaddr == 1,
                "VM {vm} maps 0x{ipa:x} -> 0x{pa:x}, not its page there"
            );
            match self.anon.get(&pa) {
                Some(&(avm, s)) => ensure!(
                    avm == vm && s == slot_id,
                    "VM {vm} maps anon page 0x{pa:x} of VM {avm} slot {s}"
                ),
                None => {
                    ensure!(
                        self.vms[&vm].donated.contains(&pa),
                        "VM {vm} maps 0x{pa:x} (anon) not of its donation"
                    );
                    ensure!(
                        used.insert(pa),
                        "VM {vm} anon 0x{pa:x} already holds memory"
                    );
                    let info = r.hyp.owners.info(pa).map_err(|e| format!("{e:?}"))?;
                    let vmid = hyp_core::VmHandle(vm as u32).vmid();
                    ensure!(
                        info.state_of(Component::Host) == PageState::SharedOwned
                            && info.state_of(Component::Guest(vmid)) == PageState::SharedBorrowed,
                        "anon 0x{pa:x}: {info:?}"
                    );
                    self.anon.insert(pa, (vm, slot_id));
                }
            }
        }
        Ok(())
    }

    /// host + pools + guests + hyp = RAM, from counts of different origins: the model's record
    /// of donations and returns, the pools' own counts (`PoolStats`), the stage-2 walkers'
    /// table pages, the ownership table, and the fake RAM's allocator.
    fn check_accounts(&mut self, r: &mut Rig) -> R {
        self.probe = self.probe.wrapping_add(1);
        let vms: Vec<u64> = self.vms.keys().copied().collect();
        let mut donated_out = 0usize;
        let mut lent = 0usize;
        let mut returned = 0usize;
        for vm in vms {
            let v = &self.vms[&vm];
            let vmid = hyp_core::VmHandle(vm as u32).vmid();
            if v.dying {
                // Part way through its teardown: each page donated for it is back with the
                // host (zeroed; as many as the steps said), or still the hyp's or the guest's,
                // or an anon page still lent to the host.
                let (mut back, mut lent_here) = (0u64, 0usize);
                for &pa in &v.donated {
                    let info = r.hyp.owners.info(pa).map_err(|e| format!("{e:?}"))?;
                    if info == hyp_mem::ownership::PageInfo::HOST_OWNED {
                        ensure!(
                            r.ram.read_u64(pa) == Some(0),
                            "0x{pa:x} of dying VM {vm} back unzeroed"
                        );
                        back += 1;
                        continue;
                    }
                    let o = info.owner();
                    let anon = self.anon.get(&pa).is_some_and(|x| x.0 == vm);
                    let ok = o == Some(Component::Hyp)
                        || o == Some(Component::Guest(vmid))
                        || (o == Some(Component::Host) && anon);
                    ensure!(ok, "0x{pa:x}, donated for dying VM {vm}, is {info:?}");
                    if o == Some(Component::Host) {
                        lent_here += 1;
                    }
                }
                ensure!(
                    back == v.returned,
                    "dying VM {vm}: {back} of its pages are the host's, the steps gave back {}",
                    v.returned
                );
                returned += back as usize;
                lent += lent_here;
                donated_out += v.donated.len() - back as usize - lent_here;
                continue;
            }
            let s = r
                .call(HostCall::PoolStats, [vm, 0, 0, 0, 0, 0])
                .map_err(|e| format!("PoolStats {vm}: {e:?}"))?;
            let free = (s[0] + 512 * s[1]) as usize;
            let tables = r
                .hyp
                .vms
                .get(&(vm as u32))
                .ok_or("no VM")?
                .stage2
                .table_pages()
                - crate::IPA.root_pages();
            let mem: usize = self
                .gmems
                .values()
                .filter(|g| g.vm == vm)
                .map(|g| g.mem.len())
                .sum();
            let anon = self.anon.values().filter(|(a, _)| *a == vm).count();
            let hs = r.hyp.vms.get(&(vm as u32)).ok_or("no VM")?.heap.stats();
            let heap = hs.pages + hs.reserve;
            ensure!(
                v.donated.len() == free + tables + mem + anon + heap,
                "VM {vm}: {} pages donated, but {free} free in the pool + {tables} table pages + {mem} gmem pages + {anon} anon pages + {heap} heap pages",
                v.donated.len()
            );
            lent += anon;
            for &pa in &v.donated {
                let o = r.hyp.owners.owner(pa);
                let ok = o == Some(Component::Hyp)
                    || o == Some(Component::Guest(vmid))
                    || (o == Some(Component::Host)
                        && self.anon.get(&pa).is_some_and(|x| x.0 == vm));
                ensure!(ok, "0x{pa:x}, donated for VM {vm}, is owned by {o:?}");
            }
            donated_out += v.donated.len() - anon;
            // And the host's own try: one of those pages (a different one each step) that the
            // rules keep from the host (pool, tables, private memory) refuses its access.
            let open: BTreeSet<u64> = self
                .gmems
                .values()
                .filter(|g| g.vm == vm)
                .flat_map(|g| {
                    g.mem
                        .iter()
                        .filter(|(&i, _)| {
                            host_may_reach(v.ty, g.all.as_ref().map(|a| a[i as usize]))
                        })
                        .map(|(_, m)| m.pa)
                })
                .chain(self.anon.keys().copied())
                .collect();
            let closed: Vec<u64> = v
                .donated
                .iter()
                .copied()
                .filter(|pa| !open.contains(pa))
                .collect();
            if !closed.is_empty() {
                let pa = closed[self.probe % closed.len()];
                ensure!(
                    !host_reach(r, pa),
                    "the host reaches 0x{pa:x}, donated for VM {vm} and not open to it"
                );
            }
        }
        for &pa in &self.host {
            let info = r.hyp.owners.info(pa).map_err(|e| format!("{e:?}"))?;
            ensure!(
                info == hyp_mem::ownership::PageInfo::HOST_OWNED,
                "0x{pa:x}, the host's, is {info:?}"
            );
        }
        let (mut host, mut hyp, mut guest) = (0usize, 0usize, 0usize);
        let ram = (r.hyp.config.ram_size / PAGE_SIZE) as usize;
        for i in 0..ram as u64 {
            match r.hyp.owners.owner(r.hyp.config.ram_base + p(i)) {
                Some(Component::Host) => host += 1,
                Some(Component::Hyp) => hyp += 1,
                Some(Component::Guest(_)) => guest += 1,
                None => return Err(format!("page {i} has no owner")),
            }
        }
        // Pages the hyp took from RAM for itself: a stage-2 root per VM and the host stage-2's
        // tables (the fake has no hyp region: its allocator shares the fake RAM with the
        // host's, so those pages read as the host's in the table; counted apart here).
        let hyp_own = r.ram.live_pages() - self.host_total;
        let want_own = self.vms.len() * crate::IPA.root_pages() + r.hyp.host_s2.table_pages();
        ensure!(
            hyp_own == want_own,
            "the hyp holds {hyp_own} pages of its own, {want_own} expected"
        );
        ensure!(
            hyp + guest == donated_out,
            "{hyp} hyp + {guest} guest pages, but {donated_out} donated out"
        );
        ensure!(
            host == (ram - self.host_total - hyp_own) + hyp_own + self.host.len() + lent + returned,
            "{host} host pages: {} never given + {hyp_own} hyp's own + {} held + {lent} lent + {returned} back from dying VMs",
            ram - self.host_total - hyp_own,
            self.host.len()
        );
        Ok(())
    }
}
