//! The runtime behind `micro run`: what should run is replicated state (`views::runtime`);
//! every node runs a [`supervisor`] for the instances placed on it and the leader runs the
//! [`placer`] that decides where instances go. Logs stay on the node that runs an instance
//! ([`logs`]) and are read through any node (`grpc::runtime`).

pub mod logs;
pub mod placer;
pub mod supervisor;

use std::path::PathBuf;
use std::time::Duration;

use micro_cluster::Node;

/// How a node runs services.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where builds' notes and instance logs live (`<data>/runtime`).
    pub dir: PathBuf,
    /// Cargo profile for building sources: `release` (default), `dev`, or a custom one.
    pub profile: String,
    /// How long a node may be unreachable before the leader moves its instances.
    pub grace: Duration,
    /// How long an instance has to exit after SIGTERM before it gets SIGKILL.
    pub stop_grace: Duration,
    /// Size bound of one instance log file (two files are kept).
    pub log_bytes: u64,
}

impl Config {
    pub fn new(data_dir: &std::path::Path) -> Config {
        Config {
            dir: data_dir.join("runtime"),
            profile: "release".into(),
            grace: Duration::from_secs(15),
            stop_grace: Duration::from_secs(10),
            log_bytes: 1024 * 1024,
        }
    }
}

/// The registry node id an instance registers with (`MICRO_SERVICE_NODE_ID`): one per
/// service, node and instance, so its supervisor (or the leader, when the node died) can
/// deregister it when the process cannot.
pub fn instance_id(name: &str, node: u64, index: u32) -> String {
    format!("{name}-n{node}-i{index}")
}

/// Removes registry node `id` from every service of namespace `ns` that has it: for an
/// instance that died without deregistering (crash, SIGKILL, its node died), so calls stop
/// going to it now rather than when its TTL runs out.
pub async fn deregister(node: &Node, ns: &str, id: &str) {
    use micro_state::views::registry as reg;
    let found = match reg::list(node.view(), ns, None) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("runtime: cannot read the registry: {e}");
            return;
        }
    };
    for (domain, svc) in found {
        if !svc.nodes.contains_key(id) {
            continue;
        }
        let cmd = reg::Cmd::Deregister {
            domain,
            name: svc.name.clone(),
            version: svc.version.clone(),
            nodes: vec![id.to_string()],
        };
        match node.run::<reg::Registry>(cmd).await {
            Ok(_) => {
                tracing::info!(service = %svc.name, node = %id, "runtime: deregistered a dead instance")
            }
            Err(e) => {
                tracing::warn!(service = %svc.name, node = %id, "runtime: cannot deregister a dead instance: {e}")
            }
        }
    }
}

/// The runtime of one node: its supervisor, its share of placement, its logs.
#[derive(Clone)]
pub struct Runtime {
    pub node: Node,
    pub logs: logs::LogDir,
}

impl Runtime {
    /// Starts the supervisor and the placer; `server` is the gRPC address instances use
    /// (`MICRO_SERVER`). The supervisor stops its instances when `stop` turns true (or the
    /// node stops); the returned task ends when they have.
    pub fn start(
        node: Node,
        cfg: Config,
        server: String,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> (Runtime, tokio::task::JoinHandle<()>) {
        let logs = logs::LogDir::new(cfg.dir.join("logs"), cfg.log_bytes);
        let rt = Runtime {
            node: node.clone(),
            logs: logs.clone(),
        };
        tokio::spawn(placer::run(node.clone(), cfg.grace));
        let done = tokio::spawn(supervisor::run(node, cfg, logs, server, stop));
        (rt, done)
    }
}
