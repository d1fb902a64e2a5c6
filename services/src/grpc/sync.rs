//! `sync.Sync`: locks and elections with fencing tokens (see `micro_state::views::lock`).
//! Waiting for a lock or for leadership is a watch on the lock's state, not polling.

use std::time::Duration;

use futures::StreamExt;
use micro_cluster::{Node, WatchEvent, WatchSpec};
use micro_proto::sync as pb;
use micro_state::views::lease::{self as lease_view, Leases};
use micro_state::views::lock::{self as view, Fence, Locks};
use micro_state::{keys, Command};
use tonic::{Request, Response, Status};

use crate::auth::{names, Caller};
use crate::errors::{invalid, status};

/// Wraps `cmd` in its fence (a lock of the caller's namespace), if the request carries one.
pub fn fenced(
    caller: &Caller,
    cmd: Command,
    fence: Option<pb::Fence>,
    field: &str,
) -> Result<Command, Status> {
    // A planted bug for the fault harness (`micro-jepsen --planted-fence-bug`) to prove that
    // its lock checker notices stale writes: the fence is dropped, so a holder that lost its
    // lock writes anyway. It exists only in debug builds; release binaries have no such switch.
    #[cfg(debug_assertions)]
    if std::env::var_os("MICRO_PLANTED_BUG_FENCE").is_some() {
        return Ok(cmd);
    }
    match fence {
        None => Ok(cmd),
        Some(f) => {
            if f.lock.is_empty() || f.token == 0 {
                return Err(invalid(
                    &format!("{field}fence"),
                    "needs the lock's name and the token Lock returned",
                ));
            }
            Ok(Command::Fenced(
                Fence {
                    lock: caller.scoped(&format!("{field}fence.lock"), &f.lock)?,
                    token: f.token,
                },
                Box::new(cmd),
            ))
        }
    }
}

pub struct SyncService {
    node: Node,
}

impl SyncService {
    pub fn server(node: Node) -> pb::sync_server::SyncServer<SyncService> {
        pb::sync_server::SyncServer::new(SyncService { node })
    }
}

/// Leaves the queue if the waiting call goes away before it holds the lock.
struct Waiting {
    node: Node,
    name: String,
    token: u64,
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.armed {
            let (node, name, token) = (self.node.clone(), self.name.clone(), self.token);
            tokio::spawn(async move {
                let _ = node.run::<Locks>(view::Cmd::Release { name, token }).await;
            });
        }
    }
}

impl SyncService {
    /// The lease to hold the lock with: the one given, or a new one of `ttl` seconds.
    async fn lease(&self, caller: &Caller, lease: u64, ttl: i64) -> Result<u64, Status> {
        if lease != 0 {
            super::lease::check_use(&self.node, caller, "lease", lease)?;
            return Ok(lease);
        }
        let max = (lease_view::MAX_TTL_MS / 1000) as i64;
        if !(1..=max).contains(&ttl) {
            return Err(invalid(
                "ttl",
                format!("is {ttl}: give a lease, or a ttl of 1 to {max} seconds"),
            ));
        }
        match self
            .node
            .run::<Leases>(super::lease::on_behalf(
                caller,
                lease_view::Cmd::Grant {
                    id: 0,
                    ttl_ms: ttl as u64 * 1000,
                },
            ))
            .await
            .map_err(status)?
        {
            (_, lease_view::Out::Granted { id, .. }) => Ok(id),
            (_, other) => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Queues for `name` and waits until it holds it (or `wait_ms` passes).
    async fn acquire(
        &self,
        name: String,
        lease: u64,
        value: Vec<u8>,
        wait_ms: u64,
    ) -> Result<u64, Status> {
        let cmd = view::Cmd::Acquire {
            name: name.clone(),
            lease,
            value,
        };
        let (_, out) = self.node.run::<Locks>(cmd).await.map_err(status)?;
        let view::Out::Queued { token, held } = out else {
            return Err(Status::internal(format!("unexpected outcome {out:?}")));
        };
        if held {
            return Ok(token);
        }
        let mut guard = Waiting {
            node: self.node.clone(),
            name: name.clone(),
            token,
            armed: true,
        };
        // Every change of the holder after our acquire, in order: one says we hold it.
        let spec = WatchSpec {
            key: keys::lock_meta_key(&name),
            prefix: false,
            from_revision: token + 1,
            progress_every: None,
        };
        let mut rx = self.node.watch(spec).await.map_err(status)?;
        let deadline =
            (wait_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(wait_ms));
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(Ok(WatchEvent::Changes { changes, .. })) => {
                        for c in changes {
                            let Some(v) = c.value else { continue };
                            let m: view::Meta = micro_state::codec::decode(&v)
                                .map_err(|e| Status::internal(e.to_string()))?;
                            if m.holder == token {
                                guard.armed = false;
                                return Ok(token);
                            }
                        }
                    }
                    Some(Ok(WatchEvent::Progress { .. })) => {}
                    Some(Err(e)) => return Err(status(e)),
                    None => return Err(Status::unavailable("the node is shutting down")),
                },
                _ = async { tokio::time::sleep_until(deadline.expect("set")).await }, if deadline.is_some() => {
                    let holder = view::meta(self.node.view(), &name)
                        .map(|m| m.holder)
                        .unwrap_or_default();
                    let name = names::shown(&name);
                    return Err(Status::deadline_exceeded(format!(
                        "lock {name:?} is still held (by token {holder}) after {wait_ms} ms; gave up the place in the queue"
                    )));
                }
                _ = check.tick() => {
                    // Our lease ended while we waited: the place in the queue is gone.
                    let queued = view::is_queued(self.node.view(), &name, token)
                        .map_err(|e| status(e.into()))?;
                    if !queued && view::meta(self.node.view(), &name).map_err(|e| status(e.into()))?.holder != token {
                        guard.armed = false;
                        let name = names::shown(&name);
                        return Err(Status::aborted(format!(
                            "lease {lease} ended while waiting for lock {name:?}; keep it alive while waiting"
                        )));
                    }
                }
            }
        }
    }

    /// Lock and Campaign: queue under a lease (given, or granted for `ttl`) and wait to hold.
    async fn hold(
        &self,
        caller: &Caller,
        name: &str,
        lease: u64,
        ttl: i64,
        value: Vec<u8>,
        wait_ms: u64,
    ) -> Result<(u64, u64), Status> {
        let name = stored_name(caller, name)?;
        let lease = self.lease(caller, lease, ttl).await?;
        let token = self.acquire(name, lease, value, wait_ms).await?;
        Ok((token, lease))
    }

    /// Unlock and Resign: leave the queue (promoting the next waiter if this one held it).
    async fn release(&self, caller: &Caller, name: &str, token: u64) -> Result<(), Status> {
        let name = stored_name(caller, name)?;
        let cmd = view::Cmd::Release { name, token };
        self.node.run::<Locks>(cmd).await.map_err(status)?;
        Ok(())
    }

    /// The holder of the lock stored as `name`.
    fn leader(&self, name: &str) -> Result<pb::LeaderResponse, Status> {
        let m = view::meta(self.node.view(), name).map_err(|e| status(e.into()))?;
        Ok(pb::LeaderResponse {
            name: names::shown(name).to_string(),
            token: m.holder,
            value: m.value,
            revision: micro_state::revision(self.node.view()).map_err(|e| status(e.into()))?,
        })
    }
}

/// The stored name of a lock or election the caller names.
fn stored_name(caller: &Caller, name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    caller.scoped("name", name)
}

type ObserveStream = super::feed::ResponseStream<pb::LeaderResponse>;

#[tonic::async_trait]
impl pb::sync_server::Sync for SyncService {
    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let (token, lease) = self
            .hold(
                &caller,
                &req.name,
                req.lease,
                req.ttl,
                Vec::new(),
                req.wait_ms,
            )
            .await?;
        Ok(Response::new(pb::LockResponse {
            name: req.name,
            token,
            lease,
        }))
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        self.release(&caller, &req.name, req.token).await?;
        Ok(Response::new(pb::UnlockResponse {}))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = Caller::of(&req);
        self.node.read_barrier(true).await.map_err(status)?;
        let mut locks = Vec::new();
        for (name, m) in view::list(self.node.view()).map_err(|e| status(e.into()))? {
            let Some(shown) = caller.owns(&name) else {
                continue;
            };
            let waiters = view::waiters(self.node.view(), &name).map_err(|e| status(e.into()))?;
            let lease = waiters
                .iter()
                .find(|(t, _)| *t == m.holder)
                .map_or(0, |(_, w)| w.lease);
            locks.push(pb::LockStatus {
                name: shown.to_string(),
                token: m.holder,
                lease,
                waiting: waiters.len().saturating_sub(1) as u64,
            });
        }
        Ok(Response::new(pb::ListResponse { locks }))
    }

    async fn campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let (token, lease) = self
            .hold(
                &caller,
                &req.name,
                req.lease,
                req.ttl,
                req.value,
                req.wait_ms,
            )
            .await?;
        Ok(Response::new(pb::CampaignResponse {
            name: req.name,
            token,
            lease,
        }))
    }

    async fn proclaim(
        &self,
        req: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let cmd = view::Cmd::Proclaim {
            name: stored_name(&caller, &req.name)?,
            token: req.token,
            value: req.value,
        };
        self.node.run::<Locks>(cmd).await.map_err(status)?;
        Ok(Response::new(pb::ProclaimResponse {}))
    }

    async fn leader(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let caller = Caller::of(&req);
        let name = stored_name(&caller, &req.into_inner().name)?;
        self.node.read_barrier(true).await.map_err(status)?;
        Ok(Response::new(self.leader(&name)?))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<pb::ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let stored = stored_name(&caller, &req.name)?;
        // Without a start, the current leader comes first, then every change after it.
        let (first, from) = if req.from_revision == 0 {
            self.node.read_barrier(true).await.map_err(status)?;
            let now = self.leader(&stored)?;
            let from = now.revision + 1;
            (Some(now), from)
        } else {
            (None, req.from_revision)
        };
        let spec = WatchSpec {
            key: keys::lock_meta_key(&stored),
            prefix: false,
            from_revision: from,
            progress_every: None,
        };
        let rx = self.node.watch(spec).await.map_err(status)?;
        let name = req.name.clone();
        let changes = super::feed::per_change(rx, move |revision, c| {
            let v = c.value?;
            Some(
                micro_state::codec::decode::<view::Meta>(&v)
                    .map(|m| pb::LeaderResponse {
                        name: name.clone(),
                        token: m.holder,
                        value: m.value,
                        revision,
                    })
                    .map_err(super::feed::corrupt),
            )
        });
        let stream = futures::stream::iter(first.map(Ok)).chain(changes);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        self.release(&caller, &req.name, req.token).await?;
        Ok(Response::new(pb::ResignResponse {}))
    }
}
