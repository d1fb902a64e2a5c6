//! Bad input never panics and never half-applies: every case gets a 4xx naming the problem.

use micro_tests::TestCluster;
use serde_json::{json, Value};

async fn post(http: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}{path}"))
        .body(body.to_string())
        .send()
        .await
        .expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_gateway_rejects_bad_input_clearly() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let http = c.spec(1).http.clone();

    let (s, v) = post(
        &http,
        "/store/write",
        r#"{"record":{"key":"ok","value":"aGk="}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&http, "/store/read", r#"{"key":"ok"}"#).await;
    assert_eq!((s, v["records"][0]["value"].clone()), (200, json!("aGk=")));

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/store/write",
            r#"{"record":{"key":"","value":"aGk="}}"#.into(),
            400,
            "key",
        ),
        ("/store/read", r#"{"key":""}"#.into(), 400, "key"),
        (
            "/store/write",
            r#"{"record":{"key":"a""#.into(),
            400,
            "JSON",
        ),
        ("/store/read", r#"[1,2]"#.into(), 400, "object"),
        (
            "/store/read",
            r#"{"key":"ok","options":{"limit":"many"}}"#.into(),
            400,
            "options.limit",
        ),
        (
            "/store/read",
            r#"{"key":"ok","options":{"order":"sideways"}}"#.into(),
            400,
            "options.order",
        ),
        (
            "/store/write",
            r#"{"record":{"key":"k","expiry":-1}}"#.into(),
            400,
            "record.expiry",
        ),
        ("/store/write", r#"{}"#.into(), 400, "record"),
        ("/store/frobnicate", "{}".into(), 400, "Store.Frobnicate"),
        ("/nosuchservice/call", "{}".into(), 404, "nosuchservice"),
        ("/store/read", r#"{"key":"absent"}"#.into(), 404, "absent"),
        (
            "/store/write",
            format!(
                r#"{{"record":{{"key":"big","value":"{}"}}}}"#,
                "A".repeat(2_200_000)
            ),
            400,
            "value",
        ),
    ];
    for (path, body, want, needle) in cases {
        let (s, v) = post(&http, path, &body).await;
        assert_eq!(s, want, "{path} {}: {v}", &body[..body.len().min(80)]);
        assert_eq!(v["code"], want, "{v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(needle),
            "{path}: detail {detail:?} should name {needle:?}"
        );
        assert!(v["id"].is_string() && v["status"].is_string(), "{v}");
    }

    // Nothing half-applied: the big value and the empty key left no record behind.
    let (_, v) = post(&http, "/store/list", "{}").await;
    assert_eq!(v["keys"], json!(["ok"]));
    // And the node is still healthy.
    let store = c.client(1).await?.store();
    assert_eq!(store.read("ok").await?.value, b"hi");
    Ok(())
}

#[tokio::test]
async fn grpc_rejects_bad_input_with_invalid_argument() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let store = c.client(1).await?.store();
    let err = store.write("", b"x".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("key"), "{err}");
    let err = store
        .write("big", vec![0u8; 1536 * 1024 + 1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("value"), "{err}");
    assert!(store.read("big").await.unwrap_err().is_not_found());
    Ok(())
}

#[tokio::test]
async fn get_requests_map_query_strings() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let store = c.client(1).await?.store();
    store.write("user/1", b"a".to_vec()).await?;
    store.write("user/2", b"b".to_vec()).await?;
    let url = format!(
        "http://{}/store/read?key=user/&options.prefix=true&options.limit=1",
        c.spec(1).http
    );
    let v: Value = reqwest::get(url).await?.json().await?;
    assert_eq!(v["records"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["records"][0]["key"], "user/1");
    Ok(())
}

#[tokio::test]
async fn cross_site_browser_requests_are_refused() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let http = c.spec(1).http.clone();
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/store/write"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"record":{"key":"pwned","value":"eA=="}}"#)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 403);
    let v: Value = resp.json().await?;
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("cross-origin"),
        "{v}"
    );
    assert!(c
        .client(1)
        .await?
        .store()
        .read("pwned")
        .await
        .unwrap_err()
        .is_not_found());
    // The same request from the same origin (or with no Origin, as curl sends) goes through.
    let (s, _) = post(
        &http,
        "/store/write",
        r#"{"record":{"key":"fine","value":"eA=="}}"#,
    )
    .await;
    assert_eq!(s, 200);
    Ok(())
}
