//! What a log entry carries and what applying it returns.
//!
//! Changing any of these types changes the log format: add variants at the end, never reorder
//! (bincode encodes enum variants by position), and add a golden-bytes test for the change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The application payload of one log entry: commands of one or more client requests (each
/// command is one request, applied on its own; a leader batches concurrent requests into one
/// entry) and the leader's wall clock when it proposed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Request {
    /// Leader wall clock in ms since the Unix epoch; the state clock is the max of all of them.
    pub time_ms: u64,
    /// Applied in order, each on its own. Empty for a tick (advances the clock, purges).
    pub cmds: Vec<Command>,
}

/// One metadata value of a store record, as Micro v3's `store.Field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetaField {
    pub kind: String,
    pub value: String,
}

/// Writes a store record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Put {
    pub db: String,
    pub table: String,
    pub key: String,
    pub value: Vec<u8>,
    pub metadata: BTreeMap<String, MetaField>,
    /// Time to live in ms from the entry's clock; 0 means no expiry.
    pub ttl_ms: u64,
}

/// Deletes a store record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Delete {
    pub db: String,
    pub table: String,
    pub key: String,
}

/// A guard of a [`Txn`]: the record's mod revision must equal `mod_revision` (0: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Compare {
    pub db: String,
    pub table: String,
    pub key: String,
    pub mod_revision: u64,
}

/// Compare-and-swap: if every guard holds, apply `success`, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Command>,
    pub failure: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(Put),
    Delete(Delete),
    Txn(Txn),
    /// Names the cluster once; later proposals are ignored, so the first one wins everywhere.
    SetClusterId(String),
    Publish(crate::views::events::Publish),
    SetRetention(crate::views::events::Retention),
    Claim(crate::views::events::Claim),
    Ack(crate::views::events::Ack),
    Release(crate::views::events::Release),
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The record now has this mod revision (the command's store revision).
    Put {
        revision: u64,
    },
    /// Whether a live record was deleted.
    Deleted {
        existed: bool,
    },
    Txn {
        succeeded: bool,
        /// The transaction's store revision (shared by all of its writes).
        revision: u64,
        results: Vec<Outcome>,
    },
    /// The command was invalid; nothing of it was applied.
    Rejected {
        field: String,
        reason: String,
    },
    /// The cluster id now in force (the proposed one, or the one set earlier).
    ClusterId(String),
    /// The event's sequence in its topic.
    Published {
        seq: u64,
    },
    Claimed(crate::views::events::Claimed),
    /// How many events or claims the command touched.
    Count(u64),
    Done,
}

impl Command {
    /// Roughly how many bytes the command adds to a log entry (for batch limits).
    pub fn size_hint(&self) -> usize {
        const FIXED: usize = 48;
        match self {
            Command::Put(p) => {
                FIXED
                    + p.key.len()
                    + p.value.len()
                    + p.metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.kind.len() + v.value.len())
                        .sum::<usize>()
            }
            Command::Publish(p) => FIXED + p.topic.len() + p.payload.len(),
            Command::Txn(t) => {
                FIXED
                    + t.compare.len() * FIXED
                    + t.success
                        .iter()
                        .chain(&t.failure)
                        .map(Command::size_hint)
                        .sum::<usize>()
            }
            _ => FIXED,
        }
    }

    /// Checks the command's fields. Front ends call it before proposing; apply calls it again
    /// so that a bad entry is rejected deterministically instead of half-applied.
    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Command::Put(p) => {
                check_name("key", &p.key, true)?;
                check_name("database", &p.db, false)?;
                check_name("table", &p.table, false)?;
                check_size("value", p.value.len(), crate::MAX_VALUE_BYTES)
            }
            Command::Delete(d) => {
                check_name("key", &d.key, true)?;
                check_name("database", &d.db, false)?;
                check_name("table", &d.table, false)
            }
            Command::Txn(t) => {
                for c in &t.compare {
                    check_name("compare.key", &c.key, true)?;
                    check_name("compare.database", &c.db, false)?;
                    check_name("compare.table", &c.table, false)?;
                }
                for c in t.success.iter().chain(&t.failure) {
                    if !matches!(
                        c,
                        Command::Put(_) | Command::Delete(_) | Command::Publish(_)
                    ) {
                        return Err(reject(
                            "txn",
                            "a transaction may only hold writes, deletes and publishes".into(),
                        ));
                    }
                    c.validate()?;
                }
                Ok(())
            }
            Command::SetClusterId(id) => check_name("cluster_id", id, true),
            Command::Publish(p) => {
                check_name("topic", &p.topic, true)?;
                check_size("payload", p.payload.len(), crate::MAX_VALUE_BYTES)
            }
            Command::SetRetention(r) => check_name("topic", &r.topic, true),
            Command::Claim(c) => {
                check_name("topic", &c.topic, true)?;
                check_name("group", &c.group, true)
            }
            Command::Ack(a) => {
                check_name("topic", &a.topic, true)?;
                check_name("group", &a.group, true)
            }
            Command::Release(r) => {
                check_name("topic", &r.topic, true)?;
                check_name("group", &r.group, true)
            }
        }
    }
}

fn reject(field: &str, reason: String) -> Outcome {
    Outcome::Rejected {
        field: field.to_string(),
        reason,
    }
}

fn check_name(field: &str, value: &str, required: bool) -> Result<(), Outcome> {
    if required && value.is_empty() {
        return Err(reject(field, "must not be empty".into()));
    }
    check_size(field, value.len(), crate::MAX_KEY_BYTES)?;
    Ok(())
}

fn check_size(field: &str, len: usize, limit: usize) -> Result<(), Outcome> {
    if len > limit {
        return Err(reject(
            field,
            format!("is {len} bytes; the limit is {limit} bytes"),
        ));
    }
    Ok(())
}
