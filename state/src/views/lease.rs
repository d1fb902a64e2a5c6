//! Leases, as etcd has them: granted with a TTL, kept alive, revoked; store records attached to
//! a lease are deleted with it, in the same entry (one revision) on every node.
//!
//! A lease never expires because of an election or an outage: the first entry of every new
//! term gives every lease its full TTL again from that entry's clock (see `renew_all`), the
//! same on every node because it is decided by the log (etcd does the same on leader change).

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{reject, Outcome};
use crate::expiry;
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};
use crate::views::store;

/// Marker for [`crate::command::View`].
pub struct Leases;

/// The shortest TTL a lease may have: shorter ones would expire between keepalives.
pub const MIN_TTL_MS: u64 = 1_000;
/// The longest (a year); longer leases are better written without one.
pub const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl_ms: u64,
    /// When it expires on the state clock unless kept alive.
    pub expiry_ms: u64,
    /// The revision that granted it.
    pub granted_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Grants a lease; `id` 0 lets the cluster choose (the command's revision).
    Grant { id: u64, ttl_ms: u64 },
    /// Restarts the lease's TTL from the entry's clock.
    KeepAlive { id: u64 },
    /// Ends the lease now and deletes its keys.
    Revoke { id: u64 },
    /// `cmd` on behalf of an account of `namespace`: a grant makes the lease that
    /// namespace's, and a keepalive or revoke of another namespace's lease finds nothing.
    /// (Appended: bincode numbers variants by position.)
    In { namespace: String, cmd: Box<Cmd> },
}

/// The namespace a lease is of when nothing says otherwise (leases granted before
/// namespaces, by an admin of `micro`, or by another view).
pub const DEFAULT_NAMESPACE: &str = "micro";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    Granted {
        id: u64,
        ttl_ms: u64,
    },
    Kept {
        id: u64,
        ttl_ms: u64,
    },
    /// The lease ended; `keys` records were deleted with it.
    Revoked {
        id: u64,
        keys: u64,
    },
    /// No such lease (never granted, expired or revoked).
    NotFound {
        id: u64,
    },
}

impl Cmd {
    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Grant { ttl_ms, .. } => {
                if !(MIN_TTL_MS..=MAX_TTL_MS).contains(ttl_ms) {
                    return Err(reject(
                        "ttl",
                        format!(
                            "is {ttl_ms} ms; a lease lives between {} s and {} days",
                            MIN_TTL_MS / 1000,
                            MAX_TTL_MS / 86_400_000
                        ),
                    ));
                }
                Ok(())
            }
            Cmd::KeepAlive { id } | Cmd::Revoke { id } => {
                if *id == 0 {
                    return Err(reject("id", "must not be 0".into()));
                }
                Ok(())
            }
            Cmd::In { namespace, cmd } => {
                if namespace.is_empty() {
                    return Err(reject("namespace", "must not be empty".into()));
                }
                crate::command::check_name("namespace", namespace, true)?;
                if matches!(**cmd, Cmd::In { .. }) {
                    return Err(reject("cmd", "must not be nested".into()));
                }
                cmd.validate()
            }
        }
    }
}

fn corrupt(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt lease: {e}"))
}

/// The lease, if it exists (maybe past its expiry on a reader's clock).
pub fn get<S: Read + ?Sized>(s: &S, id: u64) -> Result<Option<Lease>, StorageError> {
    match s.get(&keys::lease_key(id))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

/// The lease, if it exists and has not expired at `now_ms`.
pub fn get_live<S: Read + ?Sized>(
    s: &S,
    id: u64,
    now_ms: u64,
) -> Result<Option<Lease>, StorageError> {
    Ok(get(s, id)?.filter(|l| l.expiry_ms > now_ms))
}

/// The namespace lease `id` is of.
pub fn namespace<S: Read + ?Sized>(s: &S, id: u64) -> Result<String, StorageError> {
    match s.get(&keys::lease_ns_key(id))? {
        Some(b) => String::from_utf8(b.to_vec())
            .map_err(|_| StorageError(format!("corrupt namespace of lease {id}"))),
        None => Ok(DEFAULT_NAMESPACE.to_string()),
    }
}

/// Every lease, by id.
pub fn list<S: Read + ?Sized>(s: &S) -> Result<Vec<(u64, Lease)>, StorageError> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &[keys::LEASE],
        Some(&[keys::LEASE + 1]),
        false,
        &mut |k, v| {
            let id = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match (id, codec::decode(v)) {
                (Some(id), Ok(l)) => out.push((id, l)),
                (_, Err(e)) => err = Some(corrupt(e)),
                (None, _) => err = Some(StorageError("corrupt lease key".into())),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// The keyspace keys attached to the lease.
pub fn attached<S: Read + ?Sized>(s: &S, id: u64) -> Result<Vec<Vec<u8>>, StorageError> {
    let prefix = keys::lease_keys_key(id, &[]);
    let mut out = Vec::new();
    s.scan(
        &prefix,
        prefix_end(&prefix).as_deref(),
        false,
        &mut |k, _| {
            out.push(k[prefix.len()..].to_vec());
            true
        },
    )?;
    Ok(out)
}

pub(crate) fn attach<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, id: u64, owner: &[u8]) {
    ov.put(keys::lease_keys_key(id, owner), Vec::new());
}

pub(crate) fn detach<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, id: u64, owner: &[u8]) {
    ov.delete(keys::lease_keys_key(id, owner));
}

fn save<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, id: u64, l: &Lease) {
    ov.put(keys::lease_key(id), codec::encode(l));
}

/// Moves the lease's expiry to `now + ttl`.
fn renew<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, id: u64, l: &mut Lease, now: u64) {
    let lk = keys::lease_key(id);
    expiry::cancel(ov, l.expiry_ms, &lk);
    l.expiry_ms = now.saturating_add(l.ttl_ms);
    expiry::schedule(ov, l.expiry_ms, &lk);
    save(ov, id, l);
}

/// Ends the lease: deletes it and every record attached to it, as changes at `revision`.
/// Returns how many records were deleted.
fn end<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    id: u64,
    l: &Lease,
    revision: u64,
    now: u64,
) -> Result<u64, StorageError> {
    let lk = keys::lease_key(id);
    expiry::cancel(ov, l.expiry_ms, &lk);
    ov.delete(lk);
    ov.delete(keys::lease_ns_key(id));
    let mut n = 0;
    for owner in attached(ov, id)? {
        match owner.first() {
            Some(&keys::STORE) => n += store::remove(ov, &owner, revision, now)? as u64,
            Some(&keys::LOCK) => {
                n += crate::views::lock::expire_waiter(ov, &owner, revision, now)? as u64
            }
            Some(&keys::REG_NODE) => {
                n += crate::views::registry::expire_node(ov, &owner, revision, now)? as u64
            }
            _ => return Err(StorageError("corrupt lease attachment".into())),
        }
        // `remove` detaches; make sure a dangling attachment goes too.
        detach(ov, id, &owner);
    }
    Ok(n)
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    let Cmd::In { namespace: ns, cmd } = cmd else {
        return apply_plain(ov, cmd, revision, now);
    };
    match **cmd {
        Cmd::KeepAlive { id } | Cmd::Revoke { id } if namespace(ov, id)? != *ns => {
            // Another namespace's lease does not exist for this caller.
            Ok(Outcome::Lease(Out::NotFound { id }))
        }
        _ => {
            let out = apply_plain(ov, cmd, revision, now)?;
            if let Outcome::Lease(Out::Granted { id, .. }) = out {
                if ns != DEFAULT_NAMESPACE {
                    ov.put(keys::lease_ns_key(id), ns.as_bytes().to_vec());
                }
            }
            Ok(out)
        }
    }
}

fn apply_plain<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    Ok(Outcome::Lease(match *cmd {
        Cmd::Grant { id, ttl_ms } => {
            let id = if id == 0 { revision } else { id };
            if get(ov, id)?.is_some() {
                return Ok(reject("id", format!("lease {id} already exists")));
            }
            let mut l = Lease {
                ttl_ms,
                expiry_ms: 0,
                granted_revision: revision,
            };
            renew(ov, id, &mut l, now);
            Out::Granted { id, ttl_ms }
        }
        Cmd::KeepAlive { id } => match get(ov, id)? {
            Some(mut l) => {
                renew(ov, id, &mut l, now);
                Out::Kept {
                    id,
                    ttl_ms: l.ttl_ms,
                }
            }
            None => Out::NotFound { id },
        },
        Cmd::Revoke { id } => match get(ov, id)? {
            Some(l) => Out::Revoked {
                id,
                keys: end(ov, id, &l, revision, now)?,
            },
            None => Out::NotFound { id },
        },
        Cmd::In { .. } => return Ok(reject("cmd", "must not be nested".into())),
    }))
}

/// Grants a lease on behalf of another view (its id is `revision`), attached to `owner`.
pub(crate) fn grant_for<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    owner: &[u8],
    ttl_ms: u64,
    revision: u64,
    now: u64,
) -> Result<u64, StorageError> {
    let mut id = revision;
    // Another owner may have taken this revision's id in the same command.
    while get(ov, id)?.is_some() {
        id += 1 << 48;
    }
    let mut l = Lease {
        ttl_ms,
        expiry_ms: 0,
        granted_revision: revision,
    };
    renew(ov, id, &mut l, now);
    attach(ov, id, owner);
    Ok(id)
}

/// Renews a lease another view holds, with a (possibly new) TTL; `false` if it is gone.
pub(crate) fn keep_for<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    id: u64,
    ttl_ms: u64,
    now: u64,
) -> Result<bool, StorageError> {
    let Some(mut l) = get(ov, id)? else {
        return Ok(false);
    };
    l.ttl_ms = ttl_ms;
    renew(ov, id, &mut l, now);
    Ok(true)
}

/// Ends a lease another view holds without touching its owners (the view removes them).
pub(crate) fn drop_for<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    id: u64,
) -> Result<(), StorageError> {
    if let Some(l) = get(ov, id)? {
        let lk = keys::lease_key(id);
        expiry::cancel(ov, l.expiry_ms, &lk);
        ov.delete(lk);
        ov.delete(keys::lease_ns_key(id));
        for owner in attached(ov, id)? {
            detach(ov, id, &owner);
        }
    }
    Ok(())
}

/// Expires the lease at keyspace key `lk` (it was due), as changes at `revision`.
pub(crate) fn expire<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    lk: &[u8],
    revision: u64,
    now: u64,
) -> Result<(), StorageError> {
    let id = lk
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError("corrupt lease key in the expiry index".into()))?;
    if let Some(l) = get(ov, id)? {
        end(ov, id, &l, revision, now)?;
    }
    Ok(())
}

/// Gives every lease its full TTL from `now` (the first entry of a new term).
pub(crate) fn renew_all<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    now: u64,
) -> Result<(), StorageError> {
    for (id, mut l) in list(ov)? {
        renew(ov, id, &mut l, now);
    }
    Ok(())
}
