//! Observability on real processes: `/metrics` (valid for `promtool check metrics`, no token),
//! liveness and readiness over HTTP and gRPC, a request id followed from a follower to the
//! leader's apply, and what a killed leader and a cut-off node look like from outside.

use std::time::{Duration, Instant};

use micro_tests::{eventually, TestCluster};
use tonic_health::pb::health_check_response::ServingStatus;

const LONG: Duration = Duration::from_secs(30);
/// One cluster at a time: the leader-change test measures an election against a 5 s bound.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `promtool check metrics` on `text` (Debian's `prometheus` package, installed by
/// scripts/deps): any lint problem fails.
fn promtool_check(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("promtool: {e} (scripts/deps installs it)"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The value of the sample `series` (name with labels, exactly as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn metrics(c: &TestCluster, id: u64) -> anyhow::Result<String> {
    let resp = reqwest::get(format!("http://{}/metrics", c.spec(id).http)).await?;
    anyhow::ensure!(
        resp.status() == 200,
        "/metrics on node {id}: {}",
        resp.status()
    );
    Ok(resp.text().await?)
}

async fn ready(c: &TestCluster, id: u64) -> anyhow::Result<(u16, serde_json::Value)> {
    let resp = reqwest::get(format!("http://{}/health/ready", c.spec(id).http)).await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

async fn grpc_health(c: &TestCluster, id: u64) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.spec(id).grpc))?
        .connect()
        .await?;
    let resp = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status())
}

fn signal(c: &TestCluster, id: u64, sig: &str) -> anyhow::Result<()> {
    let pid = c
        .pid(id)
        .ok_or_else(|| anyhow::anyhow!("node {id} is not running"))?;
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_request_ids_on_three_nodes() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(LONG).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");

    // Readiness: every node, over HTTP and gRPC, without a token.
    for id in 1..=3 {
        let (code, body) = eventually("readiness", LONG, || async {
            Ok(ready(&c, id).await.ok().filter(|(code, _)| *code == 200))
        })
        .await?;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["leader"], leader, "{body}");
        let live = reqwest::get(format!("http://{}/health", c.spec(id).http)).await?;
        assert_eq!(live.status(), 200);
        // The gRPC status follows the same rule, re-evaluated every 250 ms.
        eventually("gRPC health serving", LONG, || async {
            Ok(grpc_health(&c, id)
                .await
                .ok()
                .filter(|s| *s == ServingStatus::Serving))
        })
        .await?;
    }

    // A write moves the leader's proposal histogram and the per-RPC counter.
    let before = metrics(&c, leader).await?;
    let proposals = |t: &str| sample(t, "micro_proposal_seconds_count").unwrap_or(0.0);
    let writes = |t: &str| {
        sample(
            t,
            r#"micro_grpc_requests_total{method="/store.Store/Write",code="Ok"}"#,
        )
        .unwrap_or(0.0)
    };
    c.client(leader)
        .await?
        .store()
        .write("observed", b"v".to_vec())
        .await?;
    let after = metrics(&c, leader).await?;
    assert!(proposals(&after) > proposals(&before), "{after}");
    assert_eq!(writes(&after), writes(&before) + 1.0);

    // Every node's page passes promtool and has the series operators ask for first.
    for id in 1..=3 {
        let text = metrics(&c, id).await?;
        promtool_check(&text)?;
        for series in [
            "micro_raft_term ",
            "micro_raft_state{state=\"leader\"} ",
            "micro_raft_leader_id ",
            "micro_raft_commit_index ",
            "micro_raft_applied_index ",
            "micro_raft_purged_index ",
            "micro_raft_log_entries ",
            "micro_raft_leader_changes_total ",
            "micro_watchdog_elections_total ",
            "micro_apply_seconds_bucket",
            "micro_log_fsync_seconds_count ",
            "micro_rocksdb_bytes{cf=\"log\",kind=\"sst\"} ",
            "micro_leases ",
            "micro_registry_nodes ",
            "micro_watchers ",
            "micro_consumers ",
            "micro_grpc_request_seconds_bucket",
            "micro_http_requests_total{route=\"health\",status=\"200\"} ",
        ] {
            assert!(text.contains(series), "node {id} has no {series}:\n{text}");
        }
        if id == leader {
            assert!(
                text.contains("micro_raft_replication_lag_entries{follower="),
                "{text}"
            );
        }
    }

    // A request id given to a follower shows in its log and in the leader's, and comes back.
    let token = c.admin_token().await?;
    let resp = reqwest::Client::new()
        .post(format!("http://{}/store/write", c.spec(follower).http))
        .bearer_auth(&token)
        .header("x-request-id", "trace-me-42")
        .json(&serde_json::json!({"record": {"key": "traced", "value": "aGk="}}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    let line_with = |log: String, what: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains("trace-me-42"))
    };
    assert!(
        line_with(c.log(follower), "forwarding a write to the leader"),
        "follower {follower}'s log:\n{}",
        c.log(follower)
    );
    assert!(
        line_with(c.log(leader), "write committed and applied"),
        "leader {leader}'s log:\n{}",
        c.log(leader)
    );

    // Kill the leader: the survivors count a leader change within 5 s.
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let mut changes = Vec::new();
    for &id in &survivors {
        let t = metrics(&c, id).await?;
        changes.push(sample(&t, "micro_raft_leader_changes_total").unwrap_or(0.0));
    }
    c.kill(leader);
    let killed = Instant::now();
    for (&id, &seen) in survivors.iter().zip(&changes) {
        eventually(
            "a leader change counted",
            Duration::from_secs(5),
            || async {
                let t = metrics(&c, id).await?;
                Ok(
                    (sample(&t, "micro_raft_leader_changes_total").unwrap_or(0.0) > seen)
                        .then_some(()),
                )
            },
        )
        .await?;
    }
    eprintln!(
        "survivors counted the leader change {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        reqwest::get(format!("http://{}/health/ready", c.spec(leader).http))
            .await
            .is_err(),
        "the killed node still answers"
    );

    // Cut the new leader off (paused): the remaining follower stops being ready.
    let new_leader = c.wait_leader(LONG).await?;
    let alone = *survivors
        .iter()
        .find(|i| **i != new_leader)
        .expect("two survivors");
    signal(&c, new_leader, "-STOP")?;
    let cut_off = async {
        let (code, body) = eventually("the cut-off node reports not ready", LONG, || async {
            Ok(ready(&c, alone).await.ok().filter(|(code, _)| *code == 503))
        })
        .await?;
        eventually("gRPC health agrees", LONG, || async {
            Ok(grpc_health(&c, alone)
                .await
                .ok()
                .filter(|s| *s == ServingStatus::NotServing))
        })
        .await?;
        anyhow::Ok((code, body))
    }
    .await;
    // Resumed whatever happened, so a failure leaves no stopped process behind.
    let resumed = signal(&c, new_leader, "-CONT");
    let (code, body) = cut_off?;
    resumed?;
    assert_eq!(code, 503);
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // Together again, it is ready again.
    eventually("ready again", LONG, || async {
        Ok(ready(&c, alone).await.ok().filter(|(code, _)| *code == 200))
    })
    .await?;
    Ok(())
}

/// With `--otlp-endpoint`, requests, a follower's forward and the leader's proposal reach an
/// OpenTelemetry collector (a stand-in here: it keeps the OTLP/HTTP bodies it is sent) as
/// spans carrying the caller's request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    use std::sync::{Arc, Mutex};
    let bodies: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("bodies").extend_from_slice(&body);
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = format!("http://{}/v1/traces", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut c = TestCluster::new(3).with_args(&["--otlp-endpoint", &collector]);
    for id in 1..=3 {
        c.spawn(id)?;
    }
    let leader = c.wait_leader(LONG).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let token = c.admin_token().await?;
    let resp = reqwest::Client::new()
        .post(format!("http://{}/store/write", c.spec(follower).http))
        .bearer_auth(&token)
        .header("x-request-id", "otlp-span-7")
        .json(&serde_json::json!({"record": {"key": "spanned", "value": "aGk="}}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    // Spans are batched (every 5 s by default): wait for the ones of each kind to arrive.
    // Protobuf keeps strings as they are, so the names and the id are found in the bytes.
    let has = |needle: &str| {
        let b = bodies.lock().expect("bodies");
        b.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    eventually("spans at the collector", LONG, || async {
        Ok([
            "otlp-span-7",
            "forwarded_write",
            "propose",
            "/store.Store/Write",
            "micro.node_id",
        ]
        .iter()
        .all(|n| has(n))
        .then_some(()))
    })
    .await?;
    Ok(())
}

/// With `MICRO_TIMELINE_DIR` set, every node stamps the steps of a write (for `micro-bench
/// timeline`): a write taken by a follower shows its forward on the follower, the proposal
/// and apply on the leader, and the replication on the other follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_stamped_on_every_node_it_passes_with_micro_timeline_dir() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let mut c = TestCluster::new(3).with_env("MICRO_TIMELINE_DIR", &dir.path().to_string_lossy());
    for id in 1..=3 {
        c.spawn(id)?;
    }
    let leader = c.wait_leader(LONG).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let other = (1..=3)
        .find(|i| *i != leader && *i != follower)
        .expect("another follower");
    let token = c.admin_token().await?;
    let resp = reqwest::Client::new()
        .post(format!("http://{}/store/write", c.spec(follower).http))
        .bearer_auth(&token)
        .json(&serde_json::json!({"record": {"key": "stamped", "value": "aGk="}}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let steps = |id: u64| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(dir.path().join(format!("n{id}.tsv")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(t, _)| t.parse::<u128>().is_ok())
            .map(|(_, step)| step.to_string())
            .collect()
    };
    let expected = [
        (
            follower,
            &[
                "write.start",
                "forward.sent",
                "forward.answered",
                "write.done",
            ][..],
        ),
        (
            leader,
            &[
                "forward.received",
                "propose.start",
                "append.durable",
                "replicate.sent",
                "replicate.answered",
                "apply.done",
                "propose.done",
                "forward.answering",
            ][..],
        ),
        (
            other,
            &[
                "replicate.received",
                "append.durable",
                "replicate.answering",
            ][..],
        ),
    ];
    // Each node writes its stamps out a few times a second.
    eventually("every node's stamps of the write", LONG, || async {
        Ok(expected
            .iter()
            .all(|(id, want)| {
                let have = steps(*id);
                want.iter().all(|s| have.contains(*s))
            })
            .then_some(()))
    })
    .await?;
    Ok(())
}
