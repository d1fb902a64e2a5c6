//! Watching the change feed from a revision: replay what the history holds, then follow live
//! batches, falling back to the history whenever continuity cannot be proven. Every node
//! holds the same history, so a watcher that loses its node resumes on another from its last
//! revision + 1 and sees exactly the rest.

use std::time::Duration;

use micro_state::views::history;
use micro_state::Change;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::{Error, Node};

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Keyspace key (or key prefix) to watch.
    pub key: Vec<u8>,
    /// Whether `key` is a prefix.
    pub prefix: bool,
    /// The first revision to deliver; 0 means "changes after now".
    pub from_revision: u64,
    /// Send a progress notification after this long without changes.
    pub progress_every: Option<Duration>,
}

impl WatchSpec {
    fn matches(&self, key: &[u8]) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key.as_slice()
        }
    }
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Every matching change of one revision, together.
    Changes { revision: u64, changes: Vec<Change> },
    /// Nothing matched up to and including `revision`.
    Progress { revision: u64 },
}

/// Revisions read from the history per step, so a long replay interleaves with sending.
const REPLAY_STEP: usize = 1000;

impl Node {
    /// Streams the changes matching `spec`, ordered by revision, no gaps, no duplicates. The
    /// stream ends with an error if the watcher falls behind the compaction point.
    pub async fn watch(
        &self,
        spec: WatchSpec,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, Error>>, Error> {
        // Subscribe before reading anything, so no batch can slip between replay and follow.
        let live = self.feed();
        // "After now" must include every write acknowledged before the call.
        self.read_barrier(true).await?;
        let compact = micro_state::compact_revision(self.view())?;
        let current = micro_state::revision(self.view())?;
        let next = if spec.from_revision == 0 {
            current + 1
        } else {
            spec.from_revision
        };
        if next < compact {
            return Err(Error::Compacted {
                requested: next,
                compact_revision: compact,
            });
        }
        let (tx, rx) = mpsc::channel(64);
        let node = self.clone();
        tokio::spawn(async move {
            let _open = crate::trace::Open::new("micro_watchers");
            if let Err(e) = follow(&node, &spec, next, live, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }
}

type Tx = mpsc::Sender<Result<WatchEvent, Error>>;

/// Sends the changes grouped by revision; `Ok(false)` when the watcher went away.
async fn send_grouped(tx: &Tx, changes: Vec<Change>) -> bool {
    let mut group: Vec<Change> = Vec::new();
    for c in changes {
        if group.first().is_some_and(|g| g.revision != c.revision) {
            let revision = group[0].revision;
            let changes = std::mem::take(&mut group);
            if tx
                .send(Ok(WatchEvent::Changes { revision, changes }))
                .await
                .is_err()
            {
                return false;
            }
        }
        group.push(c);
    }
    if let Some(first) = group.first() {
        let revision = first.revision;
        if tx
            .send(Ok(WatchEvent::Changes {
                revision,
                changes: group,
            }))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Replays the history from `next` until it is exhausted; returns the next revision to
/// deliver, or `None` when the watcher went away.
async fn replay(
    node: &Node,
    spec: &WatchSpec,
    mut next: u64,
    tx: &Tx,
) -> Result<Option<u64>, Error> {
    loop {
        // Read the revision first: whatever the history read misses is above it.
        let current = micro_state::revision(node.view())?;
        let compact = micro_state::compact_revision(node.view())?;
        if next < compact {
            return Err(Error::Compacted {
                requested: next,
                compact_revision: compact,
            });
        }
        let changes = history::read(node.view(), next, &|k| spec.matches(k), REPLAY_STEP)?;
        match changes.last() {
            None => return Ok(Some(next.max(current + 1))),
            Some(last) => {
                next = last.revision + 1;
                if !send_grouped(tx, changes).await {
                    return Ok(None);
                }
            }
        }
    }
}

async fn follow(
    node: &Node,
    spec: &WatchSpec,
    next: u64,
    mut live: crate::feed::Receiver,
    tx: &Tx,
) -> Result<(), Error> {
    let Some(mut next) = replay(node, spec, next, tx).await? else {
        return Ok(());
    };
    let idle = spec.progress_every.unwrap_or(Duration::from_secs(3600));
    let mut stop = node.stopping();
    loop {
        let batch = tokio::select! {
            b = live.recv() => b,
            _ = tokio::time::sleep(idle), if spec.progress_every.is_some() => {
                // Everything up to next - 1 was delivered or did not match.
                if tx.send(Ok(WatchEvent::Progress { revision: next - 1 })).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            _ = tx.closed() => return Ok(()),
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                return Err(Error::Unavailable(
                    "the node is shutting down; resume on another node from the last revision + 1".into(),
                ))
            }
        };
        match batch {
            Ok(b) if b.last_revision < next => {}
            Ok(b) if b.first_revision <= next => {
                let mine: Vec<Change> = b
                    .changes
                    .iter()
                    .filter(|c| c.revision >= next && spec.matches(&c.key))
                    .cloned()
                    .collect();
                next = b.last_revision + 1;
                if !send_grouped(tx, mine).await {
                    return Ok(());
                }
            }
            // A gap (a snapshot was installed) or this watcher lagged: the history has it.
            Ok(_) | Err(RecvError::Lagged(_)) => match replay(node, spec, next, tx).await? {
                Some(n) => next = n,
                None => return Ok(()),
            },
            Err(RecvError::Closed) => {
                return Err(Error::Unavailable("the node is shutting down".into()))
            }
        }
    }
}
