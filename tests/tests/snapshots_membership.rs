//! Snapshots, log compaction, membership changes and disaster recovery, on real processes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro::store::Query;
use micro_tests::{eventually, TestCluster};

const LONG: Duration = Duration::from_secs(60);

/// Writes `count` keys `{prefix}{i}` = `v{i}` through node `id`, `concurrency` at a time.
async fn write_keys(
    c: &TestCluster,
    id: u64,
    prefix: &str,
    range: std::ops::Range<u64>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let store = c.client(id).await?.store();
    let keys: Vec<u64> = range.collect();
    for chunk in keys.chunks(concurrency) {
        let writes = chunk.iter().map(|i| {
            let s = store.clone();
            let key = format!("{prefix}{i:06}");
            async move { s.write(&key, format!("v{i}").into_bytes()).await }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
    }
    Ok(())
}

/// Counts the keys under `prefix` in node `id`'s own copy (serializable: no leader involved).
async fn local_count(c: &TestCluster, id: u64, prefix: &str) -> anyhow::Result<usize> {
    let q = Query {
        prefix: true,
        serializable: true,
        ..Default::default()
    };
    Ok(c.client(id).await?.store().query(prefix, q).await?.len())
}

fn log_records(c: &TestCluster, id: u64) -> anyhow::Result<u64> {
    let db = micro_log::Db::open(&c.spec(id).data_dir.join("db"))?;
    Ok(db.verify_log()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_and_a_restart_keeps_every_key() -> anyhow::Result<()> {
    const KEYS: u64 = 50_000;
    let mut c = TestCluster::new(3).with_args(&["--snapshot-every", "500"]);
    for id in 1..=3 {
        c.spawn(id)?;
    }
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    // Concurrent writes share entries (at most 16 per entry here), so the log has at least
    // 50k / 16 = 3125 entries: several snapshot intervals.
    write_keys(&c, leader, "k", 0..KEYS, 16).await?;
    let target = c.applied(leader).await?;
    assert!(
        target >= KEYS / 16,
        "only {target} entries for {KEYS} writes"
    );
    c.wait_applied(target, LONG).await?;

    let follower = if leader == 1 { 2 } else { 1 };
    c.stop(follower)?;
    let records = log_records(&c, follower)?;
    // The log keeps at most one snapshot interval plus the tail kept for slow followers (125)
    // plus what arrived while the snapshot was being built.
    assert!(
        records < 1_500,
        "log holds {records} records after {KEYS} writes: not compacted"
    );
    assert!(
        std::fs::read_dir(c.spec(follower).data_dir.join("snapshots"))?.count() >= 1,
        "a snapshot file exists"
    );
    c.spawn(follower)?;
    c.wait_leader(LONG).await?;
    c.wait_applied(target, LONG).await?;
    assert_eq!(local_count(&c, follower, "k").await?, KEYS as usize);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_and_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut c = TestCluster::new(3).with_args(&["--snapshot-every", "100"]);
    for id in 1..=3 {
        c.spawn(id)?;
    }
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let victim = if leader == 3 { 2 } else { 3 };
    let other = 6 - leader - victim;
    // At most 4 writes share an entry: at least 250 entries per 1000 keys.
    write_keys(&c, leader, "a", 0..1000, 4).await?;

    // The node loses its disk. Raft forbids it from simply coming back (its log would go
    // backwards): remove it, wipe it, add it back as a learner.
    c.kill(victim);
    std::fs::remove_dir_all(&c.spec(victim).data_dir)?;
    let admin = c.client(other).await?; // membership calls work through followers too
    admin.remove_member(victim).await?;
    write_keys(&c, leader, "b", 0..1000, 4).await?;
    let peer = c.spec(victim).peer.clone();
    admin.add_member(victim, &peer).await?;
    let seed = c.spec(leader).peer.clone();
    c.set_node_args(victim, &["--join", &seed]);
    c.spawn(victim)?;

    let target = c.applied(leader).await?;
    c.wait_applied(target, LONG).await?;
    let log = c.log(victim);
    assert!(
        log.contains("installed snapshot"),
        "caught up without a snapshot install:\n{log}"
    );
    admin.promote_member(victim).await?;
    let s = admin.cluster_status().await?;
    let m = s.members.iter().find(|m| m.id == victim).expect("member");
    assert_eq!(m.role, "voter");
    assert_eq!(local_count(&c, victim, "a").await?, 1000);
    assert_eq!(local_count(&c, victim, "b").await?, 1000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_from_one_to_three_and_shrink_under_writes() -> anyhow::Result<()> {
    let mut c = TestCluster::growing(3);
    c.spawn(1)?;
    c.wait_leader(Duration::from_secs(10)).await?;
    let store = c.client(1).await?.store();

    // A writer runs throughout, recording acknowledged keys and the longest error streak.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, store) = (acked.clone(), stop.clone(), store.clone());
        tokio::spawn(async move {
            let mut worst = (Duration::ZERO, String::new());
            let mut failing_since: Option<(Instant, String)> = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("g{i:06}");
                match store.write(&key, b"x".to_vec()).await {
                    Ok(_) => {
                        acked.lock().unwrap().push(key);
                        if let Some((t, e)) = failing_since.take() {
                            if t.elapsed() > worst.0 {
                                worst = (t.elapsed(), e);
                            }
                        }
                        i += 1;
                    }
                    Err(e) => {
                        failing_since.get_or_insert_with(|| (Instant::now(), e.to_string()));
                        i += 1;
                    }
                }
            }
            worst
        })
    };

    // Writes flow on the single node before the membership changes start (with batched
    // writes the changes below can take well under a second, and the writer must span them).
    eventually("the writer to get going", LONG, || async {
        Ok((acked.lock().unwrap().len() >= 60).then_some(()))
    })
    .await?;
    let admin = c.client(1).await?;
    // Promotion of a node that has received nothing is refused with a reason.
    let err = {
        admin.add_member(9, "127.0.0.1:9").await?;
        let e = admin.promote_member(9).await.unwrap_err();
        admin.remove_member(9).await?;
        e
    };
    assert!(err.to_string().contains("has not received"), "{err}");

    for id in [2, 3] {
        c.spawn(id)?; // with --join: it adds itself as a learner
                      // Refused until it has caught up, then accepted.
        eventually(&format!("node {id} to become promotable"), LONG, || async {
            Ok(admin.promote_member(id).await.ok())
        })
        .await?;
    }
    let s = admin.cluster_status().await?;
    assert_eq!(s.members.iter().filter(|m| m.role == "voter").count(), 3);

    admin.remove_member(3).await?;
    c.kill(3);
    let s = admin.cluster_status().await?;
    assert_eq!(
        s.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Keep writing a little on the two-node cluster, then stop the writer.
    let before = acked.lock().unwrap().len();
    eventually("writes to continue after the removal", LONG, || async {
        Ok((acked.lock().unwrap().len() >= before + 50).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (worst, first_error) = writer.await?;
    assert!(
        worst < Duration::from_secs(5),
        "the writer saw errors for {worst:?}, starting with: {first_error}"
    );

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100);
    let reader = c.client(2).await?.store();
    for key in &acked {
        reader
            .read(key)
            .await
            .map_err(|e| anyhow::anyhow!("acknowledged {key} lost: {e}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaster_recovery_from_a_saved_snapshot() -> anyhow::Result<()> {
    let mut old = TestCluster::start(3).await?;
    write_keys(&old, 1, "dr", 0..500, 32).await?;
    // Writes keep flowing while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let store = old.client(3).await?.store();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = store.write(&format!("during{i}"), b"x".to_vec()).await;
                i += 1;
            }
        })
    };
    let file = old.root().join("backup.snap");
    let (ok, out, err) = old.cli(
        2,
        &["snapshot", "save", file.to_str().unwrap(), "-o", "json"],
    );
    assert!(ok, "save failed: {err}");
    let saved: serde_json::Value = serde_json::from_str(&out)?;
    stop.store(true, Ordering::Relaxed);
    bg.await?;
    let revision = saved["revision"].as_u64().expect("revision");
    assert!(saved["records"].as_u64().unwrap() >= 500);

    // Status verifies the file.
    let (ok, out, _) = old.cli(
        1,
        &[
            "snapshot",
            "status",
            file.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)?["revision"],
        revision
    );

    // Destroy the old cluster entirely.
    for id in 1..=3 {
        old.kill(id);
        std::fs::remove_dir_all(&old.spec(id).data_dir)?;
    }

    // Three new members from the file, on new ports. The snapshot holds the accounts and
    // the signing key: the old cluster's admin logs in to the new one.
    let mut new = TestCluster::new(3);
    new.share_credentials(&old);
    for id in 1..=3 {
        let dir = new.spec(id).data_dir.clone();
        let (ok, _, err) = new.cli(
            id,
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--node-id",
                &id.to_string(),
                "--initial-cluster",
                new.initial_cluster(),
            ],
        );
        assert!(ok, "restore failed: {err}");
    }
    for id in 1..=3 {
        new.spawn(id)?;
    }
    new.wait_leader(LONG).await?;
    for id in 1..=3 {
        assert_eq!(local_count(&new, id, "dr").await?, 500, "node {id}");
    }
    let store = new.client(2).await?.store();
    let rec = store.read("dr000123").await?;
    assert_eq!(rec.value, b"v123");
    let rev = store.write("after-restore", b"ok".to_vec()).await?;
    assert!(
        rev > revision,
        "revisions continue upwards: {rev} after {revision}"
    );
    let s = new.client(1).await?.cluster_status().await?;
    assert!(
        !s.cluster_id.is_empty() && s.cluster_id != saved["cluster_id"],
        "a new cluster id"
    );
    Ok(())
}

#[tokio::test]
async fn damaged_snapshots_are_refused_before_anything_is_written() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    write_keys(&c, 1, "s", 0..50, 10).await?;
    let file = c.root().join("good.snap");
    let (ok, _, err) = c.cli(1, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let good = std::fs::read(&file)?;
    let flipped = c.root().join("flipped.snap");
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&flipped, &bad)?;
    let cut = c.root().join("cut.snap");
    std::fs::write(&cut, &good[..good.len() - 7])?;

    for (file, needle) in [(&flipped, "corrupt"), (&cut, "truncated")] {
        let f = file.to_str().unwrap();
        let (ok, _, err) = c.cli(1, &["snapshot", "status", f]);
        assert!(!ok && err.contains(needle), "status of {f}: {err}");
        let target = c.root().join("restored");
        let (ok, _, err) = c.cli(
            1,
            &[
                "snapshot",
                "restore",
                f,
                "--data-dir",
                target.to_str().unwrap(),
                "--node-id",
                "1",
                "--initial-cluster",
                "1=127.0.0.1:1",
            ],
        );
        assert!(!ok && err.contains(needle), "restore of {f}: {err}");
        assert!(
            !target.exists(),
            "restore wrote something for a damaged file"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_damaged_snapshot_file_on_disk_stops_the_node_and_is_named() -> anyhow::Result<()> {
    let mut c = TestCluster::new(1).with_args(&["--snapshot-every", "10"]);
    c.spawn(1)?;
    c.wait_leader(Duration::from_secs(10)).await?;
    write_keys(&c, 1, "x", 0..30, 5).await?;
    c.stop(1)?;
    let file = c.spec(1).data_dir.join("snapshots").join("current.snap");
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes)?;
    // It must refuse to start rather than risk serving (or sending a follower) wrong data.
    let out = c.server_command(1).output()?;
    assert!(
        !out.status.success(),
        "a node with a damaged snapshot must not start"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("snapshot is corrupt"), "{stderr}");
    Ok(())
}
