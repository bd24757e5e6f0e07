//! pKVM-style page ownership: per physical 4 KiB page of RAM, the state of the host, the hyp and
//! (at most) one guest: OWNED, SHARED_OWNED, SHARED_BORROWED or NOPAGE.
//!
//! The table is allocated once for `[ram_base, ram_base + pages * 4096)`, 8 bytes per page
//! ([`PageMeta`]). Every state change goes through one checking helper ([`Ownership::check`]
//! tells in advance what a change would answer); a wrong state is always an error:
//!
//! | errno | when |
//! |---|---|
//! | `EINVAL` | `pa` not 4 KiB aligned or outside RAM |
//! | `ENOENT` | the page belongs to (or is borrowed by) a guest other than the VM named |
//! | `EPERM` | any component is in a state other than the transition requires (as Android does) |
//! | `EBUSY` | the page is pinned by the component that would lose access |
//! | `ERANGE` | a pin count would overflow (65535 pins) |
//!
//! The checks run in that order. The states a page can be in (host, hyp, guest):
//!
//! | host | hyp | guest | how |
//! |---|---|---|---|
//! | OWNED | NOPAGE | NOPAGE | initial state of RAM |
//! | NOPAGE | OWNED | NOPAGE | `host_donate_to_hyp` |
//! | SHARED_OWNED | SHARED_BORROWED | NOPAGE | `host_share_with_hyp` |
//! | NOPAGE | NOPAGE | OWNED | `host_donate_to_guest` |
//! | SHARED_OWNED | NOPAGE | SHARED_BORROWED | `host_share_with_guest` |
//! | SHARED_BORROWED | NOPAGE | SHARED_OWNED | `guest_share_with_host` |
//!
//! A page is with at most one guest at a time, and shared between at most two components.

use alloc::vec::Vec;

use abi::Errno;

use crate::table::PAGE_SIZE;

/// A VM handle.
pub type VmHandle = u16;

/// The state of a page for one component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageState {
    /// Owned and accessible only by the owner.
    Owned = 0,
    /// Owned, and also accessible by another component.
    SharedOwned = 1,
    /// Accessible, owned by another component.
    SharedBorrowed = 2,
    /// Not accessible.
    NoPage = 3,
}

impl PageState {
    const fn from_bits(b: u8) -> PageState {
        match b & 3 {
            0 => PageState::Owned,
            1 => PageState::SharedOwned,
            2 => PageState::SharedBorrowed,
            _ => PageState::NoPage,
        }
    }

    /// May the component map the page?
    pub const fn accessible(self) -> bool {
        !matches!(self, PageState::NoPage)
    }

    /// Is the component the owner?
    pub const fn owns(self) -> bool {
        matches!(self, PageState::Owned | PageState::SharedOwned)
    }
}

/// A component that can reach memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The host (EL1 under the host stage-2).
    Host,
    /// The hyp itself.
    Hyp,
    /// A guest.
    Guest(VmHandle),
}

/// The 8-byte per-page record. Opaque; [`Ownership::info`] decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PageMeta {
    /// host state bits 1:0, hyp 3:2, guest 5:4.
    states: u8,
    _reserved: u8,
    vm: u16,
    host_pins: u16,
    hyp_pins: u16,
}

impl PageMeta {
    /// A page owned by the host alone: the state of all RAM at start.
    pub const HOST_OWNED: PageMeta = PageMeta::from_info(PageInfo::HOST_OWNED);

    const fn from_info(i: PageInfo) -> PageMeta {
        PageMeta {
            states: i.host as u8 | (i.hyp as u8) << 2 | (i.guest as u8) << 4,
            _reserved: 0,
            vm: if matches!(i.guest, PageState::NoPage) {
                0
            } else {
                i.vm
            },
            host_pins: i.host_pins,
            hyp_pins: i.hyp_pins,
        }
    }

    const fn info(self) -> PageInfo {
        PageInfo {
            host: PageState::from_bits(self.states),
            hyp: PageState::from_bits(self.states >> 2),
            guest: PageState::from_bits(self.states >> 4),
            vm: self.vm,
            host_pins: self.host_pins,
            hyp_pins: self.hyp_pins,
        }
    }
}

impl Default for PageMeta {
    fn default() -> PageMeta {
        PageMeta::HOST_OWNED
    }
}

/// The decoded state of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageInfo {
    /// The host's state.
    pub host: PageState,
    /// The hyp's state.
    pub hyp: PageState,
    /// The state of guest `vm` (NOPAGE: no guest has the page, and `vm` is 0).
    pub guest: PageState,
    /// The guest that has the page, meaningful when `guest` is not NOPAGE.
    pub vm: VmHandle,
    /// Pins the host holds on a page it borrows.
    pub host_pins: u16,
    /// Pins the hyp holds on a page it borrows.
    pub hyp_pins: u16,
}

impl PageInfo {
    /// Host OWNED, nobody else, no pins.
    pub const HOST_OWNED: PageInfo = PageInfo {
        host: PageState::Owned,
        hyp: PageState::NoPage,
        guest: PageState::NoPage,
        vm: 0,
        host_pins: 0,
        hyp_pins: 0,
    };

    /// The state of `who`.
    pub const fn state_of(&self, who: Component) -> PageState {
        match who {
            Component::Host => self.host,
            Component::Hyp => self.hyp,
            Component::Guest(vm) => {
                if !matches!(self.guest, PageState::NoPage) && self.vm == vm {
                    self.guest
                } else {
                    PageState::NoPage
                }
            }
        }
    }

    /// The owner, if exactly one component owns the page.
    pub fn owner(&self) -> Option<Component> {
        let mut owners = self.owners();
        match (owners.next(), owners.next()) {
            (Some(o), None) => Some(o),
            _ => None,
        }
    }

    fn components(&self) -> [(Component, PageState); 3] {
        [
            (Component::Host, self.host),
            (Component::Hyp, self.hyp),
            (Component::Guest(self.vm), self.guest),
        ]
    }

    fn owners(&self) -> impl Iterator<Item = Component> {
        self.components()
            .into_iter()
            .filter(|(_, s)| s.owns())
            .map(|(c, _)| c)
    }
}

/// A page-state transition, as checked by [`Ownership::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Host OWNED -> NOPAGE, hyp NOPAGE -> OWNED.
    HostDonateToHyp,
    /// Hyp OWNED -> NOPAGE, host NOPAGE -> OWNED.
    HypDonateToHost,
    /// Host OWNED -> SHARED_OWNED, hyp NOPAGE -> SHARED_BORROWED.
    HostShareWithHyp,
    /// The reverse of `HostShareWithHyp`; `EBUSY` while the hyp pins the page.
    HostUnshareFromHyp,
    /// Host OWNED -> NOPAGE, guest NOPAGE -> OWNED.
    HostDonateToGuest(VmHandle),
    /// Hyp OWNED -> NOPAGE, guest NOPAGE -> OWNED: a page of a VM's pool (donated by the host
    /// earlier) becomes guest memory. With `shared`, the guest then shares it with the host at
    /// once (guest SHARED_OWNED, host SHARED_BORROWED). One step for the fault path, equal to
    /// `HypDonateToHost` + `HostDonateToGuest` (+ `GuestShareWithHost`).
    HypDonateToGuest {
        /// The guest.
        vm: VmHandle,
        /// Share it with the host at once.
        shared: bool,
    },
    /// Host OWNED -> SHARED_OWNED, guest NOPAGE -> SHARED_BORROWED.
    HostShareWithGuest(VmHandle),
    /// The reverse of `HostShareWithGuest`.
    HostUnshareFromGuest(VmHandle),
    /// Guest OWNED -> SHARED_OWNED, host NOPAGE -> SHARED_BORROWED.
    GuestShareWithHost(VmHandle),
    /// The reverse of `GuestShareWithHost`; `EBUSY` while the host pins the page.
    GuestUnshareFromHost(VmHandle),
    /// Guest OWNED -> NOPAGE, host NOPAGE -> OWNED, page zeroed in between.
    GuestRelinquishToHost(VmHandle),
    /// A dying guest's page goes back to the host, from any of the three guest states: zeroed
    /// if the guest owned it; `EBUSY` if the guest shared it with the host and the host pins it.
    HostReclaimFromGuest(VmHandle),
    /// A page a VM's memory gave up (punch, relinquish, teardown, memslot delete) becomes the
    /// hyp's again (its pool): from guest OWNED, guest SHARED_OWNED / host SHARED_BORROWED
    /// (`EBUSY` if the host pins it) or host SHARED_OWNED / guest SHARED_BORROWED (`anon`
    /// memory the host lent); zeroed in between. One step, so a caller can check it before it
    /// changes anything.
    GuestReclaimToHyp(VmHandle),
    /// Host pin of a page it borrows (SHARED_BORROWED).
    HostPin,
    /// Host unpin; `EPERM` without a pin.
    HostUnpin,
    /// Hyp pin of a page it borrows.
    HypPin,
    /// Hyp unpin; `EPERM` without a pin.
    HypUnpin,
}

/// What the checker found wrong with one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// `who` can reach `pa` through its stage-2 (or the hyp's map) but neither owns nor
    /// borrows it (`state` is its state in the table).
    Unauthorized {
        /// Page.
        pa: u64,
        /// Who reaches it.
        who: Component,
        /// Its state in the ownership table.
        state: PageState,
    },
    /// Two components own the page (OWNED or SHARED_OWNED).
    OwnedTwice {
        /// Page.
        pa: u64,
        /// One owner.
        first: Component,
        /// The other.
        second: Component,
    },
    /// Nobody owns the page.
    NoOwner {
        /// Page.
        pa: u64,
    },
    /// SHARED_OWNED / SHARED_BORROWED not paired one to one (e.g. SHARED_OWNED with no
    /// borrower, a borrower of an OWNED page, or two borrowers).
    UnmatchedShare {
        /// Page.
        pa: u64,
    },
    /// A pin count on a component that does not borrow the page.
    PinWithoutBorrow {
        /// Page.
        pa: u64,
        /// Whose pins.
        who: Component,
    },
}

/// One range some component can reach, for [`Ownership::check_invariants`]: e.g. a host
/// stage-2 leaf (identity: pa = ipa), or a guest stage-2 leaf (`pa` its output address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// First PA (4 KiB aligned).
    pub pa: u64,
    /// Bytes.
    pub size: u64,
    /// Who reaches it.
    pub who: Component,
}

/// The ownership table over `[ram_base, ram_base + n * 4096)`, stored in `S` (a
/// `Vec<PageMeta>`, a boxed slice, or a `&'static mut [PageMeta]` carved out at boot).
pub struct Ownership<S> {
    base: u64,
    end: u64,
    pages: S,
}

impl<S> core::fmt::Debug for Ownership<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ownership")
            .field("base", &self.base)
            .field("end", &self.end)
            .finish()
    }
}

/// Bytes of table for `ram_size` bytes of RAM.
pub const fn table_bytes(ram_size: u64) -> u64 {
    ram_size / PAGE_SIZE * core::mem::size_of::<PageMeta>() as u64
}

/// Outcome of a planned transition.
struct Plan {
    idx: usize,
    new: PageInfo,
    zero: bool,
}

impl<S: AsRef<[PageMeta]> + AsMut<[PageMeta]>> Ownership<S> {
    /// A table for `storage.len()` pages from `ram_base`, all host OWNED.
    /// `EINVAL` if `ram_base` is not page aligned or the range overflows.
    pub fn new(ram_base: u64, mut storage: S) -> Result<Self, Errno> {
        let n = storage.as_ref().len() as u64;
        let end = n
            .checked_mul(PAGE_SIZE)
            .and_then(|len| ram_base.checked_add(len))
            .ok_or(Errno::EINVAL)?;
        if !ram_base.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        storage.as_mut().fill(PageMeta::HOST_OWNED);
        Ok(Ownership {
            base: ram_base,
            end,
            pages: storage,
        })
    }

    /// First byte of RAM covered.
    pub const fn ram_base(&self) -> u64 {
        self.base
    }
    /// One past the last byte of RAM covered.
    pub const fn ram_end(&self) -> u64 {
        self.end
    }

    fn index(&self, pa: u64) -> Result<usize, Errno> {
        if !pa.is_multiple_of(PAGE_SIZE) || pa < self.base || pa >= self.end {
            return Err(Errno::EINVAL);
        }
        usize::try_from((pa - self.base) / PAGE_SIZE).map_err(|_| Errno::EINVAL)
    }

    /// The state of the page at `pa`. `EINVAL` if unaligned or outside RAM.
    pub fn info(&self, pa: u64) -> Result<PageInfo, Errno> {
        let idx = self.index(pa)?;
        self.pages
            .as_ref()
            .get(idx)
            .map(|m| m.info())
            .ok_or(Errno::EINVAL)
    }

    /// The state of `who` for the page at `pa`.
    pub fn state(&self, pa: u64, who: Component) -> Result<PageState, Errno> {
        Ok(self.info(pa)?.state_of(who))
    }

    /// The owner of the page at `pa`; `None` if outside RAM (or the table is inconsistent).
    pub fn owner(&self, pa: u64) -> Option<Component> {
        self.info(pa).ok()?.owner()
    }

    /// May the host stage-2 map the page at `pa`? False outside RAM (MMIO is the caller's call).
    pub fn host_can_access(&self, pa: u64) -> bool {
        self.info(pa).is_ok_and(|i| i.host.accessible())
    }

    /// True if every page of `[lo, hi)` (page aligned) is host-accessible RAM: the callback
    /// for [`crate::stage2::Stage2::map_identity_largest`].
    pub fn host_can_access_range(&self, lo: u64, hi: u64) -> bool {
        if !lo.is_multiple_of(PAGE_SIZE)
            || !hi.is_multiple_of(PAGE_SIZE)
            || lo >= hi
            || lo < self.base
            || hi > self.end
        {
            return false;
        }
        let (Ok(a), Ok(b)) = (self.index(lo), self.index(hi - PAGE_SIZE)) else {
            return false;
        };
        self.pages
            .as_ref()
            .get(a..=b)
            .is_some_and(|s| s.iter().all(|m| m.info().host.accessible()))
    }

    /// What `t` on `pa` would answer, without changing anything.
    pub fn check(&self, pa: u64, t: Transition) -> Result<(), Errno> {
        self.plan(pa, t).map(|_| ())
    }

    /// The one checking helper: validates `t` for the page and computes its new state.
    fn plan(&self, pa: u64, t: Transition) -> Result<Plan, Errno> {
        use PageState::{NoPage, Owned, SharedBorrowed, SharedOwned};
        use Transition as T;
        let idx = self.index(pa)?;
        let cur = self.pages.as_ref().get(idx).ok_or(Errno::EINVAL)?.info();
        let host_alone = cur.host == Owned && cur.hyp == NoPage && cur.guest == NoPage;
        let owned = |host, hyp, guest, vm| PageInfo {
            host,
            hyp,
            guest,
            vm,
            host_pins: 0,
            hyp_pins: 0,
        };
        // A guest-side transition naming `vm` when another guest has the page.
        let other_vm = |vm: VmHandle| cur.guest != NoPage && cur.vm != vm;
        let expect = |ok: bool| if ok { Ok(()) } else { Err(Errno::EPERM) };
        let mut zero = false;
        let new = match t {
            T::HostDonateToHyp => {
                expect(host_alone)?;
                owned(NoPage, Owned, NoPage, 0)
            }
            T::HypDonateToHost => {
                expect(cur.host == NoPage && cur.hyp == Owned && cur.guest == NoPage)?;
                PageInfo::HOST_OWNED
            }
            T::HypDonateToGuest { vm, shared } => {
                expect(cur.host == NoPage && cur.hyp == Owned && cur.guest == NoPage)?;
                if shared {
                    owned(SharedBorrowed, NoPage, SharedOwned, vm)
                } else {
                    owned(NoPage, NoPage, Owned, vm)
                }
            }
            T::HostShareWithHyp => {
                expect(host_alone)?;
                owned(SharedOwned, SharedBorrowed, NoPage, 0)
            }
            T::HostUnshareFromHyp => {
                expect(
                    cur.host == SharedOwned && cur.hyp == SharedBorrowed && cur.guest == NoPage,
                )?;
                if cur.hyp_pins > 0 {
                    return Err(Errno::EBUSY);
                }
                PageInfo::HOST_OWNED
            }
            T::HostDonateToGuest(vm) => {
                expect(host_alone)?;
                owned(NoPage, NoPage, Owned, vm)
            }
            T::HostShareWithGuest(vm) => {
                expect(host_alone)?;
                owned(SharedOwned, NoPage, SharedBorrowed, vm)
            }
            T::HostUnshareFromGuest(vm) => {
                if other_vm(vm) {
                    return Err(Errno::ENOENT);
                }
                expect(
                    cur.host == SharedOwned && cur.hyp == NoPage && cur.guest == SharedBorrowed,
                )?;
                PageInfo::HOST_OWNED
            }
            T::GuestShareWithHost(vm) => {
                if other_vm(vm) {
                    return Err(Errno::ENOENT);
                }
                expect(cur.host == NoPage && cur.hyp == NoPage && cur.guest == Owned)?;
                PageInfo {
                    host: SharedBorrowed,
                    guest: SharedOwned,
                    ..cur
                }
            }
            T::GuestUnshareFromHost(vm) => {
                if other_vm(vm) {
                    return Err(Errno::ENOENT);
                }
                expect(
                    cur.host == SharedBorrowed && cur.hyp == NoPage && cur.guest == SharedOwned,
                )?;
                if cur.host_pins > 0 {
                    return Err(Errno::EBUSY);
                }
                owned(NoPage, NoPage, Owned, vm)
            }
            T::GuestRelinquishToHost(vm) => {
                if other_vm(vm) {
                    return Err(Errno::ENOENT);
                }
                expect(cur.host == NoPage && cur.hyp == NoPage && cur.guest == Owned)?;
                zero = true;
                PageInfo::HOST_OWNED
            }
            T::HostReclaimFromGuest(vm) => {
                if other_vm(vm) {
                    return Err(Errno::ENOENT);
                }
                match (cur.host, cur.hyp, cur.guest) {
                    (NoPage, NoPage, Owned) => zero = true,
                    (SharedBorrowed, NoPage, SharedOwned) => {
                        if cur.host_pins > 0 {
                            return Err(Errno::EBUSY);
                        }
                        zero = true;
                    }
                    (SharedOwned, NoPage, SharedBorrowed) => {}
                    _ => return Err(Errno::EPERM),
                }
                PageInfo::HOST_OWNED
            }
            T::GuestReclaimToHyp(vm) => {
                if other_vm(vm) {
                    return Err(Errno::ENOENT);
                }
                match (cur.host, cur.hyp, cur.guest) {
                    (NoPage, NoPage, Owned)
                    | (SharedOwned, NoPage, SharedBorrowed)
                    | (SharedBorrowed, NoPage, SharedOwned) => {
                        if cur.host_pins > 0 {
                            return Err(Errno::EBUSY);
                        }
                    }
                    _ => return Err(Errno::EPERM),
                }
                zero = true;
                owned(NoPage, Owned, NoPage, 0)
            }
            T::HostPin => {
                expect(cur.host == SharedBorrowed)?;
                let host_pins = cur.host_pins.checked_add(1).ok_or(Errno::ERANGE)?;
                PageInfo { host_pins, ..cur }
            }
            T::HostUnpin => {
                expect(cur.host == SharedBorrowed && cur.host_pins > 0)?;
                PageInfo {
                    host_pins: cur.host_pins - 1,
                    ..cur
                }
            }
            T::HypPin => {
                expect(cur.hyp == SharedBorrowed)?;
                let hyp_pins = cur.hyp_pins.checked_add(1).ok_or(Errno::ERANGE)?;
                PageInfo { hyp_pins, ..cur }
            }
            T::HypUnpin => {
                expect(cur.hyp == SharedBorrowed && cur.hyp_pins > 0)?;
                PageInfo {
                    hyp_pins: cur.hyp_pins - 1,
                    ..cur
                }
            }
        };
        Ok(Plan { idx, new, zero })
    }

    fn apply(
        &mut self,
        pa: u64,
        t: Transition,
        zero: Option<&mut dyn FnMut(u64)>,
    ) -> Result<(), Errno> {
        let plan = self.plan(pa, t)?;
        if plan.zero {
            match zero {
                Some(z) => z(pa),
                // Unreachable through the public API: every zeroing transition takes a zeroer.
                None => return Err(Errno::EINVAL),
            }
        }
        let slot = self.pages.as_mut().get_mut(plan.idx).ok_or(Errno::EINVAL)?;
        *slot = PageMeta::from_info(plan.new);
        log::trace!("ownership: {t:?} {pa:#x}");
        Ok(())
    }

    /// A pool page becomes guest `vm`'s memory, shared with the host at once if `shared`.
    pub fn hyp_donate_to_guest(
        &mut self,
        pa: u64,
        vm: VmHandle,
        shared: bool,
    ) -> Result<(), Errno> {
        self.apply(pa, Transition::HypDonateToGuest { vm, shared }, None)
    }

    /// Host OWNED -> NOPAGE, hyp NOPAGE -> OWNED. Also marks hyp memory at boot.
    pub fn host_donate_to_hyp(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HostDonateToHyp, None)
    }
    /// Hyp OWNED -> NOPAGE, host NOPAGE -> OWNED.
    pub fn hyp_donate_to_host(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HypDonateToHost, None)
    }
    /// Host OWNED -> SHARED_OWNED, hyp NOPAGE -> SHARED_BORROWED.
    pub fn host_share_with_hyp(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HostShareWithHyp, None)
    }
    /// Host SHARED_OWNED -> OWNED, hyp SHARED_BORROWED -> NOPAGE; `EBUSY` while the hyp pins it.
    pub fn host_unshare_from_hyp(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HostUnshareFromHyp, None)
    }
    /// Host OWNED -> NOPAGE, guest `vm` NOPAGE -> OWNED.
    pub fn host_donate_to_guest(&mut self, pa: u64, vm: VmHandle) -> Result<(), Errno> {
        self.apply(pa, Transition::HostDonateToGuest(vm), None)
    }
    /// Host OWNED -> SHARED_OWNED, guest `vm` NOPAGE -> SHARED_BORROWED.
    pub fn host_share_with_guest(&mut self, pa: u64, vm: VmHandle) -> Result<(), Errno> {
        self.apply(pa, Transition::HostShareWithGuest(vm), None)
    }
    /// Host SHARED_OWNED -> OWNED, guest `vm` SHARED_BORROWED -> NOPAGE.
    pub fn host_unshare_from_guest(&mut self, pa: u64, vm: VmHandle) -> Result<(), Errno> {
        self.apply(pa, Transition::HostUnshareFromGuest(vm), None)
    }
    /// Guest `vm` OWNED -> SHARED_OWNED, host NOPAGE -> SHARED_BORROWED.
    pub fn guest_share_with_host(&mut self, pa: u64, vm: VmHandle) -> Result<(), Errno> {
        self.apply(pa, Transition::GuestShareWithHost(vm), None)
    }
    /// Guest `vm` SHARED_OWNED -> OWNED, host SHARED_BORROWED -> NOPAGE; `EBUSY` while the
    /// host pins it.
    pub fn guest_unshare_from_host(&mut self, pa: u64, vm: VmHandle) -> Result<(), Errno> {
        self.apply(pa, Transition::GuestUnshareFromHost(vm), None)
    }
    /// Guest `vm` OWNED -> NOPAGE, host NOPAGE -> OWNED. `zero(pa)` is called once, after every
    /// check passed and before the state flips; it must zero the page (the guest must already
    /// be unable to write it: unmap it from its stage-2 first).
    pub fn guest_relinquish_to_host(
        &mut self,
        pa: u64,
        vm: VmHandle,
        zero: &mut dyn FnMut(u64),
    ) -> Result<(), Errno> {
        self.apply(pa, Transition::GuestRelinquishToHost(vm), Some(zero))
    }
    /// A dying guest's page back to the host: from OWNED or SHARED_OWNED (zeroed through
    /// `zero` as in `guest_relinquish_to_host`; `EBUSY` if the host pins a shared one) or from
    /// SHARED_BORROWED (the host's own page, not zeroed).
    pub fn host_reclaim_from_guest(
        &mut self,
        pa: u64,
        vm: VmHandle,
        zero: &mut dyn FnMut(u64),
    ) -> Result<(), Errno> {
        self.apply(pa, Transition::HostReclaimFromGuest(vm), Some(zero))
    }
    /// A page a VM gave up goes back to the hyp (see [`Transition::GuestReclaimToHyp`]);
    /// `zero(pa)` is called once, after every check passed and before the state flips (every
    /// mapping of the page must already be gone).
    pub fn guest_reclaim_to_hyp(
        &mut self,
        pa: u64,
        vm: VmHandle,
        zero: &mut dyn FnMut(u64),
    ) -> Result<(), Errno> {
        self.apply(pa, Transition::GuestReclaimToHyp(vm), Some(zero))
    }
    /// The host pins a page it borrows. `EPERM` unless host SHARED_BORROWED, `ERANGE` on overflow.
    pub fn host_pin(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HostPin, None)
    }
    /// Drops a host pin. `EPERM` unless host SHARED_BORROWED with a pin.
    pub fn host_unpin(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HostUnpin, None)
    }
    /// The hyp pins a page the host shares with it. `EPERM` unless hyp SHARED_BORROWED.
    pub fn hyp_pin(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HypPin, None)
    }
    /// Drops a hyp pin. `EPERM` unless hyp SHARED_BORROWED with a pin.
    pub fn hyp_unpin(&mut self, pa: u64) -> Result<(), Errno> {
        self.apply(pa, Transition::HypUnpin, None)
    }

    /// Overwrites the state of a page without any check, for tests that need broken states.
    #[cfg(any(test, feature = "fake"))]
    pub fn force_info(&mut self, pa: u64, info: PageInfo) -> Result<(), Errno> {
        let idx = self.index(pa)?;
        let slot = self.pages.as_mut().get_mut(idx).ok_or(Errno::EINVAL)?;
        // Keep `vm` even with guest NOPAGE so tests can build any state.
        *slot = PageMeta {
            vm: info.vm,
            ..PageMeta::from_info(info)
        };
        Ok(())
    }

    /// Checks the table and the ranges each component can reach, and lists every violation
    /// (in PA order for the table checks, then in `accesses` order). Ranges outside RAM are
    /// ignored (MMIO is not tracked here).
    pub fn check_invariants<I: IntoIterator<Item = Access>>(&self, accesses: I) -> Vec<Violation> {
        let mut out = Vec::new();
        for (idx, meta) in self.pages.as_ref().iter().enumerate() {
            let pa = self.base + idx as u64 * PAGE_SIZE;
            let info = meta.info();
            let comps = info.components();
            let mut owners = info.owners();
            match (owners.next(), owners.next()) {
                (None, _) => out.push(Violation::NoOwner { pa }),
                (Some(first), Some(second)) => {
                    out.push(Violation::OwnedTwice { pa, first, second })
                }
                _ => {}
            }
            let lenders = comps
                .iter()
                .filter(|(_, s)| *s == PageState::SharedOwned)
                .count();
            let borrowers = comps
                .iter()
                .filter(|(_, s)| *s == PageState::SharedBorrowed)
                .count();
            if !((lenders == 0 && borrowers == 0) || (lenders == 1 && borrowers == 1)) {
                out.push(Violation::UnmatchedShare { pa });
            }
            if info.host_pins > 0 && info.host != PageState::SharedBorrowed {
                out.push(Violation::PinWithoutBorrow {
                    pa,
                    who: Component::Host,
                });
            }
            if info.hyp_pins > 0 && info.hyp != PageState::SharedBorrowed {
                out.push(Violation::PinWithoutBorrow {
                    pa,
                    who: Component::Hyp,
                });
            }
        }
        for acc in accesses {
            let lo = acc.pa.max(self.base) & !(PAGE_SIZE - 1);
            let hi = acc.pa.saturating_add(acc.size).min(self.end);
            let mut pa = lo;
            while pa < hi {
                if let Ok(info) = self.info(pa) {
                    let state = info.state_of(acc.who);
                    if !state.accessible() {
                        out.push(Violation::Unauthorized {
                            pa,
                            who: acc.who,
                            state,
                        });
                    }
                }
                pa += PAGE_SIZE;
            }
        }
        out
    }
}
