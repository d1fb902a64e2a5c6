//! Results of `micro-bench services`: one row per (client count, path), services.json,
//! services.md and the services section of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{fmt_opt, fmt_ratio, fmt_rss, markdown_header, per_1k, Latency, Machine};
use crate::args::ServicePath;
use crate::load::CellOutcome;

/// One cell: one path, one client count.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    pub path: ServicePath,
    pub clients: usize,
    /// gRPC channels (HTTP/2 connections) the clients shared; 0 for the gateway, whose
    /// clients share one HTTP/1.1 pool (a connection per call in flight).
    pub channels: usize,
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
    pub calls_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// CPU seconds of the Micro node(s) per 1,000 successful calls.
    pub node_cpu_s_per_1k: Option<f64>,
    /// CPU seconds of the greeter per 1,000 successful calls.
    pub greeter_cpu_s_per_1k: Option<f64>,
    /// The load generator's own CPU seconds per 1,000 calls.
    pub bench_cpu_s_per_1k: Option<f64>,
    /// VmHWM of each Micro node at the end of the cell, MiB.
    pub node_peak_rss_mib: Vec<Option<f64>>,
    /// calls/s of this path divided by calls/s of `direct` at the same client count.
    pub ratio: Option<f64>,
    /// p50 of this path minus p50 of `direct` at the same client count, ms.
    pub added_p50_ms: Option<f64>,
    pub error_samples: BTreeMap<String, u64>,
}

impl ServiceRow {
    pub fn new(
        path: ServicePath,
        clients: usize,
        channels: usize,
        o: &CellOutcome,
        greeter_cpu_s: Option<f64>,
    ) -> ServiceRow {
        let l = Latency::of(&o.hist);
        ServiceRow {
            path,
            clients,
            channels,
            calls: o.ops,
            errors: o.errors,
            seconds: o.seconds,
            calls_per_sec: o.ops as f64 / o.seconds,
            mean_ms: l.mean_ms,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            p999_ms: l.p999_ms,
            max_ms: l.max_ms,
            node_cpu_s_per_1k: per_1k(o.server_cpu_s, o.ops),
            greeter_cpu_s_per_1k: per_1k(greeter_cpu_s, o.ops),
            bench_cpu_s_per_1k: per_1k(o.bench_cpu_s, o.ops),
            node_peak_rss_mib: o.peak_rss_mib.clone(),
            ratio: None,
            added_p50_ms: None,
            error_samples: o.error_samples.clone(),
        }
    }

    fn connections(&self) -> String {
        match self.path {
            ServicePath::Gateway => format!("pool ≤{}", self.clients),
            _ => self.channels.to_string(),
        }
    }
}

/// Fills `ratio` and `added_p50_ms` of every row whose client count has a `direct` row.
pub fn fill_service_ratios(rows: &mut [ServiceRow]) {
    let direct: BTreeMap<usize, (f64, f64)> = rows
        .iter()
        .filter(|r| r.path == ServicePath::Direct)
        .map(|r| (r.clients, (r.calls_per_sec, r.p50_ms)))
        .collect();
    for r in rows.iter_mut() {
        if let Some(&(cps, p50)) = direct.get(&r.clients) {
            r.ratio = (cps > 0.0).then(|| r.calls_per_sec / cps);
            r.added_p50_ms = Some(r.p50_ms - p50);
        }
    }
}

pub fn services_text_table(rows: &[ServiceRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7}  {:<7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>11} {:>9} {:>6}  ratio",
        "clients",
        "path",
        "conns",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "node s/1k",
        "greeter s/1k",
        "bench s/1k",
        "errors"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>7}  {:<7} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>9.2} {:>9} {:>11} {:>9} {:>6}  ratio {}",
            r.clients,
            r.path.name(),
            r.connections(),
            r.calls_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            fmt_opt(r.node_cpu_s_per_1k, 3),
            fmt_opt(r.greeter_cpu_s_per_1k, 3),
            fmt_opt(r.bench_cpu_s_per_1k, 3),
            r.errors,
            fmt_ratio(r.ratio)
        );
    }
    s
}

pub fn services_markdown_table(rows: &[ServiceRow]) -> String {
    let mut s = String::from(
        "| clients | path | connections | calls/s | p50 ms | p99 ms | p99.9 ms | p50 added ms | node CPU s / 1k calls | greeter CPU s / 1k calls | bench CPU s / 1k calls | node peak RSS MiB | errors | ratio (calls/s ÷ direct) |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            r.clients,
            r.path.name(),
            r.connections(),
            r.calls_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            fmt_opt(r.added_p50_ms, 2),
            fmt_opt(r.node_cpu_s_per_1k, 3),
            fmt_opt(r.greeter_cpu_s_per_1k, 3),
            fmt_opt(r.bench_cpu_s_per_1k, 3),
            fmt_rss(&r.node_peak_rss_mib),
            r.errors,
            fmt_ratio(r.ratio)
        );
    }
    s
}

/// Throughput ratios against `direct`, one line per client count (`-` where a path is absent).
pub fn services_ratio_table(rows: &[ServiceRow]) -> String {
    let mut by_clients: BTreeMap<usize, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for r in rows {
        let e = by_clients.entry(r.clients).or_default();
        match r.path {
            ServicePath::Proxy => e.0 = r.ratio,
            ServicePath::Gateway => e.1 = r.ratio,
            ServicePath::Direct => {}
        }
    }
    let mut s = String::from(
        "| clients | proxy ÷ direct (goal ≥ 0.70) | gateway ÷ direct |\n|---:|---:|---:|\n",
    );
    for (n, (proxy, gateway)) in by_clients {
        let _ = writeln!(s, "| {n} | {} | {} |", fmt_ratio(proxy), fmt_ratio(gateway));
    }
    s
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicesParams {
    pub paths: Vec<ServicePath>,
    pub clients: Vec<usize>,
    pub clients_per_channel: usize,
    pub nodes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicesReport {
    pub command: String,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub machine: Machine,
    pub micro: String,
    pub micro_git: String,
    pub client: String,
    pub params: ServicesParams,
    /// VmHWM of the greeter at the end of the run, MiB.
    pub greeter_peak_rss_mib: Option<f64>,
    pub rows: Vec<ServiceRow>,
}

impl ServicesReport {
    pub fn markdown(&self) -> String {
        let p = &self.params;
        let mut s = markdown_header(&self.command, &self.machine);
        let _ = writeln!(
            s,
            "- Versions: Micro `{}` (git {}), the workspace's `greeter` example; clients: {}",
            self.micro, self.micro_git, self.client
        );
        let _ = writeln!(
            s,
            "- Setup: {} and one greeter (registered through node 1, peak RSS {} MiB) on 127.0.0.1; \
             proxy and gateway calls go to node 1; every call carries the admin's bearer token and every answer is checked",
            if p.nodes == 1 {
                "one Micro node".to_string()
            } else {
                format!("{} Micro nodes", p.nodes)
            },
            fmt_opt(self.greeter_peak_rss_mib, 0)
        );
        let _ = writeln!(
            s,
            "- Load: `Say.Hello {{name: \"bench\"}}` in closed loops, {:.0} s measured per cell after {:.0} s warmup, \
             paths alternating at each client count; gRPC clients share ceil(clients / {}) channels (HTTP/2 connections), \
             gateway clients one HTTP/1.1 pool",
            p.duration_s, p.warmup_s, p.clients_per_channel
        );
        let _ = writeln!(s, "- Whole run: {:.0} s\n", self.wall_seconds);
        s.push_str(&services_markdown_table(&self.rows));
        s.push('\n');
        s.push_str(&services_ratio_table(&self.rows));
        super::push_errors(
            &mut s,
            self.rows.iter().map(|r| {
                (
                    format!("{} c={}", r.path.name(), r.clients),
                    r.errors,
                    &r.error_samples,
                )
            }),
        );
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        super::write_outputs(dir, "services", "services", self, &self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::new_histogram;

    fn outcome(ops: u64, p50_us: u64) -> CellOutcome {
        let mut hist = new_histogram();
        for _ in 0..100 {
            hist.record(p50_us).unwrap();
        }
        CellOutcome {
            ops,
            errors: 0,
            error_samples: BTreeMap::new(),
            hist,
            seconds: 10.0,
            server_cpu_s: Some(2.0),
            bench_cpu_s: None,
            peak_rss_mib: vec![Some(60.0)],
            watch_events: 0,
        }
    }

    #[test]
    fn ratios_are_against_direct_at_the_same_client_count() {
        let mut rows = vec![
            ServiceRow::new(ServicePath::Direct, 1, 1, &outcome(10_000, 200), Some(1.0)),
            ServiceRow::new(ServicePath::Proxy, 1, 1, &outcome(8_000, 300), Some(1.0)),
            ServiceRow::new(ServicePath::Gateway, 1, 0, &outcome(5_000, 500), None),
            ServiceRow::new(ServicePath::Proxy, 16, 1, &outcome(7_000, 900), None),
        ];
        fill_service_ratios(&mut rows);
        let ratios: Vec<Option<f64>> = rows.iter().map(|r| r.ratio).collect();
        assert_eq!(ratios, vec![Some(1.0), Some(0.8), Some(0.5), None]);
        assert!((rows[1].added_p50_ms.unwrap() - 0.1).abs() < 0.001);
        assert_eq!(rows[3].added_p50_ms, None);
        assert_eq!(rows[0].calls_per_sec, 1000.0);
        assert_eq!(rows[0].node_cpu_s_per_1k, Some(0.2));
        assert_eq!(rows[0].greeter_cpu_s_per_1k, Some(0.1));
        let text = services_text_table(&rows);
        assert!(
            text.lines().nth(3).unwrap().ends_with("ratio 0.50"),
            "{text}"
        );
        assert!(text.contains("pool ≤1"), "{text}");
        let md = services_markdown_table(&rows);
        assert!(md.contains("| 1 | proxy | 1 | 800 | 0.30 |"), "{md}");
        let summary = services_ratio_table(&rows);
        assert!(summary.contains("| 1 | 0.80 | 0.50 |"), "{summary}");
        assert!(summary.contains("| 16 | - | - |"), "{summary}");
    }
}
