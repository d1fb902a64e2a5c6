//! Results of `micro-bench size`: bytes on disk per node, size.json, size.md and the size
//! section of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{fmt_opt, fmt_ratio, markdown_header, Machine};
use crate::args::Target;

const MIB: f64 = 1024.0 * 1024.0;

/// One node's data dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeSize {
    /// Bytes allocated on disk (`du`: blocks × 512), what the node costs in disk space.
    pub allocated_bytes: u64,
    /// Sum of file lengths (`du --apparent-size`).
    pub apparent_bytes: u64,
    /// Allocated bytes by top-level entry of the data dir (`member`, `raft`, ...).
    pub parts: BTreeMap<String, u64>,
}

/// One system's three data dirs at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    pub target: Target,
    /// `after load` or `after N s idle`.
    pub when: String,
    pub nodes: Vec<NodeSize>,
    pub mean_allocated_bytes: f64,
    /// Mean allocated bytes per node divided by the keys written (none before the load).
    pub bytes_per_key: Option<f64>,
    /// Mean allocated bytes per node divided by the raw key + value bytes written.
    pub amplification: Option<f64>,
    /// Micro's mean allocated bytes per node divided by etcd's, at the same moment.
    pub ratio: Option<f64>,
}

impl SizeRow {
    /// `keys` and `raw` (key + value bytes) written so far; 0 before the load.
    pub fn new(target: Target, when: &str, nodes: Vec<NodeSize>, keys: u64, raw: u64) -> SizeRow {
        let mean = if nodes.is_empty() {
            0.0
        } else {
            nodes.iter().map(|n| n.allocated_bytes as f64).sum::<f64>() / nodes.len() as f64
        };
        SizeRow {
            target,
            when: when.to_string(),
            nodes,
            mean_allocated_bytes: mean,
            bytes_per_key: (keys > 0).then(|| mean / keys as f64),
            amplification: (raw > 0).then(|| mean / raw as f64),
            ratio: None,
        }
    }
}

/// Fills `ratio` (Micro / etcd mean allocated bytes) on both rows of each moment.
pub fn fill_size_ratios(rows: &mut [SizeRow]) {
    let mut by_when: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for r in rows.iter() {
        let e = by_when.entry(r.when.clone()).or_default();
        match r.target {
            Target::Micro => e.0 = Some(r.mean_allocated_bytes),
            Target::Etcd => e.1 = Some(r.mean_allocated_bytes),
            // A variant's flag changes nothing on disk worth a ratio of its own.
            Target::MicroAuthOff | Target::MicroMetricsOff => {}
        }
    }
    for r in rows.iter_mut() {
        r.ratio = match by_when[&r.when] {
            _ if r.target.variant_flag().is_some() => None,
            (Some(m), Some(e)) if e > 0.0 => Some(m / e),
            _ => None,
        };
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / MIB)
}

fn per_node(nodes: &[NodeSize], f: impl Fn(&NodeSize) -> u64) -> String {
    nodes
        .iter()
        .map(|n| mib(f(n)))
        .collect::<Vec<_>>()
        .join("/")
}

pub fn size_text_table(rows: &[SizeRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:<6} {:>24} {:>24} {:>10} {:>8}  ratio",
        "when", "target", "on disk MiB n1/n2/n3", "apparent MiB n1/n2/n3", "B/key", "x raw"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<20} {:<6} {:>24} {:>24} {:>10} {:>8}  ratio {}",
            r.when,
            r.target.name(),
            per_node(&r.nodes, |n| n.allocated_bytes),
            per_node(&r.nodes, |n| n.apparent_bytes),
            fmt_opt(r.bytes_per_key, 0),
            fmt_opt(r.amplification, 2),
            fmt_ratio(r.ratio)
        );
    }
    s
}

pub fn size_markdown_table(rows: &[SizeRow]) -> String {
    let mut s = String::from(
        "| when | target | on disk MiB (n1/n2/n3) | apparent MiB (n1/n2/n3) | mean on disk per node, MiB | bytes per key | × raw key+value | ratio (Micro/etcd) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            r.when,
            r.target.name(),
            per_node(&r.nodes, |n| n.allocated_bytes),
            per_node(&r.nodes, |n| n.apparent_bytes),
            r.mean_allocated_bytes / MIB,
            fmt_opt(r.bytes_per_key, 0),
            fmt_opt(r.amplification, 2),
            fmt_ratio(r.ratio)
        );
    }
    s
}

/// `micro node 1, after load: db/*.sst 120.3 MiB, ...`: the largest parts (at most 6, of at
/// least 0.1 MiB) of the first node of each row measured after the load.
fn parts_lines(rows: &[SizeRow]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.when.starts_with("after"))
        .filter_map(|r| {
            let n = r.nodes.first()?;
            let mut parts: Vec<(&String, &u64)> = n.parts.iter().collect();
            parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let parts: Vec<String> = parts
                .iter()
                .filter(|(_, v)| **v as f64 >= 0.1 * MIB)
                .take(6)
                .map(|(k, v)| format!("`{k}` {} MiB", mib(**v)))
                .collect();
            Some(format!(
                "- {} node 1, {}: {}",
                r.target.name(),
                r.when,
                parts.join(", ")
            ))
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeParams {
    pub targets: Vec<Target>,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub settle_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub command: String,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub machine: Machine,
    pub micro: String,
    pub micro_git: String,
    pub etcd: String,
    pub params: SizeParams,
    /// Seconds each system took to take the keys.
    pub load_seconds: BTreeMap<String, f64>,
    pub rows: Vec<SizeRow>,
}

impl SizeReport {
    pub fn markdown(&self) -> String {
        let p = &self.params;
        let mut s = markdown_header(&self.command, &self.machine);
        let _ = writeln!(
            s,
            "- Versions: Micro `{}` (git {}), etcd `{}`",
            self.micro, self.micro_git, self.etcd
        );
        let load: Vec<String> = self
            .load_seconds
            .iter()
            .map(|(t, secs)| format!("{t} {secs:.1} s"))
            .collect();
        let _ = writeln!(
            s,
            "- Load: {} distinct keys of {} B with values of {} B ({:.1} MiB of raw key+value), each written once, \
             in transactions of 100 puts from 16 clients ({}); default settings on both (no compaction, \
             defragmentation or snapshot forced)",
            p.keys,
            p.key_size,
            p.value_size,
            (p.keys * (p.key_size + p.value_size) as u64) as f64 / MIB,
            load.join(", ")
        );
        let _ = writeln!(
            s,
            "- Measured on each node's data dir with the servers running: on the fresh cluster, right after the load, and again \
             after {:.0} s idle; on disk = allocated blocks (`du`), apparent = file lengths (`du --apparent-size`)",
            p.settle_s
        );
        let _ = writeln!(s, "- Whole run: {:.0} s\n", self.wall_seconds);
        s.push_str(&size_markdown_table(&self.rows));
        let parts = parts_lines(&self.rows);
        if !parts.is_empty() {
            let _ = writeln!(
                s,
                "\nWhere the bytes are (node 1, on disk, largest kinds of file):\n\n{}",
                parts.join("\n")
            );
        }
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        super::write_outputs(dir, "size", "size", self, &self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(mib: u64) -> NodeSize {
        NodeSize {
            allocated_bytes: mib << 20,
            apparent_bytes: (mib << 20) / 2,
            parts: BTreeMap::from([("a".to_string(), (mib << 20) / 4), ("b".into(), mib << 19)]),
        }
    }

    #[test]
    fn rows_ratios_and_tables() {
        let raw = 100 << 20;
        let mut rows = vec![
            SizeRow::new(
                Target::Micro,
                "after load",
                vec![node(300), node(300), node(300)],
                1_000_000,
                raw,
            ),
            SizeRow::new(
                Target::Etcd,
                "after load",
                vec![node(600), node(600), node(600)],
                1_000_000,
                raw,
            ),
            SizeRow::new(
                Target::Micro,
                "after 10 s idle",
                vec![node(200), node(200), node(200)],
                1_000_000,
                raw,
            ),
        ];
        fill_size_ratios(&mut rows);
        assert_eq!(rows[0].ratio, Some(0.5));
        assert_eq!(rows[1].ratio, Some(0.5));
        assert_eq!(rows[2].ratio, None);
        assert_eq!(rows[0].amplification, Some(3.0));
        assert!((rows[0].bytes_per_key.unwrap() - 314.57).abs() < 0.01);
        let empty = SizeRow::new(Target::Etcd, "empty", vec![node(100)], 0, 0);
        assert_eq!((empty.bytes_per_key, empty.amplification), (None, None));
        assert!(size_text_table(&[empty])
            .lines()
            .nth(1)
            .unwrap()
            .contains(" - "));
        let text = size_text_table(&rows);
        let l1 = text.lines().nth(1).unwrap();
        assert!(
            l1.contains("300.0/300.0/300.0") && l1.contains("150.0/150.0/150.0"),
            "{l1}"
        );
        assert!(l1.ends_with("ratio 0.50"));
        let md = size_markdown_table(&rows);
        assert!(md.contains("| after load | etcd | 600.0/600.0/600.0 | 300.0/300.0/300.0 | 600.0 | 629 | 6.00 | 0.50 |"), "{md}");
        let parts = parts_lines(&rows);
        assert_eq!(
            parts[0],
            "- micro node 1, after load: `b` 150.0 MiB, `a` 75.0 MiB"
        );
    }
}
