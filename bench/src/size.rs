//! `micro-bench size`: bytes on disk per node after writing N keys to Micro and to etcd.
//!
//! Each system gets a fresh 3-node cluster and the same load: every key of the key space written
//! once, in transactions of 100 puts from 16 clients (the `compare` preload). Each node's data
//! dir is measured right after the load and again after `--settle` idle (background flushes,
//! compactions and snapshots may change it), with the servers running.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::args::{SizeArgs, Target, Workload};
use crate::cluster::Cluster;
use crate::load::{self, Cell};
use crate::report::{self, Machine, NodeSize, SizeParams, SizeReport, SizeRow};

pub async fn run(a: SizeArgs) -> anyhow::Result<()> {
    a.validate()?;
    let wall = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workspace = crate::workspace_root();
    let mut targets = a.target.clone();
    targets.sort();
    targets.dedup();
    let micro = if targets.contains(&Target::Micro) {
        Some(crate::micro_bin(
            a.micro_bin.as_deref(),
            a.no_build,
            workspace.as_deref(),
        )?)
    } else {
        None
    };
    let etcd = if targets.contains(&Target::Etcd) {
        Some(crate::etcd_bin(a.etcd_bin.as_deref())?)
    } else {
        None
    };
    let data_root = a.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let mut machine = Machine::probe(&data_root);
    let raw = a.keys * (a.key_size + a.value_size) as u64;
    let cell = Cell {
        workload: Workload::Put,
        clients: 16,
        warmup: std::time::Duration::ZERO,
        duration: std::time::Duration::ZERO,
        keys: a.keys,
        key_size: a.key_size,
        value_size: a.value_size,
    };

    let mut clusters = Vec::new();
    let mut load_seconds = BTreeMap::new();
    let mut rows = Vec::new();
    for &t in &targets {
        let mut c = match t {
            Target::Micro => Cluster::start_micro(micro.as_deref().context("micro")?, &data_root)
                .await
                .context("start the Micro cluster")?,
            Target::Etcd => Cluster::start_etcd(etcd.as_deref().context("etcd")?, &data_root)
                .await
                .context("start the etcd cluster")?,
        };
        let before = cluster_sizes(&c);
        let secs = load::preload(&c, &cell)
            .await
            .with_context(|| format!("load {} keys into {}", a.keys, t.name()))?;
        c.check_running()?;
        eprintln!(
            "{}: wrote {} keys in {secs:.1} s; data dirs before the load: {} MiB",
            t.name(),
            a.keys,
            before
                .iter()
                .map(|n| format!("{:.1}", n.allocated_bytes as f64 / 1048576.0))
                .collect::<Vec<_>>()
                .join("/")
        );
        load_seconds.insert(t.name().to_string(), secs);
        rows.push(SizeRow::new(
            t,
            "after load",
            cluster_sizes(&c),
            a.keys,
            raw,
        ));
        clusters.push(c);
    }
    let idle = format!("after {:.0} s idle", a.settle.as_secs_f64());
    eprintln!("idle for {:.0} s...", a.settle.as_secs_f64());
    tokio::time::sleep(a.settle).await;
    for c in &mut clusters {
        c.check_running()?;
        rows.push(SizeRow::new(c.target, &idle, cluster_sizes(c), a.keys, raw));
    }
    drop(clusters);
    report::fill_size_ratios(&mut rows);
    machine.loadavg_after = report::loadavg();

    let report = SizeReport {
        command: crate::command_line(),
        started_unix,
        wall_seconds: wall.elapsed().as_secs_f64(),
        machine,
        micro: micro.as_deref().map_or("-".into(), report::version_of),
        micro_git: crate::micro_git(workspace.as_deref(), a.micro_bin.is_some()),
        etcd: etcd.as_deref().map_or("-".into(), report::version_of),
        params: SizeParams {
            targets,
            keys: a.keys,
            key_size: a.key_size,
            value_size: a.value_size,
            settle_s: a.settle.as_secs_f64(),
        },
        load_seconds,
        rows,
    };
    println!("\n{}", report::size_text_table(&report.rows));
    report.write(&a.out)?;
    eprintln!(
        "wrote {} and {}",
        a.out.join("size.json").display(),
        a.out.join("size.md").display()
    );
    if let Some(d) = crate::docs_path(a.docs.as_deref(), a.no_docs, workspace.as_deref()) {
        report::update_docs(&d, &report::SIZE_SECTION, &report.markdown())?;
        eprintln!("updated {}", d.display());
    }
    Ok(())
}

fn cluster_sizes(c: &Cluster) -> Vec<NodeSize> {
    c.nodes.iter().map(|n| dir_size(&n.data_dir)).collect()
}

/// Allocated and apparent bytes under `dir` (symlinks not followed), and allocated bytes by
/// top-level entry. Files that vanish while we walk (a compaction removing them) count as 0.
pub fn dir_size(dir: &Path) -> NodeSize {
    let mut out = NodeSize::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let (alloc, apparent) = tree_bytes(&e.path());
        out.allocated_bytes += alloc;
        out.apparent_bytes += apparent;
        *out.parts
            .entry(e.file_name().to_string_lossy().into_owned())
            .or_default() += alloc;
    }
    out
}

/// (allocated, apparent) bytes of `path` and everything under it.
fn tree_bytes(path: &Path) -> (u64, u64) {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    let mut total = (m.blocks() * 512, if m.is_file() { m.len() } else { 0 });
    if m.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                let (a, b) = tree_bytes(&e.path());
                total.0 += a;
                total.1 += b;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_a_tree_by_top_level_entry() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("wal/sub")).unwrap();
        std::fs::write(d.path().join("wal/a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(d.path().join("wal/sub/b"), vec![1u8; 5_000]).unwrap();
        std::fs::write(d.path().join("db"), vec![1u8; 100]).unwrap();
        // A sparse file: long, nothing allocated.
        let f = std::fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        let s = dir_size(d.path());
        assert_eq!(s.apparent_bytes, 10_000 + 5_000 + 100 + (1 << 30));
        assert!(s.allocated_bytes >= 15_100, "{s:?}");
        assert!(
            s.allocated_bytes < 1 << 20,
            "sparse file counted as allocated: {s:?}"
        );
        assert_eq!(
            s.parts.keys().collect::<Vec<_>>(),
            vec!["db", "sparse", "wal"]
        );
        assert!(s.parts["wal"] >= 15_000);
        assert_eq!(s.parts.values().sum::<u64>(), s.allocated_bytes);
        assert_eq!(dir_size(&d.path().join("missing")), NodeSize::default());
    }
}
