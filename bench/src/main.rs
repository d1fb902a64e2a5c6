//! `micro-bench`: measures Micro side by side with etcd and NATS JetStream.
//!
//! `micro-bench compare` starts a 3-node Micro cluster and a 3-node etcd cluster on 127.0.0.1
//! (free ports, temp data dirs, fsync on), drives both with the same closed-loop workload in
//! alternating rounds, and writes a table (stdout, `DIR/results.md`, `docs/benchmarks.md`) and
//! `DIR/results.json`. `micro-bench streams` does the same for Micro's event streams and a
//! 3-node JetStream cluster (publish, then replay from the start), `micro-bench size` measures
//! the data dirs after N keys, `micro-bench services` what a node's gRPC proxy and HTTP gateway
//! add to a call of a user's service (the `greeter` example). See docs/benchmarks.md.

mod args;
mod cluster;
mod etcd;
mod fanout;
mod load;
mod nats;
mod procs;
mod report;
mod services;
mod size;
mod stages;
mod streams;
mod timeline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;

use args::{Cli, Cmd, CompareArgs, Target};
use cluster::Cluster;
use load::Cell;
use report::{Machine, Params, Report, Row, Versions};

fn main() -> ExitCode {
    procs::install_panic_hook();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Dropping `run` on a signal drops the clusters: their processes are killed and their
        // data dirs removed before we exit.
        tokio::select! {
            r = run(cli) => r,
            sig = signals() => Err(anyhow::anyhow!("interrupted by {sig}; servers stopped, data dirs removed")),
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn signals() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = match &cli.cmd {
        Cmd::Compare(a) => Some(&a.common),
        Cmd::Streams(a) => Some(&a.common),
        Cmd::Size(a) => Some(&a.common),
        Cmd::Services(a) => Some(&a.common),
        Cmd::Timeline(_) => None,
    };
    if let Some((common, ms)) = common.and_then(|c| Some((c, c.slow_ms?))) {
        std::fs::create_dir_all(&common.out)?;
        load::log_slow(
            std::time::Duration::from_millis(ms),
            &common.out.join("slow.tsv"),
        )?;
    }
    match cli.cmd {
        Cmd::Compare(a) => compare(a).await,
        Cmd::Streams(a) => streams::run(a).await,
        Cmd::Size(a) => size::run(a).await,
        Cmd::Services(a) => services::run(a).await,
        Cmd::Timeline(a) => timeline::run(&a),
    }
}

/// The workspace this crate was built from, when it is still there.
fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// Builds (or confirms fresh) the `micro` binary in this executable's target dir.
fn build_micro(workspace: &Path) -> anyhow::Result<()> {
    cargo_build(workspace, &["-p", "micro-services", "--bin", "micro"])
}

/// `cargo build --release ARGS` in `workspace`, into this executable's target dir.
fn cargo_build(workspace: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = cluster::target_dir()?;
    eprintln!(
        "building: cargo build --release {} (CARGO_TARGET_DIR={})",
        args.join(" "),
        target.display()
    );
    let status = Command::new(cargo)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target)
        .arg("build")
        .arg("--release")
        .args(args)
        .status()
        .context("run cargo")?;
    if !status.success() {
        bail!("cargo build --release {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The `micro` binary: `given`, else `release/micro` in this executable's target dir, built
/// (or confirmed fresh) first unless `no_build`.
fn micro_bin(
    given: Option<&Path>,
    no_build: bool,
    workspace: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b.to_path_buf());
    }
    if let (false, Some(ws)) = (no_build, workspace) {
        build_micro(ws)?;
    }
    let bin = cluster::default_micro_bin()?;
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p micro-services` (same \
             CARGO_TARGET_DIR as micro-bench) or pass --micro-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// `find()`, else runs `bench/scripts/SCRIPT` (which installs from Debian's packages) and
/// looks again.
fn find_or_install(
    what: &str,
    script: &str,
    find: impl Fn() -> Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    if let Some(b) = find() {
        return Ok(b);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    if !script.is_file() {
        bail!(
            "{what} is not installed and {} is missing; install {what} or pass --{what}-bin",
            script.display()
        );
    }
    eprintln!("{what} not found: running {}", script.display());
    let status = Command::new(&script)
        .status()
        .with_context(|| format!("run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    find().with_context(|| format!("{what} still not found after {}", script.display()))
}

fn etcd_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b.to_path_buf());
    }
    find_or_install("etcd", "install-etcd", || {
        procs::find_on_path("etcd").or_else(|| {
            let p = PathBuf::from("/usr/bin/etcd");
            p.is_file().then_some(p)
        })
    })
}

fn nats_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b.to_path_buf());
    }
    find_or_install("nats", "install-nats", nats::find_nats)
}

/// The commit the measured `micro` was built from, as far as we know.
fn micro_git(workspace: Option<&Path>, micro_bin_given: bool) -> String {
    match (workspace, micro_bin_given) {
        (Some(ws), false) => report::git_rev(ws),
        (Some(ws), true) => format!(
            "unknown: --micro-bin given; the workspace is at {}",
            report::git_rev(ws)
        ),
        (None, _) => "unknown".into(),
    }
}

impl args::Common {
    /// The `micro` binary when `wanted` (built first unless `--no-build`).
    fn micro(&self, wanted: bool, workspace: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
        if !wanted {
            return Ok(None);
        }
        micro_bin(self.micro_bin.as_deref(), self.no_build, workspace).map(Some)
    }

    /// Where the servers' temporary data dirs go.
    fn data_root(&self) -> PathBuf {
        self.data_root.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// The Markdown file whose generated sections get the results, if any.
    fn docs_file(&self, workspace: Option<&Path>) -> Option<PathBuf> {
        docs_path(self.docs.as_deref(), self.no_docs, workspace)
    }
}

/// The Markdown file whose generated sections get the results, if any.
fn docs_path(given: Option<&Path>, no_docs: bool, workspace: Option<&Path>) -> Option<PathBuf> {
    match (given, no_docs, workspace) {
        (Some(d), _, _) => Some(d.to_path_buf()),
        (None, false, Some(ws)) => Some(ws.join("docs/benchmarks.md")),
        _ => None,
    }
}

/// How to run this again, as typed from the workspace root.
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect();
    let prefix = std::env::var("CARGO_TARGET_DIR")
        .map(|d| format!("CARGO_TARGET_DIR={d} "))
        .unwrap_or_default();
    format!(
        "{prefix}cargo run --release -p micro-bench -- {}",
        args.join(" ")
    )
}

async fn compare(a: CompareArgs) -> anyhow::Result<()> {
    a.validate()?;
    let wall = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workspace = workspace_root();
    let mut targets = a.target.clone();
    targets.dedup();
    let micro = a
        .common
        .micro(targets.iter().any(|t| t.is_micro()), workspace.as_deref())?;
    let etcd = if targets.contains(&Target::Etcd) {
        Some(etcd_bin(a.etcd_bin.as_deref())?)
    } else {
        None
    };
    let data_root = a.common.data_root();
    let mut machine = Machine::probe(&data_root);
    let versions = Versions {
        micro: micro.as_deref().map_or("-".into(), report::version_of),
        micro_git: micro_git(workspace.as_deref(), a.common.micro_bin.is_some()),
        etcd: etcd.as_deref().map_or("-".into(), report::version_of),
        client: "tonic 0.14 for both (Micro's SDK; etcd's KV API generated from bench/proto)"
            .into(),
    };
    eprintln!(
        "machine: {} × {}, load {:.2}; {} / {}",
        machine.nproc, machine.cpu_model, machine.loadavg_before, versions.micro, versions.etcd
    );

    let mut clusters: Vec<Cluster> = Vec::new();
    for t in &targets {
        let t0 = Instant::now();
        let c = match t {
            Target::Micro | Target::MicroAuthOff | Target::MicroMetricsOff => {
                Cluster::start_micro_as(*t, micro.as_deref().context("micro")?, &data_root, 3)
                    .await
                    .with_context(|| format!("start the {} cluster", t.name()))?
            }
            Target::Etcd => Cluster::start_etcd(etcd.as_deref().context("etcd")?, &data_root)
                .await
                .context("start the etcd cluster")?,
        };
        eprintln!(
            "{}: 3 nodes up with a leader (n{}) in {:.1} s",
            t.name(),
            c.leader + 1,
            t0.elapsed().as_secs_f64()
        );
        clusters.push(c);
    }

    let cell_for = |workload, clients, conns| Cell {
        workload,
        clients,
        conns,
        warmup: a.warmup,
        duration: a.duration,
        keys: a.keys,
        key_size: a.key_size,
        value_size: a.value_size,
    };
    if a.workload.contains(&args::Workload::RegistryGet) {
        for c in &clusters {
            let mut conn = c.connect(1).await?.pop().context("a connection")?;
            conn.register_all()
                .await
                .with_context(|| format!("register services on {}", c.target.name()))?;
        }
    }
    let mut preload_seconds = BTreeMap::new();
    if a.workload.iter().any(|w| w.reads()) {
        for c in &clusters {
            let secs = load::preload(c, &cell_for(args::Workload::Get, 1, 0))
                .await
                .with_context(|| format!("preload {}", c.target.name()))?;
            eprintln!(
                "{}: preloaded {} keys in {secs:.1} s",
                c.target.name(),
                a.keys
            );
            preload_seconds.insert(c.target.name().to_string(), secs);
        }
    }

    let mut rows = Vec::new();
    for &w in &a.workload {
        for &n in &a.clients {
            for &conns in &a.conns {
                for c in &mut clusters {
                    let cell = cell_for(w, n, conns);
                    // Micro says where the time went: its metrics before and after the cell.
                    let http: Vec<String> = c.nodes.iter().filter_map(|n| n.http.clone()).collect();
                    let before = if c.target.is_micro() {
                        Some(stages::scrape(&http).await)
                    } else {
                        None
                    };
                    let o = load::run_cell(c, &cell).await.with_context(|| {
                        format!("{} {} with {n} clients", c.target.name(), w.name())
                    })?;
                    let mut row = Row::new(w, n, c.target, &o);
                    row.conns = conns;
                    if let (Some(before), Some(method)) = (before, w.grpc_method()) {
                        let after = stages::scrape(&http).await;
                        row.stages = Some(stages::stages(&before, &after, method));
                    }
                    eprintln!(
                        "{:>5} {:<16} c={:<4} conns={:<3} {:>8.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                        c.target.name(),
                        w.name(),
                        n,
                        report::fmt_conns(conns),
                        row.ops_per_sec,
                        row.p50_ms,
                        row.p99_ms,
                        row.errors
                    );
                    rows.push(row);
                }
            }
        }
    }
    if a.fanout_watchers > 0 {
        let mut fan = Vec::new();
        for c in &clusters {
            let f = fanout::run(c, a.fanout_watchers, a.fanout_changes)
                .await
                .with_context(|| format!("fan-out on {}", c.target.name()))?;
            eprintln!("{}: fan-out {f:?}", c.target.name());
            fan.push(f);
        }
        println!("\n| target | watchers | changes | p50 ms | p99 ms | max ms | all delivered (mean) ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for f in &fan {
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                f.target.name(),
                f.watchers,
                f.changes,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.all_delivered_ms
            );
        }
        std::fs::create_dir_all(&a.common.out)?;
        std::fs::write(
            a.common.out.join("fanout.json"),
            serde_json::to_string_pretty(&fan)?,
        )?;
    }
    drop(clusters);
    report::fill_ratios(&mut rows);
    machine.loadavg_after = report::loadavg();

    let report = Report {
        command: command_line(),
        started_unix,
        wall_seconds: wall.elapsed().as_secs_f64(),
        machine,
        versions,
        params: Params {
            targets,
            workloads: a.workload.clone(),
            clients: a.clients.clone(),
            conns: a.conns.clone(),
            keys: a.keys,
            key_size: a.key_size,
            value_size: a.value_size,
            duration_s: a.duration.as_secs_f64(),
            warmup_s: a.warmup.as_secs_f64(),
        },
        preload_seconds,
        rows,
    };
    println!("\n{}", report::text_table(&report.rows));
    report.write(&a.common.out)?;
    if let Some(d) = a.common.docs_file(workspace.as_deref()) {
        if let Some(dir) = d.parent() {
            std::fs::write(
                dir.join("benchmarks-throughput.svg"),
                report::throughput_svg(&report.rows),
            )?;
        }
        report::update_docs(&d, &report::COMPARE_SECTION, &report.markdown())?;
        eprintln!("updated {}", d.display());
    }
    Ok(())
}
