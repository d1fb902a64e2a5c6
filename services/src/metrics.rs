//! Prometheus metrics, served as text at `/metrics` on the HTTP port (no token: they carry no
//! data, as etcd's).
//!
//! Two sources, one page:
//! - what happens (requests, proposals, applies, fsyncs, snapshots, leader changes) is recorded
//!   where it happens through the `metrics` facade, in whichever crate that is; this binary
//!   installs the Prometheus recorder once per process (without one, a record is a no-op);
//! - what *is* (Raft state, indexes, replication lag, RocksDB sizes, leases, registry nodes,
//!   pending acks) is read when scraped and written here, so no series goes stale when, say, a
//!   leader becomes a follower and has no followers to report on.

use openraft::async_runtime::WatchReceiver;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use micro_cluster::Node;
use openraft::ServerState;

/// Latency buckets (seconds): 100 µs to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Size buckets (commands, entries, waiters): powers of two.
const COUNTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// What the recorded metrics mean (the scrape-time ones say it where they are written).
const RECORDED: &[(&str, &str)] = &[
    ("micro_grpc_requests_total", "gRPC requests answered, by method (`proxy` for users' services) and status code"),
    ("micro_grpc_request_seconds", "Time to a gRPC response's headers (a stream's start), by method"),
    ("micro_http_requests_total", "HTTP requests answered, by route (first path segment; `service` for users' services) and status"),
    ("micro_http_request_seconds", "Time to an HTTP response's headers, by route"),
    ("micro_proposal_seconds", "Leader: time from proposing an entry to its apply (append, replicate to a quorum, fsync, commit, apply)"),
    ("micro_proposal_commands", "Leader: commands per proposed entry (writes batched into one entry)"),
    ("micro_forwarded_writes_total", "Writes this node sent to the leader as a follower"),
    ("micro_forward_seconds", "Follower: one forwarded batch of writes, from sending it to the leader to its answer (the leader's proposal plus the hop there and back)"),
    ("micro_batch_wait_seconds", "Time a write (or, on the leader, a follower's forwarded batch) queued in the batcher until its batch left, by role (`leader`: waiting for the one entry on its way; `follower`: for a free forward); writes that found nothing on its way leave at once and are not counted"),
    ("micro_apply_seconds", "Time to apply a run of committed entries to the state"),
    ("micro_apply_entries", "Entries per apply run"),
    ("micro_log_fsync_seconds", "Time of one fsync of the log's write-ahead log (its count is the fsync count)"),
    ("micro_log_fsync_waiters", "Writes made durable by one fsync (group commit)"),
    ("micro_log_append_seconds", "Time from a log append to its entries being durable (write, then wait for and do the group fsync)"),
    ("micro_raft_append_entries_seconds", "Leader: one replication round trip to a follower (send, follower append and fsync, answer; pipelined, so queueing on the follower included), for messages with entries"),
    ("micro_snapshot_build_seconds", "Time to build a snapshot of the state (its count is the snapshot count)"),
    ("micro_snapshot_bytes", "Size of the last snapshot built"),
    ("micro_raft_leader_changes_total", "Times this node saw a new leader"),
    ("micro_watchdog_elections_total", "Elections this node started after hearing from no leader for twice the maximum election timeout (should stay 0)"),
    ("micro_watchers", "Open watches (store, registry, locks) on this node"),
    ("micro_consumers", "Open event consumers on this node"),
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Turns recording off for this process (`micro server --metrics-disabled`): every record
/// through the facade is then a no-op, and `/metrics` has only the scrape-time metrics.
/// Call before [`start`].
pub fn disable() {
    let _ = HANDLE.set(None);
}

/// The process's Prometheus recorder, installed on first use (None if another recorder got
/// there first, as in tests that run several nodes in one process, or if disabled).
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_commands".into()), COUNTS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), COUNTS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_waiters".into()), COUNTS))
                .and_then(|b| b.install_recorder());
            match built {
                Ok(h) => {
                    for (name, help) in RECORDED {
                        if name.ends_with("_total") {
                            metrics::describe_counter!(*name, *help);
                        } else if name.ends_with("_seconds")
                            || COUNTS_SUFFIXES.iter().any(|s| name.ends_with(s))
                        {
                            metrics::describe_histogram!(*name, *help);
                        } else {
                            metrics::describe_gauge!(*name, *help);
                        }
                    }
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!("metrics recorder not installed: {e}");
                    None
                }
            }
        })
        .as_ref()
}

const COUNTS_SUFFIXES: &[&str] = &["_commands", "_entries", "_waiters"];

/// Installs the recorder and starts what keeps it current: histogram upkeep and the leader
/// change counter. Call once per node.
pub fn start(node: &Node) {
    let Some(h) = handle() else { return };
    // Every recorded series exists from the start (at zero), so a scrape before the first
    // leader change or write still shows them.
    metrics::counter!("micro_raft_leader_changes_total").increment(0);
    metrics::counter!("micro_forwarded_writes_total").increment(0);
    metrics::counter!("micro_watchdog_elections_total").increment(0);
    metrics::gauge!("micro_watchers").increment(0.0);
    metrics::gauge!("micro_consumers").increment(0.0);
    let mut server = node.raft().server_metrics();
    let mut stopping = node.stopping();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let leader = server.borrow_and_update().current_leader;
            if leader.is_some() && leader != last {
                metrics::counter!("micro_raft_leader_changes_total").increment(1);
                last = leader;
            }
            tokio::select! {
                r = server.changed() => if r.is_err() { return },
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    });
    let mut stopping = node.stopping();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => h.run_upkeep(),
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    });
}

/// The `/metrics` page.
pub fn render(node: &Node) -> String {
    let mut out = handle().map_or_else(String::new, |h| {
        h.run_upkeep();
        h.render()
    });
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    scrape_time(node, &mut out);
    out
}

/// One metric family written at scrape time.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.head(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn scrape_time(node: &Node, out: &mut String) {
    let started = Instant::now();
    let m = node.raft().metrics().borrow_watched().clone();
    let mut f = Family { out };
    f.gauge(
        "micro_raft_term",
        "The current Raft term",
        m.current_term as f64,
    );
    f.head(
        "micro_raft_state",
        "gauge",
        "This node's Raft role (1 for the current one)",
    );
    for s in [
        ServerState::Leader,
        ServerState::Follower,
        ServerState::Candidate,
        ServerState::Learner,
    ] {
        let v = if m.state == s { 1.0 } else { 0.0 };
        let name = micro_cluster::node::state_name(s);
        f.sample("micro_raft_state", &[("state", name)], v);
    }
    f.gauge(
        "micro_raft_leader_id",
        "The leader this node knows (0: none)",
        m.current_leader.unwrap_or(0) as f64,
    );
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let purged = m.purged.map_or(0, |l| l.index);
    f.gauge(
        "micro_raft_last_log_index",
        "The last entry in this node's log",
        last_log as f64,
    );
    // The leader knows the commit point (the highest index a quorum holds); a follower's is
    // at least what it applied.
    let commit = match &m.replication {
        Some(r) if m.state == ServerState::Leader => {
            let mut held: Vec<u64> = r
                .iter()
                .map(|(id, l)| {
                    if *id == m.id {
                        last_log
                    } else {
                        l.map_or(0, |l| l.index)
                    }
                })
                .collect();
            if !r.contains_key(&m.id) {
                held.push(last_log);
            }
            held.sort_unstable_by(|a, b| b.cmp(a));
            held.get(held.len() / 2)
                .copied()
                .unwrap_or(applied)
                .max(applied)
        }
        _ => applied,
    };
    f.gauge(
        "micro_raft_commit_index",
        "Committed index: on the leader the highest a quorum holds, elsewhere the applied index",
        commit as f64,
    );
    f.gauge(
        "micro_raft_applied_index",
        "The last entry applied to this node's state",
        applied as f64,
    );
    f.gauge(
        "micro_raft_snapshot_index",
        "The last entry the newest snapshot covers",
        m.snapshot.map_or(0, |l| l.index) as f64,
    );
    f.gauge(
        "micro_raft_purged_index",
        "The last entry purged from the log (covered by a snapshot)",
        purged as f64,
    );
    f.gauge(
        "micro_raft_log_entries",
        "Entries in this node's log (last minus purged)",
        last_log.saturating_sub(purged) as f64,
    );
    if let (Some(r), ServerState::Leader) = (&m.replication, m.state) {
        let followers: Vec<_> = r.iter().filter(|(id, _)| **id != m.id).collect();
        if !followers.is_empty() {
            f.head(
                "micro_raft_replication_lag_entries",
                "gauge",
                "Leader: entries each follower is behind the leader's log",
            );
        }
        for (id, matched) in followers {
            let lag = last_log.saturating_sub(matched.map_or(0, |l| l.index));
            f.sample(
                "micro_raft_replication_lag_entries",
                &[("follower", &id.to_string())],
                lag as f64,
            );
        }
        if let Some(age) = micro_cluster::quorum_ack_age(&m) {
            f.gauge(
                "micro_raft_quorum_ack_age_seconds",
                "Leader: time since a quorum last acknowledged this leader",
                age.as_secs_f64(),
            );
        }
    }
    f.head(
        "micro_rocksdb_bytes",
        "gauge",
        "RocksDB sizes by column family (log: Raft entries; state: the views) and kind",
    );
    for (cf, kind, bytes) in node.disk_sizes() {
        f.sample(
            "micro_rocksdb_bytes",
            &[("cf", cf), ("kind", kind)],
            bytes as f64,
        );
    }
    views(node, &mut f);
    f.gauge(
        "micro_scrape_seconds",
        "Time to gather the scrape-time metrics of this page",
        started.elapsed().as_secs_f64(),
    );
}

/// Counts from the views (this node's applied state).
fn views(node: &Node, f: &mut Family<'_>) {
    use micro_state::views::{events, lease, registry};
    let view = node.view();
    let now = micro_cluster::now_ms();
    if let Ok(leases) = lease::list(view) {
        let live = leases.iter().filter(|(_, l)| l.expiry_ms > now).count();
        f.gauge("micro_leases", "Live leases", live as f64);
    }
    if let Ok(services) = registry::list(view, registry::WILDCARD_DOMAIN, None) {
        let nodes: usize = services.iter().map(|(_, s)| s.nodes.len()).sum();
        f.gauge(
            "micro_registry_services",
            "Registered service versions (all domains)",
            services.len() as f64,
        );
        f.gauge(
            "micro_registry_nodes",
            "Registered service instances (all domains)",
            nodes as f64,
        );
    }
    // Totals only: the page needs no token, and topic, group and namespace names are the
    // tenants' data (each group's pending and lag are in events.Stream/Topics, behind auth).
    if let Ok(groups) = events::groups(view) {
        f.gauge(
            "micro_events_groups",
            "Consumer groups (all namespaces)",
            groups.len() as f64,
        );
        let pending: usize = groups.iter().map(|(_, _, g)| g.pending.len()).sum();
        f.gauge(
            "micro_events_pending_acks",
            "Events delivered to consumer groups and not acked yet (all groups)",
            pending as f64,
        );
    }
}
