//! Fuzzing, bounded for CI, of the decoders of this crate that read bytes from outside the
//! process: log entries (`decode_entry_bytes`, read from RocksDB and received from peers) and
//! snapshot files (`snapshot::parse`/`verify`, given to `micro snapshot restore` or streamed
//! by a peer). No input may panic them; a damaged input is an error. (The frame layer below
//! the entries is fuzzed in `micro-log`; the snapshot's crc-guarded paths in
//! `snapshot::tests::parse_never_panics`.)

use micro_cluster::decode_entry_bytes;
use micro_cluster::snapshot::{self, Header, Writer};
use micro_state::codec;
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Release-1 entries (from `golden_entries.rs`): a normal entry holding every kind of
/// command, a blank one and a membership change.
const V1: [&str; 3] = [
    "0103012a01fd0068e5cf8b0100000a000264620174016b017601016d06737472696e670178fb881301000004676f6e6502010264620174016b0302000264620174016b017601016d06737472696e670178fb881304066f72646572730101610162027b7d070101000004676f6e65030663306666656504066f72646572730101610162027b7d0705066f72646572730a1406066f7264657273016702633108fb30750200000406066f7264657273026732026332010000010107066f726465727301670204050108066f72646572730167026331",
    "0103012a00",
    "0103012a02010301020304010b3132372e302e302e313a31020b3132372e302e302e313a32030b3132372e302e302e313a33040b3132372e302e302e313a34",
];

/// Valid entries of both formats: the release-1 bytes and the same entries as this release
/// writes them.
fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = V1.iter().map(|h| unhex(h)).collect();
    for raw in out.clone() {
        let e = decode_entry_bytes(&raw).expect("golden entry decodes");
        out.push(codec::encode_as(micro_state::command::ENTRY_VERSION, &e));
    }
    out
}

/// One way of damaging bytes.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    /// A length prefix somewhere turned huge (bincode varint `0xfd` = u64 follows).
    HugeLen(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| Edit::Remove(i, n)),
        any::<prop::sample::Index>().prop_map(Edit::HugeLen),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Set(i, v) => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            Edit::Flip(i, m) => {
                let i = i.index(b.len());
                b[i] ^= *m;
            }
            Edit::Truncate(i) => b.truncate(i.index(b.len())),
            Edit::Insert(i, v) => {
                let i = i.index(b.len());
                b.splice(i..i, v.iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::HugeLen(i) => {
                let i = i.index(b.len());
                b.splice(i..i, [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
        }
    }
    b
}

fn header() -> Header {
    Header {
        cluster_id: "c1".into(),
        snapshot_id: "s".into(),
        last_log_id: None,
        membership: Default::default(),
        revision: 7,
        record_count: 0,
    }
}

/// `MAGIC VERSION` + `inner` + the trailing crc32 the parser checks first: past that check,
/// arbitrary bytes reach the header and chunk parsers.
fn with_valid_crc(inner: &[u8]) -> Vec<u8> {
    let mut out = snapshot::MAGIC.to_vec();
    out.push(snapshot::VERSION);
    out.extend_from_slice(inner);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A chunk with a correct crc over arbitrary bytes and an arbitrary record count: past its
/// crc, the record walker sees garbage.
fn chunk(body: &[u8], count: u32) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and arbitrary bytes behind each format version byte.
    #[test]
    fn arbitrary_bytes_are_not_entries(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_entry_bytes(&raw);
        for v in [1u8, micro_state::command::ENTRY_VERSION] {
            let mut b = vec![v];
            b.extend_from_slice(&raw);
            let _ = decode_entry_bytes(&b);
        }
    }

    /// Valid entries damaged in up to six ways at once: no panic; whatever still decodes
    /// re-encodes and decodes to the same entry.
    #[test]
    fn damaged_entries_never_panic(which in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let seeds = seeds();
        let raw = apply(seeds[which.index(seeds.len())].clone(), &edits);
        if let Ok(e) = decode_entry_bytes(&raw) {
            let again = codec::encode_as(micro_state::command::ENTRY_VERSION, &e);
            let back = decode_entry_bytes(&again).expect("a decoded entry re-encodes");
            prop_assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
    }

    /// Snapshot files whose trailing crc is right but whose inside is arbitrary: a header
    /// length, header bytes, chunks with valid crcs over garbage records, random counts, an
    /// end marker or not, bytes after it.
    #[test]
    fn snapshot_insides_with_valid_checksums_never_panic(
        hlen in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        header_bytes in prop::collection::vec(any::<u8>(), 0..64),
        real_header in any::<bool>(),
        chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..64), 0u32..6), 0..4),
        end in any::<bool>(),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let h = if real_header { codec::encode(&header()) } else { header_bytes };
        let mut inner = hlen.unwrap_or(h.len() as u32).to_le_bytes().to_vec();
        inner.extend_from_slice(&h);
        for (body, count) in &chunks {
            inner.extend_from_slice(&chunk(body, *count));
        }
        if end {
            inner.extend_from_slice(&[0u8; 8]);
        }
        inner.extend_from_slice(&trailing);
        let file = with_valid_crc(&inner);
        let mut visited = 0u64;
        if let Ok((_, total)) = snapshot::parse(&file, |_, _| visited += 1) {
            prop_assert_eq!(visited, total);
        } else {
            prop_assert_eq!(visited, 0, "a refused file visits nothing");
        }
    }

    /// Real snapshot files, damaged and then given a valid trailing crc again (as a bad
    /// writer, not a bad disk, would produce): refused or parsed, never a panic, and parsed
    /// only when every record walks.
    #[test]
    fn snapshots_damaged_under_a_valid_crc_never_panic(
        records in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..24)), 0..12),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut w = Writer::new();
        for (k, v) in &records {
            w.record(k, v).unwrap();
        }
        let good = w.finish(header());
        prop_assert!(snapshot::verify(&good).is_ok());
        let inner = &good[9..good.len() - 4];
        let damaged = with_valid_crc(&apply(inner.to_vec(), &edits));
        let _ = snapshot::verify(&damaged);
        let _ = snapshot::verify(&apply(good.clone(), &edits));
    }
}

/// A chunk whose declared length runs past the end of the file, and a header length of
/// u32::MAX, are errors (not a slice panic or an allocation).
#[test]
fn lengths_beyond_the_file_are_errors() {
    let file = with_valid_crc(&u32::MAX.to_le_bytes());
    assert!(snapshot::verify(&file).is_err());
    let h = codec::encode(&header());
    let mut inner = (h.len() as u32).to_le_bytes().to_vec();
    inner.extend_from_slice(&h);
    inner.extend_from_slice(&u32::MAX.to_le_bytes());
    inner.extend_from_slice(&1u32.to_le_bytes());
    inner.extend_from_slice(&[0u8; 8]);
    let err = snapshot::verify(&with_valid_crc(&inner)).unwrap_err();
    assert!(err.to_string().contains("chunk"), "{err}");
}
