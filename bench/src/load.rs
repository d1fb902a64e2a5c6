//! The closed-loop load generator: N tasks, each issuing its next request as soon as the
//! previous one answered, for a warmup and then a measured window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::{sleep, sleep_until, Instant};

use crate::args::{key, watch_prefixes, Workload};
use crate::cluster::{Cluster, Conn};
use crate::procs::cpu_seconds;

/// Where requests slower than a threshold are written (`--slow-ms`), once set.
struct SlowLog {
    threshold: Duration,
    out: std::sync::Mutex<std::io::LineWriter<std::fs::File>>,
}

static SLOW: std::sync::OnceLock<SlowLog> = std::sync::OnceLock::new();

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// From now on, writes every measured request slower than `threshold` to `path`: the
/// wall-clock time it ended (Unix seconds) and its latency (ms), one per line, with a comment
/// line per cell naming its measured window.
pub fn log_slow(threshold: Duration, path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut out = std::io::LineWriter::new(file);
    writeln!(out, "# unix_time_s\tlatency_ms")?;
    let log = SlowLog {
        threshold,
        out: std::sync::Mutex::new(out),
    };
    SLOW.set(log)
        .map_err(|_| anyhow::anyhow!("the slow-request log is already set"))
}

fn slow_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Some(log) = SLOW.get() {
        if let Ok(mut out) = log.out.lock() {
            let _ = out.write_fmt(line);
        }
    }
}

/// Latencies are recorded in microseconds, up to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub workload: Workload,
    pub clients: usize,
    /// Connections per node the clients share (0: one per client).
    pub conns: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
}

pub struct CellOutcome {
    /// Requests that completed successfully inside the measured window.
    pub ops: u64,
    pub errors: u64,
    pub error_samples: BTreeMap<String, u64>,
    pub hist: Histogram<u64>,
    pub seconds: f64,
    /// CPU seconds the servers (summed over the nodes) and the bench itself used in the window.
    pub server_cpu_s: Option<f64>,
    pub bench_cpu_s: Option<f64>,
    pub peak_rss_mib: Vec<Option<f64>>,
    /// Changes delivered to the watchers of `put-watched` (warmup included).
    pub watch_events: u64,
}

/// What one closed-loop worker saw in the measured window (every load generator's workers
/// keep one: KV, streams, services).
pub(crate) struct Tally {
    pub ops: u64,
    pub errors: u64,
    pub error_samples: BTreeMap<String, u64>,
    pub hist: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            ops: 0,
            errors: 0,
            error_samples: BTreeMap::new(),
            hist: new_histogram(),
        }
    }

    /// Counts a call that ran from `t0` to `t1` (in the totals only inside the measured
    /// window `(measure_from, end)`; `counter` sees every success, for the live rate). After
    /// an error it pauses a little: a failing node answers at once, do not spin on it.
    pub async fn record(
        &mut self,
        res: anyhow::Result<()>,
        (t0, t1): (Instant, Instant),
        (measure_from, end): (Instant, Instant),
        counter: &AtomicU64,
    ) {
        let measured = t1 >= measure_from && t1 <= end;
        match res {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
                if measured {
                    self.ops += 1;
                    let us = (t1 - t0).as_micros().clamp(1, 60_000_000) as u64;
                    if SLOW.get().is_some_and(|s| t1 - t0 > s.threshold) {
                        slow_line(format_args!("{:.3}\t{:.1}\n", unix_now(), us as f64 / 1e3));
                    }
                    self.hist.saturating_record(us);
                }
            }
            Err(e) => {
                if measured {
                    self.errors += 1;
                    let k = err_key(&e);
                    if self.error_samples.len() < 8 || self.error_samples.contains_key(&k) {
                        *self.error_samples.entry(k).or_default() += 1;
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Adds another worker's tally to a cell's outcome.
    pub fn add_to(self, out: &mut CellOutcome) -> anyhow::Result<()> {
        out.ops += self.ops;
        out.errors += self.errors;
        out.hist.add(&self.hist).context("merge histograms")?;
        for (k, v) in self.error_samples {
            *out.error_samples.entry(k).or_default() += v;
        }
        Ok(())
    }
}

pub(crate) fn progress_bar(len: u64, prefix: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{elapsed_precise}] {bar:30} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn sum_cpu(samples: &[Option<f64>]) -> Option<f64> {
    samples.iter().copied().sum()
}

/// Shows a cell's progress (`counter` completions, as `unit`) until `end`, reading CPU seconds
/// of the servers and of this process when the measured window starts and when it ends.
/// Returns the (servers, bench) CPU seconds spent in the window, where readable.
pub(crate) async fn watch_cell(
    pb: &ProgressBar,
    counter: &AtomicU64,
    unit: &str,
    window: (Instant, Instant, Instant),
    server_cpu: impl Fn() -> Vec<Option<f64>>,
) -> (Option<f64>, Option<f64>) {
    match watch_cell_each(pb, counter, unit, window, server_cpu).await {
        Some((each, bench)) => (sum_cpu(&each), bench),
        None => (None, None),
    }
}

/// [`watch_cell`], with the CPU seconds of each server process (in `server_cpu`'s order)
/// rather than their sum; None when the window was never reached.
pub(crate) async fn watch_cell_each(
    pb: &ProgressBar,
    counter: &AtomicU64,
    unit: &str,
    (start, measure_from, end): (Instant, Instant, Instant),
    server_cpu: impl Fn() -> Vec<Option<f64>>,
) -> Option<(Vec<Option<f64>>, Option<f64>)> {
    let mut cpu0: Option<(Vec<Option<f64>>, Option<f64>)> = None;
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    loop {
        let now = Instant::now();
        if cpu0.is_none() && now >= measure_from {
            cpu0 = Some((server_cpu(), cpu_seconds("self")));
        }
        if now >= end {
            break;
        }
        let done = counter.load(Ordering::Relaxed);
        let dt = (now - last.0).as_secs_f64();
        if dt >= 1.0 {
            rate = (done - last.1) as f64 / dt;
            last = (now, done);
        }
        pb.set_position((now - start).as_millis() as u64);
        let phase = if now < measure_from {
            "warmup"
        } else {
            "measuring"
        };
        pb.set_message(format!("{phase}: {rate:.0} {unit}"));
        let next =
            (now + Duration::from_millis(250)).min(if cpu0.is_none() { measure_from } else { end });
        sleep_until(next).await;
    }
    let (c1, b1) = (server_cpu(), cpu_seconds("self"));
    let (c0, b0) = cpu0?;
    let spent = |a: f64, b: f64| (b - a).max(0.0);
    let each = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| a.zip(*b).map(|(a, b)| spent(a, b)))
        .collect();
    Some((each, b0.zip(b1).map(|(a, b)| spent(a, b))))
}

/// Runs one cell against `cluster`: connects `clients` workers, loads for warmup + duration.
pub async fn run_cell(cluster: &mut Cluster, cell: &Cell) -> anyhow::Result<CellOutcome> {
    let conns = cluster
        .connect_shared(cell.clients, cell.conns)
        .await
        .with_context(|| format!("{} clients for {}", cell.clients, cluster.target.name()))?;
    let counter = Arc::new(AtomicU64::new(0));
    let watched = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    if cell.workload == Workload::PutWatched {
        for (i, prefix) in watch_prefixes(cell.keys, cell.key_size)
            .into_iter()
            .enumerate()
        {
            let w = cluster
                .watch(i, &prefix)
                .await
                .with_context(|| format!("watcher of {prefix:?}"))?;
            let watched = watched.clone();
            watchers.push(tokio::spawn(w.count_into(watched)));
        }
    }
    let start = Instant::now();
    let measure_from = start + cell.warmup;
    let end = measure_from + cell.duration;
    let unix_from = unix_now() + cell.warmup.as_secs_f64();
    slow_line(format_args!(
        "# {} {} clients={} conns={} measured {:.3} .. {:.3}\n",
        cluster.target.name(),
        cell.workload.name(),
        cell.clients,
        cell.conns,
        unix_from,
        unix_from + cell.duration.as_secs_f64()
    ));

    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let cell = cell.clone();
        let counter = counter.clone();
        let seed = 0x5eed_0000 + i as u64;
        tasks.push(tokio::spawn(worker(
            conn,
            cell,
            seed,
            measure_from,
            end,
            counter,
        )));
    }

    let total_ms = (end - start).as_millis() as u64;
    let pb = progress_bar(
        total_ms,
        format!(
            "{} {} c={}",
            cluster.target.name(),
            cell.workload.name(),
            cell.clients
        ),
    );
    let (server_cpu_s, bench_cpu_s) =
        watch_cell(&pb, &counter, "ops/s", (start, measure_from, end), || {
            cluster.cpu_seconds()
        })
        .await;
    let seconds = (end - measure_from).as_secs_f64();

    let mut out = CellOutcome {
        ops: 0,
        errors: 0,
        error_samples: BTreeMap::new(),
        hist: new_histogram(),
        seconds,
        server_cpu_s,
        bench_cpu_s,
        peak_rss_mib: cluster.peak_rss_mib(),
        watch_events: 0,
    };
    for t in tasks {
        t.await.context("load worker panicked")?.add_to(&mut out)?;
    }
    pb.finish_and_clear();
    for w in watchers {
        w.abort();
    }
    out.watch_events = watched.load(Ordering::Relaxed);
    if cell.workload == Workload::PutWatched {
        anyhow::ensure!(
            out.watch_events >= out.ops,
            "{} watchers got {} changes for {} measured puts",
            cluster.target.name(),
            out.watch_events,
            out.ops
        );
    }
    cluster.check_running()?;
    Ok(out)
}

async fn worker(
    mut conn: Conn,
    cell: Cell,
    seed: u64,
    measure_from: Instant,
    end: Instant,
    counter: Arc<AtomicU64>,
) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let value: Vec<u8> = (0..cell.value_size)
        .map(|_| rng.alphanumeric() as u8)
        .collect();
    let mut out = Tally::new();
    let mut lease = 0i64;
    let own_lock = format!("bench-lock-{seed}");
    while Instant::now() < end {
        let k = key(rng.u64(0..cell.keys), cell.key_size);
        let t0 = Instant::now();
        let res = match cell.workload {
            Workload::Put | Workload::PutWatched => conn.put(&k, &value).await,
            Workload::Get => conn.get(&k, false).await,
            Workload::GetSerializable => conn.get(&k, true).await,
            Workload::Mixed if rng.u8(0..10) == 0 => conn.put(&k, &value).await,
            Workload::Mixed => conn.get(&k, false).await,
            Workload::Lock => conn.lock_cycle(&mut lease, &own_lock).await,
            Workload::LockContended => conn.lock_cycle(&mut lease, "bench-hot-lock").await,
            Workload::RegistryGet => {
                conn.registry_get(rng.u64(0..crate::args::REGISTRY_SERVICES))
                    .await
            }
        };
        out.record(res, (t0, Instant::now()), (measure_from, end), &counter)
            .await;
    }
    out
}

fn err_key(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.chars().take(240).collect()
}

/// Writes every key of the key space once, in transactions of `BATCH` puts, from 16 workers
/// spread over the nodes. Returns the seconds it took.
pub async fn preload(cluster: &Cluster, cell: &Cell) -> anyhow::Result<f64> {
    const BATCH: u64 = 100; // etcd's --max-txn-ops defaults to 128
    const WORKERS: usize = 16;
    let conns = cluster.connect(WORKERS).await?;
    let next = Arc::new(AtomicU64::new(0));
    let pb = progress_bar(
        cell.keys,
        format!("{} preload {} keys", cluster.target.name(), cell.keys),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let next = next.clone();
        let pb = pb.clone();
        let cell = cell.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0xfeed + i as u64);
            let value: Vec<u8> = (0..cell.value_size)
                .map(|_| rng.alphanumeric() as u8)
                .collect();
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= cell.keys {
                    return anyhow::Ok(());
                }
                let to = (from + BATCH).min(cell.keys);
                let pairs: Vec<(String, Vec<u8>)> = (from..to)
                    .map(|k| (key(k, cell.key_size), value.clone()))
                    .collect();
                let mut tries = 0;
                while let Err(e) = conn.put_batch(&pairs).await {
                    tries += 1;
                    if tries >= 5 {
                        return Err(e.context(format!("preload keys {from}..{to}")));
                    }
                    sleep(Duration::from_millis(200)).await;
                }
                pb.inc(to - from);
            }
        }));
    }
    for t in tasks {
        t.await.context("preload worker panicked")??;
    }
    pb.finish_and_clear();
    Ok(started.elapsed().as_secs_f64())
}
