//! Proposal batching: concurrent client writes share one log entry.
//!
//! Every write costs the cluster a log entry, a forward hop (on followers), a replication
//! round and an fsync on a quorum. The batcher queues writes and keeps at most [`IN_FLIGHT`]
//! batches on their way; while they are, new writes pile up and leave together as the next
//! batch — one entry, one Forward call, one apply. A lone writer never waits: with a free slot
//! its batch of one leaves at once. Each command keeps its own outcome and store revision
//! (see `micro_state::apply`), so batching is invisible to clients.

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

pub(crate) type Reply = oneshot::Sender<Result<(u64, Outcome), Error>>;

/// One queued write.
pub(crate) struct Pending {
    pub(crate) cmd: Command,
    pub(crate) reply: Reply,
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
        let mut bytes = first.cmd.size_hint();
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.size_hint();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            let (cmds, replies): (Vec<Command>, Vec<Reply>) =
                batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            match node.propose(cmds).await {
                Ok((index, outcomes)) if outcomes.len() == replies.len() => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let res = match outcome {
                            Outcome::Rejected { field, reason } => {
                                Err(Error::Invalid { field, reason })
                            }
                            o => Ok((index, o)),
                        };
                        let _ = reply.send(res);
                    }
                }
                Ok((_, outcomes)) => {
                    let e = Error::Internal(format!(
                        "a batch of {} commands produced {} outcomes",
                        replies.len(),
                        outcomes.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}
