//! Proposal batching: concurrent client writes share one log entry.
//!
//! Every write costs the cluster a log entry, a forward hop (on followers), a replication
//! round and an fsync on a quorum. The batcher queues writes and keeps at most [`IN_FLIGHT`]
//! batches on their way; while they are, new writes pile up and leave together as the next
//! batch — one entry, one Forward call, one apply. A lone writer never waits: with a free slot
//! its batch of one leaves at once. Each command keeps its own outcome and store revision
//! (see `micro_state::apply`), so batching is invisible to clients.
//!
//! On the leader, batches forwarded by followers join the same queue, so the whole cluster's
//! concurrent writes tend to leave in a few entries per replication round.

use std::sync::Arc;

use micro_state::{Command, Outcome};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::node::Node;
use crate::Error;

/// Batches on their way to the log at once. More pipelines deeper but makes batches smaller.
const IN_FLIGHT: usize = 4;
/// Bounds on one batch: commands, and approximate bytes (a batch holds at least one command).
const MAX_COMMANDS: usize = 2048;
const MAX_BYTES: usize = 2 * 1024 * 1024;

/// Entries per AppendEntries message. openraft bounds messages by entries, not bytes, so this
/// keeps the largest possible message (every entry a full batch plus one largest value) under
/// the peer message limit.
pub(crate) const ENTRIES_PER_MESSAGE: u64 = 64;
const _: () = assert!(
    (ENTRIES_PER_MESSAGE as usize) * (MAX_BYTES + micro_state::MAX_VALUE_BYTES + 64 * 1024)
        < crate::network::MAX_MESSAGE
);

pub(crate) type Reply = oneshot::Sender<Result<(u64, Vec<Outcome>), Error>>;

/// Commands queued together (one client write, or a batch forwarded by a follower); they
/// stay together and in order in the entry.
pub(crate) struct Pending {
    pub(crate) cmds: Vec<Command>,
    pub(crate) reply: Reply,
}

fn size(cmds: &[Command]) -> usize {
    cmds.iter().map(Command::size_hint).sum()
}

/// Takes queued writes off `rx` in batches and proposes each batch through `node`.
pub(crate) async fn run(
    node: Node,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        // Wait for a slot first: whatever arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = size(&first.cmds);
        let mut count = first.cmds.len();
        let mut batch = vec![first];
        while count < MAX_COMMANDS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += size(&p.cmds);
                    count += p.cmds.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            let mut cmds = Vec::with_capacity(count);
            let mut groups = Vec::with_capacity(batch.len());
            for p in batch {
                groups.push((p.cmds.len(), p.reply));
                cmds.extend(p.cmds);
            }
            match node.propose(cmds).await {
                Ok((index, outcomes)) if outcomes.len() == count => {
                    let mut outcomes = outcomes.into_iter();
                    for (n, reply) in groups {
                        let _ = reply.send(Ok((index, outcomes.by_ref().take(n).collect())));
                    }
                }
                Ok((_, outcomes)) => {
                    let e = Error::Internal(format!(
                        "a batch of {count} commands produced {} outcomes",
                        outcomes.len()
                    ));
                    for (_, reply) in groups {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for (_, reply) in groups {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}
