//! `micro new NAME`: a service crate that builds, registers and passes its own test against
//! a running node — Micro v3's `micro new`, for Rust.

use super::*;
use crate::gateway::camel;

#[derive(Args)]
pub(super) struct NewArgs {
    /// The service's name (lowercase letters, digits and `_`; also its crate and proto package)
    name: String,
    /// Where to create it (default: ./NAME)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Path of Micro's Rust SDK (the `sdk/` folder of Micro's source); default: the one this
    /// binary was built from, if it is still there, else the published `micro` crate
    #[arg(long)]
    sdk: Option<PathBuf>,
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_');
    // Names Micro's own services or Rust's keywords own.
    let taken = micro_proto::PUBLIC_PACKAGES.contains(&name)
        || [
            "raft", "grpc", "micro", "test", "self", "super", "crate", "mod", "fn",
        ]
        .contains(&name);
    if !ok {
        anyhow::bail!(
            "{name:?} is not a service name: use lowercase letters, digits and '_', starting with a letter (e.g. greeter, order_history)"
        );
    }
    if taken {
        anyhow::bail!("{name:?} is taken by Micro or Rust; pick another name");
    }
    Ok(())
}

const CARGO_TOML: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
{{micro}}
tonic = "0.14"
tonic-prost = "0.14"
prost = "0.14"
tokio = { version = "1", features = ["full"] }

[build-dependencies]
protox = "0.10"
tonic-prost-build = "0.14"
prost = "0.14"

# Dependencies are built once, optimised; your own code stays quick to rebuild.
[profile.dev.package."*"]
opt-level = 1
debug = false

# A crate of its own, even when created inside another workspace.
[workspace]
"#;

const BUILD_RS: &str = r#"//! Compiles proto/{{name}}.proto with protox (pure Rust: no protoc needed) into tonic code,
//! and keeps the descriptor set: the service registers its endpoints from it and serves it
//! by gRPC reflection, so Micro's gateway and CLI can speak JSON to it.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/{{name}}.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("{{name}}.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
"#;

const PROTO: &str = r#"syntax = "proto3";

// The package is the service's registered name: Micro routes `/{{name}}.{{Name}}/Call`
// to the service `{{name}}`, endpoint `{{Name}}.Call`.
package {{name}};

service {{Name}} {
  rpc Call(CallRequest) returns (CallResponse) {}
}

message CallRequest {
  string name = 1;
}

message CallResponse {
  string msg = 1;
}
"#;

const LIB_RS: &str = r#"//! The {{name}} service: its handler, and the service that serves it.

use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("{{name}}");
    /// The compiled proto, registered with Micro and served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/{{name}}.bin"));
}

/// Answers `{{Name}}.Call`.
#[derive(Default)]
pub struct Handler;

#[tonic::async_trait]
impl pb::{{name}}_server::{{Name}} for Handler {
    async fn call(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        // Who is calling, as the node passed it on (the node checked the token).
        let _caller = micro::Context::of(&req).account();
        let name = req.into_inner().name;
        Ok(Response::new(pb::CallResponse {
            msg: format!("Hello {name}"),
        }))
    }
}

/// The service, ready to run: registered as `{{name}}`.
pub fn service() -> micro::Service {
    micro::Service::new("{{name}}")
        .descriptors(pb::FILE_DESCRIPTOR_SET)
        .add_service(pb::{{name}}_server::{{Name}}Server::new(Handler))
}
"#;

const MAIN_RS: &str = r#"//! Runs the {{name}} service until SIGINT or SIGTERM. It finds the node as the `micro` CLI
//! does (MICRO_SERVER, else the CLI's env, else 127.0.0.1:8081) and logs in with the CLI's
//! credentials or MICRO_AUTH_ID / MICRO_AUTH_SECRET.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match {{name}}::service().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{{name}}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
"#;

const TEST_RS: &str = r#"//! Runs the service against the node the `micro` CLI uses (start one with `micro server`)
//! and calls it the way other services would: found through the registry.

#[tokio::test]
async fn call_answers_through_the_registry() {
    let client = micro::Client::from_env()
        .await
        .expect("a running Micro node (start one with `micro server`)");
    let mut running = {{name}}::service()
        .client(client.clone())
        .start()
        .await
        .expect("the service starts and registers");
    let resp: {{name}}::pb::CallResponse = client
        .services()
        .call(
            "{{name}}",
            "{{Name}}.Call",
            {{name}}::pb::CallRequest {
                name: "John".into(),
            },
        )
        .await
        .expect("the call");
    assert_eq!(resp.msg, "Hello John");
    running.stop().await.expect("it stops cleanly");
}
"#;

const README: &str = r#"# {{name}}

A Micro service, made by `micro new {{name}}`.

```sh
micro server                 # a node, if none is running (another terminal)
cargo run                    # serves and registers `{{name}}`
micro {{name}} call --name John
micro call {{name}} {{Name}}.Call '{"name":"John"}'
curl -H "Authorization: Bearer $(micro auth token)" 'localhost:8080/{{name}}/call?name=John'
cargo test                   # runs the service against the node and calls it
```

- `proto/{{name}}.proto`: the API; `build.rs` compiles it (no protoc needed).
- `src/lib.rs`: the handler and the service; `src/main.rs` runs it.
- The service finds the node as the CLI does (`MICRO_SERVER`, else the CLI's env, else
  127.0.0.1:8081) and logs in with the CLI's credentials or `MICRO_AUTH_ID`/`MICRO_AUTH_SECRET`.
- It registers with a TTL of 90 s, refreshed every 30 s (`MICRO_REGISTER_TTL`,
  `MICRO_REGISTER_INTERVAL`), and deregisters on SIGINT/SIGTERM.
"#;

fn render(template: &str, name: &str, micro: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{Name}}", &camel(name))
        .replace("{{micro}}", micro)
}

pub(super) fn new(out: Output, args: NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "{} exists and is not empty; pick another --dir",
            dir.display()
        );
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let sdk = args
        .sdk
        .or_else(|| built_from.join("Cargo.toml").exists().then_some(built_from));
    let micro = match sdk {
        Some(p) => {
            let p = p
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("--sdk {}: {e}", p.display()))?;
            if !p.join("Cargo.toml").exists() {
                anyhow::bail!("--sdk {}: no Cargo.toml there", p.display());
            }
            format!("micro = {{ path = {:?} }}", p.display().to_string())
        }
        None => "micro = \"0.1\"".to_string(),
    };
    let files = [
        ("Cargo.toml", CARGO_TOML),
        ("build.rs", BUILD_RS),
        (&format!("proto/{}.proto", args.name) as &str, PROTO),
        ("src/lib.rs", LIB_RS),
        ("src/main.rs", MAIN_RS),
        ("tests/call.rs", TEST_RS),
        ("README.md", README),
        (".gitignore", "/target\n"),
    ];
    let mut written = Vec::new();
    for (path, template) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, render(template, &args.name, &micro))?;
        written.push(file.display().to_string());
    }
    match out {
        Output::Json => print_json(&json!({ "dir": dir.display().to_string(), "files": written })),
        Output::Table => {
            for f in &written {
                println!("created {f}");
            }
            println!(
                "\nNext: cd {} && cargo run   (with `micro server` running), then `micro {} call --name John`",
                dir.display(),
                args.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(camel("order_history"), "OrderHistory");
        assert!(check_name("greeter").is_ok());
        assert!(check_name("order_history2").is_ok());
        for bad in ["", "Greeter", "2fast", "a-b", "store", "a_", "x y"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
