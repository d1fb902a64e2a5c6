//! The `micro` command line. `micro server` runs a node; the rest are gRPC clients of one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{presets::NOTHING, Table};
use micro::proto::store::Record;
use micro::store::Query;
use micro::Client;
use micro_cluster::NodeConfig;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "micro",
    version,
    about = "Micro: a platform for microservices in one binary"
)]
struct Cli {
    /// gRPC address of the node to talk to
    #[arg(
        long,
        global = true,
        env = "MICRO_SERVER",
        default_value = "127.0.0.1:8081"
    )]
    server: String,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node (a single-node cluster by default)
    Server(ServerArgs),
    /// The key-value store
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Cluster membership and health
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Event streams: publish, replay from any position, consume in groups
    Events {
        #[command(subcommand)]
        cmd: EventsCmd,
    },
    /// Ephemeral pub/sub (at most once, not stored)
    Broker {
        #[command(subcommand)]
        cmd: BrokerCmd,
    },
    /// Save, verify and restore snapshots (disaster recovery)
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Publish an event
    Publish {
        topic: String,
        data: String,
        /// Metadata as key=value (repeatable)
        #[arg(long = "metadata", short = 'm', value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
    },
    /// Print events of a topic: the backlog from a position, then (with --follow) live ones
    Consume {
        topic: String,
        /// Start at this sequence
        #[arg(long, conflicts_with_all = ["since", "from_start"])]
        offset: Option<u64>,
        /// Start at events published this long ago, e.g. 10m
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from_start")]
        since: Option<Duration>,
        /// Start at the first retained event
        #[arg(long)]
        from_start: bool,
        /// Consume as a member of this group (events are shared, acked, resumable)
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many events
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Keep following new events (default: stop once caught up)
        #[arg(long)]
        follow: bool,
        /// Fail if the start was trimmed by retention (default: start at the first retained)
        #[arg(long)]
        strict: bool,
    },
    /// List topics with their retained range
    Topics,
    /// Set a topic's retention
    Retention {
        topic: String,
        /// Keep at most this many events (0: unlimited)
        #[arg(long, default_value_t = 0)]
        max_events: u64,
        /// Keep none older than this, e.g. 7d (default: unlimited)
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum BrokerCmd {
    /// Publish a message to every subscriber of TOPIC, on every node
    Publish {
        topic: String,
        data: String,
        /// Header as key=value (repeatable)
        #[arg(long = "header", short = 'H', value_parser = parse_kv)]
        header: Vec<(String, String)>,
    },
    /// Print messages published to TOPIC from now on
    Subscribe {
        topic: String,
        /// Share messages with other subscribers of this queue
        #[arg(long, default_value = "")]
        queue: String,
        /// Stop after this many messages
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Download a consistent snapshot of the whole cluster state to FILE
    Save { file: PathBuf },
    /// Verify every checksum of FILE and print its header
    Status { file: PathBuf },
    /// Create the data dir of a member of a NEW cluster from FILE
    Restore {
        file: PathBuf,
        /// The new member's data dir (must be empty)
        #[arg(long)]
        data_dir: PathBuf,
        /// The new member's id
        #[arg(long)]
        node_id: u64,
        /// Members of the new cluster: "1=127.0.0.1:8085,2=...,3=..." (same on every member)
        #[arg(long)]
        initial_cluster: String,
        /// Cluster token to store for the new member (else pass it when starting it)
        #[arg(long, env = "MICRO_CLUSTER_TOKEN", hide_env_values = true)]
        cluster_token: Option<String>,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// This node's id (1, 2, 3, ...)
    #[arg(long, env = "MICRO_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// Where the node keeps its log, views and snapshots
    #[arg(long, env = "MICRO_DATA_DIR", default_value = "./micro-data")]
    data_dir: PathBuf,
    /// HTTP gateway address
    #[arg(long, env = "MICRO_HTTP", default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// gRPC address for clients
    #[arg(long, env = "MICRO_GRPC", default_value = "127.0.0.1:8081")]
    grpc: std::net::SocketAddr,
    /// Address for Raft traffic between nodes
    #[arg(long, env = "MICRO_PEER", default_value = "127.0.0.1:8085")]
    peer: std::net::SocketAddr,
    /// Peer address other nodes should use for this one (default: from --initial-cluster or --peer)
    #[arg(long, env = "MICRO_ADVERTISE_PEER")]
    advertise_peer: Option<String>,
    /// Founding members, e.g. "1=127.0.0.1:8085,2=127.0.0.1:9085,3=127.0.0.1:10085"
    /// (ignored when the data dir already holds a cluster)
    #[arg(long, env = "MICRO_INITIAL_CLUSTER", default_value = "")]
    initial_cluster: String,
    /// Shared secret for peer traffic; every member needs the same one
    #[arg(long, env = "MICRO_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// Join an existing cluster through a member's peer address (empty data dir only);
    /// the node joins as a learner, promote it with `micro cluster promote`
    #[arg(long, env = "MICRO_JOIN")]
    join: Option<String>,
    /// Dial other addresses for members' peer addresses: "MEMBER=DIAL,..." (proxies, NAT)
    #[arg(long, env = "MICRO_PEER_ROUTES", default_value = "", hide = true)]
    peer_routes: String,
    /// Snapshot (and compact the log) every this many applied entries
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
}

#[derive(Args, Clone)]
struct Scope {
    /// Database (default "micro")
    #[arg(short = 'd', long, default_value = "")]
    database: String,
    /// Table (default "micro")
    #[arg(short = 't', long, default_value = "")]
    table: String,
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Write a record
    Write {
        key: String,
        value: String,
        /// Time to live, e.g. 10s, 5m, 1h
        #[arg(long, value_parser = humantime::parse_duration)]
        expiry: Option<Duration>,
        #[command(flatten)]
        scope: Scope,
    },
    /// Read a record (or records with --prefix / --suffix)
    Read {
        key: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long)]
        suffix: bool,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, value_parser = ["asc", "desc"], default_value = "asc")]
        order: String,
        /// Read this node's copy without asking the leader (faster, may be stale)
        #[arg(long)]
        serializable: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Delete a record
    Delete {
        key: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// List keys
    List {
        /// Only keys starting with this
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys ending with this
        #[arg(long, default_value = "")]
        suffix: String,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Skip this many matching keys first
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, value_parser = ["asc", "desc"], default_value = "asc")]
        order: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// List databases
    Databases,
    /// List the tables of a database
    Tables {
        #[arg(short = 'd', long, default_value = "")]
        database: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Members, leader, term and progress of every node
    Status,
    /// Add a node as a learner (it then receives the log; start it with --join)
    Add {
        id: u64,
        /// The new node's peer address
        peer_address: String,
    },
    /// Make a caught-up learner a voter
    Promote { id: u64 },
    /// Remove a voter or learner
    Remove { id: u64 },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(args) => server(args).await,
            Cmd::Store { cmd } => store(&cli.server, cli.output, cmd).await,
            Cmd::Cluster { cmd } => cluster(&cli.server, cli.output, cmd).await,
            Cmd::Snapshot { cmd } => snapshot(&cli.server, cli.output, cmd).await,
            Cmd::Events { cmd } => events(&cli.server, cli.output, cmd).await,
            Cmd::Broker { cmd } => broker(&cli.server, cli.output, cmd).await,
        }
    });
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

const TOKEN_FILE: &str = "cluster-token";

fn random_token() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b)
        .map_err(|e| anyhow::anyhow!("no randomness for a cluster token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The flag wins; else the token saved in the data dir; else a new single-node cluster makes
/// one. A multi-node bootstrap must be given one, so that every member shares it.
fn resolve_token(args: &ServerArgs, multi: bool) -> anyhow::Result<String> {
    std::fs::create_dir_all(&args.data_dir)?;
    let file = args.data_dir.join(TOKEN_FILE);
    let saved = std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_string());
    let token = match (&args.cluster_token, saved) {
        (Some(t), _) => t.clone(),
        (None, Some(s)) if !s.is_empty() => return Ok(s),
        (None, _) if !multi => random_token()?,
        (None, _) => anyhow::bail!(
            "a cluster with --initial-cluster needs a shared secret: pass the same --cluster-token (or MICRO_CLUSTER_TOKEN) to every node"
        ),
    };
    if token.len() < 8 {
        anyhow::bail!("--cluster-token is too short: use at least 8 characters");
    }
    write_private(&file, &token)?;
    Ok(token)
}

async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let initial = NodeConfig::parse_initial_cluster(&args.initial_cluster)
        .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
    let token = resolve_token(&args, initial.len() > 1 || args.join.is_some())?;
    let mut node = NodeConfig::new(args.node_id, args.data_dir.clone(), args.peer);
    node.initial_cluster = initial;
    node.advertise_peer = args.advertise_peer.clone();
    node.join = args.join.clone();
    node.peer_routes = NodeConfig::parse_routes(&args.peer_routes)
        .map_err(|e| anyhow::anyhow!("--peer-routes: {e}"))?;
    node.cluster_token = token;
    node.snapshot_every = args.snapshot_every.max(1);
    node.keep_behind_snapshot = (args.snapshot_every / 4).clamp(100, 5_000);
    let cfg = crate::server::ServerConfig {
        node,
        grpc: args.grpc,
        http: args.http,
    };
    crate::server::run(cfg, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(headers.iter().map(|h| h.to_uppercase()));
    t
}

fn record_json(r: &Record) -> Value {
    let mut v = json!({
        "key": r.key,
        "expiry": r.expiry,
        "create_revision": r.create_revision,
        "mod_revision": r.mod_revision,
        "version": r.version,
        "metadata": r.metadata.iter().map(|(k, f)| (k.clone(), json!({"type": f.r#type, "value": f.value}))).collect::<serde_json::Map<_, _>>(),
    });
    put_bytes(&mut v, "value", &r.value);
    v
}

/// Sets `field` to the bytes as text when they are UTF-8, else `{field}_base64`.
fn put_bytes(v: &mut Value, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => v[field] = json!(s),
        Err(_) => {
            use base64::Engine;
            v[format!("{field}_base64")] =
                json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn store(server: &str, out: Output, cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(server).await?;
    match cmd {
        StoreCmd::Write {
            key,
            value,
            expiry,
            scope,
        } => {
            let rev = client
                .store()
                .scope(&scope.database, &scope.table)
                .write_with_ttl(&key, value.into_bytes(), expiry)
                .await?;
            if out == Output::Json {
                print_json(&json!({"key": key, "revision": rev}));
            }
        }
        StoreCmd::Read {
            key,
            prefix,
            suffix,
            limit,
            offset,
            order,
            serializable,
            scope,
        } => {
            let q = Query {
                prefix,
                suffix,
                limit,
                offset,
                descending: order == "desc",
                serializable,
            };
            let recs = client
                .store()
                .scope(&scope.database, &scope.table)
                .query(&key, q)
                .await?;
            if recs.is_empty() && !prefix && !suffix {
                eprintln!("key {key:?} not found");
                return Ok(ExitCode::FAILURE);
            }
            match out {
                Output::Json => print_json(&Value::Array(recs.iter().map(record_json).collect())),
                Output::Table if !prefix && !suffix => {
                    println!("{}", String::from_utf8_lossy(&recs[0].value));
                }
                Output::Table => {
                    let mut t = table(&["key", "value", "expiry"]);
                    for r in &recs {
                        let exp = if r.expiry > 0 {
                            format!("{}s", r.expiry)
                        } else {
                            "-".into()
                        };
                        t.add_row(vec![
                            r.key.clone(),
                            String::from_utf8_lossy(&r.value).into_owned(),
                            exp,
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        StoreCmd::Delete { key, scope } => {
            client
                .store()
                .scope(&scope.database, &scope.table)
                .delete(&key)
                .await?;
            if out == Output::Json {
                print_json(&json!({"key": key, "deleted": true}));
            }
        }
        StoreCmd::List {
            prefix,
            suffix,
            limit,
            offset,
            order,
            scope,
        } => {
            let q = micro::store::ListQuery {
                prefix,
                suffix,
                limit,
                offset,
                descending: order == "desc",
            };
            let keys = client
                .store()
                .scope(&scope.database, &scope.table)
                .list_with(q)
                .await?;
            match out {
                Output::Json => print_json(&json!(keys)),
                Output::Table => keys.iter().for_each(|k| println!("{k}")),
            }
        }
        StoreCmd::Databases => {
            let dbs = client.store().databases().await?;
            match out {
                Output::Json => print_json(&json!(dbs)),
                Output::Table => dbs.iter().for_each(|d| println!("{d}")),
            }
        }
        StoreCmd::Tables { database } => {
            let tables = client.store().tables(&database).await?;
            match out {
                Output::Json => print_json(&json!(tables)),
                Output::Table => tables.iter().for_each(|t| println!("{t}")),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &micro::proto::cluster::StatusResponse, out: Output) {
    match out {
        Output::Json => print_json(&json!({
            "leader": if s.leader == 0 { Value::Null } else { json!(s.leader) },
            "term": s.term,
            "node_id": s.node_id,
            "cluster_id": s.cluster_id,
            "members": s.members.iter().map(|m| json!({
                "id": m.id,
                "role": m.role,
                "state": m.state,
                "peer_address": m.peer_address,
                "grpc_address": m.grpc_address,
                "http_address": m.http_address,
                "term": m.term,
                "last_log_index": m.last_log_index,
                "applied_index": m.applied_index,
                "lag": m.lag,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let leader = if s.leader == 0 {
                "none".to_string()
            } else {
                s.leader.to_string()
            };
            println!(
                "cluster: {}   leader: {leader}   term: {}   answered by: node {}",
                if s.cluster_id.is_empty() {
                    "-"
                } else {
                    &s.cluster_id
                },
                s.term,
                s.node_id
            );
            let mut t = table(&[
                "id", "role", "state", "peer", "grpc", "term", "last log", "applied", "lag",
            ]);
            for m in &s.members {
                t.add_row(vec![
                    m.id.to_string(),
                    m.role.clone(),
                    m.state.clone(),
                    m.peer_address.clone(),
                    m.grpc_address.clone(),
                    m.term.to_string(),
                    m.last_log_index.to_string(),
                    m.applied_index.to_string(),
                    m.lag.to_string(),
                ]);
            }
            println!("{t}");
        }
    }
}

async fn cluster(server: &str, out: Output, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(server).await?;
    let status = match cmd {
        ClusterCmd::Status => client.cluster_status().await?,
        ClusterCmd::Add { id, peer_address } => {
            let s = client.add_member(id, &peer_address).await?;
            if out == Output::Table {
                println!("node {id} added as a learner; start it with `micro server --node-id {id} --peer {peer_address} --join <a member's peer address>`, then `micro cluster promote {id}`");
            }
            s
        }
        ClusterCmd::Promote { id } => {
            let s = client.promote_member(id).await?;
            if out == Output::Table {
                println!("node {id} is now a voter");
            }
            s
        }
        ClusterCmd::Remove { id } => {
            let s = client.remove_member(id).await?;
            if out == Output::Table {
                println!("node {id} removed");
            }
            s
        }
    };
    print_status(&status, out);
    Ok(ExitCode::SUCCESS)
}

fn header_json(h: &micro_cluster::snapshot::Header, bytes: u64) -> Value {
    json!({
        "format_version": micro_cluster::snapshot::VERSION,
        "cluster_id": h.cluster_id,
        "snapshot_id": h.snapshot_id,
        "revision": h.revision,
        "last_log_index": h.last_log_id.map(|l| l.index),
        "last_log_term": h.last_log_id.map(|l| l.leader_id.term),
        "records": h.record_count,
        "voters": h.membership.membership().voter_ids().collect::<Vec<_>>(),
        "bytes": bytes,
    })
}

fn print_header(h: &micro_cluster::snapshot::Header, bytes: u64, out: Output) {
    let v = header_json(h, bytes);
    match out {
        Output::Json => print_json(&v),
        Output::Table => {
            let mut t = table(&["field", "value"]);
            if let Value::Object(m) = &v {
                for (k, val) in m {
                    let shown = match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    t.add_row(vec![k.clone(), shown]);
                }
            }
            println!("{t}");
        }
    }
}

async fn snapshot(server: &str, out: Output, cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Save { file } => {
            let client = Client::connect(server).await?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} saving snapshot {bytes}/{total_bytes} {bar:30} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let bytes = client
                .snapshot(|got, total| {
                    bar.set_length(total);
                    bar.set_position(got);
                })
                .await?;
            bar.finish_and_clear();
            let header = micro_cluster::snapshot::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("the downloaded snapshot does not verify: {e}"))?;
            let tmp = file.with_extension("part");
            std::fs::write(&tmp, &bytes)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            if out == Output::Table {
                println!("saved {} ({} bytes)", file.display(), bytes.len());
            }
            print_header(&header, bytes.len() as u64, out);
        }
        SnapshotCmd::Status { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let header = micro_cluster::snapshot::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not a valid snapshot: {e}", file.display()))?;
            print_header(&header, bytes.len() as u64, out);
        }
        SnapshotCmd::Restore {
            file,
            data_dir,
            node_id,
            initial_cluster,
            cluster_token,
        } => {
            let members = NodeConfig::parse_initial_cluster(&initial_cluster)
                .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
            if !members.contains_key(&node_id) {
                anyhow::bail!("--initial-cluster does not list --node-id {node_id}");
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let r = micro_cluster::restore::restore(&bytes, &data_dir, &members)
                .map_err(|e| anyhow::anyhow!("restore of {} failed: {e:#}", file.display()))?;
            if let Some(t) = cluster_token {
                write_private(&data_dir.join(TOKEN_FILE), &t)?;
            }
            match out {
                Output::Json => print_json(&json!({
                    "data_dir": data_dir,
                    "node_id": node_id,
                    "cluster_id": r.cluster_id,
                    "from_cluster_id": r.from.cluster_id,
                    "records": r.records,
                    "revision": r.revision,
                })),
                Output::Table => println!(
                    "restored {} records at revision {} into {} as node {node_id} of new cluster {}; start it with `micro server --node-id {node_id} --data-dir {}` and the same ports",
                    r.records,
                    r.revision,
                    data_dir.display(),
                    r.cluster_id,
                    data_dir.display()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn event_json(e: &micro::events::Event) -> Value {
    let mut v = json!({
        "id": e.id,
        "topic": e.topic,
        "sequence": e.sequence,
        "timestamp": e.timestamp,
        "metadata": e.metadata,
    });
    put_bytes(&mut v, "payload", &e.payload);
    v
}

async fn events(server: &str, out: Output, cmd: EventsCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(server).await?;
    let events = client.events();
    match cmd {
        EventsCmd::Publish {
            topic,
            data,
            metadata,
        } => {
            let seq = events
                .publish(&topic, data.into_bytes(), metadata.into_iter().collect())
                .await?;
            match out {
                Output::Json => print_json(
                    &json!({"topic": topic, "sequence": seq, "id": format!("{topic}/{seq}")}),
                ),
                Output::Table => println!("published {topic}/{seq}"),
            }
        }
        EventsCmd::Consume {
            topic,
            offset,
            since,
            from_start,
            group,
            limit,
            follow,
            strict,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let req = micro::events::ConsumeRequest {
                group: group.clone().unwrap_or_default(),
                topic: topic.clone(),
                offset: since.map_or(0, |d| now.saturating_sub(d).as_secs().max(1) as i64),
                from_sequence: offset.unwrap_or(0),
                from_start,
                strict,
                stop_at_end: !follow,
                limit,
                ..Default::default()
            };
            let mut c = events.consume(req).await?;
            if let Some(first) = c.trimmed_to {
                eprintln!("note: the requested start was trimmed by retention; starting at sequence {first}");
            }
            while let Some(e) = c.next().await? {
                match out {
                    Output::Json => println!("{}", event_json(&e)),
                    Output::Table => println!(
                        "{}\t{}\t{}",
                        e.sequence,
                        e.timestamp,
                        String::from_utf8_lossy(&e.payload)
                    ),
                }
                if let Some(g) = &group {
                    events.ack(g, &e.id, true).await?;
                }
            }
        }
        EventsCmd::Topics => {
            let topics = events.topics().await?;
            match out {
                Output::Json => print_json(&json!(topics.iter().map(|t| json!({
                    "name": t.name, "first_sequence": t.first_sequence, "last_sequence": t.last_sequence,
                    "max_events": t.max_events, "max_age_ms": t.max_age,
                })).collect::<Vec<_>>())),
                Output::Table => {
                    let mut t = table(&["topic", "first", "last", "max events", "max age"]);
                    for x in &topics {
                        let age = if x.max_age == 0 { "-".to_string() } else { humantime::format_duration(Duration::from_millis(x.max_age)).to_string() };
                        t.add_row(vec![x.name.clone(), x.first_sequence.to_string(), x.last_sequence.to_string(), x.max_events.to_string(), age]);
                    }
                    println!("{t}");
                }
            }
        }
        EventsCmd::Retention {
            topic,
            max_events,
            max_age,
        } => {
            events
                .set_retention(
                    &topic,
                    max_events,
                    max_age.map_or(0, |d| d.as_millis() as u64),
                )
                .await?;
            if out == Output::Table {
                println!("retention of {topic} set");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn broker(server: &str, out: Output, cmd: BrokerCmd) -> anyhow::Result<ExitCode> {
    use micro::proto::broker as pb;
    let mut client = Client::connect(server).await?.broker();
    match cmd {
        BrokerCmd::Publish {
            topic,
            data,
            header,
        } => {
            let req = pb::PublishRequest {
                topic,
                message: Some(pb::Message {
                    header: header.into_iter().collect(),
                    body: data.into_bytes(),
                }),
            };
            client.publish(req).await.map_err(micro::Error::from)?;
        }
        BrokerCmd::Subscribe {
            topic,
            queue,
            limit,
        } => {
            let mut stream = client
                .subscribe(pb::SubscribeRequest { topic, queue })
                .await
                .map_err(micro::Error::from)?
                .into_inner();
            let mut n = 0;
            while let Some(m) = stream.message().await.map_err(micro::Error::from)? {
                match out {
                    Output::Json => println!(
                        "{}",
                        json!({"header": m.header, "body": String::from_utf8_lossy(&m.body)})
                    ),
                    Output::Table => println!("{}", String::from_utf8_lossy(&m.body)),
                }
                n += 1;
                if limit > 0 && n >= limit {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
