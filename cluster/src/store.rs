//! openraft's log storage on [`micro_log::Db`]: entries are bincode in checksummed frames;
//! vote, committed and purged markers live in the `raft` column family.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use micro_log::Db;
use micro_state::codec;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::{Entry, LogId, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

type SResult<T> = io::Result<T>;

/// The Raft log of one node. Clones share the same database.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub fn new(db: Arc<Db>) -> Self {
        LogStore { db }
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
        // Only an optimisation on restart (apply up to it without waiting for a leader), so
        // it rides on the next fsync instead of paying for its own.
        self.db
            .put_meta(COMMITTED, &codec::encode(&committed), false)
            .map_err(io::Error::other)
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId>> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode_entry(&e)))
            .collect();
        self.db
            .append(encoded.iter().map(|(i, p)| (*i, p.as_slice())))
            .map_err(io::Error::other)?;
        // Durable only after the group-commit fsync; openraft waits for the callback before
        // counting these entries towards a quorum.
        self.db.sync_then(move |r| {
            // From the append call to durable: encode, write, wait for and do the fsync.
            metrics::histogram!("micro_log_append_seconds").record(started.elapsed().as_secs_f64());
            callback.io_completed(r.map_err(io::Error::other));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> SResult<()> {
        // Keeps `last` itself; with none, the whole log goes.
        self.db
            .truncate_log(last.map_or(0, |l| l.index + 1))
            .map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogId) -> SResult<()> {
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
