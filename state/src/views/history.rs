//! The change feed: every change apply makes to a watchable view (today: store records) is
//! kept under its revision until compaction, so a watcher can start at any retained revision
//! on any node and see exactly what happened after it: ordered, no gaps, no duplicates, and
//! all changes of one revision together (a Txn's writes, a lease's deleted keys).
//!
//! Layout: `HISTORY revision n → Change`. The first retained revision is `META_COMPACT`.
//! Compaction is a command (`meta::Cmd::Compact`), so every node drops the same revisions.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::keys;
use crate::storage::{Overlay, Read, StorageError};

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    /// The state clock when it happened.
    pub time_ms: u64,
    /// The full keyspace key (its first byte names the view).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The persisted value after the change; `None` for a delete.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The revision of the value before the change (0: there was none).
    pub prev_revision: u64,
}

fn corrupt(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt history entry: {e}"))
}

/// Records a change at `revision` (persisted, and in the overlay's feed for live watchers).
pub fn record<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    revision: u64,
    time_ms: u64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    prev_revision: u64,
) {
    // Changes of one revision are contiguous in the feed; count them for the next slot.
    let n = ov
        .feed
        .changes
        .iter()
        .rev()
        .take_while(|c| c.revision == revision)
        .count() as u32;
    let change = Change {
        revision,
        time_ms,
        key,
        value,
        prev_revision,
    };
    ov.put(keys::history_key(revision, n), codec::encode(&change));
    ov.feed.changes.push(change);
}

/// The first revision still in the history (1 before any compaction).
pub fn compact_revision<S: Read + ?Sized>(s: &S) -> Result<u64, StorageError> {
    Ok(match s.get(keys::META_COMPACT)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| StorageError("corrupt compact revision".into()))?,
        ),
        None => 1,
    })
}

/// At most this many revisions are dropped by one compaction command, so one entry's apply
/// stays short; the leader proposes more until the target is reached.
pub const MAX_COMPACT_STEP: u64 = 10_000;

/// Compactions are proposed in steps of at most this many changes (see [`compact_step`]):
/// a revision can hold many changes (a 100-key transaction is one revision), and 10,000
/// revisions of them in one entry took every node 200-350 ms to apply, stalling all writes.
pub const MAX_COMPACT_CHANGES: usize = 2_048;

/// Where a compaction from `from` towards `to` should stop so that it drops at most
/// `max_changes` changes: whole revisions, at least one revision however many changes it
/// holds, and no more than one command drops ([`MAX_COMPACT_STEP`] revisions). Whoever
/// proposes a compaction picks its step with this; the command itself only names a revision,
/// so applying it does not depend on the step rule.
pub fn compact_step<S: Read + ?Sized>(
    s: &S,
    from: u64,
    to: u64,
    max_changes: usize,
) -> Result<u64, StorageError> {
    let to = to.min(from.saturating_add(MAX_COMPACT_STEP));
    if to <= from.saturating_add(1) {
        return Ok(to);
    }
    let mut seen = 0usize;
    let mut stop = Ok(to);
    s.scan(
        &keys::history_start(from),
        Some(&keys::history_start(to)),
        false,
        &mut |k, _| {
            seen += 1;
            if seen <= max_changes {
                return true;
            }
            // The first change past the budget: stop before its revision (after `from`'s).
            stop = keys::parse_history_key(k)
                .map(|r| r.max(from + 1))
                .ok_or_else(|| StorageError("corrupt change feed key".into()));
            false
        },
    )?;
    stop
}

/// Drops the history below `revision` (at most [`MAX_COMPACT_STEP`] revisions of it); returns
/// the new compact revision.
pub fn compact<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    revision: u64,
    current: u64,
) -> Result<Result<u64, String>, StorageError> {
    let from = compact_revision(ov)?;
    if revision > current + 1 {
        return Ok(Err(format!(
            "is {revision}, past the current revision {current}"
        )));
    }
    if revision <= from {
        return Ok(Ok(from));
    }
    let to = revision.min(from.saturating_add(MAX_COMPACT_STEP));
    let doomed = ov.collect(
        &keys::history_start(from),
        Some(&keys::history_start(to)),
        usize::MAX,
    )?;
    for (k, _) in doomed {
        ov.delete(k);
    }
    ov.put(keys::META_COMPACT.to_vec(), to.to_be_bytes().to_vec());
    Ok(Ok(to))
}

/// Changes at revisions >= `from` whose key passes `filter`, whole revisions only, until
/// `max_changes` is reached (a revision is never split) or the history ends.
pub fn read<S: Read + ?Sized>(
    s: &S,
    from: u64,
    filter: &dyn Fn(&[u8]) -> bool,
    max_changes: usize,
) -> Result<Vec<Change>, StorageError> {
    let mut out: Vec<Change> = Vec::new();
    let mut err = None;
    s.scan(
        &keys::history_start(from),
        Some(&[keys::HISTORY + 1]),
        false,
        &mut |_, v| {
            let c: Change = match codec::decode(v) {
                Ok(c) => c,
                Err(e) => {
                    err = Some(corrupt(e));
                    return false;
                }
            };
            if out.len() >= max_changes && out.last().is_some_and(|l| l.revision != c.revision) {
                return false;
            }
            if filter(&c.key) {
                out.push(c);
            }
            true
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// The value `key` had at `revision`, if that change is still in the history.
pub fn value_at<S: Read + ?Sized>(
    s: &S,
    key: &[u8],
    revision: u64,
) -> Result<Option<Vec<u8>>, StorageError> {
    let mut found = None;
    let mut err = None;
    s.scan(
        &keys::history_start(revision),
        Some(&keys::history_start(revision + 1)),
        false,
        &mut |_, v| match codec::decode::<Change>(v) {
            Ok(c) if c.key == key => {
                found = c.value;
                false
            }
            Ok(_) => true,
            Err(e) => {
                err = Some(corrupt(e));
                false
            }
        },
    )?;
    err.map_or(Ok(found), Err)
}

/// The revision of the oldest change at or after `time_ms` (for age-based compaction), looking
/// at no more than `budget` changes from the compact revision; `None` when none is that new
/// within the budget (then everything looked at is older).
pub fn first_revision_since<S: Read + ?Sized>(
    s: &S,
    time_ms: u64,
    budget: usize,
) -> Result<(Option<u64>, u64), StorageError> {
    let from = compact_revision(s)?;
    let mut seen = 0usize;
    let mut last = from;
    let mut found = None;
    let mut err = None;
    s.scan(
        &keys::history_start(from),
        Some(&[keys::HISTORY + 1]),
        false,
        &mut |_, v| match codec::decode::<Change>(v) {
            Ok(c) => {
                seen += 1;
                last = c.revision;
                if c.time_ms >= time_ms {
                    found = Some(c.revision);
                    return false;
                }
                seen < budget
            }
            Err(e) => {
                err = Some(corrupt(e));
                false
            }
        },
    )?;
    match err {
        Some(e) => Err(e),
        None => Ok((found, last)),
    }
}
