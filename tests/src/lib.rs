//! `micro-tests`: integration tests that run real `micro` processes on 127.0.0.1.
//!
//! [`TestCluster`] starts nodes with ports it found free, waits on conditions (a leader, an
//! applied index) instead of sleeping, and can kill -9, stop and restart members. Set
//! `MICRO_TEST_KEEP_DIR=1` to keep the data dirs and logs of a run for a post-mortem.
//!
//! Auth is on, as in production: each cluster gets its own CLI config dir (where its first
//! node writes the admin's credentials), and [`TestCluster::client`], [`TestCluster::cli`],
//! [`TestCluster::http`] and [`raw_unary`] act as that admin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// The `micro` binary built alongside the tests (`cargo build --bins` first).
pub fn micro_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/micro
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("micro");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` before the tests (scripts/test does)",
        bin.display()
    );
    bin
}

pub use micro_testkit::free_port;

/// Re-checks `check` every 25 ms until it yields a value, or fails naming `what` after
/// `timeout`. The one place tests wait for a condition.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_err = None;
    loop {
        tick.tick().await;
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }
}

/// Waits until the node `client` talks to knows a leader (after an election, say): what a
/// client whose write failed waits for before it tries again.
pub async fn leader_known(client: &micro::Client, timeout: Duration) -> anyhow::Result<()> {
    eventually("a known leader", timeout, || async {
        Ok(client
            .cluster_status()
            .await
            .ok()
            .filter(|s| s.leader != 0)
            .map(|_| ()))
    })
    .await
}

/// A steady beat for a workload that must act at a rate (heartbeats, keepalives, a slow
/// sender): the pace is part of what a test exercises, not a wait for a condition.
pub fn beat(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub peer: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

pub struct TestCluster {
    dir: Option<tempfile::TempDir>,
    pub specs: BTreeMap<u64, NodeSpec>,
    procs: BTreeMap<u64, Child>,
    /// How many times each node was spawned (each start logs "is up" once).
    spawns: BTreeMap<u64, usize>,
    pub token: String,
    initial_cluster: String,
    extra_args: Vec<String>,
    /// Environment variables for every `micro server` this cluster starts.
    env: Vec<(String, String)>,
    /// Per-node extra flags (e.g. `--join`), appended after the common ones.
    node_args: BTreeMap<u64, Vec<String>>,
    /// The CLI config dir of this cluster (MICRO_CONFIG_DIR of its servers and CLI runs).
    config_dir: PathBuf,
    /// The admin's access token, once fetched.
    admin: tokio::sync::OnceCell<String>,
}

pub use micro_testkit::auth::token_for;

/// An HTTP client sending the admin token of the cluster `addr` belongs to (anonymous if
/// none was fetched yet).
pub fn http_for(addr: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(v) = token_for(addr).and_then(|t| format!("Bearer {t}").parse().ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

impl TestCluster {
    /// Lays out `n` nodes (not started).
    pub fn new(n: u64) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("micro-test-")
            .tempdir()
            .expect("temp dir");
        let mut specs = BTreeMap::new();
        for id in 1..=n {
            let data_dir = dir.path().join(format!("node{id}"));
            specs.insert(
                id,
                NodeSpec {
                    id,
                    grpc: format!("127.0.0.1:{}", free_port()),
                    http: format!("127.0.0.1:{}", free_port()),
                    peer: format!("127.0.0.1:{}", free_port()),
                    log: dir.path().join(format!("node{id}.log")),
                    data_dir,
                },
            );
        }
        let initial_cluster = if n > 1 {
            specs
                .values()
                .map(|s| format!("{}={}", s.id, s.peer))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };
        TestCluster {
            specs,
            procs: BTreeMap::new(),
            spawns: BTreeMap::new(),
            token: "test-cluster-token".into(),
            initial_cluster,
            extra_args: Vec::new(),
            env: Vec::new(),
            node_args: BTreeMap::new(),
            config_dir: dir.path().join("config"),
            admin: tokio::sync::OnceCell::new(),
            dir: Some(dir),
        }
    }

    /// The CLI config dir this cluster's servers write the admin's credentials to.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// Uses `other`'s config dir (a cluster restored from `other`'s snapshot has `other`'s
    /// accounts, and writes no credentials of its own).
    pub fn share_credentials(&mut self, other: &TestCluster) {
        self.config_dir = other.config_dir.clone();
    }

    /// An access token of the cluster's admin (fetched once, valid for a day).
    pub async fn admin_token(&self) -> anyhow::Result<String> {
        self.admin
            .get_or_try_init(|| async {
                let grpc: Vec<(u64, String)> = self
                    .specs
                    .values()
                    .map(|s| (s.id, s.grpc.clone()))
                    .collect();
                let got =
                    micro_testkit::auth::login(&self.config_dir, &grpc, Duration::from_secs(60))
                        .await?;
                micro_testkit::auth::remember(
                    self.specs.values().map(|s| s.http.clone()),
                    &got.access_token,
                );
                // The CLI runs of the tests reuse it instead of each logging in again.
                let mut envs = micro::env::Envs::load(&self.config_dir)?;
                if let Some(e) = envs.envs.get_mut(envs.current_name().to_string().as_str()) {
                    e.access_token = Some(got.access_token.clone());
                    e.expiry = got.expiry;
                    e.refresh_token = Some(got.refresh_token.clone());
                    envs.save(&self.config_dir)?;
                }
                Ok::<_, anyhow::Error>(got.access_token)
            })
            .await
            .cloned()
    }

    /// An HTTP client sending the admin's token.
    pub async fn http(&self) -> anyhow::Result<reqwest::Client> {
        self.admin_token().await?;
        Ok(http_for(&self.spec(1).http))
    }

    /// Lays out `n` nodes where node 1 bootstraps alone and the others join it later
    /// (`spawn` gives them `--join` with node 1's peer address).
    pub fn growing(n: u64) -> TestCluster {
        let mut c = TestCluster::new(n);
        c.initial_cluster.clear();
        let seed = c.spec(1).peer.clone();
        for id in 2..=n {
            c.node_args.insert(id, vec!["--join".into(), seed.clone()]);
        }
        c
    }

    /// The `--initial-cluster` value of this layout ("" when node 1 bootstraps alone).
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// Sets per-node extra flags used by later `spawn`s of that node.
    pub fn set_node_args(&mut self, id: u64, args: &[&str]) {
        self.node_args
            .insert(id, args.iter().map(|s| s.to_string()).collect());
    }

    /// Extra flags for every `micro server` this cluster starts.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// An environment variable for every `micro server` this cluster starts.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The data dir root of this cluster's nodes.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// Starts `n` nodes and waits for a leader that every node agrees on.
    pub async fn start(n: u64) -> anyhow::Result<TestCluster> {
        let mut c = TestCluster::new(n);
        for id in 1..=n {
            c.spawn(id)?;
        }
        c.wait_leader(Duration::from_secs(10)).await?;
        c.admin_token().await?;
        Ok(c)
    }

    pub fn spec(&self, id: u64) -> &NodeSpec {
        &self.specs[&id]
    }

    /// The `micro server` command line of node `id`.
    pub fn server_command(&self, id: u64) -> Command {
        let s = self.spec(id);
        let mut cmd = Command::new(micro_bin());
        cmd.arg("server")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--grpc", &s.grpc, "--http", &s.http, "--peer", &s.peer])
            .args(["--cluster-token", &self.token])
            .args(&self.extra_args)
            .env("MICRO_LOG", "info,openraft=info")
            .env("MICRO_CONFIG_DIR", &self.config_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(extra) = self.node_args.get(&id) {
            cmd.args(extra);
        } else if !self.initial_cluster.is_empty() {
            cmd.args(["--initial-cluster", &self.initial_cluster]);
        }
        cmd
    }

    /// Starts node `id` in the background, appending its output to its log file.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let s = self.spec(id).clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        let child = self
            .server_command(id)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawn micro server")?;
        self.procs.insert(id, child);
        *self.spawns.entry(id).or_default() += 1;
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut c) = self.procs.remove(&id) {
            let sent = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            if !sent.success() {
                bail!("SIGTERM to node {id} failed");
            }
            let status = c.wait()?;
            if !status.success() {
                bail!(
                    "node {id} exited with {status} on SIGTERM; log:\n{}",
                    self.log(id)
                );
            }
        }
        Ok(())
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.spec(id).log).unwrap_or_default()
    }

    /// The OS process id of node `id`, while the harness runs it.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(Child::id)
    }

    /// Whether node `id` has exited by itself (the status), without waiting.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.procs
            .get_mut(&id)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Peak resident memory of node `id` so far (`VmHWM` of /proc/PID/status), in KiB.
    pub fn peak_rss_kib(&self, id: u64) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(id)?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn running(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// A client of node `id` acting as the admin, retrying while the node starts up.
    pub async fn client(&self, id: u64) -> anyhow::Result<micro::Client> {
        let token = self.admin_token().await?;
        self.client_as(id, micro::Credentials::Token(token)).await
    }

    /// A client of node `id` with other credentials (anonymous: `Credentials::None`).
    pub async fn client_as(
        &self,
        id: u64,
        creds: micro::Credentials,
    ) -> anyhow::Result<micro::Client> {
        let addr = self.spec(id).grpc.clone();
        eventually(
            &format!("node {id} to accept connections"),
            Duration::from_secs(15),
            || async {
                Ok(micro::Client::builder(&addr)
                    .credentials(creds.clone())
                    .connect()
                    .await
                    .ok())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", self.log(id)))
    }

    /// Polls cluster status until every running node names the same leader.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let token = micro::Credentials::Token(self.admin_token().await?);
        let res = eventually("an agreed leader", timeout, || async {
            let mut leaders = Vec::new();
            for id in self.running() {
                let c = micro::Client::builder(&self.spec(id).grpc)
                    .credentials(token.clone())
                    .connect()
                    .await;
                if let Ok(c) = c {
                    if let Ok(s) = c.cluster_status().await {
                        leaders.push(s.leader);
                    }
                }
            }
            // Each running node's own process must be up (its log says so once per start):
            // else an answer on its port could come from some other process's node.
            let own = self.running().iter().all(|id| {
                self.log(*id).matches(" is up: grpc ").count()
                    >= self.spawns.get(id).copied().unwrap_or(0)
            });
            let agreed = own
                && leaders.len() == self.running().len()
                && leaders
                    .first()
                    .is_some_and(|l| *l != 0 && self.procs.contains_key(l))
                && leaders.iter().all(|l| *l == leaders[0]);
            Ok(agreed.then(|| leaders[0]))
        })
        .await;
        res.map_err(|e| {
            let logs: Vec<String> = self
                .running()
                .iter()
                .map(|i| format!("--- node {i}\n{}", self.log(*i)))
                .collect();
            anyhow::anyhow!("{e}; logs:\n{}", logs.join("\n"))
        })
    }

    /// This node's own applied index.
    pub async fn applied(&self, id: u64) -> anyhow::Result<u64> {
        let s = self.client(id).await?.cluster_status().await?;
        s.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.applied_index)
            .context("node missing from its own status")
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> anyhow::Result<()> {
        for id in self.running() {
            eventually(&format!("node {id} to apply {index}"), timeout, || async {
                Ok((self.applied(id).await.unwrap_or(0) >= index).then_some(()))
            })
            .await?;
        }
        Ok(())
    }

    /// A `micro` command acting as this cluster's admin (its CLI config dir, no credentials
    /// from the test's environment).
    pub fn micro(&self) -> Command {
        let mut cmd = Command::new(micro_bin());
        cmd.env("MICRO_CONFIG_DIR", &self.config_dir)
            .env_remove("MICRO_AUTH_TOKEN")
            .env_remove("MICRO_AUTH_ID")
            .env_remove("MICRO_AUTH_SECRET");
        cmd
    }

    /// Runs a `micro` client command against node `id`; returns (success, stdout, stderr).
    pub fn cli(&self, id: u64, args: &[&str]) -> (bool, String, String) {
        let out = self
            .micro()
            .args(["--server", &self.spec(id).grpc])
            .args(args)
            .output()
            .expect("run micro");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::env::var_os("MICRO_TEST_KEEP_DIR").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping test data in {}", d.keep().display());
            }
        }
    }
}

/// A gRPC codec that passes encoded messages through, for calls the typed clients cannot make
/// (raw bytes, two message types on one stream, methods that do not exist).
pub use micro::reflection::RawCodec;

/// A unary call of `path` (`/package.Service/Method`) on node `addr` with raw request bytes,
/// as the admin of the node's cluster (once its token was fetched).
pub async fn raw_unary(
    addr: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<bytes::Bytes, tonic::Status> {
    raw_unary_as(addr, path, body, token_for(addr).as_deref()).await
}

/// [`raw_unary`] with a chosen bearer token (None: anonymous).
pub async fn raw_unary_as(
    addr: &str,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<bytes::Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery = path
        .parse()
        .map_err(|e| tonic::Status::internal(format!("{path}: {e}")))?;
    let mut req = tonic::Request::new(body.into());
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::internal("token is not ASCII"))?,
        );
    }
    Ok(grpc.unary(req, path, RawCodec).await?.into_inner())
}

/// A client's view of a .proto file it was given as text: compiled at run time (protox), so a
/// test can speak a stranger's protocol (e.g. Micro v3's own protos) with no generated code of
/// this project.
pub struct ForeignProto {
    pool: prost_reflect::DescriptorPool,
}

impl ForeignProto {
    /// Compiles `text` as a file named `file`.
    pub fn compile(file: &str, text: &str) -> anyhow::Result<ForeignProto> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(file), text)?;
        let fds = protox::compile([file], [dir.path()])?;
        Ok(ForeignProto {
            pool: prost_reflect::DescriptorPool::from_file_descriptor_set(fds)?,
        })
    }

    fn desc(&self, name: &str) -> anyhow::Result<prost_reflect::MessageDescriptor> {
        self.pool
            .get_message_by_name(name)
            .ok_or_else(|| anyhow::anyhow!("no message {name}"))
    }

    /// Message `name` from its JSON (proto3 mapping), encoded.
    pub fn encode(&self, name: &str, json: serde_json::Value) -> anyhow::Result<Vec<u8>> {
        use prost::Message;
        Ok(prost_reflect::DynamicMessage::deserialize(self.desc(name)?, json)?.encode_to_vec())
    }

    /// Message `name` decoded from `bytes`, as JSON.
    pub fn decode(&self, name: &str, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(
            prost_reflect::DynamicMessage::decode(self.desc(name)?, bytes)?,
        )?)
    }
}
