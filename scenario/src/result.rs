//! Results: what a statement expects (`expect=`) and what actually happened when it ran.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use abi::Errno;

use crate::number::{parse_byte, parse_number};

/// A result in the contract's vocabulary: what actually happened when a statement ran (the
/// runner produces these), and what one alternative of an `expect=<result>` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `ok`: the statement succeeded.
    Ok,
    /// `0x..`: a read returned this byte.
    Byte(u8),
    /// `0x..`: a register read (`reg-read`) or an SMC returned this 64-bit value.
    Value(u64),
    /// `sigbus`: the host's access was refused.
    Sigbus,
    /// `abort`: a `raw-read` was stopped by the hyp, or an abort was injected into the world
    /// that made the access.
    Abort,
    /// `mmio`: a guest access outside every memslot exited to the host as MMIO.
    Mmio,
    /// `memory_fault(gpa=..,size=..,private=0|1)`: the guest access exited with a memory-fault exit.
    MemoryFault { gpa: u64, size: u64, private: bool },
    /// A host-side call failed with this error (never `EAGAIN`: that is [`Outcome::Eagain`]).
    Errno(Errno),
    /// `EAGAIN@<error_offset>`.
    Eagain(u64),
    /// `INVALID_PARAMETER` (SMCCC).
    InvalidParameter,
    /// `NOT_SUPPORTED` (SMCCC).
    NotSupported,
    /// `need_pages`: the guest's step needed a page the host had not donated.
    NeedPages,
    /// `undef`: the hyp answered with an undefined-instruction exception in that world.
    Undef,
    /// `preempted`: the host's timer brought `VcpuRun` back while the guest ran.
    Preempted,
    /// The world took an exception that is neither an undefined instruction nor an abort
    /// (its exception class). Shown as `exception(0x..)`; no `expect=` names it.
    Exception(u64),
    /// The step guest does not know the command it was given. Shown as `bad_command`; no
    /// `expect=` names it.
    BadCommand,
}

/// An `expect=<result>[|<result>]...` value: one or more alternatives in the [`Outcome`]
/// vocabulary, compared by value (numbers inside results compare as numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect(Vec<Outcome>);

impl Expect {
    /// One alternative.
    pub fn one(o: Outcome) -> Self {
        Expect(alloc::vec![o])
    }

    /// Several alternatives; `None` if there are none.
    pub fn any_of(alternatives: Vec<Outcome>) -> Option<Self> {
        (!alternatives.is_empty()).then_some(Expect(alternatives))
    }

    /// The alternatives, in the file's order (never empty).
    pub fn alternatives(&self) -> &[Outcome] {
        &self.0
    }
}

impl From<Outcome> for Expect {
    fn from(o: Outcome) -> Self {
        Expect::one(o)
    }
}

/// Parses an `expect=` value: alternatives separated by `|`, each a result in the contract's
/// vocabulary (numbers are bytes).
pub fn parse_expect(s: &str) -> Result<Expect, String> {
    parse_alternatives(s, false)
}

/// As [`parse_expect`]; with `wide`, numbers are 64-bit values ([`Outcome::Value`]), as a
/// `reg-read` or `host smc` gives them.
pub(crate) fn parse_alternatives(s: &str, wide: bool) -> Result<Expect, String> {
    let mut alts = Vec::new();
    for part in s.split('|') {
        alts.push(parse_one(part, wide)?);
    }
    Expect::any_of(alts).ok_or_else(|| String::from("empty result"))
}

/// Parses one result in the contract's vocabulary, e.g. `ok`, `0x5a`, `sigbus`, `EINVAL`,
/// `EAGAIN@0x2000`, `memory_fault(gpa=0x80001000,size=4K,private=1)`, `INVALID_PARAMETER`,
/// `need_pages`, `undef`, `preempted`.
pub fn parse_outcome(s: &str) -> Result<Outcome, String> {
    parse_one(s, false)
}

fn parse_one(s: &str, wide: bool) -> Result<Outcome, String> {
    match s {
        "" => return Err(String::from("empty result")),
        "ok" => return Ok(Outcome::Ok),
        "sigbus" => return Ok(Outcome::Sigbus),
        "abort" => return Ok(Outcome::Abort),
        "mmio" => return Ok(Outcome::Mmio),
        "INVALID_PARAMETER" => return Ok(Outcome::InvalidParameter),
        "NOT_SUPPORTED" => return Ok(Outcome::NotSupported),
        "need_pages" => return Ok(Outcome::NeedPages),
        "undef" => return Ok(Outcome::Undef),
        "preempted" => return Ok(Outcome::Preempted),
        "EAGAIN" => {
            return Err(String::from(
                "`EAGAIN` needs its error_offset: `EAGAIN@<offset>`",
            ))
        }
        _ => {}
    }
    if let Some(off) = s.strip_prefix("EAGAIN@") {
        return parse_number(off)
            .map(Outcome::Eagain)
            .map_err(|e| format!("in `{s}`: {e}"));
    }
    if let Some(inner) = s.strip_prefix("memory_fault(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| format!("`{s}`: missing `)`"))?;
        return parse_memory_fault(inner).map_err(|e| format!("in `{s}`: {e}"));
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return if wide {
            parse_number(s).map(Outcome::Value)
        } else {
            parse_byte(s).map(Outcome::Byte)
        };
    }
    if let Some(e) = Errno::from_name(s) {
        return Ok(Outcome::Errno(e));
    }
    Err(format!("unknown result `{s}`"))
}

fn parse_memory_fault(inner: &str) -> Result<Outcome, String> {
    let (mut gpa, mut size, mut private) = (None, None, None);
    for part in inner.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not key=value"))?;
        let slot = match k {
            "gpa" => &mut gpa,
            "size" => &mut size,
            "private" => &mut private,
            _ => return Err(format!("unknown key `{k}`")),
        };
        if slot.is_some() {
            return Err(format!("duplicate key `{k}`"));
        }
        *slot = Some(parse_number(v)?);
    }
    let gpa = gpa.ok_or_else(|| String::from("missing `gpa=`"))?;
    let size = size.ok_or_else(|| String::from("missing `size=`"))?;
    let private = match private {
        Some(0) => false,
        Some(1) => true,
        Some(_) => return Err(String::from("`private=` must be 0 or 1")),
        None => return Err(String::from("missing `private=`")),
    };
    Ok(Outcome::MemoryFault { gpa, size, private })
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Byte(b) => write!(f, "{b:#04x}"),
            Outcome::Value(v) => write!(f, "{v:#x}"),
            Outcome::Sigbus => f.write_str("sigbus"),
            Outcome::Abort => f.write_str("abort"),
            Outcome::Mmio => f.write_str("mmio"),
            Outcome::MemoryFault { gpa, size, private } => write!(
                f,
                "memory_fault(gpa={gpa:#x},size={size},private={})",
                u8::from(*private)
            ),
            Outcome::Errno(e) => f.write_str(e.name()),
            Outcome::Eagain(o) => write!(f, "EAGAIN@{o:#x}"),
            Outcome::InvalidParameter => f.write_str("INVALID_PARAMETER"),
            Outcome::NotSupported => f.write_str("NOT_SUPPORTED"),
            Outcome::NeedPages => f.write_str("need_pages"),
            Outcome::Undef => f.write_str("undef"),
            Outcome::Preempted => f.write_str("preempted"),
            Outcome::Exception(ec) => write!(f, "exception({ec:#x})"),
            Outcome::BadCommand => f.write_str("bad_command"),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write!(f, "{o}")?;
        }
        Ok(())
    }
}
