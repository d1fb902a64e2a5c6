//! Disaster recovery: turn a snapshot file into the data dir of a member of a NEW cluster.
//!
//! The restored state is the snapshot's keyspace with a new cluster id and the new cluster's
//! membership, applied "as of" the snapshot's last log id. The Raft log is marked purged up to
//! that id, so the new cluster's first entry gets the next index: store revisions continue
//! upwards and never go backwards for a client that watched the old cluster. Every member
//! restored from the same file with the same `--initial-cluster` gets byte-identical state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use micro_state::{codec, keys};
use openraft::{BasicNode, StoredMembership};

use crate::machine::{snapshot_bytes, write_file_durably, SNAPSHOT_FILE};
use crate::snapshot::{self, Header};
use crate::store;

/// What a restore produced.
#[derive(Debug, Clone)]
pub struct Restored {
    pub from: Header,
    pub cluster_id: String,
    pub records: u64,
    pub revision: u64,
}

/// A stable id for the new cluster: the same inputs on every member give the same id.
fn new_cluster_id(old: &str, snapshot_id: &str, members: &BTreeMap<u64, String>) -> String {
    // FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= *x as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(old.as_bytes());
    feed(b"/");
    feed(snapshot_id.as_bytes());
    for (id, addr) in members {
        feed(format!("/{id}={addr}").as_bytes());
    }
    format!("{h:016x}")
}

/// Verifies `bytes` completely, then writes a new member's data dir. Nothing is written if the
/// file is damaged or the data dir already holds data.
pub fn restore(
    bytes: &[u8],
    data_dir: &Path,
    members: &BTreeMap<u64, String>,
) -> anyhow::Result<Restored> {
    let mut pairs = Vec::new();
    let (from, records) = snapshot::parse(bytes, |k, v| pairs.push((k.to_vec(), v.to_vec())))
        .map_err(|e| anyhow::anyhow!("{e}; nothing was written"))?;
    if members.is_empty() {
        anyhow::bail!("--initial-cluster is required: the members of the new cluster");
    }
    let db_dir = data_dir.join("db");
    if db_dir.exists() && std::fs::read_dir(&db_dir)?.next().is_some() {
        anyhow::bail!(
            "{} already holds data; restore into an empty --data-dir",
            data_dir.display()
        );
    }
    let Some(last) = from.last_log_id else {
        anyhow::bail!("the snapshot holds no applied entries; nothing to restore");
    };
    let cluster_id = new_cluster_id(&from.cluster_id, &from.snapshot_id, members);
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let membership = StoredMembership::new(
        Some(last),
        openraft::Membership::new(vec![voters], nodes)
            .map_err(|e| anyhow::anyhow!("bad membership: {e}"))?,
    );

    for (k, v) in pairs.iter_mut() {
        if k.as_slice() == keys::META_MEMBERSHIP {
            *v = codec::encode(&membership);
        } else if k.as_slice() == keys::META_CLUSTER_ID {
            *v = cluster_id.as_bytes().to_vec();
        }
    }
    pairs.retain(|(k, _)| {
        k.as_slice() != keys::META_CLUSTER_ID && k.as_slice() != keys::META_MEMBERSHIP
    });
    pairs.push((
        keys::META_CLUSTER_ID.to_vec(),
        cluster_id.as_bytes().to_vec(),
    ));
    pairs.push((keys::META_MEMBERSHIP.to_vec(), codec::encode(&membership)));

    std::fs::create_dir_all(data_dir)?;
    let db = micro_log::Db::open(&db_dir)?;
    db.replace_state(pairs)?;
    store::mark_restored(&db, last)?;
    let snap_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir)?;
    let (file, _) = snapshot_bytes(&db).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_file_durably(&snap_dir.join(SNAPSHOT_FILE), &file)?;
    db.sync()?;
    Ok(Restored {
        revision: from.revision,
        from,
        cluster_id,
        records,
    })
}
