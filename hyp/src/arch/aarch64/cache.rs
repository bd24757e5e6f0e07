//! Cache and instruction-stream maintenance.

use core::arch::asm;

const LINE: usize = 64;

/// Cleans and invalidates the data cache to the point of coherency over `[start, start + len)`.
pub fn clean_invalidate_dcache(start: usize, len: usize) {
    let mut addr = start & !(LINE - 1);
    let end = start.saturating_add(len);
    while addr < end {
        // SAFETY: `dc civac` on any address is harmless for memory safety; the range is mapped
        // (or the MMU is off).
        unsafe { asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += LINE;
    }
    // SAFETY: barrier only.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates the instruction cache after new code was written.
pub fn invalidate_icache() {
    // SAFETY: cache maintenance and barriers only.
    unsafe {
        asm!(
            "ic iallu",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}
