//! The storage trait the views are written against, with an in-memory implementation.
//!
//! All views share one ordered keyspace; the first byte of a key names the view
//! ([`crate::keys`]). `micro-log` provides the RocksDB implementation. During apply, writes go
//! to an [`Overlay`] so that the view changes of a batch of entries can be committed together
//! with `last_applied` in one atomic write, and so a rejected command leaves nothing behind.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A failure of the underlying store. Fatal for the node: apply cannot continue without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StorageError(pub String);

/// Read access to the ordered keyspace.
pub trait Read {
    /// The value at `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Visits the pairs with `from <= key < to` (`to = None`: to the end) in key order, or in
    /// reverse order when `reverse`. The visitor returns `false` to stop early.
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;
}

/// Pending writes: `Some(value)` puts, `None` deletes. Ordered, so committing it is
/// deterministic.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A store kept in memory: used by tests, the property tests and tools.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemStore {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemStore {
    /// Applies a write set.
    pub fn commit(&mut self, writes: WriteSet) {
        for (k, v) in writes {
            match v {
                Some(v) => {
                    self.map.insert(k, v);
                }
                None => {
                    self.map.remove(&k);
                }
            }
        }
    }
}

fn range_bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(from),
        match to {
            Some(t) => Bound::Excluded(t),
            None => Bound::Unbounded,
        },
    )
}

impl Read for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        if to.is_some_and(|t| t <= from) {
            return Ok(());
        }
        let range = self.map.range::<[u8], _>(range_bounds(from, to));
        if reverse {
            for (k, v) in range.rev() {
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            for (k, v) in range {
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Pending writes layered over a base store: reads see the writes. Apply works on an overlay,
/// so a batch of entries turns into one write set. (A request is validated as a whole before
/// any of it runs, so nothing ever needs rolling back.)
pub struct Overlay<'a, S: Read + ?Sized> {
    base: &'a S,
    writes: WriteSet,
    /// What apply changed, in revision order, for watchers (also persisted in the history).
    pub feed: Feed,
}

/// The changes of the entries applied on one overlay, handed to watchers after commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feed {
    pub changes: Vec<crate::views::history::Change>,
    /// Event topics that got new events (their consumers wake up; events are not in history).
    pub topics: std::collections::BTreeSet<String>,
}

impl<'a, S: Read + ?Sized> Overlay<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Overlay {
            base,
            writes: WriteSet::new(),
            feed: Feed::default(),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The pending writes, to commit atomically.
    pub fn into_writes(self) -> WriteSet {
        self.writes
    }

    /// The pending writes and the feed of what they changed.
    pub fn into_parts(self) -> (WriteSet, Feed) {
        (self.writes, self.feed)
    }

    /// Collects up to `limit` live pairs in `[from, to)` in key order, merging base and writes.
    pub fn collect(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StorageError> {
        let mut out = Vec::new();
        self.scan(from, to, false, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < limit
        })?;
        Ok(out)
    }
}

impl<S: Read + ?Sized> Read for Overlay<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        if to.is_some_and(|t| t <= from) {
            return Ok(());
        }
        // Apply-time scans are small (expiry purges, guards), so a merge through a temporary
        // map is simpler than interleaving two iterators and costs little.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        self.base.scan(from, to, false, &mut |k, v| {
            merged.insert(k.to_vec(), v.to_vec());
            true
        })?;
        for (k, v) in self.writes.range::<[u8], _>(range_bounds(from, to)) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        if reverse {
            for (k, v) in merged.iter().rev() {
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            for (k, v) in merged.iter() {
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is
/// none (the prefix is all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_reads_its_writes_and_hides_deletes() {
        let mut base = MemStore::default();
        base.map.insert(b"a".to_vec(), b"1".to_vec());
        base.map.insert(b"b".to_vec(), b"2".to_vec());
        let mut ov = Overlay::new(&base);
        ov.delete(b"a".to_vec());
        ov.put(b"c".to_vec(), b"3".to_vec());
        assert_eq!(ov.get(b"a").unwrap(), None);
        assert_eq!(ov.get(b"b").unwrap(), Some(b"2".to_vec()));
        let all = ov.collect(b"", None, 10).unwrap();
        let keys: Vec<_> = all.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        let mut rev = Vec::new();
        ov.scan(b"", None, true, &mut |k, _| {
            rev.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(rev, vec![b"c".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
