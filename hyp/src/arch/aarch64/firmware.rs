//! The hyp's conduit to the firmware: PSCI over SMC (the `smccc` crate makes the call). Only the
//! hyp talks to the firmware (Trust rule 10): the host's SMCs trap to EL2 (`HCR_EL2.TSC`) and
//! `crate::psci` decides what, if anything, goes on to here.
//!
//! QEMU's own PSCI answers these SMCs from EL2 (there is no EL3). It answers only the PSCI
//! functions it implements; any other SMC from EL2 would be an undefined instruction at EL2,
//! so nothing but the functions below is ever issued. Every result is the raw value for `x0`.

use smccc::psci::{self, AffinityState, LowestAffinityLevel, MigrateType};
use smccc::Smc;

fn raw(e: psci::Error) -> i64 {
    i64::from(e)
}

/// `PSCI_VERSION`: the firmware's PSCI version (major << 16 | minor).
pub fn version() -> i64 {
    match psci::version::<Smc>() {
        Ok(v) => i64::from(u32::from(v)),
        Err(e) => raw(e),
    }
}

/// `PSCI_FEATURES` for `function`: its feature flags (>= 0) or an error.
pub fn features(function: u32) -> i64 {
    match psci::psci_features::<Smc>(function) {
        Ok(flags) => i64::from(flags),
        Err(e) => raw(e),
    }
}

/// `CPU_ON` (SMC64): starts `target` at `entry` (at EL2, MMU off) with `x0 = context_id`.
pub fn cpu_on(target: u64, entry: u64, context_id: u64) -> i64 {
    match psci::cpu_on::<Smc>(target, entry, context_id) {
        Ok(()) => 0,
        Err(e) => raw(e),
    }
}

/// `CPU_OFF`: powers this CPU down; returns only on failure.
pub fn cpu_off() -> i64 {
    match psci::cpu_off::<Smc>() {
        Ok(()) => 0,
        Err(e) => raw(e),
    }
}

/// `AFFINITY_INFO` (SMC64) of one CPU (lowest affinity level 0).
pub fn affinity_info(target: u64) -> i64 {
    match psci::affinity_info::<Smc>(target, LowestAffinityLevel::All) {
        Ok(AffinityState::On) => 0,
        Ok(AffinityState::Off) => 1,
        Ok(AffinityState::OnPending) => 2,
        Err(e) => raw(e),
    }
}

/// `MIGRATE_INFO_TYPE`.
pub fn migrate_info_type() -> i64 {
    match psci::migrate_info_type::<Smc>() {
        Ok(MigrateType::MigrateCapable) => 0,
        Ok(MigrateType::NotMigrateCapable) => 1,
        Ok(MigrateType::MigrationNotRequired) => 2,
        Err(e) => raw(e),
    }
}

/// `SYSTEM_OFF`: ends the machine (QEMU exits). Parks the CPU if the firmware returns.
pub fn system_off() -> ! {
    let _ = psci::system_off::<Smc>();
    super::halt()
}

/// `SYSTEM_RESET` (QEMU runs with `-no-reboot`, so this ends the run too).
pub fn system_reset() -> ! {
    let _ = psci::system_reset::<Smc>();
    super::halt()
}
