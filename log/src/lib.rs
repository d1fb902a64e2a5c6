//! `micro-log`: Micro's durable storage on RocksDB.
//!
//! One RocksDB instance per node with three column families:
//! - `log`: the Raft log, key = index (u64 big-endian), value = a checksummed [`frame`];
//! - `raft`: Raft metadata (vote, committed, last purged), written synced;
//! - `state`: the views' keyspace ([`micro_state::Read`]), committed one atomic batch per
//!   applied batch of entries, together with the applied log id.
//!
//! Durability: appends go to the memtable and WAL at once and are acknowledged by the
//! [`Db::sync_then`] group-commit thread after one `fsync` of the WAL covers them. Because the
//! WAL is shared by all column families, that fsync also covers every earlier state write.
//!
//! Apply reads the state through [`Db::apply_reader`], a cache of what it last read or wrote
//! that every commit keeps current; everyone else reads RocksDB.
//!
//! What it must never do: interpret log payloads (that is `micro-cluster`'s job) or skip a
//! corrupt record: a checksum mismatch is an [`Error::Corrupt`] naming the index.

pub mod frame;
mod syncer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use micro_state::{Read, StorageError, WriteSet};
use rocksdb::{ColumnFamily, IteratorMode, Options, WriteBatch, WriteOptions, DB};

pub use frame::Error as FrameError;

const CF_LOG: &str = "log";
const CF_RAFT: &str = "raft";
const CF_STATE: &str = "state";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb at {path}: {message}")]
    Rocks { path: String, message: String },
    // Not named `source`: thiserror would chain it and reports would print the cause twice.
    #[error("log record {index} is corrupt: {damage}")]
    Corrupt { index: u64, damage: FrameError },
    #[error("log key of {len} bytes is not an index")]
    BadKey { len: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node's storage. Cheap to share behind an [`Arc`].
pub struct Db {
    db: Arc<DB>,
    path: PathBuf,
    syncer: syncer::Syncer,
    /// What apply last read or wrote, by state key; see [`Db::apply_reader`].
    cache: StateCache,
}

/// Bytes of state values (with their keys) the apply cache keeps.
const STATE_CACHE_BYTES: u64 = 64 << 20;

/// What one cached value costs beyond its key and value bytes (the map's slot, the `Vec`s).
const CACHE_ENTRY_OVERHEAD: usize = 64;

/// State key → value (`None`: absent), as last committed.
type StateCache = quick_cache::sync::Cache<Vec<u8>, Option<Vec<u8>>, CacheWeight>;

#[derive(Clone)]
struct CacheWeight;

impl quick_cache::Weighter<Vec<u8>, Option<Vec<u8>>> for CacheWeight {
    fn weight(&self, key: &Vec<u8>, value: &Option<Vec<u8>>) -> u64 {
        (key.len() + value.as_ref().map_or(0, Vec::len) + CACHE_ENTRY_OVERHEAD) as u64
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn parse_index(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::BadKey { len: key.len() })?;
    Ok(u64::from_be_bytes(b))
}

impl Db {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Arc<Db>> {
        Self::open_with_cache(path, STATE_CACHE_BYTES)
    }

    fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Arc<Db>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bounded background work: this runs on small machines beside other services.
        opts.increase_parallelism(2);
        // RocksDB's own LOG: at its default level it writes a line for every WAL fsync (one per
        // group commit: gigabytes a day under steady writes, and a formatted write on the
        // commit path). Flushes, compactions and errors are logged at INFO and above.
        opts.set_log_level(rocksdb::LogLevel::Info);
        opts.set_max_log_file_size(16 << 20);
        opts.set_keep_log_file_num(4);
        // The WAL is written to its file only when it is synced (the sync thread's group
        // commit, or a synced write): an append or a state commit is then a memory copy, not a
        // write(2) on the path to replication. What is not yet synced is only the state's
        // tail, which the log re-applies after a crash; purging the log is a synced write, so
        // the state it stands for is on disk first; closing writes out what is left.
        opts.set_manual_wal_flush(true);
        // The views are read by point lookups on every apply (the previous record of each key):
        // bloom filters in the memtable and the tables skip most of the work of a miss.
        let mut state = Options::default();
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let cache = rocksdb::Cache::new_lru_cache(32 * 1024 * 1024).map_err(|e| Error::Rocks {
            path: path.display().to_string(),
            message: e.into_string(),
        })?;
        table.set_block_cache(&cache);
        state.set_block_based_table_factory(&table);
        state.set_memtable_whole_key_filtering(true);
        state.set_memtable_prefix_bloom_ratio(0.05);
        let cfs = [
            rocksdb::ColumnFamilyDescriptor::new(CF_LOG, Options::default()),
            rocksdb::ColumnFamilyDescriptor::new(CF_RAFT, Options::default()),
            rocksdb::ColumnFamilyDescriptor::new(CF_STATE, state),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| Error::Rocks {
            path: path.display().to_string(),
            message: e.into_string(),
        })?;
        let db = Arc::new(db);
        let syncer = syncer::Syncer::start(db.clone());
        Ok(Arc::new(Db {
            db,
            path: path.to_path_buf(),
            syncer,
            cache: StateCache::with_weighter(
                (cache_bytes / 512).max(1) as usize,
                cache_bytes,
                CacheWeight,
            ),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rocks(&self, e: rocksdb::Error) -> Error {
        Error::Rocks {
            path: self.path.display().to_string(),
            message: e.into_string(),
        }
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // The column families are created in `open`; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .expect("column family opened in Db::open")
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(|e| self.rocks(e))
    }

    // ----- the Raft log -------------------------------------------------------------------

    /// Writes log records (index, payload) without waiting for the disk; call
    /// [`Db::sync_then`] to learn when they are durable.
    pub fn append<'a>(&self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<()> {
        self.append_with_meta(records, None)
    }

    /// [`Db::append`], writing a metadata value (key, value) in the same batch.
    pub fn append_with_meta<'a>(
        &self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
        meta: Option<(&[u8], &[u8])>,
    ) -> Result<()> {
        let cf = self.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        for (index, payload) in records {
            batch.put_cf(cf, index_key(index), frame::encode(index, payload));
        }
        if let Some((key, value)) = meta {
            batch.put_cf(self.cf(CF_RAFT), key, value);
        }
        self.write(batch, false)
    }

    /// Calls `done` once everything written so far is on disk (one fsync may cover many
    /// callers: group commit). `done` runs on the sync thread and must not block.
    pub fn sync_then(&self, done: impl FnOnce(Result<(), String>) + Send + 'static) {
        self.syncer.submit(Box::new(done));
    }

    /// Makes everything written so far durable before returning.
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| self.rocks(e))
    }

    /// Payloads of the records with `from <= index < to`, verified.
    pub fn read_log(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let start = index_key(from);
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let index = parse_index(&k)?;
            if index >= to {
                break;
            }
            let payload =
                frame::decode(index, &v).map_err(|damage| Error::Corrupt { index, damage })?;
            out.push((index, payload.to_vec()));
        }
        Ok(out)
    }

    /// The last record, verified.
    pub fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                let index = parse_index(&k)?;
                let payload =
                    frame::decode(index, &v).map_err(|damage| Error::Corrupt { index, damage })?;
                Ok(Some((index, payload.to_vec())))
            }
        }
    }

    /// Verifies every stored record's checksum; returns how many there are. A node runs this
    /// before it starts so that it refuses to serve from a damaged log.
    pub fn verify_log(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let index = parse_index(&k)?;
            frame::decode(index, &v).map_err(|damage| Error::Corrupt { index, damage })?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes records with index >= `from` (a follower's conflicting suffix), durably.
    pub fn truncate_log(&self, from: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), index_key(from), index_key(u64::MAX));
        batch.delete_cf(self.cf(CF_LOG), index_key(u64::MAX));
        self.write(batch, true)
    }

    /// Deletes records with index <= `upto` together with writing `meta` (the new purged
    /// marker), durably.
    pub fn purge_log(&self, upto: u64, meta: (&[u8], &[u8])) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT), meta.0, meta.1);
        batch.delete_range_cf(
            self.cf(CF_LOG),
            index_key(0),
            index_key(upto.saturating_add(1)),
        );
        self.write(batch, true)
    }

    /// The raw stored bytes of a log record (frame included). For tools and fault tests.
    pub fn raw_log_record(&self, index: u64) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_LOG), index_key(index))
            .map_err(|e| self.rocks(e))
    }

    /// Overwrites the raw stored bytes of a log record. For fault-injection tests only: it
    /// bypasses the framing on purpose.
    pub fn put_raw_log_record(&self, index: u64, raw: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_LOG), index_key(index), raw);
        self.write(batch, true)
    }

    // ----- Raft metadata ------------------------------------------------------------------

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_RAFT), key)
            .map_err(|e| self.rocks(e))
    }

    /// Writes a metadata value, durably when `sync` (the vote must be).
    pub fn put_meta(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT), key, value);
        self.write(batch, sync)
    }

    // ----- the views' keyspace ------------------------------------------------------------

    /// Commits the writes of an applied batch in one atomic batch. Not synced on its own: the
    /// log is the source of truth and a lost tail is re-applied from it after a crash.
    pub fn commit_state(&self, writes: WriteSet) -> Result<()> {
        let cf = self.cf(CF_STATE);
        let mut batch = WriteBatch::default();
        for (k, v) in &writes {
            match v {
                Some(v) => batch.put_cf(cf, k, v),
                None => batch.delete_cf(cf, k),
            }
        }
        if let Err(e) = self.write(batch, false) {
            // Nothing says which part (if any) reached RocksDB: forget everything cached.
            self.cache.clear();
            return Err(e);
        }
        // Only keys apply has read are refreshed: the change feed's keys, written once and
        // never read back by apply, would only push the hot records out. They are about half
        // the writes, so they are skipped with a shared lock, not a failed `replace`.
        for (k, v) in writes {
            if !self.cache.contains_key(&k) {
                continue;
            }
            if let Err((k, _)) = self.cache.replace(k, v, false) {
                // Not admitted: it was absent, or is now too big, in which case the old value
                // must not stay.
                self.cache.remove(&k);
            }
        }
        Ok(())
    }

    /// Point reads for apply: the state as committed, from the cache of what apply last read
    /// or wrote (filled on a miss). At 16–256 clients the previous record of every written key
    /// was a RocksDB lookup (memtable, then tables) on every node: ~18 % of a node's CPU.
    /// Apply is the only writer of the state, and it reads and commits in turn, so a value
    /// it caches on a miss cannot be older than the committed one.
    pub fn apply_reader(&self) -> ApplyReader<'_> {
        ApplyReader(self)
    }

    /// Replaces the whole keyspace with `pairs` in one atomic, durable batch (snapshot install).
    pub fn replace_state(&self, pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<()> {
        let cf = self.cf(CF_STATE);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, [0u8].as_slice(), [0xFFu8; 16].as_slice());
        for (k, v) in pairs {
            batch.put_cf(cf, k, v);
        }
        let written = self.write(batch, true);
        self.cache.clear();
        written
    }

    /// Visits every pair of the keyspace as of one consistent point in time, while writes go on.
    /// An error of `visit` stops the scan and comes back inside: the outer error is the
    /// store's, the inner the visitor's.
    pub fn for_each_state<E>(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<(), E>> {
        let snap = self.db.snapshot();
        let mut opts = rocksdb::ReadOptions::default();
        // A full scan must not push the working set of apply's point reads out of the block
        // cache, and it reads sequentially: large reads ahead.
        opts.fill_cache(false);
        opts.set_readahead_size(2 << 20);
        // Borrowed keys and values: the owning iterator allocates two boxes per record.
        let mut it = snap.raw_iterator_cf_opt(self.cf(CF_STATE), opts);
        it.seek_to_first();
        while let Some((k, v)) = it.item() {
            if let Err(e) = visit(k, v) {
                return Ok(Err(e));
            }
            it.next();
        }
        it.status().map_err(|e| self.rocks(e))?;
        Ok(Ok(()))
    }

    /// RocksDB's own size figures per column family, for metrics: (family, kind, bytes) with
    /// kind `sst` (table files), `memtable` and `live_estimate` (live data).
    pub fn sizes(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for cf in [CF_LOG, CF_STATE] {
            for (kind, prop) in [
                ("sst", "rocksdb.total-sst-files-size"),
                ("memtable", "rocksdb.cur-size-all-mem-tables"),
                ("live_estimate", "rocksdb.estimate-live-data-size"),
            ] {
                if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(cf), prop) {
                    out.push((cf, kind, v));
                }
            }
        }
        out
    }

    /// Approximate bytes on disk, for status output.
    pub fn size_on_disk(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.path)
    }
}

/// See [`Db::apply_reader`].
pub struct ApplyReader<'a>(&'a Db);

impl Read for ApplyReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.0.cache.get(key) {
            return Ok(v);
        }
        let v = self.0.get(key)?;
        self.0.cache.insert(key.to_vec(), v.clone());
        Ok(v)
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.0.scan(from, to, reverse, visit)
    }
}

impl Read for Db {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(CF_STATE), key)
            .map_err(|e| StorageError(e.into_string()))
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_STATE));
        if reverse {
            match to {
                Some(t) => {
                    it.seek_for_prev(t);
                    // seek_for_prev lands on `to` itself when present; `to` is exclusive.
                    if it.valid() && it.key() == Some(t) {
                        it.prev();
                    }
                }
                None => it.seek_to_last(),
            }
        } else {
            it.seek(from);
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if reverse {
                if k < from {
                    break;
                }
            } else if to.is_some_and(|t| k >= t) {
                break;
            }
            if !visit(k, v) {
                return Ok(());
            }
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        it.status().map_err(|e| StorageError(e.into_string()))
    }
}

#[cfg(test)]
mod tests;
