//! The service registry client (Micro v3's `registry.Registry`).

use crate::Transport as Channel;
use micro_proto::registry as pb;
use pb::registry_client::RegistryClient;

use crate::Error;

/// Registry operations in one domain (default `micro`; `*` reads every domain).
#[derive(Clone)]
pub struct Registry {
    client: RegistryClient<Channel>,
    domain: String,
}

/// A running registry watch: one [`pb::Result`] per change, in revision order.
pub type RegistryWatcher = crate::resumable::Resumable<pb::Result>;

impl Registry {
    pub(crate) fn new(channel: Channel) -> Self {
        Registry {
            client: RegistryClient::new(channel),
            domain: String::new(),
        }
    }

    /// The same client in another domain.
    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_string();
        self
    }

    fn options(&self, ttl: i64) -> Option<pb::Options> {
        Some(pb::Options {
            ttl,
            domain: self.domain.clone(),
        })
    }

    /// Every version of `name`; `Err` with `is_not_found()` when none is registered.
    pub async fn get(&self, name: &str) -> Result<Vec<pb::Service>, Error> {
        let req = pb::GetRequest {
            service: name.to_string(),
            options: self.options(0),
        };
        Ok(self
            .client
            .clone()
            .get_service(req)
            .await?
            .into_inner()
            .services)
    }

    /// Every registered service version.
    pub async fn list(&self) -> Result<Vec<pb::Service>, Error> {
        let req = pb::ListRequest {
            options: self.options(0),
        };
        Ok(self
            .client
            .clone()
            .list_services(req)
            .await?
            .into_inner()
            .services)
    }

    /// Registers (or refreshes) `service`'s nodes, which expire after `ttl_seconds` unless
    /// registered again (0: never).
    pub async fn register(&self, mut service: pb::Service, ttl_seconds: i64) -> Result<(), Error> {
        service.options = self.options(ttl_seconds);
        self.client.clone().register(service).await?;
        Ok(())
    }

    /// Removes `service`'s nodes (the service goes with its last node).
    pub async fn deregister(&self, mut service: pb::Service) -> Result<(), Error> {
        service.options = self.options(0);
        self.client.clone().deregister(service).await?;
        Ok(())
    }

    /// Watches every service (or only `name`) from `from_revision` (0: changes after now).
    pub async fn watch(
        &self,
        name: Option<&str>,
        from_revision: u64,
    ) -> Result<RegistryWatcher, Error> {
        let req = pb::WatchRequest {
            service: name.unwrap_or_default().to_string(),
            options: self.options(0),
            from_revision,
        };
        let stream = self.client.clone().watch(req).await?.into_inner();
        Ok(crate::resumable::Resumable::new(stream, from_revision))
    }
}
