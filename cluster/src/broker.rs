//! The broker: ephemeral, at-most-once pub/sub. Messages do not go through the log; the
//! publishing node hands each message to every member, and each member to its own
//! subscribers. Subscribers sharing a queue name compete: the cluster delivers each message to
//! one of them (the members are asked in turn, starting at a rotating one, and the first that
//! has a subscriber of the queue serves it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A broker message, as Micro v3's `broker.Message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Message {
    pub header: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// What one member is asked to deliver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    pub topic: String,
    pub message: Message,
    /// Deliver to plain (non-queue) subscribers; true for exactly one call per member.
    pub plain: bool,
    /// Queues already served by another member.
    pub skip_queues: BTreeSet<String>,
}

/// Messages a slow subscriber may have waiting before newer ones are dropped for it.
const BUFFER: usize = 1024;

struct Sub {
    queue: String,
    tx: mpsc::Sender<Message>,
}

/// This node's subscribers.
#[derive(Default)]
pub(crate) struct LocalBroker {
    subs: Mutex<HashMap<String, Vec<Sub>>>,
    rr: AtomicU64,
}

impl LocalBroker {
    pub(crate) fn subscribe(&self, topic: &str, queue: &str) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut subs = self.subs.lock().expect("broker lock");
        subs.entry(topic.to_string()).or_default().push(Sub {
            queue: queue.to_string(),
            tx,
        });
        rx
    }

    /// Delivers to local subscribers; returns the queues this node served.
    pub(crate) fn deliver(&self, d: &Delivery) -> BTreeSet<String> {
        let mut subs = self.subs.lock().expect("broker lock");
        let Some(list) = subs.get_mut(&d.topic) else {
            return BTreeSet::new();
        };
        list.retain(|s| !s.tx.is_closed());
        let mut served = BTreeSet::new();
        let mut queues: BTreeMap<&str, Vec<&Sub>> = BTreeMap::new();
        for s in list.iter() {
            if s.queue.is_empty() {
                if d.plain {
                    // At most once: a subscriber whose buffer is full misses the message.
                    let _ = s.tx.try_send(d.message.clone());
                }
            } else if !d.skip_queues.contains(&s.queue) {
                queues.entry(&s.queue).or_default().push(s);
            }
        }
        for (queue, members) in queues {
            let start = self.rr.fetch_add(1, Ordering::Relaxed) as usize;
            for i in 0..members.len() {
                if members[(start + i) % members.len()]
                    .tx
                    .try_send(d.message.clone())
                    .is_ok()
                {
                    served.insert(queue.to_string());
                    break;
                }
            }
        }
        served
    }
}
