//! The host's PSCI, relayed by the hyp (Trust rule 10: only the hyp talks to the firmware).
//!
//! Every SMC the host executes traps to EL2 (`HCR_EL2.TSC`, `arch::el1::host_hcr`) and lands
//! here with `ELR_EL2` pointing at the SMC. The hyp answers from its own state and relays to
//! the firmware only the PSCI functions below, with arguments it has checked:
//!
//! | function | what the hyp does |
//! |---|---|
//! | `PSCI_VERSION` | relays |
//! | `PSCI_FEATURES` | `NOT_SUPPORTED` for a function outside this table; else relays (0 if the firmware predates PSCI 1.0) |
//! | `CPU_ON` (SMC64) | checks the target (a CPU the hyp is built for, not already on or pending) and the entry point (4-byte aligned, in RAM); records the host's entry point and context id for that CPU; then issues its own `CPU_ON` with the hyp's secondary entry: the CPU starts in the hyp at EL2 and enters the host at EL1 at the requested address, `x0` = context id, under the host stage-2 |
//! | `CPU_OFF` | marks the CPU off and relays; on failure the CPU is on again and the host gets the error |
//! | `AFFINITY_INFO` (SMC32/64, lowest level 0) | checks the target; relays, reporting `ON_PENDING` while the CPU is still in the hyp on its way to the host |
//! | `MIGRATE_INFO_TYPE`, `SYSTEM_OFF`, `SYSTEM_RESET` | relays |
//!
//! Any other SMC (any function ID, any immediate) is answered `NOT_SUPPORTED` (-1) in `x0`;
//! the host resumes after the SMC with its other registers unchanged. No world but the hyp ever
//! runs at EL2: the hyp's own `CPU_ON` is the only way a CPU starts, and it starts in the hyp.

use core::sync::atomic::Ordering;

use board::layout::MAX_CPUS;
use smccc::psci::error::{
    ALREADY_ON, INVALID_ADDRESS, INVALID_PARAMETERS, NOT_SUPPORTED, ON_PENDING as E_ON_PENDING,
};
use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_FEATURES,
    PSCI_MIGRATE_INFO_TYPE, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

use crate::arch::firmware;
use crate::arch::vectors::TrapFrame;
use crate::machine;
use crate::percpu::{self, PerCpu, OFF, ON, ON_PENDING};

/// `AFFINITY_INFO` results.
const AFF_ON: i64 = 0;
const AFF_ON_PENDING: i64 = 2;

/// The PSCI functions the hyp offers the host (what `PSCI_FEATURES` reports as present).
const OFFERED: [u32; 9] = [
    PSCI_VERSION,
    PSCI_FEATURES,
    PSCI_CPU_ON_64,
    PSCI_CPU_OFF,
    PSCI_AFFINITY_INFO_32,
    PSCI_AFFINITY_INFO_64,
    PSCI_MIGRATE_INFO_TYPE,
    PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_RESET,
];

/// A host SMC, trapped by `HCR_EL2.TSC`: answers it in the host's `x0` and resumes the host
/// after the SMC. `esr` is the trap's syndrome (ISS bits 15:0 = the SMC's immediate).
pub fn handle_host_smc(frame: &mut TrapFrame, esr: u64) {
    let imm = esr & 0xffff;
    let ret = if imm == 0 {
        call(frame.x[0], [frame.x[1], frame.x[2], frame.x[3]])
    } else {
        i64::from(NOT_SUPPORTED)
    };
    frame.x[0] = ret as u64;
    // A trapped SMC leaves ELR_EL2 at the SMC itself (unlike HVC).
    crate::arch::pc::skip(&mut frame.elr, &mut frame.spsr, true);
}

/// Answers one host PSCI call; `x0` is the function ID (its upper 32 bits are ignored, as SMCCC
/// passes the ID in `w0`).
pub fn call(x0: u64, a: [u64; 3]) -> i64 {
    let function = x0 as u32;
    let w = |v: u64| u64::from(v as u32);
    let ret = match function {
        PSCI_VERSION => firmware::version(),
        PSCI_FEATURES => features(a[0] as u32),
        PSCI_CPU_ON_64 => cpu_on(a[0], a[1], a[2]),
        PSCI_CPU_OFF => cpu_off(),
        PSCI_AFFINITY_INFO_32 => affinity_info(w(a[0]), w(a[1])),
        PSCI_AFFINITY_INFO_64 => affinity_info(a[0], a[1]),
        PSCI_MIGRATE_INFO_TYPE => firmware::migrate_info_type(),
        PSCI_SYSTEM_OFF => {
            log::info!("the host asked for SYSTEM_OFF");
            firmware::system_off()
        }
        PSCI_SYSTEM_RESET => {
            log::info!("the host asked for SYSTEM_RESET");
            firmware::system_reset()
        }
        _ => i64::from(NOT_SUPPORTED),
    };
    log::debug!(
        "host SMC 0x{function:08x} (0x{:x}, 0x{:x}, 0x{:x}) -> {ret}",
        a[0],
        a[1],
        a[2]
    );
    ret
}

fn features(function: u32) -> i64 {
    if !OFFERED.contains(&function) {
        return i64::from(NOT_SUPPORTED);
    }
    if function == PSCI_FEATURES {
        return 0;
    }
    // PSCI_FEATURES exists from PSCI 1.0 on; older firmware would not even recognise it.
    if firmware::version() >= 0x1_0000 {
        firmware::features(function)
    } else {
        0
    }
}

/// The CPU a PSCI target affinity names, if the hyp is built for it: QEMU `virt` numbers its
/// CPUs in Aff0, so every other affinity bit must be 0.
fn target_cpu(target: u64) -> Option<(usize, &'static PerCpu)> {
    if target & !0xff != 0 {
        return None;
    }
    let cpu = target as usize;
    if cpu >= MAX_CPUS {
        return None;
    }
    percpu::get(cpu).map(|p| (cpu, p))
}

fn entry_valid(entry: u64) -> bool {
    let Some(info) = machine::info() else {
        return false;
    };
    entry.is_multiple_of(4)
        && entry >= info.ram_base as u64
        && entry < info.ram_end() as u64
        && crate::glue::host_may_reach(entry)
}

fn cpu_on(target: u64, entry: u64, context: u64) -> i64 {
    let Some((cpu, slot)) = target_cpu(target) else {
        return i64::from(INVALID_PARAMETERS);
    };
    if !entry_valid(entry) {
        return i64::from(INVALID_ADDRESS);
    }
    if let Err(state) =
        slot.power
            .compare_exchange(OFF, ON_PENDING, Ordering::SeqCst, Ordering::SeqCst)
    {
        return i64::from(if state == ON {
            ALREADY_ON
        } else {
            E_ON_PENDING
        });
    }
    slot.host_entry.store(entry, Ordering::SeqCst);
    slot.host_context.store(context, Ordering::SeqCst);
    let record = slot.boot.prepare(cpu, machine::stack_top(cpu));
    let ret = firmware::cpu_on(target, crate::arch::boot::secondary_entry_pa(), record);
    if ret != 0 {
        // Nothing started: the CPU is off again, and the host gets the firmware's answer.
        slot.power.store(OFF, Ordering::SeqCst);
    } else {
        log::debug!("CPU {cpu} starting for the host at 0x{entry:x}");
    }
    ret
}

fn cpu_off() -> i64 {
    let slot = percpu::this_cpu();
    slot.power.store(OFF, Ordering::SeqCst);
    let ret = firmware::cpu_off();
    // Only a failed CPU_OFF returns.
    slot.power.store(ON, Ordering::SeqCst);
    ret
}

fn affinity_info(target: u64, lowest_level: u64) -> i64 {
    let Some((_, slot)) = target_cpu(target) else {
        return i64::from(INVALID_PARAMETERS);
    };
    if lowest_level != 0 {
        return i64::from(INVALID_PARAMETERS);
    }
    let fw = firmware::affinity_info(target);
    if fw == AFF_ON && slot.power.load(Ordering::SeqCst) == ON_PENDING {
        AFF_ON_PENDING
    } else {
        fw
    }
}
