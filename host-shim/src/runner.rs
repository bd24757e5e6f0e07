//! The scenario runner (`../shared/spec/SCENARIOS.md`): one VM with one vCPU per file, each
//! statement run for real against the hyp, one line per statement with what was expected, what
//! happened and the evidence (the physical page that served a guest access, or the exit it took;
//! for a refused host access, what refused it).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};

use abi::cmd::{OP_MEM_RANGE, STATUS_ABORTED, STATUS_OK};
use abi::flags::{MemoryFaultFlags, VmType};
use abi::guest::{
    MEM_RELINQUISH, MEM_SHARE, MEM_UNSHARE, SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED,
    SMCCC_SUCCESS,
};
use abi::host::HostCall;
use abi::{Errno, PAGE_SIZE};
use scenario::{HostTarget, Outcome, Scenario, StatementKind};

use crate::driver::{GuestDriver, StepReport};
use crate::exceptions::{probe_read, probe_write};
use crate::hvc;
use crate::pages::HostPages;
use crate::vm::{self, GmemId, SlotId, SlotSpec, VcpuId, VmId};

/// Pages donated to a scenario VM's pool up front (more on demand).
const INITIAL_POOL: u64 = 128;
/// The coco shared alias bit (IPA bit 39 of the 40-bit IPA space).
pub const COCO_SHARED_BIT: u64 = 1 << 39;

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

/// One running scenario.
pub struct Runner<'p> {
    vm_type: VmType,
    vm: VmId,
    guest: GuestDriver,
    gmems: BTreeMap<String, GmemId>,
    slots: BTreeMap<String, SlotId>,
    pages: &'p mut HostPages,
}

impl<'p> Runner<'p> {
    /// Creates the scenario's VM, donates a pool and loads the step guest.
    pub fn new(vm_type: VmType, pages: &'p mut HostPages) -> Result<Self, Errno> {
        let vm = vm::vm_create(vm_type)?;
        let pool = pages
            .alloc_contiguous(INITIAL_POOL, PAGE_SIZE)
            .ok_or(Errno::ENOMEM)?;
        vm::donate(vm, pool, INITIAL_POOL)?;
        let guest = GuestDriver::load(vm, pages)?;
        Ok(Self {
            vm_type,
            vm,
            guest,
            gmems: BTreeMap::new(),
            slots: BTreeMap::new(),
            pages,
        })
    }

    /// The VM under test.
    pub fn vm(&self) -> VmId {
        self.vm
    }

    fn gmem(&self, name: &str) -> Result<GmemId, Errno> {
        self.gmems.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn ipa(&self, gpa: u64, shared: bool) -> u64 {
        if shared && self.vm_type == VmType::Coco {
            gpa | COCO_SHARED_BIT
        } else {
            gpa
        }
    }

    /// Host access through a page the hyp handed out (`map` = the mmap-view or uaddr fault).
    fn host_access(&mut self, target: &HostTarget, offset: u64, write: Option<u8>) -> Done {
        let mapped = match target {
            HostTarget::Gmem(name) => match self.gmem(name) {
                Ok(g) => vm::map_gmem(g, offset, write.is_some()),
                Err(e) => Err(e),
            },
            HostTarget::Uaddr(name) => match self.slots.get(name) {
                Some(&s) => vm::map_uaddr(self.vm, s, offset, write.is_some()),
                None => Err(Errno::ENOENT),
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

    fn guest_access(&mut self, gpa: u64, shared: bool, write: Option<u8>) -> Done {
        let ipa = self.ipa(gpa, shared);
        let (vm_id, vcpu) = (self.vm, self.guest.vcpu);
        let handler = &mut |f, a| forward_hypercall(vm_id, vcpu, f, a);
        let r = match write {
            Some(v) => self.guest.write(ipa, v, self.pages, handler),
            None => self.guest.read(ipa, self.pages, handler),
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => return done(Outcome::Errno(e), format!("the guest could not run: {e}")),
        };
        self.access_outcome(ipa, write.is_none(), &r)
    }

    fn access_outcome(&self, ipa: u64, read: bool, r: &StepReport) -> Done {
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
        if let Some((esr, elr, far)) = r.exception {
            return done(
                Outcome::Abort,
                format!("guest exception ESR 0x{esr:x} ELR 0x{elr:x} FAR 0x{far:x}"),
            );
        }
        let served = match vm_walk(self.vm, ipa) {
            Ok(pa) => format!("served by pa 0x{pa:x}"),
            Err(_) => "no stage-2 mapping".to_string(),
        };
        match r.status {
            Some(STATUS_OK) if read => done(Outcome::Byte(r.results[0] as u8), served),
            Some(STATUS_OK) => done(Outcome::Ok, served),
            Some(STATUS_ABORTED) => done(Outcome::Abort, "guest took an abort"),
            s => done(Outcome::Abort, format!("guest status {s:?}")),
        }
    }

    fn guest_range(&mut self, func: u64, gpa: u64, pages: u64) -> Done {
        let (vm_id, vcpu) = (self.vm, self.guest.vcpu);
        let handler = &mut |f, a| forward_hypercall(vm_id, vcpu, f, a);
        let r = self
            .guest
            .step(OP_MEM_RANGE, [func, gpa, pages, 0], self.pages, handler);
        match r {
            Ok(r) if r.status == Some(STATUS_OK) => {
                let ev = format!("x0 = {:#x}, {} pages done", r.results[0], r.results[1]);
                match r.results[0] {
                    SMCCC_SUCCESS => done(Outcome::Ok, ev),
                    SMCCC_INVALID_PARAMETER => done(Outcome::InvalidParameter, ev),
                    SMCCC_NOT_SUPPORTED => done(Outcome::NotSupported, ev),
                    _ => done(Outcome::Errno(Errno::EINVAL), ev),
                }
            }
            Ok(r) => self.access_outcome(gpa, false, &r),
            Err(e) => done(Outcome::Errno(e), "the guest could not run"),
        }
    }

    /// Runs one statement.
    pub fn exec(&mut self, kind: &StatementKind) -> Done {
        match kind {
            StatementKind::Gmem { name, size, flags } => {
                match vm::gmem_create(self.vm, *size, *flags) {
                    Ok(g) => {
                        self.gmems.insert(name.clone(), g);
                        done(Outcome::Ok, format!("gmem handle {}", g.0))
                    }
                    Err(e) => errno(e),
                }
            }
            StatementKind::Slot {
                name,
                gpa,
                size,
                gmem,
                uaddr,
                flags,
            } => {
                let binding = match gmem {
                    Some((g, off)) => match self.gmem(g) {
                        Ok(id) => Some((id, *off)),
                        Err(e) => return errno(e),
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
                match vm::memslot_create(self.vm, &spec) {
                    Ok(s) => {
                        self.slots.insert(name.clone(), s);
                        done(Outcome::Ok, format!("slot id {}", s.0))
                    }
                    Err(e) => errno(e),
                }
            }
            StatementKind::Attr { private, gpa, size } => {
                match vm::set_attributes(self.vm, *gpa, *size, *private) {
                    Ok(()) => done(Outcome::Ok, "attributes set"),
                    Err(e) => errno(e),
                }
            }
            StatementKind::Convert {
                gmem,
                to,
                offset,
                size,
                mode,
            } => {
                let g = match self.gmem(gmem) {
                    Ok(g) => g,
                    Err(e) => return errno(e),
                };
                match vm::convert_with(g, *offset, *size, *to, *mode) {
                    Ok(()) => done(Outcome::Ok, "converted"),
                    Err((Errno::EAGAIN, off)) => done(
                        Outcome::Eagain(off),
                        format!("pinned page at offset 0x{off:x}"),
                    ),
                    Err((e, _)) => errno(e),
                }
            }
            StatementKind::Punch { gmem, offset, size } => {
                match self.gmem(gmem).and_then(|g| vm::punch(g, *offset, *size)) {
                    Ok(()) => done(Outcome::Ok, "hole punched"),
                    Err(e) => errno(e),
                }
            }
            StatementKind::HostRead { target, offset } => self.host_access(target, *offset, None),
            StatementKind::HostWrite {
                target,
                offset,
                value,
            } => self.host_access(target, *offset, Some(*value)),
            StatementKind::HostRawRead { gmem, offset } => {
                let pa = match self.gmem(gmem).and_then(|g| gmem_phys(g, *offset)) {
                    Ok(pa) => pa,
                    Err(e) => return errno(e),
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
            StatementKind::HostPin { gmem, offset } => {
                match self.gmem(gmem).and_then(|g| vm::pin(g, *offset)) {
                    Ok(()) => done(Outcome::Ok, "pinned"),
                    Err(Errno::EFAULT) => done(Outcome::Sigbus, "pin refused (SIGBUS)"),
                    Err(e) => errno(e),
                }
            }
            StatementKind::HostUnpin { gmem, offset } => {
                match self.gmem(gmem).and_then(|g| vm::unpin(g, *offset)) {
                    Ok(()) => done(Outcome::Ok, "unpinned"),
                    Err(e) => errno(e),
                }
            }
            StatementKind::GuestRead { gpa, shared } => self.guest_access(*gpa, *shared, None),
            StatementKind::GuestWrite { gpa, value, shared } => {
                self.guest_access(*gpa, *shared, Some(*value))
            }
            StatementKind::GuestShare { gpa, pages } => self.guest_range(MEM_SHARE, *gpa, *pages),
            StatementKind::GuestUnshare { gpa, pages } => {
                self.guest_range(MEM_UNSHARE, *gpa, *pages)
            }
            StatementKind::GuestRelinquish { gpa, pages } => {
                self.guest_range(MEM_RELINQUISH, *gpa, *pages)
            }
            // The opening `vm` is the runner's own VM; the hostile statements come next.
            StatementKind::Vm { .. } => done(Outcome::Ok, "the VM under test"),
            _ => done(Outcome::Errno(Errno::ENOSYS), "not run by this runner yet"),
        }
    }

    /// Tears the VM down and gives its pages back to the host allocator.
    pub fn finish(self) {
        let _ = vm::vm_destroy(self.vm);
    }
}

/// The host's side of a guest MEM_SHARE / MEM_UNSHARE the hyp validated and forwarded: convert
/// the gmem where it tracks shareability (through `GuestConvert`, which only accepts the range the
/// guest asked for), set the VM's memory attributes to match, and answer the guest
/// (`x0`, `x1` = pages done). A pinned page (`EAGAIN`) fails the call.
pub fn forward_hypercall(vm_id: VmId, vcpu: VcpuId, func: u64, args: [u64; 3]) -> (u64, u64) {
    let [ipa, pages, _] = args;
    if func != MEM_SHARE && func != MEM_UNSHARE {
        return (SMCCC_NOT_SUPPORTED, 0);
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

fn vm_walk(vm: VmId, ipa: u64) -> Result<u64, Errno> {
    vm::walk(vm, ipa).map(|(pa, _)| pa)
}

fn gmem_phys(g: GmemId, offset: u64) -> Result<u64, Errno> {
    hvc::call(HostCall::GmemPhys, [g.0, offset, 0, 0, 0, 0]).map(|r| r[0])
}

/// Runs a parsed scenario; prints one line per statement; returns the counts. With `check`, the
/// hyp's ownership invariant checker runs after every statement and a violation fails it.
pub fn run(name: &str, sc: &Scenario, pages: &mut HostPages, check: bool) -> Counts {
    let mut counts = Counts::default();
    board::println!("== scenario {name} (vm {})", sc.vm.name());
    let mut runner = match Runner::new(sc.vm, pages) {
        Ok(r) => r,
        Err(e) => {
            board::println!("   cannot create the VM: {e}");
            counts.failed = sc.statements.len().max(1);
            return counts;
        }
    };
    for st in sc.statements.iter().skip(1) {
        let mut d = runner.exec(&st.kind);
        let mut pass = st.check(&d.outcome);
        if check {
            match vm::check_invariants() {
                Ok(0) => d.evidence.push_str("; invariants hold"),
                Ok(n) => {
                    pass = false;
                    d.evidence.push_str(&format!("; {n} INVARIANT VIOLATIONS"));
                }
                Err(e) => {
                    pass = false;
                    d.evidence
                        .push_str(&format!("; invariant check failed: {e}"));
                }
            }
        }
        let expected = match &st.expect {
            Some(e) => format!("{e}"),
            None => st.kind.default_expectation().to_string(),
        };
        board::println!(
            "{} {:>3}: {:<60} expected {:<14} got {:<14} [{}]",
            if pass { "ok  " } else { "FAIL" },
            st.line,
            st.text,
            expected,
            format!("{}", d.outcome),
            d.evidence
        );
        if pass {
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    runner.finish();
    counts
}
