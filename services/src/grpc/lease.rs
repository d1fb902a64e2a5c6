//! `lease.Lease`: leases as etcd has them (grant, keepalive, revoke, time to live, list).

use micro_cluster::{now_ms, Node};
use micro_proto::lease as pb;
use micro_state::keys;
use micro_state::views::lease::{self as view, Leases};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::errors::{invalid, status};

pub struct LeaseService {
    node: Node,
}

impl LeaseService {
    pub fn server(node: Node) -> pb::lease_server::LeaseServer<LeaseService> {
        pb::lease_server::LeaseServer::new(LeaseService { node })
    }

    async fn run(&self, cmd: view::Cmd) -> Result<view::Out, Status> {
        let (_, out) = self.node.run::<Leases>(cmd).await.map_err(status)?;
        match out {
            view::Out::NotFound { id } => Err(not_found(id)),
            o => Ok(o),
        }
    }
}

/// `cmd` as `caller` may run it: grants make the lease the request namespace's; an account
/// other than an admin keeps alive and revokes only its namespace's leases.
pub(crate) fn on_behalf(caller: &Caller, cmd: view::Cmd) -> view::Cmd {
    if caller.admin && !matches!(cmd, view::Cmd::Grant { .. }) {
        return cmd;
    }
    view::Cmd::In {
        namespace: caller.namespace.clone(),
        cmd: Box::new(cmd),
    }
}

/// Whether `caller` may see or use lease `id` (attach a record or a lock to it): an admin
/// any, an account its namespace's.
pub(crate) fn may_use(node: &Node, caller: &Caller, id: u64) -> Result<bool, Status> {
    Ok(caller.admin
        || view::namespace(node.view(), id).map_err(|e| status(e.into()))? == caller.namespace)
}

/// Refuses a request naming (in `field`) a lease of another namespace, as if it did not exist.
pub(crate) fn check_use(node: &Node, caller: &Caller, field: &str, id: u64) -> Result<(), Status> {
    if id == 0 || may_use(node, caller, id)? {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("lease {id} not found (it expired or was revoked); grant a new one"),
    ))
}

fn not_found(id: u64) -> Status {
    Status::not_found(format!(
        "lease {id} not found (it expired or was revoked); grant a new one"
    ))
}

/// Whole seconds left until `expiry_ms`, rounded up.
fn seconds_left(expiry_ms: u64, now: u64) -> i64 {
    expiry_ms.saturating_sub(now).div_ceil(1000) as i64
}

fn secs(ms: u64) -> i64 {
    (ms / 1000) as i64
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn grant(
        &self,
        req: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let max = (view::MAX_TTL_MS / 1000) as i64;
        if !(1..=max).contains(&req.ttl) {
            return Err(invalid(
                "ttl",
                format!("is {}; a lease lives between 1 and {max} seconds", req.ttl),
            ));
        }
        let ttl_ms = req.ttl as u64 * 1000;
        let cmd = on_behalf(&caller, view::Cmd::Grant { id: req.id, ttl_ms });
        match self.run(cmd).await? {
            view::Out::Granted { id, ttl_ms } => Ok(Response::new(pb::GrantResponse {
                id,
                ttl: secs(ttl_ms),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn keep_alive(
        &self,
        req: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let caller = Caller::of(&req);
        let id = req.into_inner().id;
        match self
            .run(on_behalf(&caller, view::Cmd::KeepAlive { id }))
            .await?
        {
            view::Out::Kept { id, ttl_ms } => Ok(Response::new(pb::KeepAliveResponse {
                id,
                ttl: secs(ttl_ms),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = Caller::of(&req);
        let id = req.into_inner().id;
        match self
            .run(on_behalf(&caller, view::Cmd::Revoke { id }))
            .await?
        {
            view::Out::Revoked { keys, .. } => {
                Ok(Response::new(pb::RevokeResponse { deleted: keys }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn time_to_live(
        &self,
        req: Request<pb::TimeToLiveRequest>,
    ) -> Result<Response<pb::TimeToLiveResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        self.node.read_barrier(true).await.map_err(status)?;
        let now = now_ms();
        let lease = view::get_live(self.node.view(), req.id, now)
            .map_err(|e| status(e.into()))?
            .filter(|_| may_use(&self.node, &caller, req.id).unwrap_or(false))
            .ok_or_else(|| not_found(req.id))?;
        let mut attached = Vec::new();
        if req.keys {
            for owner in view::attached(self.node.view(), req.id).map_err(|e| status(e.into()))? {
                if let Some((database, table, key)) = keys::parse_store_key(&owner) {
                    attached.push(pb::AttachedKey {
                        database,
                        table,
                        key,
                    });
                }
            }
        }
        Ok(Response::new(pb::TimeToLiveResponse {
            id: req.id,
            ttl: seconds_left(lease.expiry_ms, now),
            granted_ttl: secs(lease.ttl_ms),
            keys: attached,
        }))
    }

    async fn leases(
        &self,
        req: Request<pb::LeasesRequest>,
    ) -> Result<Response<pb::LeasesResponse>, Status> {
        let caller = Caller::of(&req);
        self.node.read_barrier(true).await.map_err(status)?;
        let now = now_ms();
        let mut leases = Vec::new();
        for (id, l) in view::list(self.node.view()).map_err(|e| status(e.into()))? {
            // The request namespace's leases (an admin names another with Micro-Namespace).
            if l.expiry_ms <= now
                || view::namespace(self.node.view(), id).map_err(|e| status(e.into()))?
                    != caller.namespace
            {
                continue;
            }
            let keys = view::attached(self.node.view(), id)
                .map_err(|e| status(e.into()))?
                .len() as u64;
            leases.push(pb::LeaseStatus {
                id,
                ttl: seconds_left(l.expiry_ms, now),
                granted_ttl: secs(l.ttl_ms),
                keys,
            });
        }
        Ok(Response::new(pb::LeasesResponse { leases }))
    }
}
