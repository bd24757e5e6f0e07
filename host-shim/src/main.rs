//! The product host shim: the default demo.
#![no_std]
#![no_main]

use abi::host::HostCall;
use host_shim::hvc;

#[no_mangle]
fn host_image_main(_args: [u64; 4]) -> ! {
    log::info!("host shim up at EL{}", host_shim::current_el());
    let code = match hvc::call(HostCall::Version, [0; 6]) {
        Ok([v, ..]) => {
            log::info!("hyp answers VERSION: ABI {}.{}", v >> 16, v & 0xffff);
            0
        }
        Err(e) => {
            log::error!("VERSION call failed: {e}");
            1
        }
    };
    board::semihost::exit(code)
}
