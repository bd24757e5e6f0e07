//! Host tests: the seed table from behaviour, every error, and property tests.

mod blocks;
mod errors;
mod prop;
mod seed;
mod trust;

use crate::*;
use abi::PAGE_SIZE;

pub(crate) const GPA: u64 = 0x8000_0000;
pub(crate) const PAGES: u64 = 16;
pub(crate) const IPA_BITS: u32 = 40;

/// The six rows of the seed as configurations (SEMANTICS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Row {
    Legacy,
    Pkvm,
    Opt1,
    Opt2,
    NonCocoGetPfn,
    NonCocoUaddr,
}

pub(crate) struct Config {
    pub vm_type: VmType,
    pub gflags: GmemFlags,
    pub uaddr: UserspaceAddr,
    pub sflags: MemslotFlags,
}

pub(crate) fn config(row: Row) -> Config {
    let mt = GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY;
    let both = MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES;
    let (vm_type, gflags, uaddr, sflags) = match row {
        Row::Legacy => (
            VmType::Coco,
            GmemFlags::empty(),
            UserspaceAddr::Anon,
            MemslotFlags::empty(),
        ),
        Row::Pkvm => (VmType::Pkvm, mt, UserspaceAddr::None, both),
        Row::Opt1 => (VmType::Coco, mt, UserspaceAddr::None, both),
        Row::Opt2 => (
            VmType::Coco,
            mt,
            UserspaceAddr::Gmem,
            MemslotFlags::DONT_CHECK_MISMATCHES,
        ),
        Row::NonCocoGetPfn => (
            VmType::Plain,
            GmemFlags::MMAP | GmemFlags::NO_DIRECT_MAP,
            UserspaceAddr::None,
            both,
        ),
        Row::NonCocoUaddr => (
            VmType::Plain,
            GmemFlags::MMAP | GmemFlags::NO_DIRECT_MAP,
            UserspaceAddr::Gmem,
            MemslotFlags::DONT_CHECK_MISMATCHES,
        ),
    };
    Config {
        vm_type,
        gflags,
        uaddr,
        sflags,
    }
}

/// The kind of guest access: the coco private / shared alias, or an access of a VM type whose
/// faults carry no private/shared bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Private,
    Shared,
    Plain,
}

/// One VM, one gmem of `PAGES` pages, one memslot binding all of it at `GPA`.
pub(crate) struct Rig {
    pub w: World,
    pub a: FakeArena,
    pub vm: VmHandle,
    pub g: GmemHandle,
    pub slot: SlotId,
    pub ty: VmType,
}

impl Rig {
    pub fn build(c: &Config) -> Result<Rig, Errno> {
        let mut w = World::new();
        let vm = w.create_vm(c.vm_type, IPA_BITS)?;
        let g = w.create_gmem(vm, PAGES * PAGE_SIZE, c.gflags.bits())?;
        let slot = w.create_memslot(
            vm,
            &MemslotSpec {
                gpa: GPA,
                size: PAGES * PAGE_SIZE,
                gmem: Some(GmemBinding { gmem: g, offset: 0 }),
                userspace_addr: c.uaddr,
                flags: c.sflags.bits(),
            },
        )?;
        Ok(Rig {
            w,
            a: FakeArena::new(0x4000_0000, 1024),
            vm,
            g,
            slot,
            ty: c.vm_type,
        })
    }

    pub fn row(row: Row) -> Rig {
        match Rig::build(&config(row)) {
            Ok(r) => r,
            Err(e) => panic!("row {row:?} refused: {e}"),
        }
    }

    pub fn tracked(&self) -> bool {
        self.w.gmem(self.g).unwrap().tracks_shareability()
    }

    /// The kinds of access this VM type can make.
    pub fn kinds(&self) -> &'static [Kind] {
        if self.ty == VmType::Coco {
            &[Kind::Private, Kind::Shared]
        } else {
            &[Kind::Plain]
        }
    }

    pub fn ipa(&self, page: u64, kind: Kind) -> u64 {
        let gpa = GPA + page * PAGE_SIZE;
        match kind {
            Kind::Shared => gpa | self.w.vm(self.vm).unwrap().shared_bit().unwrap(),
            _ => gpa,
        }
    }

    pub fn fault(&mut self, page: u64, kind: Kind, access: Access) -> FaultResolution {
        let ipa = self.ipa(page, kind);
        self.w
            .resolve_fault(self.vm, ipa, access, &mut self.a)
            .unwrap()
    }

    /// Sets the shareability of one page through a guest-initiated conversion.
    pub fn set_share(&mut self, page: u64, s: Shareability) -> Result<Invalidation, ConvertError> {
        let to = match s {
            Shareability::All => ConvertTo::Shared,
            Shareability::Guest => ConvertTo::Private,
        };
        self.w.convert(
            self.g,
            &ConvertRequest {
                offset: page * PAGE_SIZE,
                size: PAGE_SIZE,
                to,
                mode: ContentMode::Preserve,
                initiator: Initiator::Guest,
            },
            &mut self.a,
        )
    }

    pub fn set_attr(&mut self, page: u64, private: bool) {
        self.w
            .set_attributes(self.vm, GPA + page * PAGE_SIZE, PAGE_SIZE, private)
            .unwrap();
    }

    /// Puts a page in the state an access of `kind` expects: shareability (if tracked) and
    /// attribute agree with it.
    pub fn agree(&mut self, page: u64, kind: Kind) {
        let private = kind != Kind::Shared;
        if self.tracked() {
            let s = if private {
                Shareability::Guest
            } else {
                Shareability::All
            };
            self.set_share(page, s).unwrap();
        }
        self.set_attr(page, private);
    }

    pub fn host(&mut self, page: u64) -> Result<u64, Errno> {
        self.w.host_fault(self.g, page * PAGE_SIZE, &mut self.a)
    }

    pub fn gmem_pa(&self, page: u64) -> Option<u64> {
        self.w.gmem(self.g).unwrap().page_pa(page * PAGE_SIZE)
    }
}

#[test]
fn every_row_configuration_is_accepted() {
    for row in [
        Row::Legacy,
        Row::Pkvm,
        Row::Opt1,
        Row::Opt2,
        Row::NonCocoGetPfn,
        Row::NonCocoUaddr,
    ] {
        assert!(Rig::build(&config(row)).is_ok(), "{row:?}");
    }
}
