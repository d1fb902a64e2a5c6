//! Errors a node returns to the front ends. Each carries enough context to name the remedy;
//! `micro-services` maps them to gRPC and HTTP statuses in one place.

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The cluster cannot serve right now (no leader, no quorum, shutting down). Retryable.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A command was invalid; nothing was applied.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A well-formed command the state refused as it stands (a stale fence); nothing applied.
    #[error("{field} {reason}")]
    Refused { field: String, reason: String },
    /// The asked-for revision is no longer in the change feed.
    #[error("revision {requested} has been compacted; the oldest revision still available is compact_revision {compact_revision}")]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    /// The named thing does not exist (a lease, ...).
    #[error("{0}")]
    NotFound(String),
    /// The node's storage failed or is corrupt.
    #[error("storage: {0}")]
    Storage(String),
    /// Anything else that should not happen.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<micro_state::StorageError> for Error {
    fn from(e: micro_state::StorageError) -> Self {
        Error::Storage(e.0)
    }
}
