//! Command line: `micro-bench compare|streams|size|services ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "micro-bench",
    version,
    about = "Load generator that measures Micro side by side with etcd and NATS JetStream"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Start a 3-node Micro cluster and a 3-node etcd cluster on 127.0.0.1 and drive both with
    /// the same closed-loop workload, in alternating rounds
    Compare(CompareArgs),
    /// Event streams, Micro vs NATS JetStream (3 nodes each): publish throughput and latency
    /// at several publisher counts in alternating rounds, then replay of N events from the start
    Streams(StreamsArgs),
    /// Bytes on disk per node after writing N keys (batched) to Micro and to etcd
    Size(SizeArgs),
    /// Gateway and proxy overhead: `Say.Hello` of the `greeter` example called directly, through
    /// a node's gRPC proxy and through its HTTP gateway, at several client counts in
    /// alternating rounds
    Services(ServicesArgs),
    /// One write's critical path across the nodes, from the stamps nodes started with
    /// MICRO_TIMELINE_DIR=DIR recorded (run `compare --target micro --workload put --clients 1`
    /// with it set first)
    Timeline(crate::timeline::TimelineArgs),
}

/// Options every subcommand shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Directory for the JSON and Markdown results (results.*, streams.*, size.*, services.*)
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// The `micro` binary (default: `release/micro` in this executable's target dir)
    #[arg(long)]
    pub micro_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p micro-services --bin micro` first (nor
    /// `-p greeter` for `services`)
    #[arg(long)]
    pub no_build: bool,
    /// Markdown file whose generated section gets the latest tables (default: the workspace's
    /// docs/benchmarks.md)
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Do not update any docs file
    #[arg(long, conflicts_with = "docs")]
    pub no_docs: bool,
    /// Where the temporary data dirs go (default: the system temp dir); they are removed
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Also write every measured request slower than this many milliseconds, with the
    /// wall-clock time it ended, to `slow.tsv` in --out (with each `compare` cell's window): lines stalls
    /// up with the servers' logs
    #[arg(long, value_name = "MS")]
    pub slow_ms: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct StreamsArgs {
    /// Systems to measure, comma separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "micro,jetstream"
    )]
    pub target: Vec<StreamTarget>,
    /// Concurrent closed-loop publishers per cell, comma separated, each over its own connection
    /// (Micro: dealt to the followers first, then the leader; JetStream: node i % 3)
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Measured publish time per cell (one target, one publisher count)
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Unmeasured publishing before each cell's measurement starts
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Payload size in bytes
    #[arg(long, default_value_t = 256)]
    pub payload_size: usize,
    /// Events to load into a fresh topic / stream and replay from the start (0: no replay)
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_events: u64,
    /// The `nats-server` binary (default: `nats-server` on PATH, installed by
    /// bench/scripts/install-nats)
    #[arg(long)]
    pub nats_bin: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

impl StreamsArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.target.is_empty(), "--target is empty");
        anyhow::ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|c| *c > 0),
            "--clients must list positive numbers"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        Ok(())
    }
}

/// What `micro-bench streams` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamTarget {
    /// Micro's event streams (every publish acknowledged after a quorum fsync)
    Micro,
    /// NATS JetStream: an R3 file-storage stream on a 3-node cluster
    Jetstream,
}

impl StreamTarget {
    pub fn name(self) -> &'static str {
        match self {
            StreamTarget::Micro => "micro",
            StreamTarget::Jetstream => "jetstream",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServicesArgs {
    /// Paths to measure, comma separated (the ratios need `direct`)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,proxy,gateway"
    )]
    pub path: Vec<ServicePath>,
    /// Concurrent closed-loop clients per cell, comma separated
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub clients: Vec<usize>,
    /// gRPC clients sharing one channel (one HTTP/2 connection): a cell of N clients opens
    /// ceil(N / this) channels, client i on channel i % channels
    #[arg(long, default_value_t = 16)]
    pub clients_per_channel: usize,
    /// Measured time per cell (one path, one client count)
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Unmeasured calls before each cell's measurement starts
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Micro nodes (1, or 3 for a cluster); the greeter registers through node 1, and the
    /// proxy and gateway clients talk to node 1
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The `greeter` binary (default: `release/greeter` next to `micro`, built first unless
    /// --no-build)
    #[arg(long)]
    pub greeter_bin: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

impl ServicesArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.path.is_empty(), "--path is empty");
        anyhow::ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|c| *c > 0),
            "--clients must list positive numbers"
        );
        anyhow::ensure!(
            self.clients_per_channel > 0,
            "--clients-per-channel must be positive"
        );
        anyhow::ensure!(self.nodes == 1 || self.nodes == 3, "--nodes must be 1 or 3");
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        Ok(())
    }

    /// Channels a cell of `clients` gRPC clients opens.
    pub fn channels(&self, clients: usize) -> usize {
        clients.div_ceil(self.clients_per_channel.max(1))
    }
}

/// How `micro-bench services` reaches the greeter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServicePath {
    /// gRPC straight to the greeter's own address (no node involved)
    Direct,
    /// The same gRPC call to a node's gRPC port, which forwards it to the greeter
    Proxy,
    /// HTTP GET /greeter/say/hello?name=bench on a node's HTTP port (JSON transcoded by
    /// reflection)
    Gateway,
}

impl ServicePath {
    pub fn name(self) -> &'static str {
        match self {
            ServicePath::Direct => "direct",
            ServicePath::Proxy => "proxy",
            ServicePath::Gateway => "gateway",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SizeArgs {
    /// Systems to measure, comma separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "micro,etcd")]
    pub target: Vec<Target>,
    /// Keys to write (keys 0..N, zero padded to --key-size), each once
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Key length in bytes
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value length in bytes
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// How long to leave the servers idle after the load before the second measurement
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub settle: Duration,
    /// The `etcd` binary (default: `etcd` on PATH, installed by bench/scripts/install-etcd)
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

impl SizeArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.target.is_empty(), "--target is empty");
        anyhow::ensure!(self.keys > 0, "--keys must be positive");
        check_key_size(self.keys, self.key_size)
    }
}

/// `Err` unless `key_size` bytes can hold `keys` distinct zero-padded keys.
fn check_key_size(keys: u64, key_size: usize) -> anyhow::Result<()> {
    let digits = (keys.max(1) - 1).to_string().len();
    anyhow::ensure!(
        key_size >= digits,
        "--key-size {key_size} cannot hold {keys} distinct keys (need at least {digits} bytes)"
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Micro,
    Etcd,
    /// Micro with `--auth-disabled`: the same run's baseline for what auth costs (its rows'
    /// ratio is Micro / this).
    MicroAuthOff,
    /// Micro with `--metrics-disabled`: the baseline for what recording metrics costs.
    MicroMetricsOff,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Micro => "micro",
            Target::Etcd => "etcd",
            Target::MicroAuthOff => "micro-auth-off",
            Target::MicroMetricsOff => "micro-metrics-off",
        }
    }

    /// A Micro cluster, whatever its flags.
    pub fn is_micro(self) -> bool {
        self == Target::Micro || self.variant_flag().is_some()
    }

    /// For a Micro variant (a baseline Micro is compared with), the server flag that makes it.
    pub fn variant_flag(self) -> Option<&'static str> {
        match self {
            Target::MicroAuthOff => Some("--auth-disabled"),
            Target::MicroMetricsOff => Some("--metrics-disabled"),
            Target::Micro | Target::Etcd => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Write a random key of the key space
    Put,
    /// Linearizable read of a random (preloaded) key
    Get,
    /// Serializable read (the connected node's copy) of a random (preloaded) key
    GetSerializable,
    /// 90% linearizable get, 10% put
    Mixed,
    /// Put, while one watcher per key prefix (up to 10 prefixes, by the key's leading digit)
    /// follows every change: what watch delivery costs the write path
    PutWatched,
    /// Linearizable lookup of one of 100 registered services with 3 nodes each: Micro's
    /// registry.GetService; on etcd, a range read of the service's key prefix (one key per
    /// node, the way etcd-based registries keep them)
    RegistryGet,
    /// Lock, then unlock, a lock of this client's own (uncontended): Micro's sync.Sync, etcd's
    /// v3lock service; each client holds one lease for its locks
    Lock,
    /// Lock, then unlock, one lock every client wants (contended)
    LockContended,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::GetSerializable => "get-serializable",
            Workload::Mixed => "mixed",
            Workload::PutWatched => "put-watched",
            Workload::RegistryGet => "registry-get",
            Workload::Lock => "lock",
            Workload::LockContended => "lock-contended",
        }
    }

    /// The gRPC method of Micro's that the workload's requests (mostly) are, for the stage
    /// breakdown.
    pub fn grpc_method(self) -> Option<&'static str> {
        match self {
            Workload::Put | Workload::PutWatched => Some("/store.Store/Write"),
            Workload::Get | Workload::GetSerializable | Workload::Mixed => {
                Some("/store.Store/Read")
            }
            Workload::RegistryGet => Some("/registry.Registry/GetService"),
            Workload::Lock | Workload::LockContended => Some("/sync.Sync/Lock"),
        }
    }

    /// Whether the workload reads keys that must exist (so the key space is preloaded).
    pub fn reads(self) -> bool {
        matches!(
            self,
            Workload::Get | Workload::GetSerializable | Workload::Mixed
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Systems to measure, comma separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "micro,etcd")]
    pub target: Vec<Target>,
    /// Workloads, comma separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "put,get,get-serializable,mixed"
    )]
    pub workload: Vec<Workload>,
    /// Concurrent closed-loop clients per cell, comma separated (dealt round-robin to the
    /// followers first, then the leader: client 0 is on a follower in both systems)
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub clients: Vec<usize>,
    /// Connections the clients share per node, comma separated: 0 gives every client its
    /// own; N multiplexes the clients of a node over N channels (how services share a client)
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub conns: Vec<usize>,
    /// Size of the key space (keys 0..N, zero padded to --key-size)
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key length in bytes
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value length in bytes
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Measured time per cell (one target, one workload, one client count): 500ms, 10s, 1m
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Unmeasured load before each cell's measurement starts
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// The `etcd` binary (default: `etcd` on PATH, installed by bench/scripts/install-etcd)
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// After the cells, measure watch fan-out: this many watchers of one key (0: skip)
    #[arg(long, default_value_t = 0)]
    pub fanout_watchers: usize,
    /// Writes whose fan-out is measured
    #[arg(long, default_value_t = 5)]
    pub fanout_changes: usize,
    #[command(flatten)]
    pub common: Common,
}

impl CompareArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.target.is_empty(), "--target is empty");
        anyhow::ensure!(!self.workload.is_empty(), "--workload is empty");
        anyhow::ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|c| *c > 0),
            "--clients must list positive numbers"
        );
        anyhow::ensure!(self.keys > 0, "--keys must be positive");
        check_key_size(self.keys, self.key_size)?;
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        Ok(())
    }
}

/// `250ms`, `10s`, `2m`, or a bare number of seconds (no hours: a cell that long is a typo).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim().ends_with('h') {
        return Err(format!("`{}`: use ms, s or m for a benchmark", s.trim()));
    }
    micro_testkit::parse_duration(s)
}

/// The key prefixes the watchers of `put-watched` follow: the zero padding plus each leading
/// digit of the key space (at most 10), so every key is watched by exactly one watcher.
pub fn watch_prefixes(keys: u64, size: usize) -> Vec<String> {
    let digits = (keys.max(1) - 1).to_string().len();
    let pad = "0".repeat(size.saturating_sub(digits));
    let top = (keys.max(1) - 1).to_string();
    let first = top.chars().next().and_then(|c| c.to_digit(10)).unwrap_or(0);
    (0..=first).map(|d| format!("{pad}{d}")).collect()
}

/// Services registered for `registry-get`, and nodes per service.
pub const REGISTRY_SERVICES: u64 = 100;
pub const REGISTRY_NODES: u64 = 3;

/// Key `i` of the key space, zero padded to `size` bytes.
pub fn key(i: u64, size: usize) -> String {
    format!("{i:0size$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_exactly_one_watch_prefix() {
        for (keys, size) in [(100_000, 8), (1000, 8), (10, 4), (250, 3)] {
            let prefixes = watch_prefixes(keys, size);
            for i in 0..keys {
                let k = key(i, size);
                let n = prefixes
                    .iter()
                    .filter(|p| k.starts_with(p.as_str()))
                    .count();
                assert_eq!(n, 1, "{k} of {keys} keys: {prefixes:?}");
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn compare_command_line() {
        let cli = Cli::try_parse_from([
            "micro-bench",
            "compare",
            "--target",
            "micro,etcd",
            "--workload",
            "put,get-serializable,mixed",
            "--clients",
            "1,16,256",
            "--keys",
            "100000",
            "--duration",
            "20s",
            "--out",
            "/tmp/x",
        ])
        .unwrap();
        let Cmd::Compare(a) = cli.cmd else {
            panic!("not a compare command")
        };
        assert_eq!(a.target, vec![Target::Micro, Target::Etcd]);
        assert_eq!(
            a.workload,
            vec![Workload::Put, Workload::GetSerializable, Workload::Mixed]
        );
        assert_eq!(a.clients, vec![1, 16, 256]);
        assert_eq!(a.duration, Duration::from_secs(20));
        assert_eq!((a.key_size, a.value_size), (8, 256));
        a.validate().unwrap();
        assert!(Cli::try_parse_from(["micro-bench", "compare", "--workload", "scan"]).is_err());
    }

    #[test]
    fn keys_are_fixed_width() {
        assert_eq!(key(42, 8), "00000042");
        assert_eq!(key(99_999, 8).len(), 8);
        let a = Cli::try_parse_from([
            "micro-bench",
            "compare",
            "--keys",
            "1000",
            "--key-size",
            "2",
        ])
        .unwrap();
        let Cmd::Compare(a) = a.cmd else {
            panic!("not a compare command")
        };
        assert!(a.validate().is_err());
    }

    #[test]
    fn compare_defaults_cover_every_workload() {
        let cli = Cli::try_parse_from(["micro-bench", "compare"]).unwrap();
        let Cmd::Compare(a) = cli.cmd else {
            panic!("not a compare command")
        };
        assert_eq!(
            a.workload,
            vec![
                Workload::Put,
                Workload::Get,
                Workload::GetSerializable,
                Workload::Mixed
            ]
        );
        assert_eq!(a.clients, vec![1, 16, 256]);
    }

    #[test]
    fn streams_command_line() {
        let cli = Cli::try_parse_from(["micro-bench", "streams"]).unwrap();
        let Cmd::Streams(a) = cli.cmd else {
            panic!("not a streams command")
        };
        assert_eq!(a.target, vec![StreamTarget::Micro, StreamTarget::Jetstream]);
        assert_eq!(a.clients, vec![1, 16, 64]);
        assert_eq!(a.replay_events, 1_000_000);
        assert_eq!(a.payload_size, 256);
        a.validate().unwrap();
        let cli = Cli::try_parse_from([
            "micro-bench",
            "streams",
            "--target",
            "jetstream",
            "--clients",
            "4,8",
            "--replay-events",
            "0",
            "--duration",
            "500ms",
        ])
        .unwrap();
        let Cmd::Streams(a) = cli.cmd else {
            panic!("not a streams command")
        };
        assert_eq!(a.target, vec![StreamTarget::Jetstream]);
        assert_eq!(a.clients, vec![4, 8]);
        assert_eq!(a.replay_events, 0);
        assert_eq!(a.duration, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["micro-bench", "streams", "--target", "etcd"]).is_err());
        let Cmd::Streams(a) = Cli::try_parse_from(["micro-bench", "streams", "--clients", "0"])
            .unwrap()
            .cmd
        else {
            panic!("not a streams command")
        };
        assert!(a.validate().is_err());
    }

    #[test]
    fn services_command_line() {
        let cli = Cli::try_parse_from(["micro-bench", "services"]).unwrap();
        let Cmd::Services(a) = cli.cmd else {
            panic!("not a services command")
        };
        assert_eq!(
            a.path,
            vec![
                ServicePath::Direct,
                ServicePath::Proxy,
                ServicePath::Gateway
            ]
        );
        assert_eq!(a.clients, vec![1, 16, 256]);
        assert_eq!((a.nodes, a.duration), (1, Duration::from_secs(5)));
        assert_eq!(
            [1, 16, 17, 256].map(|n| a.channels(n)),
            [1, 1, 2, 16],
            "clients / 16 channels, rounded up"
        );
        a.validate().unwrap();
        let cli = Cli::try_parse_from([
            "micro-bench",
            "services",
            "--path",
            "proxy,direct",
            "--nodes",
            "2",
        ])
        .unwrap();
        let Cmd::Services(a) = cli.cmd else {
            panic!("not a services command")
        };
        assert_eq!(a.path, vec![ServicePath::Proxy, ServicePath::Direct]);
        assert!(a.validate().is_err(), "2 nodes is not a cluster size");
        assert!(Cli::try_parse_from(["micro-bench", "services", "--path", "etcd"]).is_err());
    }

    #[test]
    fn size_command_line() {
        let cli = Cli::try_parse_from(["micro-bench", "size"]).unwrap();
        let Cmd::Size(a) = cli.cmd else {
            panic!("not a size command")
        };
        assert_eq!(a.target, vec![Target::Micro, Target::Etcd]);
        assert_eq!((a.keys, a.key_size, a.value_size), (1_000_000, 8, 256));
        assert_eq!(a.settle, Duration::from_secs(10));
        a.validate().unwrap();
        let cli = Cli::try_parse_from([
            "micro-bench",
            "size",
            "--keys",
            "1000000",
            "--key-size",
            "5",
        ])
        .unwrap();
        let Cmd::Size(a) = cli.cmd else {
            panic!("not a size command")
        };
        assert!(
            a.validate().is_err(),
            "5 bytes cannot hold 1M distinct keys"
        );
    }
}
