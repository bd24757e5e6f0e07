include!("../linker/build_support.rs");

fn main() {
    link_image("..", "hyp.ld", &["HOST_IMAGE", "HYP_LOG", "FAULT_PAD"]);
}
