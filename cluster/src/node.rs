//! A running member: Raft, its storage, the peer server, and what the front ends call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micro_log::Db;
use micro_state::views::{history, meta};
use micro_state::{Command, Outcome, Request, View};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::Serialize;
use tokio::sync::watch;

use crate::machine::StateMachine;
use crate::network::{CallError, Method, Network, Peer, PeerPool};
use crate::store::LogStore;
use crate::wire::{ForwardError, MemberStatus, MembershipOp, Status, PROMOTE_MAX_LAG};
use crate::{now_ms, Error, NodeConfig, Raft, TypeConfig};

/// How long a client request may wait for a leader or a quorum before it is told the cluster
/// is unavailable.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
const INFO_TIMEOUT: Duration = Duration::from_millis(700);

/// Linearizable reads waiting for a read index. One leadership round serves every read that
/// arrived before the round started; reads arriving during a round wait for the next one.
#[derive(Default)]
struct ReadBatch {
    in_flight: bool,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<u64, Error>>>,
}

/// Wakes a consumer of one event topic: see [`Node::topic_changes`].
pub struct TopicWatch {
    rx: crate::feed::Receiver,
    topic: String,
}

impl TopicWatch {
    /// Waits until this node applies a batch that touched the topic (its events or groups),
    /// or could have without saying so (this watch lagged, or a snapshot replaced the state),
    /// at most `timeout`. Batches applied since the watch was made count, so a read after
    /// [`Node::topic_changes`] and before this call cannot miss a wake-up.
    pub async fn changed(&mut self, timeout: Duration) {
        use tokio::sync::broadcast::error::RecvError;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return,
                Ok(Ok(b)) if b.first_revision == u64::MAX || b.topics.contains(&self.topic) => {
                    return
                }
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(_))) => return,
                // The node is stopping: nothing more will be applied.
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) raft: Raft,
    db: Arc<Db>,
    cfg: NodeConfig,
    peers: Arc<PeerPool>,
    pub(crate) broker: crate::broker::LocalBroker,
    reads: Mutex<ReadBatch>,
    broker_rr: std::sync::atomic::AtomicU64,
    feed: crate::feed::Sender,
    /// When a leader last reached this node (for the election watchdog).
    contact: crate::elect::Contact,
}

/// A handle to the running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    queue: crate::batch::Queue,
    stop: watch::Sender<bool>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// Entries between this member's snapshots: `every` for node 1 (and 4, 7, ...), 7/6 of it for
/// node 2, 4/3 for node 3, so members build snapshots at different points. Building one reads
/// the whole keyspace and fsyncs a file; when every member did it at the same index, writes
/// stalled on all of them at once (put p99 at 256 clients doubled in the cells with one,
/// measured in bench). A single node keeps `every` exactly.
fn snapshot_interval(every: u64, node_id: u64) -> u64 {
    every + every * ((node_id + 2) % 3) / 6
}

/// A Raft role as status, health and metrics name it.
pub fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// Opens the data dir, verifies the log, starts Raft and the peer server, and bootstraps
    /// a new cluster if the data dir is empty.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Node> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        crate::trace::timeline::start(cfg.node_id);
        let db = Db::open(&cfg.data_dir.join("db"))?;
        // Refuse to serve from a damaged log: name the record and stop.
        let records = db.verify_log()?;
        crate::store::check_tail(&db)?;
        crate::store::stand_for_election(&db, cfg.node_id)?;
        tracing::info!(records, "log verified");

        let log_store = LogStore::new(db.clone());
        let fresh = !log_store.is_initialized()?;
        let feed = crate::feed::channel();
        let sm = StateMachine::with_feed(db.clone(), cfg.data_dir.join("snapshots"), feed.clone())?;

        let raft_config = openraft::Config {
            cluster_name: "micro".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_timeout.0.as_millis() as u64,
            election_timeout_max: cfg.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 60_000,
            max_payload_entries: crate::batch::ENTRIES_PER_MESSAGE,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_interval(
                cfg.snapshot_every,
                cfg.node_id,
            )),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            ..Default::default()
        }
        .validate()?;
        let pool = Arc::new(PeerPool::new(
            cfg.cluster_token.clone(),
            cfg.peer_routes.clone(),
        ));
        let network = Network { pool: pool.clone() };
        let raft = Raft::new(cfg.node_id, Arc::new(raft_config), network, log_store, sm).await?;
        // Stands in for openraft's timers stuck in a split-vote lockstep (see `elect`): only the
        // watchdog elects. Debug builds only, for the test that proves the watchdog does.
        #[cfg(debug_assertions)]
        if std::env::var_os("MICRO_TEST_NO_TIMED_ELECTIONS").is_some() {
            raft.runtime_config().elect(false);
        }

        let inner = Arc::new(Inner {
            raft: raft.clone(),
            db,
            cfg: cfg.clone(),
            peers: pool,
            broker: Default::default(),
            reads: Mutex::new(ReadBatch::default()),
            broker_rr: Default::default(),
            feed,
            contact: crate::elect::Contact::new(),
        });

        let listener = tokio::net::TcpListener::bind(cfg.peer_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {}: {e}", cfg.peer_addr))?;
        let (stop, stop_rx) = watch::channel(false);
        let (queue, queued) = crate::batch::Queue::new();
        let mut tasks = Vec::new();
        {
            let svc = crate::peer::server(
                inner.clone(),
                stop_rx.clone(),
                queue.clone(),
                cfg.cluster_token.clone(),
            );
            let mut rx = stop_rx.clone();
            // Set nodelay on accepted sockets: the builder's setting does not reach them.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tasks.push(tokio::spawn(async move {
                let res = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    tracing::error!("peer server stopped: {e}");
                }
            }));
        }

        if fresh && cfg.join.is_some() {
            let join = cfg.join.clone().unwrap_or_default();
            tracing::info!(
                "empty data dir: asking the cluster at {join} to add node {} as a learner",
                cfg.node_id
            );
            tasks.push(tokio::spawn(join_cluster(
                inner.clone(),
                join,
                stop_rx.clone(),
            )));
        } else if fresh {
            let members: BTreeMap<u64, BasicNode> = if cfg.initial_cluster.is_empty() {
                BTreeMap::from([(cfg.node_id, BasicNode::new(cfg.advertised_peer()))])
            } else {
                cfg.initial_cluster
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr)))
                    .collect()
            };
            // Every founding member initialises with the same membership, so their first log
            // entries are identical and any of them can win the first election.
            match raft.initialize(members).await {
                Ok(()) => tracing::info!("bootstrapped a new cluster"),
                Err(RaftError::APIError(e)) => tracing::info!("not initialising: {e}"),
                Err(e) => return Err(e.into()),
            }
        } else {
            tracing::info!("resuming the existing cluster from the data dir");
        }

        tasks.push(tokio::spawn(ticker(inner.clone(), stop_rx.clone())));
        let node = Node {
            inner,
            queue: queue.clone(),
            stop,
            tasks: Arc::new(Mutex::new(tasks)),
        };
        let batcher = tokio::spawn(crate::batch::run(node.clone(), queue, queued, stop_rx));
        node.tasks.lock().expect("task list lock").push(batcher);
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.inner.cfg.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Wakes when this node applies something that touched event topic `topic` (the change
    /// feed, as watchers use it): live consumers wait on it instead of polling.
    pub fn topic_changes(&self, topic: &str) -> TopicWatch {
        TopicWatch {
            rx: self.feed(),
            topic: topic.to_string(),
        }
    }

    /// RocksDB's size figures: (column family, kind, bytes); see `micro_log::Db::sizes`.
    pub fn disk_sizes(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.inner.db.sizes()
    }

    /// The node's views (read-only), for reads after [`Node::read_barrier`].
    pub fn view(&self) -> &(impl micro_state::Read + Send + Sync) {
        &*self.inner.db
    }

    /// Every batch this node applies from now on, with the changes it made (see `feed`).
    pub fn feed(&self) -> crate::feed::Receiver {
        self.inner.feed.subscribe()
    }

    /// Becomes true when the node shuts down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Proposes a command of view `V` and returns the entry's index and `V`'s own outcome.
    pub async fn run<V: View>(&self, cmd: V::Cmd) -> Result<(u64, V::Out), Error> {
        let (index, out) = self.write(V::command(cmd)).await?;
        V::outcome(out)
            .map(|o| (index, o))
            .map_err(|o| Error::Internal(format!("unexpected outcome {o:?}")))
    }

    /// Proposes `cmd` and waits until it is committed and applied here or on the leader.
    /// Returns the index of the entry that carried it (concurrent writes share entries; see
    /// `batch`) and its outcome.
    pub async fn write(&self, cmd: Command) -> Result<(u64, Outcome), Error> {
        if let Err(Outcome::Rejected { field, reason }) = cmd.validate() {
            return Err(Error::Invalid { field, reason });
        }
        crate::trace::timeline::stamp("write.start");
        let (index, mut out) = match self.queue.idle_slot(self.inner.is_leader()) {
            Some(_slot) => self.propose(vec![cmd]).await?,
            None => crate::batch::submit(&self.queue, vec![cmd]).await?,
        };
        crate::trace::timeline::stamp("write.done");
        match out.pop() {
            Some(Outcome::Rejected { field, reason }) => Err(Error::Invalid { field, reason }),
            Some(Outcome::Refused { field, reason }) => Err(Error::Refused { field, reason }),
            Some(o) => Ok((index, o)),
            None => Err(Error::Internal("a write produced no outcome".into())),
        }
    }

    /// Proposes a batch of independent commands as one entry, on the leader.
    pub(crate) async fn propose(&self, cmds: Vec<Command>) -> Result<(u64, Vec<Outcome>), Error> {
        let inner = self.inner.clone();
        self.on_leader(Method::Forward, &cmds, || inner.propose_here(cmds.clone()))
            .await
    }

    /// Waits until a read here reflects every write acknowledged before it started
    /// (linearizable); a no-op for serializable reads.
    pub async fn read_barrier(&self, linearizable: bool) -> Result<(), Error> {
        if !linearizable {
            return Ok(());
        }
        // A planted bug for the fault harness to prove it catches stale reads. It exists
        // only in debug builds; release binaries have no such switch.
        #[cfg(debug_assertions)]
        if std::env::var_os("MICRO_PLANTED_BUG_STALE_READS").is_some() {
            return Ok(());
        }
        let index = self.batched_read_index().await?;
        self.wait_applied(index).await
    }

    /// Subscribes to broker messages on `topic` published on any member; subscribers with the
    /// same non-empty `queue` share the messages.
    pub fn broker_subscribe(
        &self,
        topic: &str,
        queue: &str,
    ) -> tokio::sync::mpsc::Receiver<crate::broker::Message> {
        self.inner.broker.subscribe(topic, queue)
    }

    /// Publishes a broker message to every member's subscribers (at most once, not logged).
    pub async fn broker_publish(&self, topic: &str, message: crate::broker::Message) {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let members: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let n = members.len().max(1);
        let start = self
            .inner
            .broker_rr
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        let mut skip = BTreeSet::new();
        for i in 0..members.len() {
            let (id, addr) = &members[(start + i) % n];
            let d = crate::broker::Delivery {
                topic: topic.to_string(),
                message: message.clone(),
                plain: true,
                skip_queues: skip.clone(),
            };
            let served = if *id == self.id() {
                self.inner.broker.deliver(&d)
            } else {
                match self.inner.peer(addr) {
                    Ok(p) => p
                        .call::<_, BTreeSet<String>>(Method::Broker, &d, INFO_TIMEOUT)
                        .await
                        .unwrap_or_default(),
                    Err(_) => BTreeSet::new(),
                }
            };
            skip.extend(served);
        }
    }

    /// Waits until this node has applied `index` (e.g. an entry this node wrote through the
    /// leader), so a local read reflects it.
    pub async fn wait_applied(&self, index: u64) -> Result<(), Error> {
        self.inner
            .raft
            .wait(Some(REQUEST_DEADLINE))
            .applied_index_at_least(Some(index), "wait for a local apply")
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("waiting to apply index {index}: {e}")))
    }

    /// A read index for this read: shared with every read that arrived before the same
    /// leadership round started (so each still observes all writes acknowledged before it).
    async fn batched_read_index(&self) -> Result<u64, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start_round = {
            let mut b = self.inner.reads.lock().expect("read batch lock");
            b.waiters.push(tx);
            !std::mem::replace(&mut b.in_flight, true)
        };
        if start_round {
            let node = self.clone();
            tokio::spawn(async move {
                loop {
                    let waiters = {
                        let mut b = node.inner.reads.lock().expect("read batch lock");
                        if b.waiters.is_empty() {
                            b.in_flight = false;
                            break;
                        }
                        std::mem::take(&mut b.waiters)
                    };
                    let inner = node.inner.clone();
                    let res = node
                        .on_leader(Method::ReadIndex, &(), || inner.read_index_here())
                        .await;
                    for w in waiters {
                        let _ = w.send(res.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| Error::Internal("the read-index round was dropped".into()))?
    }

    /// Adds a learner, promotes a caught-up learner to voter, or removes a member.
    pub async fn change_membership(&self, op: MembershipOp) -> Result<(), Error> {
        let inner = self.inner.clone();
        self.on_leader(Method::Membership, &op, || inner.change_here(op.clone()))
            .await
    }

    /// A snapshot file of the whole state, consistent and at least as new as every write
    /// acknowledged before the call (it is taken after a linearizable read barrier).
    pub async fn snapshot(&self) -> Result<Vec<u8>, Error> {
        self.read_barrier(true).await?;
        let db = self.inner.db.clone();
        let (bytes, _) = tokio::task::spawn_blocking(move || crate::machine::snapshot_bytes(&db))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(bytes)
    }

    /// The cluster id, once the first leader has named the cluster.
    pub fn cluster_id(&self) -> String {
        micro_state::cluster_id(&*self.inner.db)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Runs `local` here if this node leads, else sends `payload` to the leader as `method`.
    /// Retries only when nothing was done (not the leader, leader unreachable), until the
    /// request deadline.
    async fn on_leader<P, T, F, Fut>(
        &self,
        method: Method,
        payload: &P,
        local: F,
    ) -> Result<T, Error>
    where
        P: Serialize,
        T: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ForwardError>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
        loop {
            // A follower that knows the leader goes straight to it, skipping a round trip
            // through its own Raft core just to be told to forward.
            let res = match self.inner.known_other_leader() {
                Some(addr) => self.call_leader(&addr, method, payload).await,
                None => match local().await {
                    Err(ForwardError::NotLeader {
                        leader: Some((id, addr)),
                    }) if id != self.id() => self.call_leader(&addr, method, payload).await,
                    other => other.map_err(Some),
                },
            };
            match res {
                Ok(r) => return Ok(r),
                Err(Some(ForwardError::Invalid { field, reason })) => {
                    return Err(Error::Invalid { field, reason })
                }
                Err(Some(ForwardError::Unavailable(m))) => return Err(Error::Unavailable(m)),
                // Nothing happened anywhere: wait for the leadership to settle, then retry.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    self.inner.await_leader_change(deadline).await
                }
                Err(_) => {
                    return Err(Error::Unavailable(
                        "no leader answered within 10 s; check that a majority of members is up (`micro cluster status`)".into(),
                    ))
                }
            }
        }
    }

    /// `Err(None)`: nothing was done (retry); `Err(Some(e))`: a final answer.
    async fn call_leader<P: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        payload: &P,
    ) -> Result<T, Option<ForwardError>> {
        let peer = self.inner.peer(addr).map_err(|_| None)?;
        let forward = matches!(method, Method::Forward);
        if forward {
            metrics::counter!("micro_forwarded_writes_total").increment(1);
            if let Some(ids) = crate::trace::current() {
                tracing::info!(request_id = %ids, leader = %addr, "forwarding a write to the leader");
            }
        }
        let started = std::time::Instant::now();
        match peer
            .call::<_, Result<T, ForwardError>>(method, payload, REQUEST_DEADLINE)
            .await
        {
            Ok(Ok(r)) => {
                if forward {
                    // The leader's proposal plus the hop there and back (see `batch`).
                    metrics::histogram!("micro_forward_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Ok(r)
            }
            Ok(Err(ForwardError::NotLeader { .. })) => Err(None),
            Ok(Err(e)) => Err(Some(e)),
            Err(CallError::Unreachable(_)) => Err(None),
            // The leader may have acted on it: never retry blindly, say the outcome is unknown.
            Err(e @ (CallError::Failed(_) | CallError::TimedOut(_))) => {
                Err(Some(ForwardError::Unavailable(format!(
                    "the request reached the leader but no answer came back ({e}); it may or may not have taken effect"
                ))))
            }
        }
    }

    /// Members, leader and progress, asking each member for its own view.
    pub async fn status(&self) -> Status {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let mut members = Vec::new();
        let calls = membership.nodes().map(|(id, node)| {
            let id = *id;
            let addr = node.addr.clone();
            let role = if voters.contains(&id) {
                "voter"
            } else {
                "learner"
            };
            let inner = self.inner.clone();
            async move {
                let mut s = if id == inner.cfg.node_id {
                    inner.self_status()
                } else {
                    match inner.peer(&addr) {
                        Ok(p) => p
                            .call::<_, MemberStatus>(Method::Info, &(), INFO_TIMEOUT)
                            .await
                            .unwrap_or_else(|_| MemberStatus {
                                id,
                                state: "unreachable".into(),
                                ..Default::default()
                            }),
                        Err(_) => MemberStatus {
                            id,
                            state: "unreachable".into(),
                            ..Default::default()
                        },
                    }
                };
                s.id = id;
                s.peer_address = addr;
                s.role = role.into();
                s
            }
        });
        for s in futures::future::join_all(calls).await {
            members.push(s);
        }
        let newest = members
            .iter()
            .map(|m: &MemberStatus| m.last_log_index)
            .max()
            .unwrap_or(0);
        for m in members.iter_mut() {
            if m.state != "unreachable" {
                m.lag = newest.saturating_sub(m.last_log_index);
            }
        }
        Status {
            node_id: self.id(),
            cluster_id: self.cluster_id(),
            leader: m.current_leader,
            term: m.current_term,
            members,
        }
    }

    /// Stops Raft, the peer server and background tasks.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for mut t in tasks {
            // Open peer connections keep a graceful server alive; do not wait on them forever.
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

impl crate::batch::Propose for Node {
    async fn propose(&self, cmds: Vec<Command>) -> Result<(u64, Vec<Outcome>), Error> {
        Node::propose(self, cmds).await
    }

    fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }
}

#[tonic::async_trait]
impl crate::peer::Handler for Inner {
    fn raft(&self) -> &Raft {
        &self.raft
    }
    fn is_leader(&self) -> bool {
        Inner::is_leader(self)
    }
    async fn propose_here(&self, cmds: Vec<Command>) -> Result<(u64, Vec<Outcome>), ForwardError> {
        Inner::propose_here(self, cmds).await
    }
    async fn read_index_here(&self) -> Result<u64, ForwardError> {
        Inner::read_index_here(self).await
    }
    async fn change_here(&self, op: MembershipOp) -> Result<(), ForwardError> {
        Inner::change_here(self, op).await
    }
    fn deliver(&self, d: &crate::broker::Delivery) -> BTreeSet<String> {
        self.broker.deliver(d)
    }
    fn self_status(&self) -> MemberStatus {
        Inner::self_status(self)
    }
    fn heard_from_leader(&self) {
        self.contact.heard()
    }
}

impl Inner {
    fn peer(&self, addr: &str) -> Result<Peer, String> {
        self.peers.get(addr)
    }

    /// Waits (bounded) for the leader to change or become known, instead of spinning.
    async fn await_leader_change(&self, deadline: tokio::time::Instant) {
        let mut rx = self.raft.metrics();
        let before = rx.borrow_and_update().current_leader;
        let until = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
        let _ = tokio::time::timeout_at(until, async {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                let m = rx.borrow_and_update();
                if m.current_leader.is_some() && m.current_leader != before {
                    return;
                }
            }
        })
        .await;
    }

    fn leader_hint(&self, leader_id: Option<u64>, node: Option<BasicNode>) -> ForwardError {
        let leader = match (leader_id, node) {
            (Some(id), Some(n)) => Some((id, n.addr)),
            _ => None,
        };
        ForwardError::NotLeader { leader }
    }

    /// Proposes on this node if it is the leader, stamping the leader's clock.
    pub(crate) async fn propose_here(
        &self,
        cmds: Vec<Command>,
    ) -> Result<(u64, Vec<Outcome>), ForwardError> {
        let commands = cmds.len();
        let req = Request {
            time_ms: now_ms(),
            cmds,
        };
        let started = std::time::Instant::now();
        let span = if crate::trace::spans_on() {
            let ids = crate::trace::current();
            tracing::info_span!(
                "propose",
                commands,
                request_id = ids.as_deref().unwrap_or(""),
                index = tracing::field::Empty
            )
        } else {
            tracing::Span::none()
        };
        crate::trace::timeline::stamp("propose.start");
        let written =
            tracing::Instrument::instrument(self.raft.client_write(req), span.clone()).await;
        crate::trace::timeline::stamp("propose.done");
        if let Ok(resp) = &written {
            span.record("index", resp.log_id.index);
        }
        match written {
            // A rejected command is an outcome of its own: the others in the entry stand.
            Ok(resp) => {
                // Append, replicate to a quorum (each fsyncs), commit and apply on the leader.
                metrics::histogram!("micro_proposal_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("micro_proposal_commands").record(commands as f64);
                if let Some(ids) = crate::trace::current() {
                    tracing::info!(request_id = %ids, index = resp.log_id.index, "write committed and applied");
                }
                Ok((resp.log_id.index, resp.data))
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// What a failed `client_write` tells the caller (a membership change's own rejection
    /// aside, which `change_here` answers as invalid input).
    fn write_error(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ForwardError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.leader_hint(f.leader_id, f.leader_node)
            }
            // Appended, then dropped by a new leader: it may still commit, so not a retry.
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
                ForwardError::Unavailable(
                    "leader changed; the write may or may not have been applied".into(),
                )
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ForwardError::Unavailable(e.to_string())
            }
            RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
                ForwardError::Unavailable(e.to_string())
            }
            RaftError::Fatal(e) => ForwardError::Unavailable(format!("raft stopped: {e}")),
        }
    }

    /// Whether this node believes it leads (a hint: Raft decides at proposal time).
    pub(crate) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.node_id)
    }

    /// The peer address of the leader, if this node knows one and it is another node.
    fn known_other_leader(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader.filter(|l| *l != self.cfg.node_id)?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// The leader as this node knows it, for a NotLeader answer.
    fn not_leader(&self) -> ForwardError {
        let m = self.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| (l, n.addr.clone()))
        });
        ForwardError::NotLeader { leader }
    }

    /// Executes a membership change if this node is the leader.
    pub(crate) async fn change_here(&self, op: MembershipOp) -> Result<(), ForwardError> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.cfg.node_id) {
            return Err(self.not_leader());
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let invalid = |reason: String| ForwardError::Invalid {
            field: "id".into(),
            reason,
        };
        // What the membership looks like once the change is in: the answer waits for this
        // node's metrics to show it, so the caller's next call (promote after add) is judged
        // by it rather than by a view from before.
        let settled = {
            // (node, a member afterwards, a voter afterwards if that is the point)
            let (id, member, voter) = match op {
                MembershipOp::AddLearner { id, .. } => (id, true, None),
                MembershipOp::Promote { id } => (id, true, Some(true)),
                MembershipOp::Remove { id } => (id, false, None),
            };
            move |m: &openraft::Membership<u64, BasicNode>| {
                m.get_node(&id).is_some() == member
                    && voter.is_none_or(|v| m.voter_ids().any(|x| x == id) == v)
            }
        };
        let res = match op {
            MembershipOp::AddLearner { id, addr } => {
                if id == 0 {
                    return Err(invalid("0 is reserved; number nodes from 1".into()));
                }
                if voters.contains(&id) {
                    return Err(invalid(format!("node {id} is already a voter")));
                }
                if let Some(n) = membership.get_node(&id) {
                    if n.addr == addr {
                        return Ok(());
                    }
                    return Err(invalid(format!(
                        "node {id} is already a member at {}; remove it first",
                        n.addr
                    )));
                }
                self.raft.add_learner(id, BasicNode::new(addr), false).await
            }
            MembershipOp::Promote { id } => {
                if voters.contains(&id) {
                    return Ok(());
                }
                if membership.get_node(&id).is_none() {
                    return Err(invalid(format!(
                        "node {id} is not a member; add it first with `micro cluster add {id} HOST:PORT`"
                    )));
                }
                let Some(matched) = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index)
                else {
                    return Err(invalid(format!(
                        "node {id} has not received any of the log yet; start it (with --join) and wait until it catches up"
                    )));
                };
                let behind = m.last_log_index.unwrap_or(0).saturating_sub(matched);
                if behind > PROMOTE_MAX_LAG {
                    return Err(invalid(format!(
                        "node {id} is {behind} entries behind the leader; wait until it catches up (see `micro cluster status`) and try again"
                    )));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            MembershipOp::Remove { id } => {
                if membership.get_node(&id).is_none() {
                    return Err(invalid(format!("node {id} is not a member")));
                }
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(invalid(format!(
                            "node {id} is the only voter; removing it would leave no cluster"
                        )));
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                }
            }
        };
        match res {
            Ok(_) => {
                // Bounded: the change is committed either way; a slow metrics update only
                // means the next call may see the old membership.
                let _ = self
                    .raft
                    .wait(Some(Duration::from_secs(2)))
                    .metrics(
                        |m| settled(m.membership_config.membership()),
                        "the membership change to show",
                    )
                    .await;
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(invalid(e.to_string()))
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// The read index, if this node is the leader and still has a quorum.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ForwardError> {
        let fut = self.raft.get_read_log_id(openraft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(PEER_TIMEOUT, fut).await {
            Err(_) => Err(ForwardError::Unavailable(
                "leader could not reach a quorum".into(),
            )),
            Ok(Ok((read, _applied))) => Ok(read.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(self.leader_hint(f.leader_id, f.leader_node))
            }
            // Heartbeat acks did not come back in time (a busy machine, a partition): nothing
            // was read, so the caller may retry until its deadline.
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e)))) => {
                tracing::debug!("read index: {e}");
                Err(ForwardError::NotLeader { leader: None })
            }
            Ok(Err(RaftError::Fatal(e))) => {
                Err(ForwardError::Unavailable(format!("raft stopped: {e}")))
            }
        }
    }

    pub(crate) fn self_status(&self) -> MemberStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        MemberStatus {
            id: self.cfg.node_id,
            peer_address: self.cfg.advertised_peer(),
            role: String::new(),
            state: state_name(m.state).into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            grpc_address: self.cfg.grpc_addr.clone(),
            http_address: self.cfg.http_addr.clone(),
            lag: 0,
        }
    }
}

/// Asks the cluster (through any member's peer address) to add this node as a learner,
/// following leader hints, until it succeeds or the node stops.
async fn join_cluster(inner: Arc<Inner>, mut addr: String, mut stop: watch::Receiver<bool>) {
    let op = MembershipOp::AddLearner {
        id: inner.cfg.node_id,
        addr: inner.cfg.advertised_peer(),
    };
    loop {
        let res = match inner.peer(&addr) {
            Ok(p) => p
                .call::<_, Result<(), ForwardError>>(Method::Membership, &op, REQUEST_DEADLINE)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match res {
            Ok(Ok(())) => {
                tracing::info!(
                    "joined as a learner; promote with `micro cluster promote {}` once it has caught up",
                    inner.cfg.node_id
                );
                return;
            }
            Ok(Err(ForwardError::NotLeader {
                leader: Some((_, a)),
            })) => {
                addr = a;
                continue;
            }
            Ok(Err(ForwardError::Invalid { reason, .. })) => {
                tracing::error!("cannot join: {reason}");
                return;
            }
            Ok(Err(e)) => tracing::warn!("join not accepted yet: {e:?}"),
            Err(e) => tracing::warn!("join: cannot reach {addr}: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// On every node, asks the election watchdog (`elect`) whether to campaign. On the leader,
/// proposes an empty entry when a record is due to expire and no other entry
/// would carry the clock forward, so expiry (and what it triggers) happens on time.
async fn ticker(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let timeouts = inner.cfg.election_timeout;
    let mut watchdog = crate::elect::Watchdog::new(timeouts);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leaderless =
            crate::elect::leaderless(&inner.raft, inner.cfg.node_id, &inner.contact, timeouts);
        if watchdog.due(leaderless, std::time::Instant::now()) {
            crate::elect::campaign(&inner.raft, &inner.contact).await;
        }
        if !inner.is_leader() {
            continue;
        }
        if matches!(micro_state::cluster_id(&*inner.db), Ok(None)) {
            let mut b = [0u8; 8];
            if getrandom::fill(&mut b).is_ok() {
                let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
                let _ = inner
                    .propose_here(vec![Command::Meta(meta::Cmd::SetClusterId(id))])
                    .await;
            }
        }
        let due = match micro_state::next_expiry(&*inner.db) {
            Ok(Some(at)) => at <= now_ms(),
            Ok(None) => false,
            Err(e) => {
                tracing::error!("reading the expiry index: {e}");
                false
            }
        };
        if due {
            if let Err(e) = inner.propose_here(Vec::new()).await {
                tracing::debug!("tick not proposed: {e:?}");
            }
        }
        // Small steps, several per tick when behind, so the history keeps up with heavy writes
        // while no single entry takes long to apply.
        for _ in 0..COMPACT_STEPS_PER_TICK {
            match compaction_step(&inner) {
                Ok(Some(revision)) => {
                    let cmd = Command::Meta(meta::Cmd::Compact { revision });
                    if let Err(e) = inner.propose_here(vec![cmd]).await {
                        tracing::debug!("compaction not proposed: {e:?}");
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading the change feed: {e}");
                    break;
                }
            }
        }
    }
}

/// Compaction commands the ticker proposes at most per tick (each waits for its commit).
const COMPACT_STEPS_PER_TICK: usize = 8;

/// The revision the leader should compact the change feed to next, if it holds more than the
/// configured number of revisions (with 10% slack, so compactions come in batches) or
/// revisions older than the configured age: one step of at most
/// [`history::MAX_COMPACT_CHANGES`] changes towards that target.
fn compaction_step(inner: &Inner) -> Result<Option<u64>, micro_state::StorageError> {
    let db = &*inner.db;
    let first = micro_state::compact_revision(db)?;
    let current = micro_state::revision(db)?;
    let keep = inner.cfg.history_revisions;
    let mut target = first;
    if keep > 0 && current.saturating_sub(first) > keep + keep / 10 {
        target = current - keep;
    }
    if let Some(age) = inner.cfg.history_age {
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        // Look at a bounded number of changes per tick; the rest on the next ticks.
        let (found, looked_to) =
            history::first_revision_since(db, cutoff, history::MAX_COMPACT_STEP as usize)?;
        target = target.max(found.unwrap_or(looked_to));
    }
    if target <= first {
        return Ok(None);
    }
    history::compact_step(db, first, target, history::MAX_COMPACT_CHANGES).map(Some)
}

#[cfg(test)]
mod snapshot_points {
    #[test]
    fn members_snapshot_at_different_points_and_node_1_on_the_interval() {
        let points: Vec<u64> = (1..=3)
            .map(|id| super::snapshot_interval(600, id))
            .collect();
        assert_eq!(points, vec![600, 700, 800]);
        assert_eq!(
            super::snapshot_interval(1, 3),
            1,
            "never below the interval"
        );
    }
}
