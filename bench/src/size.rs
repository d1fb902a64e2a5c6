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

/// The `when` of the rows measured on the fresh cluster, before any key is written.
pub const EMPTY: &str = "empty (before load)";

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
    let micro = a
        .common
        .micro(targets.iter().any(|t| t.is_micro()), workspace.as_deref())?;
    let etcd = if targets.contains(&Target::Etcd) {
        Some(crate::etcd_bin(a.etcd_bin.as_deref())?)
    } else {
        None
    };
    let data_root = a.common.data_root();
    let mut machine = Machine::probe(&data_root);
    let raw = a.keys * (a.key_size + a.value_size) as u64;
    let cell = Cell {
        workload: Workload::Put,
        clients: 16,
        conns: 0,
        warmup: std::time::Duration::ZERO,
        duration: std::time::Duration::ZERO,
        keys: a.keys,
        key_size: a.key_size,
        value_size: a.value_size,
    };

    let mut clusters = Vec::new();
    let mut load_seconds = BTreeMap::new();
    let (mut empty, mut loaded, mut idle_rows) = (Vec::new(), Vec::new(), Vec::new());
    for &t in &targets {
        let mut c = match t {
            Target::Micro | Target::MicroAuthOff | Target::MicroMetricsOff => {
                Cluster::start_micro_as(t, micro.as_deref().context("micro")?, &data_root, 3)
                    .await
                    .with_context(|| format!("start the {} cluster", t.name()))?
            }
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
        empty.push(SizeRow::new(t, EMPTY, before, 0, 0));
        loaded.push(SizeRow::new(
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
        idle_rows.push(SizeRow::new(c.target, &idle, cluster_sizes(c), a.keys, raw));
    }
    drop(clusters);
    let mut rows: Vec<SizeRow> = empty.into_iter().chain(loaded).chain(idle_rows).collect();
    report::fill_size_ratios(&mut rows);
    machine.loadavg_after = report::loadavg();

    let report = SizeReport {
        command: crate::command_line(),
        started_unix,
        wall_seconds: wall.elapsed().as_secs_f64(),
        machine,
        micro: micro.as_deref().map_or("-".into(), report::version_of),
        micro_git: crate::micro_git(workspace.as_deref(), a.common.micro_bin.is_some()),
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
    report.write(&a.common.out)?;
    if let Some(d) = a.common.docs_file(workspace.as_deref()) {
        report::update_docs(&d, &report::SIZE_SECTION, &report.markdown())?;
        eprintln!("updated {}", d.display());
    }
    Ok(())
}

fn cluster_sizes(c: &Cluster) -> Vec<NodeSize> {
    c.nodes.iter().map(|n| dir_size(&n.data_dir)).collect()
}

/// Allocated and apparent bytes under `dir` (symlinks not followed), and allocated bytes by
/// kind of file (see [`part_key`]). Files that vanish while we walk (a compaction removing
/// them) count as 0.
pub fn dir_size(dir: &Path) -> NodeSize {
    let mut out = NodeSize::default();
    walk(dir, Path::new(""), &mut out);
    out
}

fn walk(dir: &Path, rel: &Path, out: &mut NodeSize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let rel = rel.join(e.file_name());
        let alloc = m.blocks() * 512;
        out.allocated_bytes += alloc;
        if m.is_dir() {
            *out.parts.entry("(directories)".into()).or_default() += alloc;
            walk(&e.path(), &rel, out);
        } else {
            if m.is_file() {
                out.apparent_bytes += m.len();
            }
            *out.parts.entry(part_key(&rel)).or_default() += alloc;
        }
    }
}

/// What a file is, for the breakdown: its directory and `*.ext` when its name is a number
/// (`db/*.sst`, `member/wal/*.wal`), else its name less a trailing `-NUMBER` or `.NUMBER`
/// (`db/MANIFEST`, `db/LOG.old`, `member/snap/db`).
pub fn part_key(rel: &Path) -> String {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = rel
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty());
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let kind = match (name.rsplit_once('.'), name.rsplit_once(['-', '.'])) {
        (Some((stem, ext)), _) if numeric(stem) => format!("*.{ext}"),
        (_, Some((base, n))) if digits(n) && !base.is_empty() => base.to_string(),
        _ => name.clone(),
    };
    match dir {
        Some(d) => format!("{d}/{kind}"),
        None => kind,
    }
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
            vec!["(directories)", "db", "sparse", "wal/a", "wal/sub/b"]
        );
        assert!(s.parts["wal/a"] >= 10_000);
        assert_eq!(s.parts.values().sum::<u64>(), s.allocated_bytes);
        assert_eq!(dir_size(&d.path().join("missing")), NodeSize::default());
    }

    #[test]
    fn parts_group_numbered_files_by_kind() {
        let k = |p: &str| part_key(Path::new(p));
        assert_eq!(k("db/000012.sst"), "db/*.sst");
        assert_eq!(k("db/000010.log"), "db/*.log");
        assert_eq!(k("db/MANIFEST-000005"), "db/MANIFEST");
        assert_eq!(k("db/OPTIONS-000007"), "db/OPTIONS");
        assert_eq!(k("db/LOG.old.1700000000"), "db/LOG.old");
        assert_eq!(k("db/CURRENT"), "db/CURRENT");
        assert_eq!(k("cluster-token"), "cluster-token");
        assert_eq!(
            k("member/wal/0000000000000000-0000000000000000.wal"),
            "member/wal/*.wal"
        );
        assert_eq!(k("member/wal/0.tmp"), "member/wal/*.tmp");
        assert_eq!(k("member/snap/db"), "member/snap/db");
        assert_eq!(
            k("member/snap/0000000000000002-00000000000186a1.snap"),
            "member/snap/*.snap"
        );
    }
}
