//! Tests of the scenario grammar (SCENARIOS.md).

use abi::cmd::{Insn, WorldReg};
use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::host::HostCall;
use abi::Errno;
use scenario::{
    parse, parse_expect, parse_number, parse_outcome, CallArg, Expect, ForwardMode, HostTarget,
    MmioGuardOp, Outcome, ParseError, PoolSpec, Scenario, Statement, StatementKind as K, World,
};

const EXAMPLE: &str = "\
vm pkvm
gmem g size=64K flags=mmap,track_shareability
slot s gpa=0x80000000 size=64K gmem=g offset=0 flags=always_fault_from_gmem,dont_check_mismatches
guest write gpa=0x80001000 value=0x5a
host read g offset=0x1000 expect=sigbus
host raw-read g offset=0x1000 expect=abort
guest share gpa=0x80001000 expect=ok
host read g offset=0x1000 expect=0x5a
host pin g offset=0x1000
guest unshare gpa=0x80001000 expect=INVALID_PARAMETER
host unpin g offset=0x1000
guest unshare gpa=0x80001000 expect=ok
host read g offset=0x1000 expect=sigbus
";

fn g(s: &str) -> String {
    s.to_owned()
}

/// One expected outcome.
fn ex(o: Outcome) -> Option<Expect> {
    Some(Expect::one(o))
}

/// The statements after the `vm` that opens the file.
fn body(sc: &Scenario) -> &[Statement] {
    assert!(matches!(sc.statements[0].kind, K::Vm { .. }), "{sc:?}");
    &sc.statements[1..]
}

#[test]
fn example_parses_into_the_right_statements() {
    let sc = parse(EXAMPLE).unwrap();
    assert_eq!(sc.vm, VmType::Pkvm);
    let got: Vec<(usize, K, Option<Expect>)> = body(&sc)
        .iter()
        .map(|s| (s.line, s.kind.clone(), s.expect.clone()))
        .collect();
    let gt = || HostTarget::Gmem(g("g"));
    let want = vec![
        (
            2,
            K::Gmem {
                name: g("g"),
                size: 65536,
                flags: GmemFlags::MMAP | GmemFlags::TRACK_SHAREABILITY,
            },
            None,
        ),
        (
            3,
            K::Slot {
                name: g("s"),
                gpa: 0x8000_0000,
                size: 65536,
                gmem: Some((g("g"), 0)),
                uaddr: UserspaceAddr::None,
                flags: MemslotFlags::ALWAYS_FAULT_FROM_GMEM | MemslotFlags::DONT_CHECK_MISMATCHES,
            },
            None,
        ),
        (
            4,
            K::GuestWrite {
                gpa: 0x8000_1000,
                value: 0x5a,
                shared: false,
            },
            None,
        ),
        (
            5,
            K::HostRead {
                target: gt(),
                offset: 0x1000,
            },
            ex(Outcome::Sigbus),
        ),
        (
            6,
            K::HostRawRead {
                gmem: g("g"),
                offset: 0x1000,
            },
            ex(Outcome::Abort),
        ),
        (
            7,
            K::GuestShare {
                gpa: 0x8000_1000,
                pages: 1,
            },
            ex(Outcome::Ok),
        ),
        (
            8,
            K::HostRead {
                target: gt(),
                offset: 0x1000,
            },
            ex(Outcome::Byte(0x5a)),
        ),
        (
            9,
            K::HostPin {
                gmem: g("g"),
                offset: 0x1000,
            },
            None,
        ),
        (
            10,
            K::GuestUnshare {
                gpa: 0x8000_1000,
                pages: 1,
            },
            ex(Outcome::InvalidParameter),
        ),
        (
            11,
            K::HostUnpin {
                gmem: g("g"),
                offset: 0x1000,
            },
            None,
        ),
        (
            12,
            K::GuestUnshare {
                gpa: 0x8000_1000,
                pages: 1,
            },
            ex(Outcome::Ok),
        ),
        (
            13,
            K::HostRead {
                target: gt(),
                offset: 0x1000,
            },
            ex(Outcome::Sigbus),
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(body(&sc)[2].text, "guest write gpa=0x80001000 value=0x5a");
}

#[test]
fn comments_blank_lines_and_text() {
    let sc =
        parse("# a scenario\n\n   vm coco   # the VM\n\t\ngmem g size=4096 # trailing\n# done\n")
            .unwrap();
    assert_eq!(sc.vm, VmType::Coco);
    assert_eq!(body(&sc).len(), 1);
    assert_eq!(body(&sc)[0].line, 5);
    assert_eq!(body(&sc)[0].text, "gmem g size=4096");
    // CRLF line endings.
    let sc = parse("vm plain\r\ngmem g size=4K\r\n").unwrap();
    assert_eq!(sc.vm, VmType::Plain);
    assert_eq!(body(&sc)[0].text, "gmem g size=4K");
}

#[test]
fn every_statement_form() {
    let sc = parse(
        "vm coco
gmem a size=8K flags=init_shared,no_direct_map expect=EINVAL
gmem b size=8K
slot s gpa=0x1000 size=8K uaddr=anon
slot t size=4K gpa=0x4000 offset=0x1000 gmem=a uaddr=gmem expect=EEXIST
slot u gpa=0x8000 size=4K gmem=b
attr private gpa=0x1000 size=4K
attr shared size=4K gpa=0x1000 expect=EPERM
convert a shared offset=0 size=4K mode=zero expect=EAGAIN@0x1000
convert a private offset=0 size=4K
convert b private offset=0 size=4K mode=preserve
punch a offset=4K size=4K
host write uaddr s offset=1 value=255
host read uaddr t offset=2 expect=0
host write a offset=3 value=7 expect=sigbus
guest read gpa=0x1000 as=shared
guest read gpa=0x1000 as=private expect=memory_fault(private=1,size=4K,gpa=0x1000)
guest write gpa=0x2000 value=1 as=shared
guest relinquish gpa=0x2000 pages=4 expect=NOT_SUPPORTED
guest share gpa=0x2000 pages=0
",
    )
    .unwrap();
    let k: Vec<K> = body(&sc).iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        k[0],
        K::Gmem {
            name: g("a"),
            size: 8192,
            flags: GmemFlags::INIT_SHARED | GmemFlags::NO_DIRECT_MAP
        }
    );
    assert_eq!(body(&sc)[0].expect, ex(Outcome::Errno(Errno::EINVAL)));
    assert_eq!(
        k[2],
        K::Slot {
            name: g("s"),
            gpa: 0x1000,
            size: 8192,
            gmem: None,
            uaddr: UserspaceAddr::Anon,
            flags: MemslotFlags::empty()
        }
    );
    assert_eq!(
        k[3],
        K::Slot {
            name: g("t"),
            gpa: 0x4000,
            size: 4096,
            gmem: Some((g("a"), 0x1000)),
            uaddr: UserspaceAddr::Gmem,
            flags: MemslotFlags::empty()
        }
    );
    assert_eq!(
        k[4],
        K::Slot {
            name: g("u"),
            gpa: 0x8000,
            size: 4096,
            gmem: Some((g("b"), 0)),
            uaddr: UserspaceAddr::None,
            flags: MemslotFlags::empty()
        }
    );
    assert_eq!(
        k[5],
        K::Attr {
            private: true,
            gpa: 0x1000,
            size: 4096
        }
    );
    assert_eq!(
        k[6],
        K::Attr {
            private: false,
            gpa: 0x1000,
            size: 4096
        }
    );
    assert_eq!(
        k[7],
        K::Convert {
            gmem: g("a"),
            to: ConvertTo::Shared,
            offset: 0,
            size: 4096,
            mode: Some(ContentMode::Zero)
        }
    );
    assert_eq!(body(&sc)[7].expect, ex(Outcome::Eagain(0x1000)));
    assert_eq!(
        k[8],
        K::Convert {
            gmem: g("a"),
            to: ConvertTo::Private,
            offset: 0,
            size: 4096,
            mode: None
        }
    );
    assert_eq!(
        k[9],
        K::Convert {
            gmem: g("b"),
            to: ConvertTo::Private,
            offset: 0,
            size: 4096,
            mode: Some(ContentMode::Preserve)
        }
    );
    assert_eq!(
        k[10],
        K::Punch {
            gmem: g("a"),
            offset: 4096,
            size: 4096
        }
    );
    assert_eq!(
        k[11],
        K::HostWrite {
            target: HostTarget::Uaddr(g("s")),
            offset: 1,
            value: 255
        }
    );
    assert_eq!(
        k[12],
        K::HostRead {
            target: HostTarget::Uaddr(g("t")),
            offset: 2
        }
    );
    assert_eq!(body(&sc)[12].expect, ex(Outcome::Byte(0)));
    assert_eq!(
        k[13],
        K::HostWrite {
            target: HostTarget::Gmem(g("a")),
            offset: 3,
            value: 7
        }
    );
    assert_eq!(
        k[14],
        K::GuestRead {
            gpa: 0x1000,
            shared: true
        }
    );
    assert_eq!(
        k[15],
        K::GuestRead {
            gpa: 0x1000,
            shared: false
        }
    );
    assert_eq!(
        body(&sc)[15].expect,
        ex(Outcome::MemoryFault {
            gpa: 0x1000,
            size: 4096,
            private: true
        })
    );
    assert_eq!(
        k[16],
        K::GuestWrite {
            gpa: 0x2000,
            value: 1,
            shared: true
        }
    );
    assert_eq!(
        k[17],
        K::GuestRelinquish {
            gpa: 0x2000,
            pages: 4
        }
    );
    assert_eq!(body(&sc)[17].expect, ex(Outcome::NotSupported));
    assert_eq!(
        k[18],
        K::GuestShare {
            gpa: 0x2000,
            pages: 0
        }
    );
}

/// Parses `body` after a `vm pkvm` line and a gmem `g` + slot `s`, and returns the error.
fn err(body: &str) -> ParseError {
    let text = format!("vm pkvm\ngmem g size=64K flags=mmap\nslot s gpa=0x80000000 size=64K gmem=g uaddr=gmem\n{body}");
    match parse(&text) {
        Ok(sc) => panic!("parsed {body:?} into {sc:?}"),
        Err(e) => e,
    }
}

fn assert_err(body: &str, line: usize, needle: &str) {
    let e = err(body);
    assert_eq!(e.line, line, "{body:?}: {e}");
    assert!(
        e.reason.contains(needle),
        "{body:?}: reason {:?} lacks {needle:?}",
        e.reason
    );
}

#[test]
fn error_cases_name_the_line() {
    // Line 4 is the first line after the prelude.
    let cases: &[(&str, usize, &str)] = &[
        ("frobnicate x", 4, "frobnicate"),
        ("\n\n# c\nfrobnicate x", 7, "frobnicate"),
        ("gmem h size=4K colour=red", 4, "colour"),
        ("gmem h size=4K size=8K", 4, "duplicate"),
        ("gmem h", 4, "size"),
        ("gmem h size=4K flags=mmap,bogus", 4, "bogus"),
        ("gmem h size=4K flags=", 4, "flag"),
        ("gmem g size=4K", 4, "already"),
        ("gmem h size=4K\ngmem h size=4K", 5, "already"),
        ("gmem size=4K", 4, "name"),
        ("gmem a b size=4K", 4, "name"),
        ("gmem h size=lots", 4, "lots"),
        ("slot s gpa=0 size=4K", 4, "already"),
        ("slot t gpa=0 size=4K gmem=nope", 4, "nope"),
        ("slot t gpa=0 size=4K gmem=h\ngmem h size=4K", 4, "h"),
        ("slot t gpa=0 size=4K offset=0", 4, "gmem="),
        ("slot t size=4K", 4, "gpa"),
        ("slot t gpa=0", 4, "size"),
        ("slot t gpa=0 size=4K uaddr=heap", 4, "heap"),
        ("slot t gpa=0 size=4K uaddr=gmem", 4, "gmem="),
        ("slot t gpa=0 size=4K flags=mmap", 4, "mmap"),
        ("slot t gpa=0 size=4K weird=1", 4, "weird"),
        ("attr public gpa=0 size=4K", 4, "public"),
        ("attr private size=4K", 4, "gpa"),
        ("attr private gpa=0 size=4K offset=0", 4, "offset"),
        ("convert nope shared offset=0 size=4K", 4, "nope"),
        ("convert g sideways offset=0 size=4K", 4, "sideways"),
        ("convert g shared offset=0 size=4K mode=copy", 4, "copy"),
        ("convert g shared size=4K", 4, "offset"),
        ("convert g offset=0 size=4K", 4, "convert"),
        ("punch nope offset=0 size=4K", 4, "nope"),
        ("punch g offset=0", 4, "size"),
        ("host read nope offset=0", 4, "nope"),
        ("host write nope offset=0 value=1", 4, "nope"),
        ("host raw-read nope offset=0", 4, "nope"),
        ("host pin nope offset=0", 4, "nope"),
        ("host unpin nope offset=0", 4, "nope"),
        ("host read uaddr nope offset=0", 4, "nope"),
        ("host write uaddr g offset=0 value=1", 4, "g"),
        ("host read uaddr s\nhost read s offset=0", 4, "offset"),
        ("host read g offset=0 value=1", 4, "value"),
        ("host write g offset=0", 4, "value"),
        ("host write g offset=0 value=256", 4, "byte"),
        ("host read g", 4, "offset"),
        ("host peek g offset=0", 4, "peek"),
        ("host", 4, "operation"),
        ("host raw-read g offset=0 value=1", 4, "value"),
        ("host pin g offset=0 size=1", 4, "size"),
        ("guest read gpa=0 value=1", 4, "value"),
        ("guest write gpa=0", 4, "value"),
        ("guest write gpa=0 value=0x100", 4, "byte"),
        ("guest write gpa=0 value=1 as=public", 4, "public"),
        ("guest read gpa=0 as=", 4, "as="),
        ("guest read", 4, "gpa"),
        ("guest share gpa=0 as=shared", 4, "as"),
        ("guest share gpa=0 pages=many", 4, "many"),
        ("guest jump gpa=0", 4, "jump"),
        ("guest", 4, "operation"),
        ("guest read extra gpa=0", 4, "guest read"),
        ("guest read gpa=0 expect=sometimes", 4, "sometimes"),
        ("guest read gpa=0 expect=", 4, "expect"),
        ("guest read gpa=0 expect=0x100", 4, "byte"),
        ("guest read gpa=0 expect=EAGAIN", 4, "EAGAIN"),
        (
            "guest read gpa=0 expect=memory_fault(gpa=0,size=4K)",
            4,
            "private",
        ),
        ("host read g offset=0 =5", 4, "``"),
        ("host read g offset=0 extra", 4, "extra"),
        ("gpa=0", 4, "gpa=0"),
        ("vm pkvm name=s", 4, "already"),
        ("vm pkvm name=vm0", 4, "already"),
        ("vm pkvm name=hyp", 4, "reserved"),
        ("gmem shared size=4K", 4, "reserved"),
        ("slot uaddr gpa=0 size=4K", 4, "reserved"),
        ("gmem 9lives size=4K", 4, "not a name"),
        ("vm pkvm name=", 4, "not a name"),
        ("vm pkvm name=a.b", 4, "not a name"),
        ("guest read gpa=0x10000000000000000", 4, "64 bits"),
    ];
    for &(body, line, needle) in cases {
        assert_err(body, line, needle);
    }
}

#[test]
fn vm_must_come_first_and_once() {
    let e = parse("gmem g size=4K\nvm pkvm\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = parse("# only a comment\n\ngmem g size=4K\n").unwrap_err();
    assert_eq!(e.line, 3);
    let e = parse("").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.reason.contains("vm"));
    let e = parse("# nothing\n\n").unwrap_err();
    assert_eq!(e.line, 2);
    let e = parse("vm\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = parse("vm kvm\n").unwrap_err();
    assert!(e.reason.contains("kvm"));
    let e = parse("vm pkvm coco\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = parse("vm pkvm flavour=ok\n").unwrap_err();
    assert!(e.reason.contains("flavour"), "{e}");
    let e = parse("repeat 2 vm pkvm\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = parse("vm pkvm size=1\n").unwrap_err();
    assert_eq!(e.to_string(), format!("line 1: {}", e.reason));
    let sc = parse("vm plain\n").unwrap();
    assert_eq!(sc.statements.len(), 1);
    assert!(body(&sc).is_empty());
}

#[test]
fn first_error_wins() {
    let e = parse("vm pkvm\nbogus\nalso bogus\n").unwrap_err();
    assert_eq!(e.line, 2);
    let e = parse("vm pkvm\nhost read g offset=0\ngmem g size=4K\n").unwrap_err();
    assert_eq!(e.line, 2);
}

#[test]
fn numbers() {
    assert_eq!(parse_number("0"), Ok(0));
    assert_eq!(parse_number("4096"), Ok(4096));
    assert_eq!(parse_number("0x1000"), Ok(4096));
    assert_eq!(parse_number("0xdeadBEEF"), Ok(0xdead_beef));
    assert_eq!(parse_number("4K"), Ok(4096));
    assert_eq!(parse_number("64K"), Ok(65536));
    assert_eq!(parse_number("2M"), Ok(2 << 20));
    assert_eq!(parse_number("3G"), Ok(3 << 30));
    assert_eq!(parse_number("0x10K"), Ok(16 << 10));
    assert_eq!(parse_number("0x1_0000_0000"), Ok(1 << 32));
    assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
    assert_eq!(parse_number("0xffffffffffffffff"), Ok(u64::MAX));
    assert_eq!(parse_number("16777215G"), Ok(16_777_215 << 30));
    for bad in [
        "",
        "0x",
        "K",
        "0xK",
        "-1",
        "+1",
        "1.5",
        "12ab",
        "0xfg",
        "4k",
        "4KB",
        "4 K",
        " 4",
        "_1",
        "1_",
        "0x_1",
        "18446744073709551616",
        "0x10000000000000000",
        "17179869184G",
        "0x400000000000000K",
        "١٢",
    ] {
        assert!(parse_number(bad).is_err(), "{bad:?} parsed");
    }
    assert!(parse_number("18446744073709551616")
        .unwrap_err()
        .contains("64 bits"));
}

fn all_results() -> Vec<Outcome> {
    let mut v = vec![
        Outcome::Ok,
        Outcome::Byte(0),
        Outcome::Byte(0x5a),
        Outcome::Byte(0xff),
        Outcome::Sigbus,
        Outcome::Abort,
        Outcome::Mmio,
        Outcome::MemoryFault {
            gpa: 0x8000_1000,
            size: 4096,
            private: true,
        },
        Outcome::MemoryFault {
            gpa: 0,
            size: 0,
            private: false,
        },
        Outcome::Eagain(0),
        Outcome::Eagain(0x2000),
        Outcome::InvalidParameter,
        Outcome::NotSupported,
    ];
    for name in [
        "EPERM",
        "ENOENT",
        "E2BIG",
        "ENOMEM",
        "EACCES",
        "EFAULT",
        "EBUSY",
        "EEXIST",
        "ENODEV",
        "EINVAL",
        "ENOSPC",
        "ERANGE",
        "ENOSYS",
        "EOPNOTSUPP",
    ] {
        v.push(Outcome::Errno(Errno::from_name(name).unwrap()));
    }
    v
}

#[test]
fn results_parse_and_display_round_trip() {
    for e in all_results() {
        let s = e.to_string();
        assert_eq!(parse_outcome(&s), Ok(e), "{s}");
        assert_eq!(e.to_string(), s);
    }
    let cases: &[(&str, &str)] = &[
        ("ok", "ok"),
        ("0x5a", "0x5a"),
        ("0x05", "0x05"),
        ("90", "0x5a"),
        ("sigbus", "sigbus"),
        ("abort", "abort"),
        ("mmio", "mmio"),
        ("EINVAL", "EINVAL"),
        ("EAGAIN@0x2000", "EAGAIN@0x2000"),
        ("EAGAIN@8K", "EAGAIN@0x2000"),
        ("INVALID_PARAMETER", "INVALID_PARAMETER"),
        ("NOT_SUPPORTED", "NOT_SUPPORTED"),
        (
            "memory_fault(gpa=0x80001000,size=4096,private=1)",
            "memory_fault(gpa=0x80001000,size=4096,private=1)",
        ),
        (
            "memory_fault(size=4K,private=0,gpa=2147487744)",
            "memory_fault(gpa=0x80001000,size=4096,private=0)",
        ),
    ];
    for &(input, shown) in cases {
        assert_eq!(parse_outcome(input).unwrap().to_string(), shown, "{input}");
    }
    for bad in [
        "",
        "OK",
        "Sigbus",
        "EAGAIN",
        "EAGAIN@",
        "EAGAIN@x",
        "EWHAT",
        "0x100",
        "256",
        "memory_fault",
        "memory_fault()",
        "memory_fault(gpa=0,size=4K,private=1",
        "memory_fault(gpa=0,size=4K,private=2)",
        "memory_fault(gpa=0,size=4K,private=1,gpa=0)",
        "memory_fault(gpa=0,size=4K,private=1,extra=0)",
        "memory_fault(gpa=0,size=4K,private=1,)",
        "memory_fault(gpa=0,size=4K)",
        "memory_fault(gpa=0,private=1)",
        "memory_fault(size=4K,private=1)",
        "memory_fault(gpa,size=4K,private=1)",
        "memory_fault(gpa=zz,size=4K,private=1)",
        "memory_fault(gpa=0, size=4K,private=1)",
    ] {
        assert!(
            parse_outcome(bad).is_err() && parse_expect(bad).is_err(),
            "{bad:?} parsed"
        );
    }
}

fn stmt(line: &str) -> Statement {
    let text = format!("vm coco\ngmem g size=64K flags=mmap\n{line}\n");
    parse(&text).unwrap().statements.pop().unwrap()
}

#[test]
fn check_semantics() {
    let mf = Outcome::MemoryFault {
        gpa: 0x8000_1000,
        size: 4096,
        private: true,
    };
    // No expect, a read: any byte (or ok) passes, any error fails.
    for read in [
        "guest read gpa=0x1000",
        "host read g offset=0",
        "host raw-read g offset=0",
    ] {
        let s = stmt(read);
        assert!(s.check(&Outcome::Byte(0)));
        assert!(s.check(&Outcome::Byte(0xa5)));
        assert!(s.check(&Outcome::Ok));
        assert!(!s.check(&Outcome::Sigbus));
        assert!(!s.check(&Outcome::Abort));
        assert!(!s.check(&Outcome::Mmio));
        assert!(!s.check(&mf));
        assert!(!s.check(&Outcome::Errno(Errno::EINVAL)));
    }
    // No expect, not a read: only ok passes.
    for other in [
        "guest write gpa=0x1000 value=1",
        "guest share gpa=0x1000",
        "host pin g offset=0",
        "gmem h size=4K",
        "convert g shared offset=0 size=4K",
    ] {
        let s = stmt(other);
        assert!(s.check(&Outcome::Ok));
        assert!(!s.check(&Outcome::Byte(0)));
        assert!(!s.check(&Outcome::InvalidParameter));
        assert!(!s.check(&Outcome::Eagain(0)));
        assert!(!s.check(&Outcome::Errno(Errno::EPERM)));
    }
    // memory_fault compares by value.
    let s = stmt("guest read gpa=0x80001000 expect=memory_fault(size=4K,gpa=0x80001000,private=1)");
    assert!(s.check(&mf));
    assert!(!s.check(&Outcome::Byte(0)));
    assert!(!s.check(&Outcome::Ok));
    assert!(!s.check(&Outcome::MemoryFault {
        gpa: 0x8000_1000,
        size: 4096,
        private: false
    }));
    assert!(!s.check(&Outcome::MemoryFault {
        gpa: 0x8000_2000,
        size: 4096,
        private: true
    }));
    // A byte compares by value, whatever its spelling.
    let s = stmt("host read g offset=0 expect=90");
    assert!(s.check(&Outcome::Byte(0x5a)));
    assert!(!s.check(&Outcome::Byte(0x5b)));
    assert!(!s.check(&Outcome::Ok));
    // EAGAIN compares the offset by value.
    let s = stmt("convert g shared offset=0 size=16K expect=EAGAIN@8K");
    assert!(s.check(&Outcome::Eagain(0x2000)));
    assert!(!s.check(&Outcome::Eagain(0x1000)));
    assert!(!s.check(&Outcome::Errno(Errno::EAGAIN)));
    assert!(!s.check(&Outcome::Ok));
    // An expected error must be that error.
    let s = stmt("guest unshare gpa=0x1000 expect=INVALID_PARAMETER");
    assert!(s.check(&Outcome::InvalidParameter));
    assert!(!s.check(&Outcome::NotSupported));
    assert!(!s.check(&Outcome::Ok));
    let s = stmt("gmem h size=1 expect=EINVAL");
    assert!(s.check(&Outcome::Errno(Errno::EINVAL)));
    assert!(!s.check(&Outcome::Errno(Errno::EPERM)));
    assert!(!s.check(&Outcome::Ok));
    // expect=ok: success; on a read any byte is success.
    let s = stmt("guest share gpa=0x1000 expect=ok");
    assert!(s.check(&Outcome::Ok));
    assert!(!s.check(&Outcome::InvalidParameter));
    let s = stmt("guest read gpa=0x1000 expect=ok");
    assert!(s.check(&Outcome::Byte(3)));
    assert!(!s.check(&Outcome::Mmio));
    // Expected failure outcomes.
    let s = stmt("host read g offset=0 expect=sigbus");
    assert!(s.check(&Outcome::Sigbus));
    assert!(!s.check(&Outcome::Byte(0)));
    let s = stmt("guest write gpa=0x1000 value=1 expect=mmio");
    assert!(s.check(&Outcome::Mmio));
    assert!(!s.check(&Outcome::Ok));
}

const HOSTILE: &str = "\
vm pkvm
gmem g size=64K flags=mmap,track_shareability
slot s gpa=0x80000000 size=64K gmem=g flags=always_fault_from_gmem
vm coco name=c expect=ok|ENOMEM
use vm0
host forward lie
host forward refuse expect=ok
host forward honest
host share-page gpa=0x80000000 expect=EPERM
host share-page gpa=0x90000000 pages=4
host read shared gpa=0x90001000 expect=0|sigbus
host write shared gpa=0x90001000 value=0x33
host raw-write g offset=0x1000 value=0x44 expect=abort
host raw-read hyp offset=0xfff0 expect=abort
host raw-write hyp offset=0 value=1 expect=abort
host dma-write g offset=0x2000 value=0x55 expect=abort
host call VmDestroy a1=c expect=ENOENT
host call MapHostShared a1=vm0 a2=0 a3=0x48000000 a4=0x10000000 a6=s expect=EINVAL
host call Version a2=fresh:2
host smc 0x84000000
host smc 0xC2000000 a1=1 a3=3 expect=NOT_SUPPORTED
pool pages=0
pool pages=16 blocks=1 expect=ok
pool auto
guest mmio-guard enroll
guest mmio-guard map gpa=0x90000000
guest mmio-guard unmap gpa=0x90000000 pages=4 expect=INVALID_PARAMETER
host reg-write d0 value=0x1122334455667788
guest reg-write apiakeylo_el1 value=7 expect=ok|undef
host reg-read d0 expect=0x1122334455667788
guest reg-read pmccntr_el0 expect=undef
guest reg-read fpcr
host exec sve expect=undef
guest exec fetch-device expect=abort
guest spin
guest read gpa=0x80000000 expect=need_pages
destroy c
destroy vm0 expect=ok
vm plain name=c
repeat 1000 gmem h size=4K; slot t gpa=0x90000000 size=4K gmem=h expect=ok|ENOMEM ; host call GmemDestroy a1=h
";

#[test]
fn every_hostile_statement_form() {
    let sc = parse(HOSTILE).unwrap();
    let k: Vec<(&K, Option<&Expect>)> = sc
        .statements
        .iter()
        .map(|s| (&s.kind, s.expect.as_ref()))
        .collect();
    let one = |o: Outcome| Expect::one(o);
    let vm0 = K::Vm {
        vm_type: VmType::Pkvm,
        name: g("vm0"),
    };
    assert_eq!(k[0], (&vm0, None));
    assert_eq!(
        k[3],
        (
            &K::Vm {
                vm_type: VmType::Coco,
                name: g("c")
            },
            Some(&Expect::any_of(vec![Outcome::Ok, Outcome::Errno(Errno::ENOMEM)]).unwrap())
        )
    );
    assert_eq!(k[4].0, &K::Use { vm: g("vm0") });
    assert_eq!(
        k[5].0,
        &K::HostForward {
            mode: ForwardMode::Lie
        }
    );
    assert_eq!(
        k[6].0,
        &K::HostForward {
            mode: ForwardMode::Refuse
        }
    );
    assert_eq!(
        k[7].0,
        &K::HostForward {
            mode: ForwardMode::Honest
        }
    );
    assert_eq!(
        k[8],
        (
            &K::HostSharePage {
                gpa: 0x8000_0000,
                pages: 1
            },
            Some(&one(Outcome::Errno(Errno::EPERM)))
        )
    );
    assert_eq!(
        k[9].0,
        &K::HostSharePage {
            gpa: 0x9000_0000,
            pages: 4
        }
    );
    assert_eq!(
        k[10],
        (
            &K::HostReadShared { gpa: 0x9000_1000 },
            Some(&Expect::any_of(vec![Outcome::Byte(0), Outcome::Sigbus]).unwrap())
        )
    );
    assert_eq!(
        k[11].0,
        &K::HostWriteShared {
            gpa: 0x9000_1000,
            value: 0x33
        }
    );
    assert_eq!(
        k[12].0,
        &K::HostRawWrite {
            gmem: g("g"),
            offset: 0x1000,
            value: 0x44
        }
    );
    assert_eq!(
        k[13],
        (
            &K::HostRawReadHyp { offset: 0xfff0 },
            Some(&one(Outcome::Abort))
        )
    );
    assert_eq!(
        k[14].0,
        &K::HostRawWriteHyp {
            offset: 0,
            value: 1
        }
    );
    assert_eq!(
        k[15].0,
        &K::HostDmaWrite {
            gmem: g("g"),
            offset: 0x2000,
            value: 0x55
        }
    );
    assert_eq!(
        k[16].0,
        &K::HostCall {
            call: HostCall::VmDestroy,
            args: [
                CallArg::Name(g("c")),
                CallArg::Num(0),
                CallArg::Num(0),
                CallArg::Num(0),
                CallArg::Num(0),
                CallArg::Num(0)
            ]
        }
    );
    assert_eq!(
        k[17].0,
        &K::HostCall {
            call: HostCall::MapHostShared,
            args: [
                CallArg::Name(g("vm0")),
                CallArg::Num(0),
                CallArg::Num(0x4800_0000),
                CallArg::Num(0x1000_0000),
                CallArg::Num(0),
                CallArg::Name(g("s")),
            ]
        }
    );
    assert_eq!(
        k[18],
        (
            &K::HostCall {
                call: HostCall::Version,
                args: [
                    CallArg::Num(0),
                    CallArg::Fresh(2),
                    CallArg::Num(0),
                    CallArg::Num(0),
                    CallArg::Num(0),
                    CallArg::Num(0)
                ]
            },
            None
        )
    );
    assert_eq!(
        k[19].0,
        &K::HostSmc {
            func: 0x8400_0000,
            args: [0; 3]
        }
    );
    assert_eq!(
        k[20],
        (
            &K::HostSmc {
                func: 0xC200_0000,
                args: [1, 0, 3]
            },
            Some(&one(Outcome::NotSupported))
        )
    );
    assert_eq!(
        k[21].0,
        &K::Pool {
            spec: PoolSpec::Exact {
                pages: 0,
                blocks: 0
            }
        }
    );
    assert_eq!(
        k[22].0,
        &K::Pool {
            spec: PoolSpec::Exact {
                pages: 16,
                blocks: 1
            }
        }
    );
    assert_eq!(
        k[23].0,
        &K::Pool {
            spec: PoolSpec::Auto
        }
    );
    assert_eq!(
        k[24].0,
        &K::GuestMmioGuard {
            op: MmioGuardOp::Enroll,
            gpa: 0,
            pages: None
        }
    );
    assert_eq!(
        k[25].0,
        &K::GuestMmioGuard {
            op: MmioGuardOp::Map,
            gpa: 0x9000_0000,
            pages: None
        }
    );
    assert_eq!(
        k[26].0,
        &K::GuestMmioGuard {
            op: MmioGuardOp::Unmap,
            gpa: 0x9000_0000,
            pages: Some(4)
        }
    );
    assert_eq!(
        k[27].0,
        &K::RegWrite {
            world: World::Host,
            reg: WorldReg::D0,
            value: 0x1122_3344_5566_7788
        }
    );
    assert_eq!(
        k[28],
        (
            &K::RegWrite {
                world: World::Guest,
                reg: WorldReg::ApiaKeyLoEl1,
                value: 7
            },
            Some(&Expect::any_of(vec![Outcome::Ok, Outcome::Undef]).unwrap())
        )
    );
    assert_eq!(
        k[29],
        (
            &K::RegRead {
                world: World::Host,
                reg: WorldReg::D0
            },
            Some(&one(Outcome::Value(0x1122_3344_5566_7788)))
        )
    );
    assert_eq!(
        k[30],
        (
            &K::RegRead {
                world: World::Guest,
                reg: WorldReg::PmccntrEl0
            },
            Some(&one(Outcome::Undef))
        )
    );
    assert_eq!(
        k[31],
        (
            &K::RegRead {
                world: World::Guest,
                reg: WorldReg::Fpcr
            },
            None
        )
    );
    assert_eq!(
        k[32],
        (
            &K::Exec {
                world: World::Host,
                insn: Insn::Sve
            },
            Some(&one(Outcome::Undef))
        )
    );
    assert_eq!(
        k[33],
        (
            &K::Exec {
                world: World::Guest,
                insn: Insn::FetchDevice
            },
            Some(&one(Outcome::Abort))
        )
    );
    assert_eq!(k[34], (&K::GuestSpin, None));
    assert_eq!(
        k[35],
        (
            &K::GuestRead {
                gpa: 0x8000_0000,
                shared: false
            },
            Some(&one(Outcome::NeedPages))
        )
    );
    assert_eq!(k[36].0, &K::Destroy { vm: g("c") });
    assert_eq!(
        k[37],
        (&K::Destroy { vm: g("vm0") }, Some(&one(Outcome::Ok)))
    );
    // A destroyed VM's name is given to a new one.
    assert_eq!(
        k[38].0,
        &K::Vm {
            vm_type: VmType::Plain,
            name: g("c")
        }
    );
    let K::Repeat { count, body } = k[39].0 else {
        panic!("{:?}", k[39])
    };
    assert_eq!(*count, 1000);
    assert_eq!(body.len(), 3);
    assert!(body.iter().all(|s| s.line == 40));
    assert_eq!(
        body[1].text,
        "slot t gpa=0x90000000 size=4K gmem=h expect=ok|ENOMEM"
    );
    assert_eq!(body[2].text, "host call GmemDestroy a1=h");
    assert_eq!(
        body[2].kind,
        K::HostCall {
            call: HostCall::GmemDestroy,
            args: [
                CallArg::Name(g("h")),
                CallArg::Num(0),
                CallArg::Num(0),
                CallArg::Num(0),
                CallArg::Num(0),
                CallArg::Num(0)
            ]
        }
    );
    assert!(k[39].1.is_none());
    assert_eq!(sc.statements.len(), 40);
    // Only `vm` statements without expect= are not checks.
    let checks = sc.statements.iter().filter(|s| s.is_check()).count();
    assert_eq!(checks, 38);
}

#[test]
fn vm_names_and_the_current_vm() {
    // Unnamed VMs are vm0, vm1, ... counting only the unnamed ones.
    let sc = parse("vm pkvm\nvm coco name=x\nvm plain\nuse vm0\nuse x\nuse vm1\n").unwrap();
    let names: Vec<&str> = sc
        .statements
        .iter()
        .filter_map(|s| match &s.kind {
            K::Vm { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["vm0", "x", "vm1"]);
    assert_eq!(sc.vm, VmType::Pkvm);
    let cases: &[(&str, usize, &str)] = &[
        // After destroy there is no current VM.
        ("vm pkvm\ndestroy vm0\ngmem g size=4K", 3, "no current VM"),
        (
            "vm pkvm\nvm coco\ndestroy vm0\nguest read gpa=0",
            4,
            "no current VM",
        ),
        ("vm pkvm\ndestroy vm0\npool auto", 3, "no current VM"),
        ("vm pkvm\ndestroy vm0\nhost forward lie", 3, "no current VM"),
        (
            "vm pkvm\ndestroy vm0\nguest reg-read d0",
            3,
            "no current VM",
        ),
        ("vm pkvm\ndestroy vm0\nuse vm0", 3, "destroyed"),
        ("vm pkvm\nuse nope", 2, "nope"),
        ("vm pkvm\ngmem g size=4K\nuse g", 3, "not a VM"),
        ("vm pkvm\ngmem g size=4K\ndestroy g", 3, "not a VM"),
        ("vm pkvm\ndestroy", 2, "VM name"),
        ("vm pkvm\nuse vm0 vm1", 2, "VM name"),
        ("vm pkvm name=a\nvm coco name=a", 2, "already"),
        ("vm pkvm\ngmem vm1 size=4K\nvm coco", 3, "already"),
        ("vm pkvm\ngmem g size=4K\nvm coco name=g", 3, "already"),
        (
            "vm pkvm\nslot s gpa=0 size=4K\ngmem s size=4K",
            3,
            "already",
        ),
        // Inside a repeat, the second iteration starts after the first.
        (
            "vm pkvm\nrepeat 2 guest read gpa=0; destroy vm0",
            2,
            "no current VM",
        ),
        ("vm pkvm\nrepeat 2 use vm0; destroy vm0", 2, "destroyed"),
    ];
    for &(text, line, needle) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.reason.contains(needle), "{text:?}: {e}");
    }
    // Fine: what those get wrong, done right.
    for text in [
        "vm pkvm\ndestroy vm0\nvm coco\ngmem g size=4K",
        "vm pkvm\nvm coco\ndestroy vm0\nuse vm1\nguest read gpa=0",
        "vm pkvm name=a\ndestroy a\nvm coco name=a\nuse a",
        "vm pkvm\ndestroy vm0\ndestroy vm0 expect=ENOENT",
        "vm pkvm\nrepeat 1 guest read gpa=0; destroy vm0",
        "vm pkvm\nrepeat 3 vm coco name=v; guest read gpa=0; destroy v",
        "vm pkvm\nrepeat 3 vm coco name=v\nuse v",
        "vm pkvm\ndestroy vm0\nhost raw-read hyp offset=0 expect=abort\nhost call Version\nhost reg-read d0\nhost exec sve",
        "vm pkvm\ngmem g size=4K\ndestroy vm0\nhost read g offset=0 expect=ENOENT\nconvert g private offset=0 size=4K expect=ENOENT",
    ] {
        assert!(parse(text).is_ok(), "{text:?}: {:?}", parse(text));
    }
}

#[test]
fn repeat_rules() {
    let sc = parse("vm pkvm\nrepeat 0x10 host call Version   # sixteen\n").unwrap();
    let K::Repeat { count, body } = &sc.statements[1].kind else {
        panic!()
    };
    assert_eq!(*count, 16);
    assert_eq!(body[0].text, "host call Version");
    assert_eq!(sc.statements[1].text, "repeat 0x10 host call Version");
    assert!(parse("vm pkvm\nrepeat 1000000 host call Version\n").is_ok());
    let cases: &[(&str, &str)] = &[
        ("repeat 0 host call Version", "outside"),
        ("repeat 1000001 host call Version", "outside"),
        ("repeat many host call Version", "many"),
        ("repeat 3", "count and statements"),
        ("repeat", "count and statements"),
        ("repeat 3 repeat 2 host call Version", "nest"),
        (
            "repeat 3 host call Version; repeat 2 host call Version",
            "nest",
        ),
        ("repeat 3 host call Version;", "empty"),
        ("repeat 3 ; host call Version", "empty"),
        ("repeat 3 host call Version;; host call Version", "empty"),
        ("repeat 3 host fly", "fly"),
        ("repeat 3 gmem h size=4K; gmem h size=4K", "already"),
        ("repeat 3 host read nope offset=0", "nope"),
        ("repeat 2 host call Version expect=bogus", "bogus"),
    ];
    for &(body, needle) in cases {
        let e = parse(&format!("vm pkvm\n{body}\n")).unwrap_err();
        assert_eq!(e.line, 2, "{body:?}: {e}");
        assert!(e.reason.contains(needle), "{body:?}: {e}");
    }
    // A name declared inside a repeat is known after it.
    assert!(parse("vm pkvm\nrepeat 2 gmem h size=4K\nhost read h offset=0\n").is_ok());
}

#[test]
fn hostile_errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("host forward sideways", 4, "sideways"),
        ("host forward", 4, "honest"),
        ("host forward lie now", 4, "honest"),
        ("host share-page pages=2", 4, "gpa"),
        ("host share-page gpa=0 offset=1", 4, "offset"),
        ("host read shared offset=0", 4, "gpa"),
        ("host write shared gpa=0", 4, "value"),
        ("host read shared gpa=0 value=1", 4, "value"),
        ("host raw-write g offset=0", 4, "value"),
        ("host raw-write g offset=0 value=0x100", 4, "byte"),
        ("host raw-write nope offset=0 value=1", 4, "nope"),
        ("host raw-read hyp offset=64K", 4, "64 KiB"),
        ("host raw-write hyp offset=0x10000 value=1", 4, "64 KiB"),
        ("host raw-read hyp", 4, "offset"),
        ("host dma-write g offset=0", 4, "value"),
        ("host dma-write s offset=0 value=1", 4, "not a gmem"),
        ("host call", 4, "name"),
        ("host call Frobnicate", 4, "Frobnicate"),
        ("host call vmcreate", 4, "vmcreate"),
        ("host call Version a7=1", 4, "a7"),
        ("host call Version a1=nobody", 4, "nobody"),
        ("host call Version a1=0xzz", 4, "0xzz"),
        ("host call VcpuCreate a4=fresh:0", 4, "1 to 512"),
        ("host call VcpuCreate a4=fresh:513", 4, "1 to 512"),
        ("host call VcpuCreate a4=fresh:x", 4, "fresh:"),
        ("host smc", 4, "function"),
        ("host smc PSCI", 4, "PSCI"),
        ("host smc 0 a4=1", 4, "a4"),
        ("pool", 4, "pages"),
        ("pool pages=1 blocks=x", 4, "blocks"),
        ("pool manual", 4, "pool"),
        ("pool auto pages=3", 4, "pages"),
        ("guest mmio-guard", 4, "enroll"),
        ("guest mmio-guard enroll gpa=0", 4, "gpa"),
        ("guest mmio-guard map", 4, "gpa"),
        ("guest mmio-guard smash gpa=0", 4, "smash"),
        ("guest reg-write d0", 4, "value"),
        ("guest reg-write d0 value=0x10000000000000000", 4, "64 bits"),
        ("host reg-write x0 value=1", 4, "x0"),
        ("host reg-read d0 value=1", 4, "value"),
        ("host reg-read", 4, "one word"),
        ("guest exec smc", 4, "smc"),
        ("guest exec sve extra", 4, "one word"),
        ("guest spin now", 4, "no arguments"),
        ("guest spin gpa=0", 4, "gpa"),
        ("guest read gpa=0 expect=ok|", 4, "empty"),
        ("guest read gpa=0 expect=|ok", 4, "empty"),
        ("guest read gpa=0 expect=ok|maybe", 4, "maybe"),
        ("guest read gpa=0 expect=0x1ff", 4, "byte"),
        ("guest read gpa=0 expect=bad_command", 4, "bad_command"),
        ("guest read gpa=0 expect=exception(0x3f)", 4, "exception"),
        ("use", 4, "VM name"),
    ];
    for &(body, line, needle) in cases {
        assert_err(body, line, needle);
    }
}

#[test]
fn alternatives_and_new_results() {
    for (input, shown) in [
        ("ok|ENOMEM", "ok|ENOMEM"),
        ("need_pages", "need_pages"),
        ("undef|abort", "undef|abort"),
        ("preempted", "preempted"),
        ("0x5a|sigbus|90", "0x5a|sigbus|0x5a"),
        ("ENOSPC|EFAULT", "ENOSPC|EFAULT"),
    ] {
        assert_eq!(parse_expect(input).unwrap().to_string(), shown, "{input}");
    }
    for o in [Outcome::NeedPages, Outcome::Undef, Outcome::Preempted] {
        assert_eq!(parse_outcome(&o.to_string()), Ok(o));
    }
    // What no expectation names is still shown.
    assert_eq!(Outcome::Exception(0x3f).to_string(), "exception(0x3f)");
    assert_eq!(Outcome::BadCommand.to_string(), "bad_command");
    assert_eq!(
        Outcome::Value(0x1122_3344_5566_7788).to_string(),
        "0x1122334455667788"
    );
    assert!(parse_outcome("exception(0x3f)").is_err());
    assert!(Expect::any_of(vec![]).is_none());

    // Any alternative passes; nothing else does.
    let s = stmt("gmem h size=4K expect=ok|ENOMEM|ENOSPC");
    assert!(s.check(&Outcome::Ok));
    assert!(s.check(&Outcome::Errno(Errno::ENOMEM)));
    assert!(s.check(&Outcome::Errno(Errno::ENOSPC)));
    assert!(!s.check(&Outcome::Errno(Errno::EINVAL)));
    // `ok` among alternatives on a read still accepts any byte.
    let s = stmt("host read g offset=0 expect=sigbus|ok");
    assert!(s.check(&Outcome::Byte(7)));
    assert!(s.check(&Outcome::Sigbus));
    assert!(!s.check(&Outcome::Abort));
    // A register read: any value but undef without expect=, values compare as 64-bit numbers.
    let s = stmt("guest reg-read d0");
    assert!(s.check(&Outcome::Value(0)));
    assert!(s.check(&Outcome::Value(u64::MAX)));
    assert!(!s.check(&Outcome::Undef));
    assert!(!s.check(&Outcome::Abort));
    assert!(!s.check(&Outcome::Byte(0)));
    let s = stmt("host reg-read tpidr_el0 expect=0xdeadbeefcafe|undef");
    assert!(s.check(&Outcome::Value(0xdead_beef_cafe)));
    assert!(s.check(&Outcome::Undef));
    assert!(!s.check(&Outcome::Value(0xdead_beef_cafd)));
    assert!(!s.check(&Outcome::Value(0)));
    let s = stmt("host reg-read tpidr_el0 expect=ok");
    assert!(s.check(&Outcome::Value(5)));
    assert!(!s.check(&Outcome::Undef));
    // A spin passes only as preempted.
    let s = stmt("guest spin");
    assert!(s.check(&Outcome::Preempted));
    assert!(!s.check(&Outcome::Ok));
    assert!(!s.check(&Outcome::Abort));
    let s = stmt("guest spin expect=preempted");
    assert!(s.check(&Outcome::Preempted));
    assert!(!s.check(&Outcome::Ok));
    // Preempted is no success for anything else, nor exception/bad_command for anything.
    for other in [
        "guest read gpa=0",
        "host call Version",
        "guest exec dbg",
        "host smc 0",
    ] {
        let s = stmt(other);
        assert!(!s.check(&Outcome::Preempted), "{other}");
        assert!(!s.check(&Outcome::Exception(0)), "{other}");
        assert!(!s.check(&Outcome::BadCommand), "{other}");
        assert!(!s.check(&Outcome::NeedPages), "{other}");
    }
    // exec and host call: ok only.
    let s = stmt("guest exec dbg");
    assert!(s.check(&Outcome::Ok));
    assert!(!s.check(&Outcome::Undef));
    assert!(!s.check(&Outcome::Value(0)));
    let s = stmt("guest write gpa=0 value=1 expect=need_pages");
    assert!(s.check(&Outcome::NeedPages));
    assert!(!s.check(&Outcome::Ok));
    // An SMC returns a value.
    let s = stmt("host smc 0x84000000 expect=0x10001");
    assert!(s.check(&Outcome::Value(0x10001)));
    assert!(!s.check(&Outcome::Value(0x10000)));
    let s = stmt("host smc 0x84000000");
    assert!(s.check(&Outcome::Value(0x10001)));
    assert!(!s.check(&Outcome::NotSupported));
}

/// Every scenario file of the project parses (the old grammar keeps its meaning), the
/// self-check's parse-error file fails at its line 5, and no file's first statement is anything
/// but `vm`.
#[test]
fn the_projects_files_parse() {
    if cfg!(miri) {
        return; // file reading and forty files: what this checks is not memory safety
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = 0;
    for dir in ["scenarios", "scenarios/table", "tests/scenarios"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().and_then(|x| x.to_str()) != Some("scn") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let r = parse(&text);
            if path.ends_with("parse-error.scn") {
                assert_eq!(r.unwrap_err().line, 5, "{}", path.display());
            } else {
                let sc = r.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(matches!(sc.statements[0].kind, K::Vm { .. }));
            }
            seen += 1;
        }
    }
    assert!(seen > 30, "only {seen} files found");
}

#[test]
fn parse_error_display() {
    let e = ParseError {
        line: 7,
        reason: "unknown statement `x`".to_owned(),
    };
    assert_eq!(e.to_string(), "line 7: unknown statement `x`");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Words that make the parser go deeper than the first token.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(g("vm")),
            Just(g("pkvm")),
            Just(g("gmem")),
            Just(g("slot")),
            Just(g("g")),
            Just(g("s")),
            Just(g("uaddr")),
            Just(g("host")),
            Just(g("guest")),
            Just(g("read")),
            Just(g("write")),
            Just(g("raw-read")),
            Just(g("share")),
            Just(g("convert")),
            Just(g("private")),
            Just(g("size=4K")),
            Just(g("gpa=0x1000")),
            Just(g("offset=0")),
            Just(g("gmem=g")),
            Just(g("value=0x5a")),
            Just(g("flags=mmap,init_shared")),
            Just(g("expect=memory_fault(gpa=0,size=4K,private=1)")),
            Just(g("expect=EAGAIN@0x")),
            Just(g("#")),
            Just(g("repeat")),
            Just(g("3")),
            Just(g(";")),
            Just(g("use")),
            Just(g("destroy")),
            Just(g("vm0")),
            Just(g("name=x")),
            Just(g("x")),
            Just(g("pool")),
            Just(g("auto")),
            Just(g("pages=2")),
            Just(g("forward")),
            Just(g("lie")),
            Just(g("shared")),
            Just(g("hyp")),
            Just(g("raw-write")),
            Just(g("dma-write")),
            Just(g("share-page")),
            Just(g("call")),
            Just(g("VmCreate")),
            Just(g("a1=vm0")),
            Just(g("smc")),
            Just(g("mmio-guard")),
            Just(g("enroll")),
            Just(g("reg-read")),
            Just(g("reg-write")),
            Just(g("d0")),
            Just(g("exec")),
            Just(g("sve")),
            Just(g("spin")),
            Just(g("expect=ok|ENOMEM")),
            Just(g("expect=0xffffffffffffffff|undef")),
            "[a-z_=@()0-9xKMG,#-]{0,12}",
            any::<String>(),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(word(), 0..8).prop_map(|w| w.join(" ")),
            any::<String>(),
        ]
    }

    proptest! {
        // Miri runs a few cases only (it is slow); failure persistence needs the file system.
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn parse_never_panics(lines in prop::collection::vec(line(), 0..12), vm_first in any::<bool>()) {
            let mut text = String::new();
            if vm_first {
                text.push_str("vm pkvm\ngmem g size=4K\nslot s gpa=0 size=4K gmem=g\n");
            }
            for l in &lines {
                text.push_str(l);
                text.push('\n');
            }
            match parse(&text) {
                Ok(sc) => {
                    for s in &sc.statements {
                        prop_assert!(s.line >= 1);
                        let _ = s.check(&Outcome::Ok);
                    }
                }
                Err(e) => {
                    prop_assert!(e.line >= 1);
                    prop_assert!(e.line <= text.lines().count().max(1));
                }
            }
        }

        #[test]
        fn results_never_panic(s in "\\PC*") {
            let _ = parse_expect(&s);
            let _ = parse_number(&s);
        }

        #[test]
        fn numbers_round_trip(n in any::<u64>()) {
            prop_assert_eq!(parse_number(&format!("{n}")), Ok(n));
            prop_assert_eq!(parse_number(&format!("{n:#x}")), Ok(n));
        }

        #[test]
        fn memory_fault_round_trips(gpa in any::<u64>(), size in any::<u64>(), private in any::<bool>()) {
            let e = Outcome::MemoryFault { gpa, size, private };
            prop_assert_eq!(parse_outcome(&e.to_string()), Ok(e));
        }
    }
}
