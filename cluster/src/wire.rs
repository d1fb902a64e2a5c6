//! What nodes say to each other besides Raft itself: forwarded calls' errors, membership
//! changes, and each member's view of itself. A leaf module: `node`, `peer` and `batch` all
//! use it, and it uses none of them.

use serde::{Deserialize, Serialize};

/// Why a leader-side call did not happen; crosses the wire from leader to follower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// Not the leader (maybe it knows who is). Nothing was proposed: safe to retry.
    NotLeader {
        leader: Option<(u64, String)>,
    },
    Invalid {
        field: String,
        reason: String,
    },
    Unavailable(String),
}

/// A membership change, executed by the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum MembershipOp {
    /// Add a node as a learner: it receives the log but does not vote.
    AddLearner { id: u64, addr: String },
    /// Make a caught-up learner a voter.
    Promote { id: u64 },
    /// Remove a voter or learner.
    Remove { id: u64 },
}

/// How far behind the leader's log a learner may be and still be promoted.
pub const PROMOTE_MAX_LAG: u64 = 1000;

/// One member's own view of itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub peer_address: String,
    pub role: String,
    pub state: String,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub grpc_address: String,
    pub http_address: String,
    /// Entries behind the most advanced member's log.
    pub lag: u64,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub node_id: u64,
    pub cluster_id: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberStatus>,
}
