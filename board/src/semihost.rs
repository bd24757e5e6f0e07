//! Semihosting: the exit call that makes QEMU's process status the image's verdict, and a write
//! path for test reports.

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

/// Calls `f` with each command-line argument QEMU was given with `-semihosting-config arg=...`
/// (the first is the program name).
pub fn for_each_arg(mut f: impl FnMut(&str)) {
    if let Ok(args) = semihosting::experimental::env::args::<2048>() {
        for a in (&args).flatten() {
            f(a);
        }
    }
}

/// Reads a whole file on the machine running QEMU into `buf`; returns the bytes read.
pub fn read_file(path: &str, buf: &mut [u8]) -> Result<usize, &'static str> {
    use semihosting::io::Read;
    let mut cpath = [0u8; 256];
    if path.len() >= cpath.len() {
        return Err("path too long");
    }
    cpath[..path.len()].copy_from_slice(path.as_bytes());
    let c = core::ffi::CStr::from_bytes_until_nul(&cpath).map_err(|_| "bad path")?;
    let mut f = semihosting::fs::File::open(c).map_err(|_| "cannot open")?;
    let mut total = 0;
    loop {
        let n = f.read(&mut buf[total..]).map_err(|_| "read error")?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        if total == buf.len() {
            return Err("file too large");
        }
    }
}
