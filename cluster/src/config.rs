//! A node's configuration, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a node needs to start. The binary fills it from flags, env and defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where this node listens for peer (Raft) traffic.
    pub peer_addr: SocketAddr,
    /// The address other nodes use to reach this one; defaults to `peer_addr`.
    pub advertise_peer: Option<String>,
    /// `id -> peer address` of the founding members; empty for a single-node cluster.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Dial a different address for a member's peer address (`member addr → route`). For
    /// NAT-like setups and for fault-injection proxies that sit on each link.
    pub peer_routes: BTreeMap<String, String>,
    /// A member's peer address to join through when the data dir is empty (as a learner).
    pub join: Option<String>,
    /// Shared secret every peer request must carry.
    pub cluster_token: String,
    /// Client-facing addresses, reported in cluster status.
    pub grpc_addr: String,
    pub http_addr: String,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot (and purge the log behind it) every this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept behind the last snapshot for followers that lag a little.
    pub keep_behind_snapshot: u64,
    /// The change feed keeps at most this many revisions (the leader compacts
    /// older ones); 0 keeps every revision until an explicit compaction.
    pub history_revisions: u64,
    /// ...and drops revisions older than this (`None`: no age limit).
    pub history_age: Option<Duration>,
}

impl NodeConfig {
    pub fn new(node_id: u64, data_dir: PathBuf, peer_addr: SocketAddr) -> Self {
        NodeConfig {
            node_id,
            data_dir,
            peer_addr,
            advertise_peer: None,
            initial_cluster: BTreeMap::new(),
            join: None,
            peer_routes: BTreeMap::new(),
            cluster_token: String::new(),
            grpc_addr: String::new(),
            http_addr: String::new(),
            // On two shared cores a busy node can miss a 50 ms tick; these keep elections rare
            // under load and still elect a new leader in about a second.
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(800), Duration::from_millis(1600)),
            snapshot_every: 20_000,
            keep_behind_snapshot: 5_000,
            history_revisions: 100_000,
            history_age: None,
        }
    }

    /// The peer address this node is known by.
    pub fn advertised_peer(&self) -> String {
        self.advertise_peer
            .clone()
            .or_else(|| self.initial_cluster.get(&self.node_id).cloned())
            .unwrap_or_else(|| self.peer_addr.to_string())
    }

    /// The address to dial for the member address `addr`.
    pub fn route<'a>(&'a self, addr: &'a str) -> &'a str {
        self.peer_routes.get(addr).map_or(addr, String::as_str)
    }

    /// Parses `127.0.0.1:9085=127.0.0.1:19085,...` (member address = address to dial).
    pub fn parse_routes(s: &str) -> Result<BTreeMap<String, String>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
                    .ok_or_else(|| format!("`{p}` is not MEMBER_ADDR=DIAL_ADDR"))
            })
            .collect()
    }

    /// Parses `1=127.0.0.1:8085,2=127.0.0.1:9085`.
    pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<u64, String>, String> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("`{id}` in `{part}` is not a node id (a positive integer)"))?;
            if id == 0 {
                return Err("node id 0 is reserved; number nodes from 1".into());
            }
            let addr = addr.trim();
            if addr.parse::<SocketAddr>().is_err() && !addr.contains(':') {
                return Err(format!("`{addr}` in `{part}` is not HOST:PORT"));
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(format!("node id {id} appears twice"));
            }
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("--node-id must be 1 or more".into());
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.node_id) {
            return Err(format!(
                "--initial-cluster does not list this node's id {}; add `{}={}`",
                self.node_id, self.node_id, self.peer_addr
            ));
        }
        if self.join.is_some() && !self.initial_cluster.is_empty() {
            return Err("--join and --initial-cluster exclude each other: a joining node learns the members from the cluster".into());
        }
        if self.cluster_token.is_empty() {
            return Err("a cluster token is required".into());
        }
        if self.election_timeout.0 <= self.heartbeat * 3 {
            return Err("the election timeout must be well above the heartbeat".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let m = NodeConfig::parse_initial_cluster("1=127.0.0.1:8085, 2=127.0.0.1:9085").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2], "127.0.0.1:9085");
        assert!(NodeConfig::parse_initial_cluster("1=a:1,1=b:2")
            .unwrap_err()
            .contains("twice"));
        assert!(NodeConfig::parse_initial_cluster("x=a:1").is_err());
        assert!(NodeConfig::parse_initial_cluster("0=a:1").is_err());
        assert!(NodeConfig::parse_initial_cluster("1").is_err());
    }
}
