//! What a log entry carries and what applying it returns.
//!
//! Each view owns its commands and outcomes (`views::<view>::Cmd` / `Out`); the top-level
//! enums only nest them, so adding a view appends one variant and renumbers nothing. Changing
//! any of these types changes the log format: add variants at the end, never reorder (bincode
//! encodes enum variants by position), and add a golden-bytes test for the change. Log entries
//! of release 1 (a flat `Command` enum) are decoded through the frozen copy in [`v1`].

use serde::{Deserialize, Serialize};

use crate::views::{auth, config, events, lease, lock, meta, registry, runtime, store};

/// The format version of log entries this release writes (release 1 wrote 1; see [`v1`]).
pub const ENTRY_VERSION: u8 = 2;

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

/// Short form for logs (openraft prints entries): the size, not the contents, which may be
/// secrets or large values.
impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request(t={}, {} commands)",
            self.time_ms,
            self.cmds.len()
        )
    }
}

/// Compare-and-swap across views: if every guard holds, apply `success`, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Txn {
    pub compare: Vec<store::Compare>,
    pub success: Vec<Command>,
    pub failure: Vec<Command>,
}

/// One client request, by view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Store(store::Cmd),
    Events(events::Cmd),
    Lease(lease::Cmd),
    Meta(meta::Cmd),
    Txn(Txn),
    Registry(registry::Cmd),
    Config(config::Cmd),
    Lock(lock::Cmd),
    /// A write that applies only while `Fence` holds its lock's newest token.
    Fenced(lock::Fence, Box<Command>),
    Auth(auth::Cmd),
    Runtime(runtime::Cmd),
}

/// The result of one command, by view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Store(store::Out),
    Events(events::Out),
    Lease(lease::Out),
    Meta(meta::Out),
    Txn {
        succeeded: bool,
        /// The transaction's revision (shared by all of its changes).
        revision: u64,
        results: Vec<Outcome>,
    },
    /// The command was invalid; nothing of it was applied.
    Rejected {
        field: String,
        reason: String,
    },
    Registry(registry::Out),
    Config(config::Out),
    Lock(lock::Out),
    /// The command was well-formed but the state refuses it now (a fence whose token is no
    /// longer the lock's newest); nothing of it was applied.
    Refused {
        field: String,
        reason: String,
    },
    Auth(auth::Out),
    Runtime(runtime::Out),
}

/// A view as the edges see it: the commands it takes and the outcome type they return, so a
/// caller proposes `V::Cmd` and gets `V::Out` back without matching on every view.
pub trait View {
    type Cmd;
    type Out;
    fn command(cmd: Self::Cmd) -> Command;
    /// The view's outcome, or the outcome as it was (a rejection, or a bug) for the caller.
    fn outcome(out: Outcome) -> Result<Self::Out, Outcome>;
}

macro_rules! view {
    ($marker:ty, $module:ident, $variant:ident) => {
        impl View for $marker {
            type Cmd = $module::Cmd;
            type Out = $module::Out;
            fn command(cmd: Self::Cmd) -> Command {
                Command::$variant(cmd)
            }
            fn outcome(out: Outcome) -> Result<Self::Out, Outcome> {
                match out {
                    Outcome::$variant(o) => Ok(o),
                    other => Err(other),
                }
            }
        }
    };
}
view!(store::Store, store, Store);
view!(events::Events, events, Events);
view!(lease::Leases, lease, Lease);
view!(meta::Meta, meta, Meta);
view!(registry::Registry, registry, Registry);
view!(config::Config, config, Config);
view!(lock::Locks, lock, Lock);
view!(auth::Auth, auth, Auth);
view!(runtime::Runtime, runtime, Runtime);

impl Command {
    /// Roughly how many bytes the command adds to a log entry (for batch limits).
    pub fn size_hint(&self) -> usize {
        match self {
            Command::Store(c) => c.size_hint(),
            Command::Events(c) => c.size_hint(),
            Command::Lease(_) | Command::Meta(_) => FIXED_SIZE,
            Command::Registry(c) => c.size_hint(),
            Command::Config(c) => c.size_hint(),
            Command::Lock(c) => c.size_hint(),
            Command::Auth(c) => c.size_hint(),
            Command::Runtime(c) => c.size_hint(),
            Command::Fenced(f, c) => FIXED_SIZE + f.lock.len() + c.size_hint(),
            Command::Txn(t) => {
                FIXED_SIZE
                    + t.compare.len() * FIXED_SIZE
                    + t.success
                        .iter()
                        .chain(&t.failure)
                        .map(Command::size_hint)
                        .sum::<usize>()
            }
        }
    }

    /// Checks the command's fields. Front ends call it before proposing; apply calls it again
    /// so that a bad entry is rejected deterministically instead of half-applied.
    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Command::Store(c) => c.validate(),
            Command::Events(c) => c.validate(),
            Command::Lease(c) => c.validate(),
            Command::Meta(c) => c.validate(),
            Command::Registry(c) => c.validate(),
            Command::Config(c) => c.validate(),
            Command::Lock(c) => c.validate(),
            Command::Auth(c) => c.validate(),
            Command::Runtime(c) => c.validate(),
            Command::Fenced(f, c) => {
                f.validate()?;
                let fenceable = match c.as_ref() {
                    Command::Store(_) | Command::Txn(_) => true,
                    Command::Events(e) => matches!(e, events::Cmd::Publish(_)),
                    Command::Lease(_)
                    | Command::Meta(_)
                    | Command::Registry(_)
                    | Command::Config(_)
                    | Command::Lock(_)
                    | Command::Auth(_)
                    | Command::Runtime(_)
                    | Command::Fenced(..) => false,
                };
                if !fenceable {
                    return Err(reject(
                        "fence",
                        "only store writes, transactions and publishes can be fenced".into(),
                    ));
                }
                c.validate()
            }
            Command::Txn(t) => {
                for c in &t.compare {
                    c.validate()?;
                }
                for c in t.success.iter().chain(&t.failure) {
                    let allowed = match c {
                        Command::Store(_) => true,
                        Command::Events(e) => matches!(e, events::Cmd::Publish(_)),
                        Command::Lease(_)
                        | Command::Meta(_)
                        | Command::Txn(_)
                        | Command::Registry(_)
                        | Command::Config(_)
                        | Command::Lock(_)
                        | Command::Auth(_)
                        | Command::Runtime(_)
                        | Command::Fenced(..) => false,
                    };
                    if !allowed {
                        return Err(reject(
                            "txn",
                            "a transaction may only hold writes, deletes and publishes".into(),
                        ));
                    }
                    c.validate()?;
                }
                Ok(())
            }
        }
    }
}

/// What every command costs in an entry besides its strings and payloads.
pub(crate) const FIXED_SIZE: usize = 48;

pub(crate) fn reject(field: &str, reason: String) -> Outcome {
    Outcome::Rejected {
        field: field.to_string(),
        reason,
    }
}

pub(crate) fn check_name(field: &str, value: &str, required: bool) -> Result<(), Outcome> {
    if required && value.is_empty() {
        return Err(reject(field, "must not be empty".into()));
    }
    check_size(field, value.len(), crate::MAX_KEY_BYTES)?;
    Ok(())
}

pub(crate) fn check_size(field: &str, len: usize, limit: usize) -> Result<(), Outcome> {
    if len > limit {
        return Err(reject(
            field,
            format!("is {len} bytes; the limit is {limit} bytes"),
        ));
    }
    Ok(())
}

/// Release 1's log entry payload, frozen: a flat command enum. Only decoded, never written.
/// The types it shares with the current release (`Delete`, `Compare`, the events commands) are
/// pinned by the release-1 golden bytes; if one of them changes, freeze a copy here first.
pub mod v1 {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use crate::views::{events, meta, store};

    #[derive(Debug, Deserialize)]
    pub struct Request {
        pub time_ms: u64,
        pub cmds: Vec<Command>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Put {
        pub db: String,
        pub table: String,
        pub key: String,
        #[serde(with = "serde_bytes")]
        pub value: Vec<u8>,
        pub metadata: BTreeMap<String, store::MetaField>,
        pub ttl_ms: u64,
    }

    #[derive(Debug, Deserialize)]
    pub struct Txn {
        pub compare: Vec<store::Compare>,
        pub success: Vec<Command>,
        pub failure: Vec<Command>,
    }

    #[derive(Debug, Deserialize)]
    pub enum Command {
        Put(Put),
        Delete(store::Delete),
        Txn(Txn),
        SetClusterId(String),
        Publish(events::Publish),
        SetRetention(events::Retention),
        Claim(events::Claim),
        Ack(events::Ack),
        Release(events::Release),
    }

    impl From<Request> for super::Request {
        fn from(r: Request) -> Self {
            super::Request {
                time_ms: r.time_ms,
                cmds: r.cmds.into_iter().map(Into::into).collect(),
            }
        }
    }

    impl From<Command> for super::Command {
        fn from(c: Command) -> Self {
            use super::Command as C;
            match c {
                Command::Put(p) => C::Store(store::Cmd::Put(store::Put {
                    db: p.db,
                    table: p.table,
                    key: p.key,
                    value: p.value,
                    metadata: p.metadata,
                    ttl_ms: p.ttl_ms,
                    lease: 0,
                })),
                Command::Delete(d) => C::Store(store::Cmd::Delete(d)),
                Command::Txn(t) => C::Txn(super::Txn {
                    compare: t.compare,
                    success: t.success.into_iter().map(Into::into).collect(),
                    failure: t.failure.into_iter().map(Into::into).collect(),
                }),
                Command::SetClusterId(id) => C::Meta(meta::Cmd::SetClusterId(id)),
                Command::Publish(p) => C::Events(events::Cmd::Publish(p)),
                Command::SetRetention(r) => C::Events(events::Cmd::SetRetention(r)),
                Command::Claim(c) => C::Events(events::Cmd::Claim(c)),
                Command::Ack(a) => C::Events(events::Cmd::Ack(a)),
                Command::Release(r) => C::Events(events::Cmd::Release(r)),
            }
        }
    }
}
