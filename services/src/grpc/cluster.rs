//! `cluster.Cluster`: membership, health and snapshots.

use std::pin::Pin;

use futures::Stream;
use micro_cluster::{MembershipOp, Node};
use micro_proto::cluster as pb;
use tonic::{Request, Response, Status};

use crate::errors::{invalid, status};

pub struct ClusterService {
    node: Node,
}

impl ClusterService {
    pub fn server(node: Node) -> pb::cluster_server::ClusterServer<ClusterService> {
        pb::cluster_server::ClusterServer::new(ClusterService { node })
    }

    async fn status_response(&self) -> pb::StatusResponse {
        let s = self.node.status().await;
        pb::StatusResponse {
            leader: s.leader.unwrap_or(0),
            term: s.term,
            node_id: s.node_id,
            cluster_id: s.cluster_id,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    peer_address: m.peer_address,
                    role: m.role,
                    state: m.state,
                    term: m.term,
                    last_log_index: m.last_log_index,
                    applied_index: m.applied_index,
                    grpc_address: m.grpc_address,
                    http_address: m.http_address,
                    lag: m.lag,
                })
                .collect(),
        }
    }

    async fn change(&self, op: MembershipOp) -> Result<Response<pb::StatusResponse>, Status> {
        self.node.change_membership(op).await.map_err(status)?;
        Ok(Response::new(self.status_response().await))
    }
}

const CHUNK: usize = 1024 * 1024;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.status_response().await))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let req = req.into_inner();
        if req.id == 0 {
            return Err(invalid("id", "must be 1 or more"));
        }
        if !req.peer_address.contains(':') {
            return Err(invalid("peer_address", "must be HOST:PORT"));
        }
        self.change(MembershipOp::AddLearner {
            id: req.id,
            addr: req.peer_address,
        })
        .await
    }

    async fn promote_member(
        &self,
        req: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.change(MembershipOp::Promote {
            id: req.into_inner().id,
        })
        .await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.change(MembershipOp::Remove {
            id: req.into_inner().id,
        })
        .await
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let bytes = self.node.snapshot().await.map_err(status)?;
        let total = bytes.len() as u64;
        let chunks: Vec<Result<pb::SnapshotChunk, Status>> = bytes
            .chunks(CHUNK)
            .map(|c| {
                Ok(pb::SnapshotChunk {
                    total_bytes: total,
                    data: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}
