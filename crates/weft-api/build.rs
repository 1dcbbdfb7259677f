//! Compiles the protos with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["weft.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::WeftCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
