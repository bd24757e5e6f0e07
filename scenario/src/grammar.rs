//! The grammar: lines to [`Statement`]s, with the file's names and its current VM tracked as
//! the lines go (so a file that refers to something it never made, or acts with no current VM,
//! is an error before anything runs).

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::cmd::{Insn, WorldReg};
use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::HostCall;

use crate::number::{self, parse_number};
use crate::result::parse_alternatives;
use crate::{
    CallArg, Expect, ForwardMode, HostTarget, MmioGuardOp, ParseError, PoolSpec, Scenario,
    Statement, StatementKind, World, HYP_PROBE_LIMIT, REPEAT_MAX, RESERVED,
};

/// Parses a whole scenario file. Every line is parsed before anything can run; the first
/// error (in line order) is returned.
pub fn parse(text: &str) -> Result<Scenario, ParseError> {
    let mut statements: Vec<Statement> = Vec::new();
    let mut names = Names::default();
    let mut first_vm = None;
    let mut last_line = 0;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        last_line = line;
        let code = raw.split('#').next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        let err = |reason: String| ParseError { line, reason };
        if first_vm.is_none() && first_word(code) != "vm" {
            return Err(err(String::from(
                "the first statement must be `vm <pkvm|coco|plain>`",
            )));
        }
        let st = statement(code, line, &mut names, false).map_err(err)?;
        if let StatementKind::Vm { vm_type, .. } = &st.kind {
            first_vm.get_or_insert(*vm_type);
        }
        statements.push(st);
    }
    match first_vm {
        Some(vm) => Ok(Scenario { vm, statements }),
        None => Err(ParseError {
            line: last_line.max(1),
            reason: String::from("no `vm <pkvm|coco|plain>` statement"),
        }),
    }
}

fn first_word(code: &str) -> &str {
    code.split_whitespace().next().unwrap_or("")
}

/// One statement's text (a whole line, or one piece of a `repeat`).
fn statement(
    code: &str,
    line: usize,
    names: &mut Names,
    in_repeat: bool,
) -> Result<Statement, String> {
    if first_word(code) == "repeat" {
        if in_repeat {
            return Err(String::from("`repeat` does not nest"));
        }
        return repeat(code, line, names);
    }
    let words = Words::split(code)?;
    let wide = matches!(words.verb, "host" | "guest")
        && matches!(words.args.first().copied(), Some("reg-read" | "smc"));
    let kind = parse_kind(&words, names)?;
    let expect = words.expect(wide)?;
    names.track(&kind)?;
    Ok(Statement {
        line,
        text: code.to_owned(),
        kind,
        expect,
    })
}

/// `repeat <count> <statement> [; <statement>]...`
fn repeat(code: &str, line: usize, names: &mut Names) -> Result<Statement, String> {
    let rest = code.strip_prefix("repeat").unwrap_or("").trim_start();
    let (count_text, body_text) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| String::from("`repeat` takes a count and statements: `repeat <count> <statement> [; <statement>]...`"))?;
    let count = parse_number(count_text).map_err(|e| format!("repeat count: {e}"))?;
    if !(1..=REPEAT_MAX).contains(&count) {
        return Err(format!("repeat count {count} is outside 1..{REPEAT_MAX}"));
    }
    let mut body = Vec::new();
    for piece in body_text.split(';') {
        let piece = piece.trim();
        if piece.is_empty() {
            return Err(String::from("an empty statement in `repeat`"));
        }
        body.push(statement(piece, line, names, true)?);
    }
    // A second iteration starts where the first ended: a statement that needs a VM after a
    // `destroy` at the end of the body is an error too.
    if count > 1 {
        for st in &body {
            names.track(&st.kind)?;
        }
    }
    Ok(Statement {
        line,
        text: code.to_owned(),
        kind: StatementKind::Repeat { count, body },
        expect: None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obj {
    Vm { alive: bool },
    Gmem,
    Slot,
}

impl Obj {
    fn what(self) -> &'static str {
        match self {
            Obj::Vm { .. } => "a VM",
            Obj::Gmem => "a gmem",
            Obj::Slot => "a slot",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Obj::Vm { .. } => "VM",
            Obj::Gmem => "gmem",
            Obj::Slot => "slot",
        }
    }
}

/// The file's names so far (one name space for VMs, gmem files and slots) and its current VM.
#[derive(Default)]
struct Names {
    objs: BTreeMap<String, Obj>,
    /// `vm` statements without `name=` so far.
    unnamed_vms: u64,
    current: Option<String>,
}

impl Names {
    fn lookup(&self, name: &str, want: Obj) -> Result<String, String> {
        match self.objs.get(name) {
            Some(o) if core::mem::discriminant(o) == core::mem::discriminant(&want) => {
                Ok(name.to_owned())
            }
            Some(o) => Err(format!("`{name}` is {}, not {}", o.what(), want.what())),
            None => Err(format!(
                "no {} `{name}` declared before this line",
                want.noun()
            )),
        }
    }

    fn gmem(&self, name: &str) -> Result<String, String> {
        self.lookup(name, Obj::Gmem)
    }

    fn slot(&self, name: &str) -> Result<String, String> {
        self.lookup(name, Obj::Slot)
    }

    fn vm(&self, name: &str) -> Result<String, String> {
        self.lookup(name, Obj::Vm { alive: true })
    }

    /// Declares a gmem or slot name (never declared before, whatever it named).
    fn declare(&mut self, name: &str, what: Obj) -> Result<String, String> {
        valid_name(name)?;
        if let Some(o) = self.objs.get(name) {
            return Err(format!("`{name}` is already declared ({})", o.what()));
        }
        self.objs.insert(name.to_owned(), what);
        Ok(name.to_owned())
    }

    /// Declares a VM name: new, or the name of a VM the file destroyed.
    fn declare_vm(&mut self, given: Option<&str>) -> Result<String, String> {
        let name = match given {
            Some(n) => n.to_owned(),
            None => {
                let n = format!("vm{}", self.unnamed_vms);
                self.unnamed_vms += 1;
                n
            }
        };
        valid_name(&name)?;
        match self.objs.get(&name) {
            None | Some(Obj::Vm { alive: false }) => {}
            Some(Obj::Vm { alive: true }) => {
                return Err(format!(
                    "VM `{name}` already exists (a name is given again only after `destroy`)"
                ))
            }
            Some(o) => return Err(format!("`{name}` is already declared ({})", o.what())),
        }
        self.objs.insert(name.clone(), Obj::Vm { alive: true });
        Ok(name)
    }

    /// Follows the current VM through a statement already parsed.
    fn track(&mut self, kind: &StatementKind) -> Result<(), String> {
        match kind {
            StatementKind::Vm { name, .. } => {
                self.objs.insert(name.clone(), Obj::Vm { alive: true });
                self.current = Some(name.clone());
            }
            StatementKind::Use { vm } => {
                if self.objs.get(vm) != Some(&Obj::Vm { alive: true }) {
                    return Err(format!("`use {vm}`: VM `{vm}` was destroyed"));
                }
                self.current = Some(vm.clone());
            }
            StatementKind::Destroy { vm } => {
                self.objs.insert(vm.clone(), Obj::Vm { alive: false });
                self.current = None;
            }
            k if k.needs_vm() && self.current.is_none() => {
                return Err(String::from(
                    "no current VM here (after `destroy`, name one with `use <vm>` or create one with `vm`)",
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    if RESERVED.contains(&name) {
        return Err(format!("`{name}` is a reserved word, not a name"));
    }
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "`{name}` is not a name (a letter or `_`, then letters, digits, `_` or `-`)"
        ));
    }
    Ok(())
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

    fn req_byte(&self, what: &str, key: &str) -> Result<u8, String> {
        self.byte(key)?
            .ok_or_else(|| format!("`{what}` needs `{key}=<byte>`"))
    }

    fn expect(&self, wide: bool) -> Result<Option<Expect>, String> {
        self.get("expect")
            .map(|v| parse_alternatives(v, wide).map_err(|e| format!("`expect=`: {e}")))
            .transpose()
    }
}

fn arg<'a>(w: &Words<'a>, i: usize) -> &'a str {
    w.args.get(i).copied().unwrap_or("")
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

fn parse_kind(w: &Words<'_>, names: &mut Names) -> Result<StatementKind, String> {
    match w.verb {
        "vm" => parse_vm(w, names),
        "use" | "destroy" => {
            w.allow(w.verb, &["expect"])?;
            w.arity(w.verb, 1, "a VM name")?;
            let vm = names.vm(arg(w, 0))?;
            Ok(if w.verb == "use" {
                StatementKind::Use { vm }
            } else {
                StatementKind::Destroy { vm }
            })
        }
        "pool" => parse_pool(w),
        "gmem" => {
            w.allow("gmem", &["size", "flags", "expect"])?;
            w.arity("gmem", 1, "a name: `gmem <name> size=<n> [flags=..]`")?;
            let size = w.req_num("size")?;
            let flags = w
                .get("flags")
                .map(gmem_flags)
                .transpose()?
                .unwrap_or_default();
            let name = names.declare(arg(w, 0), Obj::Gmem)?;
            Ok(StatementKind::Gmem { name, size, flags })
        }
        "slot" => parse_slot(w, names),
        "attr" => {
            w.allow("attr", &["gpa", "size", "expect"])?;
            w.arity("attr", 1, "`attr <private|shared> gpa=<addr> size=<n>`")?;
            Ok(StatementKind::Attr {
                private: private_or_shared(arg(w, 0))?,
                gpa: w.req_num("gpa")?,
                size: w.req_num("size")?,
            })
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
            Ok(StatementKind::Convert {
                gmem,
                to,
                offset: w.req_num("offset")?,
                size: w.req_num("size")?,
                mode,
            })
        }
        "punch" => {
            w.allow("punch", &["offset", "size", "expect"])?;
            w.arity("punch", 1, "`punch <gmem> offset=<n> size=<n>`")?;
            Ok(StatementKind::Punch {
                gmem: names.gmem(arg(w, 0))?,
                offset: w.req_num("offset")?,
                size: w.req_num("size")?,
            })
        }
        "host" => parse_host(w, names),
        "guest" => parse_guest(w),
        other => Err(format!("unknown statement `{other}`")),
    }
}

fn parse_vm(w: &Words<'_>, names: &mut Names) -> Result<StatementKind, String> {
    w.allow("vm", &["name", "expect"])?;
    w.arity(
        "vm",
        1,
        "one word: `vm <pkvm|coco|plain> [name=<n>] [expect=<r>]`",
    )?;
    let vm_type = match arg(w, 0) {
        "pkvm" => VmType::Pkvm,
        "coco" => VmType::Coco,
        "plain" => VmType::Plain,
        other => return Err(format!("unknown VM type `{other}` (pkvm, coco or plain)")),
    };
    let name = names.declare_vm(w.get("name"))?;
    Ok(StatementKind::Vm { vm_type, name })
}

fn parse_pool(w: &Words<'_>) -> Result<StatementKind, String> {
    match w.args.as_slice() {
        ["auto"] => {
            w.allow("pool auto", &["expect"])?;
            Ok(StatementKind::Pool {
                spec: PoolSpec::Auto,
            })
        }
        [] => {
            w.allow("pool", &["pages", "blocks", "expect"])?;
            Ok(StatementKind::Pool {
                spec: PoolSpec::Exact {
                    pages: w.req_num("pages")?,
                    blocks: w.num("blocks")?.unwrap_or(0),
                },
            })
        }
        _ => Err(String::from(
            "`pool` takes `pages=<n> [blocks=<m>]` or `auto`",
        )),
    }
}

fn parse_slot(w: &Words<'_>, names: &mut Names) -> Result<StatementKind, String> {
    w.allow(
        "slot",
        &["gpa", "size", "gmem", "offset", "uaddr", "flags", "expect"],
    )?;
    w.arity("slot", 1, "a name: `slot <name> gpa=<addr> size=<n> ..`")?;
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
    let name = names.declare(arg(w, 0), Obj::Slot)?;
    Ok(StatementKind::Slot {
        name,
        gpa,
        size,
        gmem,
        uaddr,
        flags,
    })
}

const HOST_OPS: &str = "read, write, raw-read, raw-write, pin, unpin, forward, share-page, dma-write, call, smc, reg-write, reg-read, exec";

fn parse_host(w: &Words<'_>, names: &Names) -> Result<StatementKind, String> {
    let op = arg(w, 0);
    let what = format!("host {op}");
    match op {
        "read" | "write" if arg(w, 1) == "shared" => {
            w.arity(&what, 2, "`shared gpa=<addr>`")?;
            let gpa = w.req_num("gpa")?;
            if op == "write" {
                w.allow(&what, &["gpa", "value", "expect"])?;
                let value = w.req_byte(&what, "value")?;
                Ok(StatementKind::HostWriteShared { gpa, value })
            } else {
                w.allow(&what, &["gpa", "expect"])?;
                Ok(StatementKind::HostReadShared { gpa })
            }
        }
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
                        "`{what}` takes `<gmem>`, `uaddr <slot>` or `shared`, then `offset=<n>`"
                    ))
                }
            };
            let offset = w.req_num("offset")?;
            if write {
                let value = w.req_byte(&what, "value")?;
                Ok(StatementKind::HostWrite {
                    target,
                    offset,
                    value,
                })
            } else {
                Ok(StatementKind::HostRead { target, offset })
            }
        }
        "raw-read" | "raw-write" if arg(w, 1) == "hyp" => {
            w.arity(&what, 2, "`hyp offset=<n>`")?;
            let offset = w.req_num("offset")?;
            if offset >= HYP_PROBE_LIMIT {
                return Err(format!(
                    "`{what} hyp`: offset {offset:#x} is not below 64 KiB"
                ));
            }
            if op == "raw-write" {
                w.allow(&what, &["offset", "value", "expect"])?;
                let value = w.req_byte(&what, "value")?;
                Ok(StatementKind::HostRawWriteHyp { offset, value })
            } else {
                w.allow(&what, &["offset", "expect"])?;
                Ok(StatementKind::HostRawReadHyp { offset })
            }
        }
        "raw-write" | "dma-write" => {
            w.allow(&what, &["offset", "value", "expect"])?;
            w.arity(&what, 2, "a gmem name: `<gmem> offset=<n> value=<byte>`")?;
            let gmem = names.gmem(arg(w, 1))?;
            let offset = w.req_num("offset")?;
            let value = w.req_byte(&what, "value")?;
            Ok(if op == "raw-write" {
                StatementKind::HostRawWrite {
                    gmem,
                    offset,
                    value,
                }
            } else {
                StatementKind::HostDmaWrite {
                    gmem,
                    offset,
                    value,
                }
            })
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
        "forward" => {
            w.allow(&what, &["expect"])?;
            w.arity(&what, 2, "`honest`, `refuse` or `lie`")?;
            let mode = match arg(w, 1) {
                "honest" => ForwardMode::Honest,
                "refuse" => ForwardMode::Refuse,
                "lie" => ForwardMode::Lie,
                other => {
                    return Err(format!(
                        "`host forward {other}`: expected `honest`, `refuse` or `lie`"
                    ))
                }
            };
            Ok(StatementKind::HostForward { mode })
        }
        "share-page" => {
            w.allow(&what, &["gpa", "pages", "expect"])?;
            w.arity(&what, 1, "only options: `gpa=<addr> [pages=<n>]`")?;
            Ok(StatementKind::HostSharePage {
                gpa: w.req_num("gpa")?,
                pages: w.num("pages")?.unwrap_or(1),
            })
        }
        "call" => parse_host_call(w, names),
        "smc" => {
            w.allow(&what, &["a1", "a2", "a3", "expect"])?;
            w.arity(&what, 2, "a function ID: `host smc <id> [a1=..a3=]`")?;
            let func = parse_number(arg(w, 1)).map_err(|e| format!("SMC function: {e}"))?;
            let mut args = [0; 3];
            for (i, a) in args.iter_mut().enumerate() {
                *a = w.num(&format!("a{}", i + 1))?.unwrap_or(0);
            }
            Ok(StatementKind::HostSmc { func, args })
        }
        "reg-write" | "reg-read" | "exec" => parse_world_op(w, World::Host),
        "" => Err(format!("`host` needs an operation: {HOST_OPS}")),
        other => Err(format!("unknown host operation `{other}` ({HOST_OPS})")),
    }
}

fn parse_host_call(w: &Words<'_>, names: &Names) -> Result<StatementKind, String> {
    const KEYS: [&str; 6] = ["a1", "a2", "a3", "a4", "a5", "a6"];
    w.allow("host call", &["a1", "a2", "a3", "a4", "a5", "a6", "expect"])?;
    w.arity(
        "host call",
        2,
        "a call's name as the `abi` crate names it: `host call <name> [a1=..a6=]`",
    )?;
    let name = arg(w, 1);
    let call = HostCall::from_name(name)
        .ok_or_else(|| format!("unknown host call `{name}` (a name of `abi::host::HostCall`)"))?;
    let mut args: [CallArg; 6] = Default::default();
    for (a, key) in args.iter_mut().zip(KEYS) {
        if let Some(v) = w.get(key) {
            *a = if let Some(n) = v.strip_prefix("fresh:") {
                let n = parse_number(n).map_err(|e| format!("`{key}=fresh:`: {e}"))?;
                if n == 0 || n > 512 {
                    return Err(format!("`{key}=fresh:{n}`: 1 to 512 pages"));
                }
                CallArg::Fresh(n)
            } else if v.starts_with(|c: char| c.is_ascii_digit()) {
                CallArg::Num(parse_number(v).map_err(|e| format!("`{key}=`: {e}"))?)
            } else {
                if !names.objs.contains_key(v) {
                    return Err(format!(
                        "`{key}={v}`: neither a number nor a VM, gmem or slot declared before this line"
                    ));
                }
                CallArg::Name(v.to_owned())
            };
        }
    }
    Ok(StatementKind::HostCall { call, args })
}

impl Default for CallArg {
    fn default() -> Self {
        CallArg::Num(0)
    }
}

/// `reg-write <reg> value=`, `reg-read <reg>`, `exec <insn>` of `world`.
fn parse_world_op(w: &Words<'_>, world: World) -> Result<StatementKind, String> {
    let op = arg(w, 0);
    let what = format!("{} {op}", world.name());
    w.arity(&what, 2, "one word after the operation")?;
    let word = arg(w, 1);
    if op == "exec" {
        w.allow(&what, &["expect"])?;
        let insn = Insn::from_name(word).ok_or_else(|| {
            format!("unknown instruction `{word}` (sve, sme, pmu, dbg, semihost, fetch-device)")
        })?;
        return Ok(StatementKind::Exec { world, insn });
    }
    let reg = WorldReg::from_name(word).ok_or_else(|| {
        format!("unknown register `{word}` (d0, fpcr, tpidr_el0, apiakeylo_el1, cntv_cval_el0, cntp_cval_el0, pmccntr_el0, zcr_el1)")
    })?;
    if op == "reg-write" {
        w.allow(&what, &["value", "expect"])?;
        let value = w.req_num("value")?;
        Ok(StatementKind::RegWrite { world, reg, value })
    } else {
        w.allow(&what, &["expect"])?;
        Ok(StatementKind::RegRead { world, reg })
    }
}

const GUEST_OPS: &str =
    "read, write, share, unshare, relinquish, mmio-guard, reg-write, reg-read, exec, spin";

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
        "reg-write" | "reg-read" | "exec" => return parse_world_op(w, World::Guest),
        "spin" => {
            w.allow(&what, &["expect"])?;
            w.arity(&what, 1, "no arguments")?;
            return Ok(StatementKind::GuestSpin);
        }
        "mmio-guard" => return parse_mmio_guard(w),
        "" => return Err(format!("`guest` needs an operation: {GUEST_OPS}")),
        other => return Err(format!("unknown guest operation `{other}` ({GUEST_OPS})")),
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
        "write" => StatementKind::GuestWrite {
            gpa,
            value: w.req_byte(&what, "value")?,
            shared: shared(w)?,
        },
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

fn parse_mmio_guard(w: &Words<'_>) -> Result<StatementKind, String> {
    w.arity("guest mmio-guard", 2, "`enroll`, `map` or `unmap`")?;
    let op = match arg(w, 1) {
        "enroll" => {
            w.allow("guest mmio-guard enroll", &["expect"])?;
            return Ok(StatementKind::GuestMmioGuard {
                op: MmioGuardOp::Enroll,
                gpa: 0,
                pages: None,
            });
        }
        "map" => MmioGuardOp::Map,
        "unmap" => MmioGuardOp::Unmap,
        other => {
            return Err(format!(
                "`guest mmio-guard {other}`: expected `enroll`, `map` or `unmap`"
            ))
        }
    };
    w.allow("guest mmio-guard", &["gpa", "pages", "expect"])?;
    Ok(StatementKind::GuestMmioGuard {
        op,
        gpa: w.req_num("gpa")?,
        pages: w.num("pages")?,
    })
}
