//! Results: what a statement expects (`expect=`) and what actually happened when it ran.

use alloc::format;
use alloc::string::String;
use core::fmt;

use abi::Errno;

use crate::number::{parse_byte, parse_number};

/// A result in the contract's vocabulary: what actually happened when a statement ran (the
/// runner produces these), and what an `expect=<result>` names (see [`Expect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `ok`: the statement succeeded.
    Ok,
    /// `0x..`: a read returned this byte.
    Byte(u8),
    /// `sigbus`: the host's access was refused.
    Sigbus,
    /// `abort`: a `raw-read` was stopped by the hyp.
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
}

/// An `expect=<result>` value: the same vocabulary as [`Outcome`], compared by value (numbers
/// inside results compare as numbers).
pub type Expect = Outcome;

/// Parses a result in the contract's vocabulary, e.g. `ok`, `0x5a`, `sigbus`, `EINVAL`,
/// `EAGAIN@0x2000`, `memory_fault(gpa=0x80001000,size=4K,private=1)`, `INVALID_PARAMETER`.
pub fn parse_expect(s: &str) -> Result<Expect, String> {
    match s {
        "" => return Err(String::from("empty result")),
        "ok" => return Ok(Expect::Ok),
        "sigbus" => return Ok(Expect::Sigbus),
        "abort" => return Ok(Expect::Abort),
        "mmio" => return Ok(Expect::Mmio),
        "INVALID_PARAMETER" => return Ok(Expect::InvalidParameter),
        "NOT_SUPPORTED" => return Ok(Expect::NotSupported),
        "EAGAIN" => {
            return Err(String::from(
                "`EAGAIN` needs its error_offset: `EAGAIN@<offset>`",
            ))
        }
        _ => {}
    }
    if let Some(off) = s.strip_prefix("EAGAIN@") {
        return parse_number(off)
            .map(Expect::Eagain)
            .map_err(|e| format!("in `{s}`: {e}"));
    }
    if let Some(inner) = s.strip_prefix("memory_fault(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| format!("`{s}`: missing `)`"))?;
        return parse_memory_fault(inner).map_err(|e| format!("in `{s}`: {e}"));
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_byte(s).map(Expect::Byte);
    }
    if let Some(e) = Errno::from_name(s) {
        return Ok(Expect::Errno(e));
    }
    Err(format!("unknown result `{s}`"))
}

fn parse_memory_fault(inner: &str) -> Result<Expect, String> {
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
    Ok(Expect::MemoryFault { gpa, size, private })
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Byte(b) => write!(f, "{b:#04x}"),
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
        }
    }
}
