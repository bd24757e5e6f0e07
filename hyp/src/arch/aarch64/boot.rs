//! The first instructions of every EL2 image: park secondary CPUs, set the stack, clear BSS, call
//! Rust. QEMU enters at EL2 with the MMU off; `x0` is 0 (the DTB sits at the RAM base instead).

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
"#
);
