//! The release image links the proxy in the order `configs/images/weft-proxy.order` gives
//! (`configs/images/build-proxy.sh` passes it to the linker): a new order must relink the binary.

fn main() {
    println!("cargo:rerun-if-changed=../../configs/images/weft-proxy.order");
}
