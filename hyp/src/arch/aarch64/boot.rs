//! The first instructions of every EL2 image: park secondary CPUs, set the stack, clear BSS, call
//! Rust. QEMU enters at EL2 with the MMU off; `x0` is 0 (the DTB sits at the RAM base instead).
//!
//! Secondary CPUs: QEMU `virt` keeps them powered off until a PSCI `CPU_ON`. The hyp's own
//! `CPU_ON` (relaying the host's, `crate::psci`) starts one at [`secondary_entry_pa`], at EL2
//! with its MMU and caches off and `x0` = the address of its [`SecondaryBoot`] record: the
//! entry turns on the same EL2 translation regime CPU 0 runs (MAIR, TCR, TTBR0, SCTLR), takes
//! its own stack and calls `hyp_secondary_rust_start(cpu)`. A CPU some other firmware started
//! at `_start` parks.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::registers::{Readable, MAIR_EL2, MPIDR_EL1, SCTLR_EL2, TCR_EL2, TTBR0_EL2};

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x19, mpidr_el1
    and     x19, x19, #0xff
    cbz     x19, 1f
0:  wfe
    b       0b
1:  ldr     x1, =__stack_top
    mov     sp, x1
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
2:  cmp     x1, x2
    b.hs    3f
    str     xzr, [x1], #8
    b       2b
3:  mov     x0, x19
    bl      hyp_rust_start
    b       0b
    .ltorg

    .section .text.hyp_secondary_entry, "ax"
    .balign 4
    .global hyp_secondary_entry
hyp_secondary_entry:
    // x0: this CPU's SecondaryBoot record (identity-mapped), read with the MMU and caches off.
    ldr     x1, [x0, #{mair}]
    msr     mair_el2, x1
    ldr     x1, [x0, #{tcr}]
    msr     tcr_el2, x1
    ldr     x1, [x0, #{ttbr0}]
    msr     ttbr0_el2, x1
    dsb     sy
    isb
    tlbi    alle2
    ic      iallu
    dsb     nsh
    isb
    ldr     x1, [x0, #{sctlr}]
    msr     sctlr_el2, x1
    isb
    ldr     x1, [x0, #{stack}]
    mov     sp, x1
    ldr     x0, [x0, #{cpu}]
    bl      hyp_secondary_rust_start
4:  wfe
    b       4b
"#,
    mair = const offset_of!(SecondaryBoot, mair),
    tcr = const offset_of!(SecondaryBoot, tcr),
    ttbr0 = const offset_of!(SecondaryBoot, ttbr0),
    sctlr = const offset_of!(SecondaryBoot, sctlr),
    stack = const offset_of!(SecondaryBoot, stack_top),
    cpu = const offset_of!(SecondaryBoot, cpu),
);

/// What a secondary CPU's entry reads before its MMU is on: the EL2 translation regime to turn
/// on (copied from the CPU that starts it, so every CPU runs the same tables, attributes and
/// controls), its stack and its index.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SecondaryBoot {
    mair: AtomicU64,
    tcr: AtomicU64,
    ttbr0: AtomicU64,
    sctlr: AtomicU64,
    stack_top: AtomicU64,
    cpu: AtomicU64,
}

impl SecondaryBoot {
    pub const fn new() -> Self {
        Self {
            mair: AtomicU64::new(0),
            tcr: AtomicU64::new(0),
            ttbr0: AtomicU64::new(0),
            sctlr: AtomicU64::new(0),
            stack_top: AtomicU64::new(0),
            cpu: AtomicU64::new(0),
        }
    }

    /// Fills the record for `cpu` from the running CPU's EL2 translation registers, with
    /// `stack_top` as its stack, and cleans it to the point of coherency (the new CPU reads it
    /// with its caches off). Returns the `context_id` to pass to `CPU_ON`.
    pub fn prepare(&self, cpu: usize, stack_top: usize) -> u64 {
        self.mair.store(MAIR_EL2.get(), Ordering::Relaxed);
        self.tcr.store(TCR_EL2.get(), Ordering::Relaxed);
        self.ttbr0.store(TTBR0_EL2.get(), Ordering::Relaxed);
        self.sctlr.store(SCTLR_EL2.get(), Ordering::Relaxed);
        self.stack_top.store(stack_top as u64, Ordering::Relaxed);
        self.cpu.store(cpu as u64, Ordering::Relaxed);
        let addr = self as *const Self as usize;
        super::cache::clean_invalidate_dcache(addr, core::mem::size_of::<Self>());
        addr as u64
    }
}

impl Default for SecondaryBoot {
    fn default() -> Self {
        Self::new()
    }
}

/// The physical (== virtual) address a secondary CPU starts at.
pub fn secondary_entry_pa() -> u64 {
    extern "C" {
        fn hyp_secondary_entry();
    }
    hyp_secondary_entry as *const () as usize as u64
}

/// This CPU's index: MPIDR_EL1.Aff0 (QEMU `virt` numbers up to 16 CPUs in Aff0).
pub fn cpu_index() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}
