//! Compiles proto/greeter.proto with protox (pure Rust: no protoc needed) into tonic code,
//! and keeps the descriptor set: the service registers its endpoints from it and serves it
//! by gRPC reflection, so the gateway and the CLI can speak JSON to it.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/greeter.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("greeter.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
