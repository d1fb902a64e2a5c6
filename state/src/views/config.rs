//! Dynamic config, Micro v3's model replicated: one JSON document per namespace, addressed by
//! dot paths. The document is kept as its leaves (`CONFIG ns seg\0seg\0...` → the leaf's JSON
//! text), so a subtree is a key prefix: reading it is one scan, deleting it one range, and
//! watching it is a watch on that prefix. Every leaf carries the revision that last wrote it,
//! which `Set` may be conditioned on (compare-and-set).
//!
//! Secret leaves arrive already encrypted (the edge encrypts with the cluster's current config
//! key, which lives here: set by the first `InitKey`, replaced for new writes by `RotateKey`,
//! old ones kept for reading); this view never sees their plain text.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, reject, Outcome, FIXED_SIZE};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};
use crate::views::history;

/// Marker for [`crate::command::View`].
pub struct Config;

/// The namespace used when a request names none, as in Micro v3.
pub const DEFAULT_NAMESPACE: &str = "micro";
/// The largest leaf (JSON text or ciphertext), as for store values.
pub const MAX_LEAF_BYTES: usize = crate::MAX_VALUE_BYTES;

/// One leaf as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// JSON text of a scalar or an array; for a secret, the ciphertext (see the edge).
    pub json: String,
    pub secret: bool,
    pub mod_revision: u64,
}

/// A leaf to write, relative to the `Set`'s path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLeaf {
    pub path: Vec<String>,
    pub json: String,
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Writes `leaves` under `path`: each replaces what was at its place (a leaf above it or a
    /// subtree below it); leaves elsewhere stay (an object merges).
    Set {
        namespace: String,
        path: Vec<String>,
        leaves: Vec<NewLeaf>,
        /// Only if the revision of `path` (its leaf, or the newest leaf of its subtree; 0 when
        /// absent) is this.
        if_revision: Option<u64>,
    },
    /// Removes the leaf or subtree at `path`.
    Delete {
        namespace: String,
        path: Vec<String>,
    },
    /// Sets the cluster's first config key; later proposals are ignored (the first wins).
    InitKey { key: Vec<u8> },
    /// Adds a new config key and makes it the one new secrets use; older keys stay to read
    /// what they encrypted.
    RotateKey { key: Vec<u8> },
}

/// The cluster's config keys: new secrets use `current`; a ciphertext names its key's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Keys {
    pub current: u32,
    pub keys: std::collections::BTreeMap<u32, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    Set {
        revision: u64,
    },
    Deleted {
        leaves: u64,
    },
    /// `if_revision` did not match; nothing was written.
    RevisionMismatch {
        current: u64,
    },
    /// The key new secrets use now, and its id.
    Key {
        id: u32,
        key: Vec<u8>,
    },
}

/// `""` means the default namespace.
pub fn namespace_name(ns: &str) -> &str {
    if ns.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        ns
    }
}

fn check_path(field: &str, path: &[String]) -> Result<(), Outcome> {
    for seg in path {
        if seg.is_empty() || seg.contains('\0') {
            return Err(reject(
                field,
                "has an empty segment (or a NUL): use dot-separated names like a.b.c".into(),
            ));
        }
        check_name(field, seg, true)?;
    }
    Ok(())
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::Set { leaves, .. } => {
                FIXED_SIZE
                    + leaves
                        .iter()
                        .map(|l| l.json.len() + l.path.iter().map(String::len).sum::<usize>())
                        .sum::<usize>()
            }
            Cmd::Delete { .. } | Cmd::InitKey { .. } | Cmd::RotateKey { .. } => FIXED_SIZE,
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Set {
                namespace,
                path,
                leaves,
                ..
            } => {
                check_name("namespace", namespace, false)?;
                check_path("path", path)?;
                for l in leaves {
                    check_path("value", &l.path)?;
                    crate::command::check_size("value", l.json.len(), MAX_LEAF_BYTES)?;
                }
                Ok(())
            }
            Cmd::Delete { namespace, path } => {
                check_name("namespace", namespace, false)?;
                check_path("path", path)
            }
            Cmd::InitKey { key } | Cmd::RotateKey { key } => {
                if key.len() != 32 {
                    return Err(reject("key", "must be 32 bytes".into()));
                }
                Ok(())
            }
        }
    }
}

fn corrupt(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt config leaf: {e}"))
}

/// The key (or subtree prefix) of `path` in namespace `ns`.
pub fn key(ns: &str, path: &[String]) -> Vec<u8> {
    let mut k = keys::config_prefix(namespace_name(ns));
    for seg in path {
        k.extend_from_slice(seg.as_bytes());
        k.push(0);
    }
    k
}

/// Splits a config key into (namespace, path).
pub fn parse_key(k: &[u8]) -> Option<(String, Vec<String>)> {
    if k.first() != Some(&keys::CONFIG) {
        return None;
    }
    let (ns, rest) = keys::take_str(&k[1..])?;
    let mut path = Vec::new();
    for seg in rest.split(|b| *b == 0) {
        if !seg.is_empty() {
            path.push(String::from_utf8(seg.to_vec()).ok()?);
        }
    }
    Some((ns, path))
}

/// Every leaf at or under `path`, as (path relative to the namespace, leaf), in key order.
pub fn leaves<S: Read + ?Sized>(
    s: &S,
    ns: &str,
    path: &[String],
) -> Result<Vec<(Vec<String>, Leaf)>, StorageError> {
    let prefix = key(ns, path);
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &prefix,
        prefix_end(&prefix).as_deref(),
        false,
        &mut |k, v| {
            match (parse_key(k), codec::decode::<Leaf>(v)) {
                (Some((_, p)), Ok(l)) => out.push((p, l)),
                (None, _) => err = Some(StorageError("corrupt config key".into())),
                (_, Err(e)) => err = Some(corrupt(e)),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// The revision of `path`: its leaf's, or the newest of its subtree; 0 when absent.
pub fn revision_of<S: Read + ?Sized>(
    s: &S,
    ns: &str,
    path: &[String],
) -> Result<u64, StorageError> {
    Ok(leaves(s, ns, path)?
        .iter()
        .map(|(_, l)| l.mod_revision)
        .max()
        .unwrap_or(0))
}

/// The cluster's config keys, once the first is set.
pub fn secret_keys<S: Read + ?Sized>(s: &S) -> Result<Option<Keys>, StorageError> {
    match s.get(keys::META_CONFIG_KEY)? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

fn current(k: &Keys) -> Out {
    Out::Key {
        id: k.current,
        key: k.keys.get(&k.current).cloned().unwrap_or_default(),
    }
}

fn remove<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    k: Vec<u8>,
    prev: u64,
    revision: u64,
    now: u64,
) {
    ov.delete(k.clone());
    history::record(ov, revision, now, k, None, prev);
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    Ok(Outcome::Config(match cmd {
        Cmd::Set {
            namespace,
            path,
            leaves: new,
            if_revision,
        } => {
            if let Some(want) = if_revision {
                let current = revision_of(ov, namespace, path)?;
                if current != *want {
                    return Ok(Outcome::Config(Out::RevisionMismatch { current }));
                }
            }
            for l in new {
                let full: Vec<String> = path.iter().chain(&l.path).cloned().collect();
                // A leaf above this one becomes an object: it goes.
                for depth in 0..full.len() {
                    let above = key(namespace, &full[..depth]);
                    if let Some(b) = ov.get(&above)? {
                        let old: Leaf = codec::decode(&b).map_err(corrupt)?;
                        remove(ov, above, old.mod_revision, revision, now);
                    }
                }
                // A subtree below it is replaced by it.
                let k = key(namespace, &full);
                let mut prev = 0;
                for (p, old) in leaves(ov, namespace, &full)? {
                    if p == full {
                        prev = old.mod_revision;
                    } else {
                        remove(ov, key(namespace, &p), old.mod_revision, revision, now);
                    }
                }
                let leaf = Leaf {
                    json: l.json.clone(),
                    secret: l.secret,
                    mod_revision: revision,
                };
                let bytes = codec::encode(&leaf);
                ov.put(k.clone(), bytes.clone());
                history::record(ov, revision, now, k, Some(bytes), prev);
            }
            Out::Set { revision }
        }
        Cmd::Delete { namespace, path } => {
            let doomed = leaves(ov, namespace, path)?;
            for (p, old) in &doomed {
                remove(ov, key(namespace, p), old.mod_revision, revision, now);
            }
            Out::Deleted {
                leaves: doomed.len() as u64,
            }
        }
        Cmd::InitKey { key: k } => match secret_keys(ov)? {
            Some(existing) => current(&existing),
            None => {
                let ks = Keys {
                    current: 1,
                    keys: [(1, k.clone())].into(),
                };
                ov.put(keys::META_CONFIG_KEY.to_vec(), codec::encode(&ks));
                current(&ks)
            }
        },
        Cmd::RotateKey { key: k } => {
            let mut ks = secret_keys(ov)?.unwrap_or_default();
            let id = ks.keys.keys().next_back().copied().unwrap_or(0) + 1;
            ks.keys.insert(id, k.clone());
            ks.current = id;
            ov.put(keys::META_CONFIG_KEY.to_vec(), codec::encode(&ks));
            current(&ks)
        }
    }))
}
