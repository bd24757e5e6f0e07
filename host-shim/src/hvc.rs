//! The host's side of the hypercall ABI: SMCCC over `HVC #0`, the function ID in `x0`, arguments
//! in `x1..x6`, results in `x0..x5`; and the host's SMCs (PSCI, probes), which trap to the hyp.
//!
//! Calls go through the `smccc` crate's `hvc64` / `smc64` (SMCCC 1.2+: `x1..x17` in, `x0..x17`
//! out, so six results are there; arguments past ours are passed as zero). `smccc` takes the
//! function ID as a `u32` (SMCCC passes it in `W0`) and zero-extends it into `x0`. The hyp's
//! host-call dispatch compares all 64 bits of `x0`, and a host probing it (a test's `u64::MAX`,
//! a scenario's `host smc <id>`) must reach it with `x0` as written: an ID with any of bits
//! 63:32 set therefore goes through [`wide_call!`], the same call with all of `x0`.

use abi::host::HostCall;
use abi::Errno;

/// Registers an SMCCC 1.2 call passes after `x0`.
const ARGS: usize = 17;

/// The `smccc` call `$insn` (`"hvc #0"` or `"smc #0"`) with `x0` = `$x0`, a `u64` that does not
/// fit `smccc`'s `u32` function ID; `x1..x17` = `$args`. Returns `x0..x17`, as `smccc` does.
macro_rules! wide_call {
    ($insn:literal, $x0:expr, $args:expr) => {{
        let a: [u64; ARGS] = $args;
        let mut r = [0u64; ARGS + 1];
        // SAFETY: as in `smccc::hvc64` / `smc64`: the call traps to the hyp (HCR_EL2.TSC for an
        // SMC), which writes at most x0..x17 of the caller, all declared here; no memory of ours
        // is touched.
        unsafe {
            core::arch::asm!(
                $insn,
                inout("x0") $x0 => r[0],
                inout("x1") a[0] => r[1], inout("x2") a[1] => r[2], inout("x3") a[2] => r[3],
                inout("x4") a[3] => r[4], inout("x5") a[4] => r[5], inout("x6") a[5] => r[6],
                inout("x7") a[6] => r[7], inout("x8") a[7] => r[8], inout("x9") a[8] => r[9],
                inout("x10") a[9] => r[10], inout("x11") a[10] => r[11],
                inout("x12") a[11] => r[12], inout("x13") a[12] => r[13],
                inout("x14") a[13] => r[14], inout("x15") a[14] => r[15],
                inout("x16") a[15] => r[16], inout("x17") a[16] => r[17],
                options(nostack)
            )
        };
        r
    }};
}

/// `args` followed by zeros, as the `x1..x17` of an SMCCC 1.2 call.
fn pad<const N: usize>(args: [u64; N]) -> [u64; ARGS] {
    let mut a = [0; ARGS];
    a[..N].copy_from_slice(&args);
    a
}

/// `HVC #0` with `x0` = `x0` and `x1..x17` = `args`: `x0..x17` as the hyp left them.
#[inline(always)]
pub fn hvc64(x0: u64, args: [u64; ARGS]) -> [u64; ARGS + 1] {
    match u32::try_from(x0) {
        Ok(function) => smccc::hvc64(function, args),
        Err(_) => wide_call!("hvc #0", x0, args),
    }
}

/// `SMC #0` with `x0` = `x0` and `x1..x17` = `args`: `x0..x17` as the answer left them.
#[inline(always)]
pub fn smc64(x0: u64, args: [u64; ARGS]) -> [u64; ARGS + 1] {
    match u32::try_from(x0) {
        Ok(function) => smccc::smc64(function, args),
        Err(_) => wide_call!("smc #0", x0, args),
    }
}

/// One SMC from the host (`x1..x3` = `args`): `x0..x3` after it.
pub fn smc(function: u64, args: [u64; 3]) -> [u64; 4] {
    let r = smc64(function, pad(args));
    [r[0], r[1], r[2], r[3]]
}

/// Raw hypercall: returns `x0..x3` as the hyp left them.
pub fn raw(id: u64, args: [u64; 6]) -> [u64; 4] {
    let r = raw6(id, args);
    [r[0], r[1], r[2], r[3]]
}

/// A host call: `Ok(x0..x3)` or the errno the hyp returned.
pub fn call(call: HostCall, args: [u64; 6]) -> Result<[u64; 4], Errno> {
    call_id(call.id(), args)
}

/// A host call by raw function ID (for probing unknown IDs).
pub fn call_id(id: u64, args: [u64; 6]) -> Result<[u64; 4], Errno> {
    let regs = raw(id, args);
    match Errno::from_reg(regs[0]) {
        Some(e) => Err(e),
        None => Ok(regs),
    }
}

/// Raw hypercall returning `x0..x5` (for calls with more than four results).
pub fn raw6(id: u64, args: [u64; 6]) -> [u64; 6] {
    let r = hvc64(id, pad(args));
    [r[0], r[1], r[2], r[3], r[4], r[5]]
}
