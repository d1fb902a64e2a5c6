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
use crate::history::{Op, Recorder, Type, F, NEMESIS};
use crate::proxy::{Mode, Net};
use crate::workload::Ctx;

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
        }
    }

    /// Parses a comma-separated nemesis list: `kill`, `pause`, `partition` (every partition
    /// kind) or one kind (`partition-one`, `partition-leader`, ...); `none` or empty for none.
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let add: &[Fault] = match part {
                "none" => &[],
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
                    "unknown nemesis {o:?} (kill, pause, partition, partition-one, partition-leader, partition-split, partition-bridge, partition-oneway, none)"
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
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            faults: Vec::new(),
            quiet: (Duration::from_secs(2), Duration::from_secs(5)),
            hold: (Duration::from_secs(3), Duration::from_secs(8)),
            warmup: Duration::from_secs(2),
        }
    }
}

/// What is currently broken, to heal.
enum Active {
    Node(Fault, u64),
    Links(Fault),
}

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
        let until = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < until {
            if self.ctx.stop.load(Ordering::SeqCst) {
                return false;
            }
            let left = until - tokio::time::Instant::now();
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
        !self.ctx.stop.load(Ordering::SeqCst)
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

    async fn heal(&mut self, active: Active) {
        let value = match active {
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
        if self.schedule.faults.is_empty() {
            return;
        }
        if !self.wait(self.schedule.warmup).await {
            return;
        }
        loop {
            let fault = self.schedule.faults[self.rng.random_range(0..self.schedule.faults.len())];
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
