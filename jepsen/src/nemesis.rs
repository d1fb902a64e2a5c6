//! Faults, scheduled from a seeded RNG: one fault at a time, held for a while, then healed.
//! Every fault and heal is an invoke/completion pair of the nemesis process (-1) in the
//! history; the completion's value says which nodes or links it touched and whether it took
//! effect.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::cluster::{probable_leader, Cluster};
use crate::history::{Op, Recorder, Type, F, HOLDER_NEMESIS, NEMESIS};
use crate::proxy::{Mode, Net};
use crate::workload::{Ctx, PauseRequest};
use crate::{corrupt, membership};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a node (the leader half of the time); heal: restart it on its data dir.
    Kill,
    /// SIGSTOP a node (the leader half of the time); heal: SIGCONT.
    Pause,
    /// Cut one random node off from the others.
    IsolateOne,
    /// Cut the current leader off from the others.
    IsolateLeader,
    /// Random majority / minority halves.
    Split,
    /// Two halves that cannot talk, and one node that talks to both.
    Bridge,
    /// One direction of one link only (a→b dropped, b→a passes).
    OneWay,
    /// Remove a non-leader member, kill it, wipe its data dir and restart it with `--join`
    /// (a learner catching up under load); heal: promote it back to voter.
    Membership,
    /// SIGKILL a node, damage its data dir (a flipped log byte, a lost log tail or a flipped
    /// snapshot byte) and restart it; it must refuse to start naming the damage, or start and
    /// catch up. Heal: the membership route if it refused, else wait until it caught up.
    Corrupt,
    /// Lock workload: the next lock holder stops renewing its lease between its read and its
    /// fenced write, as a SIGSTOPped client would, until the heal (at least twice the lock's
    /// TTL). Runs on its own schedule beside the node faults ([`HolderPauser`]).
    PauseHolder,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::IsolateOne => "partition-one",
            Fault::IsolateLeader => "partition-leader",
            Fault::Split => "partition-split",
            Fault::Bridge => "partition-bridge",
            Fault::OneWay => "partition-oneway",
            Fault::Membership => "membership",
            Fault::Corrupt => "corrupt",
            Fault::PauseHolder => "pause-holder",
        }
    }

    /// Parses a comma-separated nemesis list: `kill`, `pause`, `partition` (every partition
    /// kind) or one kind (`partition-one`, `partition-leader`, ...), `membership`, `corrupt`,
    /// `pause-holder`, `all` (everything but `corrupt`, which must be asked for by name);
    /// `none` or empty for none.
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let add: &[Fault] = match part {
                "none" => &[],
                "all" => &[
                    Fault::Kill,
                    Fault::Pause,
                    Fault::IsolateOne,
                    Fault::IsolateLeader,
                    Fault::Split,
                    Fault::Bridge,
                    Fault::OneWay,
                    Fault::Membership,
                    Fault::PauseHolder,
                ],
                "membership" => &[Fault::Membership],
                "pause-holder" => &[Fault::PauseHolder],
                "corrupt" => &[Fault::Corrupt],
                "kill" => &[Fault::Kill],
                "pause" => &[Fault::Pause],
                "partition" => &[
                    Fault::IsolateOne,
                    Fault::IsolateLeader,
                    Fault::Split,
                    Fault::Bridge,
                    Fault::OneWay,
                ],
                "partition-one" => &[Fault::IsolateOne],
                "partition-leader" => &[Fault::IsolateLeader],
                "partition-split" => &[Fault::Split],
                "partition-bridge" => &[Fault::Bridge],
                "partition-oneway" => &[Fault::OneWay],
                o => return Err(format!(
                    "unknown nemesis {o:?} (kill, pause, partition, partition-one, partition-leader, partition-split, partition-bridge, partition-oneway, membership, corrupt, pause-holder, all, none)"
                )),
            };
            for f in add {
                if !out.contains(f) {
                    out.push(*f);
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Fault>,
    /// Calm between a heal and the next fault.
    pub quiet: (Duration, Duration),
    /// How long a fault lasts.
    pub hold: (Duration, Duration),
    /// Before the first fault.
    pub warmup: Duration,
    /// What the corrupt nemesis may do (one is picked among those that apply each time).
    pub corruptions: Vec<corrupt::Kind>,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            faults: Vec::new(),
            quiet: (Duration::from_secs(2), Duration::from_secs(5)),
            hold: (Duration::from_secs(3), Duration::from_secs(8)),
            warmup: Duration::from_secs(2),
            corruptions: corrupt::Kind::ALL.to_vec(),
        }
    }
}

/// What is currently broken, to heal.
enum Active {
    Node(Fault, u64),
    Links(Fault),
    /// A wiped node restarted with `--join`: promote it.
    Promote(Fault, u64),
    /// A node that refused to start on its damaged data dir: the membership route.
    Rejoin(Fault, u64),
    /// A node that started on a damaged data dir: wait until it has caught up.
    CatchUp(Fault, u64),
}

/// How long a membership heal may take (catching up by snapshot included).
const HEAL_DEADLINE: Duration = Duration::from_secs(60);
/// How long a restarted node may take to either exit or answer.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub net: Arc<Net>,
    pub rec: Arc<Recorder>,
    pub ctx: Arc<Ctx>,
    pub schedule: Schedule,
    pub rng: StdRng,
}

fn lock(c: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..hi)
    }
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        net: Arc<Net>,
        rec: Arc<Recorder>,
        ctx: Arc<Ctx>,
        schedule: Schedule,
        seed: u64,
    ) -> Nemesis {
        Nemesis {
            cluster,
            net,
            rec,
            ctx,
            schedule,
            rng: StdRng::seed_from_u64(seed.wrapping_add(0x6e656d65)),
        }
    }

    fn record(&self, kind: Type, value: Value) {
        self.rec
            .record(Op::new(NEMESIS, kind, F::Nemesis, None, value, 0));
    }

    /// Sleeps up to `d`; false when the run stopped meanwhile.
    async fn wait(&self, d: Duration) -> bool {
        wait_unless_stopped(&self.ctx, d).await
    }

    async fn leader(&self) -> Option<u64> {
        let addrs: Vec<(u64, String)> = {
            let c = lock(&self.cluster);
            c.running().into_iter().map(|i| (i, c.grpc(i))).collect()
        };
        probable_leader(&addrs).await
    }

    /// A node to kill or pause: the leader half of the time.
    async fn target(&mut self) -> u64 {
        let ids = lock(&self.cluster).ids();
        if self.rng.random_bool(0.5) {
            if let Some(l) = self.leader().await {
                return l;
            }
        }
        ids[self.rng.random_range(0..ids.len())]
    }

    fn mode(&mut self) -> Mode {
        if self.rng.random_bool(0.5) {
            Mode::Blackhole
        } else {
            Mode::Close
        }
    }

    async fn apply(&mut self, fault: Fault) -> Option<Active> {
        self.record(Type::Invoke, json!({"fault": fault.name()}));
        let ids = lock(&self.cluster).ids();
        let (value, active) = match fault {
            Fault::Kill | Fault::Pause => {
                let n = self.target().await;
                let mut c = lock(&self.cluster);
                c.reap();
                let effect = if fault == Fault::Kill {
                    c.kill(n)
                } else {
                    c.pause(n)
                };
                (
                    json!({"fault": fault.name(), "nodes": [n], "effect": effect}),
                    effect.then_some(Active::Node(fault, n)),
                )
            }
            Fault::Membership => self.apply_membership().await,
            // Never picked here: `run` leaves it to the HolderPauser.
            Fault::PauseHolder => (json!({"fault": fault.name(), "effect": false}), None),
            Fault::Corrupt => self.apply_corrupt().await,
            _ => {
                let mode = self.mode();
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                let (a, b): (Vec<u64>, Vec<u64>) = match fault {
                    Fault::IsolateOne => (vec![shuffled[0]], shuffled[1..].to_vec()),
                    Fault::IsolateLeader => match self.leader().await {
                        Some(l) => (vec![l], ids.iter().copied().filter(|i| *i != l).collect()),
                        None => (vec![], vec![]),
                    },
                    Fault::Split => {
                        let minority = (ids.len() - 1) / 2;
                        let k = minority.max(1);
                        (shuffled[..k].to_vec(), shuffled[k..].to_vec())
                    }
                    Fault::Bridge => {
                        // shuffled[0] is the bridge: it keeps both sides
                        let rest = &shuffled[1..];
                        let half = rest.len() / 2;
                        (rest[..half].to_vec(), rest[half..].to_vec())
                    }
                    _ => (vec![shuffled[0]], vec![shuffled[1]]),
                };
                if fault == Fault::OneWay {
                    self.net.set(a[0], b[0], mode);
                } else {
                    self.net.cut(&a, &b, mode);
                }
                let dropped = self.net.dropped();
                let effect = !dropped.is_empty();
                let mut v = json!({
                    "fault": fault.name(),
                    "effect": effect,
                    "mode": mode.name(),
                    "sides": [a, b],
                    "dropped": dropped,
                });
                if fault == Fault::Bridge {
                    v["bridge"] = json!(shuffled[0]);
                }
                (v, effect.then_some(Active::Links(fault)))
            }
        };
        self.record(Type::Ok, value);
        active
    }

    /// Removes a non-leader member, kills it, wipes its data dir and restarts it with `--join`.
    async fn apply_membership(&mut self) -> (Value, Option<Active>) {
        let f = Fault::Membership;
        let ids = lock(&self.cluster).ids();
        let leader = self.leader().await;
        let others: Vec<u64> = ids.iter().copied().filter(|i| Some(*i) != leader).collect();
        if ids.len() < 2 || others.is_empty() {
            return (
                json!({"fault": f.name(), "effect": false, "error": "needs two or more nodes"}),
                None,
            );
        }
        let n = others[self.rng.random_range(0..others.len())];
        let mut v = json!({"fault": f.name(), "nodes": [n], "leader": leader});
        let deadline = tokio::time::Instant::now() + HEAL_DEADLINE;
        match membership::remove(&self.cluster, n, deadline).await {
            Ok(attempts) => v["remove_attempts"] = json!(attempts),
            Err(e) => {
                // Still a member (or unknown): leave it alone.
                v["effect"] = json!(false);
                v["error"] = json!(format!("remove: {e}"));
                return (v, None);
            }
        }
        match membership::restart_empty(&self.cluster, n).await {
            Ok(seed) => {
                v["join"] = json!(seed);
                v["effect"] = json!(true);
                (v, Some(Active::Promote(f, n)))
            }
            Err(e) => {
                // Removed but not back: the heal's membership route adds it again.
                v["effect"] = json!(true);
                v["error"] = json!(format!("restart: {e}"));
                (v, Some(Active::Rejoin(f, n)))
            }
        }
    }

    /// Kills a node, damages its data dir, restarts it and sees what it does.
    async fn apply_corrupt(&mut self) -> (Value, Option<Active>) {
        let f = Fault::Corrupt;
        let leader = self.leader().await;
        let n = self.target().await;
        let (killed, dir, log) = {
            let mut c = lock(&self.cluster);
            c.reap();
            let killed = c.kill(n);
            (killed, c.data_dir(n), c.specs[&n].log.clone())
        };
        let kinds = corrupt::available(&dir, &self.schedule.corruptions);
        if kinds.is_empty() {
            let v = json!({"fault": f.name(), "nodes": [n], "leader": leader, "killed": killed,
                "effect": false, "error": "no allowed corruption applies (no snapshot yet?)"});
            let _ = lock(&self.cluster).spawn(n);
            return (v, None);
        }
        let kind = kinds[self.rng.random_range(0..kinds.len())];
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        let damage = tokio::task::spawn_blocking(move || corrupt::apply(&dir, kind, &mut rng))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        let mut v = json!({"fault": f.name(), "nodes": [n], "leader": leader, "killed": killed});
        let damage = match damage {
            Ok(d) => d,
            Err(e) => {
                // Nothing was damaged: just bring it back.
                v["effect"] = json!(false);
                v["error"] = json!(format!("{kind:?}: {e:#}"));
                let _ = lock(&self.cluster).spawn(n);
                return (v, None);
            }
        };
        v["damage"] = json!(damage);
        v["effect"] = json!(true);
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len());
        if let Err(e) = lock(&self.cluster).spawn(n) {
            v["outcome"] = json!("not restarted");
            v["error"] = json!(format!("{e:#}"));
            return (v, Some(Active::Rejoin(f, n)));
        }
        let grpc = lock(&self.cluster).grpc(n);
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let outcome = loop {
            if let Some(st) = lock(&self.cluster).exited(n) {
                break Some(st);
            }
            if membership::status(&grpc).await.is_ok() {
                break None;
            }
            if tokio::time::Instant::now() > deadline {
                v["outcome"] = json!("no answer");
                return (v, Some(Active::Rejoin(f, n)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match outcome {
            Some(status) => {
                let err = new_error_line(&log, log_from);
                v["outcome"] = json!("refused");
                v["exit"] = json!(status);
                v["error"] = json!(err);
                if let Some(want) = damage.expected_error() {
                    v["named"] = json!(err.contains(&want));
                }
                (v, Some(Active::Rejoin(f, n)))
            }
            None => {
                v["outcome"] = json!("started");
                (v, Some(Active::CatchUp(f, n)))
            }
        }
    }

    async fn heal(&mut self, active: Active) {
        let value = match active {
            Active::Promote(f, n) => {
                self.record(
                    Type::Invoke,
                    json!({"fault": "heal", "of": f.name(), "nodes": [n], "how": "promote"}),
                );
                let deadline = tokio::time::Instant::now() + HEAL_DEADLINE;
                let mut v =
                    json!({"fault": "heal", "of": f.name(), "nodes": [n], "how": "promote"});
                match membership::promote(&self.cluster, n, deadline).await {
                    Ok(attempts) => {
                        v["effect"] = json!(true);
                        v["promote_attempts"] = json!(attempts);
                    }
                    Err(e) => {
                        v["effect"] = json!(false);
                        v["error"] = json!(e);
                    }
                }
                v
            }
            Active::Rejoin(f, n) => {
                self.record(
                    Type::Invoke,
                    json!({"fault": "heal", "of": f.name(), "nodes": [n], "how": "rejoin"}),
                );
                let deadline = tokio::time::Instant::now() + HEAL_DEADLINE;
                let mut v = membership::rejoin(&self.cluster, n, deadline).await;
                v["fault"] = json!("heal");
                v["of"] = json!(f.name());
                v["how"] = json!("rejoin");
                v
            }
            Active::CatchUp(f, n) => {
                self.record(
                    Type::Invoke,
                    json!({"fault": "heal", "of": f.name(), "nodes": [n], "how": "catch up"}),
                );
                let deadline = tokio::time::Instant::now() + HEAL_DEADLINE;
                let mut v =
                    json!({"fault": "heal", "of": f.name(), "nodes": [n], "how": "catch up"});
                match membership::caught_up(&self.cluster, n, deadline).await {
                    Ok(index) => {
                        v["effect"] = json!(true);
                        v["applied"] = json!(index);
                    }
                    Err(e) => {
                        v["effect"] = json!(false);
                        v["error"] = json!(e);
                    }
                }
                v
            }
            Active::Node(f, n) => {
                self.record(
                    Type::Invoke,
                    json!({"fault": "heal", "of": f.name(), "nodes": [n]}),
                );
                let mut c = lock(&self.cluster);
                let effect = match f {
                    Fault::Kill => c.spawn(n).is_ok(),
                    _ => c.resume(n),
                };
                json!({"fault": "heal", "of": f.name(), "nodes": [n], "effect": effect})
            }
            Active::Links(f) => {
                self.record(Type::Invoke, json!({"fault": "heal", "of": f.name()}));
                self.net.heal();
                json!({"fault": "heal", "of": f.name(), "effect": true})
            }
        };
        self.record(Type::Ok, value);
    }

    /// Injects faults until the run stops, then heals whatever is broken.
    pub async fn run(mut self) {
        // Pausing a holder is the HolderPauser's, on its own schedule.
        let faults: Vec<Fault> = self
            .schedule
            .faults
            .iter()
            .copied()
            .filter(|f| *f != Fault::PauseHolder)
            .collect();
        if faults.is_empty() {
            return;
        }
        if !self.wait(self.schedule.warmup).await {
            return;
        }
        loop {
            let fault = faults[self.rng.random_range(0..faults.len())];
            let active = self.apply(fault).await;
            let hold = between(&mut self.rng, self.schedule.hold);
            let go_on = self.wait(hold).await;
            if let Some(a) = active {
                self.heal(a).await;
            }
            if !go_on {
                return;
            }
            // crashed nodes (exits we did not cause) come back too
            let crashed = lock(&self.cluster).reap();
            for n in crashed {
                self.record(
                    Type::Invoke,
                    json!({"fault": "heal", "of": "crash", "nodes": [n]}),
                );
                let effect = lock(&self.cluster).spawn(n).is_ok();
                self.record(
                    Type::Ok,
                    json!({"fault": "heal", "of": "crash", "nodes": [n], "effect": effect}),
                );
            }
            let quiet = between(&mut self.rng, self.schedule.quiet);
            if !self.wait(quiet).await {
                return;
            }
        }
    }
}

/// Sleeps up to `d`; false when the run stopped meanwhile.
async fn wait_unless_stopped(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = ctx.halted() => {}
    }
    !ctx.stop.load(Ordering::SeqCst)
}

/// How long an offered pause waits for a lock holder to take it.
const PAUSE_OFFER: Duration = Duration::from_secs(5);

/// Pause-the-holder (lock workload): the clients are tasks of this process, so a holder
/// cannot be SIGSTOPped; instead the next holder after an offer stops renewing its lease
/// between its read and its fenced write and waits for the heal, which comes after the
/// schedule's hold but at least twice the lock's TTL, so its lease has run out. One pause at
/// a time, beside the node faults and on its own schedule (process -3 in the history), so
/// holders are also paused while nodes are down or cut off.
pub struct HolderPauser {
    pub rec: Arc<Recorder>,
    pub ctx: Arc<Ctx>,
    pub schedule: Schedule,
    pub rng: StdRng,
}

impl HolderPauser {
    pub fn new(rec: Arc<Recorder>, ctx: Arc<Ctx>, schedule: Schedule, seed: u64) -> Self {
        HolderPauser {
            rec,
            ctx,
            schedule,
            rng: StdRng::seed_from_u64(seed.wrapping_add(0x7061_7573)),
        }
    }

    fn record(&self, kind: Type, value: Value) {
        self.rec
            .record(Op::new(HOLDER_NEMESIS, kind, F::Nemesis, None, value, 0));
    }

    pub async fn run(mut self) {
        let f = Fault::PauseHolder.name();
        if !wait_unless_stopped(&self.ctx, self.schedule.warmup).await {
            return;
        }
        loop {
            self.record(Type::Invoke, json!({ "fault": f }));
            let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
            let (resume_tx, resume_rx) = tokio::sync::oneshot::channel();
            self.ctx.offer_pause(PauseRequest {
                taken: taken_tx,
                resume: resume_rx,
            });
            let taken = tokio::select! {
                r = taken_rx => r.ok(),
                _ = tokio::time::sleep(PAUSE_OFFER) => None,
                _ = self.ctx.halted() => None,
            };
            let go_on = match taken {
                None => {
                    self.ctx.withdraw_pause();
                    self.record(
                        Type::Ok,
                        json!({"fault": f, "effect": false, "error": "no lock holder took the pause"}),
                    );
                    !self.ctx.stop.load(Ordering::SeqCst)
                }
                Some((process, token)) => {
                    let hold =
                        between(&mut self.rng, self.schedule.hold).max(self.ctx.lock_ttl * 2);
                    let v = json!({"fault": f, "effect": true, "process": process, "token": token,
                        "hold_ms": hold.as_millis() as u64});
                    self.record(Type::Ok, v);
                    let go_on = wait_unless_stopped(&self.ctx, hold).await;
                    let v = json!({"fault": "heal", "of": f, "process": process, "token": token});
                    self.record(Type::Invoke, v.clone());
                    let _ = resume_tx.send(());
                    let mut v = v;
                    v["effect"] = json!(true);
                    self.record(Type::Ok, v);
                    go_on
                }
            };
            if !go_on {
                return;
            }
            let quiet = between(&mut self.rng, self.schedule.quiet);
            if !wait_unless_stopped(&self.ctx, quiet).await {
                return;
            }
        }
    }
}

/// The first line mentioning an error that `log` gained after byte `from` (a node that
/// refuses to start prints `error: ...` and exits), or its last line.
fn new_error_line(log: &std::path::Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let new = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let line = new
        .lines()
        .find(|l| l.starts_with("error") || l.contains("ERROR") || l.contains("panicked"))
        .or_else(|| new.lines().last())
        .unwrap_or("");
    let mut line = line.trim().to_string();
    line.truncate(500);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_lists() {
        assert_eq!(
            Fault::parse_list("membership, corrupt").unwrap(),
            vec![Fault::Membership, Fault::Corrupt]
        );
        let all = Fault::parse_list("all").unwrap();
        assert!(all.contains(&Fault::Membership) && all.contains(&Fault::Kill));
        assert!(
            !all.contains(&Fault::Corrupt),
            "corrupt must be asked for by name"
        );
        assert!(all.contains(&Fault::PauseHolder));
        assert_eq!(all.len(), 9);
        assert_eq!(Fault::parse_list("all,corrupt").unwrap().len(), 10);
        assert!(Fault::parse_list("bogus")
            .unwrap_err()
            .contains("membership"));
    }
}
