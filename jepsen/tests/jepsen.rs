//! End-to-end runs against real `micro` processes (the debug binary next to the test
//! executable's directory: `cargo build -p micro-services --bin micro` first). They run one
//! after the other.

use std::path::PathBuf;
use std::time::Duration;

use micro_jepsen::corrupt::Kind;
use micro_jepsen::nemesis::{Fault, Schedule};
use micro_jepsen::workload::Workload;
use micro_jepsen::{Config, Validity};

/// One cluster at a time: the machines have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn micro_bin() -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/micro
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("micro");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p micro-services --bin micro` (or `cargo build --bins`) first",
        bin.display()
    );
    bin
}

fn config(out: &std::path::Path, seed: u64) -> Config {
    let mut cfg = Config::new(micro_bin(), out.to_path_buf());
    cfg.seed = seed;
    cfg.verbose = true;
    cfg
}

fn keep(dir: tempfile::TempDir) -> PathBuf {
    dir.keep()
}

/// Runs a planted bug with seeds 1..=`seeds` until a run reports an anomaly, which `caught`
/// then checks (with the run's output dir); panics naming `what` if every run looked valid.
async fn caught_within(
    what: &str,
    seeds: u64,
    configure: impl Fn(&mut Config),
    caught: impl Fn(&micro_jepsen::Report, &std::path::Path),
) {
    let mut summaries = Vec::new();
    for seed in 1..=seeds {
        let dir = tempfile::Builder::new()
            .prefix("jepsen-planted-")
            .tempdir()
            .unwrap();
        let mut cfg = config(dir.path(), seed);
        configure(&mut cfg);
        let report = micro_jepsen::run(&cfg).await.expect("run");
        if report.valid() == Validity::Anomaly {
            caught(&report, dir.path());
            eprintln!("caught with seed {seed}:\n{}", report.verdict.summary());
            return;
        }
        summaries.push(report.verdict.summary());
    }
    panic!(
        "the planted {what} went unnoticed in {seeds} runs:\n{}",
        summaries.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_kill_and_partition_is_valid() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("jepsen-smoke-")
        .tempdir()
        .unwrap();
    let mut cfg = config(dir.path(), 7);
    cfg.time = Duration::from_secs(15);
    cfg.rate = 100.0;
    cfg.workloads = vec![Workload::Register, Workload::Set, Workload::Streams];
    cfg.schedule = Schedule {
        faults: vec![Fault::Kill, Fault::IsolateOne, Fault::IsolateLeader],
        quiet: (Duration::from_secs(1), Duration::from_secs(2)),
        hold: (Duration::from_secs(2), Duration::from_secs(4)),
        warmup: Duration::from_secs(1),
        ..Schedule::default()
    };
    let report = micro_jepsen::run(&cfg).await.expect("run");
    let summary = report.verdict.summary();
    eprintln!("{summary}");
    let faults: usize = report.verdict.faults.values().map(|f| f.effective).sum();
    if report.valid() != Validity::Valid || faults == 0 {
        panic!(
            "expected a valid history with faults; history kept in {}\n{summary}\nobservations: {:?}",
            keep(dir).display(),
            report.observations
        );
    }
    assert!(report.verdict.counts["read"].ok > 0);
    assert!(report.verdict.counts["add"].ok > 0);
    let streams = report.verdict.streams.as_ref().expect("streams report");
    assert!(streams.acknowledged > 0 && streams.live_delivered > 0);
    assert_eq!(streams.replays, 3 * 3, "every topic replayed on every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_membership_and_corrupt_are_valid() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("jepsen-smoke-mc-")
        .tempdir()
        .unwrap();
    // The seed's schedule takes a membership fault first, then a corruption.
    let mut cfg = config(dir.path(), 5);
    cfg.time = Duration::from_secs(12);
    cfg.rate = 100.0;
    cfg.workloads = vec![Workload::Register, Workload::Streams];
    cfg.snapshot_every = Some(200);
    cfg.schedule = Schedule {
        faults: vec![Fault::Membership, Fault::Corrupt],
        quiet: (Duration::from_secs(1), Duration::from_secs(1)),
        hold: (Duration::from_secs(1), Duration::from_secs(2)),
        warmup: Duration::from_secs(1),
        // Flipped bytes must be refused and named; a lost log tail must be refused (naming the
        // missing records) or caught up, never diverge (see docs/jepsen.md).
        corruptions: vec![Kind::FlipLog, Kind::FlipSnapshot, Kind::TruncateLog],
    };
    let report = micro_jepsen::run(&cfg).await.expect("run");
    let summary = report.verdict.summary();
    eprintln!("{summary}");
    let took = |f: &str| report.verdict.faults.get(f).map_or(0, |c| c.effective);
    if report.valid() != Validity::Valid || took("membership") == 0 || took("corrupt") == 0 {
        panic!(
            "expected a valid history with a membership change and a corruption; history kept in {}\n{summary}\nobservations: {:?}",
            keep(dir).display(),
            report.observations
        );
    }
    // Every heal ended with the node a voter again (or caught up) and the final heal had
    // nothing left to fix.
    let history = micro_jepsen::history::load(&dir.path().join("history.jsonl")).unwrap();
    let heals: Vec<&serde_json::Value> = history
        .iter()
        .filter(|o| o.value["fault"] == "heal" && o.kind == micro_jepsen::history::Type::Ok)
        .map(|o| &o.value)
        .collect();
    assert!(!heals.is_empty());
    for h in heals {
        assert_eq!(h["effect"], true, "{h}");
    }
    for c in history
        .iter()
        .filter(|o| o.value["fault"] == "corrupt" && o.kind == micro_jepsen::history::Type::Ok)
    {
        let v = &c.value;
        assert_eq!(v["outcome"], "refused", "{v}");
        assert_eq!(v["named"], true, "{v}");
    }
    // Nothing to observe: no refusal that failed to name the damage, no heal left to the
    // final safety net, no crash.
    assert!(report.observations.is_empty(), "{:?}", report.observations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_stale_reads_are_caught() {
    let _serial = SERIAL.lock().await;
    let configure = |cfg: &mut Config| {
        cfg.planted_bug = true;
        cfg.time = Duration::from_secs(8);
        cfg.workloads = vec![Workload::Register];
        // Few keys, many reads, short timeouts: clients stuck on the isolated leader give up
        // on writes quickly and keep reading, so a stale read is likely in every run.
        cfg.keys = 2;
        cfg.read_pct = 60;
        cfg.write_pct = 30;
        cfg.concurrency = 6;
        cfg.op_timeout = Duration::from_millis(500);
        // Isolate the leader early and for long: processes bound to it keep reading from it
        // while the majority elects a new leader and takes writes.
        cfg.schedule = Schedule {
            faults: vec![Fault::IsolateLeader],
            quiet: (Duration::from_secs(1), Duration::from_secs(1)),
            hold: (Duration::from_secs(3), Duration::from_secs(4)),
            warmup: Duration::from_millis(500),
            ..Schedule::default()
        };
    };
    caught_within("stale-read bug", 4, configure, |report, dir| {
        let r = report.verdict.register.as_ref().expect("register report");
        assert!(!r.anomalies.is_empty());
        assert!(
            r.anomalies[0].culprit.contains("read"),
            "{}",
            report.verdict.summary()
        );
        assert!(dir.join("timeline.html").exists());
    })
    .await;
}

/// The consumer-groups workload under kill, pause and partitions: every acknowledged publish
/// reaches every group, nothing is delivered after its ack, the retry limit holds, the log
/// grows with the work done (see `checker::groups`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_groups_under_kill_pause_and_partition_is_valid() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("jepsen-smoke-groups-")
        .tempdir()
        .unwrap();
    let mut cfg = config(dir.path(), 11);
    cfg.time = Duration::from_secs(15);
    cfg.rate = 40.0;
    cfg.workloads = vec![Workload::Groups];
    cfg.schedule = Schedule {
        faults: vec![
            Fault::Kill,
            Fault::Pause,
            Fault::IsolateOne,
            Fault::IsolateLeader,
        ],
        quiet: (Duration::from_secs(1), Duration::from_secs(2)),
        hold: (Duration::from_secs(2), Duration::from_secs(3)),
        warmup: Duration::from_secs(1),
        ..Schedule::default()
    };
    let report = micro_jepsen::run(&cfg).await.expect("run");
    let summary = report.verdict.summary();
    eprintln!("{summary}");
    let faults: usize = report.verdict.faults.values().map(|f| f.effective).sum();
    if report.valid() != Validity::Valid || faults == 0 {
        panic!(
            "expected a valid history with faults; history kept in {}\n{summary}\nobservations: {:?}",
            keep(dir).display(),
            report.observations
        );
    }
    let g = report.verdict.groups.as_ref().expect("groups report");
    assert!(g.acknowledged > 0 && g.deliveries > g.acknowledged);
    assert!(g.acks_ok > 0 && g.sessions > 8);
    assert!(g.log_growth.is_some(), "the storm check ran");
}

/// Each planted consumer-groups bug (debug builds of micro: `MICRO_PLANTED_BUG_GROUPS`) is
/// reported: a lost redelivery (events whose consumer left unacked are never delivered
/// again) and a redelivery after the ack (new consumers get recently delivered events again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_group_bugs_are_caught() {
    let _serial = SERIAL.lock().await;
    for (bug, expected) in [
        ("lose-redelivery", "lost-redelivery"),
        ("redeliver-after-ack", "double-ack"),
    ] {
        let dir = tempfile::Builder::new()
            .prefix("jepsen-planted-groups-")
            .tempdir()
            .unwrap();
        let mut cfg = config(dir.path(), 3);
        cfg.planted_groups_bug = Some(bug.to_string());
        cfg.time = Duration::from_secs(6);
        cfg.rate = 40.0;
        cfg.workloads = vec![Workload::Groups];
        cfg.schedule = Schedule {
            faults: vec![],
            ..Schedule::default()
        };
        let report = micro_jepsen::run(&cfg).await.expect("run");
        let summary = report.verdict.summary();
        let g = report.verdict.groups.as_ref().expect("groups report");
        if report.valid() != Validity::Anomaly || !g.anomaly_counts.contains_key(expected) {
            panic!(
                "planted {bug}: expected a {expected} anomaly; history kept in {}\n{summary}",
                keep(dir).display()
            );
        }
        assert!(dir.path().join("anomaly-groups.jsonl").exists());
        eprintln!("planted {bug} caught:\n{summary}");
    }
}

/// The lock workload with holders paused past their lease (pause-the-holder) while nodes are
/// SIGSTOPped: the committed fenced writes form one chain of increasing tokens, and the
/// stale holders' writes were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_lock_with_paused_holders_is_valid() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new()
        .prefix("jepsen-smoke-lock-")
        .tempdir()
        .unwrap();
    let mut cfg = config(dir.path(), 3);
    cfg.time = Duration::from_secs(12);
    cfg.rate = 100.0;
    cfg.workloads = vec![Workload::Lock];
    cfg.lock_ttl = Duration::from_secs(1);
    cfg.schedule = Schedule {
        // Not kill: in a debug build on two cores, clients bound to a killed node leave too
        // few critical sections in 12 s for a pause to be taken over reliably.
        faults: vec![Fault::PauseHolder, Fault::Pause],
        quiet: (Duration::from_secs(1), Duration::from_secs(2)),
        hold: (Duration::from_secs(2), Duration::from_secs(3)),
        warmup: Duration::from_secs(1),
        ..Schedule::default()
    };
    let report = micro_jepsen::run(&cfg).await.expect("run");
    let summary = report.verdict.summary();
    eprintln!("{summary}");
    let l = report.verdict.lock.as_ref().expect("lock report");
    let paused = report
        .verdict
        .faults
        .get("pause-holder")
        .map_or(0, |c| c.effective);
    if report.valid() != Validity::Valid || paused == 0 || l.stale_refused == 0 {
        panic!(
            "expected a valid history with a paused holder's stale write refused; history kept in {}\n{summary}\nobservations: {:?}",
            keep(dir).display(),
            report.observations
        );
    }
    assert!(l.committed > 10 && l.acknowledged > 10, "{summary}");
}

/// With fences dropped by the server (`MICRO_PLANTED_BUG_FENCE`, debug builds of micro), a
/// paused holder's stale write is accepted after a newer holder's: the lock checker reports
/// it (the committed tokens go backwards and the read-modify-write chain breaks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_fence_bug_is_caught() {
    let _serial = SERIAL.lock().await;
    let configure = |cfg: &mut Config| {
        cfg.planted_fence_bug = true;
        cfg.time = Duration::from_secs(8);
        cfg.rate = 100.0;
        cfg.workloads = vec![Workload::Lock];
        cfg.lock_ttl = Duration::from_secs(1);
        cfg.schedule = Schedule {
            faults: vec![Fault::PauseHolder],
            quiet: (Duration::from_secs(1), Duration::from_secs(1)),
            hold: (Duration::from_secs(2), Duration::from_secs(2)),
            warmup: Duration::from_millis(500),
            ..Schedule::default()
        };
    };
    caught_within("fence bug", 3, configure, |report, dir| {
        let summary = report.verdict.summary();
        let l = report.verdict.lock.as_ref().expect("lock report");
        assert!(l.anomaly_counts.contains_key("stale-accepted"), "{summary}");
        assert!(dir.join("anomaly-lock.jsonl").exists());
    })
    .await;
}
