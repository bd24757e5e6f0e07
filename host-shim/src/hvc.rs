//! The host's side of the hypercall ABI: `HVC #0` with the function ID in `x0`.

use abi::host::HostCall;
use abi::Errno;

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
    let (r0, r1, r2, r3, r4, r5);
    // SAFETY: HVC traps to the hyp, which writes x0..x5 of the caller only.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") id => r0,
            inout("x1") args[0] => r1,
            inout("x2") args[1] => r2,
            inout("x3") args[2] => r3,
            inout("x4") args[3] => r4,
            inout("x5") args[4] => r5,
            in("x6") args[5],
            options(nostack)
        );
    }
    [r0, r1, r2, r3, r4, r5]
}
