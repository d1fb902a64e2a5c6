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
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call never reached the peer (refused, no route): safe to retry elsewhere.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The call may or may not have been processed (timeout, reset, server error).
    #[error("peer call failed: {0}")]
    Failed(String),
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
        Ok(Peer { client, token })
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
        let mut req = self.request(
            Payload {
                data: codec::encode(msg),
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
            Err(_) => return Err(CallError::Failed(format!("timed out after {timeout:?}"))),
            Ok(Err(status)) => return Err(classify(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        codec::decode(&resp.data).map_err(|e| CallError::Failed(format!("bad reply: {e}")))
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
            Err(_) => return Err(CallError::Failed(format!("timed out after {timeout:?}"))),
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
        }
    }
}

/// openraft's view of one peer.
pub struct RaftPeer {
    target: u64,
    peer: Result<Peer, String>,
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
            .map_err(|e| match e {
                CallError::Unreachable(m) | CallError::Failed(m) => {
                    RPCError::Unreachable(Unreachable::new(&Msg(m)))
                }
            })?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
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
        let res = self.call(Method::AppendEntries, &rpc, &option).await;
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
                Err(CallError::Unreachable(m)) => Err(StreamingError::Unreachable(Unreachable::new(&Msg(m)))),
                Err(CallError::Failed(m)) => Err(StreamingError::Network(NetworkError::new(&Msg(m)))),
                Ok(Err(remote)) => Err(StreamingError::Network(NetworkError::new(&Msg(remote)))),
                Ok(Ok(resp)) => Ok(resp),
            }
        }
    }
}
