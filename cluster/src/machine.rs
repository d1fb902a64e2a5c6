//! openraft's state machine: applies entries with [`micro_state::apply`] and commits each
//! applied batch, with the applied log id and membership, in one atomic write.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use micro_log::Db;
use micro_state::{codec, keys, Overlay, Read};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};

use crate::snapshot;
use crate::{LogId, Membership, SnapshotMeta, TypeConfig};

/// A snapshot as openraft handles it: the meta and the whole file's bytes.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;

use keys::{META_APPLIED, META_MEMBERSHIP};
pub(crate) const SNAPSHOT_FILE: &str = "current.snap";

type SResult<T> = io::Result<T>;

/// Reads the applied log id and membership stored in the views keyspace.
pub(crate) fn applied_meta<S: Read + ?Sized>(s: &S) -> SResult<(Option<LogId>, Membership)> {
    let applied = match s.get(META_APPLIED).map_err(io::Error::other)? {
        Some(b) => codec::decode(&b).map_err(io::Error::other)?,
        None => None,
    };
    let membership = match s.get(META_MEMBERSHIP).map_err(io::Error::other)? {
        Some(b) => codec::decode(&b).map_err(io::Error::other)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

pub struct StateMachine {
    db: Arc<Db>,
    dir: PathBuf,
    applied: Option<LogId>,
    membership: Membership,
    feed: crate::feed::Sender,
}

impl StateMachine {
    pub fn open(db: Arc<Db>, dir: PathBuf) -> SResult<Self> {
        Self::with_feed(db, dir, crate::feed::channel())
    }

    /// Opens the state machine announcing every applied batch on `feed` (after it is durable
    /// in the views), for watchers and live consumers.
    pub fn with_feed(db: Arc<Db>, dir: PathBuf, feed: crate::feed::Sender) -> SResult<Self> {
        std::fs::create_dir_all(&dir).map_err(io::Error::other)?;
        let (applied, membership) = applied_meta(&*db)?;
        Ok(StateMachine {
            db,
            dir,
            applied,
            membership,
            feed,
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }
}

/// Writes `bytes` to `path` atomically and durably (see [`snapshot::replace_durably`]).
pub(crate) fn write_file_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    snapshot::replace_durably(path, |f| f.write_all(bytes))
}

/// Builds snapshots from a consistent point-in-time view of the keyspace, so writes go on
/// while it runs.
pub struct Builder {
    db: Arc<Db>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> SResult<Snapshot> {
        let db = self.db.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || build(&db, &dir))
            .await
            .map_err(io::Error::other)?
    }
}

fn build(db: &Db, dir: &std::path::Path) -> SResult<Snapshot> {
    let started = std::time::Instant::now();
    // Streamed to disk as it is read: a snapshot is the whole keyspace (tens of MB and more),
    // and building it in memory took three copies of it, with the reallocations between.
    let mut w = snapshot::FileWriter::create(&dir.join(SNAPSHOT_FILE)).map_err(io::Error::other)?;
    let (header, meta) = scan_into(db, w.records())?;
    let bytes = w.finish(header.clone()).map_err(io::Error::other)?;
    metrics::histogram!("micro_snapshot_build_seconds").record(started.elapsed().as_secs_f64());
    metrics::gauge!("micro_snapshot_bytes").set(bytes as f64);
    tracing::info!(
        snapshot_id = %header.snapshot_id,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "built snapshot"
    );
    // openraft keeps only the meta of a snapshot it had built; whoever needs the data
    // (a lagging follower, `install`) gets it from `get_current_snapshot`, which reads the file.
    Ok(Snapshot {
        meta,
        snapshot: Vec::new(),
    })
}

/// A snapshot file of the keyspace as of now (a consistent RocksDB snapshot), with its meta.
pub(crate) fn snapshot_bytes(db: &Db) -> SResult<(Vec<u8>, SnapshotMeta)> {
    let mut w = snapshot::Writer::new();
    let (header, meta) = scan_into(db, &mut w)?;
    Ok((w.finish(header), meta))
}

/// Writes every record of the keyspace as of now (a consistent RocksDB snapshot) to `w`;
/// returns the file's header and the snapshot's meta.
fn scan_into<W: std::io::Write>(
    db: &Db,
    w: &mut snapshot::Writer<W>,
) -> SResult<(snapshot::Header, SnapshotMeta)> {
    let mut applied = None;
    let mut membership = None;
    let mut cluster_id = None;
    let mut revision = None;
    db.for_each_state(|k, v| {
        if k == META_APPLIED {
            applied = Some(v.to_vec());
        } else if k == META_MEMBERSHIP {
            membership = Some(v.to_vec());
        } else if k == keys::META_CLUSTER_ID {
            cluster_id = Some(String::from_utf8_lossy(v).into_owned());
        } else if k == keys::META_REVISION {
            revision = v.try_into().ok().map(u64::from_be_bytes);
        }
        w.record(k, v)
    })
    .map_err(io::Error::other)?
    .map_err(io::Error::other)?;
    let last_log_id: Option<LogId> = match applied {
        Some(b) => codec::decode(&b).map_err(io::Error::other)?,
        None => None,
    };
    let last_membership: Membership = match membership {
        Some(b) => codec::decode(&b).map_err(io::Error::other)?,
        None => StoredMembership::default(),
    };
    let snapshot_id = match &last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_string(),
    };
    let header = snapshot::Header {
        cluster_id: cluster_id.unwrap_or_default(),
        snapshot_id,
        last_log_id,
        membership: last_membership.clone(),
        // Before the revision counter existed, revisions were log indexes.
        revision: revision.unwrap_or_else(|| last_log_id.map_or(0, |l| l.index)),
        record_count: 0,
    };
    Ok((
        header,
        SnapshotMeta {
            last_log_id,
            last_membership,
        },
    ))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> SResult<(Option<LogId>, Membership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> SResult<()>
    where
        S: futures::Stream<Item = SResult<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let started = std::time::Instant::now();
        crate::trace::timeline::stamp("apply.start");
        let db = self.db.clone();
        let reader = db.apply_reader();
        let mut ov = Overlay::new(&reader);
        let first_revision = micro_state::revision(&ov).map_err(io::Error::other)? + 1;
        // Answers go out only after the whole batch is durable in the views.
        let mut out = Vec::new();
        let mut last = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let pos = micro_state::LogPos {
                index: entry.log_id.index,
                term: entry.log_id.leader_id.term,
            };
            match entry.payload {
                EntryPayload::Blank => out.push((responder, Vec::new())),
                EntryPayload::Normal(req) => {
                    let res = micro_state::apply(&mut ov, pos, &req).map_err(|e| {
                        io::Error::other(format!("apply of log {}: {e}", entry.log_id))
                    })?;
                    out.push((responder, res));
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    ov.put(META_MEMBERSHIP.to_vec(), codec::encode(&self.membership));
                    out.push((responder, Vec::new()));
                }
            }
            last = Some(entry.log_id);
        }
        if let Some(last) = last {
            let last_revision = micro_state::revision(&ov).map_err(io::Error::other)?;
            ov.put(META_APPLIED.to_vec(), codec::encode(&Some(last)));
            let (writes, feed) = ov.into_parts();
            crate::trace::timeline::stamp("apply.computed");
            self.db.commit_state(writes).map_err(io::Error::other)?;
            crate::trace::timeline::stamp("apply.committed");
            self.applied = Some(last);
            metrics::histogram!("micro_apply_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("micro_apply_entries").record(out.len() as f64);
            // Nobody listening is fine: watchers read the persisted history when they start.
            let _ = self.feed.send(std::sync::Arc::new(crate::feed::Applied {
                index: last.index,
                first_revision,
                last_revision,
                changes: feed.changes,
                topics: feed.topics,
            }));
        }
        for (responder, res) in out {
            if let Some(r) = responder {
                r.send(res);
            }
        }
        crate::trace::timeline::stamp("apply.done");
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            db: self.db.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> SResult<()> {
        let mut pairs = Vec::new();
        let (header, _) = snapshot::parse(&data, |k, v| pairs.push((k.to_vec(), v.to_vec())))
            .map_err(io::Error::other)?;
        if header.last_log_id != meta.last_log_id {
            return Err(io::Error::other(snapshot::Error::Header(
                "header and metadata disagree on the last log id".into(),
            )));
        }
        pairs.retain(|(k, _)| k.as_slice() != keys::META_INSTALLED);
        pairs.push((
            keys::META_INSTALLED.to_vec(),
            codec::encode(&meta.last_log_id),
        ));
        self.db.replace_state(pairs).map_err(io::Error::other)?;
        write_file_durably(&self.file(), &data).map_err(io::Error::other)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // Watchers cannot follow a state that jumped: tell them to re-read the history.
        let revision = micro_state::revision(&*self.db).map_err(io::Error::other)?;
        let _ = self.feed.send(std::sync::Arc::new(crate::feed::Applied {
            index: meta.last_log_id.map_or(0, |l| l.index),
            first_revision: u64::MAX,
            last_revision: revision,
            changes: Vec::new(),
            topics: Default::default(),
        }));
        tracing::info!(snapshot_id = %header.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot>> {
        let bytes = match std::fs::read(self.file()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        let header = snapshot::verify(&bytes).map_err(io::Error::other)?;
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: header.last_log_id,
                last_membership: header.membership,
            },
            snapshot: bytes,
        }))
    }
}
