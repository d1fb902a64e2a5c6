//! The server side of the peer protocol. Every call must carry the cluster token.

use std::sync::Arc;

use micro_proto::raft::peer_server::{Peer, PeerServer};
use micro_proto::raft::{Chunk, Payload};
use micro_state::codec;
use openraft::errors::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, VoteRequest};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::machine::Snapshot;
use crate::network::{MAX_MESSAGE, TOKEN_HEADER};
use crate::wire::{ForwardError, MemberStatus, MembershipOp};
use crate::{Raft, SnapshotMeta, TypeConfig, Vote};

/// What the peer server asks of the node it serves. A trait so this module does not depend
/// on the node (which starts the server).
#[tonic::async_trait]
pub(crate) trait Handler: Send + Sync + 'static {
    fn raft(&self) -> &Raft;
    /// Whether this node believes it leads.
    fn is_leader(&self) -> bool;
    /// Proposes on this node (not the leader: Raft answers with the leader it knows).
    async fn propose_here(
        &self,
        cmds: Vec<micro_state::Command>,
    ) -> Result<(u64, Vec<micro_state::Outcome>), ForwardError>;
    async fn read_index_here(&self) -> Result<u64, ForwardError>;
    async fn change_here(&self, op: MembershipOp) -> Result<(), ForwardError>;
    fn deliver(&self, d: &crate::broker::Delivery) -> std::collections::BTreeSet<String>;
    fn self_status(&self) -> MemberStatus;
    /// A leader of the current term reached this node (see `elect`).
    fn heard_from_leader(&self);
}

/// Answers an AppendEntries, noting when it came from a current leader.
async fn append<H: Handler>(
    node: &H,
    rpc: AppendEntriesRequest<TypeConfig>,
) -> Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> {
    let res = node.raft().append_entries(rpc).await;
    if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        node.heard_from_leader();
    }
    res
}

pub(crate) struct PeerService<H: Handler> {
    node: Arc<H>,
    /// Turns true when the node stops: long-lived streams end then, so that the server's
    /// graceful shutdown is not held open by them.
    stop: tokio::sync::watch::Receiver<bool>,
    /// The node's write batcher: forwarded writes join the leader's own batches.
    queue: crate::batch::Queue,
}

/// The answers of a peer stream (`Replicate`, `Forwards`).
type Answers =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Payload, Status>> + Send + 'static>>;

impl<H: Handler> Clone for PeerService<H> {
    fn clone(&self) -> Self {
        PeerService {
            node: self.node.clone(),
            stop: self.stop.clone(),
            queue: self.queue.clone(),
        }
    }
}

fn reply<T: Serialize>(v: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload {
        data: codec::encode(v),
        ..Default::default()
    }))
}

fn decode<T: serde::de::DeserializeOwned>(p: &Payload) -> Result<T, Status> {
    codec::decode(&p.data).map_err(|e| Status::invalid_argument(format!("bad payload: {e}")))
}

/// Serves one peer stream: `start` turns each request into the future of its answer (an error
/// there ends the stream with it), and up to `in_flight` answers are worked on at once, sent
/// as each is ready (with 1: in request order). Everything runs in the response stream itself,
/// no task or channel per message. The stream ends when the peer closes it or the node stops,
/// so it never holds the server's graceful shutdown open.
fn serve_stream<F, Fut>(
    input: Streaming<Payload>,
    stop: tokio::sync::watch::Receiver<bool>,
    in_flight: usize,
    start: F,
) -> Answers
where
    F: Fn(Payload) -> Result<Fut, Status> + Send + 'static,
    Fut: std::future::Future<Output = Payload> + Send + 'static,
{
    use futures::{FutureExt, StreamExt};
    let requests = futures::stream::unfold((input, stop), |(mut input, mut stop)| async move {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            m = input.message() => m,
        };
        match msg {
            Ok(Some(m)) => Some((Ok(m), (input, stop))),
            Ok(None) => None,
            Err(status) => Some((Err(status), (input, stop))),
        }
    });
    let answers = requests
        .map(move |m| match m.and_then(&start) {
            Ok(answer) => answer.map(Ok).left_future(),
            Err(status) => futures::future::ready(Err(status)).right_future(),
        })
        .buffer_unordered(in_flight);
    Box::pin(answers)
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The peer service wrapped in the token check.
pub(crate) fn server<H: Handler>(
    node: Arc<H>,
    stop: tokio::sync::watch::Receiver<bool>,
    queue: crate::batch::Queue,
    token: String,
) -> tonic::service::interceptor::InterceptedService<
    PeerServer<PeerService<H>>,
    impl tonic::service::Interceptor + Clone,
> {
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        match req.metadata().get(TOKEN_HEADER) {
            Some(t) if same(t.as_bytes(), token.as_bytes()) => Ok(req),
            Some(_) => Err(Status::permission_denied(
                "wrong cluster token: start every node with the same --cluster-token",
            )),
            None => Err(Status::unauthenticated(
                "peer calls need the cluster token (x-micro-cluster-token)",
            )),
        }
    };
    let svc = PeerServer::new(PeerService { node, stop, queue })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(svc, check)
}

#[tonic::async_trait]
impl<H: Handler> Peer for PeerService<H> {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        reply(&append(&*self.node, rpc).await)
    }

    type ReplicateStream = Answers;

    /// AppendEntries requests from one leader's replication task, pipelined: openraft takes
    /// each as it arrives (`Raft::stream_append`) and the answers go back in request order,
    /// each with its request's id.
    async fn replicate(
        &self,
        req: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        use futures::StreamExt;
        let node = self.node.clone();
        let ids = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let failed: Arc<std::sync::Mutex<Option<Status>>> = Default::default();
        let requests = {
            let (ids, failed) = (ids.clone(), failed.clone());
            let stop = self.stop.clone();
            futures::stream::unfold((req.into_inner(), stop), move |(mut input, mut stop)| {
                let (ids, failed) = (ids.clone(), failed.clone());
                async move {
                    let msg = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return None,
                        m = input.message() => m,
                    };
                    let rpc = match msg {
                        Ok(Some(m)) => {
                            decode::<AppendEntriesRequest<TypeConfig>>(&m).map(|rpc| (m.id, rpc))
                        }
                        Ok(None) => return None,
                        Err(status) => Err(status),
                    };
                    match rpc {
                        Ok((id, rpc)) => {
                            crate::trace::timeline::stamp("replicate.received");
                            ids.lock().expect("ids lock").push_back(id);
                            Some((rpc, (input, stop)))
                        }
                        Err(status) => {
                            *failed.lock().expect("failed lock") = Some(status);
                            None
                        }
                    }
                }
            })
        };
        let answers = node.raft().stream_append(requests).map(move |res| {
            let id = ids
                .lock()
                .expect("ids lock")
                .pop_front()
                .unwrap_or_default();
            if matches!(&res, Ok(r) if !matches!(r, Err(StreamAppendError::HigherVote(_)))) {
                node.heard_from_leader();
            }
            crate::trace::timeline::stamp("replicate.answering");
            Ok(Payload {
                data: codec::encode(&res),
                id,
                ..Default::default()
            })
        });
        // A request that did not decode ends the stream with its error, after the answers to
        // the requests before it.
        let tail = futures::stream::iter(std::iter::from_fn(move || {
            failed.lock().expect("failed lock").take().map(Err)
        }));
        Ok(Response::new(Box::pin(answers.chain(tail))))
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn snapshot(&self, req: Request<Streaming<Chunk>>) -> Result<Response<Payload>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): (Vote, SnapshotMeta) = codec::decode(&first.meta)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot metadata: {e}")))?;
        let mut data = Vec::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.message().await? {
            n += 1;
            if crc32fast::hash(&chunk.data) != chunk.crc {
                return Err(Status::data_loss(format!(
                    "snapshot chunk {n} is corrupt: crc mismatch"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let res = self
            .node
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        reply(&res)
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let ids: Option<std::sync::Arc<str>> = req
            .metadata()
            .get(crate::trace::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(Into::into);
        let cmds = decode(req.get_ref())?;
        reply(&self.forwarded(cmds, ids).await)
    }

    type ForwardsStream = Answers;

    /// Forwarded writes from one follower, several at a time; each answer goes out as soon as
    /// its entry is applied, with its request's id.
    async fn forwards(
        &self,
        req: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::ForwardsStream>, Status> {
        let this = self.clone();
        let answers = serve_stream(req.into_inner(), self.stop.clone(), 64, move |msg| {
            crate::trace::timeline::stamp("forward.received");
            let cmds = decode(&msg)?;
            let ids = (!msg.request_id.is_empty()).then(|| msg.request_id.as_str().into());
            let this = this.clone();
            Ok(async move {
                let answer = this.forwarded(cmds, ids).await;
                crate::trace::timeline::stamp("forward.answering");
                Payload {
                    data: codec::encode(&answer),
                    id: msg.id,
                    ..Default::default()
                }
            })
        });
        Ok(Response::new(answers))
    }

    async fn read_index(&self, _req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let res: Result<u64, ForwardError> = self.node.read_index_here().await;
        reply(&res)
    }

    async fn membership(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let op: MembershipOp = decode(req.get_ref())?;
        let res: Result<(), ForwardError> = self.node.change_here(op).await;
        reply(&res)
    }
    async fn broker(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let d: crate::broker::Delivery = decode(req.get_ref())?;
        reply(&self.node.deliver(&d))
    }

    async fn info(&self, _req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.node.self_status())
    }
}

impl<H: Handler> PeerService<H> {
    /// A follower's write (traced under the client's request id(s), if any).
    async fn forwarded(
        &self,
        cmds: Vec<micro_state::Command>,
        ids: Option<std::sync::Arc<str>>,
    ) -> Result<(u64, Vec<micro_state::Outcome>), ForwardError> {
        if let Some(ids) = &ids {
            tracing::info!(request_id = %ids, "write forwarded by a follower");
        }
        let span = if crate::trace::spans_on() {
            tracing::info_span!("forwarded_write", request_id = ids.as_deref().unwrap_or(""))
        } else {
            tracing::Span::none()
        };
        tracing::Instrument::instrument(crate::trace::scoped(ids, self.forward_here(cmds)), span)
            .await
    }

    /// Proposed here through the batcher if this node leads (directly when nothing else is
    /// on its way: see `batch`).
    async fn forward_here(
        &self,
        cmds: Vec<micro_state::Command>,
    ) -> Result<(u64, Vec<micro_state::Outcome>), ForwardError> {
        if !self.node.is_leader() {
            // Raft answers with the leader it knows, for the follower to retry there.
            return self.node.propose_here(cmds).await;
        }
        if let Some(_slot) = self.queue.idle_slot(true) {
            return self.node.propose_here(cmds).await;
        }
        match crate::batch::submit(&self.queue, cmds).await {
            Ok(r) => Ok(r),
            Err(crate::Error::Invalid { field, reason }) => {
                Err(ForwardError::Invalid { field, reason })
            }
            Err(e) => Err(ForwardError::Unavailable(e.to_string())),
        }
    }
}
