use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::register::{search, Search};
use super::*;
use crate::history::{Op, Type, F};

/// One operation with explicit times: `(process, f, key, invoke value, completion type,
/// completion value, invoke time, completion time)`; `done == None` leaves it open.
struct H(Vec<Op>);

impl H {
    fn new() -> H {
        H(Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn op(
        mut self,
        p: i64,
        f: F,
        key: &str,
        v: Value,
        kind: Type,
        out: Value,
        t0: u64,
        t1: Option<u64>,
    ) -> H {
        self.0.push(Op::new(p, Type::Invoke, f, Some(key), v, t0));
        if let Some(t1) = t1 {
            self.0.push(Op::new(p, kind, f, Some(key), out, t1));
        }
        self
    }

    fn w(self, p: i64, v: i64, t0: u64, t1: u64) -> H {
        self.op(
            p,
            F::Write,
            "r/1",
            json!(v),
            Type::Ok,
            json!(v),
            t0,
            Some(t1),
        )
    }

    fn w_info(self, p: i64, v: i64, t0: u64) -> H {
        self.op(
            p,
            F::Write,
            "r/1",
            json!(v),
            Type::Info,
            json!(v),
            t0,
            Some(u64::MAX / 2),
        )
    }

    fn r(self, p: i64, v: Option<i64>, t0: u64, t1: u64) -> H {
        self.op(
            p,
            F::Read,
            "r/1",
            Value::Null,
            Type::Ok,
            json!(v),
            t0,
            Some(t1),
        )
    }

    fn cas(self, p: i64, from: Option<i64>, to: i64, kind: Type, t0: u64, t1: u64) -> H {
        let v = json!([from, to]);
        self.op(p, F::Cas, "r/1", v.clone(), kind, v, t0, Some(t1))
    }

    fn add(self, p: i64, e: i64, kind: Type, t0: u64, t1: u64) -> H {
        self.op(p, F::Add, "set", json!(e), kind, json!(e), t0, Some(t1))
    }

    fn set_read(mut self, p: i64, elems: &[i64], fin: bool, t0: u64, t1: u64) -> H {
        self = self.op(
            p,
            F::Read,
            "set",
            Value::Null,
            Type::Ok,
            json!(elems),
            t0,
            Some(t1),
        );
        if fin {
            let n = self.0.len();
            self.0[n - 2].phase = Some("final".into());
            self.0[n - 1].phase = Some("final".into());
        }
        self
    }

    /// Orders events by time, as a recorder would have written them.
    fn history(mut self) -> Vec<Op> {
        self.0.sort_by_key(|o| o.time);
        self.0
    }

    fn verdict(self) -> Verdict {
        check(&self.history(), DEFAULT_BUDGET)
    }
}

fn valid(h: H) -> bool {
    let v = h.verdict();
    match v.valid {
        Validity::Valid => true,
        Validity::Anomaly => false,
        Validity::Unknown => panic!("unknown verdict: {}", v.summary()),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    assert!(valid(
        H::new()
            .r(0, None, 0, 1)
            .w(0, 1, 2, 3)
            .r(1, Some(1), 4, 5)
            .w(1, 2, 6, 7)
            .r(0, Some(2), 8, 9)
    ));
}

#[test]
fn rejects_stale_read() {
    let v = H::new()
        .w(0, 1, 0, 1)
        .w(1, 2, 2, 3)
        .r(2, Some(1), 4, 5)
        .verdict();
    assert_eq!(v.valid, Validity::Anomaly);
    let a = &v.register.as_ref().unwrap().anomalies[0];
    assert_eq!(a.key, "r/1");
    assert!(a.culprit.contains("read -> 1"), "{}", a.culprit);
    assert_eq!(a.prefix_len, 3);
}

#[test]
fn rejects_lost_write() {
    assert!(!valid(H::new().w(0, 1, 0, 1).r(1, None, 2, 3)));
    // acknowledged, overwritten by nothing, then gone
    assert!(!valid(
        H::new().w(0, 1, 0, 1).r(1, Some(1), 2, 3).r(2, None, 4, 5)
    ));
}

#[test]
fn rejects_reordered_writes() {
    // w1 then w2, strictly sequential; reads then see 2 and after it 1
    assert!(!valid(
        H::new()
            .w(0, 1, 0, 1)
            .w(1, 2, 2, 3)
            .r(2, Some(2), 4, 5)
            .r(0, Some(1), 6, 7)
    ));
    // concurrent writes may land in either order, but every reader sees the same order
    assert!(valid(
        H::new()
            .w(0, 1, 0, 10)
            .w(1, 2, 0, 10)
            .r(2, Some(2), 1, 2)
            .r(3, Some(1), 3, 4)
    ));
    assert!(!valid(
        H::new()
            .w(0, 1, 0, 10)
            .w(1, 2, 0, 10)
            .r(2, Some(2), 1, 2)
            .r(3, Some(1), 3, 4)
            .r(2, Some(2), 5, 6)
    ));
}

#[test]
fn rejects_value_never_written() {
    assert!(!valid(H::new().w(0, 1, 0, 1).r(1, Some(7), 2, 3)));
}

#[test]
fn accepts_concurrent_read_of_old_or_new_value() {
    assert!(valid(
        H::new()
            .w(0, 1, 0, 1)
            .w(1, 2, 2, 10)
            .r(2, Some(1), 3, 4)
            .r(3, Some(2), 5, 6)
    ));
    assert!(valid(H::new().w(0, 1, 0, 10).r(1, None, 1, 2).r(
        2,
        Some(1),
        3,
        4
    )));
    assert!(!valid(
        H::new().w(0, 1, 0, 10).r(1, Some(1), 1, 2).r(2, None, 3, 4)
    ));
}

#[test]
fn indeterminate_write_may_take_effect_late_or_never() {
    // observed long after it was invoked
    assert!(valid(H::new().w_info(0, 1, 0).r(1, None, 5, 6).r(
        2,
        Some(1),
        100,
        101
    )));
    // never observed
    assert!(valid(
        H::new()
            .w_info(0, 1, 0)
            .r(1, None, 5, 6)
            .r(2, None, 100, 101)
    ));
    // taking effect is once and for all: it cannot be unseen
    assert!(!valid(
        H::new()
            .w_info(0, 1, 0)
            .r(1, Some(1), 5, 6)
            .r(2, None, 100, 101)
    ));
    // but not before it was invoked
    assert!(!valid(H::new().r(1, Some(1), 0, 1).w_info(0, 1, 5)));
    // an indeterminate write under a later acknowledged one: may land before or after it
    assert!(valid(H::new().w_info(0, 1, 0).w(1, 2, 5, 6).r(
        2,
        Some(1),
        10,
        11
    )));
    assert!(valid(H::new().w_info(0, 1, 0).w(1, 2, 5, 6).r(
        2,
        Some(2),
        10,
        11
    )));
}

#[test]
fn indeterminate_reads_and_failures_are_ignored() {
    let h = H::new()
        .w(0, 1, 0, 1)
        .op(
            1,
            F::Read,
            "r/1",
            Value::Null,
            Type::Info,
            Value::Null,
            2,
            Some(3),
        )
        .op(
            2,
            F::Write,
            "r/1",
            json!(9),
            Type::Fail,
            json!(9),
            4,
            Some(5),
        )
        .r(3, Some(1), 6, 7);
    assert!(valid(h));
}

#[test]
fn compare_and_set() {
    assert!(valid(
        H::new()
            .w(0, 1, 0, 1)
            .cas(1, Some(1), 2, Type::Ok, 2, 3)
            .r(2, Some(2), 4, 5)
    ));
    assert!(valid(H::new().cas(1, None, 2, Type::Ok, 0, 1).r(
        2,
        Some(2),
        4,
        5
    )));
    // a cas that succeeded from a value the register did not hold
    assert!(!valid(H::new().w(0, 1, 0, 1).w(0, 3, 2, 3).cas(
        1,
        Some(1),
        2,
        Type::Ok,
        4,
        5
    )));
    // a failed cas changes nothing
    assert!(valid(
        H::new()
            .w(0, 1, 0, 1)
            .cas(1, Some(5), 2, Type::Fail, 2, 3)
            .r(2, Some(1), 4, 5)
    ));
    // an indeterminate cas observed later, and one never observed
    assert!(valid(
        H::new()
            .w(0, 1, 0, 1)
            .cas(1, Some(1), 2, Type::Info, 2, 3)
            .r(2, Some(2), 9, 10)
    ));
    assert!(valid(
        H::new()
            .w(0, 1, 0, 1)
            .cas(1, Some(1), 2, Type::Info, 2, 3)
            .r(2, Some(1), 9, 10)
    ));
    // two cas from the same value cannot both succeed
    assert!(!valid(
        H::new()
            .w(0, 1, 0, 1)
            .cas(1, Some(1), 2, Type::Ok, 2, 5)
            .cas(2, Some(1), 3, Type::Ok, 2, 5)
    ));
}

#[test]
fn keys_are_checked_independently() {
    let mut h = H::new().w(0, 1, 0, 1).r(1, Some(1), 2, 3);
    h = h.op(2, F::Write, "r/2", json!(2), Type::Ok, json!(2), 0, Some(1));
    h = h.op(
        3,
        F::Read,
        "r/2",
        Value::Null,
        Type::Ok,
        json!(2),
        2,
        Some(3),
    );
    let v = h.verdict();
    assert_eq!(v.valid, Validity::Valid);
    assert_eq!(v.register.unwrap().keys, 2);
    // a stale read on r/2 is blamed on r/2 only
    let mut h = H::new().w(0, 1, 0, 1).r(1, Some(1), 2, 3);
    h = h.op(2, F::Write, "r/2", json!(2), Type::Ok, json!(2), 0, Some(1));
    h = h.op(2, F::Write, "r/2", json!(3), Type::Ok, json!(3), 2, Some(3));
    h = h.op(
        3,
        F::Read,
        "r/2",
        Value::Null,
        Type::Ok,
        json!(2),
        4,
        Some(5),
    );
    let v = h.verdict();
    let r = v.register.unwrap();
    assert_eq!(r.anomalies.len(), 1);
    assert_eq!(r.anomalies[0].key, "r/2");
}

#[test]
fn search_budget_gives_unknown() {
    // many concurrent writes read in an impossible order exhaust a tiny budget
    let mut h = H::new();
    for i in 0..12 {
        h = h.w(i, i, 0, 100);
    }
    h = h.r(20, Some(3), 101, 102).r(21, Some(4), 103, 104);
    let ps = crate::history::pairs(&h.history());
    let refs: Vec<&crate::history::Pair> = ps.iter().collect();
    let ops = register::reg_ops(&refs);
    assert_eq!(search(&ops, 5), Search::Unknown);
    assert_eq!(search(&ops, DEFAULT_BUDGET), Search::NotLinearizable);
}

/// Simulates an atomic register: every op takes effect at a random instant inside its
/// interval; some completions are lost (info). The result must always be linearizable.
#[test]
fn random_linearizable_histories_are_accepted() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..40 {
        let procs = 5;
        let mut t = vec![0u64; procs];
        let mut ops = Vec::new(); // (p, f, invoke value, t0, point, t1, info)
        for next_val in 1..=60i64 {
            let p = rng.random_range(0..procs);
            let t0 = t[p] + rng.random_range(1..5);
            let point = t0 + rng.random_range(0..20);
            let t1 = point + rng.random_range(0..20);
            t[p] = t1 + 1;
            let f = match rng.random_range(0..3) {
                0 => F::Read,
                1 => F::Write,
                _ => F::Cas,
            };
            let info = rng.random_bool(0.1);
            ops.push((p as i64, f, next_val, t0, point, t1, info));
        }
        // apply in order of the linearization points
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|i| ops[*i].4);
        let mut state: Option<i64> = None;
        let mut h = H::new();
        for i in order {
            let (p, f, v, t0, _, t1, info) = ops[i];
            let (kind, out) = match f {
                F::Read => (Type::Ok, json!(state)),
                F::Write => {
                    state = Some(v);
                    (Type::Ok, json!(v))
                }
                _ => {
                    // expect the current value half of the time
                    let from = if rng.random_bool(0.5) {
                        state
                    } else {
                        Some(-1)
                    };
                    if from == state {
                        state = Some(v);
                        (Type::Ok, json!([from, v]))
                    } else {
                        (Type::Fail, json!([from, v]))
                    }
                }
            };
            let kind = if info && kind == Type::Ok {
                Type::Info
            } else {
                kind
            };
            let inv = if f == F::Read {
                Value::Null
            } else {
                out.clone()
            };
            h = h.op(p, f, "r/1", inv, kind, out, t0, Some(t1));
        }
        let v = h.verdict();
        assert_eq!(v.valid, Validity::Valid, "round {round}: {}", v.summary());
    }
}

#[test]
fn set_all_acknowledged_adds_present() {
    let v = H::new()
        .add(0, 1, Type::Ok, 0, 1)
        .add(1, 2, Type::Info, 0, 3)
        .add(2, 3, Type::Info, 0, 3)
        .add(3, 4, Type::Fail, 0, 3)
        .set_read(0, &[1], false, 2, 3)
        .set_read(0, &[1, 2], true, 10, 11)
        .verdict();
    assert_eq!(v.valid, Validity::Valid, "{}", v.summary());
    let s = v.set.unwrap();
    assert_eq!(
        (s.acknowledged, s.indeterminate, s.recovered, s.final_size),
        (1, 2, 1, 2)
    );
}

#[test]
fn set_lost_add() {
    let v = H::new()
        .add(0, 1, Type::Ok, 0, 1)
        .add(1, 2, Type::Ok, 0, 1)
        .set_read(0, &[1], true, 10, 11)
        .verdict();
    assert_eq!(v.valid, Validity::Anomaly);
    assert_eq!(v.set.unwrap().lost, vec![2]);
}

#[test]
fn set_unexpected_element() {
    let v = H::new()
        .add(0, 1, Type::Ok, 0, 1)
        .set_read(0, &[1, 99], true, 10, 11)
        .verdict();
    assert_eq!(v.valid, Validity::Anomaly);
    assert_eq!(v.set.unwrap().unexpected, vec![99]);
}

#[test]
fn set_stale_and_vanished_reads() {
    // a read that began after the add was acknowledged must see it
    let v = H::new()
        .add(0, 1, Type::Ok, 0, 1)
        .set_read(1, &[], false, 2, 3)
        .set_read(0, &[1], true, 10, 11)
        .verdict();
    assert_eq!(v.valid, Validity::Anomaly);
    assert_eq!(v.set.as_ref().unwrap().stale.len(), 1);
    // an indeterminate add seen once must stay
    let v = H::new()
        .add(0, 1, Type::Info, 0, 1)
        .set_read(1, &[1], false, 2, 3)
        .set_read(2, &[], false, 4, 5)
        .set_read(0, &[], true, 10, 11)
        .verdict();
    assert_eq!(v.valid, Validity::Anomaly);
    assert!(!v.set.unwrap().vanished.is_empty());
    // a concurrent read may miss an add in flight
    assert!(valid(
        H::new()
            .add(0, 1, Type::Ok, 0, 5)
            .set_read(1, &[], false, 2, 3)
            .set_read(0, &[1], true, 10, 11)
    ));
}

#[test]
fn set_without_final_read_is_unknown() {
    let v = H::new().add(0, 1, Type::Ok, 0, 1).verdict();
    assert_eq!(v.valid, Validity::Unknown);
}

#[test]
fn counts_and_faults() {
    let mut h = H::new().w(0, 1, 0, 1).r(1, Some(1), 2, 3);
    h = h.op(
        crate::history::NEMESIS,
        F::Nemesis,
        "",
        json!({"fault": "kill"}),
        Type::Ok,
        json!({"fault": "kill", "effect": true}),
        0,
        Some(1),
    );
    let v = h.verdict();
    assert_eq!(v.counts["write"].ok, 1);
    assert_eq!(v.counts["read"].ok, 1);
    assert!(!v.counts.contains_key("nemesis"));
    assert_eq!(v.faults["kill"].effective, 1);
}

// ----- streams ---------------------------------------------------------------------------

const T: &str = "ev-0";

impl H {
    /// A publish of `payload`; `seq` is the acknowledged sequence (ok only).
    fn publish(self, p: i64, payload: i64, kind: Type, seq: u64, t0: u64, t1: u64) -> H {
        let out = if kind == Type::Ok {
            json!({"payload": payload, "seq": seq})
        } else {
            json!({"payload": payload})
        };
        self.op(
            p,
            F::Publish,
            T,
            json!({"payload": payload}),
            kind,
            out,
            t0,
            Some(t1),
        )
    }

    /// A final replay of the topic from `node`: `[(seq, payload)]`.
    fn replay(mut self, node: u64, entries: &[(u64, i64)], t0: u64, t1: u64) -> H {
        let v = json!(entries
            .iter()
            .map(|(s, p)| json!([s, p]))
            .collect::<Vec<_>>());
        self = self.op(
            2000 + node as i64,
            F::Replay,
            T,
            Value::Null,
            Type::Ok,
            v,
            t0,
            Some(t1),
        );
        let n = self.0.len();
        for op in &mut self.0[n - 2..] {
            op.phase = Some("final".into());
            op.node = Some(node);
        }
        self
    }

    /// The live consumer receiving `seq:payload` at time `t`.
    fn live(self, seq: u64, payload: i64, t: u64) -> H {
        self.op(
            1000,
            F::Consume,
            T,
            Value::Null,
            Type::Ok,
            json!({"seq": seq, "payload": payload}),
            t,
            Some(t),
        )
    }

    fn replay_all(mut self, entries: &[(u64, i64)], t0: u64) -> H {
        for node in 1..=3 {
            self = self.replay(node, entries, t0 + node * 10, t0 + node * 10 + 5);
        }
        self
    }
}

fn stream_kinds(h: H) -> Vec<String> {
    let v = h.verdict();
    assert_eq!(v.valid, Validity::Anomaly, "{}", v.summary());
    let s = v.streams.expect("streams report");
    assert!(!s.anomalies.is_empty(), "anomalies are listed");
    s.anomaly_counts.keys().cloned().collect()
}

/// Three acknowledged publishes, sequential, plus the live consumer's view of the first two.
fn three_published() -> H {
    H::new()
        .publish(0, 11, Type::Ok, 1, 0, 10)
        .publish(1, 12, Type::Ok, 2, 20, 30)
        .publish(0, 13, Type::Ok, 3, 40, 50)
        .live(1, 11, 12)
        .live(2, 12, 32)
}

#[test]
fn streams_valid_history_with_indeterminate_publishes() {
    // 14 timed out and took effect, 15 timed out and did not, 16 surely failed.
    let h = three_published()
        .publish(2, 14, Type::Info, 0, 55, 200)
        .publish(3, 15, Type::Info, 0, 56, 200)
        .publish(4, 16, Type::Fail, 0, 57, 58)
        .live(3, 13, 52)
        .replay_all(&[(1, 11), (2, 12), (3, 13), (4, 14)], 300);
    let v = h.verdict();
    assert_eq!(v.valid, Validity::Valid, "{}", v.summary());
    let s = v.streams.unwrap();
    assert_eq!(
        (s.acknowledged, s.indeterminate, s.failed, s.recovered),
        (3, 2, 1, 1)
    );
    assert_eq!((s.replays, s.replayed, s.live_delivered), (3, 4, 3));
    assert_eq!(v.counts["publish"].ok, 3);
    assert_eq!(v.counts["replay"].ok, 3);
}

#[test]
fn streams_lost_acknowledged_event() {
    let h = three_published().replay_all(&[(1, 11), (2, 12)], 300);
    assert_eq!(stream_kinds(h), vec!["lost"]);
}

#[test]
fn streams_gap_in_sequences() {
    let h = three_published().replay_all(&[(1, 11), (2, 12), (4, 13)], 300);
    let kinds = stream_kinds(h);
    assert!(kinds.contains(&"gap".to_string()), "{kinds:?}");
}

#[test]
fn streams_reordered_sequences_and_realtime_order() {
    // the replay lists sequence 2 before 1
    let h = three_published().replay_all(&[(2, 12), (1, 11), (3, 13)], 300);
    assert!(stream_kinds(h).contains(&"order".to_string()));
    // dense and numbered, but 12 (acknowledged before 13 was invoked) comes after 13; the
    // acknowledgements agree with the replay, so only real-time order can catch it
    let h = H::new()
        .publish(0, 11, Type::Ok, 1, 0, 10)
        .publish(1, 12, Type::Ok, 3, 20, 30)
        .publish(0, 13, Type::Ok, 2, 40, 50)
        .replay_all(&[(1, 11), (2, 13), (3, 12)], 300);
    assert_eq!(stream_kinds(h), vec!["realtime"]);
    // concurrent publishes may land in either order
    let v = H::new()
        .publish(0, 11, Type::Ok, 2, 0, 10)
        .publish(1, 12, Type::Ok, 1, 5, 30)
        .replay_all(&[(1, 12), (2, 11)], 300)
        .verdict();
    assert_eq!(v.valid, Validity::Valid, "{}", v.summary());
}

#[test]
fn streams_replay_mismatch_between_nodes() {
    let h = three_published()
        .replay(1, &[(1, 11), (2, 12), (3, 13)], 300, 310)
        .replay(2, &[(1, 11), (2, 12), (3, 13)], 320, 330)
        .replay(3, &[(1, 11), (2, 12), (3, 13), (4, 13)], 340, 350);
    let kinds = stream_kinds(h);
    assert!(kinds.contains(&"mismatch".to_string()), "{kinds:?}");
    // a node that lacks the last event
    let h = three_published()
        .replay(1, &[(1, 11), (2, 12), (3, 13)], 300, 310)
        .replay(2, &[(1, 11), (2, 12)], 320, 330);
    let v = h.verdict();
    let s = v.streams.unwrap();
    assert_eq!(s.anomaly_counts.get("mismatch"), Some(&1));
    assert!(s.anomalies[0].what.contains("nothing"), "{:?}", s.anomalies);
}

#[test]
fn streams_acknowledged_with_another_sequence() {
    let h = H::new()
        .publish(0, 11, Type::Ok, 1, 0, 10)
        .publish(0, 12, Type::Ok, 1, 20, 30)
        .replay_all(&[(1, 11), (2, 12)], 300);
    assert_eq!(stream_kinds(h), vec!["wrong-seq"]);
}

#[test]
fn streams_unexpected_payloads() {
    // never published
    let h = three_published().replay_all(&[(1, 11), (2, 12), (3, 13), (4, 99)], 300);
    assert_eq!(stream_kinds(h), vec!["unexpected"]);
    // published, but the publish surely failed
    let h = three_published()
        .publish(3, 14, Type::Fail, 0, 55, 56)
        .replay_all(&[(1, 11), (2, 12), (3, 13), (4, 14)], 300);
    assert_eq!(stream_kinds(h), vec!["unexpected"]);
    // the same payload twice
    let h = three_published().replay_all(&[(1, 11), (2, 12), (3, 13), (4, 13)], 300);
    assert_eq!(stream_kinds(h), vec!["duplicate"]);
}

#[test]
fn streams_live_consumer_must_see_a_prefix_of_the_replay() {
    // a different payload at sequence 2
    let h = H::new()
        .publish(0, 11, Type::Ok, 1, 0, 10)
        .publish(1, 12, Type::Info, 0, 20, 300)
        .publish(0, 13, Type::Ok, 2, 40, 50)
        .live(1, 11, 12)
        .live(2, 12, 32)
        .replay_all(&[(1, 11), (2, 13)], 400);
    assert_eq!(stream_kinds(h), vec!["live"]);
    // skipping a sequence
    let h = three_published()
        .live(4, 14, 60)
        .replay_all(&[(1, 11), (2, 12), (3, 13)], 300);
    assert_eq!(stream_kinds(h), vec!["live"]);
    // beyond the end of the replay
    let h = three_published()
        .live(3, 13, 52)
        .replay_all(&[(1, 11), (2, 12)], 300);
    let kinds = stream_kinds(h);
    assert!(kinds.contains(&"live".to_string()), "{kinds:?}");
}

#[test]
fn streams_without_replay_is_unknown() {
    let v = three_published().verdict();
    assert_eq!(v.valid, Validity::Unknown, "{}", v.summary());
    assert_eq!(v.streams.unwrap().unreplayed, vec![T.to_string()]);
}

#[test]
fn streams_every_kind_is_listed_even_when_one_floods() {
    // An extra event at sequence 1 shifts 30 acknowledged publishes (30 wrong-seq), and the
    // last one is lost: the lost one is still listed, wrong-seq only a few times.
    let mut h = H::new().publish(9, 99, Type::Info, 0, 0, 500);
    let mut entries = vec![(1, 99)];
    for i in 0..31u64 {
        h = h.publish(0, 100 + i as i64, Type::Ok, i + 1, 10 + i * 10, 15 + i * 10);
        if i < 30 {
            entries.push((i + 2, 100 + i as i64));
        }
    }
    let v = h.replay_all(&entries, 1000).verdict();
    let s = v.streams.unwrap();
    assert_eq!(s.anomaly_counts["wrong-seq"], 30);
    assert_eq!(s.anomaly_counts["lost"], 1);
    assert!(s.anomalies.iter().any(|a| a.kind == "lost"));
    assert!(s.anomalies.len() <= 10, "{}", s.anomalies.len());
}
