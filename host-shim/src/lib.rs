//! The host shim library: EL1 boot, the hypercall wrapper, a heap and the panic path. The
//! product binary (`main.rs`) and the EL1 test image build on it.
//!
//! The host reaches the hyp only through `abi` (rule 2 of the house).
#![no_std]

extern crate alloc;

pub mod bench;
pub mod driver;
pub mod exceptions;
pub mod fwcfg;
pub mod gic;
pub mod hvc;
pub mod pages;
pub mod regs;
pub mod runner;
pub mod storm;
pub mod table;
pub mod timer;
pub mod verdict;
pub mod vm;

use buddy_system_allocator::LockedHeap;

/// Bytes of heap after the image.
const HEAP_SIZE: usize = 16 << 20;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    ldr     x9, =__stack_top
    mov     sp, x9
    ldr     x9, =__bss_start
    ldr     x10, =__bss_end
1:  cmp     x9, x10
    b.hs    2f
    str     xzr, [x9], #8
    b       1b
2:  bl      host_rust_start
3:  wfe
    b       3b
    .ltorg
"#
);

extern "C" {
    static __image_end: u8;
}

extern "Rust" {
    /// Defined by each EL1 image with `#[no_mangle]`; gets the hyp's `x0..x3`.
    fn host_image_main(args: [u64; 4]) -> !;
}

#[no_mangle]
extern "C" fn host_rust_start(x0: u64, x1: u64, x2: u64, x3: u64) -> ! {
    let heap_start = (core::ptr::addr_of!(__image_end) as usize).next_multiple_of(4096);
    if heap_start + HEAP_SIZE > board::layout::HOST_INPUT_BASE {
        board::eprintln_emergency!("*** host: image and heap overlap the host input blob");
        verdict::crash();
    }
    // SAFETY: the host owns the RAM above its image; the heap takes the 16 MiB right after it,
    // which nothing else in the host uses (it ends below the host input blob, checked above).
    unsafe { HEAP.lock().init(heap_start, HEAP_SIZE) };
    board::console::init_logger("host", board::console::parse_level(option_env!("HOST_LOG")));
    exceptions::install();
    // SAFETY: every EL1 image defines `host_image_main` with this signature.
    unsafe { host_image_main([x0, x1, x2, x3]) }
}

/// Bytes at the top of RAM the host keeps for the donations `VmCreate` and `VcpuCreate` take
/// (`vm::vm_create`, `vm::vcpu_create`): 24 MiB, for 255 VMs and their vCPUs at once.
pub const CREATE_REGION: u64 = 24 << 20;

/// The end of the memory from [`free_memory_start`] on that the host may donate or use freely
/// (below [`CREATE_REGION`]), given the RAM's base and size.
pub fn free_memory_end(ram_base: u64, ram_size: u64) -> u64 {
    ram_base + ram_size - CREATE_REGION
}

/// The first byte above the host heap and the host input blob: memory the host may donate or
/// use freely.
pub fn free_memory_start() -> usize {
    let heap_end = (core::ptr::addr_of!(__image_end) as usize).next_multiple_of(4096) + HEAP_SIZE;
    heap_end.max(board::layout::HOST_INPUT_END)
}

/// The exception level this code runs at (1 for the host).
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    // CurrentEL.EL, bits 3:2.
    const EL_SHIFT: u32 = 2;
    const EL_MASK: u64 = 0b11;
    (el >> EL_SHIFT) & EL_MASK
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    board::eprintln_emergency!("\n*** host: panic: {}", info);
    exceptions::run_crash_hook(format_args!("panic: {}", info));
    verdict::crash()
}
