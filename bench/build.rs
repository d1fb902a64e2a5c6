//! Generates the etcd v3 client (the subset in proto/etcd/kv.proto) with protox, as proto/ does
//! for Micro's own protos: pure Rust, no `protoc` on the machine. (The `etcd-client` crate would
//! need `protoc` at build time, which neither the developers' machines nor CI have.)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["etcd/kv.proto", "etcd/v3lock.proto"];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
