//! The client side of the peer protocol: openraft's `RaftNetwork` over gRPC, plus the calls a
//! node makes to the leader (forwarded writes, read index) and to members (status).

use std::time::Duration;

use micro_proto::raft::peer_client::PeerClient;
use micro_proto::raft::{Chunk, Payload};
use micro_state::codec;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::TypeConfig;

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
    ) -> Result<
        Option<(
            tokio::sync::mpsc::Sender<Payload>,
            tonic::Streaming<Payload>,
        )>,
        String,
    > {
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

    /// Opens a replication stream (`Replicate`); `Ok(None)` when the peer runs a version
    /// without it, which is then replicated to by unary calls.
    pub async fn open_replication(
        &self,
        timeout: Duration,
    ) -> Result<Option<ReplicationStream>, CallError> {
        // One message in flight: openraft 0.9 waits for each answer before the next request.
        let opened = self
            .open_stream(StreamKind::Replicate, 1, timeout)
            .await
            .map_err(CallError::Unreachable)?;
        Ok(opened.map(|(tx, rx)| ReplicationStream::new(tx, rx)))
    }

    /// Streams a whole snapshot to the peer in checksummed chunks.
    pub async fn send_snapshot(
        &self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        timeout: Duration,
    ) -> Result<Result<SnapshotResponse<u64>, String>, CallError> {
        let meta = codec::encode(&(vote, snapshot.meta.clone()));
        let data = *snapshot.snapshot;
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

/// The leader's end of a `Replicate` stream to one follower: one request, then its answer.
///
/// Requests carry increasing ids that the peer echoes, so after a request was given up on
/// (timed out, or the caller's future dropped) its late answer is recognised and skipped
/// instead of being taken for the next request's: an old `Success` read as the answer to a
/// longer request would make the leader count entries the follower does not have.
pub struct ReplicationStream {
    tx: tokio::sync::mpsc::Sender<Payload>,
    rx: tonic::Streaming<Payload>,
    /// The id of the last request sent.
    sent: u64,
    /// The last request sent has had its answer.
    answered: bool,
    /// The peer echoes ids (versions before the ids answer 0): only then can the stream
    /// outlive a request that was not answered.
    echoes_ids: bool,
}

impl ReplicationStream {
    fn new(tx: tokio::sync::mpsc::Sender<Payload>, rx: tonic::Streaming<Payload>) -> Self {
        ReplicationStream {
            tx,
            rx,
            sent: 0,
            answered: true,
            echoes_ids: false,
        }
    }

    /// Whether the stream can carry another request: an unanswered one's late answer could
    /// not be told apart from the next one's unless the peer echoes ids.
    pub fn usable(&self) -> bool {
        self.answered || self.echoes_ids
    }

    /// Sends one bincode request and waits for its answer, skipping late answers to earlier
    /// requests. After an error other than [`CallError::TimedOut`] the stream is broken: drop
    /// it and open another.
    pub async fn exchange(
        &mut self,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let fut = async {
            let id = self.sent + 1;
            self.tx
                .send(Payload {
                    data,
                    id,
                    ..Default::default()
                })
                .await
                .map_err(|_| CallError::Failed("replication stream closed".into()))?;
            self.sent = id;
            self.answered = false;
            loop {
                match self.rx.message().await {
                    Ok(Some(p)) if p.id == id => {
                        self.answered = true;
                        self.echoes_ids = true;
                        return Ok(p.data);
                    }
                    // A peer from before the ids: the stream carries one request at a time.
                    Ok(Some(p)) if p.id == 0 && !self.echoes_ids => {
                        self.answered = true;
                        return Ok(p.data);
                    }
                    // The late answer to a request given up on.
                    Ok(Some(p)) if p.id != 0 && p.id < id => continue,
                    Ok(Some(p)) => {
                        return Err(CallError::Failed(format!(
                            "answer {} to request {id} on the replication stream",
                            p.id
                        )))
                    }
                    Ok(None) => {
                        return Err(CallError::Failed(
                            "replication stream closed by the peer".into(),
                        ))
                    }
                    Err(status) => return Err(classify(status)),
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(CallError::TimedOut(timeout)),
            Ok(r) => r,
        }
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
            stream: None,
            unary_only: false,
            timeouts: 0,
        }
    }
}

/// openraft's view of one peer.
///
/// openraft keeps one client per replication task for the task's life, and makes a fresh one
/// for every heartbeat and leadership check. A client opens a replication stream with its
/// first AppendEntries that carries entries (only replication tasks send those) and sends all
/// its later AppendEntries over it: a message on an open HTTP/2 stream instead of a unary
/// call's new stream, headers, trailers and server task per request. Fresh clients (heartbeats,
/// votes) stay unary, so a read's leadership check never pays for opening a stream.
pub struct RaftPeer {
    target: u64,
    peer: Result<Peer, String>,
    stream: Option<ReplicationStream>,
    /// The peer answered UNIMPLEMENTED (an older version): unary calls for this client.
    unary_only: bool,
    /// Replication requests in a row that got no answer in time.
    timeouts: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl RaftPeer {
    async fn call<Req, Resp>(
        &self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let peer = self
            .peer
            .as_ref()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e.clone()))))?;
        let res: Result<Resp, RaftError<u64>> = peer
            .call(method, req, option.hard_ttl())
            .await
            // Every transport failure counts as Unreachable, which makes openraft back off.
            // As a plain network error it retries at once: a peer that accepts connections and
            // drops them (a dying process, a proxy) was hit thousands of times a second.
            // Raft RPCs are idempotent, so nothing is lost by treating "no answer" this way.
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unreachable(m: String) -> RPCError<u64, BasicNode, RaftError<u64>> {
    RPCError::Unreachable(Unreachable::new(&Msg(m)))
}

impl RaftPeer {
    /// AppendEntries over this client's replication stream, opened on first use; unary when
    /// the peer has no such stream.
    ///
    /// A request the follower does not answer in time is a `Timeout` for openraft, which
    /// sends it again at once: a follower slowed for a moment (its disk or CPU busy with a
    /// snapshot, a loaded machine) catches up as soon as it answers. As `Unreachable`, openraft
    /// would stop replicating to it for 500 ms, and if the other follower was slow at the same
    /// time every write waited those 500 ms. A second timeout in a row is `Unreachable`: a
    /// peer that stays silent (paused, cut off) is backed off like a gone one.
    async fn append_streamed(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // openraft drops the call at hard_ttl; finish by soft_ttl so the stream's state is known.
        let deadline = tokio::time::Instant::now() + option.soft_ttl();
        if self.stream.as_ref().is_some_and(|s| !s.usable()) {
            self.stream = None;
        }
        if self.stream.is_none() {
            let peer = self.peer.as_ref().map_err(|e| unreachable(e.clone()))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match peer.open_replication(left).await {
                Ok(Some(s)) => self.stream = Some(s),
                Ok(None) => {
                    self.unary_only = true;
                    return self.call(Method::AppendEntries, rpc, option).await;
                }
                // As for unary calls: every transport failure counts as Unreachable.
                Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            }
        }
        let stream = self.stream.as_mut().expect("opened above");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = stream
            .exchange(codec::encode(rpc), left)
            .await
            .and_then(|bytes| {
                codec::decode::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(&bytes)
                    .map_err(|e| CallError::Failed(format!("bad reply: {e}")))
            });
        match answer {
            Ok(res) => {
                self.timeouts = 0;
                res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Err(CallError::TimedOut(timeout)) if self.timeouts == 0 => {
                self.timeouts = 1;
                Err(RPCError::Timeout(openraft::error::Timeout {
                    action: openraft::RPCTypes::AppendEntries,
                    id: rpc.vote.leader_id().voted_for().unwrap_or_default(),
                    target: self.target,
                    timeout,
                }))
            }
            Err(e) => {
                self.timeouts = 0;
                self.stream = None;
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let started = std::time::Instant::now();
        let entries = rpc.entries.len();
        let streamed = !self.unary_only && (entries > 0 || self.stream.is_some());
        let res = if streamed {
            self.append_streamed(&rpc, &option).await
        } else {
            self.call(Method::AppendEntries, &rpc, &option).await
        };
        // Heartbeats carry no entries: only replication rounds say what a round costs.
        if entries > 0 {
            metrics::histogram!("micro_raft_append_entries_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        res
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::Vote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
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

#[cfg(test)]
mod tests {
    //! The peer streams against a scripted peer on a real socket: answers matched by id,
    //! a broken stream's calls reported as "may have happened", and older peers (no streams)
    //! served by unary calls.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use micro_proto::raft::peer_server::{Peer as PeerApi, PeerServer};
    use openraft::{CommittedLeaderId, Entry, EntryPayload};
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
        /// The first `Replicate` stream answers its first request at once, its second
        /// (`Conflict`) only after the third arrives, then the third (`Success`); ids echoed,
        /// or 0 as before the ids.
        LateSecond { echo_ids: bool },
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
        let r: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            Ok(AppendEntriesResponse::Success);
        codec::encode(&r)
    }

    fn conflict_append() -> Vec<u8> {
        let r: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            Ok(AppendEntriesResponse::Conflict);
        codec::encode(&r)
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
            let first = self.opened.fetch_add(1, Ordering::SeqCst) == 0;
            let streamed = self.streamed.clone();
            let mut input = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let script = self.script;
            tokio::spawn(async move {
                match script {
                    // Reads and never answers; `tx` lives as long as this task, so the stream
                    // stays open.
                    Script::SilentReplicate => while let Ok(Some(_)) = input.message().await {},
                    Script::LateSecond { echo_ids } if first => {
                        let id = |m: &Payload| if echo_ids { m.id } else { 0 };
                        let Ok(Some(m)) = input.message().await else {
                            return;
                        };
                        let p = Payload {
                            data: ok_append(),
                            id: id(&m),
                            ..Default::default()
                        };
                        let _ = tx.send(Ok(p)).await;
                        let Ok(Some(a)) = input.message().await else {
                            return;
                        };
                        let Ok(Some(b)) = input.message().await else {
                            return;
                        };
                        streamed.fetch_add(2, Ordering::SeqCst);
                        for (m, data) in [(a, conflict_append()), (b, ok_append())] {
                            let p = Payload {
                                data,
                                id: id(&m),
                                ..Default::default()
                            };
                            let _ = tx.send(Ok(p)).await;
                        }
                        while let Ok(Some(_)) = input.message().await {}
                    }
                    // Answers two requests, then ends the stream.
                    _ => {
                        for _ in 0..2 {
                            let Ok(Some(_)) = input.message().await else {
                                return;
                            };
                            streamed.fetch_add(1, Ordering::SeqCst);
                            let a = Payload {
                                data: ok_append(),
                                ..Default::default()
                            };
                            if tx.send(Ok(a)).await.is_err() {
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

    fn append(entries: u64) -> AppendEntriesRequest<TypeConfig> {
        let leader = CommittedLeaderId::new(1, 1);
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=entries)
                .map(|i| Entry {
                    log_id: openraft::LogId::new(leader, i),
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
            stream: None,
            unary_only: false,
            timeouts: 0,
        };
        (fake, client)
    }

    #[tokio::test]
    async fn replication_goes_over_one_stream_and_reopens_it_after_a_break() {
        let (fake, mut client) = raft_peer(Script::Streams).await;
        let opt = || RPCOption::new(T);
        // A heartbeat of a fresh client stays unary.
        assert!(client.append_entries(append(0), opt()).await.is_ok());
        assert_eq!(fake.unary.load(Ordering::SeqCst), 1);
        // Entries open the stream; the next (even empty) request uses it.
        assert!(client.append_entries(append(2), opt()).await.is_ok());
        assert!(client.append_entries(append(0), opt()).await.is_ok());
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
        assert_eq!(fake.streamed.load(Ordering::SeqCst), 2);
        // The peer ended the stream after two: this request fails and openraft retries it.
        let cut = client.append_entries(append(1), opt()).await;
        assert!(matches!(cut, Err(RPCError::Unreachable(_))), "{cut:?}");
        assert!(client.append_entries(append(1), opt()).await.is_ok());
        assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
        assert_eq!(fake.unary.load(Ordering::SeqCst), 1);
    }

    fn is_success(r: &Result<AppendEntriesResponse<u64>, impl std::fmt::Debug>) -> bool {
        matches!(r, Ok(AppendEntriesResponse::Success))
    }

    #[tokio::test]
    async fn a_late_answer_is_skipped_not_taken_for_the_next_requests() {
        let (fake, mut client) = raft_peer(Script::LateSecond { echo_ids: true }).await;
        let short = RPCOption::new(Duration::from_millis(200));
        assert!(is_success(
            &client.append_entries(append(1), short.clone()).await
        ));
        // No answer in time: a Timeout (openraft sends again at once), not Unreachable (which
        // would stop replication to this follower for 500 ms).
        let slow = client.append_entries(append(1), short.clone()).await;
        assert!(matches!(slow, Err(RPCError::Timeout(_))), "{slow:?}");
        // The first request's late answer (Conflict) arrives first on the same stream: it
        // must not be read as the answer to this one.
        let next = client.append_entries(append(2), RPCOption::new(T)).await;
        assert!(is_success(&next), "{next:?}");
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "the stream was kept");
    }

    #[tokio::test]
    async fn after_a_timeout_a_peer_without_ids_gets_a_new_stream() {
        let (fake, mut client) = raft_peer(Script::LateSecond { echo_ids: false }).await;
        let short = RPCOption::new(Duration::from_millis(200));
        assert!(is_success(
            &client.append_entries(append(1), short.clone()).await
        ));
        let slow = client.append_entries(append(1), short).await;
        assert!(matches!(slow, Err(RPCError::Timeout(_))), "{slow:?}");
        // Answers without ids cannot be told apart: the old stream is dropped, a new one
        // carries the request.
        let next = client.append_entries(append(2), RPCOption::new(T)).await;
        assert!(is_success(&next), "{next:?}");
        assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_follower_that_stays_silent_is_backed_off_after_the_second_timeout() {
        let (_fake, mut client) = raft_peer(Script::SilentReplicate).await;
        let short = || RPCOption::new(Duration::from_millis(100));
        let first = client.append_entries(append(1), short()).await;
        assert!(matches!(first, Err(RPCError::Timeout(_))), "{first:?}");
        let second = client.append_entries(append(1), short()).await;
        assert!(
            matches!(second, Err(RPCError::Unreachable(_))),
            "{second:?}"
        );
        // And the count starts again: a follower that answers late once is retried at once.
        let third = client.append_entries(append(1), short()).await;
        assert!(matches!(third, Err(RPCError::Timeout(_))), "{third:?}");
    }

    #[tokio::test]
    async fn an_older_peer_is_replicated_to_by_unary_calls() {
        let (fake, mut client) = raft_peer(Script::Old).await;
        for n in [3, 0, 1] {
            assert!(client
                .append_entries(append(n), RPCOption::new(T))
                .await
                .is_ok());
        }
        assert_eq!(fake.unary.load(Ordering::SeqCst), 3);
        assert!(client.unary_only);
    }
}
