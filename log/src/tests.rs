use super::*;

fn open() -> (tempfile::TempDir, Arc<Db>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    (dir, db)
}

#[test]
fn append_read_truncate_purge() {
    let (_d, db) = open();
    let recs: Vec<(u64, Vec<u8>)> = (1..=10).map(|i| (i, vec![i as u8; 3])).collect();
    db.append(recs.iter().map(|(i, p)| (*i, p.as_slice())))
        .unwrap();
    assert_eq!(db.read_log(3, 6).unwrap(), recs[2..5].to_vec());
    assert_eq!(db.last_log().unwrap().unwrap().0, 10);
    db.truncate_log(8).unwrap();
    assert_eq!(db.last_log().unwrap().unwrap().0, 7);
    db.purge_log(4, (b"purged", b"4")).unwrap();
    assert_eq!(db.read_log(0, 100).unwrap().first().unwrap().0, 5);
    assert_eq!(db.get_meta(b"purged").unwrap(), Some(b"4".to_vec()));
    assert_eq!(db.verify_log().unwrap(), 3);
}

#[test]
fn a_flipped_byte_is_reported_with_its_index() {
    let (_d, db) = open();
    db.append([(1, b"one".as_slice()), (2, b"two".as_slice())])
        .unwrap();
    let mut raw = db.raw_log_record(2).unwrap().unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    db.put_raw_log_record(2, &raw).unwrap();
    let err = db.verify_log().unwrap_err().to_string();
    assert!(
        err.starts_with("log record 2 is corrupt: crc mismatch"),
        "{err}"
    );
    assert!(db.read_log(1, 3).is_err());
    assert_eq!(db.read_log(1, 2).unwrap().len(), 1);
}

#[test]
fn a_record_moved_to_another_index_is_caught() {
    let raw = frame::encode(7, b"payload");
    assert!(frame::decode(7, &raw).is_ok());
    assert!(matches!(
        frame::decode(8, &raw),
        Err(frame::Error::Crc { .. })
    ));
    assert!(matches!(
        frame::decode(7, &raw[..3]),
        Err(frame::Error::Short(3))
    ));
}

#[test]
fn frame_golden_bytes_v1() {
    // Changing the frame breaks every existing log: bump VERSION and keep reading v1 instead.
    assert_eq!(
        frame::encode(1, b"abc"),
        vec![1, 0x6a, 0x10, 0x6c, 0x34, b'a', b'b', b'c']
    );
}

#[test]
fn sync_then_reports_durability_in_order() {
    let (_d, db) = open();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..50u64 {
        db.append([(i + 1, b"x".as_slice())]).unwrap();
        let tx = tx.clone();
        db.sync_then(move |r| tx.send((i, r.is_ok())).unwrap());
    }
    let got: Vec<(u64, bool)> = (0..50).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(got, (0..50).map(|i| (i, true)).collect::<Vec<_>>());
}

#[test]
fn state_scan_matches_the_memory_store() {
    use micro_state::{MemStore, Read};
    let (_d, db) = open();
    let mut mem = MemStore::default();
    let mut ws = WriteSet::new();
    for k in [&b"a"[..], b"ab", b"b", b"ba", b"c"] {
        ws.insert(k.to_vec(), Some(k.to_vec()));
    }
    db.commit_state(ws.clone()).unwrap();
    mem.commit(ws);
    for (from, to, rev) in [
        (&b"a"[..], Some(&b"b"[..]), false),
        (b"a", Some(b"b"), true),
        (b"", None, true),
        (b"ab", Some(b"c"), true),
        (b"b", None, false),
    ] {
        let collect = |s: &dyn Read| {
            let mut v = Vec::new();
            s.scan(from, to, rev, &mut |k, _| {
                v.push(k.to_vec());
                true
            })
            .unwrap();
            v
        };
        assert_eq!(collect(&*db), collect(&mem), "{from:?} {to:?} {rev}");
    }
}

/// Model test of the apply cache: whatever mix of commits, snapshot installs and reads, with a
/// cache so small that values are evicted or refused, apply reads what was last committed.
mod apply_cache {
    use super::*;
    use micro_state::{MemStore, Read};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Commit(Vec<(u8, Option<Vec<u8>>)>),
        Install(Vec<(u8, Vec<u8>)>),
        Read(u8),
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        // Up to past the whole cache's size: some are never admitted.
        (0usize..6000, any::<u8>()).prop_map(|(n, b)| vec![b; n])
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec((0u8..6, prop::option::of(value())), 1..4).prop_map(Op::Commit),
            prop::collection::vec((0u8..6, value()), 0..3).prop_map(Op::Install),
            (0u8..6).prop_map(Op::Read),
            (0u8..6).prop_map(Op::Read),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn apply_reads_what_was_last_committed(ops in prop::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open_with_cache(dir.path(), 4096).unwrap();
            let mut mem = MemStore::default();
            for op in ops {
                match op {
                    Op::Commit(writes) => {
                        let ws: WriteSet = writes.into_iter().map(|(k, v)| (vec![k], v)).collect();
                        db.commit_state(ws.clone()).unwrap();
                        mem.commit(ws);
                    }
                    Op::Install(pairs) => {
                        let pairs: Vec<_> = pairs.into_iter().map(|(k, v)| (vec![k], v)).collect();
                        db.replace_state(pairs.clone()).unwrap();
                        mem.map = pairs.into_iter().collect();
                    }
                    Op::Read(k) => {
                        prop_assert_eq!(db.apply_reader().get(&[k]).unwrap(), mem.get(&[k]).unwrap());
                    }
                }
            }
            for k in 0u8..6 {
                prop_assert_eq!(db.apply_reader().get(&[k]).unwrap(), mem.get(&[k]).unwrap(), "key {}", k);
            }
        }
    }
}

mod fuzz {
    use proptest::prelude::*;

    use crate::frame;

    proptest! {
        /// Arbitrary bytes never panic the frame decoder, and anything it accepts re-encodes
        /// to the same bytes.
        #[test]
        fn decode_never_panics(index in any::<u64>(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(payload) = frame::decode(index, &raw) {
                prop_assert_eq!(frame::encode(index, payload), raw);
            }
        }

        /// Any single flipped bit in a frame is caught.
        #[test]
        fn every_bit_flip_is_caught(index in any::<u64>(), payload in prop::collection::vec(any::<u8>(), 0..64), bit in any::<prop::sample::Index>()) {
            let mut raw = frame::encode(index, &payload);
            let b = bit.index(raw.len() * 8);
            raw[b / 8] ^= 1 << (b % 8);
            prop_assert!(frame::decode(index, &raw).is_err());
        }
    }
}

#[test]
fn rocksdb_does_not_log_every_fsync() {
    let (dir, db) = open();
    for i in 1..=20u64 {
        db.append([(i, b"x".as_slice())]).unwrap();
        db.sync().unwrap();
    }
    // RocksDB's LOG once got a line per WAL fsync: gigabytes a day under steady writes.
    drop(db); // flushes the LOG
    let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
    assert!(log.contains("RocksDB version"), "not RocksDB's LOG");
    let per_sync = log.lines().filter(|l| l.contains("FlushWAL")).count();
    assert_eq!(per_sync, 0, "{per_sync} FlushWAL lines");
}

/// The WAL reaches its file only when something syncs it (see `Db::open_with_cache`): appends
/// and state commits stay in memory until then; a purge, being a synced write, takes the state
/// it stands for to disk first; a clean close loses nothing.
#[test]
fn the_wal_reaches_its_file_only_when_synced() {
    let (dir, db) = open();
    let on_disk = |marker: &[u8]| {
        std::fs::read_dir(dir.path()).unwrap().any(|e| {
            let p = e.unwrap().path();
            p.extension().is_some_and(|x| x == "log")
                && std::fs::read(&p)
                    .unwrap()
                    .windows(marker.len())
                    .any(|w| w == marker)
        })
    };
    let commit = |key: &[u8], value: &[u8]| {
        let mut ws = WriteSet::new();
        ws.insert(key.to_vec(), Some(value.to_vec()));
        db.commit_state(ws).unwrap();
    };
    commit(b"k1", b"state-marker-one");
    db.append([(1, b"log-marker-one".as_slice())]).unwrap();
    assert!(!on_disk(b"state-marker-one") && !on_disk(b"log-marker-one"));
    db.purge_log(0, (b"purged", b"0")).unwrap();
    assert!(on_disk(b"state-marker-one") && on_disk(b"log-marker-one"));

    commit(b"k2", b"state-marker-two");
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    use micro_state::Read;
    assert_eq!(db.get(b"k2").unwrap(), Some(b"state-marker-two".to_vec()));
}
