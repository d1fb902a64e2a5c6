//! The `micro server` processes under test: start, SIGKILL, SIGSTOP/SIGCONT, restart. Every
//! process started here is killed when the [`Cluster`] is dropped (including on panic).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::proxy::Net;

pub const TOKEN: &str = "jepsen-token-123";

pub use micro_testkit::free_port;

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub peer: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Killed,
}

pub struct Cluster {
    bin: PathBuf,
    pub specs: BTreeMap<u64, NodeSpec>,
    procs: BTreeMap<u64, Child>,
    paused: std::collections::BTreeSet<u64>,
    initial_cluster: String,
    planted_bug: bool,
    /// `--peer-routes` of each node (through the proxies).
    routes: BTreeMap<u64, String>,
    /// Unexpected exits seen (node, status).
    pub crashes: Vec<(u64, String)>,
    /// Nodes that rejoined with an empty data dir: they start with `--join <this peer
    /// address>` instead of `--initial-cluster` from then on.
    joined: BTreeMap<u64, String>,
    /// More `micro server` arguments for every node (e.g. `--snapshot-every 500`).
    pub extra_args: Vec<String>,
    /// `MICRO_PLANTED_BUG_GROUPS` for every node (debug builds of micro only).
    pub planted_groups_bug: Option<String>,
    /// `MICRO_PLANTED_BUG_FENCE=1` for every node (debug builds of micro only).
    pub planted_fence_bug: bool,
    /// The CLI config dir of the servers: where the first admin's credentials land.
    pub config_dir: PathBuf,
}

impl Cluster {
    /// Lays out `n` nodes with data dirs under `data` and logs under `logs`.
    pub fn new(bin: &Path, n: u64, data: &Path, logs: &Path, planted_bug: bool) -> Cluster {
        let mut specs = BTreeMap::new();
        for id in 1..=n {
            specs.insert(
                id,
                NodeSpec {
                    id,
                    grpc: format!("127.0.0.1:{}", free_port()),
                    http: format!("127.0.0.1:{}", free_port()),
                    peer: format!("127.0.0.1:{}", free_port()),
                    data_dir: data.join(format!("n{id}")),
                    log: logs.join(format!("n{id}.log")),
                },
            );
        }
        let initial_cluster = specs
            .values()
            .map(|s| format!("{}={}", s.id, s.peer))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            bin: bin.to_path_buf(),
            specs,
            procs: BTreeMap::new(),
            paused: Default::default(),
            initial_cluster,
            planted_bug,
            routes: BTreeMap::new(),
            crashes: Vec::new(),
            joined: BTreeMap::new(),
            extra_args: Vec::new(),
            planted_groups_bug: None,
            planted_fence_bug: false,
            config_dir: data.join("config"),
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.specs.keys().copied().collect()
    }

    /// Routes every peer link through `net`'s proxies.
    pub fn route_through(&mut self, net: &Net) {
        for &i in self.specs.keys() {
            let r: Vec<String> = self
                .specs
                .values()
                .filter(|s| s.id != i)
                .map(|s| format!("{}=127.0.0.1:{}", s.peer, net.port(i, s.id)))
                .collect();
            self.routes.insert(i, r.join(","));
        }
    }

    /// Starts node `id` (again, with the same data dir), appending to its log.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let s = self.specs[&id].clone();
        std::fs::create_dir_all(&s.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--grpc", &s.grpc, "--http", &s.http, "--peer", &s.peer])
            .args(["--cluster-token", TOKEN])
            .args(&self.extra_args)
            .env("MICRO_LOG", "info")
            .env("MICRO_CONFIG_DIR", &self.config_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        match self.joined.get(&id) {
            Some(seed) => cmd.args(["--join", seed]),
            None => cmd.args(["--initial-cluster", &self.initial_cluster]),
        };
        if let Some(r) = self.routes.get(&id).filter(|r| !r.is_empty()) {
            cmd.args(["--peer-routes", r]);
        }
        if self.planted_bug {
            cmd.env("MICRO_PLANTED_BUG_STALE_READS", "1");
        } else {
            cmd.env_remove("MICRO_PLANTED_BUG_STALE_READS");
        }
        match &self.planted_groups_bug {
            Some(kind) => cmd.env("MICRO_PLANTED_BUG_GROUPS", kind),
            None => cmd.env_remove("MICRO_PLANTED_BUG_GROUPS"),
        };
        if self.planted_fence_bug {
            cmd.env("MICRO_PLANTED_BUG_FENCE", "1");
        } else {
            cmd.env_remove("MICRO_PLANTED_BUG_FENCE");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.procs.insert(id, child);
        self.paused.remove(&id);
        Ok(())
    }

    /// Deletes the data dir of node `id`, which must not be running; from then on it starts
    /// with `--join seed` (a live member's peer address) to be added back as a learner.
    pub fn wipe(&mut self, id: u64, seed: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.procs.contains_key(&id),
            "node {id} is running: kill it before wiping its data dir"
        );
        let dir = &self.specs[&id].data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        self.joined.insert(id, seed.to_string());
        Ok(())
    }

    /// The exit status of node `id` if it has exited, collected without counting it as a
    /// crash (for a restart that is expected to fail, e.g. on a damaged data dir).
    pub fn exited(&mut self, id: u64) -> Option<String> {
        let st = match self.procs.get_mut(&id)?.try_wait() {
            Ok(Some(st)) => st.to_string(),
            _ => return None,
        };
        self.procs.remove(&id);
        self.paused.remove(&id);
        Some(st)
    }

    pub fn state(&self, id: u64) -> NodeState {
        if !self.procs.contains_key(&id) {
            NodeState::Killed
        } else if self.paused.contains(&id) {
            NodeState::Paused
        } else {
            NodeState::Running
        }
    }

    /// Nodes that are up and not paused.
    pub fn running(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|i| self.state(*i) == NodeState::Running)
            .collect()
    }

    /// SIGKILL; true when the node was running.
    pub fn kill(&mut self, id: u64) -> bool {
        match self.procs.remove(&id) {
            Some(mut c) => {
                let alive = matches!(c.try_wait(), Ok(None));
                let _ = c.kill();
                let _ = c.wait();
                self.paused.remove(&id);
                alive
            }
            None => false,
        }
    }

    fn signal(&self, id: u64, sig: &str) -> anyhow::Result<()> {
        let Some(c) = self.procs.get(&id) else {
            bail!("node {id} is not running");
        };
        let st = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("kill {sig} node {id} failed: {st}");
        }
        Ok(())
    }

    /// SIGSTOP; true when it took effect.
    pub fn pause(&mut self, id: u64) -> bool {
        if self.state(id) != NodeState::Running {
            return false;
        }
        let ok = self.signal(id, "-STOP").is_ok();
        if ok {
            self.paused.insert(id);
        }
        ok
    }

    /// SIGCONT; true when the node was paused.
    pub fn resume(&mut self, id: u64) -> bool {
        if self.state(id) != NodeState::Paused {
            return false;
        }
        let ok = self.signal(id, "-CONT").is_ok();
        self.paused.remove(&id);
        ok
    }

    /// Collects nodes that exited by themselves (crashes); they count as killed from then on.
    pub fn reap(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        for (id, c) in self.procs.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                gone.push(*id);
                self.crashes.push((*id, st.to_string()));
            }
        }
        for id in &gone {
            self.procs.remove(id);
            self.paused.remove(id);
        }
        gone
    }

    /// Resumes paused nodes and restarts killed ones.
    pub fn revive_all(&mut self) -> anyhow::Result<Vec<u64>> {
        let mut revived = Vec::new();
        for id in self.ids() {
            match self.state(id) {
                NodeState::Paused => {
                    self.resume(id);
                    revived.push(id);
                }
                NodeState::Killed => {
                    self.spawn(id)?;
                    revived.push(id);
                }
                NodeState::Running => {}
            }
        }
        Ok(revived)
    }

    pub fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.specs[&id].log).unwrap_or_default()
    }

    pub fn grpc(&self, id: u64) -> String {
        self.specs[&id].grpc.clone()
    }

    pub fn peer(&self, id: u64) -> String {
        self.specs[&id].peer.clone()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.specs[&id].data_dir.clone()
    }

    /// (id, gRPC address) of every node.
    pub fn addrs(&self) -> Vec<(u64, String)> {
        self.ids().into_iter().map(|i| (i, self.grpc(i))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Asks every given node for its leader; returns the leader they all agree on, if any.
pub async fn agreed_leader(addrs: &[(u64, String)]) -> Option<u64> {
    let views = leader_views(addrs).await;
    let first = *views.first()?;
    (views.len() == addrs.len() && first != 0 && views.iter().all(|l| *l == first)).then_some(first)
}

/// The leader each answering node reports (0 = none).
pub async fn leader_views(addrs: &[(u64, String)]) -> Vec<u64> {
    let calls = addrs.iter().map(|(_, a)| async move {
        let f = async {
            let c = crate::connect(a).await.ok()?;
            c.cluster_status().await.ok().map(|s| s.leader)
        };
        tokio::time::timeout(Duration::from_secs(2), f)
            .await
            .ok()
            .flatten()
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The leader most answering nodes name (ties: the lowest id).
pub async fn probable_leader(addrs: &[(u64, String)]) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for l in leader_views(addrs).await.into_iter().filter(|l| *l != 0) {
        *votes.entry(l).or_default() += 1;
    }
    let best = votes.values().copied().max()?;
    votes.into_iter().find(|(_, v)| *v == best).map(|(l, _)| l)
}

/// Polls until every node in `addrs` names the same leader, which must be among them.
pub async fn wait_leader(addrs: &[(u64, String)], timeout: Duration) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(l) = agreed_leader(addrs).await {
            if addrs.iter().any(|(id, _)| *id == l) {
                return Ok(l);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no agreed leader within {timeout:?} (views: {:?})",
                leader_views(addrs).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each node's own (last log index, applied index), `None` for a node that did not answer.
pub async fn progress(addrs: &[(u64, String)]) -> Vec<Option<(u64, u64)>> {
    let calls = addrs.iter().map(|(_, a)| async move {
        let f = async {
            let c = crate::connect(a).await.ok()?;
            let s = c.cluster_status().await.ok()?;
            s.members
                .iter()
                .find(|m| m.id == s.node_id)
                .map(|m| (m.last_log_index, m.applied_index))
        };
        tokio::time::timeout(Duration::from_secs(2), f)
            .await
            .ok()
            .flatten()
    });
    futures::future::join_all(calls).await
}

/// Polls until every node has applied its whole log, all logs end at the same index, and
/// that stays so across two polls (nothing is being written); returns the index.
pub async fn wait_quiescent(addrs: &[(u64, String)], timeout: Duration) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut previous: Option<u64> = None;
    loop {
        let views = progress(addrs).await;
        let settled = views.iter().all(|v| v.is_some_and(|(l, a)| l == a))
            && views.windows(2).all(|w| w[0] == w[1]);
        let index = views.first().copied().flatten().map(|(l, _)| l);
        if settled {
            if previous.is_some() && previous == index {
                return Ok(index.unwrap_or(0));
            }
            previous = index;
        } else {
            previous = None;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the nodes' logs did not settle within {timeout:?} (last log, applied per node: {views:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
