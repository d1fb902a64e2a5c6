//! `micro`: the Rust client for Micro's building blocks.
//!
//! A light dependency for service authors: gRPC clients generated from Micro's protos, wrapped
//! in small typed helpers. No RocksDB, no openraft.
//!
//! ```no_run
//! # async fn demo() -> Result<(), micro::Error> {
//! // Credentials from MICRO_AUTH_TOKEN or MICRO_AUTH_ID + MICRO_AUTH_SECRET; or use
//! // `Client::builder(addr).credentials(..)`.
//! let client = micro::Client::connect("127.0.0.1:8081").await?;
//! client.store().write("greeting", b"hello".to_vec()).await?;
//! let rec = client.store().read("greeting").await?;
//! assert_eq!(rec.value, b"hello");
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod discovery;
pub mod env;
pub mod events;
pub mod lease;
pub mod reflection;
pub mod registry;
pub mod resumable;
pub mod service;
pub mod store;
pub mod sync;

pub use auth::{Credentials, Token, Transport};
pub use config::Config;
pub use discovery::{Balance, Services};
pub use events::Events;
pub use lease::Leases;
pub use micro_proto as proto;
pub use registry::Registry;
pub use service::{Context, Running, Service};
pub use store::Store;
pub use sync::Sync;

use std::time::Duration;

use tonic::transport::Endpoint;

/// A client error: the gRPC status the server returned, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {reason}; is `micro server` running there? (set --server or MICRO_SERVER)")]
    Connect { addr: String, reason: String },
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// A service could not start or serve.
    #[error("{0}")]
    Service(String),
}

// Not `#[from]`: that would make the status the error's source too, and error chains would
// print the message twice.
impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

impl Error {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::Connect { .. } | Error::Service(_) => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }
}

/// A connection to one Micro node. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Transport,
    auth: auth::Authorizer,
}

/// Options for [`Client::builder`].
pub struct ClientBuilder {
    addr: String,
    credentials: Credentials,
    namespace: Option<String>,
    lifetime: Option<Duration>,
}

impl ClientBuilder {
    /// Who to be (default: [`Credentials::from_env`]).
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = c;
        self
    }

    /// The namespace every call acts in (default: the account's own).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// How long each access token should live (the server caps it).
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.lifetime = Some(d);
        self
    }

    /// Connects and logs in.
    pub async fn connect(self) -> Result<Client, Error> {
        let addr = self.addr.as_str();
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let err = |reason: String| Error::Connect {
            addr: addr.to_string(),
            reason,
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|e| err(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| err(e.to_string()))?;
        let auth = auth::Authorizer::new(self.namespace.as_deref())?;
        auth.login(&channel, &self.credentials, self.lifetime)
            .await?;
        Ok(Client {
            channel: tonic::service::interceptor::InterceptedService::new(channel, auth.clone()),
            auth,
        })
    }
}

impl Client {
    /// Connects to a node's gRPC address (`host:port` or `http://host:port`) with the
    /// credentials in the environment ([`Credentials::from_env`]).
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        Client::builder(addr).connect().await
    }

    /// Connects as the CLI does: the node at `MICRO_SERVER`, else the current env's server
    /// (`micro env`), else 127.0.0.1:8081; credentials from `MICRO_AUTH_TOKEN` or
    /// `MICRO_AUTH_ID` + `MICRO_AUTH_SECRET`, else the CLI's login for that env.
    pub async fn from_env() -> Result<Client, Error> {
        let found = env::Resolved::from_env();
        let mut b = Client::builder(&found.server).credentials(found.credentials);
        if let Some(ns) = found.namespace {
            b = b.namespace(ns);
        }
        b.connect().await
    }

    /// A client with chosen credentials, namespace or token lifetime.
    pub fn builder(addr: &str) -> ClientBuilder {
        ClientBuilder {
            addr: addr.to_string(),
            credentials: Credentials::from_env(),
            namespace: None,
            lifetime: None,
        }
    }

    /// The channel, authenticating every call, for the generated clients of other services.
    pub fn channel(&self) -> Transport {
        self.channel.clone()
    }

    /// The token this client currently sends (empty access token: anonymous).
    pub fn token(&self) -> Token {
        self.auth.token()
    }

    /// Users' services, found through the registry and called directly.
    pub fn services(&self) -> Services {
        Services::new(self.clone())
    }

    /// Adds this client's token (and namespace) to a request made outside its channel.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        self.auth.apply(req);
    }

    pub(crate) fn authorize_headers(&self, h: &mut http::HeaderMap) {
        self.auth.headers(h);
    }

    /// The runtime: services `micro run` builds, runs and supervises on the cluster.
    pub fn runtime(&self) -> proto::runtime::runtime_client::RuntimeClient<Transport> {
        proto::runtime::runtime_client::RuntimeClient::new(self.channel.clone())
    }

    /// Accounts, tokens and rules.
    pub fn auth(&self) -> proto::auth::auth_client::AuthClient<Transport> {
        proto::auth::auth_client::AuthClient::new(self.channel.clone())
    }

    pub fn accounts(&self) -> proto::auth::accounts_client::AccountsClient<Transport> {
        proto::auth::accounts_client::AccountsClient::new(self.channel.clone())
    }

    pub fn rules(&self) -> proto::auth::rules_client::RulesClient<Transport> {
        proto::auth::rules_client::RulesClient::new(self.channel.clone())
    }

    /// The broker: ephemeral pub/sub.
    pub fn broker(&self) -> proto::broker::broker_client::BrokerClient<Transport> {
        proto::broker::broker_client::BrokerClient::new(self.channel.clone())
    }

    /// Event streams.
    pub fn events(&self) -> Events {
        Events::new(self.channel.clone())
    }

    /// Leases.
    pub fn leases(&self) -> Leases {
        Leases::new(self.channel.clone())
    }

    /// Dynamic config.
    pub fn config(&self) -> Config {
        Config::new(self.channel.clone())
    }

    /// The service registry.
    pub fn registry(&self) -> Registry {
        Registry::new(self.channel.clone())
    }

    /// Locks and leader elections with fencing tokens.
    pub fn sync(&self) -> Sync {
        Sync::new(self.channel.clone())
    }

    /// The key-value store.
    pub fn store(&self) -> Store {
        Store::new(self.channel.clone())
    }

    fn cluster(&self) -> proto::cluster::cluster_client::ClusterClient<Transport> {
        proto::cluster::cluster_client::ClusterClient::new(self.channel.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The cluster as the connected node sees it.
    pub async fn cluster_status(&self) -> Result<proto::cluster::StatusResponse, Error> {
        Ok(self
            .cluster()
            .status(proto::cluster::StatusRequest {})
            .await?
            .into_inner())
    }

    /// Adds node `id` (reachable by peers at `peer_address`) as a learner.
    pub async fn add_member(
        &self,
        id: u64,
        peer_address: &str,
    ) -> Result<proto::cluster::StatusResponse, Error> {
        let req = proto::cluster::AddMemberRequest {
            id,
            peer_address: peer_address.to_string(),
        };
        Ok(self.cluster().add_member(req).await?.into_inner())
    }

    /// Makes learner `id` a voter; refused while it lags behind the leader.
    pub async fn promote_member(&self, id: u64) -> Result<proto::cluster::StatusResponse, Error> {
        Ok(self
            .cluster()
            .promote_member(proto::cluster::PromoteMemberRequest { id })
            .await?
            .into_inner())
    }

    /// Removes member `id`.
    pub async fn remove_member(&self, id: u64) -> Result<proto::cluster::StatusResponse, Error> {
        Ok(self
            .cluster()
            .remove_member(proto::cluster::RemoveMemberRequest { id })
            .await?
            .into_inner())
    }

    /// Downloads a consistent snapshot of the whole state; `progress(received, total)` is
    /// called after every chunk.
    pub async fn snapshot(&self, mut progress: impl FnMut(u64, u64)) -> Result<Vec<u8>, Error> {
        use futures::StreamExt;
        let mut stream = self
            .cluster()
            .snapshot(proto::cluster::SnapshotRequest {})
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.capacity() == 0 {
                out.reserve(chunk.total_bytes as usize);
            }
            out.extend_from_slice(&chunk.data);
            progress(out.len() as u64, chunk.total_bytes);
        }
        Ok(out)
    }
}
