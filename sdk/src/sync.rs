//! Locks and leader elections with fencing tokens (`sync.Sync`).
//!
//! ```no_run
//! # async fn demo(client: micro::Client) -> Result<(), micro::Error> {
//! let guard = client.sync().lock("jobs/nightly", std::time::Duration::from_secs(10)).await?;
//! // Writes fenced with the guard's token are refused once someone else holds the lock.
//! let fence = guard.fence();
//! # let _ = fence;
//! guard.unlock().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::Transport as Channel;
use micro_proto::sync as pb;
use pb::sync_client::SyncClient;
use tokio::sync::watch;

use crate::{Error, Leases};

/// Locks and elections.
#[derive(Clone)]
pub struct Sync {
    client: SyncClient<Channel>,
    leases: Leases,
}

/// A held lock (or leadership): its lease is kept alive in the background until it is
/// unlocked or dropped. Released on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard {
    client: SyncClient<Channel>,
    leases: Leases,
    name: String,
    token: u64,
    lease: u64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Guard {
    /// The fencing token: strictly greater than every earlier holder's.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease that holds the lock.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fence to attach to writes made under this lock.
    pub fn fence(&self) -> pb::Fence {
        pb::Fence {
            lock: self.name.clone(),
            token: self.token,
        }
    }

    /// Resolves when the lock is lost (its lease could not be kept alive).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Whether the lock has been lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops renewing the lease, as a paused process would: the lock is lost once the TTL
    /// runs out, and fenced writes are refused once another holder takes it. For fault
    /// injection (the jepsen `lock` workload's pause-the-holder); applications have no use
    /// for it.
    #[doc(hidden)]
    pub fn stop_keep_alive(&self) {
        self.keepalive.abort();
    }

    /// Releases the lock (and ends its lease).
    pub async fn unlock(mut self) -> Result<(), Error> {
        self.released = true;
        self.keepalive.abort();
        let req = pb::UnlockRequest {
            name: self.name.clone(),
            token: self.token,
        };
        self.client.clone().unlock(req).await?;
        let _ = self.leases.revoke(self.lease).await;
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.keepalive.abort();
        if !self.released {
            let (mut client, leases) = (self.client.clone(), self.leases.clone());
            let (name, token, lease) = (self.name.clone(), self.token, self.lease);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.unlock(pb::UnlockRequest { name, token }).await;
                    let _ = leases.revoke(lease).await;
                });
            }
        }
    }
}

/// Aborts a task when dropped. The keepalive of a queued lock call is one: if the call is
/// cancelled (a client timeout) its lease must run out rather than be kept alive forever,
/// holding a lock the server may have granted after all.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `lease` alive every third of `ttl`; flags `lost` when it is gone (or unreachable for
/// longer than its TTL).
fn keep_alive(
    leases: Leases,
    lease: u64,
    ttl: Duration,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let every = (ttl / 3).max(Duration::from_millis(200));
    let task = tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match leases.keep_alive(lease).await {
                Ok(_) => last_ok = tokio::time::Instant::now(),
                Err(e) if e.is_not_found() => break,
                // A failover: retry until the TTL would have run out anyway.
                Err(_) if last_ok.elapsed() < ttl => continue,
                Err(_) => break,
            }
        }
        let _ = tx.send(true);
    });
    (rx, task)
}

/// A running observation of an election: one [`pb::LeaderResponse`] per change of leader (or
/// of its value).
pub struct Observer {
    stream: tonic::Streaming<pb::LeaderResponse>,
}

impl Observer {
    /// The next leader state; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<pb::LeaderResponse>, Error> {
        Ok(self.stream.message().await?)
    }
}

impl Sync {
    pub(crate) fn new(channel: Channel) -> Self {
        Sync {
            client: SyncClient::new(channel.clone()),
            leases: Leases::new(channel),
        }
    }

    async fn guard(&self, name: &str, token: u64, lease: u64, ttl: Duration) -> Guard {
        let (lost, keepalive) = keep_alive(self.leases.clone(), lease, ttl);
        Guard {
            client: self.client.clone(),
            leases: self.leases.clone(),
            name: name.to_string(),
            token,
            lease,
            lost,
            keepalive,
            released: false,
        }
    }

    /// Waits until `name` is held (by a new lease of `ttl`, kept alive by the guard).
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<Guard, Error> {
        self.lock_within(name, ttl, None).await
    }

    /// As [`Sync::lock`], giving up after `wait` (`DEADLINE_EXCEEDED`).
    pub async fn lock_within(
        &self,
        name: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Guard, Error> {
        let lease = self.leases.grant(ttl).await?;
        // Keep the lease alive while queued, too.
        let waiting = AbortOnDrop(keep_alive(self.leases.clone(), lease, ttl).1);
        let req = pb::LockRequest {
            name: name.to_string(),
            lease,
            ttl: 0,
            wait_ms: wait.map_or(0, |w| w.as_millis().max(1) as u64),
        };
        let res = self.client.clone().lock(req).await;
        drop(waiting);
        match res {
            Ok(r) => Ok(self.guard(name, r.into_inner().token, lease, ttl).await),
            Err(e) => {
                let _ = self.leases.revoke(lease).await;
                Err(e.into())
            }
        }
    }

    /// Waits until this candidate leads election `name` with `value`.
    pub async fn campaign(
        &self,
        name: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Guard, Error> {
        let lease = self.leases.grant(ttl).await?;
        let waiting = AbortOnDrop(keep_alive(self.leases.clone(), lease, ttl).1);
        let req = pb::CampaignRequest {
            name: name.to_string(),
            value,
            lease,
            ttl: 0,
            wait_ms: 0,
        };
        let res = self.client.clone().campaign(req).await;
        drop(waiting);
        match res {
            Ok(r) => Ok(self.guard(name, r.into_inner().token, lease, ttl).await),
            Err(e) => {
                let _ = self.leases.revoke(lease).await;
                Err(e.into())
            }
        }
    }

    /// The leader proclaims a new value.
    pub async fn proclaim(&self, guard: &Guard, value: Vec<u8>) -> Result<(), Error> {
        let req = pb::ProclaimRequest {
            name: guard.name.clone(),
            token: guard.token,
            value,
        };
        self.client.clone().proclaim(req).await?;
        Ok(())
    }

    /// The current leader of `name` (token 0: nobody).
    pub async fn leader(&self, name: &str) -> Result<pb::LeaderResponse, Error> {
        Ok(self
            .client
            .clone()
            .leader(pb::LeaderRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner())
    }

    /// The current leader of `name`, then every change.
    pub async fn observe(&self, name: &str) -> Result<Observer, Error> {
        let stream = self
            .client
            .clone()
            .observe(pb::ObserveRequest {
                name: name.to_string(),
                from_revision: 0,
            })
            .await?
            .into_inner();
        Ok(Observer { stream })
    }

    /// Every held lock.
    pub async fn list(&self) -> Result<Vec<pb::LockStatus>, Error> {
        Ok(self
            .client
            .clone()
            .list(pb::ListRequest {})
            .await?
            .into_inner()
            .locks)
    }
}
