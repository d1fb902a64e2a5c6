//! The key-value store view: database / table / key → record, with metadata, expiry and
//! revisions (create / mod revision = the store revision of the command that wrote it; version counts writes since
//! creation), as etcd reports them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{Delete, MetaField, Put};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};

/// A record as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub value: Vec<u8>,
    pub metadata: BTreeMap<String, MetaField>,
    /// Absolute expiry on the state clock (ms), if any.
    pub expiry_ms: Option<u64>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl StoredRecord {
    /// Whether the record is past its expiry at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiry_ms.is_some_and(|e| e <= now_ms)
    }
}

/// A record returned by a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub record: StoredRecord,
}

/// `""` means the default database/table, as in Micro v3.
pub fn db_name(db: &str) -> &str {
    if db.is_empty() {
        crate::DEFAULT_DATABASE
    } else {
        db
    }
}

/// See [`db_name`].
pub fn table_name(table: &str) -> &str {
    if table.is_empty() {
        crate::DEFAULT_TABLE
    } else {
        table
    }
}

fn storage(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt store record: {e}"))
}

pub(crate) fn load<S: Read + ?Sized>(
    s: &S,
    store_key: &[u8],
) -> Result<Option<StoredRecord>, StorageError> {
    match s.get(store_key)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(storage)?)),
        None => Ok(None),
    }
}

fn bump_table<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    db: &str,
    table: &str,
    delta: i64,
) -> Result<(), StorageError> {
    let key = keys::tables_key(db, table);
    let current = match ov.get(&key)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| StorageError("corrupt table count".into()))?,
        ),
        None => 0,
    };
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        ov.delete(key);
    } else {
        ov.put(key, next.to_be_bytes().to_vec());
    }
    Ok(())
}

/// Applies a put at store revision `revision` with state clock `now_ms`.
pub fn put<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    p: &Put,
    revision: u64,
    now_ms: u64,
) -> Result<u64, StorageError> {
    let (db, table) = (db_name(&p.db), table_name(&p.table));
    let sk = keys::store_key(db, table, &p.key);
    let prev = load(ov, &sk)?;
    let (create_revision, version) = match &prev {
        Some(r) => {
            if let Some(e) = r.expiry_ms {
                ov.delete(keys::expiry_key(e, &sk));
            }
            (r.create_revision, r.version + 1)
        }
        None => {
            bump_table(ov, db, table, 1)?;
            (revision, 1)
        }
    };
    let expiry_ms = (p.ttl_ms > 0).then(|| now_ms.saturating_add(p.ttl_ms));
    if let Some(e) = expiry_ms {
        ov.put(keys::expiry_key(e, &sk), Vec::new());
    }
    let rec = StoredRecord {
        value: p.value.clone(),
        metadata: p.metadata.clone(),
        expiry_ms,
        create_revision,
        mod_revision: revision,
        version,
    };
    ov.put(sk, codec::encode(&rec));
    Ok(revision)
}

/// Applies a delete; returns whether a record existed.
pub fn delete<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, d: &Delete) -> Result<bool, StorageError> {
    let (db, table) = (db_name(&d.db), table_name(&d.table));
    remove(ov, db, table, &keys::store_key(db, table, &d.key))
}

fn remove<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    db: &str,
    table: &str,
    sk: &[u8],
) -> Result<bool, StorageError> {
    let Some(prev) = load(ov, sk)? else {
        return Ok(false);
    };
    if let Some(e) = prev.expiry_ms {
        ov.delete(keys::expiry_key(e, sk));
    }
    ov.delete(sk.to_vec());
    bump_table(ov, db, table, -1)?;
    Ok(true)
}

/// Deletes every record whose expiry is at or before `now_ms`.
pub fn purge_expired<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    now_ms: u64,
) -> Result<usize, StorageError> {
    let from = [keys::EXPIRY];
    let mut to = vec![keys::EXPIRY];
    to.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
    let due = ov.collect(&from, Some(&to), usize::MAX)?;
    for (ek, _) in &due {
        let (_, sk) = keys::parse_expiry_key(ek)
            .ok_or_else(|| StorageError("corrupt expiry index key".into()))?;
        let (db, rest) =
            keys::take_str(&sk[1..]).ok_or_else(|| StorageError("corrupt store key".into()))?;
        let (table, _) =
            keys::take_str(rest).ok_or_else(|| StorageError("corrupt store key".into()))?;
        ov.delete(ek.clone());
        remove(ov, &db, &table, &sk)?;
    }
    Ok(due.len())
}

/// The earliest expiry of any record, if any record expires.
pub fn next_expiry<S: Read + ?Sized>(s: &S) -> Result<Option<u64>, StorageError> {
    let mut first = None;
    s.scan(
        &[keys::EXPIRY],
        Some(&[keys::EXPIRY + 1]),
        false,
        &mut |k, _| {
            first = keys::parse_expiry_key(k).map(|(ms, _)| ms);
            false
        },
    )?;
    Ok(first)
}

/// Read options, as Micro v3's `ReadOptions` / `ListOptions`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub db: String,
    pub table: String,
    /// Exact key, or with `prefix` a key prefix.
    pub key: String,
    pub prefix: bool,
    /// Only keys ending in this.
    pub suffix: String,
    /// 0 means unlimited.
    pub limit: u64,
    pub offset: u64,
    pub descending: bool,
}

/// Reads records matching `q` that are live at the reader's clock `now_ms`.
pub fn query<S: Read + ?Sized>(s: &S, q: &Query, now_ms: u64) -> Result<Vec<Entry>, StorageError> {
    let (db, table) = (db_name(&q.db), table_name(&q.table));
    if !q.prefix && q.suffix.is_empty() {
        let sk = keys::store_key(db, table, &q.key);
        return Ok(match load(s, &sk)? {
            Some(record) if !record.expired(now_ms) && q.offset == 0 => vec![Entry {
                key: q.key.clone(),
                record,
            }],
            _ => Vec::new(),
        });
    }
    let from = keys::store_prefix(db, table, if q.prefix { &q.key } else { "" });
    let to = prefix_end(&from);
    let header = keys::store_key(db, table, "").len();
    let limit = if q.limit == 0 { u64::MAX } else { q.limit };
    let mut skipped = 0u64;
    let mut out = Vec::new();
    let mut err = None;
    s.scan(&from, to.as_deref(), q.descending, &mut |k, v| {
        let key = String::from_utf8_lossy(&k[header..]);
        if !key.ends_with(q.suffix.as_str()) {
            return true;
        }
        let record: StoredRecord = match codec::decode(v) {
            Ok(r) => r,
            Err(e) => {
                err = Some(storage(e));
                return false;
            }
        };
        if record.expired(now_ms) {
            return true;
        }
        if skipped < q.offset {
            skipped += 1;
            return true;
        }
        out.push(Entry {
            key: key.into_owned(),
            record,
        });
        (out.len() as u64) < limit
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Databases with at least one record.
pub fn databases<S: Read + ?Sized>(s: &S) -> Result<Vec<String>, StorageError> {
    let mut out: Vec<String> = Vec::new();
    let prefix = keys::tables_prefix(None);
    s.scan(
        &prefix,
        prefix_end(&prefix).as_deref(),
        false,
        &mut |k, _| {
            if let Some((db, _)) = keys::take_str(&k[1..]) {
                if out.last() != Some(&db) {
                    out.push(db);
                }
            }
            true
        },
    )?;
    Ok(out)
}

/// Tables of `db` with at least one record.
pub fn tables<S: Read + ?Sized>(s: &S, db: &str) -> Result<Vec<String>, StorageError> {
    let prefix = keys::tables_prefix(Some(db_name(db)));
    let mut out = Vec::new();
    s.scan(
        &prefix,
        prefix_end(&prefix).as_deref(),
        false,
        &mut |k, _| {
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            true
        },
    )?;
    Ok(out)
}
