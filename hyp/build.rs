use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let linker = root.join("linker");
    println!("cargo:rustc-link-arg-bins=-L{}", linker.display());
    println!(
        "cargo:rustc-link-arg-bins=-T{}",
        linker.join("hyp.ld").display()
    );
    for f in ["hyp.ld", "common.ld"] {
        println!("cargo:rerun-if-changed={}", linker.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=HOST_IMAGE");
    println!("cargo:rerun-if-env-changed=HYP_LOG");
    println!("cargo:rerun-if-env-changed=FAULT_PAD");
    if let Ok(p) = std::env::var("HOST_IMAGE") {
        println!("cargo:rerun-if-changed={p}");
    }
}
