//! Tests of the scenario grammar (SCENARIOS.md).

use abi::flags::{ContentMode, ConvertTo, GmemFlags, MemslotFlags, UserspaceAddr, VmType};
use abi::Errno;
use scenario::{
    parse, parse_expect, parse_number, Expect, HostTarget, Outcome, ParseError, Statement,
    StatementKind as K,
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

#[test]
fn example_parses_into_the_right_statements() {
    let sc = parse(EXAMPLE).unwrap();
    assert_eq!(sc.vm, VmType::Pkvm);
    let got: Vec<(usize, K, Option<Expect>)> = sc
        .statements
        .iter()
        .map(|s| (s.line, s.kind.clone(), s.expect))
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
            Some(Expect::Sigbus),
        ),
        (
            6,
            K::HostRawRead {
                gmem: g("g"),
                offset: 0x1000,
            },
            Some(Expect::Abort),
        ),
        (
            7,
            K::GuestShare {
                gpa: 0x8000_1000,
                pages: 1,
            },
            Some(Expect::Ok),
        ),
        (
            8,
            K::HostRead {
                target: gt(),
                offset: 0x1000,
            },
            Some(Expect::Byte(0x5a)),
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
            Some(Expect::InvalidParameter),
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
            Some(Expect::Ok),
        ),
        (
            13,
            K::HostRead {
                target: gt(),
                offset: 0x1000,
            },
            Some(Expect::Sigbus),
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(
        sc.statements[2].text,
        "guest write gpa=0x80001000 value=0x5a"
    );
}

#[test]
fn comments_blank_lines_and_text() {
    let sc =
        parse("# a scenario\n\n   vm coco   # the VM\n\t\ngmem g size=4096 # trailing\n# done\n")
            .unwrap();
    assert_eq!(sc.vm, VmType::Coco);
    assert_eq!(sc.statements.len(), 1);
    assert_eq!(sc.statements[0].line, 5);
    assert_eq!(sc.statements[0].text, "gmem g size=4096");
    // CRLF line endings.
    let sc = parse("vm plain\r\ngmem g size=4K\r\n").unwrap();
    assert_eq!(sc.vm, VmType::Plain);
    assert_eq!(sc.statements[0].text, "gmem g size=4K");
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
    let k: Vec<K> = sc.statements.iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        k[0],
        K::Gmem {
            name: g("a"),
            size: 8192,
            flags: GmemFlags::INIT_SHARED | GmemFlags::NO_DIRECT_MAP
        }
    );
    assert_eq!(sc.statements[0].expect, Some(Expect::Errno(Errno::EINVAL)));
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
    assert_eq!(sc.statements[7].expect, Some(Expect::Eagain(0x1000)));
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
    assert_eq!(sc.statements[12].expect, Some(Expect::Byte(0)));
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
        sc.statements[15].expect,
        Some(Expect::MemoryFault {
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
    assert_eq!(sc.statements[17].expect, Some(Expect::NotSupported));
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
        ("vm pkvm", 4, "second"),
        ("guest read gpa=0\nvm coco", 5, "second"),
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
    let e = parse("vm pkvm expect=ok\n").unwrap_err();
    assert!(e.reason.contains("expect"), "{e}");
    let e = parse("vm pkvm\nvm pkvm\n").unwrap_err();
    assert_eq!(e.to_string(), format!("line 2: {}", e.reason));
    assert!(parse("vm plain\n").unwrap().statements.is_empty());
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

fn all_results() -> Vec<Expect> {
    let mut v = vec![
        Expect::Ok,
        Expect::Byte(0),
        Expect::Byte(0x5a),
        Expect::Byte(0xff),
        Expect::Sigbus,
        Expect::Abort,
        Expect::Mmio,
        Expect::MemoryFault {
            gpa: 0x8000_1000,
            size: 4096,
            private: true,
        },
        Expect::MemoryFault {
            gpa: 0,
            size: 0,
            private: false,
        },
        Expect::Eagain(0),
        Expect::Eagain(0x2000),
        Expect::InvalidParameter,
        Expect::NotSupported,
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
        v.push(Expect::Errno(Errno::from_name(name).unwrap()));
    }
    v
}

#[test]
fn results_parse_and_display_round_trip() {
    for e in all_results() {
        let s = e.to_string();
        assert_eq!(parse_expect(&s), Ok(e), "{s}");
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
        assert_eq!(parse_expect(input).unwrap().to_string(), shown, "{input}");
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
        assert!(parse_expect(bad).is_err(), "{bad:?} parsed");
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
            let e = Expect::MemoryFault { gpa, size, private };
            prop_assert_eq!(parse_expect(&e.to_string()), Ok(e));
        }
    }
}
