//! The scenario runner (`../shared/spec/SCENARIOS.md`): each statement run for real against the
//! hyp, one line per statement with what was expected, what happened and the evidence (the
//! physical page that served a guest access, or the exit it took; for a refused host access,
//! what refused it).
//!
//! A file may create several VMs (`vm`, `use`, `destroy`); each has one vCPU running the step
//! guest, its own pool of donated pages, its own way of completing forwarded MEM_SHARE /
//! MEM_UNSHARE (`host forward`) and the host pages it shares (`host share-page`). Names of VMs,
//! gmem files and slots are global: each name maps to the handle the hyp gave (a destroyed
//! object keeps its old handle, so later uses go to the hyp, which answers for itself). The
//! runner never decides a result the hyp should decide: it passes what the file says and
//! reports what came back.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use abi::cmd::{
    Insn, WorldReg, OP_EXEC, OP_HVC, OP_MEM_RANGE, OP_MMIO_GUARD, OP_REG_READ, OP_REG_WRITE,
    OP_SPIN, STATUS_ABORTED, STATUS_BAD_COMMAND, STATUS_EXCEPTION, STATUS_OK,
};
use abi::flags::{MemoryFaultFlags, VmType};
use abi::guest::{
    COCO_SHARED_BIT, MEM_RELINQUISH, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD_MAP, MMIO_GUARD_MAP_RANGE,
    MMIO_GUARD_UNMAP, MMIO_GUARD_UNMAP_RANGE, SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED,
    SMCCC_SUCCESS,
};
use abi::host::HostCall;
use abi::{Errno, PAGE_SIZE};
use scenario::{
    CallArg, ForwardMode, HostTarget, MmioGuardOp, Outcome, PoolSpec, Scenario, Statement,
    StatementKind, World,
};
use trap_frame::esr;

use crate::driver::{GuestDriver, GuestMemory, StepReport, TOP_UP_PAGES};
use crate::exceptions::{probe_read, probe_smc, probe_write, HostFault};
use crate::pages::HostPages;
use crate::vm::{self, GmemId, SlotId, SlotSpec, VcpuId, VmId};
use crate::{fwcfg, hvc, regs};

/// Pages donated to a scenario VM's pool when it is created (more on demand while `pool auto`).
const INITIAL_POOL: u64 = 128;
/// IPA of the page whose flag stops `guest spin` (outside the scenario window, between the
/// command device and the guest's image).
/// Times a host statement that the hyp refused with `ENOMEM` is retried after a donation
/// (`pool auto` only).
const MAX_TOP_UPS: usize = 4;
/// A `repeat` runs the invariant checker every this many iterations (and after).
const CHECK_EVERY: u64 = 1000;
/// 4 KiB pages in a 2 MiB chunk.
const BLOCK_PAGES: u64 = 512;
/// Loose pages are donated in runs shorter than a chunk, so the pool cannot make a block of them.
const MAX_LOOSE_RUN: u64 = BLOCK_PAGES - 1;
/// Distinct results a `repeat` line lists per statement before it lumps the rest together.
const TALLY_MAX: usize = 8;

/// Pass/fail counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
}

/// A statement's result and the evidence for it.
#[derive(Clone, Debug)]
pub struct Done {
    pub outcome: Outcome,
    pub evidence: String,
}

fn done(outcome: Outcome, evidence: impl Into<String>) -> Done {
    Done {
        outcome,
        evidence: evidence.into(),
    }
}

fn errno(e: Errno) -> Done {
    done(Outcome::Errno(e), format!("the hyp refused: {e}"))
}

/// What an exception class means for a world's access: an undefined instruction (EC 0, as the
/// hyp injects it), an abort (instruction or data abort, from either level), or neither.
fn class_outcome(ec: u64) -> Outcome {
    match ec {
        esr::EC_UNKNOWN => Outcome::Undef,
        ec if esr::is_abort(ec) => Outcome::Abort,
        other => Outcome::Exception(other),
    }
}

fn fault_done(what: &str, f: HostFault) -> Done {
    done(
        class_outcome(f.ec()),
        format!(
            "{what}: the host took EC 0x{:02x} (ESR 0x{:x}, FAR 0x{:x})",
            f.ec(),
            f.esr,
            f.far
        ),
    )
}

fn smccc_outcome(x0: u64) -> Outcome {
    match x0 {
        SMCCC_SUCCESS => Outcome::Ok,
        SMCCC_INVALID_PARAMETER => Outcome::InvalidParameter,
        SMCCC_NOT_SUPPORTED => Outcome::NotSupported,
        other => Outcome::Value(other),
    }
}

/// Host pages shared with a guest (`host share-page`), which the runner keeps.
#[derive(Clone, Copy, Debug)]
struct SharedRun {
    /// The IPA as the file wrote it (without the coco shared bit).
    gpa: u64,
    pa: u64,
    pages: u64,
}

/// One VM of the file.
struct VmRec {
    name: String,
    id: VmId,
    vm_type: VmType,
    /// `None` once destroyed.
    guest: Option<GuestDriver>,
    forward: ForwardMode,
    pool_auto: bool,
    /// Host pages in the VM's pool or given to it (back to the host allocator at teardown).
    donated: BTreeSet<u64>,
    shared: Vec<SharedRun>,
}

impl VmRec {
    fn alive(&self) -> bool {
        self.guest.is_some()
    }

    fn ipa(&self, gpa: u64, shared: bool) -> u64 {
        if shared && self.vm_type == VmType::Coco {
            gpa | COCO_SHARED_BIT
        } else {
            gpa
        }
    }

    fn note_donated(&mut self, pa: u64, pages: u64) {
        self.donated.extend((0..pages).map(|i| pa + i * PAGE_SIZE));
    }
}

/// What a name of the file stands for.
#[derive(Clone, Copy, Debug)]
enum Obj {
    Vm(usize),
    Gmem { id: GmemId, vm: usize },
    Slot { id: SlotId, vm: usize },
}

/// One running scenario file.
pub struct Runner<'p> {
    pages: &'p mut HostPages,
    vms: Vec<VmRec>,
    names: BTreeMap<String, Obj>,
    current: Option<usize>,
}

impl<'p> Runner<'p> {
    /// A runner with no VM yet.
    pub fn empty(pages: &'p mut HostPages) -> Self {
        Self {
            pages,
            vms: Vec::new(),
            names: BTreeMap::new(),
            current: None,
        }
    }

    /// A runner with one VM (`vm0`) of this type, current (the table's probes).
    pub fn new(vm_type: VmType, pages: &'p mut HostPages) -> Result<Self, Errno> {
        let mut r = Self::empty(pages);
        let d = r.create_vm(vm_type, "vm0");
        match d.outcome {
            Outcome::Ok => Ok(r),
            Outcome::Errno(e) => Err(e),
            _ => Err(Errno::EINVAL),
        }
    }

    /// The current VM (or handle 0 where there is none).
    pub fn vm(&self) -> VmId {
        self.current
            .and_then(|i| self.vms.get(i))
            .map_or(VmId(0), |v| v.id)
    }

    fn cur(&self) -> Result<usize, Done> {
        match self.current {
            Some(i) if self.vms.get(i).is_some_and(VmRec::alive) => Ok(i),
            _ => Err(done(
                Outcome::Errno(Errno::ENOENT),
                "no current VM (its `vm` failed, or it was torn down behind the runner's back)",
            )),
        }
    }

    fn rec(&mut self, i: usize) -> Result<&mut VmRec, Done> {
        self.vms
            .get_mut(i)
            .ok_or_else(|| done(Outcome::Errno(Errno::ENOENT), "no such VM"))
    }

    fn gmem(&self, name: &str) -> Result<(GmemId, usize), Done> {
        match self.names.get(name) {
            Some(Obj::Gmem { id, vm }) => Ok((*id, *vm)),
            _ => Err(done(
                Outcome::Errno(Errno::ENOENT),
                format!("no gmem `{name}` was created (its `gmem` failed)"),
            )),
        }
    }

    fn slot(&self, name: &str) -> Result<(SlotId, usize), Done> {
        match self.names.get(name) {
            Some(Obj::Slot { id, vm }) => Ok((*id, *vm)),
            _ => Err(done(
                Outcome::Errno(Errno::ENOENT),
                format!("no slot `{name}` was created (its `slot` failed)"),
            )),
        }
    }

    /// Donates `n` host pages to VM `i` in runs shorter than a 2 MiB chunk (loose pool pages).
    fn donate_loose(&mut self, i: usize, n: u64) -> Result<(), Errno> {
        let id = self.vms.get(i).ok_or(Errno::ENOENT)?.id;
        let mut left = n;
        while left > 0 {
            // Take pages one by one (freed pages first) and donate each contiguous run.
            let first = self.pages.alloc().ok_or(Errno::ENOMEM)?;
            let (mut lo, mut hi) = (first, first);
            while hi - lo + PAGE_SIZE < left.min(MAX_LOOSE_RUN) * PAGE_SIZE {
                let Some(p) = self.pages.alloc() else { break };
                if p == hi + PAGE_SIZE {
                    hi = p;
                } else if p + PAGE_SIZE == lo {
                    lo = p;
                } else {
                    self.pages.free_run(p, 1);
                    break;
                }
            }
            let run = (hi - lo) / PAGE_SIZE + 1;
            if let Err(e) = vm::donate(id, lo, run) {
                self.pages.free_run(lo, run);
                return Err(e);
            }
            if let Some(v) = self.vms.get_mut(i) {
                v.note_donated(lo, run);
            }
            left -= run;
        }
        Ok(())
    }

    /// Donates one 2 MiB-aligned chunk to VM `i`.
    fn donate_block(&mut self, i: usize) -> Result<(), Errno> {
        let id = self.vms.get(i).ok_or(Errno::ENOENT)?.id;
        let pa = self
            .pages
            .alloc_contiguous(BLOCK_PAGES, BLOCK_PAGES * PAGE_SIZE)
            .ok_or(Errno::ENOMEM)?;
        if let Err(e) = vm::donate(id, pa, BLOCK_PAGES) {
            self.pages.free_run(pa, BLOCK_PAGES);
            return Err(e);
        }
        if let Some(v) = self.vms.get_mut(i) {
            v.note_donated(pa, BLOCK_PAGES);
        }
        Ok(())
    }

    /// A host operation on VM `i`'s behalf: while its pool is `auto`, an `ENOMEM` from the hyp
    /// is answered with a donation and the operation retried (as a host tops up a memcache).
    fn with_pages<T>(
        &mut self,
        i: usize,
        mut f: impl FnMut() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let mut tries = 0;
        loop {
            match f() {
                Err(Errno::ENOMEM)
                    if tries < MAX_TOP_UPS && self.vms.get(i).is_some_and(|v| v.pool_auto) =>
                {
                    tries += 1;
                    self.donate_loose(i, TOP_UP_PAGES)?;
                }
                r => return r,
            }
        }
    }

    fn create_vm(&mut self, vm_type: VmType, name: &str) -> Done {
        let id = match vm::vm_create(vm_type) {
            Ok(id) => id,
            Err(e) => return errno(e),
        };
        let i = self.vms.len();
        self.vms.push(VmRec {
            name: name.to_string(),
            id,
            vm_type,
            guest: None,
            forward: ForwardMode::Honest,
            pool_auto: true,
            donated: BTreeSet::new(),
            shared: Vec::new(),
        });
        let set_up = self.set_up_vm(i);
        match set_up {
            Ok(()) => {
                self.names.insert(name.to_string(), Obj::Vm(i));
                self.current = Some(i);
                done(
                    Outcome::Ok,
                    format!("VM handle {}, {INITIAL_POOL} pages donated", id.0),
                )
            }
            Err(e) => {
                // Creates nothing: the half-made VM goes, the current VM stays as it was. Its
                // pages go back to the host allocator only if the hyp gave them back.
                let back = vm::vm_destroy(id);
                if back.is_ok() {
                    self.release(i);
                }
                self.vms.truncate(i);
                done(
                    Outcome::Errno(e),
                    format!("setting up VM {} failed: {e} (torn down: {back:?})", id.0),
                )
            }
        }
    }

    /// Pool and step guest of a new VM.
    fn set_up_vm(&mut self, i: usize) -> Result<(), Errno> {
        self.donate_loose(i, INITIAL_POOL)?;
        let v = self.vms.get(i).ok_or(Errno::ENOENT)?;
        let (id, vm_type) = (v.id, v.vm_type);
        let guest = GuestDriver::load(id, vm_type, self.pages)?;
        let v = self.vms.get_mut(i).ok_or(Errno::ENOENT)?;
        v.guest = Some(guest);
        Ok(())
    }

    /// Gives VM `i`'s host pages back to the host allocator (the VM is gone).
    fn release(&mut self, i: usize) {
        let Some(v) = self.vms.get_mut(i) else {
            return;
        };
        let donated = core::mem::take(&mut v.donated);
        let shared = core::mem::take(&mut v.shared);
        // A plain guest's image lives in host pages the driver allocated.
        if let Some(GuestMemory::HostShared { pa }) = v.guest.as_ref().map(|g| g.memory) {
            self.pages.free_run(pa, crate::driver::GUEST_PAGES);
        }
        for pa in donated {
            self.pages.free_run(pa, 1);
        }
        for r in shared {
            self.pages.free_run(r.pa, r.pages);
        }
    }

    fn destroy(&mut self, name: &str) -> Done {
        // There is no current VM afterwards, whatever the hyp says (SCENARIOS.md).
        self.current = None;
        let Some(&Obj::Vm(i)) = self.names.get(name) else {
            return done(Outcome::Errno(Errno::ENOENT), format!("no VM `{name}`"));
        };
        let Ok(v) = self.rec(i) else {
            return done(Outcome::Errno(Errno::ENOENT), "no such VM");
        };
        let (id, was_alive) = (v.id, v.alive());
        if let Some(g) = v.guest.as_mut() {
            v.donated.extend(
                g.donated
                    .drain(..)
                    .flat_map(|(pa, n)| (0..n).map(move |k| pa + k * PAGE_SIZE)),
            );
        }
        let donated = v.donated.len();
        match vm::vm_destroy(id) {
            Ok(back) => {
                if let Ok(v) = self.rec(i) {
                    v.guest = None;
                }
                self.release(i);
                done(
                    Outcome::Ok,
                    format!(
                        "VM handle {} torn down: {back} pages back to the host ({donated} donated{})",
                        id.0,
                        if was_alive { "" } else { "; it was gone already" }
                    ),
                )
            }
            Err(e) => done(
                Outcome::Errno(e),
                format!("VmDestroy of handle {}: the hyp refused: {e}", id.0),
            ),
        }
    }

    fn use_vm(&mut self, name: &str) -> Done {
        match self.names.get(name) {
            Some(&Obj::Vm(i)) if self.vms.get(i).is_some_and(VmRec::alive) => {
                self.current = Some(i);
                done(Outcome::Ok, format!("current VM: {name}"))
            }
            _ => done(
                Outcome::Errno(Errno::ENOENT),
                format!("VM `{name}` is not there (its `vm` failed or it was destroyed)"),
            ),
        }
    }

    /// Host access through a page the hyp handed out (`map` = the mmap-view or uaddr fault).
    fn host_access(&mut self, target: &HostTarget, offset: u64, write: Option<u8>) -> Done {
        let w = write.is_some();
        let mapped = match target {
            HostTarget::Gmem(name) => match self.gmem(name) {
                Ok((g, vm_i)) => self.with_pages(vm_i, || vm::map_gmem(g, offset, w)),
                Err(d) => return d,
            },
            HostTarget::Uaddr(name) => match self.slot(name) {
                Ok((s, vm_i)) => {
                    let id = self.vms.get(vm_i).map_or(VmId(0), |v| v.id);
                    self.with_pages(vm_i, || vm::map_uaddr(id, s, offset, w))
                }
                Err(d) => return d,
            },
        };
        let pa = match mapped {
            Ok(pa) => pa + offset % PAGE_SIZE,
            Err(Errno::EFAULT) => {
                return done(Outcome::Sigbus, "host fault handler refused (SIGBUS)")
            }
            Err(e) => return errno(e),
        };
        let r = match write {
            Some(v) => probe_write(pa as usize, v).map(|()| Outcome::Ok),
            None => probe_read(pa as usize).map(Outcome::Byte),
        };
        match r {
            Ok(o) => done(o, format!("host touched pa 0x{pa:x}")),
            Err(f) => done(
                Outcome::Sigbus,
                format!(
                    "abort injected by the hyp at pa 0x{pa:x} (ESR 0x{:x})",
                    f.esr
                ),
            ),
        }
    }

    /// Runs one step of the current VM's guest, completing forwarded calls the way the VM's
    /// `host forward` says (`honest` for the runner's own needs).
    fn guest_step(&mut self, op: u64, args: [u64; 4], honest: bool) -> Result<StepReport, Done> {
        self.guest_step_with(op, args, honest, None)
    }

    /// [`Runner::guest_step`]; with `flag`, the byte at that host physical address is set to 1
    /// at every `Interrupt` exit (how the host stops a spinning guest).
    fn guest_step_with(
        &mut self,
        op: u64,
        args: [u64; 4],
        honest: bool,
        flag: Option<u64>,
    ) -> Result<StepReport, Done> {
        let i = self.cur()?;
        let Runner { vms, pages, .. } = self;
        let Some(v) = vms.get_mut(i) else {
            return Err(done(Outcome::Errno(Errno::ENOENT), "no such VM"));
        };
        let mode = if honest {
            ForwardMode::Honest
        } else {
            v.forward
        };
        let id = v.id;
        let Some(guest) = v.guest.as_mut() else {
            return Err(done(Outcome::Errno(Errno::ENOENT), "the VM is gone"));
        };
        let vcpu = guest.vcpu;
        guest.top_up = v.pool_auto;
        let handler = &mut |f, a| forward_with(mode, id, vcpu, f, a);
        let mut set_flag = |_: &StepReport| {
            if let Some(pa) = flag {
                // The host's own view of a page the guest shares with it; a refused store
                // leaves the guest spinning, and the run's timeout reports it.
                let _ = probe_write(pa as usize, 1);
            }
        };
        let r = guest.step_with(op, args, pages, handler, Some(&mut set_flag));
        let runs: Vec<(u64, u64)> = guest.donated.drain(..).collect();
        for (pa, n) in runs {
            v.note_donated(pa, n);
        }
        r.map_err(|e| done(Outcome::Errno(e), format!("the guest could not run: {e}")))
    }

    /// What a guest step came to. `ok` is the outcome of a step that completed; `ipa`, where
    /// given, is looked up in the VM's stage-2 for the evidence.
    fn step_outcome(&self, r: &StepReport, ok: Outcome, ipa: Option<u64>) -> Done {
        let exits = format!("{} exits", r.exits);
        if let Some(wanted) = r.need_pages {
            return done(
                Outcome::NeedPages,
                format!("NeedPages exit ({wanted} pages wanted), the pool is fixed: abort injected; {exits}"),
            );
        }
        if let Some((gpa, size, flags)) = r.memory_fault {
            let private = flags & MemoryFaultFlags::PRIVATE.bits() != 0;
            return done(
                Outcome::MemoryFault { gpa, size, private },
                format!("memory-fault exit, flags 0x{flags:x}; abort injected"),
            );
        }
        if let Some((mipa, write, _)) = r.mmio {
            return done(
                Outcome::Mmio,
                format!(
                    "MMIO exit at 0x{mipa:x} ({})",
                    if write { "store" } else { "load" }
                ),
            );
        }
        if let Some(class) = r.exception {
            // The exit tells the host the exception's class and nothing more (Trust rule 1).
            return done(
                class_outcome(class),
                format!("guest exception exit, class 0x{class:02x}; the guest is stopped"),
            );
        }
        match r.status {
            Some(STATUS_OK) => {
                let served = match ipa.map(|a| vm::walk(self.vm(), a)) {
                    Some(Ok((pa, size))) if size > PAGE_SIZE => {
                        format!("served by pa 0x{pa:x} (a {} KiB block)", size >> 10)
                    }
                    Some(Ok((pa, _))) => format!("served by pa 0x{pa:x}"),
                    Some(Err(_)) => "no stage-2 mapping".to_string(),
                    None => format!("the guest ran the step ({exits})"),
                };
                done(ok, served)
            }
            Some(STATUS_ABORTED) => done(
                Outcome::Abort,
                format!("the guest took an injected abort ({exits})"),
            ),
            Some(STATUS_EXCEPTION) => {
                // The class only, as an exit would tell it (Trust rule 1).
                let class = esr::ec(r.results[0]);
                done(
                    class_outcome(class),
                    format!(
                        "the guest took an exception of class 0x{class:02x} and went on; {exits}"
                    ),
                )
            }
            Some(STATUS_BAD_COMMAND) => done(
                Outcome::BadCommand,
                "the step guest does not know this command",
            ),
            s => done(Outcome::BadCommand, format!("guest status {s:?}")),
        }
    }

    fn guest_access(&mut self, gpa: u64, shared: bool, write: Option<u8>) -> Done {
        let ipa = match self.cur() {
            Ok(i) => self.vms.get(i).map_or(gpa, |v| v.ipa(gpa, shared)),
            Err(d) => return d,
        };
        let r = match write {
            Some(v) => self.guest_step(abi::cmd::OP_WRITE, [ipa, u64::from(v), 0, 0], false),
            None => self.guest_step(abi::cmd::OP_READ, [ipa, 0, 0, 0], false),
        };
        match r {
            Ok(r) => {
                let ok = match write {
                    Some(_) => Outcome::Ok,
                    None => Outcome::Byte(r.results[0] as u8),
                };
                self.step_outcome(&r, ok, Some(ipa))
            }
            Err(d) => d,
        }
    }

    fn guest_range(&mut self, func: u64, gpa: u64, pages: u64) -> Done {
        match self.guest_step(OP_MEM_RANGE, [func, gpa, pages, 0], false) {
            Ok(r) if r.status == Some(STATUS_OK) && r.need_pages.is_none() => done(
                smccc_outcome(r.results[0]),
                format!(
                    "x0 = {:#x}, {} pages done; {} exits",
                    r.results[0], r.results[1], r.exits
                ),
            ),
            Ok(r) => self.step_outcome(&r, Outcome::Ok, None),
            Err(d) => d,
        }
    }

    /// One guest hypercall through `OP_HVC`: `Ok((x0, x1))` or the step's outcome.
    fn guest_hvc(&mut self, func: u64, a: [u64; 3]) -> Result<(u64, u64), Done> {
        let r = self.guest_step(OP_HVC, [func, a[0], a[1], a[2]], false)?;
        if r.status == Some(STATUS_OK) && r.need_pages.is_none() {
            Ok((r.results[0], r.results[1]))
        } else {
            Err(self.step_outcome(&r, Outcome::Ok, None))
        }
    }

    fn mmio_guard(&mut self, op: MmioGuardOp, gpa: u64, pages: Option<u64>) -> Done {
        let (one, range) = match op {
            MmioGuardOp::Enroll => {
                // Enrolls and guards the command device in one step, so the guest keeps
                // talking to the host.
                return match self.guest_step(OP_MMIO_GUARD, [0; 4], false) {
                    Ok(r) if r.status == Some(STATUS_OK) && r.need_pages.is_none() => {
                        let (e, m) = (r.results[0], r.results[1]);
                        let ev =
                            format!("ENROLL x0 = {e:#x}; MAP of the command device x0 = {m:#x}");
                        match smccc_outcome(e) {
                            Outcome::Ok => done(smccc_outcome(m), ev),
                            o => done(o, ev),
                        }
                    }
                    Ok(r) => self.step_outcome(&r, Outcome::Ok, None),
                    Err(d) => d,
                };
            }
            MmioGuardOp::Map => (MMIO_GUARD_MAP, MMIO_GUARD_MAP_RANGE),
            MmioGuardOp::Unmap => (MMIO_GUARD_UNMAP, MMIO_GUARD_UNMAP_RANGE),
        };
        let Some(total) = pages else {
            return match self.guest_hvc(one, [gpa, 0, 0]) {
                Ok((x0, _)) => done(smccc_outcome(x0), format!("x0 = {x0:#x}")),
                Err(d) => d,
            };
        };
        // A range call the way a Linux guest makes it: again from where the hyp stopped.
        let (mut ipa, mut left, mut calls, mut done_pages) = (gpa, total, 0u64, 0u64);
        loop {
            calls += 1;
            let (x0, x1) = match self.guest_hvc(range, [ipa, left, 0]) {
                Ok(r) => r,
                Err(d) => return d,
            };
            let ev =
                format!("{calls} calls, {done_pages} granules done before the last, x0 = {x0:#x}");
            if x0 != SMCCC_SUCCESS {
                return done(smccc_outcome(x0), ev);
            }
            let step = x1.clamp(1, left.max(1));
            done_pages += step;
            left = left.saturating_sub(step);
            ipa = ipa.wrapping_add(step.wrapping_mul(PAGE_SIZE));
            if left == 0 {
                return done(
                    Outcome::Ok,
                    format!("{calls} calls, {done_pages} granules done"),
                );
            }
        }
    }

    fn world_op(&mut self, world: World, op: WorldOp) -> Done {
        match world {
            World::Host => {
                let el = crate::current_el();
                let (r, what) = match op {
                    WorldOp::Write(reg, v) => {
                        (regs::write(reg, v).map(|()| Outcome::Ok), reg.name())
                    }
                    WorldOp::Read(reg) => (regs::read(reg).map(Outcome::Value), reg.name()),
                    WorldOp::Exec(insn) => (regs::exec(insn).map(|()| Outcome::Ok), insn.name()),
                };
                match r {
                    Ok(o) => done(o, format!("{what} at EL{el} in the host, no exception")),
                    Err(f) => fault_done(&format!("{what} at EL{el}"), f),
                }
            }
            World::Guest => {
                let (cmd, args, read) = match op {
                    WorldOp::Write(reg, v) => (OP_REG_WRITE, [reg as u64, v, 0, 0], false),
                    WorldOp::Read(reg) => (OP_REG_READ, [reg as u64, 0, 0, 0], true),
                    WorldOp::Exec(insn) => (OP_EXEC, [insn as u64, 0, 0, 0], false),
                };
                match self.guest_step(cmd, args, false) {
                    Ok(r) => {
                        let ok = if read {
                            Outcome::Value(r.results[0])
                        } else {
                            Outcome::Ok
                        };
                        self.step_outcome(&r, ok, None)
                    }
                    Err(d) => d,
                }
            }
        }
    }

    fn spin(&mut self) -> Done {
        let i = match self.cur() {
            Ok(i) => i,
            Err(d) => return d,
        };
        let Some((memory, (share, poll))) = self
            .vms
            .get(i)
            .and_then(|v| v.guest.as_ref())
            .map(|g| (g.memory, g.spin_args()))
        else {
            return done(Outcome::Errno(Errno::ENOENT), "the VM is gone");
        };
        // The host's own view of the guest's flag page (the page after its image: INIT_SHARED,
        // shared by the guest itself, or the host's own page).
        let flag = match memory {
            GuestMemory::HostShared { pa } => Ok(pa + crate::driver::GUEST_IMAGE_PAGES * PAGE_SIZE),
            GuestMemory::Gmem { gmem, .. } => self.with_pages(i, || {
                vm::map_gmem(gmem, crate::driver::GUEST_IMAGE_PAGES * PAGE_SIZE, true)
            }),
        };
        let flag = match flag {
            Ok(pa) => pa,
            Err(e) => {
                return done(
                    Outcome::Errno(e),
                    format!("the host cannot map its spin flag: {e}"),
                )
            }
        };
        if let Err(f) = probe_write(flag as usize, 0) {
            return fault_done("clearing the spin flag", f);
        }
        let r = self.guest_step_with(OP_SPIN, [share, poll, 0, 0], true, Some(flag));
        if let (Ok(r), Some(g)) = (&r, self.vms.get_mut(i).and_then(|v| v.guest.as_mut())) {
            // The guest shared its flag page (pkvm): the next spin polls without sharing.
            if share != 0 && r.results[1] == SMCCC_SUCCESS {
                g.flag_shared = true;
            }
        }
        let r = match r {
            Ok(r) => r,
            Err(d) => return d,
        };
        if r.status == Some(STATUS_OK) && r.need_pages.is_none() {
            let ev = format!(
                "{} interrupt exits; the guest polled {} times; {} exits",
                r.interrupts, r.results[0], r.exits
            );
            return if r.interrupts > 0 {
                done(Outcome::Preempted, ev)
            } else {
                done(Outcome::Ok, format!("no interrupt exit came back: {ev}"))
            };
        }
        self.step_outcome(&r, Outcome::Ok, None)
    }

    fn share_page(&mut self, gpa: u64, pages: u64) -> Done {
        let i = match self.cur() {
            Ok(i) => i,
            Err(d) => return d,
        };
        let Some(v) = self.vms.get(i) else {
            return done(Outcome::Errno(Errno::ENOENT), "no such VM");
        };
        let (id, ipa) = (v.id, v.ipa(gpa, true));
        let Some(pa) = self.pages.alloc_contiguous(pages, PAGE_SIZE) else {
            return done(
                Outcome::Errno(Errno::ENOMEM),
                format!("the host has no {pages} free pages to share (nothing asked of the hyp)"),
            );
        };
        // SAFETY: the pages were just taken from the host's own free RAM and nothing else uses
        // them; the host runs with its MMU off, so physical addresses are directly usable.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, (pages * PAGE_SIZE) as usize) };
        match self.with_pages(i, || vm::map_host_shared(id, ipa, pa, pages)) {
            Ok(()) => {
                if let Some(v) = self.vms.get_mut(i) {
                    v.shared.push(SharedRun { gpa, pa, pages });
                }
                done(
                    Outcome::Ok,
                    format!("host pa 0x{pa:x} ({pages} pages) shared at IPA 0x{ipa:x}"),
                )
            }
            Err(e) => {
                self.pages.free_run(pa, pages);
                errno(e)
            }
        }
    }

    fn shared_access(&mut self, gpa: u64, write: Option<u8>) -> Done {
        let i = match self.cur() {
            Ok(i) => i,
            Err(d) => return d,
        };
        let run = self.vms.get(i).and_then(|v| {
            v.shared
                .iter()
                .find(|r| gpa >= r.gpa && (gpa - r.gpa) / PAGE_SIZE < r.pages)
                .copied()
        });
        let Some(run) = run else {
            return done(
                Outcome::Errno(Errno::ENOENT),
                format!("the host shared no page at 0x{gpa:x} with this VM"),
            );
        };
        let pa = run.pa + (gpa - run.gpa);
        let r = match write {
            Some(v) => probe_write(pa as usize, v).map(|()| Outcome::Ok),
            None => probe_read(pa as usize).map(Outcome::Byte),
        };
        match r {
            Ok(o) => done(o, format!("host touched its page at pa 0x{pa:x}")),
            Err(f) => done(
                Outcome::Sigbus,
                format!("abort injected at pa 0x{pa:x} (ESR 0x{:x})", f.esr),
            ),
        }
    }

    fn gmem_pa(&self, gmem: &str, offset: u64) -> Result<u64, Done> {
        let (g, _) = self.gmem(gmem)?;
        hvc::call(HostCall::GmemPhys, [g.0, offset, 0, 0, 0, 0])
            .map(|r| r[0])
            .map_err(errno)
    }

    fn raw_write(&mut self, gmem: &str, offset: u64, value: u8) -> Done {
        let pa = match self.gmem_pa(gmem, offset) {
            Ok(pa) => pa,
            Err(d) => return d,
        };
        match probe_write(pa as usize, value) {
            Ok(()) => done(
                Outcome::Ok,
                format!("raw store to pa 0x{pa:x} went through"),
            ),
            Err(f) => done(
                class_outcome(f.ec()),
                format!("stage-2 abort at pa 0x{pa:x} (ESR 0x{:x})", f.esr),
            ),
        }
    }

    fn hyp_access(offset: u64, write: Option<u8>) -> Done {
        let pa = board::layout::HYP_BASE as u64 + offset;
        let r = match write {
            Some(v) => probe_write(pa as usize, v).map(|()| Outcome::Ok),
            None => probe_read(pa as usize).map(Outcome::Byte),
        };
        match r {
            Ok(o) => done(
                o,
                format!("the host reached the hyp's image at pa 0x{pa:x}!"),
            ),
            Err(f) => done(
                class_outcome(f.ec()),
                format!(
                    "the host took EC 0x{:02x} at pa 0x{pa:x} (ESR 0x{:x})",
                    f.ec(),
                    f.esr
                ),
            ),
        }
    }

    fn dma_write(&mut self, gmem: &str, offset: u64, value: u8) -> Done {
        let pa = match self.gmem_pa(gmem, offset) {
            Ok(pa) => pa,
            Err(d) => return d,
        };
        match fwcfg::dma_write(pa, value) {
            Ok(()) => done(
                Outcome::Ok,
                format!("fw_cfg DMA stored the byte at pa 0x{pa:x}"),
            ),
            Err(f) => {
                let o = class_outcome(f.ec());
                let what = if o == Outcome::Abort {
                    "the hyp stopped the host at the device's register"
                } else {
                    "the DMA was not started: the host took an exception at"
                };
                done(
                    o,
                    format!(
                        "{what} 0x{:x} (EC 0x{:02x}, ESR 0x{:x}); target pa 0x{pa:x}",
                        f.far,
                        f.ec(),
                        f.esr
                    ),
                )
            }
        }
    }

    fn host_call(&mut self, call: HostCall, args: &[CallArg; 6]) -> Done {
        let mut regs = [0u64; 6];
        for (r, a) in regs.iter_mut().zip(args) {
            *r = match a {
                CallArg::Num(n) => *n,
                CallArg::Fresh(n) => match self.pages.alloc_contiguous(*n, PAGE_SIZE) {
                    Some(pa) => pa,
                    None => {
                        return done(
                            Outcome::Errno(Errno::ENOMEM),
                            format!("no {n} fresh host pages left; nothing called"),
                        )
                    }
                },
                CallArg::Name(name) => match self.names.get(name) {
                    Some(Obj::Vm(i)) => self.vms.get(*i).map_or(0, |v| v.id.0),
                    Some(Obj::Gmem { id, .. }) => id.0,
                    Some(Obj::Slot { id, .. }) => id.0,
                    None => {
                        return done(
                            Outcome::Errno(Errno::ENOENT),
                            format!("`{name}` has no handle (its creation failed); nothing called"),
                        )
                    }
                },
            };
        }
        let r = hvc::raw6(call.id(), regs);
        let ev = format!(
            "{}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}) -> x0..x3 = {:#x}, {:#x}, {:#x}, {:#x}",
            call.name(),
            regs[0],
            regs[1],
            regs[2],
            regs[3],
            regs[4],
            regs[5],
            r[0],
            r[1],
            r[2],
            r[3]
        );
        match Errno::from_reg(r[0]) {
            Some(e) => done(Outcome::Errno(e), ev),
            None if (r[0] as i64) < 0 => done(Outcome::Value(r[0]), ev),
            None => done(Outcome::Ok, ev),
        }
    }

    fn smc(func: u64, args: [u64; 3]) -> Done {
        match probe_smc(func, args) {
            Ok(r) => {
                let ev = format!(
                    "SMC {func:#x} -> x0..x3 = {:#x}, {:#x}, {:#x}, {:#x}; the host went on",
                    r[0], r[1], r[2], r[3]
                );
                match r[0] {
                    SMCCC_NOT_SUPPORTED => done(Outcome::NotSupported, ev),
                    x0 => done(Outcome::Value(x0), ev),
                }
            }
            Err(f) => fault_done(&format!("SMC {func:#x}"), f),
        }
    }

    fn pool(&mut self, spec: PoolSpec) -> Done {
        let i = match self.cur() {
            Ok(i) => i,
            Err(d) => return d,
        };
        let (pages, blocks) = match spec {
            PoolSpec::Auto => {
                if let Ok(v) = self.rec(i) {
                    v.pool_auto = true;
                }
                return done(Outcome::Ok, "the runner tops the pool up again");
            }
            PoolSpec::Exact { pages, blocks } => (pages, blocks),
        };
        let id = match self.rec(i) {
            Ok(v) => {
                v.pool_auto = false;
                v.id
            }
            Err(d) => return d,
        };
        let mut log = String::new();
        let r = self.set_pool(i, id, pages, blocks, &mut log);
        match (r, pool_stats(id)) {
            (Ok(()), Ok((p, b))) if (p, b) == (pages, blocks) => done(
                Outcome::Ok,
                format!("the pool holds {p} free pages and {b} free 2 MiB chunks{log}"),
            ),
            (Ok(()), Ok((p, b))) => done(
                Outcome::Errno(Errno::ERANGE),
                format!("the pool holds {p} free pages and {b} chunks after the changes{log}"),
            ),
            (Err(e), _) | (Ok(()), Err(e)) => done(
                Outcome::Errno(e),
                format!("the pool did not change as asked{log}"),
            ),
        }
    }

    fn set_pool(
        &mut self,
        i: usize,
        id: VmId,
        pages: u64,
        blocks: u64,
        log: &mut String,
    ) -> Result<(), Errno> {
        let (_, b) = pool_stats(id)?;
        for _ in blocks..b {
            self.reclaim(i, id, true)?;
        }
        for _ in b..blocks {
            self.donate_block(i)?;
        }
        let (p, _) = pool_stats(id)?;
        for _ in pages..p {
            self.reclaim(i, id, false)?;
        }
        if p < pages {
            self.donate_loose(i, pages - p)?;
        }
        log.push_str(&format!(
            " (was {p} pages and {b} chunks: {} pages and {} chunks reclaimed)",
            p.saturating_sub(pages),
            b.saturating_sub(blocks)
        ));
        Ok(())
    }

    /// Takes one free page or chunk back from VM `i`'s pool (`PoolReclaim`).
    fn reclaim(&mut self, i: usize, id: VmId, block: bool) -> Result<(), Errno> {
        let r = hvc::call(HostCall::PoolReclaim, [id.0, u64::from(block), 0, 0, 0, 0])?;
        let (pa, n) = (r[0], if block { BLOCK_PAGES } else { 1 });
        // Only pages that came from the host allocator go back to it.
        let Some(v) = self.vms.get_mut(i) else {
            return Ok(());
        };
        for k in 0..n {
            let p = pa.wrapping_add(k * PAGE_SIZE);
            if v.donated.remove(&p) {
                self.pages.free_run(p, 1);
            }
        }
        Ok(())
    }

    /// Runs one statement (a `repeat` runs through [`Runner::run_statement`]).
    pub fn exec(&mut self, kind: &StatementKind) -> Done {
        use StatementKind as K;
        match kind {
            K::Vm { vm_type, name } => self.create_vm(*vm_type, name),
            K::Use { vm } => self.use_vm(vm),
            K::Destroy { vm } => self.destroy(vm),
            K::Repeat { .. } => done(
                Outcome::Errno(Errno::EINVAL),
                "a `repeat` runs as a whole line",
            ),
            K::Gmem { name, size, flags } => {
                let i = match self.cur() {
                    Ok(i) => i,
                    Err(d) => return d,
                };
                let id = self.vm();
                match self.with_pages(i, || vm::gmem_create(id, *size, *flags)) {
                    Ok(g) => {
                        self.names.insert(name.clone(), Obj::Gmem { id: g, vm: i });
                        done(Outcome::Ok, format!("gmem handle {}", g.0))
                    }
                    Err(e) => {
                        self.names.remove(name);
                        errno(e)
                    }
                }
            }
            K::Slot {
                name,
                gpa,
                size,
                gmem,
                uaddr,
                flags,
            } => {
                let i = match self.cur() {
                    Ok(i) => i,
                    Err(d) => return d,
                };
                let binding = match gmem {
                    Some((g, off)) => match self.gmem(g) {
                        Ok((id, _)) => Some((id, *off)),
                        Err(d) => return d,
                    },
                    None => None,
                };
                let spec = SlotSpec {
                    gpa: *gpa,
                    size: *size,
                    gmem: binding,
                    uaddr: *uaddr,
                    flags: *flags,
                };
                let id = self.vm();
                match self.with_pages(i, || vm::memslot_create(id, &spec)) {
                    Ok(s) => {
                        self.names.insert(name.clone(), Obj::Slot { id: s, vm: i });
                        done(Outcome::Ok, format!("slot id {}", s.0))
                    }
                    Err(e) => {
                        self.names.remove(name);
                        errno(e)
                    }
                }
            }
            K::Attr { private, gpa, size } => {
                let i = match self.cur() {
                    Ok(i) => i,
                    Err(d) => return d,
                };
                let id = self.vm();
                match self.with_pages(i, || vm::set_attributes(id, *gpa, *size, *private)) {
                    Ok(()) => done(Outcome::Ok, "attributes set"),
                    Err(e) => errno(e),
                }
            }
            K::Convert {
                gmem,
                to,
                offset,
                size,
                mode,
            } => {
                let (g, i) = match self.gmem(gmem) {
                    Ok(g) => g,
                    Err(d) => return d,
                };
                let mut off = 0;
                let r = self.with_pages(i, || {
                    vm::convert_with(g, *offset, *size, *to, *mode).map_err(|(e, o)| {
                        off = o;
                        e
                    })
                });
                match r {
                    Ok(()) => done(Outcome::Ok, "converted"),
                    Err(Errno::EAGAIN) => done(
                        Outcome::Eagain(off),
                        format!("pinned page at offset 0x{off:x}"),
                    ),
                    Err(e) => errno(e),
                }
            }
            K::Punch { gmem, offset, size } => {
                let (g, i) = match self.gmem(gmem) {
                    Ok(g) => g,
                    Err(d) => return d,
                };
                match self.with_pages(i, || vm::punch(g, *offset, *size)) {
                    Ok(()) => done(Outcome::Ok, "hole punched"),
                    Err(e) => errno(e),
                }
            }
            K::HostRead { target, offset } => self.host_access(target, *offset, None),
            K::HostWrite {
                target,
                offset,
                value,
            } => self.host_access(target, *offset, Some(*value)),
            K::HostRawRead { gmem, offset } => {
                let pa = match self.gmem_pa(gmem, *offset) {
                    Ok(pa) => pa,
                    Err(d) => return d,
                };
                match probe_read(pa as usize) {
                    Ok(b) => done(
                        Outcome::Byte(b),
                        format!("raw read of pa 0x{pa:x} went through"),
                    ),
                    Err(f) => done(
                        Outcome::Abort,
                        format!("stage-2 abort at pa 0x{pa:x} (ESR 0x{:x})", f.esr),
                    ),
                }
            }
            K::HostPin { gmem, offset } => {
                let (g, i) = match self.gmem(gmem) {
                    Ok(g) => g,
                    Err(d) => return d,
                };
                match self.with_pages(i, || vm::pin(g, *offset)) {
                    Ok(()) => done(Outcome::Ok, "pinned"),
                    Err(Errno::EFAULT) => done(Outcome::Sigbus, "pin refused (SIGBUS)"),
                    Err(e) => errno(e),
                }
            }
            K::HostUnpin { gmem, offset } => match self.gmem(gmem) {
                Ok((g, _)) => match vm::unpin(g, *offset) {
                    Ok(()) => done(Outcome::Ok, "unpinned"),
                    Err(e) => errno(e),
                },
                Err(d) => d,
            },
            K::HostForward { mode } => match self.cur() {
                Ok(i) => {
                    if let Ok(v) = self.rec(i) {
                        v.forward = *mode;
                    }
                    done(
                        Outcome::Ok,
                        format!("this VM's forwarded MEM_SHARE / MEM_UNSHARE: {mode:?}"),
                    )
                }
                Err(d) => d,
            },
            K::HostSharePage { gpa, pages } => self.share_page(*gpa, *pages),
            K::HostReadShared { gpa } => self.shared_access(*gpa, None),
            K::HostWriteShared { gpa, value } => self.shared_access(*gpa, Some(*value)),
            K::HostRawWrite {
                gmem,
                offset,
                value,
            } => self.raw_write(gmem, *offset, *value),
            K::HostRawReadHyp { offset } => Self::hyp_access(*offset, None),
            K::HostRawWriteHyp { offset, value } => Self::hyp_access(*offset, Some(*value)),
            K::HostDmaWrite {
                gmem,
                offset,
                value,
            } => self.dma_write(gmem, *offset, *value),
            K::HostCall { call, args } => self.host_call(*call, args),
            K::HostSmc { func, args } => Self::smc(*func, *args),
            K::Pool { spec } => self.pool(*spec),
            K::GuestRead { gpa, shared } => self.guest_access(*gpa, *shared, None),
            K::GuestWrite { gpa, value, shared } => self.guest_access(*gpa, *shared, Some(*value)),
            K::GuestShare { gpa, pages } => self.guest_range(MEM_SHARE, *gpa, *pages),
            K::GuestUnshare { gpa, pages } => self.guest_range(MEM_UNSHARE, *gpa, *pages),
            K::GuestRelinquish { gpa, pages } => self.guest_range(MEM_RELINQUISH, *gpa, *pages),
            K::GuestMmioGuard { op, gpa, pages } => self.mmio_guard(*op, *gpa, *pages),
            K::RegWrite { world, reg, value } => {
                self.world_op(*world, WorldOp::Write(*reg, *value))
            }
            K::RegRead { world, reg } => self.world_op(*world, WorldOp::Read(*reg)),
            K::Exec { world, insn } => self.world_op(*world, WorldOp::Exec(*insn)),
            K::GuestSpin => self.spin(),
        }
    }

    /// Runs one top-level statement of a file, prints its line and counts it. With `check`, the
    /// invariant checker runs after it (and every [`CHECK_EVERY`] iterations of a `repeat`).
    pub fn run_statement(&mut self, st: &Statement, check: bool, counts: &mut Counts) {
        let (pass, got, mut evidence) = match &st.kind {
            StatementKind::Repeat { count, body } => self.run_repeat(*count, body, check),
            _ => {
                let d = self.exec(&st.kind);
                (st.check(&d.outcome), d.outcome.to_string(), d.evidence)
            }
        };
        let mut pass = pass;
        if check {
            if let Err(e) = invariants() {
                pass = false;
                evidence.push_str("; ");
                evidence.push_str(&e);
            } else {
                evidence.push_str("; invariants hold");
            }
        }
        let expected = match (&st.kind, &st.expect) {
            (StatementKind::Repeat { .. }, _) => "each as written".to_string(),
            (_, Some(e)) => e.to_string(),
            (k, None) => k.default_expectation().to_string(),
        };
        let verdict = match (pass, st.is_check()) {
            (true, true) => "ok  ",
            (true, false) => "    ",
            (false, _) => "FAIL",
        };
        board::println!(
            "{} {:>3}: {:<60} expected {:<14} got {:<14} [{}]",
            verdict,
            st.line,
            st.text,
            expected,
            got,
            evidence
        );
        if !pass {
            counts.failed += 1;
        } else if st.is_check() {
            counts.passed += 1;
        }
    }

    /// A `repeat`: every run of every statement must hold; the line shows how many runs gave
    /// each result.
    fn run_repeat(
        &mut self,
        count: u64,
        body: &[Statement],
        check: bool,
    ) -> (bool, String, String) {
        let mut tallies: Vec<Tally> = body.iter().map(|_| Tally::default()).collect();
        let mut pass = true;
        let mut first_failure = None;
        let mut checks = 0;
        for run in 1..=count {
            for (st, tally) in body.iter().zip(tallies.iter_mut()) {
                let d = self.exec(&st.kind);
                if !st.check(&d.outcome) {
                    pass = false;
                    first_failure.get_or_insert_with(|| {
                        format!(
                            "first failure: run {run}, `{}` gave {} [{}]",
                            st.text, d.outcome, d.evidence
                        )
                    });
                }
                tally.add(d.outcome);
            }
            if check && run % CHECK_EVERY == 0 && run < count {
                checks += 1;
                if let Err(e) = invariants() {
                    pass = false;
                    first_failure.get_or_insert_with(|| format!("after run {run}: {e}"));
                }
            }
        }
        let got = tallies
            .iter()
            .map(Tally::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let mut evidence = format!("{count} runs");
        if checks > 0 {
            evidence.push_str(&format!(", invariants checked {checks} times inside"));
        }
        if let Some(f) = first_failure {
            evidence.push_str("; ");
            evidence.push_str(&f);
        }
        (pass, got, evidence)
    }

    /// Tears every VM down and gives its pages back to the host allocator.
    pub fn finish(mut self) {
        for i in 0..self.vms.len() {
            if self.vms.get(i).is_some_and(VmRec::alive) {
                let name = self.vms.get(i).map(|v| v.name.clone()).unwrap_or_default();
                // Under its own name only if that name still means this VM.
                if matches!(self.names.get(&name), Some(Obj::Vm(j)) if *j == i) {
                    let _ = self.destroy(&name);
                } else if let Some(v) = self.vms.get_mut(i) {
                    if vm::vm_destroy(v.id).is_ok() {
                        v.guest = None;
                        self.release(i);
                    }
                }
            }
        }
    }
}

/// What a world does in `reg-write`, `reg-read` and `exec`.
#[derive(Clone, Copy)]
enum WorldOp {
    Write(WorldReg, u64),
    Read(WorldReg),
    Exec(Insn),
}

/// How many runs of one statement gave each result.
#[derive(Default)]
struct Tally {
    seen: Vec<(Outcome, u64)>,
    others: u64,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        if let Some(e) = self.seen.iter_mut().find(|(s, _)| *s == o) {
            e.1 += 1;
        } else if self.seen.len() < TALLY_MAX {
            self.seen.push((o, 1));
        } else {
            self.others += 1;
        }
    }
}

impl core::fmt::Display for Tally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (k, (o, n)) in self.seen.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{o} ({n})")?;
        }
        if self.others > 0 {
            write!(f, ", others ({})", self.others)?;
        }
        Ok(())
    }
}

/// The hyp's invariant checker: `Err` describes a violation.
fn invariants() -> Result<(), String> {
    match vm::check_invariants() {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} INVARIANT VIOLATIONS")),
        Err(e) => Err(format!("invariant check failed: {e}")),
    }
}

/// Free loose pages and free 2 MiB chunks of a VM's pool (`PoolStats`).
fn pool_stats(id: VmId) -> Result<(u64, u64), Errno> {
    hvc::call(HostCall::PoolStats, [id.0, 0, 0, 0, 0, 0]).map(|r| (r[0], r[1]))
}

/// The host's side of a guest MEM_SHARE / MEM_UNSHARE the hyp validated and forwarded: convert
/// the gmem where it tracks shareability (through `GuestConvert`, which only accepts the range the
/// guest asked for), set the VM's memory attributes to match, and answer the guest
/// (`x0`, `x1` = pages done). A pinned page (`EAGAIN`) fails the call.
pub fn forward_hypercall(vm_id: VmId, vcpu: VcpuId, func: u64, args: [u64; 3]) -> (u64, u64) {
    forward_with(ForwardMode::Honest, vm_id, vcpu, func, args)
}

/// As [`forward_hypercall`], the way `mode` says: `refuse` completes the call without carrying
/// it out, with an error; `lie` completes it without carrying it out, claiming SUCCESS for every
/// page. What the guest then sees is what the hyp decided (Trust rule 2).
pub fn forward_with(
    mode: ForwardMode,
    vm_id: VmId,
    vcpu: VcpuId,
    func: u64,
    args: [u64; 3],
) -> (u64, u64) {
    let [ipa, pages, _] = args;
    if func != MEM_SHARE && func != MEM_UNSHARE {
        return (SMCCC_NOT_SUPPORTED, 0);
    }
    match mode {
        ForwardMode::Refuse => return (SMCCC_INVALID_PARAMETER, 0),
        ForwardMode::Lie => return (SMCCC_SUCCESS, pages.max(1)),
        ForwardMode::Honest => {}
    }
    match vm::guest_convert(vcpu) {
        Ok(done) => {
            let gpa = ipa & !COCO_SHARED_BIT;
            let _ = vm::set_attributes(vm_id, gpa, pages * PAGE_SIZE, func == MEM_UNSHARE);
            (SMCCC_SUCCESS, done)
        }
        Err((e, off)) => {
            log::debug!("guest conversion refused: {e} at offset 0x{off:x}");
            (SMCCC_INVALID_PARAMETER, 0)
        }
    }
}

/// Runs a parsed scenario; prints one line per statement; returns the counts. With `check`, the
/// hyp's ownership invariant checker runs after every statement and a violation fails it.
pub fn run(name: &str, sc: &Scenario, pages: &mut HostPages, check: bool) -> Counts {
    let mut counts = Counts::default();
    board::println!("== scenario {name} (vm {})", sc.vm.name());
    let mut runner = Runner::empty(pages);
    for st in &sc.statements {
        runner.run_statement(st, check, &mut counts);
    }
    runner.finish();
    counts
}
