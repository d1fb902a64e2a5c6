//! The runtime on real processes: `micro run` builds the greeter from source on a 3-node
//! cluster, one instance per node; instances are restarted when they die, moved when their
//! node dies (without a duplicate when it returns), logged on their node and read through any
//! node, and stopped by `micro kill`; a service that crashes at once is reported as a crash
//! loop with its last lines and its backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use micro_tests::{eventually, TestCluster};
use serde_json::Value;

/// A cold dev build of the greeter on a loaded 2-core machine; warm it takes seconds.
const BUILD: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(20);
/// The nodes' `--runtime-grace`.
const GRACE: Duration = Duration::from_secs(3);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

async fn cluster(log_bytes: u64) -> anyhow::Result<TestCluster> {
    let mut c = TestCluster::new(3).with_args(&[
        "--runtime-profile",
        "dev",
        "--runtime-grace",
        "3s",
        "--runtime-stop-grace",
        "5s",
        "--runtime-log-bytes",
        &log_bytes.to_string(),
    ]);
    for id in 1..=3 {
        c.spawn(id)?;
    }
    c.wait_leader(Duration::from_secs(10)).await?;
    c.admin_token().await?;
    Ok(c)
}

/// `micro status NAME -o json` through node `id`: the service's instances (none if it is gone).
fn instances(c: &TestCluster, id: u64, name: &str) -> anyhow::Result<Vec<Value>> {
    let (ok, out, err) = c.cli(id, &["status", "-o", "json"]);
    anyhow::ensure!(ok, "micro status failed: {err}");
    let all: Vec<Value> = serde_json::from_str(&out)?;
    Ok(all
        .into_iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["instances"].as_array().cloned())
        .unwrap_or_default())
}

fn field(i: &Value, k: &str) -> String {
    match &i[k] {
        Value::String(s) => s.clone(),
        Value::Null => "0".into(),
        v => v.to_string(),
    }
}

/// (index, node, pid) of every running instance, once all `n` run.
fn all_running(list: &[Value], n: usize) -> Option<Vec<(u64, u64, u32)>> {
    let running: Vec<_> = list
        .iter()
        .filter(|i| i["statusName"] == "running")
        .map(|i| {
            (
                field(i, "index").parse().unwrap_or(0),
                field(i, "node").parse().unwrap_or(0),
                field(i, "pid").parse().unwrap_or(0),
            )
        })
        .collect();
    (list.len() == n && running.len() == n).then_some(running)
}

/// The processes whose parent is `pid`, with their executables.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            let exe = std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|x| x.display().to_string())
                .unwrap_or_default();
            out.push((p, exe));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn greeters_of(c: &TestCluster, id: u64) -> Vec<u32> {
    c.pid(id)
        .map(|p| {
            children(p)
                .into_iter()
                .filter(|(_, exe)| exe.ends_with("/greeter"))
                .map(|(p, _)| p)
                .collect()
        })
        .unwrap_or_default()
}

/// The registry node ids of `greeter` (the instances register with the SDK's default TTL,
/// 90 s: an id that goes sooner was deregistered, by the instance or by the runtime).
fn registered_ids(c: &TestCluster, id: u64) -> BTreeSet<String> {
    let (ok, out, _) = c.cli(id, &["registry", "get", "greeter", "-o", "json"]);
    if !ok {
        return BTreeSet::new();
    }
    serde_json::from_str::<Vec<Value>>(&out)
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect()
}

fn registered_greeters(c: &TestCluster, id: u64) -> usize {
    registered_ids(c, id).len()
}

/// The ids the runtime gives the current instances: `NAME-nNODE-iINDEX`.
fn expected_ids(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .map(|i| format!("greeter-n{}-i{}", field(i, "node"), field(i, "index")))
        .collect()
}

fn hello(c: &TestCluster, id: u64) -> anyhow::Result<()> {
    let (ok, out, err) = c.cli(id, &["call", "greeter", "Say.Hello", r#"{"name":"John"}"#]);
    anyhow::ensure!(ok && out.contains("Hello John"), "call failed: {out}{err}");
    Ok(())
}

fn log_files(c: &TestCluster) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Ok(m) = e.metadata() {
                out.push((p, m.len()));
            }
        }
    }
    let mut out = Vec::new();
    for id in 1..=3 {
        walk(&c.spec(id).data_dir.join("runtime/logs"), &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_run_builds_supervises_moves_logs_and_kills_the_greeter() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    const LOG_BYTES: u64 = 64 * 1024;
    let mut c = cluster(LOG_BYTES).await?;
    let source = workspace().join("examples/greeter");

    // 1. Three instances from source, one per node, registered and answering.
    let started = Instant::now();
    let (ok, out, err) = c.cli(
        1,
        &[
            "run",
            &source.display().to_string(),
            "--instances",
            "3",
            "--wait",
        ],
    );
    assert!(ok, "micro run failed: {out}{err}");
    assert!(out.contains("greeter: 3 instance(s) running"), "{out}");
    let running = eventually("three greeters running", BUILD, || async {
        let list = instances(&c, 2, "greeter")?;
        if let Some(e) = list.iter().find(|i| i["statusName"] == "error") {
            anyhow::bail!("an instance failed: {e}");
        }
        Ok(all_running(&list, 3))
    })
    .await?;
    let nodes: BTreeSet<u64> = running.iter().map(|r| r.1).collect();
    assert_eq!(
        nodes,
        BTreeSet::from([1, 2, 3]),
        "one instance per node: {running:?}"
    );
    eprintln!(
        "three greeters running {:?} after micro run",
        started.elapsed()
    );
    eventually("three greeter nodes registered", SHORT, || async {
        Ok((registered_greeters(&c, 3) == 3).then_some(()))
    })
    .await?;
    for id in 1..=3 {
        hello(&c, id)?;
        assert_eq!(greeters_of(&c, id).len(), 1, "node {id} runs one greeter");
    }
    let (ok, table, _) = c.cli(1, &["status"]);
    assert!(
        ok && table.contains("RESTARTS") && table.contains("running"),
        "{table}"
    );

    // 4 (first half). Follow the logs through node 1 while the instances write.
    let mut follow = c
        .micro()
        .args(["--server", &c.spec(1).grpc, "logs", "greeter", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let follow_out = follow.stdout.take().expect("piped");
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
        {
            if seen_tx.send(line).is_err() {
                return;
            }
        }
    });

    // 2. kill -9 one greeter: restarted by its supervisor, calls answered throughout.
    let (victim_index, victim_node, victim_pid) = running[0];
    Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status()?;
    let http = c.http().await?;
    let url = format!("http://{}/greeter/say/hello?name=John", c.spec(1).http);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let restarted = eventually("the killed greeter restarted", SHORT, || async {
        // A call on every check: the service must answer while the instance is down.
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {}
            _ => {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let list = instances(&c, 1, "greeter")?;
        let i = &list[victim_index as usize];
        Ok((i["statusName"] == "running"
            && field(i, "restarts") == "1"
            && field(i, "pid") != victim_pid.to_string())
        .then(|| field(i, "pid")))
    })
    .await?;
    let (failed, calls) = (failed.into_inner(), calls.into_inner());
    assert_eq!(
        failed, 0,
        "{failed} of {calls} calls failed while an instance was down"
    );
    eprintln!("instance {victim_index} on node {victim_node} restarted as pid {restarted}");

    // 4 (second half): every instance's lines reach the follower on node 1, from every node.
    let mut pending: BTreeSet<String> = (0..3).map(|i| format!("greeter.{i} |")).collect();
    let deadline = tokio::time::Instant::now() + SHORT;
    while !pending.is_empty() {
        hello(&c, 2)?;
        let line = tokio::time::timeout_at(deadline, seen_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no log line from {pending:?} within {SHORT:?}"))?
            .ok_or_else(|| anyhow::anyhow!("micro logs -f ended"))?;
        if line.contains("Say/Hello") {
            pending.retain(|p| !line.starts_with(p.as_str()));
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // 3. kill -9 a whole node, the leader (the harder case: a new leader must take over
    // placement): its greeter dies with it, the instance is placed on a survivor within the
    // grace period + 10 s, and the node does not run a duplicate when it returns.
    let dead = c.wait_leader(SHORT).await?;
    let survivor = [1, 2, 3]
        .into_iter()
        .find(|id| *id != dead)
        .expect("a survivor");
    let orphan = greeters_of(&c, dead);
    assert_eq!(orphan.len(), 1);
    let moved_index = instances(&c, survivor, "greeter")?
        .iter()
        .find(|i| field(i, "node") == dead.to_string())
        .map(|i| field(i, "index"))
        .expect("an instance on the node");
    let killed = Instant::now();
    c.kill(dead);
    eventually("the dead node's greeter to exit with it", SHORT, || async {
        Ok((!alive(orphan[0])).then_some(()))
    })
    .await?;
    let moved = eventually(
        "the instance running on a survivor",
        GRACE + SHORT,
        || async {
            let list = instances(&c, survivor, "greeter")?;
            let i = list
                .iter()
                .find(|i| field(i, "index") == moved_index)
                .cloned()
                .unwrap_or_default();
            let node = field(&i, "node");
            Ok((i["statusName"] == "running" && node != dead.to_string()).then_some(node))
        },
    )
    .await?;
    let took = killed.elapsed();
    eprintln!("instance {moved_index} moved from node {dead} to node {moved} in {took:?}");
    assert!(
        took < GRACE + Duration::from_secs(10),
        "moved after {took:?}"
    );
    // The dead instance could not deregister (its node was gone): the leader did, long
    // before its 90 s TTL.
    eventually(
        "the registry to list exactly the placed instances",
        SHORT,
        || async {
            let want = expected_ids(&instances(&c, survivor, "greeter")?);
            let have = registered_ids(&c, survivor);
            Ok((have == want).then_some(()))
        },
    )
    .await?;
    hello(&c, survivor)?;
    c.spawn(dead)?;
    let target = c.applied(survivor).await?;
    c.wait_applied(target, SHORT).await?;
    // The returned node reconciles on every runtime change and every 2 s; watch it for two
    // passes: it must never start an instance that is placed elsewhere.
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert!(
            greeters_of(&c, dead).is_empty(),
            "node {dead} runs a duplicate greeter"
        );
        let total: usize = (1..=3).map(|id| greeters_of(&c, id).len()).sum();
        assert_eq!(total, 3, "three greeters in the cluster's process tree");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 4 (bound): no log file is over its bound.
    for (path, len) in log_files(&c) {
        assert!(len <= LOG_BYTES, "{} holds {len} bytes", path.display());
    }

    // 5. micro kill: every instance stops and deregisters; status shows none; no orphans.
    let (ok, out, err) = c.cli(3, &["kill", "greeter"]);
    assert!(ok, "micro kill failed: {out}{err}");
    eventually(
        "the greeter gone from status and the registry",
        SHORT,
        || async {
            let gone = instances(&c, 1, "greeter")?.is_empty() && registered_greeters(&c, 1) == 0;
            Ok(gone.then_some(()))
        },
    )
    .await?;
    for id in 1..=3 {
        let left = c.pid(id).map(children).unwrap_or_default();
        assert!(left.is_empty(), "node {id} still has children: {left:?}");
    }
    let (ok, _, err) = c.cli(1, &["status", "greeter"]);
    assert!(!ok && err.contains("micro run"), "{err}");
    Ok(())
}

/// A Cargo project (no dependencies: it builds in a second) whose program writes a lot and
/// exits with status 3 at once.
fn crashing_project(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = dir.join("crashy");
    std::fs::create_dir_all(p.join("src"))?;
    std::fs::write(
        p.join("Cargo.toml"),
        "[package]\nname = \"crashy\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )?;
    std::fs::write(
        p.join("src/main.rs"),
        r#"use std::io::Write;

fn main() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut starts = std::fs::OpenOptions::new().create(true).append(true).open("starts").unwrap();
    writeln!(starts, "{}", now.as_millis()).unwrap();
    for i in 0..200 {
        println!("starting up, step {i} of a long and chatty start-up sequence");
    }
    eprintln!("token={}", std::env::var("TOKEN").unwrap_or_default());
    eprintln!("fatal: no config at {}", std::env::var("CONFIG").unwrap_or_default());
    std::process::exit(3);
}
"#,
    )?;
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_exits_at_once_is_a_crash_loop_with_backoff_and_last_lines(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    const LOG_BYTES: u64 = 4096;
    let c = cluster(LOG_BYTES).await?;
    let project = crashing_project(c.root())?;

    // Bad input is refused naming the field, before anything is stored.
    let client = c.client(1).await?;
    let bad = |source: &str| micro::proto::runtime::CreateRequest {
        resource: Some(micro::proto::runtime::Resource {
            service: Some(micro::proto::runtime::Service {
                name: "bad".into(),
                source: source.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        options: None,
    };
    let not_a_project = c.root().display().to_string();
    for source in [
        "relative/dir",
        "github.com/micro/services/helloworld",
        "/no/such/dir",
        not_a_project.as_str(),
    ] {
        let e = client
            .runtime()
            .create(bad(source))
            .await
            .expect_err(source);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{source}: {e:?}");
        assert!(
            e.message().contains("resource.service.source"),
            "{}",
            e.message()
        );
    }
    let (ok, _, err) = c.cli(1, &["run", "/no/such/dir"]);
    assert!(!ok && err.contains("/no/such/dir"), "{err}");

    // A secret from config secrets, read when the instance starts.
    let (ok, _, err) = c.cli(1, &["config", "set", "crashy.token", "s3cr3t", "--secret"]);
    assert!(ok, "{err}");
    // --wait follows it until it fails, then says why, with its last lines, and exits 1.
    let (ok, out, err) = c.cli(
        2,
        &[
            "run",
            &project.display().to_string(),
            "--env",
            "CONFIG=/etc/crashy.toml",
            "--secret",
            "TOKEN=config:crashy.token",
            "--wait",
        ],
    );
    assert!(
        !ok,
        "micro run --wait succeeded for a crashing service: {out}"
    );
    assert!(err.contains("exited with exit status: 3"), "{err}");
    assert!(
        err.contains("fatal: no config at /etc/crashy.toml"),
        "{err}"
    );
    assert!(
        err.contains("token=s3cr3t"),
        "the config secret reached the program: {err}"
    );
    let (ok, status, _) = c.cli(1, &["status", "crashy", "-o", "json"]);
    assert!(ok && status.contains("crashy"), "{status}");
    assert!(
        !status.contains("crashy.token"),
        "status shows a secret: {status}"
    );
    let (node, info, output) = eventually(
        "a crash loop reported",
        Duration::from_secs(120),
        || async {
            let list = instances(&c, 3, "crashy")?;
            Ok(list.first().and_then(|i| {
                let restarts: u32 = field(i, "restarts").parse().unwrap_or(0);
                (i["statusName"] == "error" && restarts >= 3).then(|| {
                    (
                        field(i, "node"),
                        field(i, "error"),
                        i["output"].as_str().unwrap_or("").to_string(),
                    )
                })
            }))
        },
    )
    .await?;
    assert!(info.contains("exit status: 3"), "{info}");
    assert!(
        info.contains("crash loop") && info.contains("restarting in"),
        "{info}"
    );
    assert!(
        output.contains("fatal: no config at /etc/crashy.toml"),
        "{output}"
    );
    let (ok, table, _) = c.cli(1, &["status", "crashy"]);
    assert!(
        ok && table.contains("crash loop") && table.contains("last wrote"),
        "{table}"
    );

    // The backoff doubles: the gaps between starts, as the program itself recorded them.
    let node: u64 = node.parse()?;
    let starts_file = project.join("starts");
    let starts = eventually("four starts recorded", Duration::from_secs(60), || async {
        let starts: Vec<u64> = std::fs::read_to_string(&starts_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        Ok((starts.len() >= 4).then_some(starts))
    })
    .await?;
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, gap) in gaps.iter().take(3).enumerate() {
        let backoff = 1000 << k;
        assert!(
            *gap >= backoff,
            "start {} came {gap} ms after the one before (backoff {backoff} ms): {gaps:?}",
            k + 1
        );
    }

    // Logs through a node that does not run it, bounded on disk.
    let other = [1, 2, 3]
        .into_iter()
        .find(|id| *id != node)
        .expect("another node");
    let (ok, out, err) = c.cli(other, &["logs", "crashy", "-n", "3"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.starts_with("crashy.0 | ")), "{out}");
    let files: BTreeMap<PathBuf, u64> = log_files(&c).into_iter().collect();
    assert!(
        files
            .keys()
            .any(|p| p.to_string_lossy().ends_with(".log.1")),
        "rotated: {files:?}"
    );
    for (path, len) in &files {
        assert!(*len <= LOG_BYTES, "{} holds {len} bytes", path.display());
    }

    let (ok, _, err) = c.cli(1, &["kill", "crashy"]);
    assert!(ok, "{err}");
    eventually("crashy gone", SHORT, || async {
        Ok(instances(&c, 1, "crashy")?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}
