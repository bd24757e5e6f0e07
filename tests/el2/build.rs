include!("../../linker/build_support.rs");

fn main() {
    link_image(
        "../..",
        "hyp.ld",
        &["HOST_TEST_IMAGE", "QEMU_MEM_MIB", "HYP_LOG"],
    );
}
