//! Leases: grant, keep alive, revoke. Store records written with a lease are deleted with it.

use std::time::Duration;

use crate::Transport as Channel;
use micro_proto::lease as pb;
use pb::lease_client::LeaseClient;

use crate::Error;

/// Lease operations.
#[derive(Clone)]
pub struct Leases {
    client: LeaseClient<Channel>,
}

impl Leases {
    pub(crate) fn new(channel: Channel) -> Self {
        Leases {
            client: LeaseClient::new(channel),
        }
    }

    /// Grants a lease of `ttl` (whole seconds, rounded up; at least 1 s); returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<u64, Error> {
        self.grant_id(0, ttl).await
    }

    /// Grants a lease with a chosen id (0: the cluster picks).
    pub async fn grant_id(&self, id: u64, ttl: Duration) -> Result<u64, Error> {
        let ttl = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let req = pb::GrantRequest { ttl, id };
        Ok(self.client.clone().grant(req).await?.into_inner().id)
    }

    /// Restarts the lease's TTL; returns the TTL it has again. `Err` with `is_not_found()`
    /// once the lease has expired or was revoked.
    pub async fn keep_alive(&self, id: u64) -> Result<Duration, Error> {
        let resp = self
            .client
            .clone()
            .keep_alive(pb::KeepAliveRequest { id })
            .await?
            .into_inner();
        Ok(Duration::from_secs(resp.ttl.max(0) as u64))
    }

    /// Ends the lease now; returns how many records were deleted with it.
    pub async fn revoke(&self, id: u64) -> Result<u64, Error> {
        Ok(self
            .client
            .clone()
            .revoke(pb::RevokeRequest { id })
            .await?
            .into_inner()
            .deleted)
    }

    /// Seconds left, granted TTL and (with `keys`) the attached keys.
    pub async fn time_to_live(&self, id: u64, keys: bool) -> Result<pb::TimeToLiveResponse, Error> {
        Ok(self
            .client
            .clone()
            .time_to_live(pb::TimeToLiveRequest { id, keys })
            .await?
            .into_inner())
    }

    /// Every live lease.
    pub async fn list(&self) -> Result<Vec<pb::LeaseStatus>, Error> {
        Ok(self
            .client
            .clone()
            .leases(pb::LeasesRequest {})
            .await?
            .into_inner()
            .leases)
    }
}
