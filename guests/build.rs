include!("../linker/build_support.rs");

fn main() {
    link_image("..", "guest.ld", &[]);
}
