//! Parser for scenario files, the text contract that drives the system
//! (`/work/shared/spec/SCENARIOS.md`), including the statements of its "Hostile worlds" section.
//!
//! [`parse`] turns a whole file into a [`Scenario`] or the first [`ParseError`] (line number and
//! reason); nothing is run before every line has been parsed. The runner executes the statements,
//! produces an [`Outcome`] for each, and asks [`Statement::check`] whether it held.
//!
//! Besides the grammar, the parser checks what a file gets wrong before it runs: a name used
//! before it is declared, declared twice (names of VMs, gmem files and slots are global to the
//! file and share one name space), a reserved word as a name, and a statement that needs a
//! current VM where there is none (after `destroy`).
//!
//! The parser takes untrusted text: it never panics, whatever the input.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod grammar;
mod number;
mod result;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use abi::cmd::{Insn, WorldReg};
use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::HostCall;

pub use grammar::parse;
pub use number::parse_number;
pub use result::{parse_expect, parse_outcome, Expect, Outcome};

/// Most iterations of a `repeat`.
pub const REPEAT_MAX: u64 = 1_000_000;
/// `host raw-read hyp` / `raw-write hyp` reach the first 64 KiB of the hyp's image.
pub const HYP_PROBE_LIMIT: u64 = 64 << 10;
/// Words that cannot be names.
pub const RESERVED: [&str; 3] = ["uaddr", "shared", "hyp"];

/// A line the parser does not understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl core::error::Error for ParseError {}

/// A parsed scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The type of the file's first VM (the `vm` statement that opens the file, which is also
    /// the first of [`Scenario::statements`]).
    pub vm: VmType,
    /// Every statement, in order, starting with the first `vm`.
    pub statements: Vec<Statement>,
}

/// One statement (every statement but `vm` is one check; a `vm` with `expect=` is one too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// 1-based line number (a statement inside a `repeat` has the `repeat`'s line).
    pub line: usize,
    /// The source text, trimmed, without its comment.
    pub text: String,
    pub kind: StatementKind,
    /// `None`: the statement must succeed (see [`Statement::check`]).
    pub expect: Option<Expect>,
}

/// Which world runs a `reg-write`, `reg-read` or `exec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum World {
    Host,
    Guest,
}

impl World {
    pub const fn name(self) -> &'static str {
        match self {
            World::Host => "host",
            World::Guest => "guest",
        }
    }
}

/// How the host completes the current VM's forwarded MEM_SHARE / MEM_UNSHARE (`host forward`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    /// Carries the request out (`GuestConvert`, memory attributes) and completes it.
    #[default]
    Honest,
    /// Completes it without carrying it out, with an error.
    Refuse,
    /// Completes it without carrying it out, claiming SUCCESS for every page.
    Lie,
}

/// What `pool` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolSpec {
    /// `pool auto`: the runner tops the pool up when it runs short.
    Auto,
    /// `pool pages=<n> [blocks=<m>]`: exactly this many free pages and free 2 MiB chunks.
    Exact { pages: u64, blocks: u64 },
}

/// The MMIO guard calls of `guest mmio-guard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmioGuardOp {
    Enroll,
    Map,
    Unmap,
}

/// One argument of `host call`: a number, the name of a VM, gmem or slot (its handle or id), or
/// `fresh:N`: the physical address of N contiguous host pages nothing uses (a donation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallArg {
    Num(u64),
    Name(String),
    Fresh(u64),
}

/// What a statement does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// `vm <type> [name=]`: a new VM, current from then on. `name` is the one given or the
    /// default (`vm0`, `vm1`, ... counting the `vm` statements without `name=`).
    Vm {
        vm_type: VmType,
        name: String,
    },
    /// `use <vm>`: later statements apply to this VM.
    Use {
        vm: String,
    },
    /// `destroy <vm>`: tears the VM down; there is no current VM afterwards.
    Destroy {
        vm: String,
    },
    /// `repeat <count> <statement> [; <statement>]...`: one check, whatever it holds.
    Repeat {
        count: u64,
        body: Vec<Statement>,
    },
    Gmem {
        name: String,
        size: u64,
        flags: GmemFlags,
    },
    Slot {
        name: String,
        gpa: u64,
        size: u64,
        /// `(gmem name, offset)`; offset defaults to 0.
        gmem: Option<(String, u64)>,
        uaddr: UserspaceAddr,
        flags: MemslotFlags,
    },
    Attr {
        private: bool,
        gpa: u64,
        size: u64,
    },
    Convert {
        gmem: String,
        to: ConvertTo,
        offset: u64,
        size: u64,
        mode: Option<ContentMode>,
    },
    Punch {
        gmem: String,
        offset: u64,
        size: u64,
    },
    HostRead {
        target: HostTarget,
        offset: u64,
    },
    HostWrite {
        target: HostTarget,
        offset: u64,
        value: u8,
    },
    HostRawRead {
        gmem: String,
        offset: u64,
    },
    HostPin {
        gmem: String,
        offset: u64,
    },
    HostUnpin {
        gmem: String,
        offset: u64,
    },
    /// `host forward <honest|refuse|lie>` (current VM).
    HostForward {
        mode: ForwardMode,
    },
    /// `host share-page gpa= [pages=]`: host pages shared with the current guest (MapHostShared).
    HostSharePage {
        gpa: u64,
        pages: u64,
    },
    /// `host read shared gpa=`: the host's side of a page of `host share-page`.
    HostReadShared {
        gpa: u64,
    },
    /// `host write shared gpa= value=`.
    HostWriteShared {
        gpa: u64,
        value: u8,
    },
    /// `host raw-write <gmem> offset= value=`: a store straight to the page's physical address.
    HostRawWrite {
        gmem: String,
        offset: u64,
        value: u8,
    },
    /// `host raw-read hyp offset=`: a load at the start of the hyp's image + offset.
    HostRawReadHyp {
        offset: u64,
    },
    /// `host raw-write hyp offset= value=`.
    HostRawWriteHyp {
        offset: u64,
        value: u8,
    },
    /// `host dma-write <gmem> offset= value=`: fw_cfg's DMA asked to store the byte.
    HostDmaWrite {
        gmem: String,
        offset: u64,
        value: u8,
    },
    /// `host call <name> [a1=..a6=]`: one raw host call; missing arguments are 0.
    HostCall {
        call: HostCall,
        args: [CallArg; 6],
    },
    /// `host smc <function> [a1=..a3=]`: one SMC from the host (x0 = function, x1..x3).
    HostSmc {
        func: u64,
        args: [u64; 3],
    },
    /// `pool pages= [blocks=]` / `pool auto` (current VM).
    Pool {
        spec: PoolSpec,
    },
    GuestRead {
        gpa: u64,
        /// `as=shared` (default private).
        shared: bool,
    },
    GuestWrite {
        gpa: u64,
        value: u8,
        shared: bool,
    },
    GuestShare {
        gpa: u64,
        pages: u64,
    },
    GuestUnshare {
        gpa: u64,
        pages: u64,
    },
    GuestRelinquish {
        gpa: u64,
        pages: u64,
    },
    /// `guest mmio-guard <enroll|map|unmap> [gpa=] [pages=]`. `gpa` is 0 for `enroll`;
    /// `pages: None` is the one-granule call, `Some(n)` the range call.
    GuestMmioGuard {
        op: MmioGuardOp,
        gpa: u64,
        pages: Option<u64>,
    },
    /// `<host|guest> reg-write <reg> value=`.
    RegWrite {
        world: World,
        reg: WorldReg,
        value: u64,
    },
    /// `<host|guest> reg-read <reg>`.
    RegRead {
        world: World,
        reg: WorldReg,
    },
    /// `<host|guest> exec <insn>`.
    Exec {
        world: World,
        insn: Insn,
    },
    /// `guest spin`: passes only as `preempted`.
    GuestSpin,
}

/// What a host read or write goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostTarget {
    /// The host's mmap view of this gmem.
    Gmem(String),
    /// The `userspace_addr` of this slot.
    Uaddr(String),
}

impl StatementKind {
    /// Whether this statement reads a byte (its success is any byte).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            StatementKind::HostRead { .. }
                | StatementKind::HostRawRead { .. }
                | StatementKind::GuestRead { .. }
                | StatementKind::HostReadShared { .. }
                | StatementKind::HostRawReadHyp { .. }
        )
    }

    /// Whether this statement gives a 64-bit value (its success is any value).
    pub fn gives_value(&self) -> bool {
        matches!(
            self,
            StatementKind::RegRead { .. } | StatementKind::HostSmc { .. }
        )
    }

    /// Whether this statement acts on the current VM (an error of the file where there is none).
    pub fn needs_vm(&self) -> bool {
        use StatementKind as K;
        match self {
            K::Gmem { .. }
            | K::Slot { .. }
            | K::Attr { .. }
            | K::HostForward { .. }
            | K::HostSharePage { .. }
            | K::HostReadShared { .. }
            | K::HostWriteShared { .. }
            | K::Pool { .. }
            | K::GuestRead { .. }
            | K::GuestWrite { .. }
            | K::GuestShare { .. }
            | K::GuestUnshare { .. }
            | K::GuestRelinquish { .. }
            | K::GuestMmioGuard { .. }
            | K::GuestSpin => true,
            K::RegWrite { world, .. } | K::RegRead { world, .. } | K::Exec { world, .. } => {
                *world == World::Guest
            }
            _ => false,
        }
    }

    /// Whether the statement is a check (every statement but `vm`; see
    /// [`Statement::is_check`] for a `vm` with `expect=`).
    pub fn is_check(&self) -> bool {
        !matches!(self, StatementKind::Vm { .. })
    }

    /// What passes when there is no `expect=`: `ok` (or any byte for a read, any value for a
    /// register read or an SMC); `preempted` for `guest spin`.
    pub fn succeeds(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Ok => !matches!(self, StatementKind::GuestSpin),
            Outcome::Byte(_) => self.is_read(),
            Outcome::Value(_) => self.gives_value(),
            Outcome::Preempted => matches!(self, StatementKind::GuestSpin),
            _ => false,
        }
    }

    /// What the line shows as expected when there is no `expect=`.
    pub fn default_expectation(&self) -> &'static str {
        if self.is_read() {
            "any byte"
        } else if self.gives_value() {
            "any value"
        } else if matches!(self, StatementKind::GuestSpin) {
            "preempted"
        } else {
            "ok"
        }
    }
}

impl Statement {
    /// Whether `outcome` satisfies this statement.
    ///
    /// With `expect=`, the outcome must equal one of its alternatives by value, except that
    /// `ok` on a read also accepts any byte (the read succeeded) and on a register read any
    /// value. Without `expect=`, the statement must succeed ([`StatementKind::succeeds`]).
    /// A `repeat` is checked by the runner, statement by statement.
    pub fn check(&self, outcome: &Outcome) -> bool {
        match &self.expect {
            None => self.kind.succeeds(outcome),
            Some(e) => e.alternatives().iter().any(|alt| match alt {
                Outcome::Ok => {
                    *outcome == Outcome::Ok
                        || (self.kind.succeeds(outcome) && *outcome != Outcome::Preempted)
                }
                a => a == outcome,
            }),
        }
    }

    /// Whether this statement counts as one check: every statement but `vm`, and a `vm` that
    /// carries `expect=`.
    pub fn is_check(&self) -> bool {
        self.kind.is_check() || self.expect.is_some()
    }
}
