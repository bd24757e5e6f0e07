//! Parser for scenario files, the text contract that drives the system
//! (`/work/shared/spec/SCENARIOS.md`).
//!
//! [`parse`] turns a whole file into a [`Scenario`] or the first [`ParseError`] (line number and
//! reason); nothing is run before every line has been parsed. The runner executes the statements,
//! produces an [`Outcome`] for each, and asks [`Statement::check`] whether it held.
//!
//! The parser takes untrusted text: it never panics, whatever the input.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod number;
mod result;

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};

pub use number::parse_number;
pub use result::{parse_expect, Expect, Outcome};

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

/// A parsed scenario file: one VM and the statements to run against it, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub vm: VmType,
    /// Every statement after `vm`.
    pub statements: Vec<Statement>,
}

/// One statement (every statement but `vm` is one check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// 1-based line number.
    pub line: usize,
    /// The source line, trimmed, without its comment.
    pub text: String,
    pub kind: StatementKind,
    /// `None`: the statement must succeed (`ok`, or any byte for a read).
    pub expect: Option<Expect>,
}

/// What a statement does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatementKind {
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
        )
    }
}

impl Statement {
    /// Whether `outcome` satisfies this statement.
    ///
    /// With `expect=`, the outcome must equal it by value, except that `expect=ok` on a read
    /// also accepts any byte (the read succeeded). Without `expect=`, the statement must
    /// succeed: `ok`, or any byte for a read.
    pub fn check(&self, outcome: &Outcome) -> bool {
        let read_ok = self.kind.is_read() && matches!(outcome, Outcome::Byte(_));
        match &self.expect {
            None | Some(Expect::Ok) => *outcome == Outcome::Ok || read_ok,
            Some(e) => e == outcome,
        }
    }
}

/// Parses a whole scenario file. Every line is parsed before anything can run; the first
/// error (in line order) is returned.
pub fn parse(text: &str) -> Result<Scenario, ParseError> {
    let mut vm = None;
    let mut statements = Vec::new();
    let mut names = Names::default();
    let mut last_line = 0;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        last_line = line;
        let code = raw.split('#').next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        let err = |reason: String| ParseError { line, reason };
        let words = Words::split(code).map_err(err)?;
        if words.verb == "vm" {
            if vm.is_some() {
                return Err(err(String::from(
                    "a second `vm` statement (one VM per file)",
                )));
            }
            vm = Some(parse_vm(&words).map_err(err)?);
            continue;
        }
        if vm.is_none() {
            return Err(err(String::from(
                "the first statement must be `vm <pkvm|coco|plain>`",
            )));
        }
        let (kind, expect) = parse_statement(&words, &mut names).map_err(err)?;
        statements.push(Statement {
            line,
            text: code.to_owned(),
            kind,
            expect,
        });
    }
    match vm {
        Some(vm) => Ok(Scenario { vm, statements }),
        None => Err(ParseError {
            line: last_line.max(1),
            reason: String::from("no `vm <pkvm|coco|plain>` statement"),
        }),
    }
}

/// Names declared so far (a name must be declared before it is used).
#[derive(Default)]
struct Names {
    gmems: Vec<String>,
    slots: Vec<String>,
}

impl Names {
    fn gmem(&self, name: &str) -> Result<String, String> {
        if self.gmems.iter().any(|g| g == name) {
            Ok(name.to_owned())
        } else {
            Err(format!("no gmem `{name}` declared before this line"))
        }
    }

    fn slot(&self, name: &str) -> Result<String, String> {
        if self.slots.iter().any(|s| s == name) {
            Ok(name.to_owned())
        } else {
            Err(format!("no slot `{name}` declared before this line"))
        }
    }
}

/// One line split into its verb, positional words and `key=value` options.
struct Words<'a> {
    verb: &'a str,
    args: Vec<&'a str>,
    opts: Vec<(&'a str, &'a str)>,
}

impl<'a> Words<'a> {
    fn split(code: &'a str) -> Result<Self, String> {
        let mut tokens = code.split_whitespace();
        let verb = tokens.next().unwrap_or("");
        if verb.contains('=') {
            return Err(format!("expected a statement, found option `{verb}`"));
        }
        let mut args = Vec::new();
        let mut opts: Vec<(&str, &str)> = Vec::new();
        for tok in tokens {
            match tok.split_once('=') {
                Some((k, v)) => {
                    if opts.iter().any(|(k2, _)| *k2 == k) {
                        return Err(format!("duplicate option `{k}`"));
                    }
                    opts.push((k, v));
                }
                None => {
                    if !opts.is_empty() {
                        return Err(format!("`{tok}` after the options (options come last)"));
                    }
                    args.push(tok);
                }
            }
        }
        Ok(Words { verb, args, opts })
    }

    /// Checks that every option is one of `allowed`; the first one that is not is an error.
    fn allow(&self, what: &str, allowed: &[&str]) -> Result<(), String> {
        match self.opts.iter().find(|(k, _)| !allowed.contains(k)) {
            Some((k, _)) => Err(format!("unknown option `{k}` for `{what}`")),
            None => Ok(()),
        }
    }

    /// Checks the number of positional words.
    fn arity(&self, what: &str, n: usize, usage: &str) -> Result<(), String> {
        if self.args.len() == n {
            Ok(())
        } else {
            Err(format!("`{what}` takes {usage}"))
        }
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.opts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn num(&self, key: &str) -> Result<Option<u64>, String> {
        self.get(key)
            .map(|v| parse_number(v).map_err(|e| format!("`{key}=`: {e}")))
            .transpose()
    }

    fn req_num(&self, key: &str) -> Result<u64, String> {
        self.num(key)?.ok_or_else(|| format!("missing `{key}=<n>`"))
    }

    fn byte(&self, key: &str) -> Result<Option<u8>, String> {
        self.get(key)
            .map(|v| number::parse_byte(v).map_err(|e| format!("`{key}=`: {e}")))
            .transpose()
    }

    fn expect(&self) -> Result<Option<Expect>, String> {
        self.get("expect")
            .map(|v| parse_expect(v).map_err(|e| format!("`expect=`: {e}")))
            .transpose()
    }
}

fn parse_vm(w: &Words<'_>) -> Result<VmType, String> {
    if let Some((k, _)) = w.opts.first() {
        return Err(format!("unknown option `{k}` for `vm`"));
    }
    w.arity("vm", 1, "one word: `vm <pkvm|coco|plain>`")?;
    match w.args.first().copied().unwrap_or("") {
        "pkvm" => Ok(VmType::Pkvm),
        "coco" => Ok(VmType::Coco),
        "plain" => Ok(VmType::Plain),
        other => Err(format!("unknown VM type `{other}` (pkvm, coco or plain)")),
    }
}

fn private_or_shared(word: &str) -> Result<bool, String> {
    match word {
        "private" => Ok(true),
        "shared" => Ok(false),
        other => Err(format!("`{other}`: expected `private` or `shared`")),
    }
}

fn gmem_flags(list: &str) -> Result<GmemFlags, String> {
    let mut flags = GmemFlags::empty();
    for f in list.split(',') {
        flags |= match f {
            "mmap" => GmemFlags::MMAP,
            "init_shared" => GmemFlags::INIT_SHARED,
            "track_shareability" => GmemFlags::TRACK_SHAREABILITY,
            "no_direct_map" => GmemFlags::NO_DIRECT_MAP,
            other => {
                return Err(format!(
                    "unknown gmem flag `{other}` (mmap, init_shared, track_shareability, no_direct_map)"
                ))
            }
        };
    }
    Ok(flags)
}

fn slot_flags(list: &str) -> Result<MemslotFlags, String> {
    let mut flags = MemslotFlags::empty();
    for f in list.split(',') {
        flags |= match f {
            "always_fault_from_gmem" => MemslotFlags::ALWAYS_FAULT_FROM_GMEM,
            "dont_check_mismatches" => MemslotFlags::DONT_CHECK_MISMATCHES,
            other => {
                return Err(format!(
                    "unknown slot flag `{other}` (always_fault_from_gmem, dont_check_mismatches)"
                ))
            }
        };
    }
    Ok(flags)
}

fn arg<'a>(w: &Words<'a>, i: usize) -> &'a str {
    w.args.get(i).copied().unwrap_or("")
}

fn parse_statement(
    w: &Words<'_>,
    names: &mut Names,
) -> Result<(StatementKind, Option<Expect>), String> {
    let kind = match w.verb {
        "gmem" => {
            w.allow("gmem", &["size", "flags", "expect"])?;
            w.arity("gmem", 1, "a name: `gmem <name> size=<n> [flags=..]`")?;
            let name = arg(w, 0);
            if names.gmems.iter().any(|g| g == name) {
                return Err(format!("gmem `{name}` is already declared"));
            }
            let size = w.req_num("size")?;
            let flags = w
                .get("flags")
                .map(gmem_flags)
                .transpose()?
                .unwrap_or_default();
            names.gmems.push(name.to_owned());
            StatementKind::Gmem {
                name: name.to_owned(),
                size,
                flags,
            }
        }
        "slot" => {
            w.allow(
                "slot",
                &["gpa", "size", "gmem", "offset", "uaddr", "flags", "expect"],
            )?;
            w.arity("slot", 1, "a name: `slot <name> gpa=<addr> size=<n> ..`")?;
            let name = arg(w, 0);
            if names.slots.iter().any(|s| s == name) {
                return Err(format!("slot `{name}` is already declared"));
            }
            let gpa = w.req_num("gpa")?;
            let size = w.req_num("size")?;
            let offset = w.num("offset")?;
            let gmem = match (w.get("gmem"), offset) {
                (Some(g), off) => Some((names.gmem(g)?, off.unwrap_or(0))),
                (None, Some(_)) => return Err(String::from("`offset=` needs `gmem=`")),
                (None, None) => None,
            };
            let uaddr = match w.get("uaddr") {
                None => UserspaceAddr::None,
                Some("anon") => UserspaceAddr::Anon,
                Some("gmem") if gmem.is_some() => UserspaceAddr::Gmem,
                Some("gmem") => return Err(String::from("`uaddr=gmem` needs `gmem=`")),
                Some(other) => return Err(format!("`uaddr={other}`: expected `anon` or `gmem`")),
            };
            let flags = w
                .get("flags")
                .map(slot_flags)
                .transpose()?
                .unwrap_or_default();
            names.slots.push(name.to_owned());
            StatementKind::Slot {
                name: name.to_owned(),
                gpa,
                size,
                gmem,
                uaddr,
                flags,
            }
        }
        "attr" => {
            w.allow("attr", &["gpa", "size", "expect"])?;
            w.arity("attr", 1, "`attr <private|shared> gpa=<addr> size=<n>`")?;
            StatementKind::Attr {
                private: private_or_shared(arg(w, 0))?,
                gpa: w.req_num("gpa")?,
                size: w.req_num("size")?,
            }
        }
        "convert" => {
            w.allow("convert", &["offset", "size", "mode", "expect"])?;
            w.arity(
                "convert",
                2,
                "`convert <gmem> <private|shared> offset=<n> size=<n> [mode=..]`",
            )?;
            let gmem = names.gmem(arg(w, 0))?;
            let to = if private_or_shared(arg(w, 1))? {
                ConvertTo::Private
            } else {
                ConvertTo::Shared
            };
            let mode = match w.get("mode") {
                None => None,
                Some("zero") => Some(ContentMode::Zero),
                Some("preserve") => Some(ContentMode::Preserve),
                Some(other) => {
                    return Err(format!("`mode={other}`: expected `zero` or `preserve`"))
                }
            };
            StatementKind::Convert {
                gmem,
                to,
                offset: w.req_num("offset")?,
                size: w.req_num("size")?,
                mode,
            }
        }
        "punch" => {
            w.allow("punch", &["offset", "size", "expect"])?;
            w.arity("punch", 1, "`punch <gmem> offset=<n> size=<n>`")?;
            StatementKind::Punch {
                gmem: names.gmem(arg(w, 0))?,
                offset: w.req_num("offset")?,
                size: w.req_num("size")?,
            }
        }
        "host" => parse_host(w, names)?,
        "guest" => parse_guest(w)?,
        other => return Err(format!("unknown statement `{other}`")),
    };
    Ok((kind, w.expect()?))
}

fn parse_host(w: &Words<'_>, names: &Names) -> Result<StatementKind, String> {
    let op = arg(w, 0);
    let what = format!("host {op}");
    match op {
        "read" | "write" => {
            let write = op == "write";
            if write {
                w.allow(&what, &["offset", "value", "expect"])?;
            } else if w.get("value").is_some() {
                return Err(String::from("`host read` takes no `value=`"));
            } else {
                w.allow(&what, &["offset", "expect"])?;
            }
            let target = match w.args.len() {
                2 => HostTarget::Gmem(names.gmem(arg(w, 1))?),
                3 if arg(w, 1) == "uaddr" => HostTarget::Uaddr(names.slot(arg(w, 2))?),
                _ => {
                    return Err(format!(
                        "`{what}` takes `<gmem>` or `uaddr <slot>`, then `offset=<n>`"
                    ))
                }
            };
            let offset = w.req_num("offset")?;
            if write {
                let value = w
                    .byte("value")?
                    .ok_or_else(|| String::from("`host write` needs `value=<byte>`"))?;
                Ok(StatementKind::HostWrite {
                    target,
                    offset,
                    value,
                })
            } else {
                Ok(StatementKind::HostRead { target, offset })
            }
        }
        "raw-read" | "pin" | "unpin" => {
            w.allow(&what, &["offset", "expect"])?;
            w.arity(&what, 2, "a gmem name: `<gmem> offset=<n>`")?;
            let gmem = names.gmem(arg(w, 1))?;
            let offset = w.req_num("offset")?;
            Ok(match op {
                "raw-read" => StatementKind::HostRawRead { gmem, offset },
                "pin" => StatementKind::HostPin { gmem, offset },
                _ => StatementKind::HostUnpin { gmem, offset },
            })
        }
        "" => Err(String::from(
            "`host` needs an operation: read, write, raw-read, pin or unpin",
        )),
        other => Err(format!(
            "unknown host operation `{other}` (read, write, raw-read, pin, unpin)"
        )),
    }
}

fn parse_guest(w: &Words<'_>) -> Result<StatementKind, String> {
    let op = arg(w, 0);
    let what = format!("guest {op}");
    let shared = |w: &Words<'_>| -> Result<bool, String> {
        match w.get("as") {
            None | Some("private") => Ok(false),
            Some("shared") => Ok(true),
            Some(other) => Err(format!("`as={other}`: expected `private` or `shared`")),
        }
    };
    match op {
        "read" | "write" | "share" | "unshare" | "relinquish" => {}
        "" => {
            return Err(String::from(
                "`guest` needs an operation: read, write, share, unshare or relinquish",
            ))
        }
        other => {
            return Err(format!(
                "unknown guest operation `{other}` (read, write, share, unshare, relinquish)"
            ))
        }
    }
    match op {
        "read" => {
            if w.get("value").is_some() {
                return Err(String::from("`guest read` takes no `value=`"));
            }
            w.allow(&what, &["gpa", "as", "expect"])?;
        }
        "write" => w.allow(&what, &["gpa", "value", "as", "expect"])?,
        _ => w.allow(&what, &["gpa", "pages", "expect"])?,
    }
    w.arity(&what, 1, "only options")?;
    let gpa = w.req_num("gpa")?;
    Ok(match op {
        "read" => StatementKind::GuestRead {
            gpa,
            shared: shared(w)?,
        },
        "write" => {
            let value = w
                .byte("value")?
                .ok_or_else(|| String::from("`guest write` needs `value=<byte>`"))?;
            StatementKind::GuestWrite {
                gpa,
                value,
                shared: shared(w)?,
            }
        }
        _ => {
            let pages = w.num("pages")?.unwrap_or(1);
            match op {
                "share" => StatementKind::GuestShare { gpa, pages },
                "unshare" => StatementKind::GuestUnshare { gpa, pages },
                _ => StatementKind::GuestRelinquish { gpa, pages },
            }
        }
    })
}
