//! Three-node Micro and etcd clusters on 127.0.0.1, in a temp dir removed on drop, and the
//! per-worker connections that drive them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::{sleep, Instant};
use tonic::transport::{Channel, Endpoint};

use crate::args::Target;
use crate::etcd::pb;
use crate::procs::{cpu_seconds, free_ports, peak_rss_kib, Proc};

pub const NODES: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const MICRO_TOKEN: &str = "bench-token-123";

pub struct Node {
    /// Client address, `127.0.0.1:PORT`.
    pub addr: String,
    /// Micro's HTTP gateway address, `127.0.0.1:PORT` (None for etcd and NATS).
    pub http: Option<String>,
    /// The node's own data dir (inside the cluster's temp dir).
    pub data_dir: PathBuf,
    pub proc: Proc,
}

/// CPU seconds used so far by each node.
pub fn nodes_cpu_seconds(nodes: &[Node]) -> Vec<Option<f64>> {
    nodes
        .iter()
        .map(|n| cpu_seconds(&n.proc.pid().to_string()))
        .collect()
}

/// Peak RSS of each node so far, in MiB.
pub fn nodes_peak_rss_mib(nodes: &[Node]) -> Vec<Option<f64>> {
    nodes
        .iter()
        .map(|n| peak_rss_kib(&n.proc.pid().to_string()).map(|k| k as f64 / 1024.0))
        .collect()
}

/// `Err` naming the node and its log tail if any node has exited.
pub fn nodes_check_running(nodes: &mut [Node]) -> anyhow::Result<()> {
    nodes.iter_mut().try_for_each(|n| n.proc.check_running())
}

/// The last lines of every node's log.
pub fn nodes_log_tails(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {}:\n{}", n.proc.name, n.proc.log_tail(15)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The node (index) worker `i` talks to: workers are dealt round-robin to the followers first,
/// then the leader. Both systems get the same placement relative to their leader whichever
/// node won the election, so the first client is always on a follower (as most clients of a
/// 3-node cluster are) and the leader serves the smallest share.
pub fn worker_node(i: usize, nodes: usize, leader: usize) -> usize {
    let k = i % nodes;
    if k == nodes - 1 {
        leader
    } else if k < leader {
        k
    } else {
        k + 1
    }
}

/// A running cluster. Fields drop in order: the nodes are killed before their data dir goes.
pub struct Cluster {
    pub target: Target,
    pub nodes: Vec<Node>,
    /// Index in `nodes` of the leader every node named when the cluster came up.
    pub leader: usize,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a 3-node Micro cluster and waits until every node names the same leader.
    pub async fn start_micro(bin: &Path, root: &Path) -> anyhow::Result<Cluster> {
        Self::start_micro_nodes(bin, root, NODES).await
    }

    /// Starts a Micro cluster of `n` nodes and waits until every node names the same leader.
    pub async fn start_micro_nodes(bin: &Path, root: &Path, n: usize) -> anyhow::Result<Cluster> {
        Self::start_micro_as(Target::Micro, bin, root, n).await
    }

    /// Starts `n` nodes of a Micro `target` (with its flags) and waits for one leader.
    pub async fn start_micro_as(
        target: Target,
        bin: &Path,
        root: &Path,
        n: usize,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("micro-bench-micro-")
            .tempdir_in(root)?;
        let ports = free_ports(3 * n)?;
        let peer = |i: usize| format!("127.0.0.1:{}", ports[3 * i + 2]);
        let initial: Vec<String> = (0..n).map(|i| format!("{}={}", i + 1, peer(i))).collect();
        let initial = initial.join(",");
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i + 1;
            let addr = format!("127.0.0.1:{}", ports[3 * i]);
            let http = format!("127.0.0.1:{}", ports[3 * i + 1]);
            let data_dir = dir.path().join(format!("node{id}"));
            let mut args: Vec<String> = vec![
                "server".into(),
                "--node-id".into(),
                id.to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--grpc".into(),
                addr.clone(),
                "--http".into(),
                http.clone(),
                "--peer".into(),
                peer(i),
                "--cluster-token".into(),
                MICRO_TOKEN.into(),
                "--initial-cluster".into(),
                initial.clone(),
            ];
            args.extend(target.variant_flag().map(String::from));
            let log = dir.path().join(format!("node{id}.log"));
            let config_dir = dir.path().join("config").display().to_string();
            let env = [("MICRO_CONFIG_DIR", config_dir.as_str())];
            let proc = Proc::spawn(&format!("micro node {id}"), bin, &args, &env, &log)?;
            nodes.push(Node {
                addr,
                http: Some(http),
                data_dir,
                proc,
            });
        }
        let mut c = Cluster {
            target,
            nodes,
            leader: 0,
            _dir: dir,
        };
        let addrs: Vec<(u64, String)> = (1..).zip(c.nodes.iter().map(|n| n.addr.clone())).collect();
        if target != Target::MicroAuthOff {
            micro_testkit::auth::login(&c._dir.path().join("config"), &addrs, READY_TIMEOUT)
                .await?;
        }
        c.wait_micro_leader().await?;
        Ok(c)
    }

    async fn wait_micro_leader(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut leaders = Vec::new();
            for n in &mut self.nodes {
                n.proc.check_running()?;
                if let Ok(c) = micro_testkit::auth::connect(&n.addr).await {
                    if let Ok(s) = c.cluster_status().await {
                        leaders.push(s.leader);
                    }
                }
            }
            if leaders.len() == self.nodes.len()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                // Node ids are 1, 2, 3 in `nodes` order.
                self.leader = (leaders[0] - 1) as usize;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Micro: no leader all nodes agree on within {READY_TIMEOUT:?} (saw {leaders:?}); {}",
                    self.log_tails()
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a 3-member etcd cluster (fsync on, etcd's default) and waits until every member
    /// names the same leader and answers a linearizable read.
    pub async fn start_etcd(bin: &Path, root: &Path) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("micro-bench-etcd-")
            .tempdir_in(root)?;
        let ports = free_ports(2 * NODES)?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..NODES)
            .map(|i| format!("n{}={}", i + 1, peer(i)))
            .collect();
        let initial = initial.join(",");
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let addr = format!("127.0.0.1:{}", ports[2 * i]);
            let client_url = format!("http://{addr}");
            let data_dir = dir.path().join(&name);
            let args: Vec<String> = vec![
                "--name".into(),
                name.clone(),
                "--initial-advertise-peer-urls".into(),
                peer(i),
                "--listen-peer-urls".into(),
                peer(i),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url,
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-token".into(),
                "micro-bench-etcd".into(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
            ];
            let log = dir.path().join(format!("{name}.log"));
            let proc = Proc::spawn(&format!("etcd member {name}"), bin, &args, &[], &log)?;
            nodes.push(Node {
                addr,
                http: None,
                data_dir,
                proc,
            });
        }
        let mut c = Cluster {
            target: Target::Etcd,
            nodes,
            leader: 0,
            _dir: dir,
        };
        c.wait_etcd_ready().await?;
        Ok(c)
    }

    async fn wait_etcd_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut leaders = Vec::new();
            let mut members = Vec::new();
            let mut reads = 0;
            for n in &mut self.nodes {
                n.proc.check_running()?;
                let Ok(ch) = channel(&n.addr).await else {
                    continue;
                };
                let mut m = pb::maintenance_client::MaintenanceClient::new(ch.clone());
                if let Ok(s) = m.status(pb::StatusRequest {}).await {
                    let s = s.into_inner();
                    leaders.push(s.leader);
                    members.push(s.header.map_or(0, |h| h.member_id));
                }
                let mut kv = pb::kv_client::KvClient::new(ch);
                let probe = pb::RangeRequest {
                    key: b"micro-bench-probe".to_vec(),
                    ..Default::default()
                };
                if kv.range(probe).await.is_ok() {
                    reads += 1;
                }
            }
            if leaders.len() == NODES
                && reads == NODES
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                if let Some(i) = members.iter().position(|m| *m == leaders[0]) {
                    self.leader = i;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd: not healthy within {READY_TIMEOUT:?} (leaders {leaders:?}, {reads} reads ok); {}",
                    self.log_tails()
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The temp dir holding the nodes' data dirs and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The CLI config dir the Micro nodes were given (`MICRO_CONFIG_DIR`): the first node
    /// writes the admin's credentials there.
    pub fn config_dir(&self) -> PathBuf {
        self._dir.path().join("config")
    }

    /// `Err` naming the node and its log tail if any node has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        nodes_check_running(&mut self.nodes)
    }

    fn log_tails(&self) -> String {
        nodes_log_tails(&self.nodes)
    }

    /// CPU seconds used so far by each node.
    pub fn cpu_seconds(&self) -> Vec<Option<f64>> {
        nodes_cpu_seconds(&self.nodes)
    }

    /// Peak RSS of each node so far, in MiB.
    pub fn peak_rss_mib(&self) -> Vec<Option<f64>> {
        nodes_peak_rss_mib(&self.nodes)
    }

    /// The client address of the node that worker `i` talks to (see [`worker_node`]).
    pub fn addr_for_worker(&self, i: usize) -> &str {
        &self.nodes[worker_node(i, self.nodes.len(), self.leader)].addr
    }

    /// A connection for each worker, worker `i` to [`worker_node`]: its own when `per_node` is 0,
    /// else one of `per_node` channels to that node, shared round-robin with the node's other
    /// workers.
    pub async fn connect_shared(
        &self,
        workers: usize,
        per_node: usize,
    ) -> anyhow::Result<Vec<Conn>> {
        if per_node == 0 {
            return self.connect(workers).await;
        }
        let nodes = self.nodes.len();
        let shared = self.connect(nodes * per_node).await?;
        // shared[j] is on worker j's node; worker i (on the same node as i % nodes) takes the
        // ((i / nodes) % per_node)-th channel of its node.
        Ok((0..workers)
            .map(|i| shared[(i % nodes) + nodes * ((i / nodes) % per_node)].clone())
            .collect())
    }

    /// One connection per worker, worker `i` to [`worker_node`].
    pub async fn connect(&self, workers: usize) -> anyhow::Result<Vec<Conn>> {
        let conns = futures::future::join_all(
            (0..workers).map(|i| Conn::open(self.target, self.addr_for_worker(i).to_string())),
        )
        .await;
        conns.into_iter().collect()
    }

    /// Watcher `i` (on worker `i`'s node) of every key starting with `prefix`, from now on. It is
    /// established (the server has accepted it) when this returns.
    pub async fn watch(&self, i: usize, prefix: &str) -> anyhow::Result<Watcher> {
        let addr = self.addr_for_worker(i).to_string();
        Ok(match self.target {
            Target::Micro | Target::MicroAuthOff | Target::MicroMetricsOff => {
                let opts = micro::store::WatchOptions {
                    prefix: true,
                    ..Default::default()
                };
                let w = micro_testkit::auth::connect(&addr)
                    .await?
                    .store()
                    .watch(prefix, opts)
                    .await?;
                Watcher::Micro(w)
            }
            Target::Etcd => {
                let mut end = prefix.as_bytes().to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                let create = pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: prefix.as_bytes().to_vec(),
                            range_end: end,
                            start_revision: 0,
                        },
                    )),
                };
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(create).await?;
                let mut client = pb::watch_client::WatchClient::new(channel(&addr).await?);
                let mut stream = client
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                // The first response confirms the watch; changes come after it.
                let first = stream.message().await?.context("etcd closed the watch")?;
                anyhow::ensure!(first.created, "etcd did not create the watch: {first:?}");
                Watcher::Etcd(stream, tx)
            }
        })
    }
}

/// A watcher of one key prefix.
pub enum Watcher {
    Micro(micro::store::Watcher),
    /// The request sender is kept: dropping it would end etcd's watch stream.
    Etcd(
        tonic::Streaming<pb::WatchResponse>,
        tokio::sync::mpsc::Sender<pb::WatchRequest>,
    ),
}

impl Watcher {
    /// Adds every change it receives to `count`, until the stream ends or the task is aborted.
    pub async fn count_into(self, count: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::Ordering;
        match self {
            Watcher::Micro(mut w) => {
                while let Ok(Some(r)) = w.next().await {
                    count.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                }
            }
            Watcher::Etcd(mut stream, _tx) => {
                while let Ok(Some(r)) = stream.message().await {
                    count.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// One worker's connection to one node.
// One Conn per worker, made once: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Conn {
    Micro(micro::Store, micro::Registry, micro::Client),
    Etcd(pb::kv_client::KvClient<Channel>, Channel),
}

/// The etcd key of node `n` of service `s` (a registry kept the way etcd-based ones do).
fn etcd_registry_key(s: u64, n: u64) -> String {
    format!("/micro/registry/svc{s:03}/svc{s:03}-node{n}")
}

/// The node of a registered service, as JSON on etcd and as a node in Micro's registry.
fn registry_node(s: u64, n: u64) -> (String, String) {
    (
        format!("svc{s:03}-node{n}"),
        format!("127.0.0.1:{}", 20_000 + s * 10 + n),
    )
}

impl Conn {
    pub async fn open(target: Target, addr: String) -> anyhow::Result<Conn> {
        Ok(match target {
            Target::Micro | Target::MicroAuthOff | Target::MicroMetricsOff => {
                let c = micro_testkit::auth::connect(&addr)
                    .await
                    .with_context(|| format!("connect to Micro at {addr}"))?;
                Conn::Micro(c.store(), c.registry(), c)
            }
            Target::Etcd => {
                let ch = channel(&addr)
                    .await
                    .with_context(|| format!("connect to etcd at {addr}"))?;
                Conn::Etcd(pb::kv_client::KvClient::new(ch.clone()), ch)
            }
        })
    }

    pub async fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Micro(s, _, _) => {
                s.write(key, value.to_vec()).await?;
            }
            Conn::Etcd(kv, _) => {
                kv.put(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Reads `key`, which must exist.
    pub async fn get(&mut self, key: &str, serializable: bool) -> anyhow::Result<()> {
        let found = match self {
            Conn::Micro(s, _, _) => {
                let q = micro::store::Query {
                    serializable,
                    ..Default::default()
                };
                !s.query(key, q).await?.is_empty()
            }
            Conn::Etcd(kv, _) => {
                let r = kv
                    .range(pb::RangeRequest {
                        key: key.as_bytes().to_vec(),
                        serializable,
                        ..Default::default()
                    })
                    .await?;
                !r.into_inner().kvs.is_empty()
            }
        };
        if !found {
            bail!("key not found (preload missing?)");
        }
        Ok(())
    }

    /// Registers the services of `registry-get` (nodes never expire).
    pub async fn register_all(&mut self) -> anyhow::Result<()> {
        use crate::args::{REGISTRY_NODES, REGISTRY_SERVICES};
        for s in 0..REGISTRY_SERVICES {
            match self {
                Conn::Micro(_, reg, _) => {
                    use micro::proto::registry as rpb;
                    let nodes = (0..REGISTRY_NODES)
                        .map(|n| {
                            let (id, address) = registry_node(s, n);
                            rpb::Node {
                                id,
                                address,
                                metadata: [("protocol".to_string(), "grpc".to_string())].into(),
                                ..Default::default()
                            }
                        })
                        .collect();
                    let svc = rpb::Service {
                        name: format!("svc{s:03}"),
                        version: "latest".into(),
                        nodes,
                        ..Default::default()
                    };
                    reg.register(svc, 0).await?;
                }
                Conn::Etcd(kv, _) => {
                    for n in 0..REGISTRY_NODES {
                        let (id, address) = registry_node(s, n);
                        let value = serde_json::json!({"name": format!("svc{s:03}"), "version": "latest",
                            "node": {"id": id, "address": address, "metadata": {"protocol": "grpc"}}});
                        kv.put(pb::PutRequest {
                            key: etcd_registry_key(s, n).into_bytes(),
                            value: value.to_string().into_bytes(),
                            ..Default::default()
                        })
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Looks up service `s` of `registry-get`; all its nodes must be there.
    pub async fn registry_get(&mut self, s: u64) -> anyhow::Result<()> {
        use crate::args::REGISTRY_NODES;
        let nodes = match self {
            Conn::Micro(_, reg, _) => reg
                .get(&format!("svc{s:03}"))
                .await?
                .iter()
                .map(|svc| svc.nodes.len() as u64)
                .sum(),
            Conn::Etcd(kv, _) => {
                let prefix = format!("/micro/registry/svc{s:03}/").into_bytes();
                let mut end = prefix.clone();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                kv.range(pb::RangeRequest {
                    key: prefix,
                    range_end: end,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .len() as u64
            }
        };
        anyhow::ensure!(nodes == REGISTRY_NODES, "service {s} has {nodes} nodes");
        Ok(())
    }

    /// Takes lock `name` and releases it again; `lease` is this connection's lease (granted
    /// on first use, 60 s: longer than any cell).
    pub async fn lock_cycle(&mut self, lease: &mut i64, name: &str) -> anyhow::Result<()> {
        match self {
            Conn::Micro(_, _, client) => {
                use micro::proto::sync as spb;
                if *lease == 0 {
                    *lease = client.leases().grant(Duration::from_secs(60)).await? as i64;
                }
                let mut sync = spb::sync_client::SyncClient::new(client.channel());
                let token = sync
                    .lock(spb::LockRequest {
                        name: name.to_string(),
                        lease: *lease as u64,
                        ttl: 0,
                        wait_ms: 0,
                    })
                    .await?
                    .into_inner()
                    .token;
                sync.unlock(spb::UnlockRequest {
                    name: name.to_string(),
                    token,
                })
                .await?;
            }
            Conn::Etcd(_, ch) => {
                use crate::etcd::lockpb;
                if *lease == 0 {
                    *lease = pb::lease_client::LeaseClient::new(ch.clone())
                        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
                        .await?
                        .into_inner()
                        .id;
                }
                let mut lock = lockpb::lock_client::LockClient::new(ch.clone());
                let key = lock
                    .lock(lockpb::LockRequest {
                        name: name.as_bytes().to_vec(),
                        lease: *lease,
                    })
                    .await?
                    .into_inner()
                    .key;
                lock.unlock(lockpb::UnlockRequest { key }).await?;
            }
        }
        Ok(())
    }

    /// Writes all `pairs` in one transaction (one log entry on either system).
    pub async fn put_batch(&mut self, pairs: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        match self {
            Conn::Micro(s, _, _) => {
                use micro::proto::store as spb;
                let success = pairs
                    .iter()
                    .map(|(k, v)| spb::TxnOp {
                        op: Some(spb::txn_op::Op::Write(spb::WriteRequest {
                            record: Some(spb::Record {
                                key: k.clone(),
                                value: v.clone(),
                                ..Default::default()
                            }),
                            options: None,
                            fence: None,
                        })),
                    })
                    .collect();
                let r = s
                    .txn(spb::TxnRequest {
                        compare: vec![],
                        success,
                        failure: vec![],
                        fence: None,
                    })
                    .await?;
                anyhow::ensure!(r.succeeded, "Micro txn without guards did not succeed");
            }
            Conn::Etcd(kv, _) => {
                let success = pairs
                    .iter()
                    .map(|(k, v)| pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: k.as_bytes().to_vec(),
                            value: v.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let r = kv
                    .txn(pb::TxnRequest {
                        success,
                        failure: vec![],
                    })
                    .await?;
                anyhow::ensure!(
                    r.into_inner().succeeded,
                    "etcd txn without guards did not succeed"
                );
            }
        }
        Ok(())
    }
}

/// Where `micro` is: `--micro-bin`, else `release/micro` in this executable's target dir.
pub fn default_micro_bin() -> anyhow::Result<PathBuf> {
    Ok(target_dir()?.join("release").join("micro"))
}

/// The target dir this executable was built into (`<target>/<profile>/micro-bench`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of this executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("this executable is not in a cargo target dir")
}

#[cfg(test)]
mod tests {
    use super::worker_node;

    #[test]
    fn workers_go_to_the_followers_first_then_the_leader() {
        for leader in 0..3 {
            let order: Vec<usize> = (0..6).map(|i| worker_node(i, 3, leader)).collect();
            assert_eq!(order[2], leader, "leader {leader}: {order:?}");
            assert_ne!(order[0], leader);
            assert_ne!(order[1], leader);
            assert_ne!(order[0], order[1]);
            assert_eq!(order[..3], order[3..], "round-robin");
        }
        assert_eq!(worker_node(0, 1, 0), 0);
    }
}
