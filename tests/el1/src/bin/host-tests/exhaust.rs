//! Rule 8 (SEMANTICS.md "Trust": no one exhausts the hyp) as an attacker tries it: objects created
//! without end by the host or a guest, VM handles that must be reused. Each flood must end with
//! a documented limit's error (`abi::host::*_MAX`) while the hyp goes on; `zz_atk_2` exhausts the
//! hyp for real only with `ATK_EXHAUST=vcpu|gmem|guard|host-sve` at build time.

use alloc::format;

use abi::cmd::STATUS_OK;
use abi::flags::VmType;
use abi::guest::SMCCC_INVALID_PARAMETER;
use abi::Errno;
use host_shim::driver::GUEST_CODE_IPA;
use host_shim::vm;
use ontarget::{ensure, ensure_eq, register, TestResult};

use crate::attacks::*;

/// The guest's MMIO-guard flood (`guests/src/bin/step-guest.rs`, attacker-only command).
const OP_ATK_GUARD_FLOOD: u64 = 0x42;
use crate::vms::e;

// ---- rule 8: no one exhausts the hyp (bounded probes, the hyp survives them) ---------------------

/// How many objects a bounded probe creates before it calls the missing limit a break: each of
/// these takes a good part of the hyp's 64 MiB heap (about 1 KiB a vCPU), while a host's VMs
/// need a handful. The documented limits are far below it.
const PROBE_OBJECTS: u64 = 16_384;

fn atk_vcpu_create_without_end_is_refused_before_it_eats_the_hyp_heap() -> TestResult {
    let vm = vm::vm_create(VmType::Plain).map_err(e)?;
    let mut made = 0;
    let mut refused = None;
    while made < PROBE_OBJECTS {
        match vm::vcpu_create(vm, GUEST_CODE_IPA, 0) {
            Ok(_) => made += 1,
            Err(x) => {
                refused = Some(x);
                break;
            }
        }
    }
    // The hyp still answers, and tearing the VM down frees them.
    vm::vm_destroy(vm).map_err(e)?;
    invariants_clean()?;
    board::println!("    atk: {made} vCPUs created for one VM, refusal: {refused:?}");
    ensure!(
        matches!(refused, Some(Errno::ENOSPC | Errno::ENOMEM)),
        "{made} vCPUs (about {made} KiB of hyp heap) created for one VM without a refusal: no \
         limit stops a host that goes on (see zz_atk_2 with ATK_EXHAUST=vcpu: the hyp panics)"
    );
    Ok(())
}

fn atk_gmem_create_without_end_is_refused_before_it_eats_the_hyp_heap() -> TestResult {
    let vm = vm::vm_create(VmType::Plain).map_err(e)?;
    let mut made = 0;
    let mut refused = None;
    while made < PROBE_OBJECTS {
        match vm::gmem_create(vm, 1 << 30, TRACKED) {
            Ok(_) => made += 1,
            Err(x) => {
                refused = Some(x);
                break;
            }
        }
    }
    vm::vm_destroy(vm).map_err(e)?;
    invariants_clean()?;
    board::println!("    atk: {made} gmem files created for one VM, refusal: {refused:?}");
    ensure!(
        matches!(refused, Some(Errno::ENOSPC | Errno::ENOMEM)),
        "{made} gmem files of 1 GiB created for one VM without a refusal"
    );
    Ok(())
}

/// A guest that guards MMIO pages without end: each MMIO_GUARD_MAP_RANGE call adds 256 entries
/// to a set in the hyp's heap. Rule 8: the guest gets INVALID_PARAMETER at some limit.
fn atk_guest_mmio_guard_flood_is_refused_before_it_eats_the_hyp_heap() -> TestResult {
    let mut v = pkvm(16, 48)?;
    let calls = PROBE_OBJECTS / 4;
    let r = step(&mut v, OP_ATK_GUARD_FLOOD, [0x2_0000_0000, calls, 0, 0])?;
    ensure_eq!(r.status, Some(STATUS_OK));
    let [ok, last] = r.results;
    // The guest still runs, the hyp still answers; the teardown frees the set.
    ensure_eq!(read(&mut v, GPA)?, 0);
    destroy(v)?;
    board::println!(
        "    atk: guest made {ok} MMIO_GUARD_MAP_RANGE calls ({} guarded granules), last x0 {last:#x}",
        ok * 256
    );
    ensure!(
        last == SMCCC_INVALID_PARAMETER,
        "the guest guarded {} granules ({ok} calls) without a refusal: each is kept in the hyp's \
         heap (see zz_atk_2 with ATK_EXHAUST=guard: the hyp panics)",
        ok * 256
    );
    Ok(())
}

// ---- last: what the hyp never gives back, and a real exhaustion -----------------------------------

/// Rule 8: "Handles and VMIDs of destroyed objects are reused." A host that creates and destroys
/// VMs one at a time (never more than two alive) must be able to go on for ever.
fn zz_atk_3_vm_handles_and_vmids_are_reused_after_destroy() -> TestResult {
    let keeper = vm::vm_create(VmType::Plain).map_err(e)?;
    for i in 0..1000u32 {
        let vm = match vm::vm_create(VmType::Pkvm) {
            Ok(vm) => vm,
            Err(x) => {
                return Err(format!(
                    "VmCreate number {} (one VM alive besides the keeper) answered {x}: \
                     handles/VMIDs of destroyed VMs are never reused",
                    i + 1
                ))
            }
        };
        vm::vm_destroy(vm).map_err(e)?;
    }
    vm::vm_destroy(keeper).map_err(e)?;
    Ok(())
}

/// The real exhaustion (only with `ATK_EXHAUST` set when the image is built: it ends the run if
/// the hyp has no limit). The secure outcome: a defined error, then the hyp keeps answering.
/// `vcpu`: VcpuCreate without end; `gmem`: GmemCreate without end; `guard`: a guest's
/// MMIO_GUARD_MAP_RANGE without end; `host-sve`: one SVE instruction from the host (with
/// CPACR_EL1 letting EL1 use SVE), which must be an undefined instruction at EL1, not a crash.
/// Run one with e.g. `ATK_EXHAUST=vcpu make test-target`.
fn zz_atk_2_exhaustion_until_refused_keeps_the_hyp_alive() -> TestResult {
    let Some(kind) = option_env!("ATK_EXHAUST") else {
        return Ok(());
    };
    let vm = vm::vm_create(VmType::Plain).map_err(e)?;
    board::println!("    atk: exhausting the hyp with {kind}; a hyp panic ends the run here");
    let refused = match kind {
        "vcpu" => (0..10_000_000u64).find_map(|_| vm::vcpu_create(vm, GUEST_CODE_IPA, 0).err()),
        "gmem" => (0..10_000_000u64).find_map(|_| vm::gmem_create(vm, 1 << 30, TRACKED).err()),
        // Not an exhaustion: a host SVE instruction (CPTR_EL2.TZ traps it to EL2). The secure
        // outcome is an undefined-instruction exception at EL1 (rule 5), not a hyp crash.
        "host-sve" => {
            // SAFETY: lets EL1 use FP and SVE as far as its own controls go (CPACR_EL1.FPEN, ZEN).
            unsafe {
                core::arch::asm!(
                    "mrs {t}, cpacr_el1",
                    "orr {t}, {t}, #(3 << 16)",
                    "orr {t}, {t}, #(3 << 20)",
                    "msr cpacr_el1, {t}",
                    "isb",
                    t = out(reg) _,
                    options(nostack)
                )
            };
            let r = host_shim::exceptions::probe(|| {
                let vl: u64;
                // SAFETY: `rdvl` reads the vector length; a trap is caught by the probe.
                unsafe { core::arch::asm!(".inst 0x04bf5020", out("x0") vl, options(nostack)) };
                vl
            });
            board::println!("    atk: host rdvl: {r:x?}");
            r.err().map(|_| Errno::ENOSPC)
        }
        "guard" => {
            let mut v = pkvm(16, 48)?;
            let r = step(&mut v, OP_ATK_GUARD_FLOOD, [0x2_0000_0000, 1 << 40, 0, 0])?;
            board::println!("    atk: guard flood ended: {:x?}", r.results);
            (r.results[1] == SMCCC_INVALID_PARAMETER).then_some(Errno::ENOSPC)
        }
        _ => return Err(format!("unknown ATK_EXHAUST={kind}")),
    };
    ensure!(refused.is_some(), "no refusal");
    vm::vm_destroy(vm).map_err(e)?;
    invariants_clean()
}

register!(
    atk_vcpu_create_without_end_is_refused_before_it_eats_the_hyp_heap,
    atk_gmem_create_without_end_is_refused_before_it_eats_the_hyp_heap,
    atk_guest_mmio_guard_flood_is_refused_before_it_eats_the_hyp_heap,
    zz_atk_2_exhaustion_until_refused_keeps_the_hyp_alive,
    zz_atk_3_vm_handles_and_vmids_are_reused_after_destroy,
);
