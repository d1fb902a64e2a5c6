//! Runs the instances placed on this node: builds their source, starts them with their
//! service's credentials, restarts them with exponential backoff when they exit, stops them
//! (SIGTERM, then SIGKILL) when they are deleted, moved or rebuilt, and reports every change
//! of what it sees into the log, so every node answers `status` the same.
//!
//! The supervisor reconciles the local view with the processes it runs whenever a runtime
//! change is applied here (and every few seconds, to retry what failed). Instances die with
//! the node: each is started (through `micro runtime-exec`) with a parent-death signal, so a
//! node killed with SIGKILL leaves no orphan behind to run beside the instance the leader
//! places elsewhere.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_cluster::Node;
use micro_state::views::runtime::{self as view, Report, Runtime, Service, Status};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch, OnceCell};

use super::logs::{LogDir, Writer};
use super::Config;

/// An instance that ran this long before exiting starts again after the first backoff step.
const STABLE: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Lines of output kept for the report of an exit.
const LAST_LINES: usize = 20;
/// How often the supervisor reconciles without being woken.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// (namespace, service, instance)
type Key = (String, String, u32);
/// A build's program, or why there is none; made once, awaited by every instance.
type Build = Arc<OnceCell<Result<PathBuf, String>>>;
/// The last lines of a process's stdout and stderr.
type Tails = [VecDeque<String>; 2];

struct Running {
    generation: u64,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What every instance task shares.
struct Shared {
    node: Node,
    cfg: Config,
    logs: LogDir,
    server: String,
    reports: mpsc::UnboundedSender<Report>,
    /// One build per (namespace, service, generation) on this node, shared by its instances.
    builds: Mutex<HashMap<(String, String, u64), Build>>,
}

pub async fn run(
    node: Node,
    cfg: Config,
    logs: LogDir,
    server: String,
    mut stop: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(reporter(node.clone(), rx));
    let shared = Arc::new(Shared {
        node: node.clone(),
        cfg,
        logs,
        server,
        reports: tx,
        builds: Mutex::new(HashMap::new()),
    });
    let mut feed = node.feed();
    let mut stopping_rx = node.stopping();
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut stopping: Vec<(Key, tokio::task::JoinHandle<()>)> = Vec::new();
    loop {
        if *stopping_rx.borrow() || *stop.borrow() {
            break;
        }
        reconcile(&shared, &mut running, &mut stopping);
        // Wait for a runtime change applied here, or the next periodic pass.
        let deadline = tokio::time::Instant::now() + RECONCILE_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping_rx.changed() => break,
                _ = stop.changed() => break,
                b = feed.recv() => match b {
                    Ok(b) if b.first_revision == u64::MAX
                        || b.changes.iter().any(|c| c.key.first() == Some(&micro_state::keys::RUNTIME)) => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        let _ = stopping_rx.changed().await;
                        break;
                    }
                },
            }
        }
    }
    // The node is stopping: stop every instance (they deregister) before it goes.
    for (_, r) in running.drain() {
        let _ = r.stop.send(true);
        stopping.push((Default::default(), r.task));
    }
    for (_, t) in stopping {
        let _ = t.await;
    }
}

fn reconcile(
    shared: &Arc<Shared>,
    running: &mut HashMap<Key, Running>,
    stopping: &mut Vec<(Key, tokio::task::JoinHandle<()>)>,
) {
    stopping.retain(|(_, t)| !t.is_finished());
    let services = match view::list(shared.node.view(), None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("runtime: cannot read the runtime view: {e}");
            return;
        }
    };
    let me = shared.node.id();
    let mut want: HashMap<Key, Arc<Service>> = HashMap::new();
    let mut generations = std::collections::HashSet::new();
    for svc in services {
        let svc = Arc::new(svc);
        generations.insert((
            svc.spec.namespace.clone(),
            svc.spec.name.clone(),
            svc.generation,
        ));
        for (i, inst) in svc.instances.iter().enumerate() {
            if inst.node != me {
                continue;
            }
            let key = (svc.spec.namespace.clone(), svc.spec.name.clone(), i as u32);
            if !svc.deleting {
                want.insert(key, svc.clone());
            } else if inst.status != Status::Stopped
                && !running.contains_key(&key)
                && !stopping.iter().any(|(k, _)| *k == key)
            {
                // Nothing of it runs here (any more): say so, so the delete can finish.
                let _ = shared.reports.send(Report {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    instance: key.2,
                    node: me,
                    generation: svc.generation,
                    status: Status::Stopped,
                    ..Default::default()
                });
            }
        }
    }
    // Builds of generations nobody wants any more.
    shared
        .builds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|k, _| generations.contains(k));
    running.retain(|key, r| {
        let keep = want
            .get(key)
            .is_some_and(|svc| svc.generation == r.generation && !r.task.is_finished());
        if !keep {
            let _ = r.stop.send(true);
            let task = std::mem::replace(&mut r.task, tokio::spawn(async {}));
            stopping.push((key.clone(), task));
        }
        keep
    });
    for (key, svc) in want {
        if running.contains_key(&key) {
            continue;
        }
        let (stop, stop_rx) = watch::channel(false);
        let generation = svc.generation;
        let task = tokio::spawn(instance(shared.clone(), key.clone(), svc, stop_rx));
        running.insert(
            key,
            Running {
                generation,
                stop,
                task,
            },
        );
    }
}

/// Proposes reports, the newest per instance first-come, retrying while the cluster cannot
/// take them (no quorum): a report is what the node sees now, so an older one is dropped
/// when a newer one for the same instance arrives.
async fn reporter(node: Node, mut rx: mpsc::UnboundedReceiver<Report>) {
    let mut pending: Vec<Report> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            merge(&mut pending, r);
        }
        let r = pending.remove(0);
        if let Err(e) = node.run::<Runtime>(view::Cmd::Report(r.clone())).await {
            if *node.stopping().borrow() {
                return;
            }
            tracing::warn!(service = %r.name, instance = r.instance, "runtime: cannot report ({e}); retrying");
            let newer = pending.iter().any(|p| {
                (&p.namespace, &p.name, p.instance) == (&r.namespace, &r.name, r.instance)
            });
            if !newer {
                pending.insert(0, r);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn merge(pending: &mut Vec<Report>, r: Report) {
    match pending
        .iter_mut()
        .find(|p| (&p.namespace, &p.name, p.instance) == (&r.namespace, &r.name, r.instance))
    {
        Some(p) => *p = r,
        None => pending.push(r),
    }
}

/// One instance's life on this node, until it is told to stop.
async fn instance(
    shared: Arc<Shared>,
    key: Key,
    svc: Arc<Service>,
    mut stop: watch::Receiver<bool>,
) {
    let (ns, name, index) = key.clone();
    let log = shared.logs.writer(&ns, &name, index);
    let me = shared.node.id();
    let report = |status: Status,
                  restarts: u32,
                  started_ms: u64,
                  error: String,
                  output: String,
                  pid: u32| {
        let _ = shared.reports.send(Report {
            namespace: ns.clone(),
            name: name.clone(),
            instance: index,
            node: me,
            generation: svc.generation,
            status,
            restarts,
            started_ms,
            error,
            output,
            pid,
        });
    };
    report(Status::Building, 0, 0, String::new(), String::new(), 0);
    let built = tokio::select! {
        b = build(&shared, &svc, &log) => b,
        _ = stopped(&mut stop) => {
            report(Status::Stopped, 0, 0, String::new(), String::new(), 0);
            return;
        }
    };
    let program = match built {
        Ok(p) => p,
        Err(e) => {
            log.line("runtime", &format!("build failed: {e}"));
            let output = last_lines_of(&log);
            report(Status::Error, 0, 0, format!("build failed: {e}"), output, 0);
            // A failed build stays failed until `micro update` (a new generation).
            stopped(&mut stop).await;
            report(Status::Stopped, 0, 0, String::new(), String::new(), 0);
            return;
        }
    };
    let mut restarts = 0u32;
    let mut backoff = FIRST_BACKOFF;
    loop {
        report(
            Status::Starting,
            restarts,
            0,
            String::new(),
            String::new(),
            0,
        );
        let tail: Arc<Mutex<Tails>> = Default::default();
        let started = Instant::now();
        let started_child = secrets(&shared.node, &svc.spec)
            .map_err(std::io::Error::other)
            .and_then(|secrets| spawn(&shared, &svc, index, &program, &secrets));
        let exit = match started_child {
            Err(e) => format!("cannot start {}: {e}", program.display()),
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let started_ms = micro_cluster::now_ms();
                log.line("runtime", &format!("started pid {pid} on node {me}"));
                let pipes = pipe_output(&mut child, log.clone(), tail.clone());
                report(
                    Status::Running,
                    restarts,
                    started_ms,
                    String::new(),
                    String::new(),
                    pid,
                );
                tokio::select! {
                    status = child.wait() => {
                        // Let the pipes drain so the last lines are in the log and the report.
                        let _ = tokio::time::timeout(Duration::from_secs(1), pipes).await;
                        match status {
                            Ok(s) => format!("exited with {s} after {:.1} s", started.elapsed().as_secs_f64()),
                            Err(e) => format!("lost track of the process: {e}"),
                        }
                    }
                    _ = stopped(&mut stop) => {
                        report(Status::Stopping, restarts, started_ms, String::new(), String::new(), pid);
                        log.line("runtime", "stopping (SIGTERM)");
                        terminate(&mut child, shared.cfg.stop_grace, &log).await;
                        report(Status::Stopped, restarts, 0, String::new(), String::new(), 0);
                        return;
                    }
                }
            }
        };
        // It did not deregister (a crash): take it out of the registry now.
        super::deregister(&shared.node, &ns, &super::instance_id(&name, me, index)).await;
        if started.elapsed() >= STABLE {
            backoff = FIRST_BACKOFF;
        }
        restarts += 1;
        let error = format!(
            "{exit}; restarting in {} s (restart {restarts}){}",
            backoff.as_secs(),
            if restarts >= 3 && started.elapsed() < STABLE {
                ", crash loop"
            } else {
                ""
            }
        );
        log.line("runtime", &error);
        let output = {
            let t = tail.lock().unwrap_or_else(|e| e.into_inner());
            // stdout's last lines, then stderr's (where a crash usually says why): the two
            // pipes are read apart, so their relative order is unknown anyway.
            let lines: Vec<&str> = t
                .iter()
                .flat_map(|d| d.iter().map(String::as_str))
                .collect();
            bounded(lines.join("\n"))
        };
        report(Status::Error, restarts, 0, error, output, 0);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => {
                report(Status::Stopped, restarts, 0, String::new(), String::new(), 0);
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The end of `s` within the report's bound.
fn bounded(s: String) -> String {
    if s.len() <= view::MAX_OUTPUT_BYTES {
        return s;
    }
    let mut cut = s.len() - view::MAX_OUTPUT_BYTES;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s[cut..].to_string()
}

fn last_lines_of(log: &Writer) -> String {
    let lines = super::logs::read_all(log.path());
    let from = lines.len().saturating_sub(LAST_LINES);
    bounded(
        lines[from..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Copies the child's stdout and stderr into its log, keeping the last lines for reports.
fn pipe_output(
    child: &mut tokio::process::Child,
    log: Arc<Writer>,
    tail: Arc<Mutex<Tails>>,
) -> impl std::future::Future<Output = ()> {
    let mut tasks = Vec::new();
    let out = child.stdout.take().map(|p| {
        (
            Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            "stdout",
        )
    });
    let err = child.stderr.take().map(|p| {
        (
            Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            "stderr",
        )
    });
    for (pipe, stream) in out.into_iter().chain(err) {
        let k = usize::from(stream == "stderr");
        let (log, tail) = (log.clone(), tail.clone());
        tasks.push(tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.line(stream, &line);
                let mut tails = tail.lock().unwrap_or_else(|e| e.into_inner());
                let t = &mut tails[k];
                if t.len() == LAST_LINES / 2 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }));
    }
    async move {
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// SIGTERM to the instance's process group, SIGKILL after the grace period.
async fn terminate(child: &mut tokio::process::Child, grace: Duration, log: &Writer) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, rustix::process::Signal::TERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(s)) => log.line("runtime", &format!("stopped ({s})")),
        _ => {
            log.line(
                "runtime",
                &format!("still running {} s after SIGTERM: SIGKILL", grace.as_secs()),
            );
            signal_group(pid, rustix::process::Signal::KILL);
            let _ = child.wait().await;
        }
    }
}

fn signal_group(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Waits until `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A command that runs `program` through this binary's `runtime-exec`, which makes it die
/// with this node (a parent-death signal survives exec) and lead its own process group (so
/// stopping it stops what it started).
fn dying_with_us(program: &Path) -> tokio::process::Command {
    let me = std::env::current_exe().unwrap_or_else(|_| "micro".into());
    let mut cmd = tokio::process::Command::new(me);
    cmd.arg("runtime-exec")
        .arg(std::process::id().to_string())
        .arg(program)
        .arg("--");
    cmd.process_group(0).kill_on_drop(true);
    cmd
}

/// `micro runtime-exec PARENT PROGRAM -- ARGS`: asks for SIGTERM when `PARENT` dies, then
/// becomes `PROGRAM` (an error only if that fails).
pub fn exec_child(parent: u32, program: &str, args: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        return e.into();
    }
    // The node may have died before the signal was asked for: then nobody would send it.
    if rustix::process::getppid().map(|p| p.as_raw_pid() as u32) != Some(parent) {
        return std::io::Error::other("the supervising node is gone");
    }
    std::process::Command::new(program).args(args).exec()
}

/// The value a secret names: `config:PATH` is the config value at PATH in the service's
/// namespace (config secrets decrypted), read at every start so a changed secret applies on
/// the next one; anything else is the value itself.
pub(crate) const CONFIG_SECRET: &str = "config:";

fn secrets(node: &Node, spec: &view::Spec) -> Result<Vec<(String, String)>, String> {
    spec.secrets
        .iter()
        .map(|(k, v)| match v.strip_prefix(CONFIG_SECRET) {
            None => Ok((k.clone(), v.clone())),
            Some(path) => {
                let value = crate::grpc::config::secret_value(node, &spec.namespace, path)
                    .map_err(|e| format!("secret {k}: config {path}: {}", e.message()))?;
                match value {
                    serde_json::Value::Null => Err(format!(
                        "secret {k}: nothing at config path {path:?} in namespace {:?} (`micro config set {path} VALUE --secret`)",
                        spec.namespace
                    )),
                    serde_json::Value::String(s) => Ok((k.clone(), s)),
                    other => Ok((k.clone(), other.to_string())),
                }
            }
        })
        .collect()
}

fn spawn(
    shared: &Shared,
    svc: &Service,
    index: u32,
    program: &Path,
    secrets: &[(String, String)],
) -> std::io::Result<tokio::process::Child> {
    let spec = &svc.spec;
    let mut cmd = match spec.command.split_first() {
        Some((first, rest)) => {
            let mut c = dying_with_us(Path::new(first));
            c.args(rest);
            c
        }
        None => dying_with_us(program),
    };
    cmd.args(&spec.args)
        .current_dir(workdir(Path::new(&spec.source)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The node's own credentials and CLI settings are not the instance's.
    for k in [
        "MICRO_AUTH_TOKEN",
        "MICRO_AUTH_ID",
        "MICRO_AUTH_SECRET",
        "MICRO_ENV",
        "MICRO_NAMESPACE",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("MICRO_SERVER", &shared.server)
        .env("MICRO_AUTH_ID", &svc.account)
        .env("MICRO_AUTH_SECRET", &svc.secret)
        .env("MICRO_NAMESPACE", &spec.namespace)
        .env("MICRO_SERVICE_NAME", &spec.name)
        .env("MICRO_SERVICE_VERSION", &spec.version)
        .env("MICRO_SERVICE_INSTANCE", index.to_string())
        .env(
            "MICRO_SERVICE_NODE_ID",
            super::instance_id(&spec.name, shared.node.id(), index),
        )
        // Output goes to a file: no terminal colours (the service's env may turn them on).
        .env("NO_COLOR", "1");
    for e in &spec.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    for (k, v) in secrets {
        cmd.env(k, v);
    }
    cmd.spawn()
}

fn workdir(source: &Path) -> &Path {
    if source.is_dir() {
        source
    } else {
        source.parent().unwrap_or(Path::new("/"))
    }
}

/// The program to run: the source itself if it is a file, else the binary `cargo build`
/// makes of it (once per generation on this node, shared by its instances).
async fn build(shared: &Shared, svc: &Service, log: &Writer) -> Result<PathBuf, String> {
    // The front end decided what the source is; this node checks its own copy of the path.
    let source = PathBuf::from(&svc.spec.source);
    let unreadable = |e: std::io::Error| {
        format!(
            "source {} is not readable on node {}: {e}",
            source.display(),
            shared.node.id()
        )
    };
    match svc.spec.source_kind {
        view::SourceKind::Git => {
            return Err(format!(
                "{} is a git source and this node does not fetch code: clone it and `micro run` the directory",
                svc.spec.source
            ))
        }
        view::SourceKind::Executable => {
            std::fs::metadata(&source).map_err(unreadable)?;
            return Ok(source);
        }
        view::SourceKind::Cargo => {
            std::fs::metadata(source.join("Cargo.toml")).map_err(unreadable)?;
        }
    }
    let cell = shared
        .builds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((
            svc.spec.namespace.clone(),
            svc.spec.name.clone(),
            svc.generation,
        ))
        .or_default()
        .clone();
    if cell.initialized() {
        log.line("runtime", "using this generation's build");
    }
    cell.get_or_init(|| cargo_build(&shared.cfg.profile, &source, &svc.spec.entrypoint, log))
        .await
        .clone()
}

async fn cargo_build(
    profile: &str,
    source: &Path,
    entrypoint: &str,
    log: &Writer,
) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = tokio::process::Command::new(&cargo);
    cmd.arg("build")
        .arg("--message-format=json-render-diagnostics");
    match profile {
        "release" => {
            cmd.arg("--release");
        }
        "dev" | "debug" => {}
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    if !entrypoint.is_empty() {
        cmd.arg("--bin").arg(entrypoint);
    }
    cmd.current_dir(source)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0).kill_on_drop(true);
    let shown = format!(
        "cargo build{} in {}",
        if profile == "release" {
            " --release".to_string()
        } else {
            format!(" ({profile})")
        },
        source.display()
    );
    log.line("runtime", &format!("building: {shown}"));
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e} (is Rust installed on this node?)",
            cargo.to_string_lossy()
        )
    })?;
    let stderr = child.stderr.take();
    let diag = async {
        if let Some(e) = stderr {
            let mut lines = BufReader::new(e).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                log.line("build", &l);
            }
        }
    };
    let stdout = child.stdout.take();
    let artifacts = async {
        let mut found = Vec::new();
        if let Some(o) = stdout {
            let mut lines = BufReader::new(o).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(a) = artifact(&l, source) {
                    found.push(a);
                }
            }
        }
        found
    };
    let ((), found, status) = tokio::join!(diag, artifacts, child.wait());
    let status = status.map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "{shown} failed ({status}); its output is in the log"
        ));
    }
    let found: Vec<(String, PathBuf)> = found;
    let pick = match found.as_slice() {
        [] => Err(format!("{shown} made no executable: is it a binary crate?")),
        [(_, p)] => Ok(p.clone()),
        many => match many.iter().find(|(n, _)| n == entrypoint) {
            Some((_, p)) => Ok(p.clone()),
            None => Err(format!(
                "the package has several binaries ({}): pick one with --entrypoint",
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    }?;
    log.line(
        "runtime",
        &format!(
            "built {} in {:.1} s",
            pick.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(pick)
}

/// A binary of the package at `source` from one line of cargo's JSON messages.
fn artifact(line: &str, source: &Path) -> Option<(String, PathBuf)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" {
        return None;
    }
    let exe = v["executable"].as_str()?;
    let manifest = PathBuf::from(v["manifest_path"].as_str()?);
    let ours = std::fs::canonicalize(source.join("Cargo.toml")).ok()?;
    if std::fs::canonicalize(&manifest).ok()? != ours {
        return None;
    }
    let kinds = v["target"]["kind"].as_array()?;
    if !kinds.iter().any(|k| k == "bin") {
        return None;
    }
    Some((
        v["target"]["name"].as_str()?.to_string(),
        PathBuf::from(exe),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_packages_binary_in_cargos_messages() {
        let dir = std::env::temp_dir().join(format!("micro-artifact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname='x'\n").unwrap();
        let manifest = dir.join("Cargo.toml").display().to_string();
        let bin = format!(
            r#"{{"reason":"compiler-artifact","manifest_path":"{manifest}","target":{{"kind":["bin"],"name":"x"}},"executable":"/t/x"}}"#
        );
        let lib = format!(
            r#"{{"reason":"compiler-artifact","manifest_path":"{manifest}","target":{{"kind":["lib"],"name":"x"}},"executable":null}}"#
        );
        let dep = r#"{"reason":"compiler-artifact","manifest_path":"/elsewhere/Cargo.toml","target":{"kind":["bin"],"name":"y"},"executable":"/t/y"}"#;
        assert_eq!(artifact(&bin, &dir), Some(("x".into(), "/t/x".into())));
        assert_eq!(artifact(&lib, &dir), None);
        assert_eq!(artifact(dep, &dir), None);
        assert_eq!(artifact("not json", &dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reports_keep_the_end_of_long_output() {
        let long = "é".repeat(view::MAX_OUTPUT_BYTES);
        let b = bounded(long);
        assert!(b.len() <= view::MAX_OUTPUT_BYTES && b.chars().all(|c| c == 'é'));
    }
}
