//! `make table`: the seed's table, inferred from the running system.
//!
//! Each row's configuration is data: a scenario file with that row's `vm`, `gmem` and `slot`
//! statements. The probes below are the same for every row; each runs in a fresh VM built from
//! the configuration, drives the real hyp, host shim and guest, and each cell is decided from what
//! happened: which path served a fault (the hyp's per-path fault counters, with the physical page
//! as evidence), whether a memory-fault exit came back, whether the host was refused, whether a
//! conversion was accepted. Nothing is read from a constant.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use abi::flags::{ConvertTo, VmType};
use abi::Errno;
use scenario::{HostTarget, Outcome, Scenario, StatementKind};

use crate::pages::HostPages;
use crate::runner::Runner;
use crate::vm;

/// The configuration a probe needs from a row's file.
struct Config<'a> {
    sc: &'a Scenario,
    vm_type: VmType,
    gmem: String,
    gpa: u64,
}

fn config(sc: &Scenario) -> Result<Config<'_>, String> {
    let mut gmem = None;
    let mut slot = None;
    for st in &sc.statements {
        match &st.kind {
            StatementKind::Vm { .. } if st.line == first_line(sc) => {}
            StatementKind::Gmem { name, .. } => gmem = Some(name.clone()),
            StatementKind::Slot { gpa, .. } => slot = Some(*gpa),
            _ => {
                return Err(format!(
                    "line {}: only vm, gmem and slot belong in a configuration",
                    st.line
                ))
            }
        }
    }
    let gmem = gmem.ok_or("no gmem statement")?;
    let gpa = slot.ok_or("no slot statement")?;
    Ok(Config {
        sc,
        vm_type: sc.vm,
        gmem,
        gpa,
    })
}

/// The line of the file's opening `vm` (the probe's own VM).
fn first_line(sc: &Scenario) -> usize {
    sc.statements.first().map_or(0, |s| s.line)
}

/// One probe: a fresh VM from the configuration, a sequence of steps, the VM torn down.
struct Probe<'r, 'p> {
    runner: Runner<'p>,
    cfg: &'r Config<'r>,
    log: Vec<String>,
}

impl<'r, 'p> Probe<'r, 'p> {
    fn new(cfg: &'r Config<'r>, pages: &'p mut HostPages) -> Result<Self, String> {
        let mut runner = Runner::new(cfg.vm_type, pages).map_err(|e| format!("VM: {e}"))?;
        for st in cfg.sc.statements.iter().skip(1) {
            let d = runner.exec(&st.kind);
            if d.outcome != Outcome::Ok {
                return Err(format!("configuration line {}: {}", st.line, d.outcome));
            }
        }
        Ok(Self {
            runner,
            cfg,
            log: Vec::new(),
        })
    }

    fn page(&self, n: u64) -> u64 {
        self.cfg.gpa + n * abi::PAGE_SIZE
    }

    fn run(&mut self, kind: StatementKind) -> Outcome {
        let d = self.runner.exec(&kind);
        self.log
            .push(format!("{kind:?} -> {} [{}]", d.outcome, d.evidence));
        d.outcome
    }

    /// Makes page `n` shared the way this configuration can: the guest's MEM_SHARE where
    /// shareability is tracked (the host converts), plus the memory attribute.
    fn make_shared(&mut self, n: u64) {
        let gpa = self.page(n);
        self.run(StatementKind::GuestShare { gpa, pages: 1 });
        self.run(StatementKind::Attr {
            private: false,
            gpa,
            size: abi::PAGE_SIZE,
        });
    }

    /// Sets page `n`'s memory attribute to private.
    fn set_attr_private(&mut self, n: u64) {
        let gpa = self.page(n);
        self.run(StatementKind::Attr {
            private: true,
            gpa,
            size: abi::PAGE_SIZE,
        });
    }

    /// A guest read of page `n`; the path that served it, from the hyp's fault counters.
    fn access(&mut self, n: u64, shared: bool) -> (Outcome, Option<&'static str>) {
        let before = vm::stats(self.runner.vm()).unwrap_or_default();
        let o = self.run(StatementKind::GuestRead {
            gpa: self.page(n),
            shared,
        });
        let after = vm::stats(self.runner.vm()).unwrap_or_default();
        let path = if after.faults_served > before.faults_served {
            Some(if after.faults_via_uaddr > before.faults_via_uaddr {
                "userspace_addr"
            } else {
                "gmem"
            })
        } else {
            None
        };
        (o, path)
    }

    fn finish(self) -> Vec<String> {
        self.runner.finish();
        self.log
    }
}

fn served(o: &Outcome) -> bool {
    matches!(o, Outcome::Byte(_) | Outcome::Ok)
}

/// The six cells of one row, and the evidence lines behind them.
pub struct Row {
    pub cells: [String; 6],
    pub evidence: Vec<String>,
}

fn probe<R>(
    cfg: &Config,
    pages: &mut HostPages,
    ev: &mut Vec<String>,
    name: &str,
    f: impl FnOnce(&mut Probe) -> R,
) -> Result<R, String> {
    let mut p = Probe::new(cfg, pages)?;
    let r = f(&mut p);
    for l in p.finish() {
        ev.push(format!("{name}: {l}"));
    }
    Ok(r)
}

/// Runs every probe against one configuration.
pub fn probe_row(sc: &Scenario, pages: &mut HostPages) -> Result<Row, String> {
    let cfg = config(sc)?;
    let coco = cfg.vm_type == VmType::Coco;
    let mut ev = Vec::new();

    // Column 1: a shared fault (coco: the shared alias) on a page in the shared state.
    let shared_path = probe(&cfg, pages, &mut ev, "shared fault", |p| {
        p.make_shared(1);
        p.access(1, true).1
    })?;
    // Column 2: a private fault (coco: the private alias) on a page in the private state.
    let private_path = probe(&cfg, pages, &mut ev, "private fault", |p| {
        p.set_attr_private(2);
        p.access(2, false).1
    })?;
    // Column 3: the memory attribute contradicts an access the gmem itself would serve
    // (coco: a private access to a private page whose attribute says shared; others: the
    // attribute says private). A memory fault means KVM checked the mismatch.
    let mismatch = probe(&cfg, pages, &mut ev, "mismatch", |p| {
        if !coco {
            p.set_attr_private(3);
        }
        p.access(3, false).0
    })?;
    // Column 4: does get_pfn validate? A: a private fault on a page the guest shared.
    // B: a shared fault on a private page.
    let private_on_shared = probe(&cfg, pages, &mut ev, "validate private", |p| {
        p.make_shared(4);
        p.set_attr_private(4);
        p.access(4, false).0
    })?;
    let shared_on_private = probe(&cfg, pages, &mut ev, "validate shared", |p| {
        p.access(5, true).0
    })?;
    // Column 5: the host reads a private page and a page the guest shared through its mmap view.
    let host = probe(&cfg, pages, &mut ev, "host access", |p| {
        p.run(StatementKind::GuestWrite {
            gpa: p.page(6),
            value: 0x5a,
            shared: false,
        });
        let private = p.run(StatementKind::HostRead {
            target: HostTarget::Gmem(p.cfg.gmem.clone()),
            offset: 6 * abi::PAGE_SIZE,
        });
        p.make_shared(7);
        let shared = p.run(StatementKind::HostRead {
            target: HostTarget::Gmem(p.cfg.gmem.clone()),
            offset: 7 * abi::PAGE_SIZE,
        });
        (private, shared)
    })?;
    // Column 6: is shareability tracked? A host conversion to private is accepted only then.
    let tracked = probe(&cfg, pages, &mut ev, "tracking", |p| {
        p.run(StatementKind::Convert {
            gmem: p.cfg.gmem.clone(),
            to: ConvertTo::Private,
            offset: 0,
            size: abi::PAGE_SIZE,
            mode: None,
        })
    })?;

    let path = |p: Option<&str>| p.unwrap_or("none (fault not served)").to_string();
    let c1 = path(shared_path);
    let c2 = path(private_path);
    let c3 = if matches!(mismatch, Outcome::MemoryFault { .. }) {
        "check"
    } else {
        "don't check"
    };
    // get_pfn validates private faults if a private fault on a shared page is refused; it
    // validates shared faults if a shared fault on a private page that went to gmem is refused.
    let private_validated = matches!(private_on_shared, Outcome::MemoryFault { .. });
    let shared_validated = matches!(shared_on_private, Outcome::MemoryFault { .. }) && c1 == "gmem";
    let c4 = match (private_validated, shared_validated) {
        (true, true) => "by fault",
        (true, false) => "GUEST",
        (false, true) => "ALL",
        (false, false) => "none",
    };
    let c5 = match host {
        (Outcome::Errno(Errno::ENODEV), _) => "no mmap",
        (Outcome::Sigbus, o) if served(&o) => "ALL",
        (o, _) if served(&o) => "none",
        _ => "no access",
    };
    let c6 = match tracked {
        Outcome::Errno(Errno::EINVAL) => "no",
        _ => "yes",
    };
    Ok(Row {
        cells: [
            c1,
            c2,
            c3.to_string(),
            c4.to_string(),
            c5.to_string(),
            c6.to_string(),
        ],
        evidence: ev,
    })
}

/// The seed's column titles.
pub const COLUMNS: [&str; 6] = [
    "1. Shared guest faults",
    "2. Private guest faults",
    "3. Don't check for mismatches within KVM?",
    "4. Validate shareability in kvm_gmem_get_pfn?",
    "5. Validate shareability on userspace fault?",
    "6. Need to track shareability?",
];

/// Prints the table as markdown and the JSON of `target/seed-table.json` on a line of its own
/// starting with `SEED-TABLE-JSON ` (the Makefile writes it to the file).
pub fn print(rows: &[(String, Row)]) {
    board::println!("| use case | {} |", COLUMNS.join(" | "));
    board::println!("|---|---|---|---|---|---|---|");
    for (name, row) in rows {
        board::println!("| {} | {} |", name, row.cells.join(" | "));
    }
    let mut json = String::from("{\"rows\":[");
    for (i, (name, row)) in rows.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("{{\"use_case\":\"{name}\",\"cells\":["));
        for (j, c) in row.cells.iter().enumerate() {
            if j > 0 {
                json.push(',');
            }
            json.push_str(&format!("\"{c}\""));
        }
        json.push_str("]}");
    }
    json.push_str("]}");
    board::println!("SEED-TABLE-JSON {json}");
}
