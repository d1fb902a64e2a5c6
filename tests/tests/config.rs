//! Dynamic config on three real processes: merge, delete, secrets (never in plain text on
//! disk), a watcher that resumes on another node after its node is killed, and a client built
//! only from Micro v3's config.proto.

use std::time::Duration;

use micro::config::ConfigWatcher;
use micro::proto::config::WatchResponse;
use micro_tests::{raw_unary, TestCluster};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SECRET: &str = "correct-horse-battery-staple";

async fn next(w: &mut ConfigWatcher) -> anyhow::Result<Option<WatchResponse>> {
    match tokio::time::timeout(LONG, w.next()).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!(
            "no config change within {LONG:?} (after revision {})",
            w.resume_from() - 1
        ),
    }
}

fn seen(r: &WatchResponse) -> (u64, String, bool, String) {
    (
        r.revision,
        r.path.clone(),
        r.deleted,
        r.value.as_ref().map(|v| v.data.clone()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_merges_deletes_keeps_secrets_and_watchers_resume() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(LONG).await?;
    let watched = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    let other = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader && *i != watched)
        .expect("another follower");
    let config = c.client(leader).await?.config();
    let mut w = c.client(watched).await?.config().watch("a", 0).await?;

    config.set("", &json!({"a": {"b": 1}})).await?;
    config.set("", &json!({"a": {"c": 2}})).await?;
    for id in [1, 2, 3] {
        let got: Value = c
            .client(id)
            .await?
            .config()
            .get("a")
            .await?
            .expect("a")
            .value;
        assert_eq!(got, json!({"b": 1, "c": 2}), "node {id}");
    }
    config.delete("a.b").await?;
    let got: Value = config.get("a").await?.expect("a").value;
    assert_eq!(got, json!({"c": 2}));

    // Compare-and-set on the revision a read returned.
    let rev = config.get::<Value>("a.c").await?.expect("a.c").revision;
    let err = config
        .compare_and_set("a.c", &3, rev - 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    config.compare_and_set("a.c", &3, rev).await?;

    // A secret.
    config.set_secret("db.password", &SECRET).await?;
    for id in [1, 2, 3] {
        let cfg = c.client(id).await?.config();
        assert_eq!(
            cfg.get_json("db", false).await?.value,
            r#"{"password":"[secret]"}"#
        );
        let plain: String = cfg.get("db.password").await?.expect("secret").value;
        assert_eq!(plain, SECRET, "node {id}");
    }
    // A rotated key: new secrets use it, old ones stay readable.
    assert_eq!(config.rotate_key().await?, 2);
    config.set_secret("db.token", &"t2").await?;
    let both: Value = config.get("db").await?.expect("db").value;
    assert_eq!(both, json!({"password": SECRET, "token": "t2"}));
    let (ok, out, err) = c.cli(other, &["config", "get", "db"]);
    assert!(ok, "{err}");
    assert!(out.contains("[secret]") && !out.contains(SECRET), "{out}");

    // The watcher on `a` saw each change under a once, in order.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(seen(&next(&mut w).await?.expect("a change")));
    }
    let paths: Vec<(&str, bool, &str)> = got
        .iter()
        .map(|g| (g.1.as_str(), g.2, g.3.as_str()))
        .collect();
    // (The refused compare-and-set changed nothing.)
    assert_eq!(
        paths,
        vec![
            ("a.b", false, "1"),
            ("a.c", false, "2"),
            ("a.b", true, ""),
            ("a.c", false, "3")
        ]
    );
    // Kill its node; resume on another from the last revision + 1 and see exactly the rest.
    c.kill(watched);
    let resume = w.resume_from();
    config.set("a.d", &"after").await?;
    let mut w2 = c.client(other).await?.config().watch("a", resume).await?;
    let rest = seen(&next(&mut w2).await?.expect("a change"));
    assert_eq!((rest.1.as_str(), rest.3.as_str()), ("a.d", "\"after\""));
    assert!(rest.0 >= resume);

    // The plain text of the secret is nowhere in any data dir: not in a file's bytes (the
    // log's WAL is not compressed), nor in any decoded log record or view value.
    c.spawn(watched)?;
    c.wait_leader(LONG).await?;
    for id in [1, 2, 3] {
        c.stop(id)?;
    }
    for id in [1, 2, 3] {
        let dir = c.spec(id).data_dir.clone();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let bytes = std::fs::read(&p)?;
                    assert!(
                        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                        "{} holds the secret",
                        p.display()
                    );
                }
            }
        }
        let db = micro_log::Db::open(&dir.join("db"))?;
        let mut leaked = false;
        db.for_each_state(|k, v| {
            leaked |= [k, v]
                .iter()
                .any(|b| b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
            Ok::<_, std::convert::Infallible>(())
        })??;
        for (_, rec) in db.read_log(0, u64::MAX)? {
            leaked |= rec.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
        }
        assert!(
            !leaked,
            "node {id}'s database holds the secret in plain text"
        );
    }
    Ok(())
}

/// Micro v3.3.0's config.proto, written out from its definitions (names and field numbers)
/// without anything from this project.
const V3_CONFIG: &str = r#"
syntax = "proto3";
package config;
service Config {
  rpc Get(GetRequest) returns (GetResponse) {}
  rpc Set(SetRequest) returns (SetResponse) {}
  rpc Delete(DeleteRequest) returns (DeleteResponse) {}
  rpc Read(ReadRequest) returns (ReadResponse) {}
}
message Value { string data = 1; string format = 2; }
message Options { bool secret = 1; }
message SetRequest { string namespace = 1; string path = 2; Value value = 3; Options options = 4; }
message SetResponse {}
message DeleteRequest { string namespace = 1; string path = 2; }
message DeleteResponse {}
message GetRequest { string namespace = 1; string path = 2; Options options = 3; }
message GetResponse { Value value = 1; }
message ReadRequest { string namespace = 1; string path = 2; }
message ReadResponse { Change change = 1; }
message Change { string namespace = 1; string path = 2; ChangeSet changeSet = 3; }
message ChangeSet { string data = 1; string checksum = 2; string format = 3; string source = 4; int64 timestamp = 5; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_built_from_micro_v3_config_proto_works_unchanged() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    let v3 = micro_tests::ForeignProto::compile("config.proto", V3_CONFIG)?;
    let msg = |name: &str, json: Value| v3.encode(name, json);
    let decode = |name: &str, bytes: &[u8]| v3.decode(name, bytes);
    let addr = &c.spec(1).grpc;
    let set = |path: &str, data: &str, secret: bool| {
        msg(
            "config.SetRequest",
            json!({"namespace": "app", "path": path, "value": {"data": data}, "options": {"secret": secret}}),
        )
    };
    raw_unary(
        addr,
        "/config.Config/Set",
        set("", r#"{"a":{"b":1}}"#, false)?,
    )
    .await?;
    raw_unary(addr, "/config.Config/Set", set("a", r#"{"c":2}"#, false)?).await?;
    raw_unary(addr, "/config.Config/Set", set("key", r#""s3cret""#, true)?).await?;
    let get = |path: &str, secret: bool| {
        msg(
            "config.GetRequest",
            json!({"namespace": "app", "path": path, "options": {"secret": secret}}),
        )
    };
    let v = decode(
        "config.GetResponse",
        &raw_unary(addr, "/config.Config/Get", get("", false)?).await?,
    )?;
    let doc: Value = serde_json::from_str(v["value"]["data"].as_str().unwrap_or_default())?;
    assert_eq!(doc, json!({"a": {"b": 1, "c": 2}, "key": "[secret]"}));
    let v = decode(
        "config.GetResponse",
        &raw_unary(addr, "/config.Config/Get", get("key", true)?).await?,
    )?;
    assert_eq!(v["value"]["data"], r#""s3cret""#);
    raw_unary(
        addr,
        "/config.Config/Delete",
        msg(
            "config.DeleteRequest",
            json!({"namespace": "app", "path": "a.b"}),
        )?,
    )
    .await?;
    let r = decode(
        "config.ReadResponse",
        &raw_unary(
            addr,
            "/config.Config/Read",
            msg(
                "config.ReadRequest",
                json!({"namespace": "app", "path": "a"}),
            )?,
        )
        .await?,
    )?;
    assert_eq!(r["change"]["changeSet"]["data"], r#"{"c":2}"#);
    assert_eq!(r["change"]["namespace"], "app");
    Ok(())
}
