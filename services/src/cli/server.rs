//! `micro server`: runs a node until SIGINT/SIGTERM.

use super::*;

#[derive(Args)]
pub(super) struct ServerArgs {
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
    /// Keep at most this many revisions of change history for watchers (0: until
    /// `micro store compact`)
    #[arg(long, env = "MICRO_HISTORY_REVISIONS", default_value_t = 100_000)]
    history_revisions: u64,
    /// Also drop change history older than this, e.g. 1h (default: no age limit)
    #[arg(long, env = "MICRO_HISTORY_AGE", value_parser = humantime::parse_duration)]
    history_age: Option<Duration>,
    /// Serve requests without credentials, every one as an admin. Only with loopback
    /// --grpc/--http addresses; for local experiments, never for a shared machine
    #[arg(long, env = "MICRO_AUTH_DISABLED", value_parser = clap::builder::BoolishValueParser::new())]
    auth_disabled: bool,
    /// Log lines on stderr as `text` or `json` (one object a line, for log shippers); the
    /// level is MICRO_LOG (e.g. `debug`, `info,micro_cluster=debug`)
    #[arg(long, env = "MICRO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Record no request, proposal or fsync metrics (`/metrics` keeps the Raft state and
    /// sizes read when scraped); for measuring what recording costs
    #[arg(long, env = "MICRO_METRICS_DISABLED", value_parser = clap::builder::BoolishValueParser::new())]
    metrics_disabled: bool,
    /// Export a span per request, forwarded write and proposal to this OpenTelemetry collector
    /// (OTLP over HTTP/protobuf, e.g. http://127.0.0.1:4318/v1/traces); none by default
    #[arg(long, env = "MICRO_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Cargo profile `micro run` builds sources with: release, dev, or a custom profile
    #[arg(long, env = "MICRO_RUNTIME_PROFILE", default_value = "release")]
    runtime_profile: String,
    /// How long a node may be unreachable before the leader moves its `micro run` instances
    /// to other nodes
    #[arg(long, env = "MICRO_RUNTIME_GRACE", default_value = "15s", value_parser = humantime::parse_duration)]
    runtime_grace: Duration,
    /// How long a stopping instance has after SIGTERM before it gets SIGKILL
    #[arg(long, env = "MICRO_RUNTIME_STOP_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    runtime_stop_grace: Duration,
    /// Size bound of one instance's log file under the data dir (a full file is rotated;
    /// two are kept)
    #[arg(long, env = "MICRO_RUNTIME_LOG_BYTES", default_value_t = 1024 * 1024)]
    runtime_log_bytes: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr as `format`, and spans to an OTLP collector if given one.
fn init_logging(
    format: LogFormat,
    otlp: Option<&str>,
    node_id: u64,
) -> anyhow::Result<Option<crate::otel::Export>> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn")
    });
    let text = matches!(format, LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = matches!(format, LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
    });
    let (otel, export) = match otlp {
        Some(endpoint) => {
            let (layer, export) = crate::otel::layer(endpoint, node_id)?;
            (Some(layer), Some(export))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .init();
    Ok(export)
}

pub(super) const TOKEN_FILE: &str = "cluster-token";

fn random_token() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b)
        .map_err(|e| anyhow::anyhow!("no randomness for a cluster token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub(super) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
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

pub(super) async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    // First of all, so that no signal can arrive before the handlers are in place.
    let shutdown = shutdown_signal();
    let export = init_logging(args.log_format, args.otlp_endpoint.as_deref(), args.node_id)?;
    if args.metrics_disabled {
        crate::metrics::disable();
    }
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
    node.history_revisions = args.history_revisions;
    node.history_age = args.history_age;
    let cfg = crate::server::ServerConfig {
        node,
        grpc: args.grpc,
        http: args.http,
        auth_disabled: args.auth_disabled,
        config_dir: micro::env::config_dir(),
        runtime: crate::runtime::Config {
            profile: args.runtime_profile.clone(),
            grace: args.runtime_grace,
            stop_grace: args.runtime_stop_grace,
            log_bytes: args.runtime_log_bytes,
            ..crate::runtime::Config::new(&args.data_dir)
        },
    };
    let res = crate::server::run(cfg, shutdown).await;
    if let Some(export) = export {
        // Flushes the last spans (a blocking call: off the async threads).
        let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
    }
    res?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a node can answer requests before its main task gets back to
/// awaiting shutdown, and a SIGTERM in between must still stop it gracefully (it used to kill
/// it outright on a loaded machine).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        async move {
            match signals {
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
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
