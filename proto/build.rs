//! Compiles the .proto files with protox (pure Rust: no protoc on the machine) and generates
//! tonic clients and servers. The descriptor set is kept for the HTTP gateway, which maps JSON
//! to protobuf by reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "protos/store/store.proto",
        "protos/events/events.proto",
        "protos/broker/broker.proto",
        "protos/cluster/cluster.proto",
        "protos/raft/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["protos"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
