//! `micro-bench streams`: Micro's event streams side by side with NATS JetStream.
//!
//! Publish: for every publisher count, Micro then JetStream (alternating rounds), closed-loop
//! publishers each on its own connection (Micro: the followers first, then the leader; JetStream:
//! node i % 3), every publish awaited until acked
//! (Micro: after a quorum fsync and apply; JetStream: see [`crate::nats::Durability`]).
//! Replay: N events are loaded into a fresh topic / stream, then one client per node reads them
//! all from the first event (Micro: a plain consumer from sequence 1 that stops at the end;
//! JetStream: an ordered push consumer delivering all), alternating systems node by node.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{timeout, Instant};

use crate::args::{StreamTarget, StreamsArgs};
use crate::cluster::{nodes_cpu_seconds, nodes_peak_rss_mib, Cluster, Node};
use crate::load::{new_histogram, progress_bar, watch_cell, CellOutcome, Tally};
use crate::nats::{self, JsCluster};
use crate::report::{self, Machine, PublishRow, ReplayRow, StreamsParams, StreamsReport};

const PUB_TOPIC: &str = "bench";
const REPLAY_TOPIC: &str = "replay";
const PUB_STREAM: &str = "BENCH";
const PUB_SUBJECT: &str = "bench.pub";
const REPLAY_STREAM: &str = "REPLAY";
const REPLAY_SUBJECT: &str = "bench.replay";
/// Events per Micro transaction, and JetStream publishes in flight per loader, while loading
/// the replay topic / stream.
const LOAD_BATCH: u64 = 1000;
const LOADERS: usize = 6;
/// A replay that makes no progress for this long fails.
const REPLAY_STALL: Duration = Duration::from_secs(30);

/// Both systems' clusters; either may be absent (`--target`).
struct Systems {
    micro: Option<Cluster>,
    js: Option<JsCluster>,
}

impl Systems {
    fn nodes(&self, t: StreamTarget) -> &[Node] {
        match t {
            StreamTarget::Micro => self.micro.as_ref().map_or(&[], |c| &c.nodes),
            StreamTarget::Jetstream => self.js.as_ref().map_or(&[], |c| &c.nodes),
        }
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.micro {
            c.check_running()?;
        }
        if let Some(c) = &mut self.js {
            c.check_running()?;
        }
        Ok(())
    }
}

pub async fn run(a: StreamsArgs) -> anyhow::Result<()> {
    a.validate()?;
    let wall = std::time::Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workspace = crate::workspace_root();
    let mut targets = a.target.clone();
    targets.sort();
    targets.dedup();
    let micro_bin = a
        .common
        .micro(targets.contains(&StreamTarget::Micro), workspace.as_deref())?;
    let nats_bin = if targets.contains(&StreamTarget::Jetstream) {
        Some(crate::nats_bin(a.nats_bin.as_deref())?)
    } else {
        None
    };
    let data_root = a.common.data_root();
    let mut machine = Machine::probe(&data_root);
    let micro_version = micro_bin.as_deref().map_or("-".into(), report::version_of);
    let nats_version = nats_bin.as_deref().map_or("-".into(), nats::version_of);
    eprintln!(
        "machine: {} × {}, load {:.2}; {micro_version} / nats-server {nats_version}",
        machine.nproc, machine.cpu_model, machine.loadavg_before
    );

    let mut sys = Systems {
        micro: None,
        js: None,
    };
    if let Some(bin) = &micro_bin {
        let t0 = Instant::now();
        sys.micro = Some(
            Cluster::start_micro(bin, &data_root)
                .await
                .context("start the Micro cluster")?,
        );
        eprintln!(
            "micro: 3 nodes up with a leader in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    if let Some(bin) = &nats_bin {
        let t0 = Instant::now();
        let mut js = JsCluster::start(bin, &data_root)
            .await
            .context("start the JetStream cluster")?;
        js.create_stream(PUB_STREAM, PUB_SUBJECT).await?;
        eprintln!(
            "jetstream: 3 nodes up, R3 stream {PUB_STREAM} created in {:.1} s ({})",
            t0.elapsed().as_secs_f64(),
            js.durability.describe()
        );
        sys.js = Some(js);
    }
    let durability = sys.js.as_ref().map(|c| c.durability);

    let payload = Bytes::from(vec![b'e'; a.payload_size]);
    let mut publish = Vec::new();
    for &n in &a.clients {
        for &t in &targets {
            let o = publish_cell(&mut sys, t, n, &a, &payload)
                .await
                .with_context(|| format!("{} publish with {n} publishers", t.name()))?;
            let row = PublishRow::new(t, n, &o);
            eprintln!(
                "{:>9} publish c={:<4} {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                t.name(),
                n,
                row.events_per_sec,
                row.p50_ms,
                row.p99_ms,
                row.errors
            );
            publish.push(row);
        }
    }
    report::fill_publish_ratios(&mut publish);

    let mut load_seconds = BTreeMap::new();
    let mut replay = Vec::new();
    if a.replay_events > 0 {
        for &t in &targets {
            let secs = load_replay(&mut sys, t, a.replay_events, &payload)
                .await
                .with_context(|| format!("load {} events into {}", a.replay_events, t.name()))?;
            eprintln!(
                "{}: loaded {} events in {secs:.1} s ({:.0} events/s, batched: not a publish figure)",
                t.name(),
                a.replay_events,
                a.replay_events as f64 / secs
            );
            load_seconds.insert(t.name().to_string(), secs);
        }
        for node in 0..cluster_size(&sys) {
            for &t in &targets {
                let row = replay_from_start(&mut sys, t, node, a.replay_events)
                    .await
                    .with_context(|| format!("{} replay via node {}", t.name(), node + 1))?;
                eprintln!(
                    "{:>9} replay  node {} {:>9.0} events/s  ({} events in {:.2} s, in order, no gaps)",
                    t.name(),
                    row.node,
                    row.events_per_sec,
                    row.events,
                    row.seconds
                );
                replay.push(row);
            }
        }
        report::fill_replay_ratios(&mut replay);
    }
    drop(sys);
    machine.loadavg_after = report::loadavg();

    let report = StreamsReport {
        command: crate::command_line(),
        started_unix,
        wall_seconds: wall.elapsed().as_secs_f64(),
        machine,
        micro: micro_version,
        micro_git: crate::micro_git(workspace.as_deref(), a.common.micro_bin.is_some()),
        nats_server: nats_version,
        jetstream_durability: durability.map(|d| d.describe().to_string()),
        client: "Micro's SDK (tonic 0.14) for Micro; async-nats 0.46 for JetStream".into(),
        params: StreamsParams {
            targets,
            clients: a.clients.clone(),
            payload_size: a.payload_size,
            duration_s: a.duration.as_secs_f64(),
            warmup_s: a.warmup.as_secs_f64(),
            replay_events: a.replay_events,
        },
        replay_load_seconds: load_seconds,
        publish,
        replay,
    };
    println!("\n{}", report::publish_text_table(&report.publish));
    if !report.replay.is_empty() {
        println!("{}", report::replay_text_table(&report.replay));
    }
    report.write(&a.common.out)?;
    if let Some(d) = a.common.docs_file(workspace.as_deref()) {
        report::update_docs(&d, &report::STREAMS_SECTION, &report.markdown())?;
        eprintln!("updated {}", d.display());
    }
    Ok(())
}

fn cluster_size(sys: &Systems) -> usize {
    sys.micro
        .as_ref()
        .map(|c| c.nodes.len())
        .or(sys.js.as_ref().map(|c| c.nodes.len()))
        .unwrap_or(0)
}

/// One publisher's connection.
enum Publisher {
    Micro(micro::Events),
    Js(jetstream::Context),
}

impl Publisher {
    async fn open(sys: &Systems, t: StreamTarget, i: usize) -> anyhow::Result<Publisher> {
        Ok(match t {
            StreamTarget::Micro => {
                let c = sys.micro.as_ref().context("no Micro cluster")?;
                let addr = c.addr_for_worker(i);
                Publisher::Micro(
                    micro_testkit::auth::connect(addr)
                        .await
                        .with_context(|| format!("connect to Micro at {addr}"))?
                        .events(),
                )
            }
            StreamTarget::Jetstream => {
                let c = sys.js.as_ref().context("no JetStream cluster")?;
                Publisher::Js(nats::jetstream_at(c.addr_for_worker(i)).await?)
            }
        })
    }

    /// Publishes one event and waits for its ack.
    async fn publish(&self, payload: &Bytes) -> anyhow::Result<()> {
        match self {
            Publisher::Micro(e) => {
                e.publish(PUB_TOPIC, payload.to_vec(), HashMap::new())
                    .await?;
            }
            Publisher::Js(js) => {
                js.publish(PUB_SUBJECT, payload.clone()).await?.await?;
            }
        }
        Ok(())
    }
}

/// `clients` closed-loop publishers against `t` for warmup + duration.
async fn publish_cell(
    sys: &mut Systems,
    t: StreamTarget,
    clients: usize,
    a: &StreamsArgs,
    payload: &Bytes,
) -> anyhow::Result<CellOutcome> {
    let pubs = futures::future::join_all((0..clients).map(|i| Publisher::open(sys, t, i)))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let mut tasks = Vec::new();
    for p in pubs {
        let counter = counter.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < end {
                let t0 = Instant::now();
                let res = p.publish(&payload).await;
                tally
                    .record(res, (t0, Instant::now()), (measure_from, end), &counter)
                    .await;
            }
            tally
        }));
    }
    let pb = progress_bar(
        (end - start).as_millis() as u64,
        format!("{} publish c={clients}", t.name()),
    );
    let (server_cpu_s, bench_cpu_s) = watch_cell(
        &pb,
        &counter,
        "events/s",
        (start, measure_from, end),
        || nodes_cpu_seconds(sys.nodes(t)),
    )
    .await;
    let mut out = CellOutcome {
        ops: 0,
        errors: 0,
        error_samples: BTreeMap::new(),
        hist: new_histogram(),
        seconds: (end - measure_from).as_secs_f64(),
        server_cpu_s,
        bench_cpu_s,
        peak_rss_mib: nodes_peak_rss_mib(sys.nodes(t)),
        watch_events: 0,
    };
    for task in tasks {
        task.await.context("publisher panicked")?.add_to(&mut out)?;
    }
    pb.finish_and_clear();
    sys.check_running()?;
    Ok(out)
}

/// Loads `n` events into the replay topic / stream as fast as each system takes them in bulk
/// (Micro: transactions of [`LOAD_BATCH`] publishes; JetStream: [`LOAD_BATCH`] publishes in
/// flight per connection), then checks the count. Returns the seconds it took.
async fn load_replay(
    sys: &mut Systems,
    t: StreamTarget,
    n: u64,
    payload: &Bytes,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let pb = progress_bar(n, format!("{} load {n} events", t.name()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    match t {
        StreamTarget::Micro => {
            let c = sys.micro.as_ref().context("no Micro cluster")?;
            // Unlimited retention: the default (1,000,000 events) must not trim the replay.
            micro_testkit::auth::connect(c.addr_for_worker(0))
                .await?
                .events()
                .set_retention(REPLAY_TOPIC, 0, 0)
                .await
                .context("set retention")?;
            for i in 0..LOADERS {
                let store = micro_testkit::auth::connect(c.addr_for_worker(i))
                    .await?
                    .store();
                let (next, pb, payload) = (next.clone(), pb.clone(), payload.clone());
                tasks.push(tokio::spawn(async move {
                    use micro::proto::events::PublishRequest;
                    use micro::proto::store as spb;
                    loop {
                        let from = next.fetch_add(LOAD_BATCH, Ordering::Relaxed);
                        if from >= n {
                            return anyhow::Ok(());
                        }
                        let to = (from + LOAD_BATCH).min(n);
                        let success = (from..to)
                            .map(|_| spb::TxnOp {
                                op: Some(spb::txn_op::Op::Publish(PublishRequest {
                                    topic: REPLAY_TOPIC.into(),
                                    metadata: HashMap::new(),
                                    payload: payload.to_vec(),
                                    timestamp: 0,
                                    fence: None,
                                })),
                            })
                            .collect();
                        let r = store
                            .txn(spb::TxnRequest {
                                compare: vec![],
                                success,
                                failure: vec![],
                                fence: None,
                            })
                            .await
                            .with_context(|| format!("publish events {from}..{to}"))?;
                        anyhow::ensure!(r.succeeded, "txn without guards did not succeed");
                        pb.inc(to - from);
                    }
                }));
            }
        }
        StreamTarget::Jetstream => {
            let c = sys.js.as_mut().context("no JetStream cluster")?;
            c.create_stream(REPLAY_STREAM, REPLAY_SUBJECT).await?;
            for i in 0..LOADERS {
                let js = nats::jetstream_at(c.addr_for_worker(i)).await?;
                let (next, pb, payload) = (next.clone(), pb.clone(), payload.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let from = next.fetch_add(LOAD_BATCH, Ordering::Relaxed);
                        if from >= n {
                            return anyhow::Ok(());
                        }
                        let to = (from + LOAD_BATCH).min(n);
                        let mut acks = Vec::with_capacity((to - from) as usize);
                        for _ in from..to {
                            acks.push(js.publish(REPLAY_SUBJECT, payload.clone()).await?);
                        }
                        let acks = acks.into_iter().map(std::future::IntoFuture::into_future);
                        for ack in futures::future::join_all(acks).await {
                            ack.with_context(|| format!("ack of events {from}..{to}"))?;
                        }
                        pb.inc(to - from);
                    }
                }));
            }
        }
    }
    for task in tasks {
        task.await.context("loader panicked")??;
    }
    let secs = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let stored = match t {
        StreamTarget::Micro => {
            let c = sys.micro.as_ref().context("no Micro cluster")?;
            let topics = micro_testkit::auth::connect(c.addr_for_worker(0))
                .await?
                .events()
                .topics()
                .await?;
            topics
                .iter()
                .find(|x| x.name == REPLAY_TOPIC)
                .map_or(0, |x| x.last_sequence + 1 - x.first_sequence.max(1))
        }
        StreamTarget::Jetstream => {
            let c = sys.js.as_ref().context("no JetStream cluster")?;
            let js = nats::jetstream_at(c.addr_for_worker(0)).await?;
            let mut s = js.get_stream(REPLAY_STREAM).await?;
            s.info().await?.state.messages
        }
    };
    if stored != n {
        bail!("{} holds {stored} events after loading {n}", t.name());
    }
    sys.check_running()?;
    Ok(secs)
}

/// One client connected to node `node` reads all `n` events from the first, checking order.
async fn replay_from_start(
    sys: &mut Systems,
    t: StreamTarget,
    node: usize,
    n: u64,
) -> anyhow::Result<ReplayRow> {
    let addr = sys.nodes(t)[node].addr.clone();
    let pb = progress_bar(n, format!("{} replay node {}", t.name(), node + 1));
    let started = Instant::now();
    let mut next = 1u64;
    match t {
        StreamTarget::Micro => {
            let events = micro_testkit::auth::connect(&addr).await?.events();
            let mut consumer = events
                .consume(micro::events::ConsumeRequest {
                    topic: REPLAY_TOPIC.into(),
                    from_sequence: 1,
                    stop_at_end: true,
                    ..Default::default()
                })
                .await?;
            while let Some(e) = timeout(REPLAY_STALL, consumer.next())
                .await
                .context("replay stalled")??
            {
                anyhow::ensure!(
                    e.sequence == next,
                    "replay out of order: {} after {}",
                    e.sequence,
                    next - 1
                );
                next += 1;
                if next & 8191 == 0 {
                    pb.set_position(next);
                }
            }
        }
        StreamTarget::Jetstream => {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(3))
                .connect(format!("nats://{addr}"))
                .await
                .with_context(|| format!("connect to nats-server at {addr}"))?;
            let js = jetstream::new(client.clone());
            let stream = js.get_stream(REPLAY_STREAM).await?;
            let consumer = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer.messages().await?;
            while next <= n {
                let m = timeout(REPLAY_STALL, messages.next())
                    .await
                    .context("replay stalled")?
                    .context("ordered consumer ended early")??;
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("message metadata: {e}"))?
                    .stream_sequence;
                anyhow::ensure!(seq == next, "replay out of order: {seq} after {}", next - 1);
                next += 1;
                if next & 8191 == 0 {
                    pb.set_position(next);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    pb.finish_and_clear();
    let events = next - 1;
    if events != n {
        bail!(
            "{} replay via node {} ended after {events} of {n} events",
            t.name(),
            node + 1
        );
    }
    sys.check_running()?;
    Ok(ReplayRow {
        target: t,
        node: node + 1,
        events,
        seconds,
        events_per_sec: events as f64 / seconds,
        ratio: None,
    })
}
