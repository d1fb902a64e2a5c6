//! Watch fan-out: N watchers of one key (spread over the three nodes, multiplexed over a few
//! shared connections per node, as services share clients), then one write at a time; how long
//! until every watcher has it.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::args::Target;
use crate::cluster::Cluster;
use crate::etcd::pb;

/// Shared connections per node for the watchers.
const CHANNELS_PER_NODE: usize = 8;
const KEY: &str = "fanout-key";

/// Delivery latencies of every change to every watcher.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fanout {
    pub target: Target,
    pub watchers: usize,
    pub changes: usize,
    /// Milliseconds from the write's start until the watcher had it: p50, p99, max over all
    /// (watcher, change) pairs.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Mean over changes of the time until the last watcher had it.
    pub all_delivered_ms: f64,
}

enum Handle {
    Micro(micro::Client),
    Etcd(Channel),
}

async fn open(target: Target, addr: &str) -> anyhow::Result<Handle> {
    Ok(match target {
        Target::Micro | Target::MicroAuthOff | Target::MicroMetricsOff => {
            Handle::Micro(micro_testkit::auth::connect(addr).await?)
        }
        Target::Etcd => Handle::Etcd(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        ),
    })
}

/// Starts one watcher of `KEY`; every value it sees goes to `tx` with its arrival time. It is
/// established when this returns.
async fn watch(h: &Handle, tx: mpsc::UnboundedSender<(Vec<u8>, Instant)>) -> anyhow::Result<()> {
    match h {
        Handle::Micro(c) => {
            let mut w = c
                .store()
                .watch(KEY, micro::store::WatchOptions::default())
                .await?;
            tokio::spawn(async move {
                while let Ok(Some(r)) = w.next().await {
                    let now = Instant::now();
                    for e in r.events {
                        let v = e.record.map(|r| r.value).unwrap_or_default();
                        if tx.send((v, now)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        Handle::Etcd(ch) => {
            let (req_tx, req_rx) = mpsc::channel(1);
            req_tx
                .send(pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: KEY.as_bytes().to_vec(),
                            range_end: Vec::new(),
                            start_revision: 0,
                        },
                    )),
                })
                .await?;
            let mut stream = pb::watch_client::WatchClient::new(ch.clone())
                .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
                .await?
                .into_inner();
            let first = stream.message().await?.context("etcd closed the watch")?;
            anyhow::ensure!(first.created, "etcd did not create the watch");
            tokio::spawn(async move {
                let _keep = req_tx;
                while let Ok(Some(r)) = stream.message().await {
                    let now = Instant::now();
                    for e in r.events {
                        let v = e.kv.map(|kv| kv.value).unwrap_or_default();
                        if tx.send((v, now)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    Ok(())
}

/// The `p` quantile (0..=1) of `sorted` (ascending); 0 when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures fan-out of `changes` writes to `watchers` watchers on `cluster`.
pub async fn run(cluster: &Cluster, watchers: usize, changes: usize) -> anyhow::Result<Fanout> {
    let mut handles = Vec::new();
    for node in &cluster.nodes {
        for _ in 0..CHANNELS_PER_NODE {
            handles.push(open(cluster.target, &node.addr).await?);
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..watchers {
        watch(&handles[i % handles.len()], tx.clone())
            .await
            .with_context(|| format!("watcher {i} on {}", cluster.target.name()))?;
    }
    drop(tx);
    let mut writer = cluster.connect(1).await?.pop().context("a writer")?;
    let mut lat = Vec::new();
    let mut all = Vec::new();
    for c in 0..changes {
        let value = format!("change-{c}");
        let t0 = Instant::now();
        writer.put(KEY, value.as_bytes()).await?;
        let mut got = 0;
        let mut last = t0;
        let deadline = t0 + Duration::from_secs(60);
        while got < watchers {
            let (v, at) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .with_context(|| format!("{got} of {watchers} watchers had change {c} after 60 s"))?
                .context("every watcher ended")?;
            if v == value.as_bytes() {
                got += 1;
                last = last.max(at);
                lat.push((at - t0).as_secs_f64() * 1000.0);
            }
        }
        all.push((last - t0).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok(Fanout {
        target: cluster.target,
        watchers,
        changes,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        all_delivered_ms: all.iter().sum::<f64>() / all.len().max(1) as f64,
    })
}
