//! The product hyp image: boots at EL2, then loads and enters the host shim at EL1.
#![no_std]
#![no_main]

use hyp::boot::{enter_host, BootInfo};

/// The host shim, as a flat binary linked at `board::layout::HOST_BASE` (built by the Makefile).
static HOST_SHIM: &[u8] = include_bytes!(env!("HOST_IMAGE"));

#[no_mangle]
fn hyp_image_main(_info: &'static BootInfo) -> ! {
    enter_host(HOST_SHIM, [0; 4])
}
