//! `micro-state`: Micro's deterministic state machine.
//!
//! Every building block (store, events, leases, and later registry, config, locks) is a *view*
//! materialised from the Raft log by [`apply`]. This crate owns the [`Command`]s that go into
//! log entries, the function that applies them, the key layout of every view and the read
//! functions over the views.
//!
//! What it must never do: perform I/O other than through the [`storage::Read`] trait, read a
//! clock or a random number generator, or depend on tokio, RocksDB, tonic or openraft. Time comes
//! from the entry (`Request::time_ms`, stamped by the leader), so every node computes the same
//! views from the same log.
//!
//! Layout: `command` (the top-level commands and outcomes, which nest each view's own),
//! `storage` (the storage trait, the in-memory store and the write overlay used during apply),
//! `keys` (key layout), `codec` (versioned value encoding), `expiry` (the one expiry index),
//! `machine` (apply: dispatch and transactions), `views/` (one module per view, and
//! `history`, the change feed).

pub mod codec;
pub mod command;
pub mod expiry;
pub mod keys;
pub mod machine;
pub mod storage;
pub mod views;

pub use command::{Command, Outcome, Request, Txn, View};
pub use machine::{apply, clock_ms, cluster_id, compact_revision, next_expiry, revision, LogPos};
pub use storage::{Feed, MemStore, Overlay, Read, StorageError, WriteSet};
pub use views::history::Change;
pub use views::store::{Compare, Delete, MetaField, Put};

/// Database and table used when a request leaves them empty, as in Micro v3.
pub const DEFAULT_DATABASE: &str = "micro";
/// See [`DEFAULT_DATABASE`].
pub const DEFAULT_TABLE: &str = "micro";
/// The largest value a record may hold. Raft entries carry whole values, so this bounds entry
/// size (and the time a follower needs to receive one) as etcd's 1.5 MiB request limit does.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;
/// Longest key, database or table name, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
