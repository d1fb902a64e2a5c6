//! The lock workload's checker: fenced read-modify-writes of one register under one lock.
//!
//! Every value a holder writes is `{"id", "token", "prev", "process"}`: a unique id, the
//! fencing token it wrote with, and the id of the value it read. The final `feed` is the
//! register's committed history (the store's change feed from revision 1), so the checker
//! sees the committed order itself, not just the last value:
//!
//! - **token-order**: tokens strictly increase along the committed order (each critical
//!   section writes once);
//! - **overlap**: each committed value's `prev` is the value committed just before it (the
//!   first one's is `null`): a write whose read was overwritten by another holder before it
//!   committed means two critical sections overlapped in the committed history;
//! - **stale-accepted**: a write whose token is older than a token already granted (a lock
//!   acquire that completed before the write was invoked) was acknowledged or committed;
//! - **lost**: an acknowledged write is not in the feed; **wrong-revision**: it is, at
//!   another revision than acknowledged;
//! - **unexpected**: the feed holds a value no write sent, one that surely failed (a refusal
//!   included), or a delete;
//! - **tokens**: an acquire that began after another completed got a token that is not
//!   greater, or two acquires got the same token;
//! - **refusal**: a refused write whose refusal names a current token that is not newer than
//!   its own.
//!
//! With no successful feed (or no final read) while writes were attempted, the verdict is
//! unknown.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::history::{Pair, Type, F};
use crate::workload::LOCK_KEY;

/// At most this many anomalies of each kind are listed (all are counted).
const LIST: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct LockAnomaly {
    pub kind: String,
    pub what: String,
    /// History indices of the operations involved.
    pub ops: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LockReport {
    /// `None`: unknown (no final feed).
    pub valid: Option<bool>,
    pub acquired: usize,
    pub acquire_failed: usize,
    pub acquire_unknown: usize,
    pub writes: usize,
    pub acknowledged: usize,
    /// Writes refused for a stale fence.
    pub refused: usize,
    /// Other surely failed writes (e.g. a refused connection).
    pub failed: usize,
    pub indeterminate: usize,
    /// Indeterminate writes found in the feed.
    pub recovered: usize,
    /// Writes whose token was stale when they were invoked (an acquire with a newer token had
    /// completed): every one must be refused or never committed.
    pub stale: usize,
    pub stale_refused: usize,
    /// Writes made after a pause-the-holder pause, and how they ended.
    pub paused: usize,
    pub paused_refused: usize,
    pub paused_accepted: usize,
    /// Committed values in the feed.
    pub committed: usize,
    pub anomaly_counts: BTreeMap<String, usize>,
    pub anomalies: Vec<LockAnomaly>,
}

impl LockReport {
    fn flag(&mut self, kind: &str, what: String, ops: Vec<usize>) {
        let n = self.anomaly_counts.entry(kind.to_string()).or_default();
        *n += 1;
        if *n <= LIST {
            self.anomalies.push(LockAnomaly {
                kind: kind.to_string(),
                what,
                ops,
            });
        }
    }
}

/// The history indices of the operations the anomalies blame (for the timeline).
pub fn culprits(r: &LockReport) -> Vec<usize> {
    r.anomalies.iter().flat_map(|a| a.ops.clone()).collect()
}

/// For each time `t`, the highest token among acquires that completed before `t`.
struct Granted {
    /// (completion time, running max token), by completion time.
    by_time: Vec<(u64, u64)>,
}

impl Granted {
    fn new(acquires: &[(&Pair, u64)]) -> Granted {
        let mut v: Vec<(u64, u64)> = acquires.iter().map(|(p, t)| (p.complete, *t)).collect();
        v.sort();
        let mut max = 0;
        for e in &mut v {
            max = max.max(e.1);
            e.1 = max;
        }
        Granted { by_time: v }
    }

    /// The newest token granted by an acquire that completed strictly before `t` (0: none).
    fn before(&self, t: u64) -> u64 {
        let i = self.by_time.partition_point(|(c, _)| *c < t);
        if i == 0 {
            0
        } else {
            self.by_time[i - 1].1
        }
    }
}

pub fn check(pairs: &[Pair]) -> LockReport {
    let mut rep = LockReport::default();
    let ours = |p: &&Pair| p.key.as_deref() == Some(LOCK_KEY);
    let mut acquires: Vec<(&Pair, u64)> = Vec::new();
    let mut writes: Vec<&Pair> = Vec::new();
    let mut feed: Option<&Pair> = None;
    for p in pairs.iter().filter(ours) {
        match p.f {
            F::Acquire => match p.kind {
                Type::Ok => match p.value["token"].as_u64() {
                    Some(t) => acquires.push((p, t)),
                    None => rep.acquire_unknown += 1,
                },
                Type::Fail => rep.acquire_failed += 1,
                _ => rep.acquire_unknown += 1,
            },
            F::FencedWrite => writes.push(p),
            F::Feed if p.kind == Type::Ok => feed = feed.or(Some(p)),
            _ => {}
        }
    }
    rep.acquired = acquires.len();
    rep.writes = writes.len();

    // Tokens: unique, and increasing in real time.
    let granted = Granted::new(&acquires);
    let mut by_token: HashMap<u64, &Pair> = HashMap::new();
    for (p, t) in &acquires {
        if let Some(q) = by_token.insert(*t, p) {
            rep.flag(
                "tokens",
                format!(
                    "token {t} granted twice: to process {} and process {}",
                    q.process, p.process
                ),
                vec![q.index, p.index],
            );
        }
        let before = granted.before(p.invoke);
        if before >= *t {
            rep.flag(
                "tokens",
                format!(
                    "process {} was granted token {t} although token {before} had been granted before it asked",
                    p.process
                ),
                vec![p.index],
            );
        }
    }

    // Each write on its own: its outcome against what was granted before it began.
    let mut by_id: HashMap<i64, &Pair> = HashMap::new();
    for w in &writes {
        let v = &w.value;
        let (Some(id), Some(token)) = (v["id"].as_i64(), v["token"].as_u64()) else {
            continue;
        };
        by_id.insert(id, w);
        let paused = v["paused"].as_bool() == Some(true);
        rep.paused += usize::from(paused);
        let refused = w.kind == Type::Fail && v.get("refused_by").is_some();
        match w.kind {
            Type::Ok => rep.acknowledged += 1,
            Type::Fail if refused => rep.refused += 1,
            Type::Fail => rep.failed += 1,
            _ => rep.indeterminate += 1,
        }
        if paused {
            rep.paused_refused += usize::from(refused);
            rep.paused_accepted += usize::from(w.kind == Type::Ok);
        }
        if let Some(current) = v["refused_by"].as_u64() {
            if current <= token {
                rep.flag(
                    "refusal",
                    format!("write {id} with token {token} was refused for token {current}, which is not newer"),
                    vec![w.index],
                );
            }
        }
        let newer = granted.before(w.invoke);
        if newer > token {
            rep.stale += 1;
            rep.stale_refused += usize::from(refused);
            if w.kind == Type::Ok {
                rep.flag(
                    "stale-accepted",
                    format!(
                        "write {id} by process {} with token {token} was acknowledged although token {newer} had been granted before it began",
                        w.process
                    ),
                    vec![w.index],
                );
            }
        }
    }

    let Some(feed) = feed else {
        if !writes.is_empty() {
            rep.valid = None;
            return rep;
        }
        rep.valid = Some(rep.anomaly_counts.is_empty());
        return rep;
    };

    // The committed order.
    let entries: Vec<(u64, &Value)> = feed
        .value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e.get(0)?.as_u64()?, e.get(1)?)))
                .collect()
        })
        .unwrap_or_default();
    rep.committed = entries.len();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut prev: Option<(i64, u64, usize)> = None; // (id, token, history index)
    for (rev, v) in &entries {
        let Some(id) = v["id"].as_i64() else {
            rep.flag(
                "unexpected",
                format!("revision {rev} holds {v}, which no write sent"),
                vec![feed.index],
            );
            prev = None;
            continue;
        };
        let token = v["token"].as_u64().unwrap_or(0);
        let w = by_id.get(&id);
        let idx = w.map_or(feed.index, |w| w.index);
        match w {
            None => rep.flag(
                "unexpected",
                format!("revision {rev} holds value {id}, which no write sent"),
                vec![feed.index],
            ),
            Some(w) if w.kind == Type::Fail => rep.flag(
                "unexpected",
                format!(
                    "revision {rev} holds value {id} (token {token}), whose write failed: {}",
                    if w.value.get("refused_by").is_some() {
                        "refused for a stale fence"
                    } else {
                        "surely not applied"
                    }
                ),
                vec![w.index, feed.index],
            ),
            Some(w) => {
                if w.kind != Type::Ok {
                    rep.recovered += 1;
                }
                if let Some(acked) = w.value["revision"].as_u64() {
                    if acked != *rev {
                        rep.flag(
                            "wrong-revision",
                            format!("write {id} was acknowledged at revision {acked} but committed at {rev}"),
                            vec![w.index, feed.index],
                        );
                    }
                }
                let newer = granted.before(w.invoke);
                if newer > token && w.kind != Type::Ok {
                    // Acknowledged ones were flagged above already.
                    rep.flag(
                        "stale-accepted",
                        format!(
                            "write {id} by process {} with token {token} committed at revision {rev} although token {newer} had been granted before it began",
                            w.process
                        ),
                        vec![w.index, feed.index],
                    );
                }
            }
        }
        if !seen.insert(id) {
            rep.flag(
                "unexpected",
                format!("value {id} committed twice (again at revision {rev})"),
                vec![idx, feed.index],
            );
        }
        let read = v["prev"].as_i64();
        match prev {
            Some((pid, ptoken, pidx)) => {
                if token <= ptoken {
                    rep.flag(
                        "token-order",
                        format!("revision {rev}: value {id} with token {token} committed after value {pid} with token {ptoken}"),
                        vec![pidx, idx, feed.index],
                    );
                }
                if read != Some(pid) {
                    rep.flag(
                        "overlap",
                        format!(
                            "revision {rev}: value {id} (token {token}) was written from a read of {}, but value {pid} (token {ptoken}) was committed in between",
                            read.map_or("nothing".to_string(), |r| r.to_string())
                        ),
                        vec![pidx, idx, feed.index],
                    );
                }
            }
            None => {
                if let Some(r) = read {
                    if seen.len() == 1 {
                        rep.flag(
                            "overlap",
                            format!("revision {rev}: the first committed value {id} was written from a read of {r}, which was never committed before it"),
                            vec![idx, feed.index],
                        );
                    }
                }
            }
        }
        prev = Some((id, token, idx));
    }
    for w in &writes {
        if w.kind != Type::Ok {
            continue;
        }
        if let Some(id) = w.value["id"].as_i64() {
            if !seen.contains(&id) {
                rep.flag(
                    "lost",
                    format!(
                        "acknowledged write {id} (token {}) is not in the feed",
                        w.value["token"]
                    ),
                    vec![w.index, feed.index],
                );
            }
        }
    }
    rep.valid = Some(rep.anomaly_counts.is_empty());
    rep
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{pairs, Op};

    /// A history built from operations with explicit times, put in time order.
    #[derive(Default)]
    struct H(Vec<Op>);

    impl H {
        fn op(mut self, p: i64, f: F, v: Value, kind: Type, out: Value, t: (u64, u64)) -> H {
            self.0
                .push(Op::new(p, Type::Invoke, f, Some(LOCK_KEY), v, t.0));
            self.0.push(Op::new(p, kind, f, Some(LOCK_KEY), out, t.1));
            self
        }

        fn acquire(self, p: i64, token: u64, t: (u64, u64)) -> H {
            self.op(
                p,
                F::Acquire,
                Value::Null,
                Type::Ok,
                json!({ "token": token }),
                t,
            )
        }

        /// A fenced write of value `id` with `token`, having read `prev`.
        fn write(
            self,
            p: i64,
            id: i64,
            token: u64,
            prev: Option<i64>,
            out: Out,
            t: (u64, u64),
        ) -> H {
            let v = json!({"id": id, "token": token, "prev": prev, "process": p});
            let (kind, done) = match out {
                Out::Ok(rev) => {
                    let mut d = v.clone();
                    d["revision"] = json!(rev);
                    (Type::Ok, d)
                }
                Out::Refused(by) => {
                    let mut d = v.clone();
                    d["refused_by"] = json!(by);
                    (Type::Fail, d)
                }
                Out::Info => (Type::Info, v.clone()),
            };
            self.op(p, F::FencedWrite, v, kind, done, t)
        }

        /// The final feed: (revision, id, token, prev) per committed value.
        fn feed(self, entries: &[(u64, i64, u64, Option<i64>)], t: u64) -> H {
            let v: Vec<Value> = entries
                .iter()
                .map(|(rev, id, token, prev)| {
                    json!([rev, {"id": id, "token": token, "prev": prev, "process": 0}])
                })
                .collect();
            self.op(9, F::Feed, Value::Null, Type::Ok, json!(v), (t, t + 1))
        }

        fn check(mut self) -> LockReport {
            self.0.sort_by_key(|o| o.time);
            check(&pairs(&self.0))
        }
    }

    enum Out {
        Ok(u64),
        Refused(u64),
        Info,
    }

    /// p0 writes under token 10; p1 takes token 20, reads, is paused past its lease; p2 takes
    /// token 30 and writes; p1 wakes and writes with token 20.
    fn paused_holder(stale_write: Out) -> H {
        H::default()
            .acquire(0, 10, (0, 10))
            .write(0, 1, 10, None, Out::Ok(11), (20, 30))
            .acquire(1, 20, (40, 50))
            .acquire(2, 30, (45, 80))
            .write(2, 3, 30, Some(1), Out::Ok(31), (90, 100))
            .write(1, 2, 20, Some(1), stale_write, (110, 120))
    }

    #[test]
    fn a_refused_stale_write_is_valid() {
        let r = paused_holder(Out::Refused(30))
            .feed(&[(11, 1, 10, None), (31, 3, 30, Some(1))], 200)
            .check();
        assert_eq!(r.valid, Some(true), "{r:?}");
        assert_eq!((r.stale, r.stale_refused, r.refused), (1, 1, 1));
        assert_eq!((r.acknowledged, r.committed), (2, 2));
    }

    #[test]
    fn an_accepted_stale_write_is_caught() {
        let r = paused_holder(Out::Ok(32))
            .feed(
                &[
                    (11, 1, 10, None),
                    (31, 3, 30, Some(1)),
                    (32, 2, 20, Some(1)),
                ],
                200,
            )
            .check();
        assert_eq!(r.valid, Some(false));
        for kind in ["stale-accepted", "token-order", "overlap"] {
            assert_eq!(r.anomaly_counts.get(kind), Some(&1), "{kind}: {r:?}");
        }
    }

    #[test]
    fn an_indeterminate_stale_write_must_not_commit() {
        let ok = paused_holder(Out::Info)
            .feed(&[(11, 1, 10, None), (31, 3, 30, Some(1))], 200)
            .check();
        assert_eq!(ok.valid, Some(true), "{ok:?}");
        let bad = paused_holder(Out::Info)
            .feed(
                &[
                    (11, 1, 10, None),
                    (31, 3, 30, Some(1)),
                    (32, 2, 20, Some(1)),
                ],
                200,
            )
            .check();
        assert_eq!(
            bad.anomaly_counts.get("stale-accepted"),
            Some(&1),
            "{bad:?}"
        );
    }

    #[test]
    fn a_refused_write_in_the_feed_is_unexpected() {
        let r = paused_holder(Out::Refused(30))
            .feed(
                &[
                    (11, 1, 10, None),
                    (31, 3, 30, Some(1)),
                    (32, 2, 20, Some(1)),
                ],
                200,
            )
            .check();
        assert!(r.anomaly_counts.contains_key("unexpected"), "{r:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_and_a_wrong_revision_are_caught() {
        let r = H::default()
            .acquire(0, 10, (0, 10))
            .write(0, 1, 10, None, Out::Ok(11), (20, 30))
            .acquire(1, 20, (40, 50))
            .write(1, 2, 20, Some(1), Out::Ok(21), (60, 70))
            .feed(&[(12, 1, 10, None)], 200)
            .check();
        assert_eq!(r.anomaly_counts.get("lost"), Some(&1), "{r:?}");
        assert_eq!(r.anomaly_counts.get("wrong-revision"), Some(&1), "{r:?}");
    }

    #[test]
    fn overlapping_critical_sections_are_caught_even_with_increasing_tokens() {
        // Both read the empty register; the later token's write commits second.
        let r = H::default()
            .acquire(0, 10, (0, 10))
            .acquire(1, 20, (5, 40))
            .write(0, 1, 10, None, Out::Ok(11), (20, 50))
            .write(1, 2, 20, None, Out::Ok(21), (45, 60))
            .feed(&[(11, 1, 10, None), (21, 2, 20, None)], 200)
            .check();
        assert_eq!(r.anomaly_counts.get("overlap"), Some(&1), "{r:?}");
        assert_eq!(r.anomaly_counts.len(), 1, "{r:?}");
    }

    #[test]
    fn tokens_must_increase_in_real_time_and_be_unique() {
        let r = H::default()
            .acquire(0, 10, (0, 10))
            .acquire(1, 5, (20, 30))
            .acquire(2, 10, (40, 50))
            .feed(&[], 200)
            .check();
        assert_eq!(r.anomaly_counts.get("tokens"), Some(&3), "{r:?}");
    }

    #[test]
    fn a_refusal_must_name_a_newer_token() {
        let r = H::default()
            .acquire(0, 10, (0, 10))
            .write(0, 1, 10, None, Out::Refused(10), (20, 30))
            .feed(&[], 200)
            .check();
        assert_eq!(r.anomaly_counts.get("refusal"), Some(&1), "{r:?}");
    }

    #[test]
    fn without_a_feed_the_verdict_is_unknown() {
        let r = H::default()
            .acquire(0, 10, (0, 10))
            .write(0, 1, 10, None, Out::Ok(11), (20, 30))
            .check();
        assert_eq!(r.valid, None);
    }
}
