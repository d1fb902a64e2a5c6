//! The service registry on three real processes: registration, TTL expiry through leases on
//! every node, watch order, surviving a leader kill and a whole-cluster restart, and a client
//! built only from Micro v3's registry.proto.

use std::time::{Duration, Instant};

use micro::proto::registry as pb;
use micro::registry::RegistryWatcher;
use micro_tests::{eventually, raw_unary, TestCluster};
use prost::Message;

const LONG: Duration = Duration::from_secs(30);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn greeter(nodes: &[&str]) -> pb::Service {
    pb::Service {
        name: "greeter".into(),
        version: "v1".into(),
        metadata: [("team".to_string(), "core".to_string())].into(),
        endpoints: vec![pb::Endpoint {
            name: "Say.Hello".into(),
            ..Default::default()
        }],
        nodes: nodes
            .iter()
            .map(|n| pb::Node {
                id: n.to_string(),
                address: format!("127.0.0.1:{}", 9000 + n.len()),
                ..Default::default()
            })
            .collect(),
        options: None,
    }
}

fn node_ids(services: &[pb::Service]) -> Vec<String> {
    let mut ids: Vec<String> = services
        .iter()
        .flat_map(|s| s.nodes.iter().map(|n| n.id.clone()))
        .collect();
    ids.sort();
    ids
}

/// The next change's (action, node ids).
async fn next(w: &mut RegistryWatcher) -> anyhow::Result<(String, Vec<String>)> {
    let r = tokio::time::timeout(LONG, w.next())
        .await
        .map_err(|_| anyhow::anyhow!("no registry change within {LONG:?}"))??
        .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
    let svc = r.service.unwrap_or_default();
    Ok((r.action, node_ids(&[svc])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_expire_everywhere_and_watchers_see_every_change_in_order(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let reg1 = c.client(1).await?.registry();
    let mut w = c
        .client(3)
        .await?
        .registry()
        .watch(Some("greeter"), 0)
        .await?;

    reg1.register(greeter(&["a"]), 3).await?;
    reg1.register(greeter(&["b"]), 3).await?;
    let registered = Instant::now();
    for id in [2, 3] {
        let got = c.client(id).await?.registry().get("greeter").await?;
        assert_eq!(node_ids(&got), vec!["a", "b"], "node {id}");
        assert_eq!(got[0].endpoints[0].name, "Say.Hello");
        assert_eq!(got[0].metadata["domain"], "micro");
    }
    // Keep b alive; a is not re-registered and must go from every node within TTL + 1 s.
    let keeper = {
        let reg = reg1.clone();
        tokio::spawn(async move {
            let mut every_second = micro_tests::beat(Duration::from_secs(1));
            loop {
                every_second.tick().await;
                let _ = reg.register(greeter(&["b"]), 3).await;
            }
        })
    };
    for id in [1, 2, 3] {
        let reg = c.client(id).await?.registry();
        eventually(&format!("node a gone on node {id}"), LONG, || async {
            Ok((node_ids(&reg.get("greeter").await?) == vec!["b"]).then_some(()))
        })
        .await?;
    }
    let gone = registered.elapsed();
    assert!(
        gone <= Duration::from_secs(4),
        "a stayed {gone:?} with a 3 s TTL"
    );
    keeper.abort();
    reg1.deregister(greeter(&["b"])).await?;
    assert!(reg1.get("greeter").await.unwrap_err().is_not_found());

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut w).await?);
    }
    let s = |a: &str, n: &[&str]| (a.to_string(), n.iter().map(|x| x.to_string()).collect());
    assert_eq!(
        seen,
        vec![
            s("create", &["a"]),
            s("update", &["a", "b"]),
            s("update", &["b"]),
            s("delete", &[]),
        ]
    );

    // Every change was also published on the registry's events topic, atomically with it.
    let mut c1 = c
        .client(2)
        .await?
        .events()
        .consume(micro::events::ConsumeRequest {
            topic: "registry.events".into(),
            from_start: true,
            stop_at_end: true,
            ..Default::default()
        })
        .await?;
    let mut kinds = Vec::new();
    while let Some(e) = c1.next().await? {
        let ev = pb::Event::decode(e.payload.as_slice())?;
        let svc = ev.service.unwrap_or_default();
        assert_eq!(svc.name, "greeter");
        kinds.push((ev.r#type, node_ids(&[svc])));
    }
    let k = |t: pb::EventType, n: &[&str]| (t as i32, n.iter().map(|x| x.to_string()).collect());
    assert_eq!(
        kinds,
        vec![
            k(pb::EventType::Create, &["a"]),
            k(pb::EventType::Update, &["a", "b"]),
            k(pb::EventType::Update, &["b"]),
            k(pb::EventType::Delete, &["b"]),
        ]
    );

    // The CLI lists and shows it the same way.
    reg1.register(greeter(&["c"]), 0).await?;
    let (ok, out, err) = c.cli(2, &["services"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "greeter");
    let (ok, out, err) = c.cli(2, &["registry", "get", "greeter", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v[0]["nodes"][0]["id"], "c");
    assert_eq!(v[0]["endpoints"][0]["name"], "Say.Hello");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_nodes_survive_a_leader_kill_and_a_whole_cluster_restart() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(LONG).await?;
    let survivor = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader)
        .expect("a survivor");
    let reg = c.client(survivor).await?.registry();
    reg.register(greeter(&["a", "b"]), 5).await?;
    let mut w = c
        .client(survivor)
        .await?
        .registry()
        .watch(Some("greeter"), 1)
        .await?;
    assert_eq!(next(&mut w).await?.0, "create");

    // Heartbeat every second through the survivor while the leader dies.
    let beating = {
        let reg = reg.clone();
        tokio::spawn(async move {
            let mut every_second = micro_tests::beat(Duration::from_secs(1));
            loop {
                every_second.tick().await;
                let _ = reg.register(greeter(&["a", "b"]), 5).await;
            }
        })
    };
    c.kill(leader);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        if let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(1), w.next()).await {
            anyhow::bail!(
                "a heartbeating service changed: {} {:?}",
                r.action,
                r.service
            );
        }
    }
    beating.abort();
    assert_eq!(node_ids(&reg.get("greeter").await?), vec!["a", "b"]);

    // Register something long-lived, restart every node: it is still there.
    c.spawn(leader)?;
    c.wait_leader(LONG).await?;
    reg.register(greeter(&["long"]), 600).await?;
    for id in [1, 2, 3] {
        c.stop(id)?;
    }
    for id in [1, 2, 3] {
        c.spawn(id)?;
    }
    c.wait_leader(LONG).await?;
    for id in [1, 2, 3] {
        let got = c.client(id).await?.registry().get("greeter").await?;
        assert!(
            node_ids(&got).contains(&"long".to_string()),
            "node {id}: {got:?}"
        );
    }
    Ok(())
}

/// Micro v3.3.0's registry.proto, written out from its definitions (names and field numbers)
/// without anything from this project: a stranger's client.
const V3_REGISTRY: &str = r#"
syntax = "proto3";
package registry;
service Registry {
  rpc GetService(GetRequest) returns (GetResponse) {};
  rpc Register(Service) returns (EmptyResponse) {};
  rpc Deregister(Service) returns (EmptyResponse) {};
  rpc ListServices(ListRequest) returns (ListResponse) {};
  rpc Watch(WatchRequest) returns (stream Result) {};
}
message Service { string name = 1; string version = 2; map<string,string> metadata = 3;
  repeated Endpoint endpoints = 4; repeated Node nodes = 5; Options options = 6; }
message Node { string id = 1; string address = 2; int64 port = 3; map<string,string> metadata = 4; }
message Endpoint { string name = 1; Value request = 2; Value response = 3; map<string,string> metadata = 4; }
message Value { string name = 1; string type = 2; repeated Value values = 3; }
message Options { int64 ttl = 1; string domain = 2; }
message Result { string action = 1; Service service = 2; int64 timestamp = 3; }
message EmptyResponse {}
message GetRequest { string service = 1; Options options = 2; }
message GetResponse { repeated Service services = 1; }
message ListRequest { Options options = 1; }
message ListResponse { repeated Service services = 1; }
message WatchRequest { string service = 1; Options options = 2; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_built_from_micro_v3_registry_proto_works_unchanged() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    let v3 = micro_tests::ForeignProto::compile("registry.proto", V3_REGISTRY)?;
    let msg = |name: &str, json: &str| v3.encode(name, serde_json::from_str(json)?);
    let decode = |name: &str, bytes: &[u8]| v3.decode(name, bytes);
    let addr = &c.spec(1).grpc;
    let svc = r#"{"name":"greeter","version":"1.0","nodes":[{"id":"greeter-1","address":"10.0.0.1:8080"}],
        "endpoints":[{"name":"Say.Hello","request":{"name":"Request","type":"Request","values":[{"name":"name","type":"string"}]}}],
        "options":{"ttl":"60"}}"#;
    raw_unary(
        addr,
        "/registry.Registry/Register",
        msg("registry.Service", svc)?,
    )
    .await?;
    let got = raw_unary(
        addr,
        "/registry.Registry/GetService",
        msg("registry.GetRequest", r#"{"service":"greeter"}"#)?,
    )
    .await?;
    let v = decode("registry.GetResponse", &got)?;
    assert_eq!(v["services"][0]["nodes"][0]["id"], "greeter-1");
    assert_eq!(
        v["services"][0]["endpoints"][0]["request"]["values"][0]["name"],
        "name"
    );
    let list = raw_unary(
        addr,
        "/registry.Registry/ListServices",
        msg("registry.ListRequest", "{}")?,
    )
    .await?;
    assert_eq!(
        decode("registry.ListResponse", &list)?["services"][0]["name"],
        "greeter"
    );
    raw_unary(
        addr,
        "/registry.Registry/Deregister",
        msg("registry.Service", svc)?,
    )
    .await?;
    let err = raw_unary(
        addr,
        "/registry.Registry/GetService",
        msg("registry.GetRequest", r#"{"service":"greeter"}"#)?,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The SDK's own types agree on the bytes.
    let ours = micro::proto::registry::Service::decode(msg("registry.Service", svc)?.as_slice())?;
    assert_eq!(ours.nodes[0].address, "10.0.0.1:8080");
    Ok(())
}
