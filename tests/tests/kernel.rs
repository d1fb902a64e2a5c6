//! The view kernel on real processes: watch from any revision on any node (and after a full
//! restart, and across a leader kill), compaction, and leases.
//!
//! The tests in this file run one at a time (`SERIAL`): each starts three nodes, and leases are
//! timed, so they should not compete with each other for the machine's two cores.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use micro::proto::store::WatchResponse;
use micro::store::{Put, WatchOptions, Watcher};
use micro_tests::{eventually, TestCluster};

const LONG: Duration = Duration::from_secs(30);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (revision, type, key, value) of every event of a watch response.
fn flatten(r: &WatchResponse) -> Vec<(u64, String, String, Vec<u8>)> {
    r.events
        .iter()
        .map(|e| {
            let rec = e.record.clone().unwrap_or_default();
            (r.revision, e.r#type.clone(), rec.key, rec.value)
        })
        .collect()
}

/// Receives events until `n` changes arrived (each within `LONG`).
async fn take(w: &mut Watcher, n: usize) -> anyhow::Result<Vec<(u64, String, String, Vec<u8>)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = tokio::time::timeout(LONG, w.next())
            .await
            .map_err(|_| anyhow::anyhow!("no watch event for {LONG:?} after {}", out.len()))??
            .ok_or_else(|| anyhow::anyhow!("the watch ended after {} events", out.len()))?;
        out.extend(flatten(&r));
    }
    Ok(out)
}

fn watch_opts(from_revision: u64) -> WatchOptions {
    WatchOptions {
        prefix: true,
        from_revision,
        ..Default::default()
    }
}

type Seen = Vec<(u64, String, String, Vec<u8>)>;

/// Every node replays exactly `expected` from `from`; returns the watchers, still open.
async fn check_all_nodes(
    c: &TestCluster,
    from: u64,
    expected: &Seen,
) -> anyhow::Result<Vec<Watcher>> {
    let mut watchers = Vec::new();
    for id in [1, 2, 3] {
        let mut w = c
            .client(id)
            .await?
            .store()
            .watch("w/", watch_opts(from))
            .await?;
        let got = take(&mut w, expected.len()).await?;
        assert_eq!(&got, expected, "node {id} replays writes 500..=1000");
        watchers.push(w);
    }
    Ok(watchers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_a_revision_on_every_node_then_follows_and_survives_a_restart(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let store = c.client(1).await?.store();
    // 1000 writes; remember the revision of each.
    let mut revs = Vec::new();
    for i in 1..=1000u32 {
        revs.push(
            store
                .write(&format!("w/{i:04}"), format!("v{i}").into_bytes())
                .await?,
        );
    }
    let from = revs[499];
    let expected: Vec<(u64, String, String, Vec<u8>)> = (500..=1000u32)
        .map(|i| {
            (
                revs[i as usize - 1],
                "put".to_string(),
                format!("w/{i:04}"),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    let mut watchers = check_all_nodes(&c, from, &expected).await?;
    // Then they follow live writes, wherever the write is sent.
    let live = c
        .client(2)
        .await?
        .store()
        .write("w/live", b"now".to_vec())
        .await?;
    for w in &mut watchers {
        let got = take(w, 1).await?;
        assert_eq!(
            got,
            vec![(live, "put".into(), "w/live".into(), b"now".to_vec())]
        );
    }
    drop(watchers);

    // The CLI prints the same, one JSON object per line.
    let from_s = from.to_string();
    let (ok, out, err) = c.cli(
        3,
        &[
            "store",
            "watch",
            "w/",
            "--prefix",
            "--from-revision",
            &from_s,
            "--limit",
            "501",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 501);
    for (line, (rev, ty, key, value)) in lines.iter().zip(&expected) {
        assert_eq!(line["revision"], *rev);
        assert_eq!(line["type"], ty.as_str());
        assert_eq!(line["key"], key.as_str());
        assert_eq!(line["value"], String::from_utf8_lossy(value).as_ref());
    }

    // After a full restart every node replays the same from its own copy.
    for id in [1, 2, 3] {
        c.stop(id)?;
    }
    for id in [1, 2, 3] {
        c.spawn(id)?;
    }
    c.wait_leader(LONG).await?;
    check_all_nodes(&c, from, &expected).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_on_another_node_after_its_node_is_killed() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(LONG).await?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();

    // A writer on a follower keeps writing through the leader's death.
    let writer_client = c.client(others[0]).await?;
    let writer_store = writer_client.store();
    let writer = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for i in 0..300u32 {
            let key = format!("r/{i:04}");
            // Retry until it lands: during the election writes fail for a while. A write whose
            // outcome is unknown may land twice; that is two revisions of the same key.
            let deadline = Instant::now() + LONG;
            loop {
                match writer_store.write(&key, format!("v{i}").into_bytes()).await {
                    Ok(rev) => {
                        acked.insert(key.clone(), rev);
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        micro_tests::leader_known(&writer_client, LONG).await?;
                    }
                    Err(e) => return Err(anyhow::anyhow!("write {key}: {e}")),
                }
            }
        }
        anyhow::Ok(acked)
    });

    let mut w = c
        .client(leader)
        .await?
        .store()
        .watch("r/", watch_opts(1))
        .await?;
    let mut seen = take(&mut w, 100).await?;
    c.kill(leader);
    // The stream breaks (or ends); resume on a survivor from the last revision + 1.
    loop {
        match tokio::time::timeout(LONG, w.next()).await {
            Ok(Ok(Some(r))) => seen.extend(flatten(&r)),
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => anyhow::bail!("the watch on the killed node neither ended nor failed"),
        }
    }
    let resume = w.resume_from();
    let mut w2 = c
        .client(others[1])
        .await?
        .store()
        .watch("r/", watch_opts(resume))
        .await?;
    let acked = writer.await??;
    let last = *acked.values().max().expect("writes");
    while seen.last().map(|s| s.0) < Some(last) {
        seen.extend(take(&mut w2, 1).await?);
    }
    // The union is the history: the same as a fresh replay from revision 1, in order, with
    // no gap or duplicate.
    let mut fresh = c
        .client(others[0])
        .await?
        .store()
        .watch("r/", watch_opts(1))
        .await?;
    let history = take(&mut fresh, seen.len()).await?;
    assert_eq!(seen, history);
    for pair in seen.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "revisions strictly increase: {pair:?}"
        );
    }
    // Every acknowledged write is in it at its acknowledged revision.
    let by_rev: BTreeMap<u64, &str> = seen.iter().map(|s| (s.0, s.2.as_str())).collect();
    for (key, rev) in &acked {
        assert_eq!(
            by_rev.get(rev).copied(),
            Some(key.as_str()),
            "{key} at {rev}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_below_the_compaction_point_fails_naming_it() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let store = c.client(1).await?.store();
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(store.write(&format!("c/{i}"), b"x".to_vec()).await?);
    }
    let r = revs[10];
    assert_eq!(store.compact(r).await?, r);
    for id in [1, 2, 3] {
        let s = c.client(id).await?.store();
        let mut below = s.watch("c/", watch_opts(r - 1)).await;
        // The error may come with the call or as the stream's first item.
        let err = match &mut below {
            Err(e) => e.to_string(),
            Ok(w) => w
                .next()
                .await
                .expect_err("a watch below the compaction point")
                .to_string(),
        };
        assert!(
            err.contains(&format!("compact_revision {r}")),
            "node {id}: {err}"
        );
        let mut w = s.watch("c/", watch_opts(r)).await?;
        let got = take(&mut w, 10).await?;
        assert_eq!(got.first().map(|g| g.0), Some(r));
    }
    let (ok, _, err) = c.cli(
        2,
        &[
            "store",
            "watch",
            "c/",
            "--prefix",
            "--from-revision",
            &(r - 1).to_string(),
        ],
    );
    assert!(!ok);
    assert!(err.contains(&format!("compact_revision {r}")), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_takes_its_keys_everywhere_at_once_and_lives_while_kept_alive() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let client = c.client(1).await?;
    let (store, leases) = (client.store(), client.leases());

    // TTL 3 s, two keys, no keepalive.
    let mut watchers = Vec::new();
    for id in [1, 2, 3] {
        watchers.push(
            c.client(id)
                .await?
                .store()
                .watch("l/", watch_opts(0))
                .await?,
        );
    }
    let granted = Instant::now();
    let id = leases.grant(Duration::from_secs(3)).await?;
    let lease = Put {
        lease: id,
        ..Default::default()
    };
    store.put("l/a", b"1".to_vec(), lease.clone()).await?;
    store.put("l/b", b"2".to_vec(), lease.clone()).await?;
    let mut delete_revs = Vec::new();
    for w in &mut watchers {
        let puts = take(w, 2).await?;
        assert!(puts.iter().all(|p| p.1 == "put"));
        // Both deletes arrive in one response: one revision step.
        let r = tokio::time::timeout(LONG, w.next())
            .await??
            .expect("a delete");
        let deletes = flatten(&r);
        assert_eq!(
            deletes
                .iter()
                .map(|d| (d.1.as_str(), d.2.as_str()))
                .collect::<Vec<_>>(),
            vec![("delete", "l/a"), ("delete", "l/b")]
        );
        delete_revs.push(r.revision);
    }
    let elapsed = granted.elapsed();
    assert!(
        elapsed <= Duration::from_secs(4),
        "the keys lived {elapsed:?} with a 3 s lease"
    );
    // Revisions are assigned in log order, so one revision everywhere is one log position.
    assert!(
        delete_revs.windows(2).all(|w| w[0] == w[1]),
        "{delete_revs:?}"
    );
    for n in [1, 2, 3] {
        let s = c.client(n).await?.store();
        assert!(s.read("l/a").await.unwrap_err().is_not_found());
        assert!(leases
            .time_to_live(id, false)
            .await
            .unwrap_err()
            .is_not_found());
    }

    // Kept alive every second, a 3 s lease lives for 20 s.
    let id = leases.grant(Duration::from_secs(3)).await?;
    store
        .put(
            "l/kept",
            b"k".to_vec(),
            Put {
                lease: id,
                ..Default::default()
            },
        )
        .await?;
    let start = Instant::now();
    let mut every_second = micro_tests::beat(Duration::from_secs(1));
    while start.elapsed() < Duration::from_secs(20) {
        every_second.tick().await;
        leases.keep_alive(id).await?;
    }
    assert_eq!(store.read("l/kept").await?.value, b"k");
    let ttl = leases.time_to_live(id, true).await?;
    assert_eq!(ttl.keys.len(), 1);

    // A 5 s lease kept alive through a leader kill survives the election.
    let leader = c.wait_leader(LONG).await?;
    let survivor = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader)
        .expect("a survivor");
    let (sclient, id5) = {
        let cl = c.client(survivor).await?;
        let id5 = cl.leases().grant(Duration::from_secs(5)).await?;
        cl.store()
            .put(
                "l/five",
                b"5".to_vec(),
                Put {
                    lease: id5,
                    ..Default::default()
                },
            )
            .await?;
        (cl, id5)
    };
    c.kill(leader);
    let start = Instant::now();
    // Keep it alive every second (failures during the election are retried next second) for
    // twice its TTL.
    let mut every_second = micro_tests::beat(Duration::from_secs(1));
    while start.elapsed() < Duration::from_secs(10) {
        every_second.tick().await;
        let _ = sclient.leases().keep_alive(id5).await;
    }
    let read = eventually("the lease after the election", LONG, || async {
        match sclient.store().read("l/five").await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Err(anyhow::anyhow!("l/five is gone: the lease died")),
            Err(_) => Ok(None),
        }
    })
    .await?;
    assert_eq!(read.value, b"5");
    assert!(sclient.leases().time_to_live(id5, false).await?.ttl > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_history_beyond_the_configured_revisions() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::new(1).with_args(&["--history-revisions", "10"]);
    c.spawn(1)?;
    c.wait_leader(LONG).await?;
    let store = c.client(1).await?.store();
    let mut last = 0;
    for i in 0..40 {
        last = store.write(&format!("h/{i}"), b"x".to_vec()).await?;
    }
    // Within a few ticks, the history holds about the last 10 revisions (plus 10% slack).
    let first = eventually("the history to be compacted", LONG, || async {
        let err = match store.watch("h/", watch_opts(1)).await {
            Err(e) => e.to_string(),
            Ok(mut w) => match w.next().await {
                Err(e) => e.to_string(),
                Ok(_) => return Ok(None),
            },
        };
        let first: u64 = err
            .rsplit("compact_revision ")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected error: {err}"))?;
        Ok(Some(first))
    })
    .await?;
    assert!(
        first >= last - 11 && first <= last - 9,
        "first {first}, last {last}"
    );
    let mut w = store.watch("h/", watch_opts(first)).await?;
    assert_eq!(take(&mut w, 1).await?[0].0, first);
    Ok(())
}
