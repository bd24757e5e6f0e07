//! Typed wrappers over the host calls that create and drive VMs: what Linux KVM's ioctls are to
//! a VMM. Every call goes through `abi`; the hyp has the last word on every argument.

use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::{ExitReason, HostCall, SLOT_UADDR_SHIFT};
use abi::{Errno, PAGE_SIZE};
use alloc::vec::Vec;

use crate::pages::HostPages;

use crate::hvc;

/// A VM handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmId(pub u64);
/// A gmem handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmemId(pub u64);
/// A memslot id (per VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotId(pub u64);
/// A vCPU handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuId(pub u64);

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Mmio {
        ipa: u64,
        size: u64,
        write: bool,
        data: u64,
    },
    MemoryFault {
        gpa: u64,
        size: u64,
        flags: u64,
    },
    NeedPages {
        pages: u64,
    },
    Hypercall {
        func: u64,
        args: [u64; 3],
    },
    /// The guest took an exception it could not take itself: its class (ESR EC) only.
    GuestException {
        class: u64,
    },
    PageFault {
        ipa: u64,
        write: bool,
    },
    /// A physical interrupt brought `VcpuRun` back (the host's timer).
    Interrupt,
}

/// Counters the hyp keeps for a VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub faults_served: u64,
    pub exits: u64,
    pub pool_free: u64,
    pub mmio_exits: u64,
    pub memory_fault_exits: u64,
    /// Faults served through a memslot's userspace_addr (the rest went through gmem).
    pub faults_via_uaddr: u64,
}

fn call(c: HostCall, a: [u64; 6]) -> Result<[u64; 4], Errno> {
    hvc::call(c, a)
}

/// RAM base and size, as the hyp reports them.
pub fn ram() -> Result<(u64, u64), Errno> {
    let r = call(HostCall::Version, [0; 6])?;
    Ok((r[1], r[2]))
}

/// The pages `VmCreate` and `VcpuCreate` donate come from the top of RAM
/// ([`crate::CREATE_REGION`]); what each VM was given comes back when it is destroyed.
struct CreatePages {
    pages: HostPages,
    /// `(vm, first page, pages)` of every creation donation of a live VM.
    given: Vec<(u64, u64, u64)>,
    /// Runs of `VM_CREATE_PAGES` pages given back.
    runs: Vec<u64>,
}

impl CreatePages {
    fn free(&mut self, pa: u64, n: u64) {
        if n == abi::host::VM_CREATE_PAGES {
            self.runs.push(pa);
        } else {
            self.pages.free_run(pa, n);
        }
    }
}

static CREATE: spin::Mutex<Option<CreatePages>> = spin::Mutex::new(None);

/// `n` contiguous pages of the creation region for `vm` (0 while the VM does not exist yet).
fn create_pages(n: u64) -> Result<u64, Errno> {
    let mut c = CREATE.lock();
    if c.is_none() {
        let (base, size) = ram()?;
        *c = Some(CreatePages {
            pages: HostPages::new(crate::free_memory_end(base, size), base + size),
            given: Vec::new(),
            runs: Vec::new(),
        });
    }
    let c = c.as_mut().ok_or(Errno::ENOMEM)?;
    if n == 1 {
        c.pages.alloc().ok_or(Errno::ENOMEM)
    } else if let Some(pa) = (n == abi::host::VM_CREATE_PAGES)
        .then(|| c.runs.pop())
        .flatten()
    {
        Ok(pa)
    } else {
        c.pages.alloc_contiguous(n, PAGE_SIZE).ok_or(Errno::ENOMEM)
    }
}

/// Records a creation donation to `vm`, or (`vm` = None: the call failed) takes it back.
fn settle_create_pages(vm: Option<u64>, pa: u64, n: u64) {
    if let Some(c) = CREATE.lock().as_mut() {
        match vm {
            Some(vm) => c.given.push((vm, pa, n)),
            None => c.free(pa, n),
        }
    }
}

/// Creates a VM, donating the [`abi::host::VM_CREATE_PAGES`] pages `VmCreate` takes.
pub fn vm_create(t: VmType) -> Result<VmId, Errno> {
    vm_create_raw(t as u64)
}

/// Destroys a VM: -> pages returned to the host (its creation donations come back to the
/// creation region).
pub fn vm_destroy(vm: VmId) -> Result<u64, Errno> {
    // The hyp tears a VM down in bounded steps: call until it says it is done.
    let mut n = 0u64;
    loop {
        let r = call(HostCall::VmDestroy, [vm.0, 0, 0, 0, 0, 0])?;
        n += r[0];
        if r[1] == 0 {
            break;
        }
    }
    release_create_pages(vm);
    Ok(n)
}

/// After a VM is gone (every `VmDestroy` step made, by [`vm_destroy`] or by hand): its
/// creation donations are the creation region's again -> how many pages they were.
pub fn release_create_pages(vm: VmId) -> u64 {
    let mut pages = 0;
    if let Some(c) = CREATE.lock().as_mut() {
        let mut back = Vec::new();
        c.given.retain(|&(v, pa, n)| {
            if v == vm.0 {
                back.push((pa, n));
            }
            v != vm.0
        });
        for (pa, n) in back {
            pages += n;
            c.free(pa, n);
        }
    }
    pages
}

pub fn gmem_create(vm: VmId, size: u64, flags: GmemFlags) -> Result<GmemId, Errno> {
    gmem_create_raw(vm, size, flags.bits())
}

pub fn gmem_create_raw(vm: VmId, size: u64, flags: u64) -> Result<GmemId, Errno> {
    Ok(GmemId(
        call(HostCall::GmemCreate, [vm.0, size, flags, 0, 0, 0])?[0],
    ))
}

pub fn gmem_destroy(g: GmemId) -> Result<(), Errno> {
    call(HostCall::GmemDestroy, [g.0, 0, 0, 0, 0, 0]).map(|_| ())
}

/// A memslot description.
#[derive(Clone, Copy, Debug)]
pub struct SlotSpec {
    pub gpa: u64,
    pub size: u64,
    pub gmem: Option<(GmemId, u64)>,
    pub uaddr: UserspaceAddr,
    pub flags: MemslotFlags,
}

pub fn memslot_create(vm: VmId, s: &SlotSpec) -> Result<SlotId, Errno> {
    let (g, off) = s.gmem.map_or((0, 0), |(g, o)| (g.0, o));
    let packed = s.flags.bits() | ((s.uaddr as u64) << SLOT_UADDR_SHIFT);
    Ok(SlotId(
        call(
            HostCall::MemslotCreate,
            [vm.0, s.gpa, s.size, g, off, packed],
        )?[0],
    ))
}

pub fn memslot_delete(vm: VmId, slot: SlotId) -> Result<(), Errno> {
    call(HostCall::MemslotDelete, [vm.0, slot.0, 0, 0, 0, 0]).map(|_| ())
}

pub fn set_attributes(vm: VmId, gpa: u64, size: u64, private: bool) -> Result<(), Errno> {
    let attrs = if private {
        abi::flags::MemoryAttributes::PRIVATE.bits()
    } else {
        0
    };
    call(
        HostCall::SetMemoryAttributes,
        [vm.0, gpa, size, attrs, 0, 0],
    )
    .map(|_| ())
}

/// A host-initiated conversion. `Err((errno, error_offset))`.
pub fn convert(
    g: GmemId,
    offset: u64,
    size: u64,
    to: ConvertTo,
    mode: ContentMode,
) -> Result<(), (Errno, u64)> {
    convert_with(g, offset, size, to, Some(mode))
}

/// A host-initiated conversion with an optional content mode (`None`: the rules' default).
pub fn convert_with(
    g: GmemId,
    offset: u64,
    size: u64,
    to: ConvertTo,
    mode: Option<ContentMode>,
) -> Result<(), (Errno, u64)> {
    let mode = mode.map_or(abi::host::CONVERT_MODE_DEFAULT, |m| m as u64);
    let r = hvc::raw(
        HostCall::Convert.id(),
        [g.0, offset, size, to as u64, mode, 0],
    );
    match Errno::from_reg(r[0]) {
        Some(e) => Err((e, r[1])),
        None => Ok(()),
    }
}

pub fn punch(g: GmemId, offset: u64, size: u64) -> Result<(), Errno> {
    call(HostCall::PunchHole, [g.0, offset, size, 0, 0, 0]).map(|_| ())
}

pub fn pin(g: GmemId, offset: u64) -> Result<(), Errno> {
    call(HostCall::HostPin, [g.0, offset, 0, 0, 0, 0]).map(|_| ())
}

pub fn unpin(g: GmemId, offset: u64) -> Result<(), Errno> {
    call(HostCall::HostUnpin, [g.0, offset, 0, 0, 0, 0]).map(|_| ())
}

/// The host's mmap-view fault on a gmem page: -> the physical page to touch.
pub fn map_gmem(g: GmemId, offset: u64, write: bool) -> Result<u64, Errno> {
    Ok(call(
        HostCall::HostMapGmem,
        [g.0, offset, u64::from(write), 0, 0, 0],
    )?[0])
}

/// The host's fault on a memslot's userspace_addr: -> the physical page to touch.
pub fn map_uaddr(vm: VmId, slot: SlotId, offset: u64, write: bool) -> Result<u64, Errno> {
    Ok(call(
        HostCall::HostMapUaddr,
        [vm.0, slot.0, offset, u64::from(write), 0, 0],
    )?[0])
}

/// Host pages to the VM's pool: -> free pages in the pool afterwards.
pub fn donate(vm: VmId, pa: u64, pages: u64) -> Result<u64, Errno> {
    Ok(call(HostCall::Donate, [vm.0, pa, pages, 0, 0, 0])?[0])
}

pub fn map_host_shared(vm: VmId, ipa: u64, pa: u64, pages: u64) -> Result<(), Errno> {
    call(HostCall::MapHostShared, [vm.0, ipa, pa, pages, 0, 0]).map(|_| ())
}

/// Creates a vCPU, donating the [`abi::host::VCPU_CREATE_PAGES`] page `VcpuCreate` takes.
pub fn vcpu_create(vm: VmId, entry: u64, arg: u64) -> Result<VcpuId, Errno> {
    let n = abi::host::VCPU_CREATE_PAGES;
    let pa = create_pages(n)?;
    match call(HostCall::VcpuCreate, [vm.0, entry, arg, pa, n, 0]) {
        Ok(r) => {
            settle_create_pages(Some(vm.0), pa, n);
            Ok(VcpuId(r[0]))
        }
        Err(e) => {
            settle_create_pages(None, pa, n);
            Err(e)
        }
    }
}

pub fn stats(vm: VmId) -> Result<Stats, Errno> {
    let r6 = hvc::raw6(HostCall::VmStats.id(), [vm.0, 0, 0, 0, 0, 0]);
    if let Some(e) = Errno::from_reg(r6[0]) {
        return Err(e);
    }
    Ok(Stats {
        faults_served: r6[0],
        exits: r6[1],
        pool_free: r6[2],
        mmio_exits: r6[3],
        memory_fault_exits: r6[4],
        faults_via_uaddr: r6[5],
    })
}

/// Runs a vCPU; `c0`, `c1` complete the previous exit (see `abi::host::ExitReason`).
pub fn run(vcpu: VcpuId, c0: u64, c1: u64) -> Result<Exit, Errno> {
    let r = hvc::raw6(HostCall::VcpuRun.id(), [vcpu.0, c0, c1, 0, 0, 0]);
    if let Some(e) = Errno::from_reg(r[0]) {
        return Err(e);
    }
    let reason = ExitReason::from_u64(r[0]).ok_or(Errno::EINVAL)?;
    Ok(match reason {
        ExitReason::Mmio => Exit::Mmio {
            ipa: r[1],
            size: r[2],
            write: r[3] != 0,
            data: r[4],
        },
        ExitReason::MemoryFault => Exit::MemoryFault {
            gpa: r[1],
            size: r[2],
            flags: r[3],
        },
        ExitReason::NeedPages => Exit::NeedPages { pages: r[1] },
        ExitReason::Hypercall => Exit::Hypercall {
            func: r[1],
            args: [r[2], r[3], r[4]],
        },
        ExitReason::GuestException => Exit::GuestException { class: r[1] },
        ExitReason::PageFault => Exit::PageFault {
            ipa: r[1],
            write: r[2] != 0,
        },
        ExitReason::Interrupt => Exit::Interrupt,
    })
}

/// `vm_create` with a raw type number (for testing refusals).
pub fn vm_create_raw(t: u64) -> Result<VmId, Errno> {
    let n = abi::host::VM_CREATE_PAGES;
    let pa = create_pages(n)?;
    match call(HostCall::VmCreate, [t, pa, n, 0, 0, 0]) {
        Ok(r) => {
            settle_create_pages(Some(r[0]), pa, n);
            Ok(VmId(r[0]))
        }
        Err(e) => {
            settle_create_pages(None, pa, n);
            Err(e)
        }
    }
}

/// Carries out the guest share/unshare the vCPU's last exit asked for.
/// `Ok(pages)` or `Err((errno, error_offset))`.
pub fn guest_convert(vcpu: VcpuId) -> Result<u64, (Errno, u64)> {
    let r = hvc::raw(HostCall::GuestConvert.id(), [vcpu.0, 0, 0, 0, 0, 0]);
    match Errno::from_reg(r[0]) {
        Some(e) => Err((e, r[1])),
        None => Ok(r[1]),
    }
}

/// Runs the hyp's ownership invariant checker: -> number of violations.
pub fn check_invariants() -> Result<u64, Errno> {
    Ok(call(HostCall::CheckInvariants, [0; 6])?[0])
}

/// Chooses where first-touch faults are served: at EL2 (false) or by the host (true).
pub fn set_fault_mode(vm: VmId, to_host: bool) -> Result<(), Errno> {
    call(
        HostCall::VmSetFaultMode,
        [vm.0, u64::from(to_host), 0, 0, 0, 0],
    )
    .map(|_| ())
}

/// Serves a `PageFault` exit: the hyp maps the page. -> its PA.
pub fn serve_fault(vm: VmId, ipa: u64, write: bool) -> Result<u64, Errno> {
    Ok(call(HostCall::ServeFault, [vm.0, ipa, u64::from(write), 0, 0, 0])?[0])
}

/// The VM's stage-2 translation of `ipa`: (physical address, size of the leaf that maps it).
pub fn walk(vm: VmId, ipa: u64) -> Result<(u64, u64), Errno> {
    let r = call(HostCall::VmWalk, [vm.0, ipa, 0, 0, 0, 0])?;
    Ok((r[0], r[1]))
}
