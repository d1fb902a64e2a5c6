//! The key-value store view: database / table / key → record, with metadata, expiry, an
//! optional lease and revisions (create / mod revision = the revision of the command that
//! wrote it; version counts writes since creation), as etcd reports them. Every change goes
//! into the change feed (`history`), so the store can be watched from any retained revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, check_size, reject, Outcome, FIXED_SIZE};
use crate::expiry;
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};
use crate::views::{history, lease};

/// Marker for [`crate::command::View`].
pub struct Store;

/// One metadata value of a store record, as Micro v3's `store.Field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetaField {
    pub kind: String,
    pub value: String,
}

/// Writes a store record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Put {
    pub db: String,
    pub table: String,
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub metadata: BTreeMap<String, MetaField>,
    /// Time to live in ms from the entry's clock; 0 means no expiry.
    pub ttl_ms: u64,
    /// The lease the record is attached to (deleted with it); 0 for none.
    pub lease: u64,
}

/// Deletes a store record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Delete {
    pub db: String,
    pub table: String,
    pub key: String,
}

/// A guard of a [`crate::Txn`]: the record's mod revision must equal `mod_revision` (0: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Compare {
    pub db: String,
    pub table: String,
    pub key: String,
    pub mod_revision: u64,
}

impl Compare {
    pub fn validate(&self) -> Result<(), Outcome> {
        check_name("compare.key", &self.key, true)?;
        check_name("compare.database", &self.db, false)?;
        check_name("compare.table", &self.table, false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    Put(Put),
    Delete(Delete),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    /// The record now has this mod revision (the command's revision).
    Put { revision: u64 },
    /// Whether a live record was deleted.
    Deleted { existed: bool },
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::Put(p) => {
                FIXED_SIZE
                    + p.key.len()
                    + p.value.len()
                    + p.metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.kind.len() + v.value.len())
                        .sum::<usize>()
            }
            Cmd::Delete(d) => FIXED_SIZE + d.key.len(),
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Put(p) => {
                check_name("key", &p.key, true)?;
                check_name("database", &p.db, false)?;
                check_name("table", &p.table, false)?;
                check_size("value", p.value.len(), crate::MAX_VALUE_BYTES)
            }
            Cmd::Delete(d) => {
                check_name("key", &d.key, true)?;
                check_name("database", &d.db, false)?;
                check_name("table", &d.table, false)
            }
        }
    }

    /// Checks what depends on the state (a put's lease must be live), before anything runs.
    pub(crate) fn check<S: Read + ?Sized>(
        &self,
        s: &S,
        now_ms: u64,
    ) -> Result<Result<(), Outcome>, StorageError> {
        Ok(match self {
            Cmd::Put(p) if p.lease != 0 && lease::get_live(s, p.lease, now_ms)?.is_none() => {
                Err(reject(
                    "lease",
                    format!("lease {} not found (expired or revoked)", p.lease),
                ))
            }
            Cmd::Put(_) | Cmd::Delete(_) => Ok(()),
        })
    }
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    Ok(Outcome::Store(match cmd {
        Cmd::Put(p) => Out::Put {
            revision: put(ov, p, revision, now)?,
        },
        Cmd::Delete(d) => {
            let (db, table) = (db_name(&d.db), table_name(&d.table));
            Out::Deleted {
                existed: remove(ov, &keys::store_key(db, table, &d.key), revision, now)?,
            }
        }
    }))
}

/// The persisted record format this release writes (release 1 wrote 1, without `lease`).
pub const RECORD_VERSION: u8 = 2;

/// A record as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub metadata: BTreeMap<String, MetaField>,
    /// Absolute expiry on the state clock (ms), if any.
    pub expiry_ms: Option<u64>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the record is attached to; 0 for none.
    pub lease: u64,
}

/// Release 1's record, frozen: decoded, never written.
#[derive(Debug, Deserialize)]
struct StoredRecordV1 {
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    metadata: BTreeMap<String, MetaField>,
    expiry_ms: Option<u64>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

/// Encodes a record in the current format.
pub fn encode_record(r: &StoredRecord) -> Vec<u8> {
    codec::encode_as(RECORD_VERSION, r)
}

/// Decodes a record of any supported format.
pub fn decode_record(bytes: &[u8]) -> Result<StoredRecord, codec::Error> {
    let (version, body) = codec::split(bytes)?;
    match version {
        1 => {
            let r: StoredRecordV1 = codec::decode_body(body)?;
            Ok(StoredRecord {
                value: r.value,
                metadata: r.metadata,
                expiry_ms: r.expiry_ms,
                create_revision: r.create_revision,
                mod_revision: r.mod_revision,
                version: r.version,
                lease: 0,
            })
        }
        RECORD_VERSION => codec::decode_body(body),
        v => Err(codec::Error::Version(v)),
    }
}

impl StoredRecord {
    /// Whether the record is past its own expiry at `now_ms` (its lease is checked apart).
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
        Some(bytes) => Ok(Some(decode_record(&bytes).map_err(storage)?)),
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

/// Applies a put at `revision` with state clock `now_ms`.
fn put<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    p: &Put,
    revision: u64,
    now_ms: u64,
) -> Result<u64, StorageError> {
    let (db, table) = (db_name(&p.db), table_name(&p.table));
    let sk = keys::store_key(db, table, &p.key);
    let prev = load(ov, &sk)?;
    let (create_revision, version, prev_revision) = match &prev {
        Some(r) => {
            if let Some(e) = r.expiry_ms {
                expiry::cancel(ov, e, &sk);
            }
            if r.lease != 0 && r.lease != p.lease {
                lease::detach(ov, r.lease, &sk);
            }
            (r.create_revision, r.version + 1, r.mod_revision)
        }
        None => {
            bump_table(ov, db, table, 1)?;
            (revision, 1, 0)
        }
    };
    let expiry_ms = (p.ttl_ms > 0).then(|| now_ms.saturating_add(p.ttl_ms));
    if let Some(e) = expiry_ms {
        expiry::schedule(ov, e, &sk);
    }
    if p.lease != 0 {
        lease::attach(ov, p.lease, &sk);
    }
    let rec = StoredRecord {
        value: p.value.clone(),
        metadata: p.metadata.clone(),
        expiry_ms,
        create_revision,
        mod_revision: revision,
        version,
        lease: p.lease,
    };
    let bytes = encode_record(&rec);
    ov.put(sk.clone(), bytes.clone());
    history::record(ov, revision, now_ms, sk, Some(bytes), prev_revision);
    Ok(revision)
}

/// Deletes the record at store key `sk` as a change at `revision`; returns whether it existed.
pub(crate) fn remove<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    sk: &[u8],
    revision: u64,
    now_ms: u64,
) -> Result<bool, StorageError> {
    let Some(prev) = load(ov, sk)? else {
        return Ok(false);
    };
    let (db, table, _) =
        keys::parse_store_key(sk).ok_or_else(|| StorageError("corrupt store key".into()))?;
    if let Some(e) = prev.expiry_ms {
        expiry::cancel(ov, e, sk);
    }
    if prev.lease != 0 {
        lease::detach(ov, prev.lease, sk);
    }
    ov.delete(sk.to_vec());
    bump_table(ov, &db, &table, -1)?;
    history::record(ov, revision, now_ms, sk.to_vec(), None, prev.mod_revision);
    Ok(true)
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

/// Whether a record is live at the reader's clock: neither it nor its lease has expired
/// (a purge entry may not have been applied yet).
fn live<S: Read + ?Sized>(s: &S, r: &StoredRecord, now_ms: u64) -> Result<bool, StorageError> {
    if r.expired(now_ms) {
        return Ok(false);
    }
    Ok(r.lease == 0 || lease::get_live(s, r.lease, now_ms)?.is_some())
}

/// Reads records matching `q` that are live at the reader's clock `now_ms`.
pub fn query<S: Read + ?Sized>(s: &S, q: &Query, now_ms: u64) -> Result<Vec<Entry>, StorageError> {
    let (db, table) = (db_name(&q.db), table_name(&q.table));
    if !q.prefix && q.suffix.is_empty() {
        let sk = keys::store_key(db, table, &q.key);
        return Ok(match load(s, &sk)? {
            Some(record) if q.offset == 0 && live(s, &record, now_ms)? => vec![Entry {
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
        let record = match decode_record(v) {
            Ok(r) => r,
            Err(e) => {
                err = Some(storage(e));
                return false;
            }
        };
        match live(s, &record, now_ms) {
            Ok(true) => {}
            Ok(false) => return true,
            Err(e) => {
                err = Some(e);
                return false;
            }
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
