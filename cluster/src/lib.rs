//! `micro-cluster`: the only crate that knows openraft.
//!
//! It wires [`micro_log::Db`] and [`micro_state::apply`] into openraft's storage traits
//! (`store`, `machine`), carries Raft traffic between nodes over gRPC with the cluster token
//! (`network`, `peer`), and gives the front ends a [`Node`] to propose commands to (forwarded
//! to the leader from followers) and to read from (linearizable by read index, or
//! serializable). `snapshot` is the snapshot file format.
//!
//! What it must never do: contain business logic of a view (that is `micro-state`), or answer a
//! client before its entry is committed and applied.

mod batch;
pub mod broker;
pub mod config;
mod elect;
pub mod error;
pub mod feed;
mod machine;
mod network;
pub mod node;
mod peer;
pub mod restore;
pub mod snapshot;
mod store;
pub mod trace;
pub mod watch;
mod wire;

pub use config::NodeConfig;
pub use error::Error;
pub use node::{Node, TopicWatch};
pub use watch::{WatchEvent, WatchSpec};
pub use wire::{MemberStatus, MembershipOp, Status, PROMOTE_MAX_LAG};

openraft::declare_raft_types!(
    /// Micro's Raft types: entries carry a [`micro_state::Request`], applying one yields one
    /// outcome per command. Snapshot data (whole byte buffers) is the state machine's type.
    pub TypeConfig:
        D = micro_state::Request,
        R = Vec<micro_state::Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;

/// Wall clock in ms since the Unix epoch. Only the leader's proposals and the readers' expiry
/// filter use it; apply never does.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub use machine::StateMachine;
pub use store::{decode_entry_bytes, LogStore};

/// Opens the Raft log and state machine over one database in `dir`, as a node does. Used by
/// the storage conformance suite and offline tools.
pub fn open_storage(dir: &std::path::Path) -> std::io::Result<(LogStore, StateMachine)> {
    let db = micro_log::Db::open(&dir.join("db")).map_err(std::io::Error::other)?;
    let sm = StateMachine::open(db.clone(), dir.join("snapshots"))?;
    Ok((LogStore::new(db), sm))
}

/// Leader: how long ago a quorum last acknowledged it (`None`: never, or not a leader).
pub fn quorum_ack_age(m: &openraft::RaftMetrics<TypeConfig>) -> Option<std::time::Duration> {
    use openraft::Instant;
    m.last_quorum_acked.as_ref().map(|t| t.elapsed())
}
