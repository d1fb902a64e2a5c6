//! Three real processes: bootstrap, follower writes, failover, catch-up, TTL, durability and
//! corruption.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micro::store::Query;
use micro_tests::{eventually, TestCluster};

const LONG: Duration = Duration::from_secs(30);

fn follower_of(leader: u64, ids: &[u64]) -> u64 {
    *ids.iter().find(|i| **i != leader).expect("a follower")
}

/// Every key `k` with `from <= k < to` reads back `v{k}`, linearizably, from node `id`.
async fn assert_all_readable(
    c: &TestCluster,
    id: u64,
    keys: impl Iterator<Item = u64>,
) -> anyhow::Result<()> {
    let store = c.client(id).await?.store();
    for k in keys {
        let rec = store.read(&format!("k{k:05}")).await?;
        assert_eq!(rec.value, format!("v{k}").into_bytes(), "node {id} key {k}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_follower_writes_failover_and_catch_up() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let follower = follower_of(leader, &[1, 2, 3]);

    // 1000 writes sent to a follower (forwarded to the leader), 16 at a time.
    let store = c.client(follower).await?.store();
    let mut last = 0;
    for chunk in (0..1000u64).collect::<Vec<_>>().chunks(16) {
        let writes = chunk.iter().map(|k| {
            let s = store.clone();
            async move {
                s.write(&format!("k{k:05}"), format!("v{k}").into_bytes())
                    .await
            }
        });
        for r in futures::future::join_all(writes).await {
            last = last.max(r?);
        }
    }
    // Linearizable reads from every node see all of them (no waiting needed: read index).
    for id in [1, 2, 3] {
        assert_all_readable(&c, id, 0..1000).await?;
    }
    let keys = store.list("k", 0).await?;
    assert_eq!(keys.len(), 1000);

    // kill -9 the leader: a new one is elected and writes continue.
    c.kill(leader);
    let new_leader = c.wait_leader(LONG).await?;
    assert_ne!(new_leader, leader);
    let survivor = c.client(follower_of(leader, &[1, 2, 3])).await?.store();
    for k in 1000..1100u64 {
        let rev = survivor
            .write(&format!("k{k:05}"), format!("v{k}").into_bytes())
            .await?;
        assert!(
            rev > last,
            "revision {rev} after the failover is not above {last}"
        );
        last = rev;
    }

    // The old leader restarts and catches up to the same applied index. Waited for as such:
    // reading one node's index and then every node's was racy, since the restarted node may
    // stand for election and a new leader's blank entry moves every index on.
    c.spawn(leader)?;
    c.wait_leader(LONG).await?;
    let target = c.applied(new_leader).await?;
    eventually("every node at one applied index", LONG, || async {
        let applied: BTreeSet<u64> = futures::future::join_all([1, 2, 3].map(|i| c.applied(i)))
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok((applied.len() == 1 && applied.first() >= Some(&target)).then_some(()))
    })
    .await?;
    // Serializable reads on the restarted node see everything without asking the leader.
    let local = c.client(leader).await?.store();
    let q = Query {
        serializable: true,
        ..Default::default()
    };
    assert_eq!(local.query("k01099", q).await?.len(), 1);
    assert_all_readable(&c, leader, 990..1100).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_everywhere_at_the_same_index() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    // The first leader names the cluster with an entry of its own; let that happen first, so
    // the writes below are the last entries before the expiry tick.
    eventually("the cluster to be named", LONG, || async {
        Ok((!c
            .client(leader)
            .await?
            .cluster_status()
            .await?
            .cluster_id
            .is_empty())
        .then_some(()))
    })
    .await?;
    // The expiring record lives alone in its own database, so `tables` shows whether a node
    // still holds it (reads hide it by the reader's clock before the purge).
    let store = c.client(leader).await?.store();
    store
        .clone()
        .scope("ttl", "sessions")
        .write_with_ttl("session", b"s".to_vec(), Some(Duration::from_secs(2)))
        .await?;
    store.write("keeper", b"k".to_vec()).await?;
    for id in [1, 2, 3] {
        let rec = c
            .client(id)
            .await?
            .store()
            .scope("ttl", "sessions")
            .read("session")
            .await?;
        assert!(
            rec.expiry > 0 && rec.expiry <= 2,
            "remaining seconds: {}",
            rec.expiry
        );
    }
    // After the expiry every node answers NotFound. No writes are sent: the leader's tick
    // entry must carry the clock past the expiry.
    for id in [1, 2, 3] {
        let s = c.client(id).await?.store().scope("ttl", "sessions");
        eventually(
            &format!("node {id} to stop serving the expired record"),
            Duration::from_secs(10),
            || async {
                match s.read("session").await {
                    Err(e) if e.is_not_found() => Ok(Some(())),
                    Ok(_) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .await?;
    }
    // The purge itself is the leader's tick entry, applied with no client writes at all. Wait
    // for exactly what is compared below: the record physically gone on every node (its
    // table empty) and every node at the same applied index. (Waiting for "any entry after the
    // writes" was not enough: a new leader's blank entry is one too.)
    eventually(
        "the purge applied on every node, all at one index",
        LONG,
        || async {
            let mut applied = BTreeSet::new();
            for id in [1, 2, 3] {
                if !c.client(id).await?.store().tables("ttl").await?.is_empty() {
                    return Ok(None);
                }
                applied.insert(c.applied(id).await?);
            }
            Ok((applied.len() == 1).then_some(()))
        },
    )
    .await?;
    // Stop the followers first: with the leader stopped first, the other two would elect a
    // leader and apply its blank entry, and their views would differ from the first one's.
    let leader = c.wait_leader(LONG).await?;
    let order: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != leader)
        .chain([leader])
        .collect();
    let mut digests = BTreeSet::new();
    for id in order {
        c.stop(id)?;
        let db = micro_log::Db::open(&c.spec(id).data_dir.join("db"))?;
        let all = micro_state::views::store::query(
            &*db,
            &micro_state::views::store::Query {
                prefix: true,
                ..Default::default()
            },
            0, // reader clock 0: no read-time filtering, only what apply left behind
        )?;
        let keys: Vec<_> = all.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["keeper"], "node {id}");
        let ttl = micro_state::views::store::query(
            &*db,
            &micro_state::views::store::Query {
                db: "ttl".into(),
                table: "sessions".into(),
                prefix: true,
                ..Default::default()
            },
            0,
        )?;
        assert!(ttl.is_empty(), "node {id} still holds the expired record");
        assert!(micro_state::clock_ms(&*db)? > 0);
        let mut h = Vec::new();
        db.for_each_state(|k, v| {
            h.extend_from_slice(k);
            h.extend_from_slice(v);
            Ok::<_, std::convert::Infallible>(())
        })??;
        digests.insert(h);
    }
    assert_eq!(digests.len(), 1, "the three views are byte-identical");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_every_node() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let store = c.client(1 + w % 3).await?.store();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}-{i}");
                match store.write(&key, key.clone().into_bytes()).await {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(_) => return i,
                }
            }
            unreachable!()
        }));
    }
    // Let the writers get going (condition: some writes acknowledged), then kill everything.
    eventually("the writers to make progress", LONG, || async {
        Ok((acked.lock().unwrap().len() >= 300).then_some(()))
    })
    .await?;
    for id in [1, 2, 3] {
        c.kill(id);
    }
    for w in writers {
        w.await?;
    }
    let acked = acked.lock().unwrap().clone();
    for id in [1, 2, 3] {
        c.spawn(id)?;
    }
    c.wait_leader(LONG).await?;
    let store = c.client(2).await?.store();
    for key in &acked {
        let rec = store
            .read(key)
            .await
            .map_err(|e| anyhow::anyhow!("acknowledged {key} lost: {e}"))?;
        assert_eq!(rec.value, key.as_bytes());
    }
    eprintln!(
        "{} acknowledged writes all present after kill -9 of every node",
        acked.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_record_stops_the_node_and_is_named() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    let store = c.client(1).await?.store();
    for i in 0..20 {
        store.write(&format!("x{i}"), b"payload".to_vec()).await?;
    }
    let target = c.applied(1).await?;
    c.wait_applied(target, LONG).await?;
    c.stop(3)?;
    let index = {
        let db = micro_log::Db::open(&c.spec(3).data_dir.join("db"))?;
        let (index, _) = db.last_log()?.expect("node 3 has a log");
        let mut raw = db.raw_log_record(index)?.expect("record");
        let mid = raw.len() / 2;
        raw[mid] ^= 0x10;
        db.put_raw_log_record(index, &raw)?;
        index
    };
    let out = c.server_command(3).output()?;
    assert!(
        !out.status.success(),
        "a node with a corrupt log must refuse to start"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("log record {index} is corrupt: crc mismatch")),
        "stderr should name record {index}: {stderr}"
    );
    // The rest of the cluster keeps serving.
    store.write("after", b"ok".to_vec()).await?;
    Ok(())
}

/// A disk that loses log records after they were fsynced (outside Raft's fault model) must not
/// let the node run: with the tail gone it could resume leadership in the same term and write
/// different entries under ids its peers already hold (found by the jepsen corrupt nemesis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_lost_its_applied_tail_stops_the_node() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3).await?;
    let store = c.client(1).await?.store();
    for i in 0..20 {
        store.write(&format!("t{i}"), b"payload".to_vec()).await?;
    }
    let target = c.applied(1).await?;
    c.wait_applied(target, LONG).await?;
    c.stop(3)?;
    {
        let db = micro_log::Db::open(&c.spec(3).data_dir.join("db"))?;
        db.truncate_log(target - 1)?;
    }
    // Bounded: a node that wrongly starts would run until killed.
    let mut cmd = tokio::process::Command::from(c.server_command(3));
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(LONG, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("node 3 started on a log that lost its applied tail"))??;
    assert!(
        !out.status.success(),
        "a node whose log lost applied records must refuse to start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("log records {}..=", target - 1))
            && stderr.contains("are missing"),
        "stderr should name the missing records from {}: {stderr}",
        target - 1
    );
    store.write("after", b"ok".to_vec()).await?;
    Ok(())
}

/// Many clients on every node increment one counter by compare-and-swap at once. Concurrent
/// writes share log entries, so this checks that each write in an entry still has its own mod
/// revision: a CAS can only win against the exact write it read, and no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_increments_through_every_node_lose_nothing() -> anyhow::Result<()> {
    use micro::proto::store::{txn_op, Compare, TxnOp, TxnRequest, WriteRequest};
    const WORKERS: u64 = 18;
    const WINS_EACH: u64 = 8;
    let c = TestCluster::start(3).await?;
    c.client(1)
        .await?
        .store()
        .write("counter", b"0".to_vec())
        .await?;

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let store = c.client(w % 3 + 1).await?.store();
        workers.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            while (revisions.len() as u64) < WINS_EACH {
                let rec = store.read("counter").await?;
                let n: u64 = String::from_utf8(rec.value)?.parse()?;
                let resp = store
                    .txn(TxnRequest {
                        compare: vec![Compare {
                            key: "counter".into(),
                            mod_revision: rec.mod_revision,
                            ..Default::default()
                        }],
                        success: vec![TxnOp {
                            op: Some(txn_op::Op::Write(WriteRequest {
                                record: Some(micro::proto::store::Record {
                                    key: "counter".into(),
                                    value: (n + 1).to_string().into_bytes(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                        fence: None,
                    })
                    .await?;
                if resp.succeeded {
                    revisions.push(resp.revision);
                }
            }
            anyhow::Ok(revisions)
        }));
    }
    let mut all = BTreeSet::new();
    for w in workers {
        for rev in w.await?? {
            assert!(all.insert(rev), "two winning writes share revision {rev}");
        }
    }
    let rec = c.client(2).await?.store().read("counter").await?;
    assert_eq!(
        String::from_utf8(rec.value)?,
        (WORKERS * WINS_EACH).to_string(),
        "increments were lost"
    );
    assert_eq!(rec.mod_revision, *all.last().expect("wins"));
    Ok(())
}

/// openraft 0.9 can repeat a split vote between two survivors for a long time (its timers
/// campaign in lockstep; see the cluster crate's `elect`). With openraft's timed elections off
/// altogether (a debug-build switch), the election watchdog alone must elect a leader, at
/// bootstrap and after the leader is killed, and the survivors then take writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_elects_when_raft_timers_never_campaign() -> anyhow::Result<()> {
    let mut c = TestCluster::new(3).with_env("MICRO_TEST_NO_TIMED_ELECTIONS", "1");
    for id in 1..=3 {
        c.spawn(id)?;
    }
    let leader = c.wait_leader(LONG).await?;
    let store = c.client(follower_of(leader, &[1, 2, 3])).await?.store();
    store.write("before", b"1".to_vec()).await?;

    let campaigns = |c: &TestCluster| -> usize {
        c.running()
            .iter()
            .map(|id| {
                c.log(*id)
                    .matches("starting an election at a fresh random time")
                    .count()
            })
            .sum()
    };
    c.kill(leader);
    let before = campaigns(&c);
    let new_leader = c.wait_leader(LONG * 2).await?;
    assert_ne!(new_leader, leader);
    assert!(
        campaigns(&c) > before,
        "a survivor was elected without the watchdog"
    );
    let survivor = c.client(follower_of(leader, &[1, 2, 3])).await?.store();
    survivor.write("after", b"2".to_vec()).await?;
    let q = Query::default();
    assert_eq!(survivor.query("before", q.clone()).await?.len(), 1);
    assert_eq!(survivor.query("after", q).await?.len(), 1);
    Ok(())
}
