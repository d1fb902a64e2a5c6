//! The client side of the peer protocol: openraft's `RaftNetwork` over gRPC, plus the calls a
//! node makes to the leader (forwarded writes, read index) and to members (status).

use std::time::Duration;

use micro_proto::raft::peer_client::PeerClient;
use micro_proto::raft::{Chunk, Payload};
use micro_state::codec;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::machine::Snapshot;
use crate::{TypeConfig, Vote};

/// Metadata key that carries the cluster token on every peer call.
pub const TOKEN_HEADER: &str = "x-micro-cluster-token";
/// Peer messages may carry many entries of up to 1.5 MiB each.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// A connection to one peer. Cheap to clone: clones share the channel.
#[derive(Clone)]
pub struct Peer {
    client: PeerClient<Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// The `Forwards` stream to this peer, opened by the first forwarded write.
    forwards: std::sync::Arc<tokio::sync::Mutex<ForwardSlot>>,
}

/// Longest wait for a `Forwards` stream to open (a TCP connect and one round trip): a peer
/// that accepts connections but does not answer (a paused process) fails fast, and the writes
/// retry on the leader that answers.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed open, calls fail at once for this long instead of each waiting its own
/// [`OPEN_TIMEOUT`] in turn behind the slot's lock.
const OPEN_BACKOFF: Duration = Duration::from_millis(500);

/// The peer streams (see raft.proto).
#[derive(Clone, Copy)]
enum StreamKind {
    Replicate,
    Forwards,
}

/// The state of a peer's `Forwards` stream.
enum ForwardSlot {
    /// Not opened yet.
    Closed,
    /// The last open failed at this instant, for this reason.
    Failed(tokio::time::Instant, String),
    Open(std::sync::Arc<Mux>),
    /// The peer runs a version without `Forwards`: unary calls.
    Unsupported,
}

type Answer = tokio::sync::oneshot::Sender<Result<Vec<u8>, CallError>>;

/// An open peer stream: where requests go, and the answers.
type Opened = (
    tokio::sync::mpsc::Sender<Payload>,
    tonic::Streaming<Payload>,
);

/// Requests in flight on one `Forwards` stream, matched to their answers by id.
struct Mux {
    tx: tokio::sync::mpsc::Sender<Payload>,
    waiting: std::sync::Mutex<Waiting>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Waiting {
    /// Set by the reader when the stream ended; nothing may wait on it after that.
    closed: bool,
    answers: std::collections::HashMap<u64, Answer>,
}

impl Mux {
    fn is_closed(&self) -> bool {
        self.waiting.lock().expect("mux lock").closed
    }

    /// Sends one forwarded write and waits for its answer. Same errors as a unary call:
    /// `Unreachable` when nothing was sent, `Failed` when the leader may have acted on it.
    async fn call(&self, data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, rx) = tokio::sync::oneshot::channel();
        {
            let mut w = self.waiting.lock().expect("mux lock");
            if w.closed {
                return Err(CallError::Unreachable("the forwarding stream ended".into()));
            }
            w.answers.insert(id, answer);
        }
        let msg = Payload {
            data,
            id,
            request_id: crate::trace::current()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        };
        let forget = || self.waiting.lock().expect("mux lock").answers.remove(&id);
        crate::trace::timeline::stamp("forward.sent");
        if self.tx.send(msg).await.is_err() {
            forget();
            return Err(CallError::Unreachable("the forwarding stream ended".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Failed("the forwarding stream ended".into())),
            Err(_) => {
                forget();
                Err(CallError::TimedOut(timeout))
            }
        }
    }

    /// Reads answers until the stream ends, then fails whatever still waits: those requests
    /// reached the leader, which may have acted on them.
    async fn read(self: std::sync::Arc<Self>, mut rx: tonic::Streaming<Payload>) {
        let why = loop {
            match rx.message().await {
                Ok(Some(p)) => {
                    crate::trace::timeline::stamp("forward.answered");
                    let answer = self.waiting.lock().expect("mux lock").answers.remove(&p.id);
                    if let Some(a) = answer {
                        let _ = a.send(Ok(p.data));
                    }
                }
                Ok(None) => break "the leader closed the forwarding stream".to_string(),
                Err(status) => break format!("{}: {}", status.code(), status.message()),
            }
        };
        let answers = {
            let mut w = self.waiting.lock().expect("mux lock");
            w.closed = true;
            std::mem::take(&mut w.answers)
        };
        for (_, a) in answers {
            let _ = a.send(Err(CallError::Failed(why.clone())));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call never reached the peer (refused, no route): safe to retry elsewhere.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The call may or may not have been processed (reset, server error).
    #[error("peer call failed: {0}")]
    Failed(String),
    /// No answer in time: like `Failed`, it may or may not have been processed. Kept apart
    /// because a slow peer is not a gone one: Raft retries it at once instead of backing off.
    #[error("peer call timed out after {0:?}")]
    TimedOut(Duration),
}

impl Peer {
    pub fn new(addr: &str, token: &str) -> Result<Peer, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        let client = PeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let token = token
            .parse()
            .map_err(|_| "the cluster token must be printable ASCII".to_string())?;
        Ok(Peer {
            client,
            token,
            forwards: std::sync::Arc::new(tokio::sync::Mutex::new(ForwardSlot::Closed)),
        })
    }

    /// The open `Forwards` stream, opening it if needed; `Ok(None)` if the peer lacks it.
    async fn forwards(&self, timeout: Duration) -> Result<Option<std::sync::Arc<Mux>>, CallError> {
        let mut slot = self.forwards.lock().await;
        match &*slot {
            ForwardSlot::Open(m) if !m.is_closed() => return Ok(Some(m.clone())),
            ForwardSlot::Unsupported => return Ok(None),
            ForwardSlot::Failed(at, why) if at.elapsed() < OPEN_BACKOFF => {
                return Err(CallError::Unreachable(why.clone()))
            }
            _ => {}
        }
        let opened = self
            .open_stream(StreamKind::Forwards, 64, timeout.min(OPEN_TIMEOUT))
            .await;
        match opened {
            Ok(Some((tx, answers))) => {
                let mux = std::sync::Arc::new(Mux {
                    tx,
                    waiting: Default::default(),
                    next: std::sync::atomic::AtomicU64::new(1),
                });
                tokio::spawn(mux.clone().read(answers));
                *slot = ForwardSlot::Open(mux.clone());
                Ok(Some(mux))
            }
            Ok(None) => {
                *slot = ForwardSlot::Unsupported;
                Ok(None)
            }
            Err(why) => {
                *slot = ForwardSlot::Failed(tokio::time::Instant::now(), why.clone());
                Err(CallError::Unreachable(why))
            }
        }
    }

    /// Opens a peer stream with room for `capacity` requests queued; `Ok(None)` if the peer
    /// runs a version without it (UNIMPLEMENTED). Nothing is sent before it opens, so every
    /// failure (the `Err` reason) means unreachable. No grpc-timeout on the stream: it lives
    /// as long as its user, and each exchange on it has its own deadline.
    async fn open_stream(
        &self,
        kind: StreamKind,
        capacity: usize,
        timeout: Duration,
    ) -> Result<Option<Opened>, String> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut().insert(TOKEN_HEADER, self.token.clone());
        let mut c = self.client.clone();
        let open = async {
            match kind {
                StreamKind::Replicate => c.replicate(req).await,
                StreamKind::Forwards => c.forwards(req).await,
            }
        };
        match tokio::time::timeout(timeout, open).await {
            Err(_) => Err(format!("the stream did not open within {timeout:?}")),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Ok(Ok(resp)) => Ok(Some((tx, resp.into_inner()))),
        }
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(TOKEN_HEADER, self.token.clone());
        req.set_timeout(timeout);
        req
    }

    /// Calls one unary RPC with a bincode payload and decodes the reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        msg: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let data = codec::encode(msg);
        if matches!(method, Method::Forward) {
            if let Some(mux) = self.forwards(timeout).await? {
                let resp = mux.call(data, timeout).await?;
                return codec::decode(&resp)
                    .map_err(|e| CallError::Failed(format!("bad reply: {e}")));
            }
        }
        let mut req = self.request(
            Payload {
                data,
                ..Default::default()
            },
            timeout,
        );
        if matches!(method, Method::Forward) {
            if let Some(v) = crate::trace::current().and_then(|id| id.parse().ok()) {
                req.metadata_mut().insert(crate::trace::HEADER, v);
            }
        }
        let mut c = self.client.clone();
        let fut = async {
            match method {
                Method::AppendEntries => c.append_entries(req).await,
                Method::Vote => c.vote(req).await,
                Method::Forward => c.forward(req).await,
                Method::ReadIndex => c.read_index(req).await,
                Method::Info => c.info(req).await,
                Method::Membership => c.membership(req).await,
                Method::Broker => c.broker(req).await,
            }
        };
        let resp = match tokio::time::timeout(timeout, fut).await {
            Err(_) => return Err(CallError::TimedOut(timeout)),
            Ok(Err(status)) => return Err(classify(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        codec::decode(&resp.data).map_err(|e| CallError::Failed(format!("bad reply: {e}")))
    }

    /// Streams a whole snapshot to the peer in checksummed chunks.
    pub async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        timeout: Duration,
    ) -> Result<Result<SnapshotResponse<TypeConfig>, String>, CallError> {
        let meta = codec::encode(&(vote, snapshot.meta.clone()));
        let data = snapshot.snapshot;
        let mut chunks = vec![Chunk {
            meta,
            data: Vec::new(),
            crc: crc32fast::hash(&[]),
        }];
        for part in data.chunks(SNAPSHOT_CHUNK) {
            chunks.push(Chunk {
                meta: Vec::new(),
                data: part.to_vec(),
                crc: crc32fast::hash(part),
            });
        }
        let req = self.request(tokio_stream::iter(chunks), timeout);
        let mut c = self.client.clone();
        let resp = match tokio::time::timeout(timeout, c.snapshot(req)).await {
            Err(_) => return Err(CallError::TimedOut(timeout)),
            Ok(Err(status)) => return Err(classify(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        codec::decode(&resp.data).map_err(|e| CallError::Failed(format!("bad reply: {e}")))
    }
}

fn classify(status: tonic::Status) -> CallError {
    match status.code() {
        // tonic reports connect failures as Unavailable: nothing was sent.
        tonic::Code::Unavailable => CallError::Unreachable(status.message().to_string()),
        _ => CallError::Failed(format!("{}: {}", status.code(), status.message())),
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Method {
    AppendEntries,
    Vote,
    Forward,
    ReadIndex,
    Info,
    Membership,
    Broker,
}

/// One connection per peer address, shared by everything that talks to that peer.
///
/// openraft asks for a new client for every leadership check (each linearizable read), so
/// without sharing every read would open a TCP connection and an HTTP/2 session.
pub struct PeerPool {
    token: String,
    /// Member address → address to dial instead (see `NodeConfig::peer_routes`).
    routes: std::collections::BTreeMap<String, String>,
    peers: std::sync::Mutex<std::collections::HashMap<String, Peer>>,
}

impl PeerPool {
    pub fn new(token: String, routes: std::collections::BTreeMap<String, String>) -> Self {
        PeerPool {
            token,
            routes,
            peers: Default::default(),
        }
    }

    /// The shared connection to the member at `addr`.
    pub fn get(&self, addr: &str) -> Result<Peer, String> {
        let mut peers = self.peers.lock().expect("peer pool lock");
        if let Some(p) = peers.get(addr) {
            return Ok(p.clone());
        }
        let p = Peer::new(
            self.routes.get(addr).map_or(addr, String::as_str),
            &self.token,
        )?;
        peers.insert(addr.to_string(), p.clone());
        Ok(p)
    }
}

/// Creates [`RaftPeer`]s for openraft from the shared pool.
pub struct Network {
    pub pool: std::sync::Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> RaftPeer {
        RaftPeer {
            target,
            peer: self.pool.get(&node.addr),
            unary_only: false,
        }
    }

    /// Heartbeats are single-request streams every heartbeat interval (and on demand for
    /// linearizable reads): unary calls, not a `Replicate` stream opened and closed each time.
    async fn new_heartbeat_client(&mut self, target: u64, node: &BasicNode) -> RaftPeer {
        RaftPeer {
            target,
            peer: self.pool.get(&node.addr),
            unary_only: true,
        }
    }
}

/// AppendEntries requests a replication stream keeps on their way to one follower before it
/// waits for answers. openraft 0.10 sends the next request as soon as the leader has new
/// entries, without waiting for the previous answer; this bounds the entries in flight.
const REPLICATION_WINDOW: usize = 64;

/// How long a replication stream with requests on their way may go without an answer before
/// it is given up (and reopened by openraft). Generous: a follower busy with an fsync or a
/// snapshot answers late, and giving up resends everything in flight.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// openraft's view of one peer.
///
/// openraft keeps one client per replication task for the task's life and streams
/// AppendEntries through [`RaftNetworkV2::stream_append`]: requests go out over one
/// `Replicate` stream as openraft produces them (up to [`REPLICATION_WINDOW`] unanswered), and
/// the answers come back in order. Heartbeats, votes and leadership checks are unary calls.
pub struct RaftPeer {
    target: u64,
    peer: Result<Peer, String>,
    /// Unary calls only: a heartbeat client, or the peer answered UNIMPLEMENTED (a version
    /// without `Replicate`).
    unary_only: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(m: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&Msg(m.to_string())))
}

impl RaftPeer {
    async fn call<Req, Resp>(
        &self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let peer = self.peer.as_ref().map_err(unreachable)?;
        let res: Result<Resp, RaftError<TypeConfig>> = peer
            .call(method, req, option.hard_ttl())
            .await
            // Every transport failure counts as Unreachable, which makes openraft back off.
            // As a plain network error it retries at once: a peer that accepts connections and
            // drops them (a dying process, a proxy) was hit thousands of times a second.
            // Raft RPCs are idempotent, so nothing is lost by treating "no answer" this way.
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        // The peer's Raft stopped (shutting down): as good as gone.
        res.map_err(unreachable)
    }
}

/// What the leader's side of a `Replicate` stream tracks: the ids sent and not yet answered,
/// each with when it left (for the round-trip metric).
#[derive(Default)]
struct Unanswered {
    ids: std::collections::VecDeque<(u64, std::time::Instant)>,
    /// The request stream ended (openraft stopped the session) or the send failed.
    done: bool,
}

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let started = std::time::Instant::now();
        let entries = rpc.entries.len();
        let res = self.call(Method::AppendEntries, &rpc, &option).await;
        // Heartbeats carry no entries: only replication rounds say what a round costs.
        if entries > 0 {
            metrics::histogram!("micro_raft_append_entries_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        res
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<BoxStream<'s, RpcResult<StreamAppendResult<TypeConfig>>>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            use futures::StreamExt;
            if self.unary_only {
                return openraft::network::stream_append_sequential(self, input, option).await;
            }
            // The first request before the stream: openraft sleeps out its backoff after a
            // failed session inside its request stream, so opening first would redial a peer
            // that is down in a tight loop (thousands of times a second in a partition). And a
            // session with nothing to send opens nothing.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            let input = futures::stream::iter([first]).chain(input);
            let peer = self.peer.as_ref().map_err(unreachable)?.clone();
            let timeout = option.soft_ttl().max(OPEN_TIMEOUT);
            // Nothing is sent before the stream opens: any failure means unreachable; `None`
            // is a peer without `Replicate` (then unary calls).
            let opened = peer
                .open_stream(StreamKind::Replicate, REPLICATION_WINDOW, timeout)
                .await
                .map_err(unreachable)?;
            let Some((tx, answers)) = opened else {
                self.unary_only = true;
                return openraft::network::stream_append_sequential(self, input, option).await;
            };
            let unanswered = std::sync::Arc::new(std::sync::Mutex::new(Unanswered::default()));
            let window = std::sync::Arc::new(tokio::sync::Semaphore::new(REPLICATION_WINDOW));
            tokio::spawn(send_requests(input, tx, unanswered.clone(), window.clone()));
            let target = self.target;
            let state = Some((answers, unanswered, window));
            let out = futures::stream::unfold(state, move |state| async move {
                let (answers, unanswered, window) = state?;
                let (item, more) = next_answer(answers, &unanswered, target).await?;
                // An answer frees its request's place in the window.
                window.add_permits(1);
                Some((item, more.map(|a| (a, unanswered, window))))
            });
            Ok(Box::pin(out) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.call(Method::Vote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let peer = self
            .peer
            .as_ref()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&Msg(e.clone()))))?
            .clone();
        // A large snapshot takes longer than one heartbeat-sized TTL: allow a minute.
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        let send = peer.send_snapshot(vote, snapshot, timeout);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = send => match res {
                Err(e @ CallError::Unreachable(_)) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
                Ok(Err(remote)) => Err(StreamingError::Network(NetworkError::new(&Msg(remote)))),
                Ok(Ok(resp)) => Ok(resp),
            }
        }
    }
}

/// Sends openraft's requests down a `Replicate` stream as they come, numbered from 1, with at
/// most [`REPLICATION_WINDOW`] unanswered: the next is taken from openraft only when there is
/// room, so behind a slow follower openraft puts more entries in each request instead of
/// queueing requests.
async fn send_requests<S>(
    mut input: S,
    tx: tokio::sync::mpsc::Sender<Payload>,
    unanswered: std::sync::Arc<std::sync::Mutex<Unanswered>>,
    window: std::sync::Arc<tokio::sync::Semaphore>,
) where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    use futures::StreamExt;
    let mut id = 0;
    loop {
        let Ok(room) = window.acquire().await else {
            break;
        };
        room.forget();
        let Some(rpc) = input.next().await else {
            break;
        };
        id += 1;
        let data = codec::encode(&rpc);
        unanswered
            .lock()
            .expect("unanswered lock")
            .ids
            .push_back((id, std::time::Instant::now()));
        let msg = Payload {
            data,
            id,
            ..Default::default()
        };
        crate::trace::timeline::stamp("replicate.sent");
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    unanswered.lock().expect("unanswered lock").done = true;
}

/// The next answer on a `Replicate` stream, in request order, and the stream to read the one
/// after it from (none after an error: the session ends and openraft opens another). `None`
/// once openraft's requests ended and every one was answered: the session is over.
async fn next_answer(
    mut answers: tonic::Streaming<Payload>,
    unanswered: &std::sync::Mutex<Unanswered>,
    target: u64,
) -> Option<(
    RpcResult<StreamAppendResult<TypeConfig>>,
    Option<tonic::Streaming<Payload>>,
)> {
    let finished = || {
        let u = unanswered.lock().expect("unanswered lock");
        u.done && u.ids.is_empty()
    };
    let end = |e: RPCError<TypeConfig>| Some((Err(e), None));
    loop {
        if finished() {
            return None;
        }
        let waiting = !unanswered.lock().expect("unanswered lock").ids.is_empty();
        // A stream with requests on their way must answer within ANSWER_TIMEOUT; an idle one
        // (nothing sent) waits as long as it takes, looking again now and then.
        let msg = match tokio::time::timeout(ANSWER_TIMEOUT, answers.message()).await {
            Ok(m) => m,
            Err(_) if !waiting => continue,
            Err(_) => {
                return end(RPCError::Timeout(openraft::errors::Timeout {
                    action: openraft::RPCTypes::AppendEntries,
                    id: 0,
                    target,
                    timeout: ANSWER_TIMEOUT,
                }))
            }
        };
        let p = match msg {
            Ok(Some(p)) => p,
            // The peer ends its side after ours: fine once everything was answered.
            Ok(None) if finished() => return None,
            Ok(None) => return end(unreachable("replication stream closed by the peer")),
            Err(status) => return end(RPCError::Unreachable(Unreachable::new(&classify(status)))),
        };
        crate::trace::timeline::stamp("replicate.answered");
        let expected = unanswered.lock().expect("unanswered lock").ids.pop_front();
        let Some((_, sent)) = expected.filter(|(id, _)| *id == p.id) else {
            return end(unreachable(format!(
                "answer {} out of order on the replication stream",
                p.id
            )));
        };
        metrics::histogram!("micro_raft_append_entries_seconds")
            .record(sent.elapsed().as_secs_f64());
        let res =
            codec::decode::<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>>(&p.data);
        return match res {
            Ok(Ok(r)) => Some((Ok(r), Some(answers))),
            Ok(Err(fatal)) => end(unreachable(fatal)),
            Err(e) => end(unreachable(format!("bad reply: {e}"))),
        };
    }
}

#[cfg(test)]
mod tests {
    //! The peer streams against a scripted peer on a real socket: answers matched by id,
    //! a broken stream's calls reported as "may have happened", and older peers (no streams)
    //! served by unary calls.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use micro_proto::raft::peer_server::{Peer as PeerApi, PeerServer};
    use openraft::EntryPayload;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    type Answers =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<Payload, Status>> + Send + 'static>>;

    /// How the scripted peer behaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Script {
        /// Streams echo each request; a `Forwards` stream answers every 3 requests in reverse.
        Streams,
        /// The first `Forwards` stream ends after one request, unanswered; later ones echo.
        DropFirst,
        /// No streams (a version from before them): UNIMPLEMENTED.
        Old,
        /// Accepts `Forwards` and never answers (a paused process).
        Silent,
        /// `Replicate` answers nothing until three requests arrived, then those three in
        /// order (ids echoed), then ends the stream.
        HoldThree,
        /// `Replicate` answers its first request with another request's id.
        WrongId,
        /// Accepts `Replicate` streams and never answers.
        SilentReplicate,
    }

    #[derive(Clone)]
    struct Fake {
        script: Script,
        opened: Arc<AtomicUsize>,
        unary: Arc<AtomicUsize>,
        streamed: Arc<AtomicUsize>,
    }

    fn ok_append() -> Vec<u8> {
        let r: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> =
            Ok(AppendEntriesResponse::Success);
        codec::encode(&r)
    }

    /// A follower's answer on a `Replicate` stream: it holds the request's entries.
    fn stream_ok(request: &Payload) -> Payload {
        let rpc: AppendEntriesRequest<TypeConfig> = codec::decode(&request.data).unwrap();
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let r: Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>> = Ok(Ok(last));
        Payload {
            data: codec::encode(&r),
            id: request.id,
            ..Default::default()
        }
    }

    /// The scripted peer's answers, as they are sent on `rx`'s channel.
    fn answers(rx: tokio::sync::mpsc::Receiver<Result<Payload, Status>>) -> Response<Answers> {
        Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn echo(p: &Payload, id: u64) -> Payload {
        Payload {
            data: p.data.clone(),
            id,
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl PeerApi for Fake {
        async fn append_entries(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(Payload {
                data: ok_append(),
                ..Default::default()
            }))
        }

        type ReplicateStream = Answers;

        async fn replicate(
            &self,
            req: Request<Streaming<Payload>>,
        ) -> Result<Response<Answers>, Status> {
            if self.script == Script::Old {
                return Err(Status::unimplemented("no Replicate here"));
            }
            self.opened.fetch_add(1, Ordering::SeqCst);
            let streamed = self.streamed.clone();
            let mut input = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let script = self.script;
            tokio::spawn(async move {
                match script {
                    // Reads and never answers; `tx` lives as long as this task, so the stream
                    // stays open.
                    Script::SilentReplicate => while let Ok(Some(_)) = input.message().await {},
                    Script::WrongId => {
                        let Ok(Some(m)) = input.message().await else {
                            return;
                        };
                        let mut a = stream_ok(&m);
                        a.id += 6;
                        let _ = tx.send(Ok(a)).await;
                        while let Ok(Some(_)) = input.message().await {}
                    }
                    _ => {
                        let mut held = Vec::new();
                        while held.len() < 3 {
                            let Ok(Some(m)) = input.message().await else {
                                return;
                            };
                            streamed.fetch_add(1, Ordering::SeqCst);
                            held.push(m);
                        }
                        for m in &held {
                            if tx.send(Ok(stream_ok(m))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Ok(answers(rx))
        }

        async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(echo(req.get_ref(), 0)))
        }

        type ForwardsStream = Answers;

        async fn forwards(
            &self,
            req: Request<Streaming<Payload>>,
        ) -> Result<Response<Answers>, Status> {
            if self.script == Script::Old {
                return Err(Status::unimplemented("no Forwards here"));
            }
            let first = self.opened.fetch_add(1, Ordering::SeqCst) == 0;
            if self.script == Script::Silent {
                std::future::pending::<()>().await;
            }
            let drop_it = first && self.script == Script::DropFirst;
            let mut input = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok(Some(m)) = input.message().await {
                    if drop_it {
                        return; // ends the stream with the request unanswered
                    }
                    held.push(m);
                    if held.len() == 3 {
                        for m in held.drain(..).rev() {
                            let _ = tx.send(Ok(echo(&m, m.id))).await;
                        }
                    }
                }
            });
            Ok(answers(rx))
        }

        async fn vote(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            Err(Status::unimplemented("vote"))
        }
        async fn snapshot(
            &self,
            _: Request<Streaming<micro_proto::raft::Chunk>>,
        ) -> Result<Response<Payload>, Status> {
            Err(Status::unimplemented("snapshot"))
        }
        async fn read_index(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            Err(Status::unimplemented("read_index"))
        }
        async fn membership(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            Err(Status::unimplemented("membership"))
        }
        async fn broker(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            Err(Status::unimplemented("broker"))
        }
        async fn info(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            Err(Status::unimplemented("info"))
        }
    }

    async fn serve(script: Script) -> (Fake, Peer) {
        let fake = Fake {
            script,
            opened: Default::default(),
            unary: Default::default(),
            streamed: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = PeerServer::new(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (fake, Peer::new(&addr.to_string(), "t").unwrap())
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn forwarded_writes_get_their_own_answers_when_they_come_back_out_of_order() {
        let (fake, peer) = serve(Script::Streams).await;
        let call = |s: &'static str| {
            let peer = peer.clone();
            async move {
                peer.call::<String, String>(Method::Forward, &s.into(), T)
                    .await
            }
        };
        let (a, b, c) = tokio::join!(call("a"), call("b"), call("c"));
        assert_eq!(
            (a.unwrap(), b.unwrap(), c.unwrap()),
            ("a".into(), "b".into(), "c".into())
        );
        assert_eq!(
            fake.opened.load(Ordering::SeqCst),
            1,
            "one stream for all three"
        );
        assert_eq!(fake.unary.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_forward_cut_off_by_the_stream_may_have_happened_and_the_next_reopens() {
        let (fake, peer) = serve(Script::DropFirst).await;
        let first = peer
            .call::<String, String>(Method::Forward, &"x".into(), T)
            .await;
        // The leader got it and may have proposed it: never "unreachable" (which retries).
        assert!(matches!(first, Err(CallError::Failed(_))), "{first:?}");
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        let (a, b, c) = tokio::join!(
            peer.call::<String, String>(Method::Forward, &a, T),
            peer.call::<String, String>(Method::Forward, &b, T),
            peer.call::<String, String>(Method::Forward, &c, T),
        );
        assert_eq!(
            (a.unwrap(), b.unwrap(), c.unwrap()),
            ("a".into(), "b".into(), "c".into())
        );
        assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_older_peer_gets_unary_forwards() {
        let (fake, peer) = serve(Script::Old).await;
        for s in ["a", "b"] {
            let r = peer
                .call::<String, String>(Method::Forward, &s.into(), T)
                .await;
            assert_eq!(r.unwrap(), s);
        }
        assert_eq!(fake.unary.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_silent_leader_fails_forwards_as_unreachable_after_one_bounded_wait() {
        let (fake, peer) = serve(Script::Silent).await;
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        let (a, b, c) = tokio::join!(
            peer.call::<String, String>(Method::Forward, &a, T),
            peer.call::<String, String>(Method::Forward, &b, T),
            peer.call::<String, String>(Method::Forward, &c, T),
        );
        // Nothing was sent, so the writes are retried (not "may have happened"), and the two
        // that queued behind the first attempt did not each wait for their own.
        for r in [a, b, c] {
            assert!(matches!(r, Err(CallError::Unreachable(_))), "{r:?}");
        }
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
    }

    /// An AppendEntries carrying entries `from..=to` (none if `to < from`).
    fn append(from: u64, to: u64) -> AppendEntriesRequest<TypeConfig> {
        let leader = crate::LeaderId {
            term: 1,
            node_id: 1,
        };
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: (from > 1).then(|| crate::LogId::new(leader, from - 1)),
            entries: (from..=to)
                .map(|i| crate::Entry {
                    log_id: crate::LogId::new(leader, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    async fn raft_peer(script: Script) -> (Fake, RaftPeer) {
        let (fake, peer) = serve(script).await;
        let client = RaftPeer {
            target: 2,
            peer: Ok(peer),
            unary_only: false,
        };
        (fake, client)
    }

    /// The answers of one `stream_append` session over `input`, until the session ends.
    async fn answers_to<S>(
        client: &mut RaftPeer,
        input: S,
    ) -> Vec<RpcResult<StreamAppendResult<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        use futures::StreamExt;
        match client.stream_append(input, RPCOption::new(T)).await {
            Ok(answers) => answers.collect().await,
            Err(e) => vec![Err(e)],
        }
    }

    /// A session over `requests` that openraft keeps open after them (as a replication session
    /// waiting for new entries does).
    async fn session(
        client: &mut RaftPeer,
        requests: Vec<AppendEntriesRequest<TypeConfig>>,
    ) -> Vec<RpcResult<StreamAppendResult<TypeConfig>>> {
        use futures::StreamExt;
        let input = futures::stream::iter(requests).chain(futures::stream::pending());
        answers_to(client, Box::pin(input)).await
    }

    fn acked(r: &RpcResult<StreamAppendResult<TypeConfig>>) -> Option<u64> {
        match r {
            Ok(Ok(Some(l))) => Some(l.index),
            _ => None,
        }
    }

    #[tokio::test]
    async fn replication_sends_ahead_of_answers_and_reopens_the_stream_after_a_break() {
        let (fake, mut client) = raft_peer(Script::HoldThree).await;
        // The peer answers only once three requests are in: the client must send them without
        // waiting for answers. Then it ends the stream with the fourth unanswered.
        let reqs = vec![append(1, 2), append(3, 3), append(4, 6), append(7, 7)];
        let answers = session(&mut client, reqs).await;
        assert_eq!(answers.len(), 4, "{answers:?}");
        let acks: Vec<_> = answers[..3].iter().map(acked).collect();
        assert_eq!(acks, [Some(2), Some(3), Some(6)]);
        assert!(
            matches!(answers[3], Err(RPCError::Unreachable(_))),
            "{:?}",
            answers[3]
        );
        assert_eq!(fake.streamed.load(Ordering::SeqCst), 3);
        // openraft starts another session, which opens a new stream.
        let again = session(&mut client, vec![append(7, 7), append(8, 8), append(9, 9)]).await;
        assert_eq!(acked(&again[0]), Some(7));
        assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
        assert_eq!(fake.unary.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_session_whose_requests_ended_ends_cleanly_once_all_are_answered() {
        let (_fake, mut client) = raft_peer(Script::HoldThree).await;
        let input = futures::stream::iter(vec![append(1, 1), append(2, 2), append(3, 3)]);
        let answers = answers_to(&mut client, input).await;
        // Three answers and the end of the stream: no error after them (openraft's heartbeat
        // worker, for one, reads on to the end and reports anything more).
        let acks: Vec<_> = answers.iter().map(acked).collect();
        assert_eq!(acks, [Some(1), Some(2), Some(3)], "{answers:?}");
    }

    #[tokio::test]
    async fn a_session_opens_its_stream_only_with_a_request_to_send() {
        // openraft's backoff after a failed session is a sleep inside its request stream:
        // dialling before taking a request would redial a gone peer without pause.
        let (fake, mut client) = raft_peer(Script::HoldThree).await;
        let answers = answers_to(&mut client, futures::stream::empty()).await;
        assert!(answers.is_empty(), "{answers:?}");
        assert_eq!(fake.opened.load(Ordering::SeqCst), 0);
        let requests = vec![append(1, 1), append(2, 2), append(3, 3)];
        let answers = answers_to(&mut client, futures::stream::iter(requests)).await;
        let acks: Vec<_> = answers.iter().map(acked).collect();
        assert_eq!(acks, [Some(1), Some(2), Some(3)], "{answers:?}");
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_with_another_requests_id_ends_the_session() {
        let (_fake, mut client) = raft_peer(Script::WrongId).await;
        let answers = session(&mut client, vec![append(1, 1), append(2, 2)]).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            matches!(answers[0], Err(RPCError::Unreachable(_))),
            "{:?}",
            answers[0]
        );
    }

    #[tokio::test]
    async fn a_follower_that_stays_silent_times_out_the_session() {
        let (_fake, mut client) = raft_peer(Script::SilentReplicate).await;
        let answers = session(&mut client, vec![append(1, 1)]).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            matches!(answers[0], Err(RPCError::Timeout(_))),
            "{:?}",
            answers[0]
        );
    }

    #[tokio::test]
    async fn an_older_peer_is_replicated_to_by_unary_calls() {
        let (fake, mut client) = raft_peer(Script::Old).await;
        let input = futures::stream::iter(vec![append(1, 3), append(4, 3), append(4, 4)]);
        let answers = answers_to(&mut client, input).await;
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(
            answers.iter().all(|a| matches!(a, Ok(Ok(_)))),
            "{answers:?}"
        );
        assert_eq!(fake.unary.load(Ordering::SeqCst), 3);
        assert!(client.unary_only);
    }
}
