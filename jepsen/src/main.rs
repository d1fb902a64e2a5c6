//! `micro-jepsen`: run a fault-injection test against a real Micro cluster, or re-check a
//! recorded history. Exit code: 0 valid, 1 anomaly, 2 unknown or harness error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use micro_jepsen::corrupt::Kind;
use micro_jepsen::nemesis::{Fault, Schedule};
use micro_jepsen::workload::Workload;
use micro_jepsen::{checker, history, parse_duration, Config, Validity};

#[derive(Parser)]
#[command(
    name = "micro-jepsen",
    about = "Fault injection against a real Micro cluster, with linearizability and set checkers"
)]
struct Args {
    /// Cluster size
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Workloads, comma separated: register, set, streams, groups, lock
    #[arg(long, default_value = "register")]
    workload: String,
    /// Faults, comma separated: kill, pause, partition (all kinds), partition-one,
    /// partition-leader, partition-split, partition-bridge, partition-oneway, membership,
    /// corrupt, pause-holder (lock workload), all (everything but corrupt), none
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// How long clients run (60s, 2m, ...)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    time: Duration,
    /// Operations per second over all clients
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seed of the fault schedule and the clients' choices
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory: history.jsonl, results.json, timeline.html, node logs
    #[arg(long, default_value = "jepsen-out")]
    out: PathBuf,
    /// Run the servers with MICRO_PLANTED_BUG_STALE_READS=1 (debug builds of micro only)
    #[arg(long)]
    planted_bug: bool,
    /// Run the servers with MICRO_PLANTED_BUG_GROUPS=KIND (debug builds of micro only):
    /// lose-redelivery or redeliver-after-ack
    #[arg(long, value_name = "KIND")]
    planted_groups_bug: Option<String>,
    /// Run the servers with MICRO_PLANTED_BUG_FENCE=1 (debug builds of micro only): fences
    /// are dropped, so a lock holder that lost its lock still writes
    #[arg(long)]
    planted_fence_bug: bool,
    /// TTL of a lock holder's lease (lock workload; whole seconds, at least 1s)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    lock_ttl: Duration,
    /// Consumers per consumer group (groups workload)
    #[arg(long, default_value_t = 2)]
    group_consumers: usize,
    /// The micro binary (default: `micro` next to this executable)
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Client processes (process p talks to node p % nodes + 1)
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Client timeout per operation; a timed-out operation is indeterminate (info)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// Register keys in use at a time
    #[arg(long, default_value_t = 5)]
    keys: u64,
    /// Operations per register key before moving on to fresh keys
    #[arg(long, default_value_t = 300)]
    ops_per_key: u64,
    /// Shortest calm between faults
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    quiet_min: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    quiet_max: Duration,
    /// Shortest fault
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    hold_min: Duration,
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    hold_max: Duration,
    /// What the corrupt nemesis may do, comma separated: flip-log, truncate-log, flip-snapshot
    #[arg(long, default_value = "flip-log,truncate-log,flip-snapshot")]
    corruptions: String,
    /// Topics of the streams workload
    #[arg(long, default_value_t = 3)]
    topics: u64,
    /// The servers' --snapshot-every (default: Micro's); small values make snapshots (and the
    /// corrupt nemesis's snapshot damage) happen within a short run
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Keep the nodes' data dirs (under --out)
    #[arg(long)]
    keep_data: bool,
    /// Only check an existing history.jsonl (no cluster); writes results next to it
    #[arg(long, value_name = "HISTORY")]
    check: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(Validity::Valid) => ExitCode::SUCCESS,
        Ok(Validity::Anomaly) => ExitCode::from(1),
        Ok(Validity::Unknown) => ExitCode::from(2),
        Err(e) => {
            eprintln!("micro-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<Validity> {
    if let Some(path) = &args.check {
        let ops = history::load(path)?;
        let verdict = checker::check(&ops, checker::DEFAULT_BUDGET);
        print!("{}", verdict.summary());
        return Ok(verdict.valid);
    }
    let workloads = args
        .workload
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<Workload>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!workloads.is_empty(), "--workload is empty");
    let faults = Fault::parse_list(&args.nemesis).map_err(anyhow::Error::msg)?;
    let mut cfg = Config::new(args.bin.unwrap_or_else(micro_jepsen::default_bin), args.out);
    cfg.nodes = args.nodes;
    cfg.workloads = workloads;
    let corruptions = Kind::parse_list(&args.corruptions).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!corruptions.is_empty(), "--corruptions is empty");
    cfg.schedule = Schedule {
        faults,
        corruptions,
        quiet: (args.quiet_min, args.quiet_max),
        hold: (args.hold_min, args.hold_max),
        ..Schedule::default()
    };
    cfg.time = args.time;
    cfg.rate = args.rate;
    cfg.seed = args.seed;
    cfg.planted_bug = args.planted_bug;
    cfg.planted_groups_bug = args.planted_groups_bug;
    cfg.group_consumers = args.group_consumers;
    cfg.planted_fence_bug = args.planted_fence_bug;
    cfg.lock_ttl = args.lock_ttl;
    cfg.concurrency = args.concurrency;
    cfg.op_timeout = args.op_timeout;
    cfg.keys = args.keys;
    cfg.ops_per_key = args.ops_per_key;
    cfg.keep_data = args.keep_data;
    cfg.topics = args.topics;
    cfg.snapshot_every = args.snapshot_every;

    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(async {
        tokio::select! {
            r = micro_jepsen::run(&cfg) => r,
            _ = tokio::signal::ctrl_c() => {
                // dropping the run kills every node it started
                anyhow::bail!("interrupted")
            }
        }
    })?;
    print!("{}", report.verdict.summary());
    for o in &report.observations {
        println!("  observed: {o}");
    }
    println!(
        "  {:.1}s; history, results.json and timeline.html in {}",
        report.duration_s,
        report.out.display()
    );
    Ok(report.valid())
}
