//! Data written by release 1 (before the view kernel) opens and serves unchanged.
//!
//! `tests/fixtures/release1-node.tar.gz` holds a stopped single-node data dir written by the
//! release-1 binary (log entries in entry format 1, records in record format 1, expiry keys in
//! schema 1, a snapshot of its own with the log partly purged behind it) and `backup.snap`, a
//! snapshot saved from it with `micro snapshot save`. How it was made: tests/fixtures/README.md.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use micro_tests::{eventually, TestCluster};

const LONG: Duration = Duration::from_secs(30);

fn unpack(into: &Path) -> anyhow::Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/release1-node.tar.gz");
    std::fs::create_dir_all(into)?;
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()?
        .success();
    anyhow::ensure!(ok, "cannot unpack {}", fixture.display());
    Ok(())
}

/// (key, value, create_revision, mod_revision, version) as release 1 served them.
const RECORDS: &[(&str, &str, u64, u64, u64)] = &[
    ("greeting", "hello", 2, 2, 1),
    ("long-lived", "forever", 3, 3, 1),
    ("k1", "v1-again", 6, 37, 2),
    ("k30", "v30", 36, 36, 1),
    ("after-snap", "x", 50, 50, 1),
    ("tail-2", "t2", 52, 52, 1),
];

async fn assert_release1_records(c: &TestCluster, with_tail: bool) -> anyhow::Result<()> {
    let store = c.client(1).await?.store();
    for (key, value, create, modr, version) in RECORDS {
        if *key == "tail-2" && !with_tail {
            assert!(store.read(key).await.unwrap_err().is_not_found());
            continue;
        }
        let r = store.read(key).await?;
        assert_eq!(
            (
                r.value.as_slice(),
                r.create_revision,
                r.mod_revision,
                r.version
            ),
            (value.as_bytes(), *create, *modr, *version),
            "{key}"
        );
    }
    assert!(store.read("k2").await.unwrap_err().is_not_found());
    let forever = store.read("long-lived").await?;
    assert!(forever.expiry > 3_000_000_000, "expiry {}", forever.expiry);
    let o1 = store.clone().scope("shop", "orders").read("o1").await?;
    assert_eq!(o1.value, br#"{"total":3}"#);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_1_data_dir_and_snapshot_serve_their_data_unchanged() -> anyhow::Result<()> {
    let mut c = TestCluster::new(1);
    let unpacked = c.root().join("fixture");
    unpack(&unpacked)?;
    std::fs::rename(unpacked.join("data"), &c.spec(1).data_dir)?;
    c.spawn(1)?;
    c.wait_leader(LONG).await?;
    assert_release1_records(&c, true).await?;

    // Events and the consumer group's progress (3 of 5 consumed) are there too.
    let client = c.client(1).await?;
    let (ok, out, err) = c.cli(
        1,
        &["events", "consume", "orders", "--from-start", "-o", "json"],
    );
    assert!(ok, "{err}");
    let payloads: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"].to_string())
        .collect();
    assert_eq!(
        payloads,
        (1..=5)
            .map(|i| format!("\"event {i}\""))
            .collect::<Vec<_>>()
    );
    let (ok, out, err) = c.cli(
        1,
        &["events", "consume", "orders", "--group", "g", "-o", "json"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        2,
        "the group resumes after event 3: {out}"
    );

    // New writes continue above every old revision, and the migrated expiry index still
    // expires things.
    let store = client.store();
    let rev = store.write("new", b"n".to_vec()).await?;
    assert!(rev > 52, "revision {rev}");
    store
        .write_with_ttl("short", b"s".to_vec(), Some(Duration::from_secs(1)))
        .await?;
    eventually("the short-lived record to expire", LONG, || async {
        Ok(store
            .read("short")
            .await
            .err()
            .filter(|e| e.is_not_found())
            .map(|_| ()))
    })
    .await?;
    assert_eq!(store.read("long-lived").await?.value, b"forever");

    // The release-1 snapshot file verifies and restores into a new cluster.
    let snap = unpacked.join("backup.snap");
    let snap = snap.to_str().expect("utf-8 path");
    let (ok, out, err) = c.cli(1, &["snapshot", "status", snap, "-o", "json"]);
    assert!(ok, "{err}");
    let header: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(header["revision"], 50);
    let mut r = TestCluster::new(1);
    let (ok, _, err) = r.cli(
        1,
        &[
            "snapshot",
            "restore",
            snap,
            "--data-dir",
            r.spec(1).data_dir.to_str().expect("utf-8 path"),
            "--node-id",
            "1",
            "--initial-cluster",
            &format!("1={}", r.spec(1).peer),
        ],
    );
    assert!(ok, "{err}");
    r.spawn(1)?;
    r.wait_leader(LONG).await?;
    assert_release1_records(&r, false).await?;
    Ok(())
}
