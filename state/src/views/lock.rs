//! Locks and elections with fencing tokens.
//!
//! A lock is a queue of waiters, each created by an `Acquire` at its revision and held by a
//! lease: the lowest waiter holds the lock, and its creation revision is its **token**, so tokens
//! strictly increase from holder to holder (waiters are served in the order they asked). A
//! waiter leaves when it releases or its lease ends (expiry or revoke); the next one then holds
//! the lock, in the same entry, on every node. An election is the same queue with a value per
//! waiter: the holder is the leader, and its value is what it proclaims.
//!
//! Every change of the holder is a change in the feed under `LOCK_META name` (value: the
//! [`Meta`]), so waiters and observers are watchers, not pollers. Writes fenced with a token
//! older than the lock's newest token are refused by apply (`Command::Fenced`).

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, check_size, reject, Outcome, FIXED_SIZE};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};
use crate::views::{history, lease};

/// Marker for [`crate::command::View`].
pub struct Locks;

/// A waiter as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub lease: u64,
    /// The candidate's value (elections); empty for plain locks.
    pub value: Vec<u8>,
}

/// A lock's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    /// The newest token ever granted (the holder's while it holds): fenced writes with an
    /// older one are refused.
    pub token: u64,
    /// The holder's token (= its waiter's revision), 0 when free.
    pub holder: u64,
    /// The holder's value (an election's leader value).
    pub value: Vec<u8>,
}

/// A fence: the write is applied only if `token` is the lock's newest token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fence {
    pub lock: String,
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Queues a waiter held by `lease` (which must be live).
    Acquire {
        name: String,
        lease: u64,
        value: Vec<u8>,
    },
    /// Removes the waiter with token `token` (the holder or one still waiting).
    Release { name: String, token: u64 },
    /// The holder replaces its value (an election's leader proclaims).
    Proclaim {
        name: String,
        token: u64,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    /// Queued with this token; `held` when it holds the lock already.
    Queued {
        token: u64,
        held: bool,
    },
    /// Whether the waiter was there.
    Released {
        existed: bool,
    },
    Proclaimed,
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::Acquire { value, name, .. } | Cmd::Proclaim { value, name, .. } => {
                FIXED_SIZE + name.len() + value.len()
            }
            Cmd::Release { name, .. } => FIXED_SIZE + name.len(),
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Acquire { name, lease, value } => {
                check_name("name", name, true)?;
                if *lease == 0 {
                    return Err(reject(
                        "lease",
                        "is required: a lock is held by a lease".into(),
                    ));
                }
                check_size("value", value.len(), crate::MAX_KEY_BYTES * 16)
            }
            Cmd::Release { name, .. } => check_name("name", name, true),
            Cmd::Proclaim { name, value, .. } => {
                check_name("name", name, true)?;
                check_size("value", value.len(), crate::MAX_KEY_BYTES * 16)
            }
        }
    }
}

impl Fence {
    pub fn validate(&self) -> Result<(), Outcome> {
        check_name("fence.lock", &self.lock, true)?;
        if self.token == 0 {
            return Err(reject("fence.token", "must not be 0".into()));
        }
        Ok(())
    }
}

fn corrupt(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt lock entry: {e}"))
}

/// A lock's state (default: never held).
pub fn meta<S: Read + ?Sized>(s: &S, name: &str) -> Result<Meta, StorageError> {
    match s.get(&keys::lock_meta_key(name))? {
        Some(b) => codec::decode(&b).map_err(corrupt),
        None => Ok(Meta::default()),
    }
}

/// The waiters of a lock in queue order, as (token, waiter).
pub fn waiters<S: Read + ?Sized>(s: &S, name: &str) -> Result<Vec<(u64, Waiter)>, StorageError> {
    let prefix = keys::lock_key(name, None);
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &prefix,
        prefix_end(&prefix).as_deref(),
        false,
        &mut |k, v| {
            let rev = k[prefix.len()..].try_into().ok().map(u64::from_be_bytes);
            match (rev, codec::decode::<Waiter>(v)) {
                (Some(r), Ok(w)) => out.push((r, w)),
                (None, _) => err = Some(StorageError("corrupt lock key".into())),
                (_, Err(e)) => err = Some(corrupt(e)),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// The first waiter queued after `token` (a seek past everything released before: the keys
/// below the holder are all deleted, and a scan from the prefix would walk their tombstones).
fn next_after<S: Read + ?Sized>(
    s: &S,
    name: &str,
    token: u64,
) -> Result<Option<(u64, Waiter)>, StorageError> {
    let from = keys::lock_key(name, Some(token.saturating_add(1)));
    let prefix = keys::lock_key(name, None);
    let mut out = None;
    let mut err = None;
    s.scan(&from, prefix_end(&prefix).as_deref(), false, &mut |k, v| {
        let rev = k[prefix.len()..].try_into().ok().map(u64::from_be_bytes);
        match (rev, codec::decode::<Waiter>(v)) {
            (Some(r), Ok(w)) => out = Some((r, w)),
            (None, _) => err = Some(StorageError("corrupt lock key".into())),
            (_, Err(e)) => err = Some(corrupt(e)),
        }
        false
    })?;
    err.map_or(Ok(out), Err)
}

/// Whether the waiter with `token` is still queued (or holding).
pub fn is_queued<S: Read + ?Sized>(s: &S, name: &str, token: u64) -> Result<bool, StorageError> {
    Ok(s.get(&keys::lock_key(name, Some(token)))?.is_some())
}

/// Every lock with a holder or a waiter, with its state and queue length.
pub fn list<S: Read + ?Sized>(s: &S) -> Result<Vec<(String, Meta)>, StorageError> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &[keys::LOCK_META],
        Some(&[keys::LOCK_META + 1]),
        false,
        &mut |k, v| {
            match codec::decode::<Meta>(v) {
                Ok(m) if m.holder != 0 => {
                    out.push((String::from_utf8_lossy(&k[1..]).into_owned(), m))
                }
                Ok(_) => {}
                Err(e) => err = Some(corrupt(e)),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// Whether `fence` may write now: its token is the lock's newest.
pub fn check_fence<S: Read + ?Sized>(
    s: &S,
    fence: &Fence,
) -> Result<Result<(), Outcome>, StorageError> {
    let m = meta(s, &fence.lock)?;
    Ok(if fence.token == m.token {
        Ok(())
    } else if fence.token < m.token {
        Err(refuse(
            "fence",
            format!(
                "token {} is older than lock {:?}'s current token {}: this holder lost the lock",
                fence.token, fence.lock, m.token
            ),
        ))
    } else {
        Err(refuse(
            "fence",
            format!(
                "token {} was never granted for lock {:?} (its newest token is {})",
                fence.token, fence.lock, m.token
            ),
        ))
    })
}

fn refuse(field: &str, reason: String) -> Outcome {
    Outcome::Refused {
        field: field.to_string(),
        reason,
    }
}

fn save_meta<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    name: &str,
    m: &Meta,
    prev: u64,
    revision: u64,
    now: u64,
) {
    let k = keys::lock_meta_key(name);
    let bytes = codec::encode(m);
    ov.put(k.clone(), bytes.clone());
    history::record(ov, revision, now, k, Some(bytes), prev);
}

/// Removes waiter `token` of `name` (its lease already ended or detached); promotes the next
/// waiter if it held the lock. Returns whether it was there.
fn remove<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    name: &str,
    token: u64,
    revision: u64,
    now: u64,
) -> Result<bool, StorageError> {
    let k = keys::lock_key(name, Some(token));
    let Some(b) = ov.get(&k)? else {
        return Ok(false);
    };
    let w: Waiter = codec::decode(&b).map_err(corrupt)?;
    ov.delete(k.clone());
    lease::detach(ov, w.lease, &k);
    let mut m = meta(ov, name)?;
    if m.holder == token {
        let prev = m.token;
        match next_after(ov, name, token)? {
            Some((next, nw)) => {
                m.holder = next;
                m.token = next;
                m.value = nw.value;
            }
            None => {
                m.holder = 0;
                m.value.clear();
            }
        }
        save_meta(ov, name, &m, prev, revision, now);
    }
    Ok(true)
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    Ok(Outcome::Lock(match cmd {
        Cmd::Acquire {
            name,
            lease: l,
            value,
        } => {
            if lease::get_live(ov, *l, now)?.is_none() {
                return Ok(reject(
                    "lease",
                    format!("lease {l} not found (expired or revoked)"),
                ));
            }
            let k = keys::lock_key(name, Some(revision));
            ov.put(
                k.clone(),
                codec::encode(&Waiter {
                    lease: *l,
                    value: value.clone(),
                }),
            );
            lease::attach(ov, *l, &k);
            let mut m = meta(ov, name)?;
            let held = m.holder == 0;
            if held {
                let prev = m.token;
                m.holder = revision;
                m.token = revision;
                m.value = value.clone();
                save_meta(ov, name, &m, prev, revision, now);
            }
            Out::Queued {
                token: revision,
                held,
            }
        }
        Cmd::Release { name, token } => Out::Released {
            existed: remove(ov, name, *token, revision, now)?,
        },
        Cmd::Proclaim { name, token, value } => {
            let mut m = meta(ov, name)?;
            if m.holder != *token || *token == 0 {
                return Ok(reject(
                    "token",
                    format!(
                        "{token} does not lead {name:?} (its leader's token is {})",
                        m.holder
                    ),
                ));
            }
            m.value = value.clone();
            let prev = m.token;
            save_meta(ov, name, &m, prev, revision, now);
            Out::Proclaimed
        }
    }))
}

/// A waiter's lease ended (owner key `LOCK name rev`): it leaves the queue.
pub(crate) fn expire_waiter<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    owner: &[u8],
    revision: u64,
    now: u64,
) -> Result<bool, StorageError> {
    let (name, token) = keys::parse_lock_key(owner)
        .ok_or_else(|| StorageError("corrupt lock waiter key".into()))?;
    remove(ov, &name, token, revision, now)
}
