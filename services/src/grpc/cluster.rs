//! `cluster.Cluster`: membership and health.

use micro_cluster::Node;
use micro_proto::cluster as pb;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    node: Node,
}

impl ClusterService {
    pub fn server(node: Node) -> pb::cluster_server::ClusterServer<ClusterService> {
        pb::cluster_server::ClusterServer::new(ClusterService { node })
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.node.status().await;
        Ok(Response::new(pb::StatusResponse {
            leader: s.leader.unwrap_or(0),
            term: s.term,
            node_id: s.node_id,
            cluster_id: String::new(),
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
                })
                .collect(),
        }))
    }
}
