//! The change feed as it leaves the state machine: every applied batch is announced, after it
//! is durable in the views, with the changes it made. Watchers use it to follow live changes
//! and fall back to the persisted history (`micro_state::views::history`) whenever they cannot
//! prove they saw every revision (they started late, lagged, or a snapshot was installed).

use std::collections::BTreeSet;
use std::sync::Arc;

use micro_state::Change;
use tokio::sync::broadcast;

/// One applied batch of entries.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The last log index applied.
    pub index: u64,
    /// The first revision the batch could have used: every change with a revision in
    /// `first_revision..=last_revision` is in `changes`. `u64::MAX` when the state was
    /// replaced (a snapshot was installed) and the history must be read.
    pub first_revision: u64,
    /// The revision after the batch.
    pub last_revision: u64,
    pub changes: Vec<Change>,
    /// Event topics that got new events.
    pub topics: BTreeSet<String>,
}

pub type Sender = broadcast::Sender<Arc<Applied>>;
pub type Receiver = broadcast::Receiver<Arc<Applied>>;

/// Batches a slow watcher may fall behind before it re-reads the history instead.
const CAPACITY: usize = 256;

pub fn channel() -> Sender {
    broadcast::channel(CAPACITY).0
}
