//! openraft's log storage on [`micro_log::Db`]: entries are bincode in checksummed frames;
//! vote, committed and purged markers live in the `raft` column family.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use micro_log::Db;
use micro_state::codec;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::{Entry, LogId, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

type SResult<T> = io::Result<T>;

/// The Raft log of one node. Clones share the same database (and [`Recent`]).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Db>,
    recent: Arc<Mutex<Recent>>,
    /// The committed log id openraft reported last, when not yet written: it goes into the
    /// next append's batch (see `save_committed`). Only the core's own instance gets one.
    unsaved_committed: Option<Option<LogId>>,
}

/// At most this many bytes (encoded) of the newest entries are kept decoded in [`Recent`].
const RECENT_BYTES: usize = 8 << 20;

/// The newest entries of the log as they were appended, a contiguous run of indexes. The
/// leader's replication and every node's apply read back what was appended moments before;
/// from RocksDB that was a read, a checksum and a decode per entry per reader (~4 % of a node's
/// CPU at 256 clients). Appends, truncations and purges keep it equal to the log's tail.
#[derive(Debug)]
struct Recent {
    /// Each entry with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl Recent {
    fn push(&mut self, entry: Entry, size: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            // openraft truncates or purges before it appends elsewhere, which keeps the run
            // contiguous; should it ever not, a gap must not be served as if it were there.
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some((_, n)) => self.bytes -= n,
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops the entries after `last` (all of them with `None`).
    fn truncate_after(&mut self, last: Option<u64>) {
        while let Some((e, n)) = self.entries.back() {
            if last.is_some_and(|l| e.log_id.index <= l) {
                break;
            }
            self.bytes -= n;
            self.entries.pop_back();
        }
    }

    /// Drops the entries up to and including `upto`.
    fn purge(&mut self, upto: u64) {
        while let Some((e, n)) = self.entries.front() {
            if e.log_id.index > upto {
                break;
            }
            self.bytes -= n;
            self.entries.pop_front();
        }
    }

    /// The entries `from..to`, if all of them are here.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let end = first + self.entries.len() as u64;
        if from < first || to > end || from >= to {
            return None;
        }
        Some(
            self.entries
                .range((from - first) as usize..(to - first) as usize)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

impl LogStore {
    pub fn new(db: Arc<Db>) -> Self {
        Self::with_recent_bytes(db, RECENT_BYTES)
    }

    fn with_recent_bytes(db: Arc<Db>, max_bytes: usize) -> Self {
        LogStore {
            db,
            recent: Arc::new(Mutex::new(Recent {
                entries: VecDeque::new(),
                bytes: 0,
                max_bytes,
            })),
            unsaved_committed: None,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // Every change to `Recent` completes before its guard drops: a poisoned lock holds
        // a consistent value.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> SResult<Option<T>> {
        match self.db.get_meta(key).map_err(io::Error::other)? {
            Some(b) => Ok(Some(codec::decode(&b).map_err(io::Error::other)?)),
            None => Ok(None),
        }
    }

    /// Whether this node has ever voted or stored an entry (an existing member).
    pub fn is_initialized(&self) -> SResult<bool> {
        Ok(self.meta::<Vote>(VOTE)?.is_some()
            || self.db.last_log().map_err(io::Error::other)?.is_some()
            || self.meta::<LogId>(PURGED)?.is_some())
    }
}

/// Prepares a restored member's Raft metadata: the log is purged up to `log_id` (the new
/// cluster's entries follow it) and the vote is that entry's leader, so the first election of
/// the new cluster is in a later term than every entry it inherited.
pub(crate) fn mark_restored(db: &Db, log_id: LogId) -> micro_log::Result<()> {
    let vote = Vote::new_committed(log_id.leader_id.term, log_id.leader_id.node_id);
    db.put_meta(VOTE, &codec::encode(&vote), true)?;
    db.purge_log(log_id.index, (PURGED, &codec::encode(&log_id)))
}

/// Refuses a log that lost records after they were durable. Entries this node applied or knew
/// committed were in its log (fsynced before they counted); in a crash RocksDB's WAL keeps a
/// prefix, so they are still there, or below the purge point, or covered by an installed
/// snapshot. If not, the disk lost acknowledged data: with such a log the node could resume as
/// leader and write different entries under ids its peers already hold, so it must not run.
pub(crate) fn check_tail(db: &Db) -> anyhow::Result<()> {
    let meta = |key: &[u8]| -> anyhow::Result<Option<Vec<u8>>> { Ok(db.get_meta(key)?) };
    let purged: Option<LogId> = match meta(PURGED)? {
        Some(b) => Some(codec::decode::<LogId>(&b)?),
        None => None,
    };
    let committed: Option<LogId> = match meta(COMMITTED)? {
        Some(b) => codec::decode::<Option<LogId>>(&b)?,
        None => None,
    };
    let (applied, _) = crate::machine::applied_meta(db)?;
    let installed: Option<LogId> =
        match micro_state::Read::get(db, micro_state::keys::META_INSTALLED)? {
            Some(b) => codec::decode(&b)?,
            None => None,
        };
    let end = db
        .last_log()?
        .map_or(0, |(i, _)| i)
        .max(purged.map_or(0, |l| l.index));
    let covered = end.max(installed.map_or(0, |l| l.index));
    for (what, id) in [("applied", applied), ("committed", committed)] {
        let Some(id) = id else { continue };
        if id.index > covered {
            anyhow::bail!(
                "log records {}..={} are missing: the log ends at index {end} but this node had {what} index {}. \
                 The disk lost records after they were made durable; this node must not serve or vote with this log. \
                 Remove it from the cluster (`micro cluster remove ID` on a healthy member), wipe --data-dir and start it again with --join, then promote it",
                end + 1,
                id.index,
                id.index
            );
        }
    }
    Ok(())
}

/// Makes a node that led before it stopped stand for election again instead of resuming as
/// leader in the same term (which openraft does when its vote is committed for itself).
///
/// Resuming trusts that the log still holds everything this leader wrote in its term. If the
/// disk lost part of the tail that was fsynced but not yet applied (which [`check_tail`] cannot
/// see), the resumed leader would write new entries under log ids its followers already hold
/// for different entries, and the replicas would diverge without an error. As a candidate, its
/// shorter log loses the election to a follower that has the entries, and it catches up from
/// that leader. Costs one election after a leader restarts.
pub(crate) fn stand_for_election(db: &Db, node_id: u64) -> anyhow::Result<()> {
    let Some(bytes) = db.get_meta(VOTE)? else {
        return Ok(());
    };
    let vote: Vote = codec::decode(&bytes)?;
    if vote.is_committed() && vote.leader_id().node_id == node_id {
        let candidate = Vote::new(vote.leader_id().term, node_id);
        db.put_meta(VOTE, &codec::encode(&candidate), true)?;
        tracing::info!(
            term = vote.leader_id().term,
            "led before the restart: standing for election instead of resuming as leader"
        );
    }
    Ok(())
}

/// Encodes a log entry in the current format ([`micro_state::command::ENTRY_VERSION`]).
pub(crate) fn encode_entry(e: &Entry) -> Vec<u8> {
    codec::encode_as(micro_state::command::ENTRY_VERSION, e)
}

/// Release 1's entry layout (openraft's `Entry` with release 1's flat commands), frozen.
#[derive(serde::Deserialize)]
struct EntryV1 {
    log_id: LogId,
    payload: PayloadV1,
}

#[derive(serde::Deserialize)]
enum PayloadV1 {
    Blank,
    Normal(micro_state::command::v1::Request),
    Membership(openraft::Membership<u64, openraft::BasicNode>),
}

/// Decodes a log entry of any supported format: version 1 through the frozen release-1
/// types, version 2 directly.
pub fn decode_entry_bytes(payload: &[u8]) -> Result<Entry, codec::Error> {
    let (version, body) = codec::split(payload)?;
    match version {
        1 => {
            let e: EntryV1 = codec::decode_body(body)?;
            Ok(Entry {
                log_id: e.log_id,
                payload: match e.payload {
                    PayloadV1::Blank => openraft::EntryPayload::Blank,
                    PayloadV1::Normal(r) => openraft::EntryPayload::Normal(r.into()),
                    PayloadV1::Membership(m) => openraft::EntryPayload::Membership(m),
                },
            })
        }
        micro_state::command::ENTRY_VERSION => codec::decode_body(body),
        v => Err(codec::Error::Version(v)),
    }
}

pub(crate) fn decode_entry(index: u64, payload: &[u8]) -> SResult<Entry> {
    decode_entry_bytes(payload)
        .map_err(|e| io::Error::other(format!("log record {index} does not decode: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&x) => x + 1,
            Bound::Excluded(&x) => x,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.recent().get(from, to) {
            return Ok(entries);
        }
        self.db
            .read_log(from, to)
            .map_err(io::Error::other)?
            .iter()
            .map(|(i, p)| decode_entry(*i, p))
            .collect()
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote>> {
        self.meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.meta(PURGED)?;
        let last = match self.db.last_log().map_err(io::Error::other)? {
            Some((i, p)) => Some(decode_entry(i, &p)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> SResult<()> {
        // A vote must survive a crash, or a node could vote twice in one term.
        self.db
            .put_meta(VOTE, &codec::encode(vote), true)
            .map_err(io::Error::other)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> SResult<()> {
        // Only an optimisation on restart (apply up to it without waiting for a leader) and a
        // lower bound for `check_tail`, so a stored value a little behind is as good: it is
        // written with the next append instead of by a RocksDB write of its own, which openraft
        // waits for between a commit and its apply (~3 % of a node's CPU under load).
        self.unsaved_committed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId>> {
        if let Some(committed) = self.unsaved_committed {
            return Ok(committed);
        }
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        crate::trace::timeline::stamp("append.start");
        let (entries, encoded): (Vec<Entry>, Vec<(u64, Vec<u8>)>) = entries
            .into_iter()
            .map(|e| {
                let (index, bytes) = (e.log_id.index, encode_entry(&e));
                (e, (index, bytes))
            })
            .unzip();
        let committed = self.unsaved_committed.take();
        let committed_bytes = committed.map(|c| codec::encode(&c));
        let written = self.db.append_with_meta(
            encoded.iter().map(|(i, p)| (*i, p.as_slice())),
            committed_bytes.as_deref().map(|c| (COMMITTED, c)),
        );
        if written.is_err() {
            // Which of them reached the log is unknown: read them from it. The marker waits for
            // the next append.
            self.recent().clear();
            self.unsaved_committed = committed;
        } else {
            let mut recent = self.recent();
            for (e, (_, bytes)) in entries.into_iter().zip(&encoded) {
                recent.push(e, bytes.len());
            }
        }
        written.map_err(io::Error::other)?;
        // Durable only after the group-commit fsync; openraft waits for the callback before
        // counting these entries towards a quorum.
        crate::trace::timeline::stamp("append.written");
        self.db.sync_then(move |r| {
            crate::trace::timeline::stamp("append.durable");
            // From the append call to durable: encode, write, wait for and do the fsync.
            metrics::histogram!("micro_log_append_seconds").record(started.elapsed().as_secs_f64());
            callback.io_completed(r.map_err(io::Error::other));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> SResult<()> {
        // Keeps `last` itself; with none, the whole log goes.
        self.recent().truncate_after(last.map(|l| l.index));
        self.db
            .truncate_log(last.map_or(0, |l| l.index + 1))
            .map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogId) -> SResult<()> {
        self.recent().purge(log_id.index);
        self.db
            .purge_log(log_id.index, (PURGED, &codec::encode(&log_id)))
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_state::keys::{META_APPLIED, META_INSTALLED};

    fn log_id(index: u64) -> LogId {
        LogId::new(
            crate::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    fn set_state(db: &Db, key: &[u8], value: Vec<u8>) {
        db.commit_state([(key.to_vec(), Some(value))].into_iter().collect())
            .unwrap();
    }

    /// The committed log id is written with the next append, not by a write of its own; until
    /// then the instance that was told answers it, and a restart finds the one written last.
    #[test]
    fn the_committed_id_is_written_with_the_next_append() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone());
        let blank = |index| Entry {
            log_id: log_id(index),
            payload: openraft::EntryPayload::Blank,
        };
        let restarted = || LogStore::new(db.clone());
        rt.block_on(async {
            log.append([blank(1), blank(2)], IOFlushed::noop())
                .await
                .unwrap();
            log.save_committed(Some(log_id(2))).await.unwrap();
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)));
            assert_eq!(restarted().read_committed().await.unwrap(), None);
            log.append([blank(3)], IOFlushed::noop()).await.unwrap();
            assert_eq!(restarted().read_committed().await.unwrap(), Some(log_id(2)));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)));
        });
    }

    /// Model test of the recent entries: whatever mix of appends, truncations, purges and
    /// reads, with room for only a few entries, reads return what the log holds.
    mod recent {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Entries of this payload size each, after the last.
            Append(Vec<usize>),
            /// Keep this many of the entries after the purge point.
            Truncate(u64),
            /// Purge this many of the entries.
            Purge(u64),
            /// Read `skip..skip+len` of the entries after the purge point (up to 3 past the last).
            Read(u64, u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => prop::collection::vec(0usize..700, 1..5).prop_map(Op::Append),
                1 => (0u64..8).prop_map(Op::Truncate),
                1 => (0u64..4).prop_map(Op::Purge),
                3 => (0u64..8, 1u64..6).prop_map(|(a, b)| Op::Read(a, b)),
            ]
        }

        fn entry(index: u64, term: u64, size: usize) -> Entry {
            let put = micro_state::Put {
                key: format!("k{index}"),
                value: vec![term as u8; size],
                ..Default::default()
            };
            Entry {
                log_id: LogId::new(crate::LeaderId { term, node_id: 1 }, index),
                payload: openraft::EntryPayload::Normal(micro_state::Request {
                    time_ms: index * 1000 + term,
                    cmds: vec![micro_state::Command::Store(
                        micro_state::views::store::Cmd::Put(put),
                    )],
                }),
            }
        }

        /// Index, term and the request's time (which names both as written).
        fn summary(entries: &[Entry]) -> Vec<(u64, u64, u64)> {
            entries
                .iter()
                .map(|e| match &e.payload {
                    openraft::EntryPayload::Normal(r) => {
                        (e.log_id.index, e.log_id.leader_id.term, r.time_ms)
                    }
                    _ => (e.log_id.index, e.log_id.leader_id.term, 0),
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            #[test]
            fn reads_return_what_the_log_holds(ops in prop::collection::vec(op(), 1..40)) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let dir = tempfile::tempdir().unwrap();
                let db = Db::open(dir.path()).unwrap();
                // Room for about two entries: appends evict, reads fall back to the log.
                let mut log = LogStore::with_recent_bytes(db.clone(), 1500);
                let mut model: std::collections::BTreeMap<u64, Entry> = Default::default();
                let mut purged = 0u64;
                let mut term = 1u64;
                rt.block_on(async {
                    for op in ops {
                        let last = model.keys().next_back().copied().unwrap_or(purged);
                        match op {
                            Op::Append(sizes) => {
                                let batch: Vec<Entry> = sizes
                                    .iter()
                                    .enumerate()
                                    .map(|(i, &n)| entry(last + 1 + i as u64, term, n))
                                    .collect();
                                for e in &batch {
                                    model.insert(e.log_id.index, e.clone());
                                }
                                log.append(batch, IOFlushed::noop()).await.unwrap();
                            }
                            Op::Truncate(keep) => {
                                let keep_to = (purged + keep).min(last);
                                let at = (keep_to > 0).then(|| model.get(&keep_to).map_or(log_id(keep_to), |e| e.log_id));
                                log.truncate_after(at).await.unwrap();
                                model.retain(|&i, _| i <= keep_to);
                                // What comes next is a new leader's.
                                term += 1;
                            }
                            Op::Purge(n) => {
                                let upto = (purged + n).min(last);
                                if upto > purged {
                                    log.purge(log_id(upto)).await.unwrap();
                                    model.retain(|&i, _| i > upto);
                                    purged = upto;
                                }
                            }
                            Op::Read(skip, len) => {
                                // Past the end too: the log returns what it has.
                                let from = purged + 1 + skip;
                                let to = (from + len).min(last + 4);
                                if from < to {
                                    let got = log.try_get_log_entries(from..to).await.unwrap();
                                    let want: Vec<Entry> = model.range(from..to).map(|(_, e)| e.clone()).collect();
                                    prop_assert_eq!(summary(&got), summary(&want));
                                }
                            }
                        }
                    }
                    // The log itself agrees with the model (the reads above may all have hit).
                    let last = model.keys().next_back().copied().unwrap_or(purged);
                    let from_disk: Vec<Entry> = db
                        .read_log(purged + 1, last + 1)
                        .unwrap()
                        .iter()
                        .map(|(i, p)| decode_entry(*i, p).unwrap())
                        .collect();
                    let want: Vec<Entry> = model.values().cloned().collect();
                    prop_assert_eq!(summary(&from_disk), summary(&want));
                    Ok(())
                })?;
            }
        }
    }

    #[test]
    fn a_lost_applied_tail_is_refused_but_purges_and_installs_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        check_tail(&db).unwrap();
        let records: Vec<(u64, Vec<u8>)> = (1..=5).map(|i| (i, vec![i as u8])).collect();
        db.append(records.iter().map(|(i, p)| (*i, p.as_slice())))
            .unwrap();
        set_state(&db, META_APPLIED, codec::encode(&Some(log_id(5))));
        check_tail(&db).unwrap();

        // The disk loses records 4 and 5 after they were applied.
        db.truncate_log(4).unwrap();
        let e = check_tail(&db).unwrap_err().to_string();
        assert!(e.contains("log records 4..=5 are missing"), "{e}");

        // Purged up to 5 (a compacted log): fine.
        db.purge_log(5, (PURGED, &codec::encode(&log_id(5))))
            .unwrap();
        check_tail(&db).unwrap();

        // Applied beyond the log and the purge point, but covered by an installed snapshot
        // whose log purge did not happen yet (a crash in between): fine.
        set_state(&db, META_APPLIED, codec::encode(&Some(log_id(9))));
        assert!(check_tail(&db).is_err());
        set_state(&db, META_INSTALLED, codec::encode(&Some(log_id(9))));
        check_tail(&db).unwrap();

        // A committed index beyond everything the node still has is refused too.
        db.put_meta(COMMITTED, &codec::encode(&Some(log_id(12))), true)
            .unwrap();
        let e = check_tail(&db).unwrap_err().to_string();
        assert!(e.contains("committed index 12"), "{e}");
    }

    #[test]
    fn a_restarting_leader_stands_for_election() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let read =
            |db: &Db| -> Vote { codec::decode(&db.get_meta(VOTE).unwrap().unwrap()).unwrap() };
        stand_for_election(&db, 1).unwrap(); // no vote yet: nothing to do
        assert!(db.get_meta(VOTE).unwrap().is_none());

        // Another node's committed leadership stays as it is.
        db.put_meta(VOTE, &codec::encode(&Vote::new_committed(4, 2)), true)
            .unwrap();
        stand_for_election(&db, 1).unwrap();
        assert_eq!(read(&db), Vote::new_committed(4, 2));

        // Its own: the same term, no longer committed, so it must win an election.
        db.put_meta(VOTE, &codec::encode(&Vote::new_committed(5, 1)), true)
            .unwrap();
        stand_for_election(&db, 1).unwrap();
        assert_eq!(read(&db), Vote::new(5, 1));
        assert!(!read(&db).is_committed());
    }
}
