//! Compiles the .proto files with protox (pure Rust: no protoc on the machine) and generates
//! tonic clients and servers. The descriptor set is kept for the HTTP gateway, which maps JSON
//! to protobuf by reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every .proto under protos/: adding a service is adding its file (and its module in
    // lib.rs, which fails to compile until the generated code exists).
    let mut files = Vec::new();
    for dir in std::fs::read_dir("protos")? {
        let dir = dir?.path();
        if dir.is_dir() {
            for f in std::fs::read_dir(&dir)? {
                let f = f?.path();
                if f.extension().is_some_and(|e| e == "proto") {
                    files.push(f.to_string_lossy().into_owned());
                }
            }
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed=protos");
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["protos"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
