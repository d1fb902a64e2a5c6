//! The server side of the peer protocol. Every call must carry the cluster token.

use std::sync::Arc;

use micro_proto::raft::peer_server::{Peer, PeerServer};
use micro_proto::raft::{Chunk, Payload};
use micro_state::codec;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{BasicNode, Snapshot, SnapshotMeta, Vote};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::network::{MAX_MESSAGE, TOKEN_HEADER};
use crate::wire::{ForwardError, MemberStatus, MembershipOp};
use crate::{Raft, TypeConfig};

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
}

pub(crate) struct PeerService<H: Handler> {
    node: Arc<H>,
    /// The node's write batcher: forwarded writes join the leader's own batches.
    proposer: tokio::sync::mpsc::UnboundedSender<crate::batch::Pending>,
}

fn reply<T: Serialize>(v: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload {
        data: codec::encode(v),
    }))
}

fn decode<T: serde::de::DeserializeOwned>(p: &Payload) -> Result<T, Status> {
    codec::decode(&p.data).map_err(|e| Status::invalid_argument(format!("bad payload: {e}")))
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The peer service wrapped in the token check.
pub(crate) fn server<H: Handler>(
    node: Arc<H>,
    proposer: tokio::sync::mpsc::UnboundedSender<crate::batch::Pending>,
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
    let svc = PeerServer::new(PeerService { node, proposer })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(svc, check)
}

#[tonic::async_trait]
impl<H: Handler> Peer for PeerService<H> {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        reply(&self.node.raft().append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc: VoteRequest<u64> = decode(req.get_ref())?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn snapshot(&self, req: Request<Streaming<Chunk>>) -> Result<Response<Payload>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): (Vote<u64>, SnapshotMeta<u64, BasicNode>) = codec::decode(&first.meta)
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
            snapshot: Box::new(data),
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
        if let Some(ids) = &ids {
            tracing::info!(request_id = %ids, "write forwarded by a follower");
        }
        let span = if crate::trace::spans_on() {
            tracing::info_span!("forwarded_write", request_id = ids.as_deref().unwrap_or(""))
        } else {
            tracing::Span::none()
        };
        tracing::Instrument::instrument(crate::trace::scoped(ids, self.forward_here(req)), span)
            .await
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
    /// A follower's write: proposed here through the batcher if this node leads.
    async fn forward_here(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let cmds: Vec<micro_state::Command> = decode(req.get_ref())?;
        if !self.node.is_leader() {
            // Raft answers with the leader it knows, for the follower to retry there.
            let res: Result<(u64, Vec<micro_state::Outcome>), ForwardError> =
                self.node.propose_here(cmds).await;
            return reply(&res);
        }
        let res: Result<(u64, Vec<micro_state::Outcome>), ForwardError> =
            match crate::batch::submit(&self.proposer, cmds).await {
                Ok(r) => Ok(r),
                Err(crate::Error::Invalid { field, reason }) => {
                    Err(ForwardError::Invalid { field, reason })
                }
                Err(e) => Err(ForwardError::Unavailable(e.to_string())),
            };
        reply(&res)
    }
}
