//! One test run: start the cluster behind proxies, drive clients while the nemesis injects
//! faults, heal, read everything back, stop every process, check the history.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::checker::{self, Validity, Verdict};
use crate::cluster::{wait_leader, Cluster};
use crate::history::{self, Recorder};
use crate::history::{Op, Type, F, HARNESS};
use crate::nemesis::{Fault, HolderPauser, Nemesis, Schedule};
use crate::proxy::Net;
use crate::workload::{Ctx, GroupConsumer, LiveConsumer, Process, Workload, GROUPS};

#[derive(Debug, Clone)]
pub struct Config {
    pub nodes: u64,
    pub workloads: Vec<Workload>,
    pub schedule: Schedule,
    pub time: Duration,
    /// Operations per second, over all client processes.
    pub rate: f64,
    pub seed: u64,
    pub out: PathBuf,
    pub planted_bug: bool,
    /// The `micro` binary.
    pub bin: PathBuf,
    /// Client processes; process p talks to node `p % nodes + 1`.
    pub concurrency: usize,
    pub op_timeout: Duration,
    pub keys: u64,
    pub ops_per_key: u64,
    /// Percent of register operations that are reads / writes (the rest cas).
    pub read_pct: u32,
    pub write_pct: u32,
    pub keep_data: bool,
    /// Linearizability search budget per key (states).
    pub budget: usize,
    /// Print progress to stderr.
    pub verbose: bool,
    /// `--snapshot-every` of the servers (None: Micro's default).
    pub snapshot_every: Option<u64>,
    /// Topics of the streams workload.
    pub topics: u64,
    /// `MICRO_PLANTED_BUG_GROUPS` for the servers (debug builds of micro only):
    /// `lose-redelivery` or `redeliver-after-ack`.
    pub planted_groups_bug: Option<String>,
    /// Consumers per group (groups workload).
    pub group_consumers: usize,
    /// Lock workload: the TTL of a holder's lease.
    pub lock_ttl: Duration,
    /// `MICRO_PLANTED_BUG_FENCE=1` for the servers (debug builds of micro only): fences are
    /// dropped, so stale writes are accepted.
    pub planted_fence_bug: bool,
}

impl Config {
    pub fn new(bin: PathBuf, out: PathBuf) -> Config {
        Config {
            nodes: 3,
            workloads: vec![Workload::Register],
            schedule: Schedule::default(),
            time: Duration::from_secs(60),
            rate: 200.0,
            seed: 42,
            out,
            planted_bug: false,
            bin,
            concurrency: 5,
            op_timeout: Duration::from_secs(2),
            keys: 5,
            ops_per_key: 300,
            read_pct: 50,
            write_pct: 30,
            keep_data: false,
            budget: checker::DEFAULT_BUDGET,
            verbose: true,
            snapshot_every: None,
            topics: 3,
            planted_groups_bug: None,
            group_consumers: 2,
            lock_ttl: Duration::from_secs(2),
            planted_fence_bug: false,
        }
    }
}

/// What went wrong with the system apart from the checkers' verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub verdict: Verdict,
    /// Crashes, panics in logs, failure to recover after healing.
    pub observations: Vec<String>,
    pub duration_s: f64,
    pub out: PathBuf,
}

impl Report {
    pub fn valid(&self) -> Validity {
        self.verdict.valid
    }
}

macro_rules! say {
    ($cfg:expr, $($t:tt)*) => {
        if $cfg.verbose {
            eprintln!("[jepsen] {}", format!($($t)*));
        }
    };
}

fn lock(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn addrs(c: &Mutex<Cluster>) -> Vec<(u64, String)> {
    let c = lock(c);
    c.ids().into_iter().map(|i| (i, c.grpc(i))).collect()
}

/// Process ids of the live consumers (one per topic: base + topic number) and of the final
/// replays (base + node id), apart from the clients' 0..concurrency.
pub const LIVE_CONSUMER_BASE: i64 = 1000;
pub const REPLAY_BASE: i64 = 2000;
/// Group consumers (3000 + group × 100 + consumer) and the groups' final drains (4000 +
/// group).
pub const GROUP_CONSUMER_BASE: i64 = 3000;
pub const GROUP_DRAIN_BASE: i64 = 4000;

/// Records the highest applied index any node reports (groups workload: the storm check).
async fn record_applied(rec: &Recorder, all: &[(u64, String)], at: &str) {
    let applied = crate::cluster::progress(all)
        .await
        .into_iter()
        .flatten()
        .map(|(_, a)| a)
        .max();
    let Some(applied) = applied else {
        return;
    };
    let v = serde_json::json!({ "applied": applied, "at": at });
    rec.record(Op::new(
        HARNESS,
        Type::Invoke,
        F::Progress,
        None,
        v.clone(),
        0,
    ));
    rec.record(Op::new(HARNESS, Type::Ok, F::Progress, None, v, 0));
}

pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(cfg.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(cfg.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        cfg.bin.exists(),
        "{} does not exist: build it (cargo build -p micro-services --bin micro) or pass --bin",
        cfg.bin.display()
    );
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("create {}", cfg.out.display()))?;
    let out = cfg.out.canonicalize()?;
    let data = tempfile::Builder::new().prefix("data-").tempdir_in(&out)?;
    let rec = Arc::new(Recorder::new(Some(&out.join("history.jsonl")))?);

    let mut cluster = Cluster::new(&cfg.bin, cfg.nodes, data.path(), &out, cfg.planted_bug);
    if let Some(n) = cfg.snapshot_every {
        cluster.extra_args = vec!["--snapshot-every".into(), n.to_string()];
    }
    cluster.planted_groups_bug = cfg.planted_groups_bug.clone();
    cluster.planted_fence_bug = cfg.planted_fence_bug;
    let mut links = Vec::new();
    for i in cluster.ids() {
        for j in cluster.ids() {
            if i != j {
                links.push((
                    i,
                    j,
                    crate::cluster::free_port(),
                    cluster.specs[&j].peer.parse()?,
                ));
            }
        }
    }
    let net = Arc::new(Net::start(links).await?);
    cluster.route_through(&net);
    for id in cluster.ids() {
        cluster.spawn(id)?;
    }
    let cluster = Arc::new(Mutex::new(cluster));
    say!(
        cfg,
        "seed {}: {} nodes, logs and history in {}",
        cfg.seed,
        cfg.nodes,
        out.display()
    );
    let all = addrs(&cluster);
    let config_dir = lock(&cluster).config_dir.clone();
    micro_testkit::auth::login(&config_dir, &all, Duration::from_secs(60)).await?;
    let leader = match wait_leader(&all, Duration::from_secs(30)).await {
        Ok(l) => l,
        Err(e) => {
            let logs: Vec<String> = {
                let c = lock(&cluster);
                c.ids()
                    .iter()
                    .map(|i| format!("--- node {i}\n{}", tail(&c.log(*i), 30)))
                    .collect()
            };
            anyhow::bail!("the cluster did not start: {e}\n{}", logs.join("\n"));
        }
    };
    say!(cfg, "leader {leader}; running for {:?}", cfg.time);

    let mut ctx = Ctx::new(rec.clone(), cfg.op_timeout, cfg.workloads.clone());
    ctx.keys = cfg.keys.max(1);
    ctx.ops_per_key = cfg.ops_per_key.max(1);
    ctx.read_pct = cfg.read_pct;
    ctx.write_pct = cfg.write_pct;
    ctx.topics = cfg.topics.max(1);
    ctx.lock_ttl = cfg.lock_ttl.max(Duration::from_secs(1));
    // Waiters must outlast a holder whose lease runs out, plus an election.
    ctx.lock_wait = ctx.lock_ttl * 2 + Duration::from_secs(1);
    let ctx = Arc::new(ctx);
    let streams = cfg.workloads.contains(&Workload::Streams);
    let mut consumers = Vec::new();
    if streams {
        for (t, topic) in ctx.topic_names().into_iter().enumerate() {
            let consumer = LiveConsumer {
                id: LIVE_CONSUMER_BASE + t as i64,
                topic,
                nodes: all.clone(),
                start: t,
                ctx: ctx.clone(),
            };
            consumers.push(tokio::spawn(consumer.run()));
        }
    }
    let groups = cfg.workloads.contains(&Workload::Groups);
    let mut group_consumers = Vec::new();
    if groups {
        record_applied(&rec, &all, "start").await;
        for (g, spec) in GROUPS.iter().enumerate() {
            for k in 0..cfg.group_consumers {
                let id = GROUP_CONSUMER_BASE + g as i64 * 100 + k as i64;
                let c = GroupConsumer::new(id, spec, all.clone(), cfg.seed, ctx.clone());
                group_consumers.push(tokio::spawn(c.run()));
            }
        }
    }
    let interval = Duration::from_secs_f64(cfg.concurrency as f64 / cfg.rate.max(0.1));
    let mut workers = Vec::new();
    for p in 0..cfg.concurrency {
        let node = (p as u64 % cfg.nodes) + 1;
        let proc_ = Process::new(
            p as i64,
            node,
            lock(&cluster).grpc(node),
            cfg.seed,
            ctx.clone(),
        );
        workers.push(tokio::spawn(proc_.run(interval)));
    }
    let nemesis = Nemesis::new(
        cluster.clone(),
        net.clone(),
        rec.clone(),
        ctx.clone(),
        cfg.schedule.clone(),
        cfg.seed,
    );
    let nemesis = tokio::spawn(nemesis.run());
    let locks = cfg.workloads.contains(&Workload::Lock);
    let pauser = (locks && cfg.schedule.faults.contains(&Fault::PauseHolder)).then(|| {
        let p = HolderPauser::new(rec.clone(), ctx.clone(), cfg.schedule.clone(), cfg.seed);
        tokio::spawn(p.run())
    });

    tokio::time::sleep(cfg.time).await;
    ctx.halt();
    let mut procs = Vec::new();
    for w in workers {
        procs.push(w.await?);
    }
    for c in consumers {
        c.await?;
    }
    for c in group_consumers {
        c.await?;
    }
    nemesis.await?;
    if let Some(p) = pauser {
        p.await?;
    }

    // Heal everything (the nemesis did; this is the safety net), then wait for recovery.
    let mut observations = Vec::new();
    net.heal();
    {
        let mut c = lock(&cluster);
        c.reap();
        c.revive_all()?;
    }
    // Membership faults may have left a node removed or a learner: every node a voter again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for fix in crate::membership::ensure_voters(&cluster, deadline).await {
        observations.push(format!("final heal: {fix}"));
    }
    say!(cfg, "healed; waiting for the cluster to agree on a leader");
    match wait_leader(&all, Duration::from_secs(30)).await {
        Ok(l) => say!(cfg, "leader {l} after healing; final reads"),
        Err(e) => observations.push(format!("no recovery within 30 s of healing: {e}")),
    }

    // Final reads: every register key, and the set from every node.
    let keys = ctx.used_keys();
    let mut unread = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let n = procs.len();
        let mut ok = false;
        for attempt in 0..10 {
            let p = &mut procs[(i + attempt) % n];
            if matches!(p.read(key, true).await, crate::workload::Outcome::Ok(_)) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !ok {
            unread.push(key.clone());
        }
    }
    if !unread.is_empty() {
        observations.push(format!("final reads failed 10 times on keys {unread:?}"));
    }
    if cfg.workloads.contains(&Workload::Set) {
        let nodes = cfg.nodes.min(procs.len() as u64) as usize;
        for p in procs.iter_mut().take(nodes) {
            let mut ok = false;
            for _ in 0..10 {
                if p.read_set(true).await {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if !ok {
                observations.push(format!("final set read on node {} failed 10 times", p.node));
            }
        }
    }

    if locks {
        // The register's whole committed history, from any node.
        let mut ok = false;
        for attempt in 0..10 {
            let n = procs.len();
            if procs[attempt % n].lock_feed().await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if !ok {
            observations.push(format!(
                "the final read of {} and its change feed failed 10 times",
                crate::workload::LOCK_KEY
            ));
        }
    }

    if streams {
        // Replays must see the same log: wait until every node has applied all of it and
        // nothing moves (the clients have stopped), then replay every topic on every node.
        if let Err(e) = crate::cluster::wait_quiescent(&all, Duration::from_secs(30)).await {
            observations.push(format!("before the replays: {e}"));
        }
        for topic in ctx.topic_names() {
            for (node, addr) in &all {
                let mut p = Process::new(
                    REPLAY_BASE + *node as i64,
                    *node,
                    addr.clone(),
                    cfg.seed,
                    ctx.clone(),
                );
                let mut ok = false;
                for _ in 0..10 {
                    if p.replay(&topic).await {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if !ok {
                    observations.push(format!(
                        "final replay of {topic} on node {node} failed 10 times"
                    ));
                }
            }
        }
    }

    if groups {
        // Every group gets every event it has not acked: after an ack wait (events held by
        // sessions whose release was lost come due), drain each group on a rotating node
        // until two passes an ack wait apart find nothing.
        tokio::time::sleep(crate::workload::GROUP_ACK_WAIT + Duration::from_millis(500)).await;
        for (g, spec) in GROUPS.iter().enumerate() {
            let mut d = GroupConsumer::new(
                GROUP_DRAIN_BASE + g as i64,
                spec,
                all.clone(),
                cfg.seed,
                ctx.clone(),
            );
            let auto = spec.mode != crate::workload::AckMode::Manual;
            let mut quiet = 0;
            let mut done = false;
            for pass in 0..12 {
                let (got, ended) = d.session(pass % all.len(), auto, None, true).await;
                if ended && got == 0 {
                    quiet += 1;
                    if quiet == 2 {
                        done = true;
                        break;
                    }
                    tokio::time::sleep(
                        crate::workload::GROUP_ACK_WAIT + Duration::from_millis(300),
                    )
                    .await;
                } else {
                    quiet = 0;
                    if !ended {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            if done {
                let v = serde_json::json!({ "drained": spec.name });
                rec.record(Op::new(
                    HARNESS,
                    Type::Invoke,
                    F::Progress,
                    None,
                    v.clone(),
                    0,
                ));
                rec.record(Op::new(HARNESS, Type::Ok, F::Progress, None, v, 0));
            } else {
                observations.push(format!(
                    "the final drain of group {} did not finish",
                    spec.name
                ));
            }
        }
        if let Err(e) = crate::cluster::wait_quiescent(&all, Duration::from_secs(30)).await {
            observations.push(format!("after the drains: {e}"));
        }
        record_applied(&rec, &all, "end").await;
    }

    // Stop every process we started, then look for trouble in their logs.
    {
        let mut c = lock(&cluster);
        c.reap();
        for (n, st) in &c.crashes {
            observations.push(format!("node {n} exited by itself: {st}"));
        }
        c.kill_all();
        for id in c.ids() {
            let log = c.log(id);
            let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
            if !panics.is_empty() {
                observations.push(format!(
                    "node {id} log has {} panic(s), first: {}",
                    panics.len(),
                    panics[0]
                ));
            }
        }
    }
    drop(net);
    if cfg.keep_data {
        let kept = data.keep();
        say!(cfg, "kept data dirs in {}", kept.display());
    } else {
        drop(data);
    }

    let ops = rec.snapshot();
    observations.extend(fault_observations(&ops));
    say!(cfg, "checking {} history events", ops.len());
    let verdict = checker::check(&ops, cfg.budget);
    let report = Report {
        seed: cfg.seed,
        verdict,
        observations,
        duration_s: rec.start().elapsed().as_secs_f64(),
        out: out.clone(),
    };
    write_outputs(&out, &ops, &report)?;
    Ok(report)
}

/// What the nemesis saw that deserves a closer look: a damaged node that refused to start
/// without naming the damage, one that neither started nor exited, a heal that did not take.
pub fn fault_observations(ops: &[history::Op]) -> Vec<String> {
    let mut out = Vec::new();
    for o in ops
        .iter()
        .filter(|o| o.process == history::NEMESIS && o.kind == history::Type::Ok)
    {
        let v = &o.value;
        if v["fault"] == "corrupt" {
            if v["named"] == false {
                out.push(format!(
                    "node {} refused to start on {} without naming it: {}",
                    v["nodes"], v["damage"], v["error"]
                ));
            }
            if v["outcome"] == "no answer" {
                out.push(format!(
                    "node {} neither started nor exited within 30 s of {}",
                    v["nodes"], v["damage"]
                ));
            }
        }
        if v["fault"] == "heal" && v["effect"] == false {
            out.push(format!("heal did not take effect: {v}"));
        }
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// results.json, timeline.html and, per anomalous key, that key's sub-history.
pub fn write_outputs(out: &Path, ops: &[history::Op], report: &Report) -> anyhow::Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    // The whole sub-history of one key, in `anomaly-NAME.jsonl`.
    let write_key = |key: &str, name: &str| -> anyhow::Result<()> {
        let sub: Vec<history::Op> = ops
            .iter()
            .filter(|o| o.key.as_deref() == Some(key))
            .cloned()
            .collect();
        history::write(&out.join(format!("anomaly-{name}.jsonl")), &sub)
    };
    let mut flagged = std::collections::HashSet::new();
    if let Some(r) = &report.verdict.streams {
        let topics: std::collections::BTreeSet<&str> =
            r.anomalies.iter().map(|a| a.topic.as_str()).collect();
        for t in topics {
            write_key(t, t)?;
        }
        flagged.extend(checker::streams::culprits(r));
    }
    if let Some(r) = &report.verdict.groups {
        if !r.anomalies.is_empty() {
            write_key(crate::workload::GROUP_TOPIC, "groups")?;
        }
        flagged.extend(checker::groups::culprits(r));
    }
    if let Some(r) = &report.verdict.lock {
        if !r.anomalies.is_empty() {
            write_key(crate::workload::LOCK_KEY, "lock")?;
        }
        flagged.extend(checker::lock::culprits(r));
    }
    if let Some(r) = &report.verdict.register {
        for a in &r.anomalies {
            write_key(&a.key, &a.key.replace('/', "_"))?;
            flagged.extend(a.culprit_indices.iter().copied());
        }
    }
    std::fs::write(
        out.join("timeline.html"),
        crate::timeline::render(ops, &report.verdict, &flagged),
    )?;
    Ok(())
}
