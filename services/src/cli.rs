//! The `micro` command line. `micro server` runs a node; the rest are gRPC clients of one.
//! One module per building block (`cli/<block>.rs`); this file holds the top-level parser and
//! the output helpers they share.

mod auth;
mod broker;
mod call;
mod cluster;
mod config;
mod events;
mod lease;
mod lock;
mod new;
mod registry;
mod runtime;
mod server;
mod snapshot;
mod store;

use auth::{AuthCmd, EnvCmd, LoginArgs, Target};
use broker::{broker, BrokerCmd};
use cluster::{cluster, ClusterCmd};
use config::{config, ConfigCmd, Namespace};
use events::{events, EventsCmd};
use lease::{lease, LeaseCmd};
use lock::{election, lock, ElectionCmd, LockArgs};
use registry::{registry, services, Domain, RegistryCmd};
use server::{server, ServerArgs};
use snapshot::{snapshot, SnapshotCmd};
use store::{store, StoreCmd};

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
    /// gRPC address of the node to talk to (default: the env's, else 127.0.0.1:8081)
    #[arg(long, global = true, env = "MICRO_SERVER")]
    server: Option<String>,
    /// The env (named server + credentials) to use; default: the current one (`micro env`).
    /// Given before the command (`micro --env prod store list`): `micro run --env` sets a
    /// service's environment variables
    #[arg(long, short = 'e', env = "MICRO_ENV")]
    env: Option<String>,
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
    /// Dynamic config: get, set, del, watch
    Config {
        #[command(flatten)]
        namespace: Namespace,
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The names of every registered service
    Services {
        #[command(flatten)]
        domain: Domain,
    },
    /// The service registry: get, register, deregister, watch
    Registry {
        #[command(flatten)]
        domain: Domain,
        #[command(subcommand)]
        cmd: RegistryCmd,
    },
    /// Run a command while holding a lock: `micro lock NAME -- CMD ARGS...` (`list`: held locks)
    Lock(LockArgs),
    /// Leader elections: campaign, leader, observe
    Election {
        #[command(subcommand)]
        cmd: ElectionCmd,
    },
    /// Leases: records attached to one are deleted when it ends
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
    },
    /// Save, verify and restore snapshots (disaster recovery)
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// Log in: keeps a refresh token for the current env
    Login(LoginArgs),
    /// Forget the current env's credentials
    Logout,
    /// Who the CLI is logged in as
    User,
    /// The web dashboard's address, signed in as you: open it in a browser
    Dashboard,
    /// Named servers and their credentials: list, set, add, del
    Env {
        #[command(subcommand)]
        cmd: Option<EnvCmd>,
    },
    /// Accounts, rules and tokens
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
    /// Call a service's endpoint with a JSON request: `micro call greeter Say.Hello '{"name":"John"}'`
    Call {
        /// The registered service
        service: String,
        /// The endpoint, `Service.Method` (e.g. Say.Hello)
        endpoint: String,
        /// The request as a JSON object (default {})
        request: Option<String>,
    },
    /// A service's versions, nodes and endpoints with their fields
    Describe {
        /// The registered service
        service: String,
    },
    /// Create a service crate: proto, handler, test and README (`micro new greeter`)
    New(new::NewArgs),
    /// Build and run a service on the cluster: `micro run examples/greeter --instances 3`
    Run(runtime::RunArgs),
    /// What `micro run` runs: every instance, its node, status, restarts and uptime
    Status {
        /// Only this service (its name, or the path it was run from)
        name: Option<String>,
    },
    /// A service's output, from every instance on every node: `micro logs greeter -f`
    Logs(runtime::LogsArgs),
    /// Rebuild a service and restart its instances (`--instances` changes how many)
    Update {
        /// The service (its name, or the path it was run from)
        name: String,
        /// Run this many instances from now on (default: as many as before)
        #[arg(long, short = 'i', default_value_t = 0)]
        instances: i64,
    },
    /// Stop a service's instances and remove it
    Kill {
        /// The service (its name, or the path it was run from)
        name: String,
    },
    /// Any registered service is a command: `micro greeter say hello --name John`
    /// (`micro greeter --help` lists its endpoints)
    #[command(external_subcommand)]
    Service(Vec<String>),
    /// (internal) How the runtime starts an instance: dies with its node
    #[command(name = "runtime-exec", hide = true)]
    RuntimeExec {
        parent: u32,
        program: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::RuntimeExec {
        parent,
        program,
        args,
    } = &cli.cmd
    {
        let e = crate::runtime::supervisor::exec_child(*parent, program, args);
        eprintln!("micro runtime: cannot start {program}: {e}");
        return ExitCode::from(127);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        let target = Target::new(cli.server, cli.env)?;
        let t = &target;
        match cli.cmd {
            Cmd::Server(args) => server(args).await,
            Cmd::Store { cmd } => store(t, cli.output, cmd).await,
            Cmd::Cluster { cmd } => cluster(t, cli.output, cmd).await,
            Cmd::Snapshot { cmd } => snapshot(t, cli.output, cmd).await,
            Cmd::Events { cmd } => events(t, cli.output, cmd).await,
            Cmd::Broker { cmd } => broker(t, cli.output, cmd).await,
            Cmd::Lease { cmd } => lease(t, cli.output, cmd).await,
            Cmd::Lock(args) => lock(t, cli.output, args).await,
            Cmd::Election { cmd } => election(t, cli.output, cmd).await,
            Cmd::Config { namespace, cmd } => config(t, cli.output, namespace, cmd).await,
            Cmd::Services { domain } => services(t, cli.output, domain).await,
            Cmd::Registry { domain, cmd } => registry(t, cli.output, domain, cmd).await,
            Cmd::Login(args) => auth::login(t, cli.output, args).await,
            Cmd::Logout => auth::logout(t),
            Cmd::User => auth::user(t, cli.output).await,
            Cmd::Dashboard => auth::dashboard(t, cli.output).await,
            Cmd::Env { cmd } => auth::env(t, cli.output, cmd),
            Cmd::Auth { cmd } => auth::auth(t, cli.output, cmd).await,
            Cmd::Call {
                service,
                endpoint,
                request,
            } => call::call(t, cli.output, service, endpoint, request).await,
            Cmd::Describe { service } => call::describe(t, cli.output, service).await,
            Cmd::Service(args) => call::dynamic(t, cli.output, args).await,
            Cmd::New(args) => new::new(cli.output, args),
            Cmd::Run(args) => runtime::run(t, cli.output, args).await,
            Cmd::Status { name } => runtime::status(t, cli.output, name).await,
            Cmd::Logs(args) => runtime::logs(t, cli.output, args).await,
            Cmd::Update { name, instances } => {
                runtime::update(t, cli.output, name, instances).await
            }
            Cmd::Kill { name } => runtime::kill(t, cli.output, name).await,
            Cmd::RuntimeExec { .. } => unreachable!("handled before the runtime starts"),
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

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(headers.iter().map(|h| h.to_uppercase()));
    t
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command line's definition only when it is parsed: check all of it here
    /// (a flag clash in one subcommand would otherwise panic only when a user types it).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
