//! Where a Micro request's time goes, from the nodes' own Prometheus metrics: every node's
//! `/metrics` is scraped before and after a cell, and the differences of the histograms'
//! sums and counts give the mean of each stage of the critical path over exactly that cell.

use std::collections::BTreeMap;

use serde::Serialize;

/// One scrape of every node: series (name with labels) → value.
pub struct Scrape(Vec<BTreeMap<String, f64>>);

/// Scrapes `/metrics` of each HTTP address (a node that does not answer counts as empty).
pub async fn scrape(http: &[String]) -> Scrape {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for addr in http {
        let text = match client.get(format!("http://{addr}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        out.push(parse(&text));
    }
    Scrape(out)
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Means per stage over one cell (None where the cell gave nothing to average).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Stages {
    /// Mean time a node spent on one request of the workload (gRPC, to the response's
    /// headers), over every node.
    pub server_ms: Option<f64>,
    /// Leader: mean time from proposing an entry to its apply (append, replicate, fsync on a
    /// quorum, commit, apply).
    pub proposal_ms: Option<f64>,
    /// Writes (commands) per proposed entry.
    pub commands_per_entry: Option<f64>,
    /// Mean time of one WAL fsync, over every node.
    pub fsync_ms: Option<f64>,
    /// Fsyncs on all nodes per proposed entry.
    pub fsyncs_per_entry: Option<f64>,
    /// Mean time to apply one run of committed entries, over every node.
    pub apply_ms: Option<f64>,
    /// Mean time from a log append to durable (write, group fsync), over every node.
    #[serde(default)]
    pub append_ms: Option<f64>,
    /// Leader: mean replication round trip to a follower (messages with entries).
    #[serde(default)]
    pub replicate_ms: Option<f64>,
    /// Forward calls from followers to the leader per request.
    pub forwards_per_request: Option<f64>,
    /// Follower: mean time of one forwarded batch, sent to the leader until answered (the
    /// leader's proposal plus the hop there and back).
    #[serde(default)]
    pub forward_ms: Option<f64>,
    /// Leader: mean time a queued write or forwarded batch waited in its batcher for the
    /// entry on its way to be answered.
    #[serde(default)]
    pub leader_queue_ms: Option<f64>,
    /// Snapshots built during the cell, on all nodes (each reads the whole keyspace and
    /// fsyncs a file: the usual suspect for a tail).
    #[serde(default)]
    pub snapshots: Option<f64>,
    /// Mean time to build one of them.
    #[serde(default)]
    pub snapshot_ms: Option<f64>,
}

impl Scrape {
    /// The sum over nodes of `after - before` for `series`.
    fn delta(before: &Scrape, after: &Scrape, series: &str) -> f64 {
        after
            .0
            .iter()
            .zip(before.0.iter().chain(std::iter::repeat(&BTreeMap::new())))
            .map(|(a, b)| a.get(series).unwrap_or(&0.0) - b.get(series).unwrap_or(&0.0))
            .sum()
    }
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

/// The stages of the cell between `before` and `after`, for requests to gRPC `method`.
pub fn stages(before: &Scrape, after: &Scrape, method: &str) -> Stages {
    let d = |s: &str| Scrape::delta(before, after, s);
    // `labels` as they follow the name in the exposition: `{role="leader"}`, or "".
    let mean_ms_of = |name: &str, labels: &str| {
        ratio(
            d(&format!("{name}_sum{labels}")),
            d(&format!("{name}_count{labels}")),
        )
        .map(|s| s * 1e3)
    };
    let mean_ms = |name: &str| mean_ms_of(name, "");
    let labels = format!("{{method=\"{method}\"}}");
    let requests = d(&format!("micro_grpc_request_seconds_count{labels}"));
    let entries = d("micro_proposal_seconds_count");
    Stages {
        server_ms: ratio(
            d(&format!("micro_grpc_request_seconds_sum{labels}")),
            requests,
        )
        .map(|s| s * 1e3),
        proposal_ms: mean_ms("micro_proposal_seconds"),
        commands_per_entry: ratio(d("micro_proposal_commands_sum"), entries),
        fsync_ms: mean_ms("micro_log_fsync_seconds"),
        fsyncs_per_entry: ratio(d("micro_log_fsync_seconds_count"), entries),
        apply_ms: mean_ms("micro_apply_seconds"),
        append_ms: mean_ms("micro_log_append_seconds"),
        replicate_ms: mean_ms("micro_raft_append_entries_seconds"),
        forwards_per_request: ratio(d("micro_forwarded_writes_total"), requests),
        forward_ms: mean_ms("micro_forward_seconds"),
        leader_queue_ms: mean_ms_of("micro_batch_wait_seconds", "{role=\"leader\"}"),
        snapshots: Some(d("micro_snapshot_build_seconds_count")),
        snapshot_ms: mean_ms("micro_snapshot_build_seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_come_from_the_differences_over_all_nodes() {
        let before = Scrape(vec![
            parse("micro_proposal_seconds_sum 1\nmicro_proposal_seconds_count 10\nmicro_proposal_commands_sum 10\n"),
            parse("# HELP x y\nmicro_log_fsync_seconds_sum 0.5\nmicro_log_fsync_seconds_count 100\n"),
        ]);
        let after = Scrape(vec![
            parse("micro_proposal_seconds_sum 1.2\nmicro_proposal_seconds_count 110\nmicro_proposal_commands_sum 410\n\
                   micro_grpc_request_seconds_sum{method=\"/store.Store/Write\"} 2\n\
                   micro_grpc_request_seconds_count{method=\"/store.Store/Write\"} 400\n"),
            parse("micro_log_fsync_seconds_sum 0.7\nmicro_log_fsync_seconds_count 300\nmicro_forwarded_writes_total 40\n\
                   micro_forward_seconds_sum 0.08\nmicro_forward_seconds_count 40\n\
                   micro_batch_wait_seconds_sum{role=\"leader\"} 0.03\nmicro_batch_wait_seconds_count{role=\"leader\"} 20\n\
                   micro_batch_wait_seconds_sum{role=\"follower\"} 9\nmicro_batch_wait_seconds_count{role=\"follower\"} 1\n"),
        ]);
        let s = stages(&before, &after, "/store.Store/Write");
        assert_eq!(s.proposal_ms.map(|v| (v * 1e3).round()), Some(2000.0));
        assert_eq!(s.commands_per_entry, Some(4.0));
        assert_eq!(s.fsyncs_per_entry, Some(2.0));
        assert_eq!(s.fsync_ms.map(|v| (v * 1e3).round()), Some(1000.0));
        assert_eq!(s.server_ms, Some(5.0));
        assert_eq!(s.forward_ms.map(|v| (v * 1e3).round()), Some(2000.0));
        assert_eq!(s.forwards_per_request, Some(0.1));
        // The leader's queue only: the follower's series has its own label.
        assert_eq!(s.leader_queue_ms.map(|v| (v * 1e3).round()), Some(1500.0));
        assert_eq!(s.apply_ms, None);
        assert_eq!((s.snapshots, s.snapshot_ms), (Some(0.0), None));
    }
}
