//! A single `micro server` process: the newcomer's first experience.

use std::time::Duration;

use micro_tests::TestCluster;

#[tokio::test]
async fn write_read_restart_read() -> anyhow::Result<()> {
    let mut c = TestCluster::start(1).await?;
    let store = c.client(1).await?.store();
    let rev = store.write("greeting", b"hello".to_vec()).await?;
    assert!(rev > 0);
    assert_eq!(store.read("greeting").await?.value, b"hello");

    c.stop(1)?;
    c.spawn(1)?;
    c.wait_leader(Duration::from_secs(10)).await?;
    let store = c.client(1).await?.store();
    let rec = store.read("greeting").await?;
    assert_eq!(rec.value, b"hello");
    assert_eq!(rec.mod_revision, rev, "revision survives the restart");
    assert!(c.log(1).contains("resuming the existing cluster"));
    Ok(())
}

#[tokio::test]
async fn cli_round_trip_and_json_output() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let (ok, _, err) = c.cli(
        1,
        &["store", "write", "k", "v1", "-d", "app", "-t", "users"],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = c.cli(1, &["store", "read", "k", "-d", "app", "-t", "users"]);
    assert!(ok);
    assert_eq!(out.trim(), "v1");
    // --output may come after the subcommand.
    let (ok, out, _) = c.cli(
        1,
        &[
            "store", "read", "k", "-d", "app", "-t", "users", "--output", "json",
        ],
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v[0]["value"], "v1");
    assert_eq!(v[0]["version"], 1);
    let (ok, _, err) = c.cli(1, &["store", "read", "missing"]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    let (_, out, _) = c.cli(1, &["--output", "json", "store", "databases"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)?,
        serde_json::json!(["app"])
    );
    let (_, out, _) = c.cli(1, &["store", "tables", "-d", "app"]);
    assert_eq!(out.trim(), "users");
    let (_, out, _) = c.cli(1, &["-o", "json", "cluster", "status"]);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["leader"], 1);
    assert_eq!(v["members"][0]["state"], "leader");
    let (ok, _, _) = c.cli(1, &["store", "delete", "k", "-d", "app", "-t", "users"]);
    assert!(ok);
    let (ok, _, _) = c.cli(1, &["store", "read", "k", "-d", "app", "-t", "users"]);
    assert!(!ok);

    // `store list` has Micro v3's options: prefix, suffix, limit, offset, order.
    for k in ["a/1.txt", "a/2.log", "a/3.txt", "a/4.txt", "b/5.txt"] {
        let (ok, _, err) = c.cli(1, &["store", "write", k, "x"]);
        assert!(ok, "{err}");
    }
    let list = |args: &[&str]| {
        let (ok, out, err) = c.cli(1, &[&["store", "list"], args].concat());
        assert!(ok, "{args:?}: {err}");
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(
        list(&["--suffix", ".txt", "--prefix", "a/"]),
        ["a/1.txt", "a/3.txt", "a/4.txt"]
    );
    assert_eq!(
        list(&["--suffix", ".txt", "--order", "desc", "--offset", "1", "--limit", "2"]),
        ["a/4.txt", "a/3.txt"]
    );
    Ok(())
}
