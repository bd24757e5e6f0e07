//! Semihosting, for test images only (the `semihosting` feature): the exit call that makes
//! QEMU's process status the image's verdict, and a write path for test reports. QEMU honours
//! semihosting from any EL1, so a product run, whose EL1 is untrusted, never enables it (Trust
//! rule 11); product images leave through the console and PSCI SYSTEM_OFF instead.

/// Ends QEMU with `code` as its exit status (0 = success).
pub fn exit(code: i32) -> ! {
    semihosting::process::exit(code)
}

/// Writes a line through semihosting (QEMU prints it on its stderr).
pub fn write_line(args: core::fmt::Arguments) {
    use core::fmt::Write;
    struct W;
    impl Write for W {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let mut buf = [0u8; 128];
            for chunk in s.as_bytes().chunks(buf.len() - 1) {
                buf[..chunk.len()].copy_from_slice(chunk);
                buf[chunk.len()] = 0;
                if let Ok(cstr) = core::ffi::CStr::from_bytes_until_nul(&buf[..=chunk.len()]) {
                    semihosting::sys::arm_compat::sys_write0(cstr);
                }
            }
            Ok(())
        }
    }
    let _ = W.write_fmt(args);
    let _ = W.write_str("\n");
}
