//! Results of `micro-bench streams`: publish and replay tables, streams.json, streams.md and
//! the streams section of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{fmt_opt, fmt_ratio, fmt_rss, markdown_header, per_1k, Latency, Machine};
use crate::args::StreamTarget;
use crate::load::CellOutcome;

/// One publish cell: one system, one publisher count.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRow {
    pub target: StreamTarget,
    pub clients: usize,
    pub events: u64,
    pub errors: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Server CPU seconds (all 3 nodes) per 1,000 acknowledged publishes.
    pub cpu_s_per_1k: Option<f64>,
    pub bench_cpu_s_per_1k: Option<f64>,
    pub peak_rss_mib: Vec<Option<f64>>,
    /// Micro events/s divided by JetStream events/s at this publisher count.
    pub ratio: Option<f64>,
    pub error_samples: BTreeMap<String, u64>,
}

impl PublishRow {
    pub fn new(target: StreamTarget, clients: usize, o: &CellOutcome) -> PublishRow {
        let l = Latency::of(&o.hist);
        PublishRow {
            target,
            clients,
            events: o.ops,
            errors: o.errors,
            seconds: o.seconds,
            events_per_sec: o.ops as f64 / o.seconds,
            mean_ms: l.mean_ms,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            p999_ms: l.p999_ms,
            max_ms: l.max_ms,
            cpu_s_per_1k: per_1k(o.server_cpu_s, o.ops),
            bench_cpu_s_per_1k: per_1k(o.bench_cpu_s, o.ops),
            peak_rss_mib: o.peak_rss_mib.clone(),
            ratio: None,
            error_samples: o.error_samples.clone(),
        }
    }
}

/// One replay: every event from the first, read by one client connected to `node`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRow {
    pub target: StreamTarget,
    /// 1-based node the client is connected to.
    pub node: usize,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    /// Micro events/s divided by JetStream events/s via the same node number.
    pub ratio: Option<f64>,
}

/// Micro / JetStream for each key, on both rows of the pair.
fn ratios_by<K: Ord + Copy>(items: Vec<(K, StreamTarget, f64)>) -> Vec<Option<f64>> {
    let mut pairs: BTreeMap<K, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for (k, t, v) in &items {
        let e = pairs.entry(*k).or_default();
        match t {
            StreamTarget::Micro => e.0 = Some(*v),
            StreamTarget::Jetstream => e.1 = Some(*v),
        }
    }
    items
        .iter()
        .map(|(k, _, _)| match pairs[k] {
            (Some(m), Some(j)) if j > 0.0 => Some(m / j),
            _ => None,
        })
        .collect()
}

pub fn fill_publish_ratios(rows: &mut [PublishRow]) {
    let r = ratios_by(
        rows.iter()
            .map(|r| (r.clients, r.target, r.events_per_sec))
            .collect(),
    );
    for (row, ratio) in rows.iter_mut().zip(r) {
        row.ratio = ratio;
    }
}

pub fn fill_replay_ratios(rows: &mut [ReplayRow]) {
    let r = ratios_by(
        rows.iter()
            .map(|r| (r.node, r.target, r.events_per_sec))
            .collect(),
    );
    for (row, ratio) in rows.iter_mut().zip(r) {
        row.ratio = ratio;
    }
}

pub fn publish_text_table(rows: &[PublishRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>7}  {:<9} {:>9} {:>8} {:>8} {:>9} {:>10} {:>15} {:>6}  ratio",
        "publish",
        "clients",
        "target",
        "events/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "cpu s/1k",
        "peak RSS MiB",
        "errors"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<8} {:>7}  {:<9} {:>9.0} {:>8.2} {:>8.2} {:>9.2} {:>10} {:>15} {:>6}  ratio {}",
            "publish",
            r.clients,
            r.target.name(),
            r.events_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            fmt_opt(r.cpu_s_per_1k, 3),
            fmt_rss(&r.peak_rss_mib),
            r.errors,
            fmt_ratio(r.ratio)
        );
    }
    s
}

pub fn replay_text_table(rows: &[ReplayRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>7}  {:<9} {:>10} {:>9} {:>11}  ratio",
        "replay", "node", "target", "events", "seconds", "events/s"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<8} {:>7}  {:<9} {:>10} {:>9.2} {:>11.0}  ratio {}",
            "replay",
            r.node,
            r.target.name(),
            r.events,
            r.seconds,
            r.events_per_sec,
            fmt_ratio(r.ratio)
        );
    }
    s
}

pub fn publish_markdown_table(rows: &[PublishRow]) -> String {
    let mut s = String::from(
        "| publishers | target | events/s | p50 ms | p99 ms | p99.9 ms | server CPU s / 1k events | peak RSS MiB (n1/n2/n3) | errors | ratio (Micro/JetStream) |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.clients,
            r.target.name(),
            r.events_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            fmt_opt(r.cpu_s_per_1k, 3),
            fmt_rss(&r.peak_rss_mib),
            r.errors,
            fmt_ratio(r.ratio)
        );
    }
    s
}

pub fn replay_markdown_table(rows: &[ReplayRow]) -> String {
    let mut s = String::from(
        "| client on node | target | events | seconds | events/s | ratio (Micro/JetStream) |\n\
         |---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.0} | {} |",
            r.node,
            r.target.name(),
            r.events,
            r.seconds,
            r.events_per_sec,
            fmt_ratio(r.ratio)
        );
    }
    s
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamsParams {
    pub targets: Vec<StreamTarget>,
    pub clients: Vec<usize>,
    pub payload_size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub replay_events: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamsReport {
    pub command: String,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub machine: Machine,
    pub micro: String,
    pub micro_git: String,
    pub nats_server: String,
    /// How the JetStream cluster made publishes durable before acking them.
    pub jetstream_durability: Option<String>,
    pub client: String,
    pub params: StreamsParams,
    /// Seconds each system took to take the replay events in bulk.
    pub replay_load_seconds: BTreeMap<String, f64>,
    pub publish: Vec<PublishRow>,
    pub replay: Vec<ReplayRow>,
}

impl StreamsReport {
    pub fn markdown(&self) -> String {
        let p = &self.params;
        let mut s = markdown_header(&self.command, &self.machine);
        let _ = writeln!(
            s,
            "- Versions: Micro `{}` (git {}), nats-server `{}`; clients: {}",
            self.micro, self.micro_git, self.nats_server, self.client
        );
        let _ = writeln!(
            s,
            "- Durability before the ack: Micro fsyncs on a quorum (always); JetStream (R3, file storage): {}",
            self.jetstream_durability.as_deref().unwrap_or("not measured")
        );
        let _ = writeln!(
            s,
            "- Publish: payloads of {} B, {:.0} s measured per cell after {:.0} s warmup; closed-loop publishers, \
             publisher i on its own connection to node i % 3, each publish awaited until acked",
            p.payload_size, p.duration_s, p.warmup_s
        );
        if p.replay_events > 0 {
            let load: Vec<String> = self
                .replay_load_seconds
                .iter()
                .map(|(t, secs)| {
                    format!(
                        "{t} {secs:.1} s ({:.0} events/s)",
                        p.replay_events as f64 / secs
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "- Replay: {} events of {} B loaded in bulk first ({}; Micro: transactions of 1,000 publishes, \
                 JetStream: 1,000 async publishes in flight per connection; 6 connections each), then one client \
                 per node reads them all from the first event, checking order (Micro: consumer from sequence 1 \
                 with `stop_at_end`; JetStream: ordered push consumer, deliver all)",
                p.replay_events,
                p.payload_size,
                load.join(", ")
            );
        }
        let _ = writeln!(s, "- Whole run: {:.0} s\n", self.wall_seconds);
        s.push_str(&publish_markdown_table(&self.publish));
        if !self.replay.is_empty() {
            s.push('\n');
            s.push_str(&replay_markdown_table(&self.replay));
        }
        super::push_errors(
            &mut s,
            self.publish.iter().map(|r| {
                (
                    format!("{} publish c={}", r.target.name(), r.clients),
                    r.errors,
                    &r.error_samples,
                )
            }),
        );
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        super::write_outputs(dir, "streams", "streams", self, &self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::new_histogram;

    fn outcome(ops: u64) -> CellOutcome {
        let mut hist = new_histogram();
        for us in 1..=100 {
            hist.record(us * 100).unwrap();
        }
        CellOutcome {
            ops,
            errors: 0,
            error_samples: BTreeMap::new(),
            hist,
            seconds: 10.0,
            server_cpu_s: Some(2.0),
            bench_cpu_s: None,
            peak_rss_mib: vec![Some(60.0), Some(61.0), Some(62.0)],
            watch_events: 0,
        }
    }

    #[test]
    fn publish_ratios_pair_by_publisher_count() {
        let mut rows = vec![
            PublishRow::new(StreamTarget::Micro, 1, &outcome(1_000)),
            PublishRow::new(StreamTarget::Jetstream, 1, &outcome(4_000)),
            PublishRow::new(StreamTarget::Micro, 16, &outcome(30_000)),
            PublishRow::new(StreamTarget::Jetstream, 16, &outcome(20_000)),
            PublishRow::new(StreamTarget::Micro, 64, &outcome(5_000)),
        ];
        fill_publish_ratios(&mut rows);
        let ratios: Vec<Option<f64>> = rows.iter().map(|r| r.ratio).collect();
        assert_eq!(
            ratios,
            vec![Some(0.25), Some(0.25), Some(1.5), Some(1.5), None]
        );
        assert_eq!(rows[0].events_per_sec, 100.0);
        assert_eq!(rows[0].cpu_s_per_1k, Some(2.0));
        assert!((rows[0].p50_ms - 5.0).abs() < 0.05, "{}", rows[0].p50_ms);
        let text = publish_text_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains("jetstream") && lines[2].ends_with("ratio 0.25"));
        assert!(lines[5].ends_with("ratio -"));
        let md = publish_markdown_table(&rows);
        assert!(md.contains("| 16 | micro | 3000 |"), "{md}");
        assert!(md.contains("| 60/61/62 | 0 | 1.50 |"), "{md}");
    }

    #[test]
    fn replay_ratios_pair_by_node() {
        let row = |target, node, eps: f64| ReplayRow {
            target,
            node,
            events: 1_000_000,
            seconds: 1_000_000.0 / eps,
            events_per_sec: eps,
            ratio: None,
        };
        let mut rows = vec![
            row(StreamTarget::Micro, 1, 800_000.0),
            row(StreamTarget::Jetstream, 1, 400_000.0),
            row(StreamTarget::Micro, 2, 900_000.0),
            row(StreamTarget::Jetstream, 2, 300_000.0),
        ];
        fill_replay_ratios(&mut rows);
        assert_eq!(rows[0].ratio, Some(2.0));
        assert_eq!(rows[1].ratio, Some(2.0));
        assert_eq!(rows[3].ratio, Some(3.0));
        let text = replay_text_table(&rows);
        assert!(text.lines().nth(2).unwrap().ends_with("ratio 2.00"));
        let md = replay_markdown_table(&rows);
        assert!(
            md.contains("| 2 | jetstream | 1000000 | 3.33 | 300000 | 3.00 |"),
            "{md}"
        );
    }
}
