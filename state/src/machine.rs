//! `apply`: the one function that changes views. A pure function of (views, entry). It only
//! dispatches to the views and runs cross-view transactions.

use crate::command::{Command, Outcome, Request, Txn};
use crate::keys;
use crate::storage::{Overlay, Read, StorageError};
use crate::views::{auth, config, events, lease, lock, meta, registry, runtime, store};
use crate::{expiry, views};

/// The keyspace schema this release writes: 2 added leases, the change feed and the general
/// expiry index (schema 1 is migrated at the first entry applied after an upgrade).
pub const SCHEMA: u64 = 2;

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

/// The revision of the last applied command (0 before the first).
pub fn revision<S: Read + ?Sized>(s: &S) -> Result<u64, StorageError> {
    read_u64(s, keys::META_REVISION, "store revision")
}

/// When the next thing (record, lease) expires (ms on the state clock), so the leader can
/// propose a tick.
pub fn next_expiry<S: Read + ?Sized>(s: &S) -> Result<Option<u64>, StorageError> {
    expiry::next_due(s)
}

/// The cluster id, once the first leader has set it.
pub fn cluster_id<S: Read + ?Sized>(s: &S) -> Result<Option<String>, StorageError> {
    meta::cluster_id(s)
}

/// Where an entry sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    pub index: u64,
    pub term: u64,
}

/// Applies the request of the entry at `pos`.
///
/// First the state clock advances to `max(clock, req.time_ms)`; the first entry of a new term
/// renews every lease; everything due by the clock is purged (as one revision); then the
/// commands run in order. Each command is one client's request: it is validated and applied on
/// its own (an invalid one is rejected and changes nothing) and gets its own revision, one
/// above the last — so a leader may batch many clients' commands into one entry and a
/// compare-and-swap on a mod revision still names exactly one write.
pub fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    pos: LogPos,
    req: &Request,
) -> Result<Vec<Outcome>, StorageError> {
    if read_u64(ov, keys::META_SCHEMA, "schema")? < SCHEMA {
        expiry::migrate_v1(ov)?;
        ov.put(keys::META_SCHEMA.to_vec(), SCHEMA.to_be_bytes().to_vec());
    }
    let clock = clock_ms(ov)?;
    let now = clock.max(req.time_ms);
    if now != clock {
        ov.put(keys::META_CLOCK.to_vec(), now.to_be_bytes().to_vec());
    }
    let start = match ov.get(keys::META_REVISION)? {
        Some(_) => revision(ov)?,
        // Data written before the counter existed used the log index as the revision:
        // continuing from the index keeps every new revision above every old one.
        None => pos.index.saturating_sub(1),
    };
    let mut rev = start;

    // A new leader: leases get their full TTL from its clock before anything can expire.
    if pos.term > read_u64(ov, keys::META_TERM, "term")? {
        lease::renew_all(ov, now)?;
        ov.put(keys::META_TERM.to_vec(), pos.term.to_be_bytes().to_vec());
    }
    if purge_due(ov, rev + 1, now)? {
        rev += 1;
    }

    let mut out = Vec::with_capacity(req.cmds.len());
    for cmd in &req.cmds {
        if let Err(rejected) = cmd.validate() {
            out.push(rejected);
            continue;
        }
        match apply_one(ov, rev + 1, now, cmd)? {
            refused @ (Outcome::Rejected { .. } | Outcome::Refused { .. }) => out.push(refused),
            o => {
                rev += 1;
                out.push(o);
            }
        }
    }
    if rev != start {
        ov.put(keys::META_REVISION.to_vec(), rev.to_be_bytes().to_vec());
    }
    Ok(out)
}

/// Purges everything due at `now`, all as changes at `revision`; returns whether anything
/// changed (then the revision is used).
fn purge_due<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    revision: u64,
    now: u64,
) -> Result<bool, StorageError> {
    let owners = expiry::take_due(ov, now)?;
    if owners.is_empty() {
        return Ok(false);
    }
    let before = ov.feed.changes.len();
    for owner in owners {
        match owner.first() {
            Some(&keys::STORE) => {
                store::remove(ov, &owner, revision, now)?;
            }
            Some(&keys::LEASE) => lease::expire(ov, &owner, revision, now)?,
            _ => return Err(StorageError("corrupt owner in the expiry index".into())),
        }
    }
    // An expired lease with no keys changes no view: no revision for it.
    Ok(ov.feed.changes.len() > before)
}

/// Applies one validated command at `revision`. A command whose state-dependent check fails
/// returns `Rejected` or `Refused` having changed nothing (and takes no revision).
fn apply_one<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    revision: u64,
    now: u64,
    cmd: &Command,
) -> Result<Outcome, StorageError> {
    match cmd {
        Command::Store(c) => {
            if let Err(rejected) = c.check(ov, now)? {
                return Ok(rejected);
            }
            store::apply(ov, c, revision, now)
        }
        Command::Events(c) => events::apply(ov, c, now),
        Command::Lease(c) => lease::apply(ov, c, revision, now),
        Command::Meta(c) => meta::apply(ov, c, revision),
        Command::Txn(t) => apply_txn(ov, revision, now, t),
        Command::Registry(c) => registry::apply(ov, c, revision, now),
        Command::Config(c) => config::apply(ov, c, revision, now),
        Command::Lock(c) => lock::apply(ov, c, revision, now),
        Command::Auth(c) => auth::apply(ov, c, revision, now),
        Command::Runtime(c) => runtime::apply(ov, c, revision, now),
        Command::Fenced(f, c) => {
            if let Err(rejected) = lock::check_fence(ov, f)? {
                return Ok(rejected);
            }
            apply_one(ov, revision, now, c)
        }
    }
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
    // Every state-dependent check of the branch passes before any of it runs: a transaction
    // is applied whole or not at all.
    for cmd in branch {
        if let Command::Store(c) = cmd {
            if let Err(rejected) = c.check(ov, now)? {
                return Ok(rejected);
            }
        }
    }
    let mut results = Vec::with_capacity(branch.len());
    for cmd in branch {
        results.push(match cmd {
            Command::Store(c) => store::apply(ov, c, revision, now)?,
            Command::Events(c) => events::apply(ov, c, now)?,
            // `Command::validate` admits only store commands and publishes in a transaction.
            Command::Lease(_)
            | Command::Meta(_)
            | Command::Txn(_)
            | Command::Registry(_)
            | Command::Config(_)
            | Command::Lock(_)
            | Command::Auth(_)
            | Command::Runtime(_)
            | Command::Fenced(..) => {
                return Err(StorageError(
                    "a transaction holds a command validate() refuses".into(),
                ))
            }
        });
    }
    Ok(Outcome::Txn {
        succeeded,
        revision,
        results,
    })
}

/// The first revision still in the change feed.
pub fn compact_revision<S: Read + ?Sized>(s: &S) -> Result<u64, StorageError> {
    views::history::compact_revision(s)
}

#[cfg(test)]
mod tests;
