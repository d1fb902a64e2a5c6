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

// openraft's storage traits return its `StorageError` (224 bytes) by value; our helpers return
// the same type so `?` works without boxing at every boundary.
#![allow(clippy::result_large_err)]

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

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Micro's Raft types: entries carry a [`micro_state::Request`], applying one yields one
    /// outcome per command, snapshots travel as whole byte buffers.
    pub TypeConfig:
        D = micro_state::Request,
        R = Vec<micro_state::Outcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Vec<u8>,
        AsyncRuntime = openraft::TokioRuntime,
);

// `declare_raft_types!` expands to code that names `Cursor`; keep the import used.
#[allow(dead_code)]
type _Unused = Cursor<Vec<u8>>;

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Membership = openraft::StoredMembership<u64, openraft::BasicNode>;

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
pub fn open_storage(
    dir: &std::path::Path,
) -> Result<(LogStore, StateMachine), openraft::StorageError<u64>> {
    let db = micro_log::Db::open(&dir.join("db"))
        .map_err(|e| openraft::StorageIOError::read_logs(&e))?;
    let sm = StateMachine::open(db.clone(), dir.join("snapshots"))?;
    Ok((LogStore::new(db), sm))
}
