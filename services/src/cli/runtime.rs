//! `micro run`, `status`, `logs`, `update`, `kill`: the runtime, spelled as Micro v3 spells it.

use micro::proto::runtime as pb;

use super::*;

#[derive(Args)]
pub(super) struct RunArgs {
    /// A Cargo project directory or an executable; every node must be able to read this path
    path: PathBuf,
    /// The service's name (default: the directory's or executable's name)
    #[arg(long)]
    name: Option<String>,
    /// How many instances to run, spread over the nodes
    #[arg(long, short = 'i', default_value_t = 1)]
    instances: i64,
    /// An environment variable for the instances, KEY=VALUE (repeatable)
    #[arg(long = "env", alias = "env_vars", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// A secret for the instances' environment, KEY=VALUE (repeatable; never shown);
    /// KEY=config:PATH takes the value from config (secrets decrypted) at every start
    #[arg(long = "secret", value_parser = parse_kv)]
    secrets: Vec<(String, String)>,
    /// The version to report (default: latest)
    #[arg(long)]
    version: Option<String>,
    /// Which binary of the package to run, when it has several
    #[arg(long)]
    entrypoint: Option<String>,
    /// Wait until every instance runs, showing progress (build, start); exit 1 if one fails
    /// (with its last lines), or after --wait-timeout
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (builds included)
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    wait_timeout: Duration,
    /// Arguments for the program
    #[arg(last = true)]
    args: Vec<String>,
}

/// The runtime's name for `arg`: a path's last component (what `micro run PATH` named it),
/// else `arg` itself.
fn name_of(arg: &str) -> String {
    let p = Path::new(arg);
    if arg.contains('/') || arg == "." || p.is_dir() {
        if let Ok(c) = std::fs::canonicalize(p) {
            if let Some(n) = c.file_name() {
                return n.to_string_lossy().into_owned();
            }
        }
    }
    arg.to_string()
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        service: Some(pb::Service {
            name: name.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub(super) async fn run(t: &Target, out: Output, a: RunArgs) -> anyhow::Result<ExitCode> {
    let source = std::fs::canonicalize(&a.path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; give a Cargo project directory or an executable",
            a.path.display()
        )
    })?;
    let name = match a.name {
        Some(n) => n,
        None => source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot name a service after {}: pass --name",
                    source.display()
                )
            })?,
    };
    let req = pb::CreateRequest {
        resource: Some(pb::Resource {
            service: Some(pb::Service {
                name: name.clone(),
                version: a.version.unwrap_or_default(),
                source: source.to_string_lossy().into_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        options: Some(pb::CreateOptions {
            args: a.args,
            env: a.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            secrets: a.secrets.into_iter().collect(),
            entrypoint: a.entrypoint.unwrap_or_default(),
            instances: a.instances,
            ..Default::default()
        }),
    };
    let client = t.connect().await?;
    client.runtime().create(req).await?;
    if a.wait {
        return wait_running(&client, out, &name, a.wait_timeout).await;
    }
    match out {
        Output::Json => {
            print_json(&json!({"name": name, "source": source, "instances": a.instances}))
        }
        Output::Table => {
            println!(
                "{name}: {} instance(s) of {} placed on the cluster; it builds and starts on each node",
                a.instances,
                source.display()
            );
            println!("follow it with `micro status {name}` and `micro logs {name} -f`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long (s) every instance must have been up for `micro run --wait` to call it running.
const SETTLE_S: i64 = 2;

/// Follows a new service until every instance runs (success), one fails (exit 1, with why and
/// its last lines) or `timeout` passes.
async fn wait_running(
    client: &Client,
    out: Output,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let deadline = tokio::time::Instant::now() + timeout;
    let req = || pb::ReadRequest {
        options: Some(pb::ReadOptions {
            service: name.to_string(),
            ..Default::default()
        }),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let services = client.runtime().read(req()).await?.into_inner().services;
        let Some(svc) = services.into_iter().next() else {
            bar.finish_and_clear();
            anyhow::bail!("{name} is gone (was it killed?)");
        };
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for i in &svc.instances {
            *counts.entry(i.status_name.as_str()).or_default() += 1;
        }
        let summary = counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        bar.set_message(format!("{name}: {summary}"));
        if let Some(failed) = svc.instances.iter().find(|i| i.status_name == "error") {
            bar.finish_and_clear();
            eprintln!(
                "{name}: instance {} on node {}: {}",
                failed.index, failed.node, failed.error
            );
            for l in failed.output.lines() {
                eprintln!("  {l}");
            }
            eprintln!("`micro logs {name}` has the rest; `micro kill {name}` stops it");
            return Ok(ExitCode::FAILURE);
        }
        let running = counts.get("running").copied().unwrap_or(0);
        // Up for a couple of seconds, not just started: a program that exits at once is
        // reported as failing, not as running.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let settled = svc.instances.iter().all(|i| now - i.started >= SETTLE_S);
        if running == svc.instances.len() && running > 0 && settled {
            bar.finish_and_clear();
            match out {
                Output::Json => print_json(&registry::proto_json_full(&svc, "runtime.Service")?),
                Output::Table => println!("{name}: {running} instance(s) running"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() > deadline {
            bar.finish_and_clear();
            anyhow::bail!("{name} is not running after {timeout:?} ({summary}); `micro status {name}` and `micro logs {name}` tell why");
        }
    }
}

pub(super) async fn status(
    t: &Target,
    out: Output,
    name: Option<String>,
) -> anyhow::Result<ExitCode> {
    let name = name.map(|n| name_of(&n));
    let req = pb::ReadRequest {
        options: Some(pb::ReadOptions {
            service: name.clone().unwrap_or_default(),
            ..Default::default()
        }),
    };
    let services = t
        .connect()
        .await?
        .runtime()
        .read(req)
        .await?
        .into_inner()
        .services;
    if out == Output::Json {
        let all = services
            .iter()
            .map(|s| registry::proto_json_full(s, "runtime.Service"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        print_json(&Value::Array(all));
        return Ok(ExitCode::SUCCESS);
    }
    if services.is_empty() {
        match &name {
            Some(n) => {
                anyhow::bail!("no service {n:?} is run by the runtime; `micro run PATH` starts one")
            }
            None => {
                println!("No service is run by the runtime; `micro run PATH` starts one.");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut t = table(&[
        "name", "version", "instance", "node", "status", "restarts", "uptime", "info",
    ]);
    for s in &services {
        for i in &s.instances {
            let uptime = if i.started > 0 && i.status_name == "running" {
                humantime::format_duration(Duration::from_secs((now - i.started).max(0) as u64))
                    .to_string()
            } else {
                "-".into()
            };
            let node = if i.node == 0 {
                "-".to_string()
            } else {
                i.node.to_string()
            };
            t.add_row(vec![
                s.name.clone(),
                s.version.clone(),
                i.index.to_string(),
                node,
                i.status_name.clone(),
                i.restarts.to_string(),
                uptime,
                i.error.clone(),
            ]);
        }
    }
    println!("{t}");
    if name.is_some() {
        for s in &services {
            for i in s.instances.iter().filter(|i| !i.output.is_empty()) {
                println!("\ninstance {} last wrote:", i.index);
                for l in i.output.lines() {
                    println!("  {l}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(super) struct LogsArgs {
    /// The service (its name, or the path it was run from)
    name: String,
    /// Keep printing new lines as they are written
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only lines of the last DURATION, e.g. 10m
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only the last N lines
    #[arg(long, short = 'n', default_value_t = 0)]
    count: i64,
}

pub(super) async fn logs(t: &Target, out: Output, a: LogsArgs) -> anyhow::Result<ExitCode> {
    let name = name_of(&a.name);
    let req = pb::LogsRequest {
        service: name.clone(),
        stream: a.follow,
        count: a.count,
        since: a.since.map_or(0, |d| d.as_secs().max(1) as i64),
        ..Default::default()
    };
    let mut stream = t.connect().await?.runtime().logs(req).await?.into_inner();
    use std::io::Write;
    while let Some(r) = stream.message().await? {
        let line = match out {
            Output::Json => serde_json::to_string(&json!({
                "timestamp": r.timestamp,
                "metadata": r.metadata,
                "message": r.message,
            }))?,
            Output::Table => {
                let who = match r.metadata.get("instance") {
                    Some(i) => format!("{name}.{i}"),
                    None => format!(
                        "node {}",
                        r.metadata.get("node").map_or("?", |n| n.as_str())
                    ),
                };
                match r.metadata.get("stream").map(String::as_str) {
                    Some("runtime") | Some("build") => {
                        format!("{who} | [{}] {}", r.metadata["stream"], r.message)
                    }
                    _ => format!("{who} | {}", r.message),
                }
            }
        };
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{line}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn update(
    t: &Target,
    out: Output,
    name: String,
    instances: i64,
) -> anyhow::Result<ExitCode> {
    let name = name_of(&name);
    let req = pb::UpdateRequest {
        resource: resource(&name),
        options: Some(pb::UpdateOptions {
            instances,
            ..Default::default()
        }),
    };
    t.connect().await?.runtime().update(req).await?;
    match out {
        Output::Json => print_json(&json!({"name": name, "updated": true})),
        Output::Table => println!("{name}: rebuilding and restarting every instance"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn kill(t: &Target, out: Output, name: String) -> anyhow::Result<ExitCode> {
    let name = name_of(&name);
    let req = pb::DeleteRequest {
        resource: resource(&name),
        options: None,
    };
    t.connect().await?.runtime().delete(req).await?;
    match out {
        Output::Json => print_json(&json!({"name": name, "deleted": true})),
        Output::Table => {
            println!("{name}: stopping every instance; it is removed once they have stopped")
        }
    }
    Ok(ExitCode::SUCCESS)
}
