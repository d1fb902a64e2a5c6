//! Membership operations on the running cluster through the SDK, for the nemeses and the final
//! heal: remove a member, add a wiped node back (`--join`), promote it once it has caught up.
//! Each waits on a condition (an accepted call, a status that shows the change) up to a
//! deadline, polling; none holds the cluster lock across an await.

use std::sync::Mutex;
use std::time::Duration;

use micro::proto::cluster::StatusResponse;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cluster::{probable_leader, Cluster};

/// Between polls of a condition.
const POLL: Duration = Duration::from_millis(200);
/// One membership or status call.
const CALL: Duration = Duration::from_secs(5);

pub(crate) fn lock(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// (id, gRPC address) of the running nodes other than `except`.
fn running_except(c: &Mutex<Cluster>, except: Option<u64>) -> Vec<(u64, String)> {
    let c = lock(c);
    c.running()
        .into_iter()
        .filter(|i| Some(*i) != except)
        .map(|i| (i, c.grpc(i)))
        .collect()
}

async fn client(addr: &str) -> Result<micro::Client, String> {
    match tokio::time::timeout(CALL, crate::connect(addr)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Status as node `addr` sees it.
pub async fn status(addr: &str) -> Result<StatusResponse, String> {
    let c = client(addr).await?;
    match tokio::time::timeout(CALL, c.cluster_status()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("status timed out".into()),
    }
}

/// The node to send membership calls to: the probable leader among `addrs` (it would
/// forward anyway), else the first.
async fn admin(addrs: &[(u64, String)]) -> Option<(u64, String)> {
    let leader = probable_leader(addrs).await;
    addrs
        .iter()
        .find(|(i, _)| Some(*i) == leader)
        .or_else(|| addrs.first())
        .cloned()
}

/// The members (id → role) as the leader sees them, asked through any of `addrs`.
pub async fn roles(addrs: &[(u64, String)]) -> Option<Vec<(u64, String)>> {
    let leader = probable_leader(addrs).await?;
    let addr = addrs.iter().find(|(i, _)| *i == leader)?.1.clone();
    let s = status(&addr).await.ok()?;
    (s.leader == leader).then(|| s.members.iter().map(|m| (m.id, m.role.clone())).collect())
}

/// Removes member `id` through the other running nodes until the leader's view no longer
/// lists it. `Ok(attempts)`, or the last error at the deadline.
pub async fn remove(c: &Mutex<Cluster>, id: u64, deadline: Instant) -> Result<u32, String> {
    let mut attempts = 0;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let others = running_except(c, Some(id));
        if let Some(view) = roles(&others).await {
            if !view.iter().any(|(m, _)| *m == id) {
                return Ok(attempts);
            }
        }
        if let Some((_, addr)) = admin(&others).await {
            attempts += 1;
            match client(&addr).await {
                Ok(cl) => match tokio::time::timeout(CALL, cl.remove_member(id)).await {
                    Ok(Ok(s)) if !s.members.iter().any(|m| m.id == id) => return Ok(attempts),
                    Ok(Ok(_)) => last = "removal accepted, still listed".into(),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "remove timed out".into(),
                },
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Err(last)
}

/// Promotes learner `id` through the other running nodes, retrying while it is refused (not
/// caught up yet, not yet added by its `--join`), until the leader's view lists it as a voter.
/// `Ok(attempts)`, or the last refusal at the deadline.
pub async fn promote(c: &Mutex<Cluster>, id: u64, deadline: Instant) -> Result<u32, String> {
    let mut attempts = 0;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let others = running_except(c, Some(id));
        if let Some(view) = roles(&others).await {
            if view.iter().any(|(m, r)| *m == id && r == "voter") {
                return Ok(attempts);
            }
        }
        if let Some((_, addr)) = admin(&others).await {
            attempts += 1;
            match client(&addr).await {
                Ok(cl) => match tokio::time::timeout(CALL, cl.promote_member(id)).await {
                    Ok(Ok(s)) if s.members.iter().any(|m| m.id == id && m.role == "voter") => {
                        return Ok(attempts)
                    }
                    Ok(Ok(_)) => last = "promotion accepted, not yet a voter".into(),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "promote timed out".into(),
                },
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Err(last)
}

/// The peer address of a live member other than `id` (the probable leader if there is one).
pub async fn seed(c: &Mutex<Cluster>, id: u64) -> Option<String> {
    let others = running_except(c, Some(id));
    let (seed, _) = admin(&others).await?;
    Some(lock(c).peer(seed))
}

/// The membership route for a node whose data dir is lost or damaged: remove it, stop it,
/// wipe its data dir, restart it with `--join` (same id and ports, so the proxies and the
/// clients bound to it keep working) and promote it once it has caught up. Returns what was
/// done; `"effect"` is true when it ended as a voter.
pub async fn rejoin(c: &Mutex<Cluster>, id: u64, deadline: Instant) -> Value {
    let mut v = json!({"nodes": [id]});
    match remove(c, id, deadline).await {
        Ok(n) => v["remove_attempts"] = json!(n),
        Err(e) => {
            v["effect"] = json!(false);
            v["error"] = json!(format!("remove: {e}"));
            return v;
        }
    }
    let restarted = restart_empty(c, id).await;
    match restarted {
        Ok(seed) => v["join"] = json!(seed),
        Err(e) => {
            v["effect"] = json!(false);
            v["error"] = json!(e);
            return v;
        }
    }
    match promote(c, id, deadline).await {
        Ok(n) => {
            v["promote_attempts"] = json!(n);
            v["effect"] = json!(true);
        }
        Err(e) => {
            v["effect"] = json!(false);
            v["error"] = json!(format!("promote: {e}"));
        }
    }
    v
}

/// Kills node `id`, wipes its data dir and starts it with `--join` a live member; returns the
/// seed's peer address.
pub async fn restart_empty(c: &Mutex<Cluster>, id: u64) -> Result<String, String> {
    let seed = seed(c, id)
        .await
        .ok_or_else(|| "no live member to join through".to_string())?;
    let mut cl = lock(c);
    cl.kill(id);
    cl.wipe(id, &seed).map_err(|e| format!("{e:#}"))?;
    cl.spawn(id).map_err(|e| format!("{e:#}"))?;
    Ok(seed)
}

/// Makes every node a voter again: nodes the leader does not list as voters take the
/// membership route (a learner is only promoted). Returns one line per node it had to fix.
pub async fn ensure_voters(c: &Mutex<Cluster>, deadline: Instant) -> Vec<String> {
    let mut fixed = Vec::new();
    let ids = lock(c).ids();
    let Some(view) = ({
        let mut view = None;
        while view.is_none() && Instant::now() < deadline {
            view = roles(&running_except(c, None)).await;
            if view.is_none() {
                tokio::time::sleep(POLL).await;
            }
        }
        view
    }) else {
        return vec!["no leader to ask for the membership".into()];
    };
    for id in ids {
        let role = view.iter().find(|(m, _)| *m == id).map(|(_, r)| r.as_str());
        match role {
            Some("voter") => {}
            Some(_) => {
                let r = promote(c, id, deadline).await;
                fixed.push(format!("node {id} was a learner; promote: {r:?}"));
            }
            None => {
                let r = rejoin(c, id, deadline).await;
                fixed.push(format!("node {id} was not a member; rejoin: {r}"));
            }
        }
    }
    fixed
}

/// Waits until node `id` has applied at least what the leader had applied when this was
/// called (trivial when it is the leader); returns the node's applied index.
pub async fn caught_up(c: &Mutex<Cluster>, id: u64, deadline: Instant) -> Result<u64, String> {
    let self_applied = |s: &StatusResponse| {
        s.members
            .iter()
            .find(|m| m.id == s.node_id)
            .map(|m| m.applied_index)
    };
    let mut target = None;
    while target.is_none() {
        // (the node itself may have become the leader: then it is its own target)
        let all = running_except(c, None);
        if let Some(l) = probable_leader(&all).await {
            if let Some((_, addr)) = all.iter().find(|(i, _)| *i == l) {
                target = status(addr).await.ok().and_then(|s| self_applied(&s));
            }
        }
        if target.is_none() {
            if Instant::now() > deadline {
                return Err("no leader to compare with".into());
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let target = target.unwrap_or(0);
    let addr = lock(c).grpc(id);
    loop {
        let last = match status(&addr).await {
            Ok(s) => match self_applied(&s) {
                Some(a) if a >= target => return Ok(a),
                a => format!("applied {a:?} of {target}"),
            },
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}
