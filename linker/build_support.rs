// Shared by the build scripts of every bare-metal image (`include!`d, so it needs no crate):
// links the crate's binaries with one of the linker scripts in this directory, and reruns the
// build when the script, the common section rules or the named environment variables change
// (for `*_IMAGE` variables, also when the image file they name changes).

/// `root`: the workspace root relative to the crate; `script`: e.g. `"hyp.ld"`.
fn link_image(root: &str, script: &str, env: &[&str]) {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let linker = std::path::Path::new(&dir).join(root).join("linker");
    println!("cargo:rustc-link-arg-bins=-L{}", linker.display());
    println!("cargo:rustc-link-arg-bins=-T{}", linker.join(script).display());
    for f in [script, "common.ld", "build_support.rs"] {
        println!("cargo:rerun-if-changed={}", linker.join(f).display());
    }
    for var in env {
        println!("cargo:rerun-if-env-changed={var}");
        if let (true, Ok(path)) = (var.ends_with("_IMAGE"), std::env::var(var)) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
