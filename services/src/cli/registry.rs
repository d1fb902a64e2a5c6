//! `micro services` and `micro registry`: the service registry.

use micro::proto::registry as rpb;
use prost::Message;

use super::*;

#[derive(Subcommand)]
pub(super) enum RegistryCmd {
    /// Every version of a service, with its nodes and endpoints
    Get { name: String },
    /// Register a service from a JSON file (Micro's registry.Service; "-" reads stdin)
    Register {
        file: PathBuf,
        /// Seconds the nodes stay registered unless registered again (0: forever)
        #[arg(long, default_value_t = 0)]
        ttl: i64,
    },
    /// Remove a service's nodes (every version, or only --version)
    Deregister {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Print every registry change (of one service with NAME), one per line
    Watch {
        name: Option<String>,
        /// Replay changes from this revision first (default: changes after now)
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Stop after this many changes
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

/// `--domain`, shared by the registry commands.
#[derive(Args, Clone)]
pub(super) struct Domain {
    /// Domain (namespace); default "micro", "*" reads every domain
    #[arg(long, global = true, default_value = "")]
    domain: String,
}

/// A registry message as JSON, in the proto3 JSON mapping (what the HTTP gateway speaks).
pub(super) fn proto_json<M: Message>(msg: &M, full_name: &str) -> anyhow::Result<Value> {
    proto_json_with(msg, full_name, &prost_reflect::SerializeOptions::new())
}

/// As [`proto_json`], with every field, zeros included (an instance 0 on node 0 says so,
/// rather than leaving scripts to know proto3's defaults).
pub(super) fn proto_json_full<M: Message>(msg: &M, full_name: &str) -> anyhow::Result<Value> {
    let opts = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    proto_json_with(msg, full_name, &opts)
}

fn proto_json_with<M: Message>(
    msg: &M,
    full_name: &str,
    opts: &prost_reflect::SerializeOptions,
) -> anyhow::Result<Value> {
    let pool = prost_reflect::DescriptorPool::decode(micro::proto::FILE_DESCRIPTOR_SET)?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| anyhow::anyhow!("no message {full_name}"))?;
    let dynamic = prost_reflect::DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())?;
    Ok(dynamic.serialize_with_options(serde_json::value::Serializer, opts)?)
}

/// A `registry.Service` from its JSON (proto3 JSON mapping, as `micro registry get -o json`
/// prints it).
fn service_from_json(text: &str) -> anyhow::Result<rpb::Service> {
    let pool = prost_reflect::DescriptorPool::decode(micro::proto::FILE_DESCRIPTOR_SET)?;
    let desc = pool
        .get_message_by_name("registry.Service")
        .ok_or_else(|| anyhow::anyhow!("no message registry.Service"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic = prost_reflect::DynamicMessage::deserialize(desc, &mut de)
        .map_err(|e| anyhow::anyhow!("not a registry.Service: {e}"))?;
    Ok(rpb::Service::decode(dynamic.encode_to_vec().as_slice())?)
}

pub(super) fn print_services(services: &[rpb::Service], out: Output) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            let all = services
                .iter()
                .map(|s| proto_json(s, "registry.Service"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print_json(&Value::Array(all));
        }
        Output::Table => {
            for s in services {
                println!("service  {}", s.name);
                println!("version  {}", s.version);
                let mut t = table(&["id", "address", "port", "metadata"]);
                for n in &s.nodes {
                    let meta: Vec<String> =
                        n.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    t.add_row(vec![
                        n.id.clone(),
                        n.address.clone(),
                        n.port.to_string(),
                        meta.join(","),
                    ]);
                }
                println!("{t}");
                for e in &s.endpoints {
                    println!("endpoint {}", e.name);
                }
                println!();
            }
        }
    }
    Ok(())
}

/// `micro services`: the names of every registered service.
pub(super) async fn services(
    server: &Target,
    out: Output,
    domain: Domain,
) -> anyhow::Result<ExitCode> {
    let reg = server.connect().await?.registry().domain(&domain.domain);
    let mut names: Vec<String> = reg.list().await?.into_iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    match out {
        Output::Json => print_json(&json!(names)),
        Output::Table => names.iter().for_each(|n| println!("{n}")),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn registry(
    server: &Target,
    out: Output,
    domain: Domain,
    cmd: RegistryCmd,
) -> anyhow::Result<ExitCode> {
    let reg = server.connect().await?.registry().domain(&domain.domain);
    match cmd {
        RegistryCmd::Get { name } => match reg.get(&name).await {
            Ok(services) => print_services(&services, out)?,
            Err(e) if e.is_not_found() => {
                eprintln!("service {name:?} not found (see `micro services`)");
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e.into()),
        },
        RegistryCmd::Register { file, ttl } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
            };
            let svc = service_from_json(&text)?;
            let name = svc.name.clone();
            reg.register(svc, ttl).await?;
            match out {
                Output::Json => print_json(&json!({"name": name, "registered": true})),
                Output::Table => println!("registered {name}"),
            }
        }
        RegistryCmd::Deregister { name, version } => {
            let services = reg.get(&name).await?;
            let mut n = 0;
            for s in services {
                if version.as_ref().is_some_and(|v| *v != s.version) {
                    continue;
                }
                n += s.nodes.len();
                reg.deregister(s).await?;
            }
            match out {
                Output::Json => print_json(&json!({"name": name, "nodes": n})),
                Output::Table => println!("deregistered {n} nodes of {name}"),
            }
        }
        RegistryCmd::Watch {
            name,
            from_revision,
            limit,
        } => {
            let mut w = reg.watch(name.as_deref(), from_revision).await?;
            let mut seen = 0;
            while let Some(r) = w.next().await? {
                let svc = r.service.clone().unwrap_or_default();
                match out {
                    Output::Json => {
                        let mut v = proto_json(&r, "registry.Result")?;
                        v["revision"] = json!(r.revision);
                        println!("{v}");
                    }
                    Output::Table => {
                        let nodes: Vec<&str> = svc.nodes.iter().map(|n| n.id.as_str()).collect();
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            r.revision,
                            r.action,
                            svc.name,
                            svc.version,
                            nodes.join(",")
                        );
                    }
                }
                seen += 1;
                if limit > 0 && seen >= limit {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
