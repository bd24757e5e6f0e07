//! Trap routing: the handler boot gives the arch vectors (`arch::vectors::install`). Host HVCs go
//! to the glue (host calls), host SMCs to PSCI, host stage-2 aborts to the glue's host stage-2;
//! anything else the hyp does not expect ends in a crash report (`crash.rs`).

use crate::arch::vectors::{TrapFrame, VectorKind};
use crate::arch::Syndrome;
use crate::arch::{el1, esr, tlb, traps};
use crate::crash::fatal_exception;

/// Routes a trap taken at EL2 (called by the vector with the saved frame; a fault on an armed
/// probe was answered there). A trap from the host that the hyp does not handle is answered
/// with an exception at the host's own EL1 (Trust rule 5): never a hyp crash.
pub fn handle_trap(frame: &mut TrapFrame, syn: Syndrome) {
    match VectorKind::of(frame) {
        VectorKind::LowerSync => match esr::ec(syn.esr) {
            esr::EC_HVC64 => crate::glue::host_hvc(frame),
            esr::EC_SMC64 => crate::psci::handle_host_smc(frame, syn.esr),
            ec @ (esr::EC_DABT_LOW | esr::EC_IABT_LOW) => {
                let instruction = ec == esr::EC_IABT_LOW;
                match esr::fault_kind(syn.esr) {
                    esr::FaultKind::Translation | esr::FaultKind::AccessFlag => {
                        // A host stage-2 fault: the host's IPA is the PA.
                        let ipa = ((syn.hpfar >> 4) << 12) | (syn.far & 0xfff);
                        if !crate::glue::host_abort(ipa) {
                            el1::inject_host_abort(frame, syn.far, instruction, syn.esr);
                        }
                    }
                    esr::FaultKind::TlbConflict => tlb::flush_local_current_vmid(),
                    // Permission (a fetch from execute-never device memory, ...), alignment,
                    // external abort, address size: mapping again would not help.
                    esr::FaultKind::Other => {
                        el1::inject_host_abort(frame, syn.far, instruction, syn.esr)
                    }
                }
            }
            // SVE, SME, trace, IMPLEMENTATION DEFINED registers, ...: undefined instruction.
            _ => traps::host_undef(&mut frame.elr, &mut frame.spsr, syn.esr),
        },
        VectorKind::LowerIrq | VectorKind::LowerFiq => {
            log::debug!("unexpected interrupt from EL1 ignored");
        }
        _ => fatal_exception(frame, syn),
    }
}
