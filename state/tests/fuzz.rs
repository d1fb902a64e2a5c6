//! Fuzzing, bounded for CI, of the decoders of persisted values (`codec`, and
//! `views::store::decode_record` with its release-1 path): a value read back from disk, a
//! snapshot or a peer may be anything. No input may panic them; damage is an error, and
//! whatever decodes re-encodes to a value that decodes the same.

use std::collections::BTreeMap;

use micro_state::codec;
use micro_state::views::events::{GroupState, Pending, StoredEvent, TopicMeta};
use micro_state::views::history::Change;
use micro_state::views::lease::Lease;
use micro_state::views::store::{decode_record, encode_record, StoredRecord};
use micro_state::{Command, MetaField, Put, Request};
use proptest::prelude::*;

fn record(value: Vec<u8>, key: String, expiry: Option<u64>) -> StoredRecord {
    StoredRecord {
        value,
        metadata: [(
            key,
            MetaField {
                kind: "string".into(),
                value: "x".into(),
            },
        )]
        .into(),
        expiry_ms: expiry,
        create_revision: 3,
        mod_revision: 9,
        version: 2,
        lease: 77,
    }
}

fn request(key: String, value: Vec<u8>) -> Request {
    Request {
        time_ms: 1_700_000_000_000,
        cmds: vec![Command::Store(micro_state::views::store::Cmd::Put(Put {
            db: "db".into(),
            table: "t".into(),
            key,
            value,
            metadata: BTreeMap::new(),
            ttl_ms: 5000,
            lease: 0,
        }))],
    }
}

/// Every persisted value type, encoded.
fn seeds(key: String, value: Vec<u8>) -> Vec<Vec<u8>> {
    let mut group = GroupState {
        cursor: 5,
        dead: 1,
        ..Default::default()
    };
    group.pending.insert(
        4,
        Pending {
            consumer: key.clone(),
            deadline_ms: 100,
            attempts: 2,
        },
    );
    group.consumers.insert(key.clone(), 9);
    vec![
        encode_record(&record(value.clone(), key.clone(), Some(5))),
        codec::encode(&request(key.clone(), value.clone())),
        codec::encode(&group),
        codec::encode(&TopicMeta::default()),
        codec::encode(&StoredEvent {
            id: key.clone(),
            timestamp_ms: 1,
            log_time_ms: 2,
            metadata: [(key.clone(), key.clone())].into(),
            payload: value.clone(),
        }),
        codec::encode(&Lease {
            ttl_ms: 1000,
            expiry_ms: 2000,
            granted_revision: 3,
        }),
        codec::encode(&Change {
            revision: 1,
            time_ms: 2,
            key: key.into_bytes(),
            value: Some(value),
            prev_revision: 0,
        }),
    ]
}

/// Decodes `b` as every persisted type; each success must survive a round trip.
fn decode_all(b: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(r) = decode_record(b) {
        prop_assert_eq!(decode_record(&encode_record(&r)).unwrap(), r);
    }
    macro_rules! each {
        ($($t:ty),*) => {$(
            if let Ok(v) = codec::decode::<$t>(b) {
                let again: $t = codec::decode(&codec::encode(&v)).unwrap();
                prop_assert_eq!(format!("{again:?}"), format!("{v:?}"));
            }
        )*};
    }
    each!(Request, GroupState, TopicMeta, StoredEvent, Lease, Change);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_all(&raw)?;
        for v in [0u8, 1, 2, 3, 255] {
            let mut b = vec![v];
            b.extend_from_slice(&raw);
            decode_all(&b)?;
        }
    }

    /// Valid values with bytes set, cut, inserted, removed, or a huge length prefix spliced
    /// in (bincode's `0xfd` + u64: the 256 MiB decode limit must refuse it, not allocate).
    #[test]
    fn damaged_values_never_panic(
        key in ".{0,12}",
        value in prop::collection::vec(any::<u8>(), 0..32),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        how in 0u8..5,
        byte in any::<u8>(),
    ) {
        let seeds = seeds(key, value);
        let mut b = seeds[which.index(seeds.len())].clone();
        let i = at.index(b.len());
        match how {
            0 => b[i] = byte,
            1 => b.truncate(i),
            2 => b.insert(i, byte),
            3 => {
                b.remove(i);
            }
            _ => {
                b.splice(i..i, [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
            }
        }
        decode_all(&b)?;
    }
}

#[test]
fn every_seed_decodes() {
    for s in seeds("k".into(), b"v".to_vec()) {
        let ok = decode_record(&s).is_ok()
            || codec::decode::<Request>(&s).is_ok()
            || codec::decode::<GroupState>(&s).is_ok()
            || codec::decode::<TopicMeta>(&s).is_ok()
            || codec::decode::<StoredEvent>(&s).is_ok()
            || codec::decode::<Lease>(&s).is_ok()
            || codec::decode::<Change>(&s).is_ok();
        assert!(ok, "{s:?}");
    }
}
