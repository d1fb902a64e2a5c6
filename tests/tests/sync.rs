//! Locks and elections on three real processes: mutual exclusion with increasing tokens, a
//! paused holder fenced off, a held lock surviving a leader kill, and elections.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use micro_tests::{eventually, micro_bin, TestCluster};

const LONG: Duration = Duration::from_secs(30);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_lock_holders_never_overlap_and_tokens_increase() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let record = c.root().join("records");
    let mut procs = Vec::new();
    for i in 0..10u64 {
        let node = 1 + i % 3;
        let script = format!(
            "echo start $MICRO_LOCK_TOKEN >> {r}; sleep 0.2; echo end $MICRO_LOCK_TOKEN >> {r}",
            r = record.display()
        );
        procs.push(
            c.micro()
                .args([
                    "--server",
                    &c.spec(node).grpc,
                    "lock",
                    "L",
                    "--ttl",
                    "5s",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    for mut p in procs {
        assert!(p.wait()?.success());
    }
    let text = std::fs::read_to_string(&record)?;
    let lines: Vec<(&str, u64)> = text
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').expect("a record");
            (what, token.parse().expect("a token"))
        })
        .collect();
    assert_eq!(lines.len(), 20, "{text}");
    let mut last = 0;
    for pair in lines.chunks(2) {
        // start t, end t: never interleaved, and each holder's token above the last.
        assert_eq!(pair[0].0, "start", "{text}");
        assert_eq!(pair[1], ("end", pair[0].1), "{text}");
        assert!(pair[0].1 > last, "{text}");
        last = pair[0].1;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lock_and_its_fenced_write_is_refused() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let dir = c.root().to_path_buf();
    let t1_file = dir.join("t1");
    let mut first = c
        .micro()
        .args([
            "--server",
            &c.spec(1).grpc,
            "lock",
            "L",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "echo $MICRO_LOCK_TOKEN > {}; sleep 60",
            t1_file.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let t1: u64 = eventually("the first holder's token", LONG, || async {
        Ok(std::fs::read_to_string(&t1_file)
            .ok()
            .and_then(|s| s.trim().parse().ok()))
    })
    .await?;
    // Pause the holder (its keepalives stop) past its TTL.
    Command::new("kill")
        .args(["-STOP", &first.id().to_string()])
        .status()?;
    let t2_file = dir.join("t2");
    let mut second = c.micro()
        .args(["--server", &c.spec(2).grpc, "lock", "L", "--ttl", "5s", "--", "sh", "-c"])
        .arg(format!(
            "echo $MICRO_LOCK_TOKEN > {f}; {m} --server {s} store write shared second --fence $MICRO_LOCK_FENCE",
            f = t2_file.display(),
            m = micro_bin().display(),
            s = c.spec(2).grpc
        ))
        .stdout(Stdio::null())
        .spawn()?;
    assert!(second.wait()?.success());
    let t2: u64 = std::fs::read_to_string(&t2_file)?.trim().parse()?;
    assert!(t2 > t1, "{t2} > {t1}");
    // The woken holder's fenced write is refused, naming both tokens.
    Command::new("kill")
        .args(["-CONT", &first.id().to_string()])
        .status()?;
    let (ok, _, err) = c.cli(
        3,
        &[
            "store",
            "write",
            "shared",
            "stale",
            "--fence",
            &format!("L:{t1}"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains(&t1.to_string()) && err.contains(&t2.to_string()),
        "{err}"
    );
    assert_eq!(
        c.client(3).await?.store().read("shared").await?.value,
        b"second"
    );
    // And the woken `micro lock` notices it lost the lock: it kills its command and fails.
    let status = tokio::task::spawn_blocking(move || first.wait()).await??;
    assert_eq!(status.code(), Some(75), "exit status of the stale holder");
    Ok(())
}

/// A lock call cancelled while queued (a client timeout) must not leave its lease kept alive:
/// had the server granted the lock meanwhile, nobody would ever release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_call_lets_its_lease_run_out() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let client = c.client(1).await?;
    let sync = client.sync();
    let holder = sync.lock("X", Duration::from_secs(5)).await?;
    let s = sync.clone();
    let waiter = tokio::spawn(async move { s.lock("X", Duration::from_secs(1)).await });
    eventually("the waiter to queue", LONG, || async {
        let l = sync.list().await?;
        Ok((l.iter().map(|x| x.waiting).sum::<u64>() == 1).then_some(()))
    })
    .await?;
    waiter.abort();
    // Only the holder's lease is left once the waiter's 1 s TTL has run out.
    let leases = client.leases();
    eventually("the cancelled waiter's lease to expire", LONG, || async {
        let l = leases.list().await?;
        Ok((l.len() == 1 && l[0].id == holder.lease()).then_some(()))
    })
    .await?;
    holder.unlock().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_and_its_queue_survive_a_leader_kill() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(LONG).await?;
    let survivor = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader)
        .expect("a survivor");
    let sync = c.client(survivor).await?.sync();
    let holder = sync.lock("Q", Duration::from_secs(3)).await?;
    // Two waiters queue behind it, in this order.
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let s = sync.clone();
        waiters.push(tokio::spawn(async move {
            s.lock("Q", Duration::from_secs(3)).await
        }));
        eventually("the waiter to queue", LONG, || async {
            let l = sync.list().await?;
            Ok((l.iter().map(|x| x.waiting).sum::<u64>() == waiters.len() as u64).then_some(()))
        })
        .await?;
    }
    c.kill(leader);
    // Well past the TTL, through the election: still held by the same token, both waiting.
    let lost = tokio::time::timeout(Duration::from_secs(8), holder.lost()).await;
    assert!(
        lost.is_err(),
        "the holder lost its lock during the election"
    );
    let l = eventually("the lock list after the election", LONG, || async {
        Ok(sync.list().await.ok())
    })
    .await?;
    assert_eq!((l[0].token, l[0].waiting), (holder.token(), 2));
    // Released, the waiters get it in the order they asked, with increasing tokens.
    let first_token = holder.token();
    holder.unlock().await?;
    let mut tokens = vec![first_token];
    for w in waiters {
        let g = tokio::time::timeout(LONG, w).await???;
        tokens.push(g.token());
        g.unlock().await?;
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_the_next_leads_after_an_expiry_or_a_resign() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3).await?;
    let mut observers = Vec::new();
    for id in [1, 2, 3] {
        observers.push(c.client(id).await?.sync().observe("E").await?);
    }
    let sync = c.client(1).await?.sync();
    let leader_is = |want: &'static str| {
        let sync = sync.clone();
        move || {
            let sync = sync.clone();
            async move {
                let l = sync.leader("E").await?;
                anyhow::Ok((l.token != 0 && l.value == want.as_bytes()).then_some(l.token))
            }
        }
    };
    // Candidate a is a `micro election campaign` process; b and c wait behind it, in order.
    let mut a = c
        .micro()
        .args([
            "--server",
            &c.spec(1).grpc,
            "election",
            "campaign",
            "E",
            "a",
            "--ttl",
            "2s",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let ta = eventually("a to lead", LONG, leader_is("a")).await?;
    let b = {
        let s = c.client(2).await?.sync();
        tokio::spawn(async move { s.campaign("E", b"b".to_vec(), Duration::from_secs(2)).await })
    };
    let queued = |n: u64| {
        let sync = sync.clone();
        move || {
            let sync = sync.clone();
            async move {
                Ok(sync
                    .list()
                    .await?
                    .first()
                    .is_some_and(|l| l.waiting == n)
                    .then_some(()))
            }
        }
    };
    eventually("b to queue", LONG, queued(1)).await?;
    let cc = {
        let s = c.client(3).await?.sync();
        tokio::spawn(async move { s.campaign("E", b"c".to_vec(), Duration::from_secs(2)).await })
    };
    eventually("c to queue", LONG, queued(2)).await?;
    // a is paused: its lease expires and b leads within TTL + 1 s.
    Command::new("kill")
        .args(["-STOP", &a.id().to_string()])
        .status()?;
    let paused = Instant::now();
    let tb = eventually("b to lead", LONG, leader_is("b")).await?;
    let took = paused.elapsed();
    assert!(
        took <= Duration::from_secs(3),
        "b led {took:?} after a stopped"
    );
    assert!(tb > ta);
    // b resigns: c leads.
    let gb = tokio::time::timeout(LONG, b).await???;
    gb.unlock().await?;
    let tc = eventually("c to lead", LONG, leader_is("c")).await?;
    assert!(tc > tb);
    let gc = tokio::time::timeout(LONG, cc).await???;
    // Every observer saw the same leaders, one at a time, in order.
    for (i, o) in observers.iter_mut().enumerate() {
        let mut values = Vec::new();
        while values.len() < 3 {
            let l = tokio::time::timeout(LONG, o.next())
                .await??
                .expect("a leader change");
            if l.token == 0 {
                continue;
            }
            let v = String::from_utf8_lossy(&l.value).into_owned();
            if values.last() != Some(&v) {
                values.push(v);
            }
        }
        assert_eq!(values, vec!["a", "b", "c"], "observer on node {}", i + 1);
    }
    gc.unlock().await?;
    Command::new("kill")
        .args(["-CONT", &a.id().to_string()])
        .status()?;
    let _ = a.kill();
    let _ = a.wait();
    Ok(())
}
