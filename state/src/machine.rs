//! `apply`: the one function that changes views. A pure function of (views, entry).

use crate::command::{Command, Outcome, Request, Txn};
use crate::keys;
use crate::storage::{Overlay, Read, StorageError};
use crate::views::{events, store};

/// A big-endian u64 stored under `key`, 0 when absent.
fn read_u64<S: Read + ?Sized>(s: &S, key: &[u8], what: &str) -> Result<u64, StorageError> {
    Ok(match s.get(key)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| StorageError(format!("corrupt {what}")))?,
        ),
        None => 0,
    })
}

/// The state clock: the largest leader time of any applied entry (ms), 0 before the first.
pub fn clock_ms<S: Read + ?Sized>(s: &S) -> Result<u64, StorageError> {
    read_u64(s, keys::META_CLOCK, "state clock")
}

/// The store revision: the revision of the last applied command (0 before the first).
pub fn revision<S: Read + ?Sized>(s: &S) -> Result<u64, StorageError> {
    read_u64(s, keys::META_REVISION, "store revision")
}

/// When the next record expires (ms on the state clock), so the leader can propose a tick.
pub fn next_expiry<S: Read + ?Sized>(s: &S) -> Result<Option<u64>, StorageError> {
    store::next_expiry(s)
}

/// Applies the request of the entry at log index `index`.
///
/// First the state clock advances to `max(clock, req.time_ms)` and everything due by then is
/// purged; then the commands run in order. Each command is one client's request: it is
/// validated and applied on its own (an invalid one is rejected and changes nothing) and gets
/// its own revision, one above the last — so a leader may batch many clients' commands into one
/// entry and a compare-and-swap on a mod revision still names exactly one write.
pub fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    index: u64,
    req: &Request,
) -> Result<Vec<Outcome>, StorageError> {
    let clock = clock_ms(ov)?;
    let now = clock.max(req.time_ms);
    if now != clock {
        ov.put(keys::META_CLOCK.to_vec(), now.to_be_bytes().to_vec());
    }
    store::purge_expired(ov, now)?;

    let start = match ov.get(keys::META_REVISION)? {
        Some(_) => revision(ov)?,
        // Data written before the counter existed used the log index as the revision:
        // continuing from the index keeps every new revision above every old one.
        None => index.saturating_sub(1),
    };
    let mut rev = start;
    let mut out = Vec::with_capacity(req.cmds.len());
    for cmd in &req.cmds {
        match cmd.validate() {
            Err(rejected) => out.push(rejected),
            Ok(()) => {
                rev += 1;
                out.push(apply_one(ov, rev, now, cmd)?);
            }
        }
    }
    if rev != start {
        ov.put(keys::META_REVISION.to_vec(), rev.to_be_bytes().to_vec());
    }
    Ok(out)
}

fn apply_one<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    revision: u64,
    now: u64,
    cmd: &Command,
) -> Result<Outcome, StorageError> {
    Ok(match cmd {
        Command::Put(p) => Outcome::Put {
            revision: store::put(ov, p, revision, now)?,
        },
        Command::Delete(d) => Outcome::Deleted {
            existed: store::delete(ov, d)?,
        },
        Command::Txn(t) => apply_txn(ov, revision, now, t)?,
        Command::SetClusterId(id) => match ov.get(keys::META_CLUSTER_ID)? {
            Some(existing) => Outcome::ClusterId(String::from_utf8_lossy(&existing).into_owned()),
            None => {
                ov.put(keys::META_CLUSTER_ID.to_vec(), id.as_bytes().to_vec());
                Outcome::ClusterId(id.clone())
            }
        },
        Command::Publish(p) => Outcome::Published {
            seq: events::publish(ov, p, now)?,
        },
        Command::SetRetention(r) => {
            events::set_retention(ov, r, now)?;
            Outcome::Done
        }
        Command::Claim(c) => Outcome::Claimed(events::claim(ov, c, now)?),
        Command::Ack(a) => Outcome::Count(events::ack(ov, a, now)?),
        Command::Release(r) => Outcome::Count(events::release(ov, r, now)?),
    })
}

/// The cluster id, once the first leader has set it.
pub fn cluster_id<S: Read + ?Sized>(s: &S) -> Result<Option<String>, StorageError> {
    Ok(s.get(keys::META_CLUSTER_ID)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn apply_txn<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    revision: u64,
    now: u64,
    t: &Txn,
) -> Result<Outcome, StorageError> {
    let mut succeeded = true;
    for c in &t.compare {
        let sk = keys::store_key(store::db_name(&c.db), store::table_name(&c.table), &c.key);
        let current = store::load(ov, &sk)?
            .filter(|r| !r.expired(now))
            .map_or(0, |r| r.mod_revision);
        if current != c.mod_revision {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded { &t.success } else { &t.failure };
    let mut results = Vec::with_capacity(branch.len());
    for cmd in branch {
        results.push(apply_one(ov, revision, now, cmd)?);
    }
    Ok(Outcome::Txn {
        succeeded,
        revision,
        results,
    })
}

#[cfg(test)]
mod tests;
