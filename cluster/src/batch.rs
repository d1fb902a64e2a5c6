//! Proposal batching: concurrent client writes share one log entry.
//!
//! Every write costs the cluster a log entry, a forward hop (on followers), a replication
//! round and an fsync on a quorum. The batcher queues writes and keeps a few batches on their
//! way ([`LEADING`] on the leader, [`FORWARDING`] on a follower); while they are, new writes
//! pile up and leave together as the next batch — one entry, one Forward call, one apply. A
//! lone writer never waits: with a free slot its batch of one leaves at once. Each command
//! keeps its own outcome and store revision (see `micro_state::apply`), so batching is
//! invisible to clients.
//!
//! On the leader, batches forwarded by followers join the same queue, so the whole cluster's
//! concurrent writes leave in one entry per replication round. One entry at a time is what
//! openraft 0.9 replicated best (one AppendEntries in flight per follower: a second entry
//! proposed meanwhile only waited for that round and then cost a round of its own), and with
//! 0.10's pipelined appends it still measures as fast or faster than more (smaller) entries.
//! A follower keeps more forwards on their way, so that its writes reach the leader's next
//! entry instead of waiting for an answer to the previous forward.
//!
//! When nothing is on its way at all, a write leaves from its own task ([`Queue::idle_slot`]):
//! the batcher would have sent it alone and at once, and skipping it saves two task hand-offs
//! on the node that takes the write and two more on the leader it is forwarded to.

use std::sync::Arc;

use micro_state::{Command, Outcome};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::Error;

/// Where the batcher sends a batch: the node, which proposes it on the leader (directly or
/// forwarded). A trait so the batcher does not depend on the node that runs it.
pub(crate) trait Propose: Clone + Send + Sync + 'static {
    fn propose(
        &self,
        cmds: Vec<Command>,
    ) -> impl std::future::Future<Output = Result<(u64, Vec<Outcome>), Error>> + Send;

    /// Whether the node leads now, as the peer service's `Handler::is_leader` (a hint: it
    /// picks the slots a batch waits for).
    fn is_leader(&self) -> bool;
}

/// Batches a leader keeps on their way to the log: one, so that every replication round
/// carries everything that queued during the previous one. Measured against 2 and 4 (put, 16
/// clients): 4.2–4.5k/s against 3.2–3.4k and 3.0–3.1k, at 0.30 CPU-ms a write against 0.43;
/// and again with openraft 0.10's pipelined appends against 4: 4.9–5.1k/s against 4.7–4.8k.
const LEADING: usize = 1;
/// Batches a follower keeps on their way to the leader (forwards). With as few as the leader
/// keeps, a follower's writes would wait for one round to answer before joining the next.
const FORWARDING: usize = 8;
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

/// A node's write queue: what the batcher takes writes from, and its slots for batches on
/// their way, as leader and as follower. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Queue {
    tx: mpsc::UnboundedSender<Pending>,
    leading: Arc<Semaphore>,
    forwarding: Arc<Semaphore>,
}

impl Queue {
    /// A queue and the receiving end for [`run`].
    pub(crate) fn new() -> (Queue, mpsc::UnboundedReceiver<Pending>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let leading = Arc::new(Semaphore::new(LEADING));
        let forwarding = Arc::new(Semaphore::new(FORWARDING));
        (
            Queue {
                tx,
                leading,
                forwarding,
            },
            rx,
        )
    }

    /// The slots for a node that leads (or not), and how many there are.
    fn slots(&self, leads: bool) -> (&Arc<Semaphore>, usize) {
        if leads {
            (&self.leading, LEADING)
        } else {
            (&self.forwarding, FORWARDING)
        }
    }

    /// A slot, if no batch is on its way: the caller then proposes its write itself, holding
    /// the slot until it is done (so writes arriving meanwhile batch up as usual). `leads`:
    /// whether this node leads, which decides the slots.
    pub(crate) fn idle_slot(&self, leads: bool) -> Option<OwnedSemaphorePermit> {
        let (slots, all) = self.slots(leads);
        // Looked at before taking: under load most writes find a batch on its way, and taking
        // a slot only to give it back would lock the semaphore's waiter list on every write.
        // Another write may take a slot in between; this one then goes out beside it, as a
        // batch of one would have.
        if slots.available_permits() < all {
            return None;
        }
        slots.clone().try_acquire_owned().ok()
    }
}

/// Commands queued together (one client write, or a batch forwarded by a follower); they
/// stay together and in order in the entry.
pub(crate) struct Pending {
    pub(crate) cmds: Vec<Command>,
    pub(crate) reply: Reply,
    /// The client's request id, if it gave one (see `trace`).
    pub(crate) request_id: Option<std::sync::Arc<str>>,
    /// When it was queued: its wait for a batch is a stage of the write path.
    pub(crate) queued: std::time::Instant,
}

/// Queues `cmds` on a node's batcher and waits for their entry's index and outcomes.
pub(crate) async fn submit(
    queue: &Queue,
    cmds: Vec<Command>,
) -> Result<(u64, Vec<Outcome>), Error> {
    let (reply, rx) = oneshot::channel();
    let gone = || Error::Unavailable("the node is shutting down".into());
    let request_id = crate::trace::current();
    queue
        .tx
        .send(Pending {
            cmds,
            reply,
            request_id,
            queued: std::time::Instant::now(),
        })
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

fn size(cmds: &[Command]) -> usize {
    cmds.iter().map(Command::size_hint).sum()
}

/// A batch: `first` plus whatever is queued, within the bounds. Groups are never split, and only
/// the first may exceed the bounds on its own, so an entry holds at most MAX_BYTES or one group
/// (itself at most MAX_BYTES plus one value). Returns the batch, its command count and the
/// group that did not fit, if any (it starts the next batch).
fn fill(
    first: Pending,
    rx: &mut mpsc::UnboundedReceiver<Pending>,
) -> (Vec<Pending>, usize, Option<Pending>) {
    let mut bytes = size(&first.cmds);
    let mut count = first.cmds.len();
    let mut batch = vec![first];
    while let Ok(p) = rx.try_recv() {
        let (n, b) = (p.cmds.len(), size(&p.cmds));
        if count + n > MAX_COMMANDS || bytes + b > MAX_BYTES {
            return (batch, count, Some(p));
        }
        count += n;
        bytes += b;
        batch.push(p);
    }
    (batch, count, None)
}

fn role(leads: bool) -> &'static str {
    if leads {
        "leader"
    } else {
        "follower"
    }
}

/// Takes queued writes off `rx` in batches and proposes each batch through `node`.
pub(crate) async fn run<P: Propose>(
    node: P,
    queue: Queue,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    // A group that would have made the previous batch too big starts the next one.
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            },
        };
        // Wait for a slot first: whatever arrives meanwhile joins this batch. A node that
        // changes role keeps the slots it has; its next batch waits for the other kind.
        let leads = node.is_leader();
        let (slots, _) = queue.slots(leads);
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (batch, count, next) = fill(first, &mut rx);
        carry = next;
        let wait = metrics::histogram!("micro_batch_wait_seconds", "role" => role(leads));
        for p in &batch {
            wait.record(p.queued.elapsed().as_secs_f64());
        }
        let node = node.clone();
        tokio::spawn(async move {
            let mut cmds = Vec::with_capacity(count);
            let mut groups = Vec::with_capacity(batch.len());
            let mut ids: Vec<std::sync::Arc<str>> = Vec::new();
            for p in batch {
                groups.push((p.cmds.len(), p.reply));
                cmds.extend(p.cmds);
                ids.extend(p.request_id);
            }
            let ids = (!ids.is_empty()).then(|| ids.join(",").into());
            match crate::trace::scoped(ids, node.propose(cmds)).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use micro_state::Put;

    fn put(value_bytes: usize) -> Command {
        Command::Store(micro_state::views::store::Cmd::Put(Put {
            key: "k".into(),
            value: vec![0; value_bytes],
            ..Default::default()
        }))
    }

    fn group(cmds: Vec<Command>) -> Pending {
        Pending {
            cmds,
            reply: oneshot::channel().0,
            request_id: None,
            queued: std::time::Instant::now(),
        }
    }

    #[test]
    fn a_write_skips_the_batcher_only_when_nothing_is_on_its_way() {
        let (q, _rx) = Queue::new();
        for leads in [true, false] {
            let first = q.idle_slot(leads).expect("idle: the write goes out itself");
            // While it is on its way, the next writes queue for the batcher...
            assert!(q.idle_slot(leads).is_none());
            assert!(
                q.idle_slot(leads).is_none(),
                "a refused try must give its slot back"
            );
            // ...and so do they while a batch holds a slot.
            drop(first);
            let batch = q.slots(leads).0.clone().try_acquire_owned().unwrap();
            assert!(q.idle_slot(leads).is_none());
            drop(batch);
            assert!(q.idle_slot(leads).is_some());
        }
        // The two roles' slots are apart: a follower's forward on its way does not make the
        // node look busy once it leads.
        let forward = q.idle_slot(false).unwrap();
        assert!(q.idle_slot(true).is_some());
        drop(forward);
    }

    #[test]
    fn batches_keep_groups_whole_and_within_bounds() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // First 1 MiB; queued 0.9 MiB (fits: 1.9 MiB), 0.5 MiB (would pass 2 MiB: carried), 10 B.
        for v in [900 * 1024, 512 * 1024, 10] {
            tx.send(group(vec![put(v)])).unwrap();
        }
        let (batch, count, carry) = fill(group(vec![put(1024 * 1024)]), &mut rx);
        assert_eq!((batch.len(), count), (2, 2));
        let carry = carry.expect("the group that did not fit");
        assert_eq!(carry.cmds[0].size_hint(), put(512 * 1024).size_hint());
        // It starts the next batch, with what is still queued.
        let (batch, count, carry) = fill(carry, &mut rx);
        assert_eq!((batch.len(), count), (2, 2));
        assert!(carry.is_none());

        // A forwarded group of many commands is never split; the count bound applies between
        // groups.
        let big: Vec<Command> = (0..MAX_COMMANDS).map(|_| put(1)).collect();
        tx.send(group(vec![put(1)])).unwrap();
        let (batch, count, carry) = fill(group(big), &mut rx);
        assert_eq!((batch.len(), count), (1, MAX_COMMANDS));
        assert_eq!(carry.map(|p| p.cmds.len()), Some(1));
    }
}
