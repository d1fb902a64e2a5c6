//! Cluster-wide bookkeeping that is not a user's view: the cluster id and compaction of the
//! change feed.

use serde::{Deserialize, Serialize};

use crate::command::{check_name, Outcome};
use crate::keys;
use crate::storage::{Overlay, Read, StorageError};

/// Marker for [`crate::command::View`].
pub struct Meta;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Names the cluster once; later proposals are ignored, so the first one wins everywhere.
    SetClusterId(String),
    /// Drops the change feed below `revision` (at most `history::MAX_COMPACT_STEP` revisions
    /// per command; proposers keep each step to `history::MAX_COMPACT_CHANGES` changes with
    /// `history::compact_step`).
    Compact { revision: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    /// The cluster id now in force (the proposed one, or the one set earlier).
    ClusterId(String),
    /// The first revision still in the change feed.
    Compacted { revision: u64 },
}

impl Cmd {
    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::SetClusterId(id) => check_name("cluster_id", id, true),
            Cmd::Compact { .. } => Ok(()),
        }
    }
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
) -> Result<Outcome, StorageError> {
    Ok(match cmd {
        Cmd::SetClusterId(id) => {
            Outcome::Meta(Out::ClusterId(match ov.get(keys::META_CLUSTER_ID)? {
                Some(existing) => String::from_utf8_lossy(&existing).into_owned(),
                None => {
                    ov.put(keys::META_CLUSTER_ID.to_vec(), id.as_bytes().to_vec());
                    id.clone()
                }
            }))
        }
        // The compaction itself is no change of a view: it must not advance the revision past
        // what it names, so it runs at the revision before this command's.
        Cmd::Compact { revision: r } => {
            match crate::views::history::compact(ov, *r, revision.saturating_sub(1))? {
                Ok(first) => Outcome::Meta(Out::Compacted { revision: first }),
                Err(reason) => crate::command::reject("revision", reason),
            }
        }
    })
}

/// The cluster id, once the first leader has set it.
pub fn cluster_id<S: Read + ?Sized>(s: &S) -> Result<Option<String>, StorageError> {
    Ok(s.get(keys::META_CLUSTER_ID)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}
