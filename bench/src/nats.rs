//! A 3-node NATS JetStream cluster on 127.0.0.1, in a temp dir removed on drop, for
//! `micro-bench streams`.
//!
//! Debian 12's nats-server is 2.9.10. JetStream's `sync_interval` option (`always`: fsync every
//! message before the ack) arrived in 2.10.0, and 2.9.10 refuses a config that names it, so the
//! cluster runs with 2.9.10's defaults: a publish is acknowledged once a quorum of the stream's
//! Raft group has written it (to the OS page cache); stream blocks are fsynced every 60 s and
//! the Raft WAL every 5 minutes. [`supports_sync_always`] asks the binary, and the cluster sets
//! `sync_interval: always` whenever it is accepted (a newer nats-server via `--nats-bin`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::time::{sleep, Instant};

use crate::cluster::{nodes_check_running, nodes_log_tails, Node, NODES};
use crate::procs::{free_ports, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the JetStream cluster makes a publish durable before acking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// `sync_interval: always`: fsync before every ack (nats-server >= 2.10).
    SyncAlways,
    /// The server's default: acked once in a quorum's page cache, fsynced in the background.
    Default,
}

impl Durability {
    pub fn describe(self) -> &'static str {
        match self {
            Durability::SyncAlways => "`sync_interval: always` (fsync before every ack)",
            Durability::Default => {
                "nats-server defaults: acked once a quorum has written the message to the OS page \
                 cache, no fsync before the ack (2.9.10: stream files fsynced every 60 s, Raft WAL \
                 every 5 min); `sync_interval` does not exist before 2.10.0"
            }
        }
    }
}

/// The config file of node `i` (0-based): client and cluster listeners on 127.0.0.1, JetStream
/// with file storage in `store_dir`, routes to every other node.
pub fn node_config(
    i: usize,
    client_ports: &[u16],
    cluster_ports: &[u16],
    store_dir: &Path,
    durability: Durability,
) -> String {
    let routes: Vec<String> = cluster_ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| format!("    \"nats-route://127.0.0.1:{p}\""))
        .collect();
    let sync = match durability {
        Durability::SyncAlways => "  sync_interval: always\n",
        Durability::Default => "",
    };
    format!(
        "server_name: \"n{n}\"\n\
         listen: \"127.0.0.1:{client}\"\n\
         jetstream {{\n  store_dir: {store:?}\n{sync}}}\n\
         cluster {{\n  name: \"micro-bench\"\n  listen: \"127.0.0.1:{cluster}\"\n  routes: [\n{routes}\n  ]\n}}\n",
        n = i + 1,
        client = client_ports[i],
        store = store_dir.display().to_string(),
        cluster = cluster_ports[i],
        routes = routes.join("\n"),
    )
}

/// Whether `bin` accepts `sync_interval: always` (checks a config with `nats-server -t`).
pub fn supports_sync_always(bin: &Path) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("probe.conf");
    let ports = [4222, 6222];
    std::fs::write(
        &conf,
        node_config(
            0,
            &ports[..1],
            &ports[1..],
            &dir.path().join("js"),
            Durability::SyncAlways,
        ),
    )?;
    let out = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .output()
        .with_context(|| format!("run {} -t", bin.display()))?;
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        return Ok(true);
    }
    if text.contains("sync_interval") {
        return Ok(false);
    }
    bail!(
        "{} -t rejected the probe config: {}",
        bin.display(),
        text.trim()
    )
}

/// A running JetStream cluster. Fields drop in order: the nodes are killed before their dir goes.
pub struct JsCluster {
    pub nodes: Vec<Node>,
    pub durability: Durability,
    _dir: tempfile::TempDir,
}

impl JsCluster {
    /// Starts 3 nodes and waits until every one answers JetStream API requests (a meta leader
    /// is elected and every server knows it).
    pub async fn start(bin: &Path, root: &Path) -> anyhow::Result<JsCluster> {
        let durability = if supports_sync_always(bin)? {
            Durability::SyncAlways
        } else {
            Durability::Default
        };
        let dir = tempfile::Builder::new()
            .prefix("micro-bench-nats-")
            .tempdir_in(root)?;
        let ports = free_ports(2 * NODES)?;
        let (client_ports, cluster_ports) = ports.split_at(NODES);
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let data_dir = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                node_config(i, client_ports, cluster_ports, &data_dir, durability),
            )?;
            let log = dir.path().join(format!("{name}.log"));
            let args = vec!["-c".to_string(), conf.display().to_string()];
            let proc = Proc::spawn(&format!("nats-server {name}"), bin, &args, &[], &log)?;
            nodes.push(Node {
                addr: format!("127.0.0.1:{}", client_ports[i]),
                http: None,
                data_dir,
                proc,
            });
        }
        let mut c = JsCluster {
            nodes,
            durability,
            _dir: dir,
        };
        c.wait_ready().await?;
        Ok(c)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            nodes_check_running(&mut self.nodes)?;
            let mut ready = 0;
            let mut last_err = String::new();
            for n in &self.nodes {
                match account_info(&n.addr).await {
                    Ok(()) => ready += 1,
                    Err(e) => last_err = format!("{e:#}"),
                }
            }
            if ready == NODES {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "JetStream: not ready within {READY_TIMEOUT:?} ({ready} of {NODES} nodes answer; last error: {last_err}); {}",
                    nodes_log_tails(&self.nodes)
                );
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates (or recreates empty) the R3 file-storage stream `name` on `subject`, retrying
    /// while the cluster still places its peers.
    pub async fn create_stream(&mut self, name: &str, subject: &str) -> anyhow::Result<()> {
        let js = jetstream_at(&self.nodes[0].addr).await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let _ = js.delete_stream(name).await;
        loop {
            let config = stream::Config {
                name: name.to_string(),
                subjects: vec![subject.to_string()],
                storage: stream::StorageType::File,
                num_replicas: NODES,
                retention: stream::RetentionPolicy::Limits,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    nodes_check_running(&mut self.nodes)?;
                    eprintln!("jetstream: create stream {name}: {e}; retrying");
                    sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!("create stream {name}: {e}"))
                        .context(nodes_log_tails(&self.nodes))
                }
            }
        }
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        nodes_check_running(&mut self.nodes)
    }

    /// The client address of the node that worker `i` talks to.
    pub fn addr_for_worker(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len()].addr
    }
}

/// `Ok` when the node at `addr` answers JetStream's account info request without an error
/// (the meta leader is known). Raw JSON, not the client's typed call: async-nats 0.46 expects
/// fields nats-server 2.9 does not send.
async fn account_info(addr: &str) -> anyhow::Result<()> {
    let client = connect(addr).await?;
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        client.request("$JS.API.INFO", Bytes::new()),
    )
    .await
    .with_context(|| format!("{addr}: JetStream account info timed out"))?
    .with_context(|| format!("{addr}: JetStream account info"))?;
    api_ok(&reply.payload).with_context(|| format!("{addr}: JetStream account info"))
}

/// `Ok` unless a JetStream API reply is not JSON or carries an `error`.
pub fn api_ok(payload: &[u8]) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_slice(payload).context("reply is not JSON")?;
    if let Some(e) = v.get("error") {
        bail!("{e}");
    }
    Ok(())
}

async fn connect(addr: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(format!("nats://{addr}"))
        .await
        .with_context(|| format!("connect to nats-server at {addr}"))
}

/// A new NATS connection to `addr` and a JetStream context on it.
pub async fn jetstream_at(addr: &str) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(connect(addr).await?))
}

/// First line of `nats-server --version` (`nats-server: v2.9.10`), version only.
pub fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim().trim_start_matches("nats-server: ").to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Where nats-server is: `--nats-bin`, else on PATH or in /usr/sbin (Debian's package puts it
/// there, which is not on every user's PATH).
pub fn find_nats() -> Option<PathBuf> {
    crate::procs::find_on_path("nats-server").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nats-server");
        p.is_file().then_some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_routes_to_the_other_nodes_only() {
        let c = node_config(
            1,
            &[4001, 4002, 4003],
            &[6001, 6002, 6003],
            Path::new("/tmp/x/n2"),
            Durability::Default,
        );
        assert!(c.contains("server_name: \"n2\"\n"), "{c}");
        assert!(c.contains("listen: \"127.0.0.1:4002\"\n"));
        assert!(c.contains("listen: \"127.0.0.1:6002\"\n"));
        assert!(c.contains("store_dir: \"/tmp/x/n2\"\n"));
        assert!(
            c.contains("nats-route://127.0.0.1:6001") && c.contains("nats-route://127.0.0.1:6003")
        );
        assert!(!c.contains("nats-route://127.0.0.1:6002"));
        assert!(!c.contains("sync_interval"));
        let always = node_config(
            0,
            &[4001, 4002, 4003],
            &[6001, 6002, 6003],
            Path::new("/tmp/x/n1"),
            Durability::SyncAlways,
        );
        assert!(always.contains("  sync_interval: always\n"));
        assert_eq!(always.matches('{').count(), always.matches('}').count());
    }

    #[test]
    fn api_replies() {
        api_ok(br#"{"type":"io.nats.jetstream.api.v1.account_info_response","memory":0}"#).unwrap();
        let e =
            api_ok(br#"{"type":"x","error":{"code":503,"description":"JetStream not enabled"}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("not enabled"), "{e}");
        assert!(api_ok(b"nope").is_err());
    }

    /// Asks an installed nats-server (`-t` only tests the config; no server starts). Skipped
    /// where nats-server is not installed, as in CI.
    #[test]
    fn sync_always_probe_matches_the_version() {
        let Some(bin) = find_nats() else {
            eprintln!("nats-server not installed: skipped");
            return;
        };
        let v = version_of(&bin);
        let supported = supports_sync_always(&bin).unwrap();
        let mut parts = v
            .trim_start_matches('v')
            .split('.')
            .map(|p| p.parse::<u32>());
        if let (Some(Ok(2)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            assert_eq!(supported, minor >= 10, "{v}");
        }
    }
}
