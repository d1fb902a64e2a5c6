//! `micro`: the Rust client for Micro's building blocks.
//!
//! A light dependency for service authors: gRPC clients generated from Micro's protos, wrapped
//! in small typed helpers. No RocksDB, no openraft.
//!
//! ```no_run
//! # async fn demo() -> Result<(), micro::Error> {
//! let client = micro::Client::connect("127.0.0.1:8081").await?;
//! client.store().write("greeting", b"hello".to_vec()).await?;
//! let rec = client.store().read("greeting").await?;
//! assert_eq!(rec.value, b"hello");
//! # Ok(()) }
//! ```

pub mod store;

pub use micro_proto as proto;
pub use store::Store;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// A client error: the gRPC status the server returned, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {reason}; is `micro server` running there? (set --server or MICRO_SERVER)")]
    Connect { addr: String, reason: String },
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

impl Error {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::Connect { .. } => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }
}

/// A connection to one Micro node. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to a node's gRPC address (`host:port` or `http://host:port`).
    pub async fn connect(addr: &str) -> Result<Client, Error> {
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
        Ok(Client { channel })
    }

    /// The underlying channel, for the generated clients of other services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The key-value store.
    pub fn store(&self) -> Store {
        Store::new(self.channel.clone())
    }

    /// The cluster as the connected node sees it.
    pub async fn cluster_status(&self) -> Result<proto::cluster::StatusResponse, Error> {
        let mut c = proto::cluster::cluster_client::ClusterClient::new(self.channel.clone());
        Ok(c.status(proto::cluster::StatusRequest {})
            .await?
            .into_inner())
    }
}
