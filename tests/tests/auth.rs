//! Auth on real processes: closed by default, the local user logged in without a step,
//! accounts and rules per namespace enforced on every node, tokens any node verifies, refresh
//! tokens, admin-only operations, hostile tokens, and a client built from Micro v3's auth.proto.

use std::time::Duration;

use base64::Engine;
use micro::proto::auth as pb;
use micro::Credentials;
use micro_tests::{eventually, raw_unary_as, TestCluster};
use serde_json::{json, Value};
use tonic::Code;

const LONG: Duration = Duration::from_secs(30);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn code<T: std::fmt::Debug>(r: Result<T, micro::Error>) -> Option<Code> {
    match r {
        Ok(_) => Some(Code::Ok),
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_user_needs_no_login_and_strangers_get_401() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    // The CLI of the user who started the server: logged in, no step.
    let (ok, _, err) = c.cli(1, &["store", "write", "k", "v"]);
    assert!(ok, "{err}");
    let (ok, out, err) = c.cli(1, &["store", "read", "k"]);
    assert!(ok && out.contains('v'), "{out} {err}");
    let file = c.config_dir().join("config.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "credentials file mode");
    let (ok, out, _) = c.cli(1, &["user", "--output", "json"]);
    assert!(ok);
    let me: Value = serde_json::from_str(&out)?;
    assert_eq!(
        (me["id"].as_str(), me["issuer"].as_str()),
        (Some("admin"), Some("micro"))
    );

    // Without credentials: 401 with Micro's error body, over HTTP and gRPC.
    let url = format!("http://{}/store/read", c.spec(1).http);
    let resp = reqwest::Client::new()
        .post(&url)
        .body(r#"{"key":"k"}"#)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await?;
    assert_eq!(body["code"], 401);
    assert_eq!(body["id"], "micro.store");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("micro login"),
        "{body}"
    );
    let anon = c.client_as(1, Credentials::None).await?;
    assert_eq!(
        code(anon.store().read("k").await),
        Some(Code::Unauthenticated)
    );

    // `micro auth token` feeds curl; the micro-token cookie works too.
    let (ok, token, err) = c.cli(1, &["auth", "token"]);
    assert!(ok, "{err}");
    let token = token.trim();
    for req in [
        reqwest::Client::new().post(&url).bearer_auth(token),
        reqwest::Client::new()
            .post(&url)
            .header("cookie", format!("micro-token={token}")),
    ] {
        let resp = req.body(r#"{"key":"k"}"#).send().await?;
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await?;
        assert_eq!(v["records"][0]["key"], "k");
    }
    Ok(())
}

/// Acceptance 2-4 and 7 on three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_rules_and_tokens_hold_on_every_node() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    for args in [
        &[
            "auth",
            "create",
            "account",
            "ann",
            "--namespace",
            "team-a",
            "--secret",
            "pw-ann",
        ][..],
        &[
            "auth",
            "create",
            "account",
            "bob",
            "--namespace",
            "team-b",
            "--secret",
            "pw-bob",
        ],
        &[
            "auth",
            "create",
            "rule",
            "read",
            "--namespace",
            "team-a",
            "--scope",
            "*",
            "--resource",
            "service:store:Store.Read",
        ],
    ] {
        let (ok, out, err) = c.cli(1, args);
        assert!(ok, "{args:?}: {out} {err}");
    }
    let (ok, out, _) = c.cli(
        2,
        &[
            "auth",
            "list",
            "rules",
            "--namespace",
            "team-a",
            "-o",
            "json",
        ],
    );
    assert!(ok);
    let rules: Value = serde_json::from_str(&out)?;
    assert_eq!(rules[0]["resource"], "service:store:Store.Read");

    // Log in on node 1 (the account lives in team-a: the login names it).
    let ann = micro::Client::builder(&c.spec(1).grpc)
        .credentials(Credentials::Account {
            id: "ann".into(),
            secret: "pw-ann".into(),
        })
        .namespace("team-a")
        .connect()
        .await?;
    let token = ann.token();
    assert!(!token.refresh_token.is_empty());
    // The admin writes something into team-a's database to be read.
    c.client(1)
        .await?
        .store()
        .scope("team-a", "")
        .write("greeting", b"hi".to_vec())
        .await?;
    for id in [1, 2, 3] {
        // Node 1's token, verified by each node locally.
        let a = c
            .client_as(id, Credentials::Token(token.access_token.clone()))
            .await?;
        let store = a.store();
        let got = eventually("team-a's record", LONG, || async {
            Ok(store
                .clone()
                .scope("team-a", "")
                .read("greeting")
                .await
                .ok())
        })
        .await?;
        assert_eq!(got.value, b"hi");
        // Its own database by default.
        assert_eq!(store.read("greeting").await?.value, b"hi");
        assert_eq!(
            code(store.write("x", b"1".to_vec()).await),
            Some(Code::PermissionDenied)
        );
        // Nothing of team-b: neither its database nor its namespace.
        assert_eq!(
            code(store.clone().scope("team-b", "").read("greeting").await),
            Some(Code::PermissionDenied)
        );
        let in_b = micro::Client::builder(&c.spec(id).grpc)
            .credentials(Credentials::Token(token.access_token.clone()))
            .namespace("team-b")
            .connect()
            .await?;
        assert_eq!(
            code(in_b.store().read("greeting").await),
            Some(Code::PermissionDenied)
        );
        // Over HTTP: 403 with a JSON body.
        let resp = reqwest::Client::new()
            .post(format!("http://{}/store/write", c.spec(id).http))
            .bearer_auth(&token.access_token)
            .body(r#"{"record":{"key":"x","value":"eA=="}}"#)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 403);
        assert_eq!(resp.json::<Value>().await?["code"], 403);
        // Admin-only operations.
        assert_eq!(code(a.remove_member(3).await), Some(Code::PermissionDenied));
        assert_eq!(
            code(a.snapshot(|_, _| {}).await),
            Some(Code::PermissionDenied)
        );
        let rule = pb::CreateRequest {
            rule: Some(pb::Rule {
                id: "mine".into(),
                scope: "*".into(),
                resource: Some(pb::Resource {
                    name: "*".into(),
                    r#type: "*".into(),
                    endpoint: "*".into(),
                }),
                access: pb::Access::Granted as i32,
                priority: 9,
            }),
            options: None,
        };
        let denied = a.rules().create(rule).await.map_err(micro::Error::from);
        assert_eq!(code(denied), Some(Code::PermissionDenied));
    }

    // A refresh token yields a new access token (on another node).
    let fresh = micro::Client::builder(&c.spec(3).grpc)
        .credentials(Credentials::Refresh(token.refresh_token.clone()))
        .connect()
        .await?;
    assert_eq!(fresh.store().read("greeting").await?.value, b"hi");

    // An expired token is refused: ask for a one-second token and wait for its end.
    let short = micro::Client::builder(&c.spec(2).grpc)
        .credentials(Credentials::Account {
            id: "ann".into(),
            secret: "pw-ann".into(),
        })
        .namespace("team-a")
        .token_lifetime(Duration::from_secs(1))
        .connect()
        .await?;
    let short_token = short.token().access_token;
    let stale = c.client_as(2, Credentials::Token(short_token)).await?;
    let refused = eventually("the one-second token to expire", LONG, || async {
        Ok(match stale.store().read("greeting").await {
            Err(e) if e.code() == Some(Code::Unauthenticated) => Some(e.to_string()),
            _ => None,
        })
    })
    .await?;
    assert!(refused.contains("expired"), "{refused}");

    // Hostile tokens: garbage, `alg: none`, a forged signature, another cluster's key.
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let parts: Vec<&str> = token.access_token.split('.').collect();
    let claims = json!({"sub": "ann", "iss": "micro", "type": "user", "scopes": ["admin"],
        "exp": 4_000_000_000u64, "iat": 0});
    let other = TestCluster::start(1).await?;
    let foreign = other.admin_token().await?;
    for (what, bad) in [
        ("garbage", "not-a-token".to_string()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","kid":"1"}"#),
                b64(&claims.to_string())
            ),
        ),
        (
            "forged claims",
            format!("{}.{}.{}", parts[0], b64(&claims.to_string()), parts[2]),
        ),
        ("another cluster's key", foreign),
    ] {
        let r = raw_unary_as(&c.spec(1).grpc, "/store.Store/Read", Vec::new(), Some(&bad)).await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::Unauthenticated),
            "{what}"
        );
    }
    drop(other);

    // A deleted account's refresh token is refused.
    let (ok, _, err) = c.cli(
        1,
        &["auth", "delete", "account", "ann", "--namespace", "team-a"],
    );
    assert!(ok, "{err}");
    let after = micro::Client::builder(&c.spec(2).grpc)
        .credentials(Credentials::Refresh(token.refresh_token.clone()))
        .connect()
        .await;
    assert_eq!(
        after.err().and_then(|e| e.code()),
        Some(Code::Unauthenticated)
    );
    Ok(())
}

/// Micro v3.3.0's auth.proto, as a v3 client compiles it (messages trimmed to those used).
const V3_AUTH: &str = r#"
syntax = "proto3";
package auth;
service Auth {
  rpc Generate(GenerateRequest) returns (GenerateResponse) {};
  rpc Inspect(InspectRequest) returns (InspectResponse) {};
  rpc Token(TokenRequest) returns (TokenResponse) {};
}
message Token { string access_token = 1; string refresh_token = 2; int64 created = 3; int64 expiry = 4; }
message Account { string id = 1; string type = 2; map<string, string> metadata = 4; repeated string scopes = 5; string issuer = 6; string secret = 7; string name = 8; }
message Options { string namespace = 1; }
message GenerateRequest { string id = 1; map<string, string> metadata = 3; repeated string scopes = 4; string secret = 5; string type = 6; string provider = 7; Options options = 8; string name = 9; }
message GenerateResponse { Account account = 1; }
message InspectRequest { string token = 1; Options options = 2; }
message InspectResponse { Account account = 1; }
message TokenRequest { string id = 1; string secret = 2; string refresh_token = 3; int64 token_expiry = 4; Options options = 5; }
message TokenResponse { Token token = 1; }
"#;

const V3_STORE: &str = r#"
syntax = "proto3";
package store;
message Record { string key = 1; bytes value = 2; int64 expiry = 3; }
message WriteOptions { string database = 1; string table = 2; }
message WriteRequest { Record record = 1; WriteOptions options = 2; }
message ReadOptions { string database = 1; string table = 2; }
message ReadRequest { string key = 1; ReadOptions options = 2; }
message ReadResponse { repeated Record records = 1; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_built_from_micro_v3_auth_proto_works_unchanged() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    let admin = c.admin_token().await?;
    let auth = micro_tests::ForeignProto::compile("auth.proto", V3_AUTH)?;
    let store = micro_tests::ForeignProto::compile("store.proto", V3_STORE)?;
    let addr = &c.spec(1).grpc;
    // An admin creates a service account with a generated secret.
    let gen = raw_unary_as(
        addr,
        "/auth.Auth/Generate",
        auth.encode(
            "auth.GenerateRequest",
            json!({"id": "svc", "type": "service", "scopes": ["service"]}),
        )?,
        Some(&admin),
    )
    .await?;
    let account = auth.decode("auth.GenerateResponse", &gen)?;
    let secret = account["account"]["secret"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!secret.is_empty(), "{account}");
    assert_eq!(account["account"]["issuer"], "micro");
    // It logs in (no token needed for that) and uses its token on store.Store.
    let tok = raw_unary_as(
        addr,
        "/auth.Auth/Token",
        auth.encode("auth.TokenRequest", json!({"id": "svc", "secret": secret}))?,
        None,
    )
    .await?;
    let tok = auth.decode("auth.TokenResponse", &tok)?;
    let access = tok["token"]["accessToken"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!access.is_empty(), "{tok}");
    raw_unary_as(
        addr,
        "/store.Store/Write",
        store.encode(
            "store.WriteRequest",
            json!({"record": {"key": "v3", "value": base64::engine::general_purpose::STANDARD.encode("ok")}}),
        )?,
        Some(&access),
    )
    .await?;
    let read = raw_unary_as(
        addr,
        "/store.Store/Read",
        store.encode("store.ReadRequest", json!({"key": "v3"}))?,
        Some(&access),
    )
    .await?;
    let read = store.decode("store.ReadResponse", &read)?;
    assert_eq!(read["records"][0]["key"], "v3");
    // Inspect names the account.
    let who = raw_unary_as(
        addr,
        "/auth.Auth/Inspect",
        auth.encode("auth.InspectRequest", json!({"token": access}))?,
        Some(&access),
    )
    .await?;
    assert_eq!(
        auth.decode("auth.InspectResponse", &who)?["account"]["id"],
        "svc"
    );
    // A wrong secret: 401, nothing else said.
    let wrong = raw_unary_as(
        addr,
        "/auth.Auth/Token",
        auth.encode("auth.TokenRequest", json!({"id": "svc", "secret": "nope"}))?,
        None,
    )
    .await;
    assert_eq!(
        wrong.map(|_| ()).map_err(|s| s.code()),
        Err(Code::Unauthenticated)
    );
    Ok(())
}

/// Names every namespace shares one keyspace for are per namespace: the same topic, lock or
/// broker topic in team-a and team-b are two things, and neither namespace sees, acks, holds,
/// keeps alive or revokes the other's (nor the `micro` admin's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_locks_broker_and_leases_are_per_namespace() -> anyhow::Result<()> {
    use micro::proto::{broker as bpb, events as epb};
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1).await?;
    for (who, ns) in [("ann", "team-a"), ("bob", "team-b")] {
        let secret = format!("pw-{who}");
        for args in [
            &[
                "auth",
                "create",
                "account",
                who,
                "--namespace",
                ns,
                "--secret",
                &secret,
            ][..],
            &[
                "auth",
                "create",
                "rule",
                "all",
                "--namespace",
                ns,
                "--scope",
                "*",
                "--resource",
                "service:*:*",
            ],
        ] {
            let (ok, out, err) = c.cli(1, args);
            assert!(ok, "{args:?}: {out} {err}");
        }
    }
    let login = |id: &str, ns: &str| {
        micro::Client::builder(&c.spec(1).grpc)
            .credentials(Credentials::Account {
                id: id.into(),
                secret: format!("pw-{id}"),
            })
            .namespace(ns)
            .connect()
    };
    let ann = login("ann", "team-a").await?;
    let bob = login("bob", "team-b").await?;
    let admin = c.client(1).await?;

    // Events: one topic name, three topics.
    for (client, payload) in [(&ann, "a1"), (&bob, "b1"), (&admin, "m1"), (&ann, "a2")] {
        client
            .events()
            .publish("orders", payload.as_bytes().to_vec(), Default::default())
            .await?;
    }
    let replay = |client: &micro::Client| {
        let events = client.events();
        async move {
            let mut consumer = events
                .consume(epb::ConsumeRequest {
                    topic: "orders".into(),
                    from_start: true,
                    stop_at_end: true,
                    group: "billing".into(),
                    auto_ack: false,
                    ..Default::default()
                })
                .await?;
            let mut got = Vec::new();
            while let Some(e) = consumer.next().await? {
                assert_eq!(e.topic, "orders");
                assert_eq!(e.id, format!("orders/{}", e.sequence));
                // Acked by the id it was delivered with.
                events.ack("billing", &e.id, true).await?;
                got.push(String::from_utf8(e.payload)?);
            }
            anyhow::Ok(got)
        }
    };
    assert_eq!(replay(&ann).await?, ["a1", "a2"]);
    assert_eq!(replay(&bob).await?, ["b1"]);
    assert_eq!(replay(&admin).await?, ["m1"]);
    let topics = ann.events().topics().await?;
    assert_eq!(topics.len(), 1, "{topics:?}");
    assert_eq!(
        (topics[0].name.as_str(), topics[0].last_sequence),
        ("orders", 2)
    );
    // A name cannot smuggle another namespace's prefix in.
    let smuggled = bob
        .events()
        .publish("\0team-a\0orders", b"x".to_vec(), Default::default())
        .await;
    assert_eq!(code(smuggled), Some(Code::InvalidArgument));

    // Broker: ann hears her own topic only.
    let mut news = ann
        .broker()
        .subscribe(bpb::SubscribeRequest {
            topic: "news".into(),
            queue: String::new(),
        })
        .await?
        .into_inner();
    for (client, body) in [(&bob, "from bob"), (&ann, "from ann")] {
        client
            .broker()
            .publish(bpb::PublishRequest {
                topic: "news".into(),
                message: Some(bpb::Message {
                    header: Default::default(),
                    body: body.as_bytes().to_vec(),
                }),
            })
            .await?;
    }
    let first = tokio::time::timeout(LONG, news.message())
        .await??
        .expect("a message");
    assert_eq!(first.body, b"from ann");

    // Locks: both namespaces hold "job" at once; each lists only its own.
    let a_job = ann.sync().lock("job", Duration::from_secs(30)).await?;
    let b_job =
        tokio::time::timeout(LONG, bob.sync().lock("job", Duration::from_secs(30))).await??;
    for client in [&ann, &bob] {
        let locks = client.sync().list().await?;
        assert_eq!(locks.len(), 1, "{locks:?}");
        assert_eq!(locks[0].name, "job");
    }
    assert!(admin.sync().list().await?.is_empty());

    // Leases: ann's lease does not exist for bob.
    let lease = ann.leases().grant(Duration::from_secs(60)).await?;
    let theirs = bob.leases();
    assert_eq!(code(theirs.keep_alive(lease).await), Some(Code::NotFound));
    assert_eq!(code(theirs.revoke(lease).await), Some(Code::NotFound));
    assert_eq!(
        code(theirs.time_to_live(lease, false).await),
        Some(Code::NotFound)
    );
    assert!(theirs.list().await?.iter().all(|l| l.id != lease));
    let attach = bob
        .store()
        .put(
            "k",
            b"v".to_vec(),
            micro::store::Put {
                lease,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(code(attach), Some(Code::InvalidArgument));
    assert!(ann.leases().list().await?.iter().any(|l| l.id == lease));
    ann.leases().keep_alive(lease).await?;
    ann.leases().revoke(lease).await?;
    a_job.unlock().await?;
    b_job.unlock().await?;
    Ok(())
}
