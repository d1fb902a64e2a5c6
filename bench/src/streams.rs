//! `micro-bench streams`: how fast Micro takes events (each acknowledged after a quorum
//! fsync) and how fast a consumer replays a topic from its first event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::args::StreamsArgs;
use crate::cluster::{self, Cluster};
use crate::load::new_histogram;

const TOPIC: &str = "bench";

pub async fn run(a: StreamsArgs) -> anyhow::Result<()> {
    let bin = match &a.micro_bin {
        Some(b) => b.clone(),
        None => cluster::default_micro_bin()?,
    };
    let cluster = Cluster::start_micro(&bin, &a.data_root).await?;
    let addrs: Vec<String> = (0..a.clients.max(1))
        .map(|i| cluster.addr_for_worker(i).to_string())
        .collect();

    // Publish: closed loop, every publish acknowledged after commit (quorum fsync) and apply.
    let payload = vec![b'e'; a.payload_size];
    let deadline = Instant::now() + a.duration;
    let mut tasks = Vec::new();
    for addr in addrs {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let events = micro::Client::connect(&addr).await?.events();
            let mut hist = new_histogram();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match events.publish(TOPIC, payload.clone(), HashMap::new()).await {
                    Ok(_) => {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.context("publisher task")??;
        hist.add(&h).context("merge histograms")?;
        errors += e;
    }
    let published = hist.len();
    let secs = a.duration.as_secs_f64();
    println!(
        "publish  clients={:<4} {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  errors {errors}",
        a.clients,
        published as f64 / secs,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
    );

    // Replay: one consumer per node reads the whole topic from sequence 1 and stops at the end.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let events = micro::Client::connect(&node.addr).await?.events();
        let started = Instant::now();
        let mut consumer = events
            .consume(micro::events::ConsumeRequest {
                topic: TOPIC.into(),
                from_sequence: 1,
                stop_at_end: true,
                ..Default::default()
            })
            .await?;
        let mut n = 0u64;
        let mut next = 1;
        while let Some(e) = consumer.next().await? {
            anyhow::ensure!(
                e.sequence == next,
                "replay out of order: {} after {}",
                e.sequence,
                next - 1
            );
            next += 1;
            n += 1;
        }
        let took = started.elapsed().max(Duration::from_millis(1));
        println!(
            "replay   node {}        {:>8.0} events/s  ({n} events in {:.2} s, in order, no gaps)",
            i + 1,
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        );
    }
    Ok(())
}
