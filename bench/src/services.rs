//! `micro-bench services`: what a Micro node adds to a call of a user's service.
//!
//! One Micro node (or 3, `--nodes`) and one `greeter` process (examples/greeter, registered
//! through node 1 with the admin's CLI credentials) run on 127.0.0.1. `Say.Hello
//! {name: "bench"}` is then called in closed loops over three paths, in alternating rounds
//! (every path at one client count, then the next count):
//!
//! - `direct`: gRPC to the greeter's own address (no node involved);
//! - `proxy`: the same gRPC call to node 1's gRPC port, which forwards it to the greeter;
//! - `gateway`: `GET /greeter/say/hello?name=bench` on node 1's HTTP port, transcoded to and
//!   from protobuf by reflection.
//!
//! Every call carries the admin's bearer token (the direct one too, so the greeter does the
//! same work on every path) and every answer is checked (`Hello bench`). gRPC clients share
//! channels, `--clients-per-channel` (16) clients to one HTTP/2 connection; the gateway's
//! clients share one HTTP/1.1 connection pool (one connection per client in flight).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use prost::Message;
use tokio::time::{sleep, Instant};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::args::{ServicePath, ServicesArgs};
use crate::cluster::{nodes_cpu_seconds, nodes_peak_rss_mib, Cluster};
use crate::load::{new_histogram, progress_bar, watch_cell_each, CellOutcome, Tally};
use crate::procs::{cpu_seconds, peak_rss_kib, Proc};
use crate::report::{self, Machine, ServiceRow, ServicesParams, ServicesReport};

const GRPC_PATH: &str = "/greeter.Say/Hello";
const NAME: &str = "bench";
const EXPECTED: &str = "Hello bench";
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// `greeter.Request` (examples/greeter/proto/greeter.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `greeter.Response`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloResponse {
    #[prost(string, tag = "1")]
    msg: String,
}

/// `greeter.Response` as the gateway writes it.
#[derive(serde::Deserialize)]
struct HelloJson {
    msg: String,
}

/// Where each path sends its calls.
struct Targets {
    /// The greeter's own gRPC address.
    direct: String,
    /// Node 1's gRPC and HTTP addresses.
    grpc: String,
    http: String,
    auth: MetadataValue<Ascii>,
}

/// The Micro nodes and the greeter. Fields drop in order: the greeter goes first.
struct Setup {
    greeter: Proc,
    cluster: Cluster,
}

impl Setup {
    /// CPU seconds so far of every node, then of the greeter.
    fn cpu_seconds(&self) -> Vec<Option<f64>> {
        let mut v = nodes_cpu_seconds(&self.cluster.nodes);
        v.push(cpu_seconds(&self.greeter.pid().to_string()));
        v
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        self.cluster.check_running()?;
        self.greeter.check_running()
    }
}

pub async fn run(a: ServicesArgs) -> anyhow::Result<()> {
    a.validate()?;
    let wall = std::time::Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workspace = crate::workspace_root();
    let micro = a
        .common
        .micro(true, workspace.as_deref())?
        .context("no micro binary")?;
    let greeter_bin = greeter_bin(&a, &micro, workspace.as_deref())?;
    let data_root = a.common.data_root();
    let mut machine = Machine::probe(&data_root);
    let micro_version = report::version_of(&micro);
    eprintln!(
        "machine: {} × {}, load {:.2}; {micro_version}; greeter {}",
        machine.nproc,
        machine.cpu_model,
        machine.loadavg_before,
        greeter_bin.display()
    );

    let t0 = Instant::now();
    let cluster = Cluster::start_micro_nodes(&micro, &data_root, a.nodes)
        .await
        .context("start Micro")?;
    let node = &cluster.nodes[0];
    let token = micro_testkit::auth::token_for(&node.addr).context("no admin token")?;
    let config_dir = cluster.config_dir().display().to_string();
    let log = cluster.dir().join("greeter.log");
    let env = [
        ("MICRO_SERVER", node.addr.as_str()),
        ("MICRO_CONFIG_DIR", config_dir.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let greeter = Proc::spawn("greeter", &greeter_bin, &[], &env, &log)?;
    let mut setup = Setup { greeter, cluster };
    let direct = wait_registered(&mut setup).await?;
    let node = &setup.cluster.nodes[0];
    let targets = Targets {
        direct: direct.clone(),
        grpc: node.addr.clone(),
        http: node
            .http
            .clone()
            .context("Micro node without an HTTP address")?,
        auth: format!("Bearer {token}")
            .parse()
            .context("the token is not ASCII")?,
    };
    eprintln!(
        "micro: {} node(s) up, greeter registered at {direct} in {:.1} s",
        a.nodes,
        t0.elapsed().as_secs_f64()
    );
    for &p in &a.path {
        let mut c = open_callers(&targets, p, 1, 1).await?;
        c[0].call()
            .await
            .with_context(|| format!("a first {} call", p.name()))?;
    }

    let mut rows = Vec::new();
    for &n in &a.clients {
        for &p in &a.path {
            let channels = match p {
                ServicePath::Gateway => 0,
                _ => a.channels(n),
            };
            let (o, greeter_cpu) = run_cell(&mut setup, &targets, p, n, channels, &a)
                .await
                .with_context(|| format!("{} with {n} clients", p.name()))?;
            let row = ServiceRow::new(p, n, channels, &o, greeter_cpu);
            eprintln!(
                "{:>7} c={:<4} {:>8.0} calls/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                p.name(),
                n,
                row.calls_per_sec,
                row.p50_ms,
                row.p99_ms,
                row.errors
            );
            rows.push(row);
        }
    }
    let greeter_rss = peak_rss_kib(&setup.greeter.pid().to_string()).map(|k| k as f64 / 1024.0);
    drop(setup);
    report::fill_service_ratios(&mut rows);
    machine.loadavg_after = report::loadavg();

    let report = ServicesReport {
        command: crate::command_line(),
        started_unix,
        wall_seconds: wall.elapsed().as_secs_f64(),
        machine,
        micro: micro_version,
        micro_git: crate::micro_git(workspace.as_deref(), a.common.micro_bin.is_some()),
        client:
            "gRPC: tonic 0.14 (tonic::client::Grpc, micro::reflection::RawCodec, prost-encoded \
                 request); gateway: reqwest 0.13 (HTTP/1.1, one connection pool)"
                .into(),
        params: ServicesParams {
            paths: a.path.clone(),
            clients: a.clients.clone(),
            clients_per_channel: a.clients_per_channel,
            nodes: a.nodes,
            duration_s: a.duration.as_secs_f64(),
            warmup_s: a.warmup.as_secs_f64(),
        },
        greeter_peak_rss_mib: greeter_rss,
        rows,
    };
    println!("\n{}", report::services_text_table(&report.rows));
    report.write(&a.common.out)?;
    if let Some(d) = a.common.docs_file(workspace.as_deref()) {
        report::update_docs(&d, &report::SERVICES_SECTION, &report.markdown())?;
        eprintln!("updated {}", d.display());
    }
    Ok(())
}

/// The `greeter` binary: `--greeter-bin`; else the one next to `--micro-bin`; else
/// `release/greeter` in this executable's target dir, built (or confirmed fresh) first unless
/// `--no-build`.
fn greeter_bin(
    a: &ServicesArgs,
    micro: &Path,
    workspace: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(b) = &a.greeter_bin {
        return Ok(b.clone());
    }
    let bin = if a.common.micro_bin.is_some() {
        micro.with_file_name("greeter")
    } else {
        if let (false, Some(ws)) = (a.common.no_build, workspace) {
            crate::cargo_build(ws, &["-p", "greeter", "--bin", "greeter"])?;
        }
        crate::cluster::target_dir()?
            .join("release")
            .join("greeter")
    };
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p greeter` or pass --greeter-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// Waits until every node's registry lists the greeter; returns its address.
async fn wait_registered(setup: &mut Setup) -> anyhow::Result<String> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let addrs: Vec<String> = setup.cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    let mut last = String::from("not registered yet");
    loop {
        setup.check_running()?;
        let mut seen = Vec::new();
        for addr in &addrs {
            let found = match micro_testkit::auth::connect(addr).await {
                Ok(c) => c.registry().get("greeter").await,
                Err(e) => Err(e),
            };
            match found {
                Ok(svcs) => seen.extend(
                    svcs.into_iter()
                        .flat_map(|s| s.nodes)
                        .map(|n| n.address)
                        .take(1),
                ),
                Err(e) => last = e.to_string(),
            }
        }
        if seen.len() == addrs.len() && seen.iter().all(|a| *a == seen[0]) {
            return Ok(seen.swap_remove(0));
        }
        if Instant::now() > deadline {
            bail!(
                "the greeter did not register within {REGISTER_TIMEOUT:?} ({last}); its log:\n{}",
                setup.greeter.log_tail(20)
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// One client's way of calling `Say.Hello`.
// One Caller per client, made once: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Caller {
    Grpc {
        grpc: tonic::client::Grpc<Channel>,
        path: PathAndQuery,
        body: Bytes,
        auth: MetadataValue<Ascii>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        auth: String,
    },
}

impl Caller {
    /// One call, its answer checked.
    async fn call(&mut self) -> anyhow::Result<()> {
        let msg = match self {
            Caller::Grpc {
                grpc,
                path,
                body,
                auth,
            } => {
                grpc.ready().await?;
                let mut req = tonic::Request::new(body.clone());
                req.metadata_mut().insert("authorization", auth.clone());
                let answer = grpc
                    .unary(req, path.clone(), micro::reflection::RawCodec)
                    .await?
                    .into_inner();
                HelloResponse::decode(answer)?.msg
            }
            Caller::Http { client, url, auth } => {
                let resp = client
                    .get(url.as_str())
                    .header("authorization", auth.as_str())
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                if !status.is_success() {
                    bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
                }
                serde_json::from_slice::<HelloJson>(&body)
                    .with_context(|| format!("answer {:?}", String::from_utf8_lossy(&body)))?
                    .msg
            }
        };
        anyhow::ensure!(msg == EXPECTED, "answer {msg:?}, expected {EXPECTED:?}");
        Ok(())
    }
}

async fn grpc_channel(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))
}

/// `clients` callers of path `p`: gRPC ones on `channels` shared channels (client i on
/// channel i % channels), gateway ones on one HTTP connection pool.
async fn open_callers(
    t: &Targets,
    p: ServicePath,
    clients: usize,
    channels: usize,
) -> anyhow::Result<Vec<Caller>> {
    let grpc_to = |addr: &str| {
        let addr = addr.to_string();
        async move {
            let chans =
                futures::future::try_join_all((0..channels.max(1)).map(|_| grpc_channel(&addr)))
                    .await?;
            let body = Bytes::from(HelloRequest { name: NAME.into() }.encode_to_vec());
            let path = PathAndQuery::from_static(GRPC_PATH);
            anyhow::Ok(
                (0..clients)
                    .map(|i| Caller::Grpc {
                        grpc: tonic::client::Grpc::new(chans[i % chans.len()].clone()),
                        path: path.clone(),
                        body: body.clone(),
                        auth: t.auth.clone(),
                    })
                    .collect(),
            )
        }
    };
    match p {
        ServicePath::Direct => grpc_to(&t.direct).await,
        ServicePath::Proxy => grpc_to(&t.grpc).await,
        ServicePath::Gateway => {
            let client = reqwest::Client::builder()
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(3))
                .build()
                .context("HTTP client")?;
            let url = format!("http://{}/greeter/say/hello?name={NAME}", t.http);
            let auth = t.auth.to_str()?.to_string();
            Ok((0..clients)
                .map(|_| Caller::Http {
                    client: client.clone(),
                    url: url.clone(),
                    auth: auth.clone(),
                })
                .collect())
        }
    }
}

/// `clients` closed-loop callers of path `p` for warmup + duration. Returns the outcome
/// (`server_cpu_s`: the Micro nodes) and the greeter's CPU seconds in the window.
async fn run_cell(
    setup: &mut Setup,
    t: &Targets,
    p: ServicePath,
    clients: usize,
    channels: usize,
    a: &ServicesArgs,
) -> anyhow::Result<(CellOutcome, Option<f64>)> {
    let callers = open_callers(t, p, clients, channels).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let mut tasks = Vec::new();
    for mut c in callers {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < end {
                let t0 = Instant::now();
                let res = c.call().await;
                tally
                    .record(res, (t0, Instant::now()), (measure_from, end), &counter)
                    .await;
            }
            tally
        }));
    }
    let pb = progress_bar(
        (end - start).as_millis() as u64,
        format!("{} c={clients}", p.name()),
    );
    let nodes = setup.cluster.nodes.len();
    let cpu = watch_cell_each(&pb, &counter, "calls/s", (start, measure_from, end), || {
        setup.cpu_seconds()
    })
    .await;
    let (node_cpu, greeter_cpu, bench_cpu) = match cpu {
        Some((each, bench)) => (
            each[..nodes].iter().copied().sum::<Option<f64>>(),
            each.get(nodes).copied().flatten(),
            bench,
        ),
        None => (None, None, None),
    };
    let mut out = CellOutcome {
        ops: 0,
        errors: 0,
        error_samples: BTreeMap::new(),
        hist: new_histogram(),
        seconds: (end - measure_from).as_secs_f64(),
        server_cpu_s: node_cpu,
        bench_cpu_s: bench_cpu,
        peak_rss_mib: nodes_peak_rss_mib(&setup.cluster.nodes),
        watch_events: 0,
    };
    for task in tasks {
        task.await.context("caller panicked")?.add_to(&mut out)?;
    }
    pb.finish_and_clear();
    setup.check_running()?;
    Ok((out, greeter_cpu))
}
