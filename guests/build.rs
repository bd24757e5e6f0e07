use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let linker = root.join("linker");
    println!("cargo:rustc-link-arg-bins=-L{}", linker.display());
    println!(
        "cargo:rustc-link-arg-bins=-T{}",
        linker.join("guest.ld").display()
    );
    for f in ["guest.ld", "common.ld"] {
        println!("cargo:rerun-if-changed={}", linker.join(f).display());
    }
}
