//! The service framework on real processes: the `greeter` example registers with a 3-node
//! cluster and is called through every path a user has (HTTP gateway, `/rpc`, `micro call`,
//! the dynamic CLI, a plain gRPC client through a node's proxy), streaming included; calls
//! spread across instances and survive one dying; auth decides who may call it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use micro_tests::{eventually, raw_unary_as, ForeignProto, TestCluster};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);
const GREETER_PROTO: &str = include_str!("../../examples/greeter/proto/greeter.proto");
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn greeter_bin() -> PathBuf {
    let bin = micro_tests::micro_bin().with_file_name("greeter");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// A running greeter process, killed when dropped.
struct Greeter {
    child: Child,
    log: PathBuf,
}

impl Greeter {
    /// Starts a greeter registering through node `node` of `c`, as the local user would (the
    /// CLI's config dir holds the credentials), with a short TTL.
    fn start(c: &TestCluster, node: u64, n: usize, ttl_s: u64) -> anyhow::Result<Greeter> {
        let log = c.root().join(format!("greeter-{n}.log"));
        let child = Command::new(greeter_bin())
            .env("MICRO_SERVER", &c.spec(node).grpc)
            .env("MICRO_CONFIG_DIR", c.config_dir())
            .env("MICRO_REGISTER_TTL", ttl_s.to_string())
            .env("MICRO_REGISTER_INTERVAL", "1")
            .env("RUST_LOG", "warn")
            .env_remove("MICRO_AUTH_TOKEN")
            .env_remove("MICRO_AUTH_ID")
            .env_remove("MICRO_AUTH_SECRET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Greeter { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address it registered (from its start-up line), once it has.
    async fn address(&self) -> anyhow::Result<String> {
        eventually("the greeter to register", LONG, || async {
            Ok(self
                .log()
                .lines()
                .find_map(|l| l.split(" listening on ").nth(1))
                .and_then(|rest| rest.split(',').next())
                .map(str::to_string))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", self.log()))
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registered nodes of `greeter`, as node `id` sees them.
async fn nodes(c: &TestCluster, id: u64) -> anyhow::Result<Vec<String>> {
    let client = c.client(id).await?;
    match client.registry().get("greeter").await {
        Ok(v) => Ok(v
            .into_iter()
            .flat_map(|s| s.nodes)
            .map(|n| n.address)
            .collect()),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

async fn wait_nodes(c: &TestCluster, n: usize) -> anyhow::Result<Vec<String>> {
    eventually(&format!("{n} greeter nodes registered"), LONG, || async {
        let found = nodes(c, 1).await?;
        Ok((found.len() == n).then_some(found))
    })
    .await
}

/// `Say.Info` of one instance, called directly.
async fn info(addr: &str, proto: &ForeignProto) -> anyhow::Result<Value> {
    let bytes = raw_unary_as(addr, "/greeter.Say/Info", Vec::new(), None).await?;
    proto.decode("greeter.InfoResponse", &bytes)
}

fn cli_json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeter_walkthrough_on_every_path() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let g = Greeter::start(&c, 1, 1, 30)?;
    g.address().await?;
    // Every node serves it: the registry is replicated.
    for id in [2, 3] {
        eventually("node sees the greeter", LONG, || async {
            Ok((!nodes(&c, id).await?.is_empty()).then_some(()))
        })
        .await?;
    }
    let hello = json!({"msg": "Hello John"});
    let http = c.http().await?;

    // The gateway: GET with a query, POST with JSON, on every node.
    for id in 1..=3 {
        let url = format!("http://{}/greeter/say/hello?name=John", c.spec(id).http);
        let resp = http.get(&url).send().await?;
        assert_eq!(resp.status().as_u16(), 200, "node {id}");
        assert_eq!(resp.json::<Value>().await?, hello, "node {id}");
    }
    let url = format!("http://{}/greeter/say/hello", c.spec(2).http);
    let got: Value = http
        .post(&url)
        .body(r#"{"name":"John"}"#)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got, hello);

    // /rpc, as JSON and as a form.
    let rpc = format!("http://{}/rpc", c.spec(3).http);
    let got: Value = http
        .post(&rpc)
        .json(&json!({"service": "greeter", "endpoint": "Say.Hello", "request": {"name": "John"}}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got, hello);
    let got: Value = http
        .post(&rpc)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("service=greeter&method=Say.Hello&request=%7B%22name%22%3A%22John%22%7D")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got, hello);

    // An unknown endpoint names the ones that exist; an unknown service is a 404.
    let resp = http
        .get(format!("http://{}/greeter/say/nope", c.spec(1).http))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await?;
    assert!(
        body["detail"].as_str().unwrap_or("").contains("Say.Hello"),
        "{body}"
    );
    let resp = http
        .get(format!("http://{}/nobody/here", c.spec(1).http))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 404);

    // The CLI: micro call, and the service as a command.
    let (ok, out, err) = c.cli(2, &["call", "greeter", "Say.Hello", r#"{"name":"John"}"#]);
    assert!(ok, "{err}");
    assert_eq!(cli_json(&out), hello, "{out}");
    let (ok, out, err) = c.cli(3, &["greeter", "say", "hello", "--name", "John"]);
    assert!(ok, "{err}");
    assert_eq!(cli_json(&out), hello, "{out}");
    let (ok, out, err) = c.cli(1, &["greeter", "--help"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("micro greeter say hello") && out.contains("--name string"),
        "{out}"
    );
    let (ok, out, _) = c.cli(1, &["services"]);
    assert!(ok && out.lines().any(|l| l.trim() == "greeter"), "{out}");
    let (ok, out, err) = c.cli(1, &["describe", "greeter"]);
    assert!(ok && out.contains("Say.Stream"), "{out} {err}");
    let (ok, _, err) = c.cli(1, &["nosuchthing", "at", "all"]);
    assert!(!ok && err.contains("micro services"), "{err}");

    // A plain gRPC client (no Micro library, no routing header) through any node's port.
    let proto = ForeignProto::compile("greeter.proto", GREETER_PROTO)?;
    let token = c.admin_token().await?;
    let req = proto.encode("greeter.Request", json!({"name": "John"}))?;
    for id in 1..=3 {
        let bytes = raw_unary_as(
            &c.spec(id).grpc,
            "/greeter.Say/Hello",
            req.clone(),
            Some(&token),
        )
        .await?;
        assert_eq!(proto.decode("greeter.Response", &bytes)?, hello);
    }

    // Server streaming: SSE through the gateway, a gRPC stream through the proxy.
    let resp = http
        .get(format!(
            "http://{}/greeter/say/stream?name=John&count=3",
            c.spec(2).http
        ))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await?;
    let msgs: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        msgs,
        (1..=3)
            .map(|i| json!({"msg": format!("Hello John ({i}/3)")}))
            .collect::<Vec<_>>()
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.spec(3).grpc))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut sreq = tonic::Request::new(bytes::Bytes::from(
        proto.encode("greeter.StreamRequest", json!({"name": "Ann", "count": 4}))?,
    ));
    sreq.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = grpc
        .server_streaming(sreq, "/greeter.Say/Stream".parse()?, micro_tests::RawCodec)
        .await?
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await? {
        got.push(proto.decode("greeter.Response", &m)?["msg"].clone());
    }
    assert_eq!(
        got,
        (1..=4)
            .map(|i| json!(format!("Hello Ann ({i}/4)")))
            .collect::<Vec<_>>()
    );
    let (ok, out, err) = c.cli(
        1,
        &[
            "greeter", "say", "stream", "--name", "Bo", "--count", "2", "-o", "json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_need_a_rule_and_carry_the_callers_token() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    let g = Greeter::start(&c, 1, 1, 30)?;
    g.address().await?;
    let url = |p: &str| format!("http://{}{p}", c.spec(1).http);

    // No token: 401, through the gateway and the proxy.
    let resp = reqwest::Client::new()
        .get(url("/greeter/say/hello?name=John"))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    let proto = ForeignProto::compile("greeter.proto", GREETER_PROTO)?;
    let req = proto.encode("greeter.Request", json!({"name": "John"}))?;
    let anon = raw_unary_as(&c.spec(1).grpc, "/greeter.Say/Hello", req.clone(), None).await;
    assert_eq!(anon.unwrap_err().code(), tonic::Code::Unauthenticated);

    // An account without a rule: 403.
    let (ok, _, err) = c.cli(
        1,
        &["auth", "create", "account", "alice", "--secret", "pw-alice"],
    );
    assert!(ok, "{err}");
    let alice = micro::Client::builder(&c.spec(1).grpc)
        .credentials(micro::Credentials::Account {
            id: "alice".into(),
            secret: "pw-alice".into(),
        })
        .connect()
        .await?;
    let bearer = format!("Bearer {}", alice.token().access_token);
    let get = |p: &str| {
        reqwest::Client::new()
            .get(url(p))
            .header("authorization", bearer.clone())
            .send()
    };
    assert_eq!(
        get("/greeter/say/hello?name=John").await?.status().as_u16(),
        403
    );

    // A rule for Say.Hello lets her call it (and only it).
    let (ok, _, err) = c.cli(
        1,
        &[
            "auth",
            "create",
            "rule",
            "hello",
            "--scope",
            "*",
            "--resource",
            "service:greeter:Say.Hello",
        ],
    );
    assert!(ok, "{err}");
    let resp = get("/greeter/say/hello?name=John").await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await?, json!({"msg": "Hello John"}));
    let through_proxy = raw_unary_as(
        &c.spec(1).grpc,
        "/greeter.Say/Hello",
        req,
        Some(&alice.token().access_token),
    )
    .await?;
    assert_eq!(
        proto.decode("greeter.Response", &through_proxy)?,
        json!({"msg": "Hello John"})
    );
    assert_eq!(get("/greeter/say/info").await?.status().as_u16(), 403);

    // With Say.Info granted too, the handler sees who called.
    let (ok, _, err) = c.cli(
        1,
        &[
            "auth",
            "create",
            "rule",
            "info",
            "--scope",
            "*",
            "--resource",
            "service:greeter:Say.Info",
        ],
    );
    assert!(ok, "{err}");
    let resp = get("/greeter/say/info").await?;
    assert_eq!(resp.status().as_u16(), 200);
    let who: Value = resp.json().await?;
    assert_eq!(
        (who["caller"].as_str(), who["namespace"].as_str()),
        (Some("alice"), Some("micro")),
        "{who}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_instances_and_survive_one_dying() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    const TTL_S: u64 = 4;
    let greeters: Vec<Greeter> = (1..=3)
        .map(|i| Greeter::start(&c, i, i as usize, TTL_S))
        .collect::<anyhow::Result<_>>()?;
    let mut addrs = Vec::new();
    for g in &greeters {
        addrs.push(g.address().await?);
    }
    wait_nodes(&c, 3).await?;
    let http = c.http().await?;
    let gateways: Vec<String> = (1..=3).map(|id| c.spec(id).http.clone()).collect();

    // 3,000 calls through the gateways, 16 at a time.
    let calls = |n: usize| {
        let http = http.clone();
        let gateways = gateways.clone();
        async move {
            let mut failures = Vec::new();
            let mut set = tokio::task::JoinSet::new();
            for w in 0..16 {
                let (http, gateways) = (http.clone(), gateways.clone());
                set.spawn(async move {
                    let mut bad = Vec::new();
                    for i in (w..n).step_by(16) {
                        let url = format!(
                            "http://{}/greeter/say/hello?name=n{i}",
                            gateways[i % gateways.len()]
                        );
                        match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {}
                            Ok(r) => bad.push(format!(
                                "{}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => bad.push(e.to_string()),
                        }
                    }
                    bad
                });
            }
            while let Some(r) = set.join_next().await {
                failures.extend(r.expect("worker"));
            }
            failures
        }
    };
    let failures = calls(3000).await;
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let proto = ForeignProto::compile("greeter.proto", GREETER_PROTO)?;
    let mut counts = Vec::new();
    for a in &addrs {
        // uint64 is a string in proto3's JSON mapping.
        let v = info(a, &proto).await?;
        counts.push(
            v["hellos"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0u64),
        );
    }
    assert_eq!(counts.iter().sum::<u64>(), 3000, "{counts:?}");
    assert!(counts.iter().all(|&n| n >= 600), "not spread: {counts:?}");

    // kill -9 one instance: calls keep succeeding, and it leaves the registry within its TTL.
    greeters[0].signal("-KILL");
    let killed = Instant::now();
    let failures = calls(300).await;
    assert!(
        failures.is_empty(),
        "{} failed after a kill, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    wait_nodes(&c, 2).await?;
    let gone_after = killed.elapsed();
    eprintln!("spread {counts:?}; the killed instance left the registry after {gone_after:?}");
    // The lease expires TTL after its last refresh (at most TTL after the kill), then the
    // leader's next expiry tick removes it.
    assert!(
        gone_after < Duration::from_secs(TTL_S + 5),
        "a killed instance stayed registered {gone_after:?} (TTL {TTL_S} s)"
    );
    assert!(!nodes(&c, 2).await?.contains(&addrs[0]));

    // SIGTERM another: it deregisters before it exits.
    greeters[1].signal("-TERM");
    let mut g1 = greeters;
    let status = tokio::task::spawn_blocking(move || {
        let s = g1[1].child.wait();
        (s, g1)
    });
    let (status, _keep) = tokio::time::timeout(LONG, status).await??;
    assert!(status?.success(), "greeter exits cleanly on SIGTERM");
    let left = nodes(&c, 3).await?;
    assert_eq!(
        left,
        vec![addrs[2].clone()],
        "only the third instance is left"
    );
    let failures = calls(100).await;
    assert!(failures.is_empty(), "{failures:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_new_makes_a_service_that_passes_its_own_test() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    let dir = tempfile::tempdir()?;
    let crate_dir = dir.path().join("demo");
    let out = c
        .micro()
        .args(["new", "demo", "--dir"])
        .arg(&crate_dir)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "Cargo.toml",
        "build.rs",
        "proto/demo.proto",
        "src/lib.rs",
        "src/main.rs",
        "tests/call.rs",
        "README.md",
    ] {
        assert!(crate_dir.join(f).exists(), "micro new wrote no {f}");
    }
    // A second time into the same place is refused, naming the remedy.
    let again = c
        .micro()
        .args(["new", "demo", "--dir"])
        .arg(&crate_dir)
        .output()?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--dir"));

    // Build and run its test against the running node, offline with this workspace's
    // versions (cargo's cache has them); its own target dir is kept between runs.
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(workspace.join("Cargo.lock"), crate_dir.join("Cargo.lock"))?;
    let target = micro_tests::micro_bin()
        .parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("micro-new"))
        .ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--offline"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .env("MICRO_SERVER", &c.spec(1).grpc)
        .env("MICRO_CONFIG_DIR", c.config_dir())
        .env_remove("MICRO_AUTH_TOKEN")
        .env_remove("MICRO_AUTH_ID")
        .env_remove("MICRO_AUTH_SECRET");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the new crate's tests failed:\n{log}");
    assert!(
        log.contains("call_answers_through_the_registry ... ok"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_services_follow_the_registry_and_subscribers_get_events() -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    let client = c.client(1).await?;
    // Two instances of a service whose API is grpc.health.v1 (a proto with generated code
    // at hand), started in-process.
    let instance = || {
        micro::Service::new("checker")
            .descriptors(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .add_service(tonic_health::server::health_reporter().1)
            .client(client.clone())
            .start()
    };
    let mut a = instance().await?;
    let b = instance().await?;
    let services = client.services().balance(micro::Balance::LeastOutstanding);
    let mut both = services.nodes("checker").await?;
    both.sort();
    let mut want = vec![a.address.clone(), b.address.clone()];
    want.sort();
    assert_eq!(both, want);
    let check = || {
        services.call::<HealthCheckRequest, HealthCheckResponse>(
            "checker",
            "Health.Check",
            HealthCheckRequest::default(),
        )
    };
    for _ in 0..20 {
        check().await?;
    }
    // A generated client over a balanced channel.
    let mut typed =
        tonic_health::pb::health_client::HealthClient::new(services.channel("checker").await?);
    typed.check(HealthCheckRequest::default()).await?;
    // One deregisters: the watch drops it, and calls keep working.
    a.stop().await?;
    eventually("the stopped instance to be dropped", LONG, || async {
        Ok((services.nodes("checker").await? == vec![b.address.clone()]).then_some(()))
    })
    .await?;
    for _ in 0..10 {
        check().await?;
    }

    // A worker with subscribers only: events (a consumer group) and the broker.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let (etx, btx) = (tx.clone(), tx);
    let mut worker = micro::Service::new("worker")
        .client(client.clone())
        .subscribe("orders", "workers", move |ev| {
            let tx = etx.clone();
            async move {
                let _ = tx
                    .send(format!("event:{}", String::from_utf8_lossy(&ev.payload)))
                    .await;
                Ok(())
            }
        })
        .subscribe_broker("presence", move |m| {
            let tx = btx.clone();
            async move {
                let _ = tx
                    .send(format!("broker:{}", String::from_utf8_lossy(&m.body)))
                    .await;
            }
        })
        .start()
        .await?;
    // The subscriptions start in the background: publish on a beat until each arrives.
    let mut seen = std::collections::BTreeSet::new();
    let mut beat = micro_tests::beat(Duration::from_millis(100));
    let deadline = Instant::now() + LONG;
    while !(seen.iter().any(|s: &String| s.starts_with("event:"))
        && seen.iter().any(|s| s.starts_with("broker:")))
    {
        assert!(Instant::now() < deadline, "subscribers got only {seen:?}");
        beat.tick().await;
        client
            .events()
            .publish("orders", b"o1".to_vec(), Default::default())
            .await?;
        client
            .broker()
            .publish(micro::proto::broker::PublishRequest {
                topic: "presence".into(),
                message: Some(micro::proto::broker::Message {
                    header: Default::default(),
                    body: b"here".to_vec(),
                }),
            })
            .await?;
        while let Ok(m) = rx.try_recv() {
            seen.insert(m);
        }
    }
    assert!(
        seen.contains("event:o1") && seen.contains("broker:here"),
        "{seen:?}"
    );
    worker.stop().await?;
    Ok(())
}
