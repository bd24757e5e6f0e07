//! The guest fault path, from a decoded stage-2 abort to "resume the guest" or an exit to the
//! host: the policy core resolves the fault (routing, mismatch check, `get_pfn` or
//! `get_pfn_no_validate`, validation, a pkvm first touch), ownership moves first, then the
//! stage-2 maps the page or block. Nothing here exits to the host unless the host must act
//! (MMIO, a memory fault, pages wanted).

use abi::host::ExitReason;
use abi::{Errno, PAGE_SIZE};
use hyp_core::{Access, FaultResolution, FaultSource, VmHandle};
use hyp_mem::provider::PageProvider;
use hyp_mem::stage2::{MapError, S2Attrs};

use crate::exit::{Injected, MmioAccess};
use crate::platform::{Platform, VcpuContext};
use crate::run::Step;
use crate::state::{Hyp, Pending};

/// The pool as a guest fault's provider: a data page or chunk only while the table pages the
/// map may need are there too.
struct Gated<'a, R: hyp_mem::pool::Ram> {
    pool: &'a mut hyp_mem::pool::Pool<R>,
    tables: usize,
}

impl<R: hyp_mem::pool::Ram> PageProvider for Gated<'_, R> {
    fn alloc_zeroed_page(&mut self) -> Result<u64, Errno> {
        if !self.pool.can_map_fault(self.tables) {
            return Err(Errno::ENOMEM);
        }
        self.pool.alloc_zeroed_page()
    }
    fn free_page(&mut self, pa: u64) {
        self.pool.free_page(pa);
    }
    fn zero_page(&mut self, pa: u64) {
        self.pool.zero_page(pa);
    }
    fn alloc_zeroed_block(&mut self) -> Result<u64, Errno> {
        if !self.pool.can_map_fault(self.tables) {
            return Err(Errno::ENOMEM);
        }
        self.pool.alloc_zeroed_block()
    }
    fn free_block(&mut self, pa: u64) {
        self.pool.free_block(pa);
    }
    fn may_have_block(&self) -> bool {
        self.pool.may_have_block()
    }
}

/// Pages a fault short of memory asks the host for: its data page and the tables its map may
/// need, less what the pool holds (at least one).
fn pages_wanted<P: Platform>(hyp: &Hyp<P>, h: VmHandle, tables: usize) -> u64 {
    let free = hyp.vms.get(&h.0).map_or(0, |v| v.stage2.mm().free_pages());
    (tables + 1).saturating_sub(free).max(1) as u64
}

/// A guest access the hyp cannot serve (an instruction fetch or an access without a valid
/// syndrome outside every memslot): the guest takes the matching abort at its own EL1 and goes
/// on. The host learns nothing (Trust rule 1).
fn guest_exception<C: VcpuContext>(ctx: &mut C) -> Step {
    ctx.inject_abort_live();
    Step::Resume
}

/// Maps what the core resolved for a guest fault: `(ipa, pa, size)` of the block or page.
/// Ownership first (a fresh pool page becomes the guest's; a page the guest takes at its first
/// touch leaves the host stage-2 before the guest can reach it), then the stage-2 entry. Where
/// other pages of a block range are still mapped one by one, the faulting page is mapped alone
/// and the range merged back into a block when the core says it is one chunk again.
/// `ENOMEM` when the pool has no table page: only for a page that was there already (a fresh
/// page comes from the pool only with its tables, `Gated`); nothing is mapped, and the page
/// stays where its first touch put it (the guest's), which the next fault finds in place.
pub fn map_resolved<P: Platform>(
    hyp: &mut Hyp<P>,
    h: VmHandle,
    fault_ipa: u64,
    (ipa, pa, size): (u64, u64, u64),
    source: FaultSource,
    host_access: bool,
) -> Result<u64, Errno> {
    match source {
        FaultSource::UserspaceAnon => hyp.sync_anon_page(h, pa)?,
        // The host's own page, shared with the guest when the host shared it.
        FaultSource::HostShared => {}
        FaultSource::Gmem | FaultSource::UserspaceGmem if size == PAGE_SIZE => {
            // One page: the transition checks itself; if it fails nothing changed.
            let plan = hyp.settle_plan(h, pa, host_access)?;
            hyp.settle(pa, plan)?;
        }
        FaultSource::Gmem | FaultSource::UserspaceGmem => {
            // A block: every page checked first, then all moved (all or nothing).
            for i in 0..size / PAGE_SIZE {
                hyp.settle_checked(h, pa + i * PAGE_SIZE, host_access)?;
            }
            for i in 0..size / PAGE_SIZE {
                let p = pa + i * PAGE_SIZE;
                let plan = hyp.settle_plan(h, p, host_access)?;
                hyp.settle(p, plan)?;
            }
        }
    }
    let v = hyp.vms.get_mut(&h.0).ok_or(Errno::ENOENT)?;
    let mut r = v.stage2.map(ipa, pa, size, S2Attrs::NORMAL_RWX);
    let mut mapped = size;
    if r == Err(MapError::Exists) && size > PAGE_SIZE {
        // Some pages of the range are mapped one by one (faulted back after an unmap took the
        // block while the range was mixed): the block replaces them if they are its own pages,
        // else the faulting page is mapped alone.
        r = match v.stage2.map_block_over_pages(ipa, pa, S2Attrs::NORMAL_RWX) {
            Ok(true) => {
                log::debug!("vm {} 0x{ipa:x} mapped as a 2 MiB block again", h.0);
                Ok(())
            }
            _ => {
                let off = (fault_ipa & !(PAGE_SIZE - 1)) - ipa;
                mapped = PAGE_SIZE;
                v.stage2
                    .map(ipa + off, pa + off, PAGE_SIZE, S2Attrs::NORMAL_RWX)
            }
        };
    }
    r?;
    // Counted: faults in memslots (a host-shared page is the host's, outside every memslot).
    if let (Some(v), false) = (hyp.vms.get_mut(&h.0), source == FaultSource::HostShared) {
        v.stats.faults_served += 1;
        if source != FaultSource::Gmem {
            v.stats.faults_via_uaddr += 1;
        }
    }
    Ok(mapped)
}

/// A stage-2 abort of the guest: served at EL2 or handed to the host.
pub(crate) fn stage2_abort<P: Platform>(
    hyp: &mut Hyp<P>,
    h: VmHandle,
    ctx: &mut P::Vcpu,
    ipa: u64,
    acc: Access,
    mmio: Option<MmioAccess>,
) -> Step {
    let Some(v) = hyp.vms.get_mut(&h.0) else {
        return guest_exception(ctx);
    };
    if v.faults_to_host && mmio.is_none_or(|_| hyp.world.gpa_to_gmem(h, ipa).is_ok()) {
        // The upstream way: the host serves the fault (through the same exit path as MMIO).
        return Step::Exit(
            (
                ExitReason::PageFault,
                [ipa, u64::from(acc == Access::Write), 0, 0, 0],
            ),
            Pending::None,
        );
    }
    // The fault's data page comes from the pool only if the pool also holds the table pages
    // its map may need, and the map checks its tables before any page changes hands: then the
    // fault completes or (pool short) changes nothing and asks for pages. A fault that maps
    // nothing (a memory fault, MMIO) is not held up.
    let tables = v.stage2.tables_needed(ipa);
    let mut gated = Gated {
        pool: v.stage2.mm_mut(),
        tables,
    };
    let resolution = match hyp.world.resolve_fault(h, ipa, acc, &mut gated) {
        Ok(r) => r,
        Err(_) => return guest_exception(ctx),
    };
    match resolution {
        FaultResolution::Map {
            ipa: map_ipa,
            pa,
            source,
            size,
            host_access,
            ..
        } => match map_resolved(hyp, h, ipa, (map_ipa, pa, size), source, host_access) {
            Ok(mapped) => {
                log::debug!(
                    "vm {} fault ipa 0x{ipa:x} {acc:?} -> pa 0x{pa:x} (0x{mapped:x} bytes) via {}",
                    h.0,
                    source_name(source)
                );
                Step::Resume
            }
            Err(Errno::ENOMEM) => Step::Exit(
                (
                    ExitReason::NeedPages,
                    [pages_wanted(hyp, h, tables), 0, 0, 0, 0],
                ),
                Pending::NeedPages { ipa },
            ),
            Err(_) => {
                // A page in no state the policy produces: nothing mapped (fail closed), the
                // access ends in the guest as an abort.
                ctx.inject_live(Injected::DataAbort, ipa);
                Step::Resume
            }
        },
        FaultResolution::MemoryFault { gpa, size, flags } => {
            v.stats.memory_fault_exits += 1;
            log::debug!("vm {} memory fault gpa 0x{gpa:x} flags {:?}", h.0, flags);
            Step::Exit(
                (ExitReason::MemoryFault, [gpa, size, flags.bits(), 0, 0]),
                Pending::MemoryFault { ipa },
            )
        }
        FaultResolution::Mmio { ipa } => {
            let guarded = v
                .mmio_guard
                .as_ref()
                .is_none_or(|set| set.contains(&(ipa & !(PAGE_SIZE - 1))));
            match mmio {
                Some(m) if guarded => {
                    v.stats.mmio_exits += 1;
                    // Only the bytes stored (Trust rule 1: the rest of the register is the guest's).
                    let data = if m.write {
                        m.stored(ctx.reg(usize::from(m.reg)))
                    } else {
                        0
                    };
                    Step::Exit(
                        (
                            ExitReason::Mmio,
                            [ipa, u64::from(m.size), u64::from(m.write), data, 0],
                        ),
                        Pending::Mmio(m),
                    )
                }
                Some(_) => {
                    // Enrolled in the MMIO guard and this IPA is not guarded: the access fails
                    // in the guest, the host never sees it.
                    log::debug!("vm {} unguarded MMIO at 0x{ipa:x}: abort injected", h.0);
                    ctx.inject_live(Injected::DataAbort, ipa);
                    Step::Resume
                }
                None => guest_exception(ctx),
            }
        }
        FaultResolution::NeedPages => Step::Exit(
            (
                ExitReason::NeedPages,
                [pages_wanted(hyp, h, tables), 0, 0, 0, 0],
            ),
            Pending::NeedPages { ipa },
        ),
    }
}

fn source_name(s: FaultSource) -> &'static str {
    match s {
        FaultSource::Gmem => "gmem",
        FaultSource::UserspaceAnon => "userspace_addr(anon)",
        FaultSource::UserspaceGmem => "userspace_addr(gmem)",
        FaultSource::HostShared => "host-shared page",
    }
}
