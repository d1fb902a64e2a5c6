//! The consumer-groups checker (`--workload groups`): one topic, four groups (see
//! `workload::GROUPS`), consumers that join, leave, get killed and reconnect, a final drain.
//!
//! Per group, with `first_ack[s]` the earliest completion of an ok ack of sequence s (an
//! auto-ack delivery counts as an ack when it is received):
//! - **after-ack**: no session that *opened* after `first_ack[s]` receives s (a session opened
//!   earlier may legitimately receive a redelivery the server claimed before the ack was
//!   applied and sent later; a session opened after the ack can only get s from a claim made
//!   after it). **double-ack**: the same, and the session acked s again (ok).
//! - **lost** / **lost-redelivery** (groups without a retry limit, once the group's final
//!   drain finished): every acknowledged publish was acked in the group, or has an ack whose
//!   outcome is unknown. Never delivered: lost; delivered but never acked: its redelivery was
//!   lost. (Consumers ack 90 % of deliveries, the rest when they leave, none when killed: an
//!   event a killed consumer held must come back to someone.) Excused: an auto-ack claim acks
//!   the events it takes before the client reads them, so an auto-ack consumer that goes away
//!   loses what it was sent but did not read; an event missing from a group in which an
//!   auto-ack session ended (other than by the server ending the stream) after the event was
//!   published is counted in `auto_dropped`, not as lost. (A session still open when the
//!   clients stopped counts as ending then.)
//! - **lost** in a group with retry limit L: an acknowledged publish never delivered, although
//!   fewer than L sessions of the group ended after it was invoked (each such session may
//!   have cost the event a delivery attempt the client never saw).
//! - **retry-bound**: a group with retry limit L delivers an event at most L + 1 times.
//! - **wrong-seq** / **unexpected**: a delivery's (sequence, payload) matches the publish
//!   acknowledged with that sequence; every delivered payload was sent by a publish that did
//!   not surely fail.
//! - **storm**: the log grew by at most `STORM_FACTOR` entries per client operation (joins,
//!   deliveries, acks, leaves, publishes and any other workload's operations), plus
//!   `STORM_PER_FAULT` per fault and `STORM_SLACK`, between the harness's `progress`
//!   measurements at the start and after the drain. A consumer that claims without delivering
//!   (the redelivery storm of issue 11 wrote 781,254 entries for 2,507 deliveries) fails it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::history::{Pair, Type, F, HARNESS, NEMESIS};
use crate::workload::{group_spec, GROUP_TOPIC};

/// Log entries allowed per client operation before the growth counts as a storm.
pub const STORM_FACTOR: f64 = 2.0;
/// ... plus this many per fault (elections, membership changes, rejoins) ...
pub const STORM_PER_FAULT: u64 = 50;
/// ... plus this many in all.
pub const STORM_SLACK: u64 = 200;

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupsReport {
    /// `None` when a group's final drain did not finish (lost events cannot be judged).
    pub valid: Option<bool>,
    pub published: usize,
    pub acknowledged: usize,
    pub sessions: usize,
    pub deliveries: usize,
    pub acks_ok: usize,
    pub acks_unknown: usize,
    /// Deliveries beyond the first, per group.
    pub redeliveries: BTreeMap<String, usize>,
    /// Largest number of deliveries of one event, per group.
    pub max_deliveries: BTreeMap<String, usize>,
    /// Applied-index growth over the run, and what the storm check allowed.
    pub log_growth: Option<u64>,
    pub log_allowed: Option<u64>,
    pub client_ops: usize,
    pub undrained: Vec<String>,
    /// Acknowledged publishes a group never received nor acked, excused because an auto-ack
    /// consumer of the group went away after they were published (auto-ack is at-most-once
    /// for what a consumer was sent but did not read).
    pub auto_dropped: BTreeMap<String, usize>,
    pub anomaly_counts: BTreeMap<String, usize>,
    pub anomalies: Vec<GroupAnomaly>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupAnomaly {
    pub kind: String,
    pub group: String,
    pub what: String,
    pub indices: Vec<usize>,
}

const SHOWN_PER_KIND: usize = 5;

#[derive(Default)]
struct Group {
    /// session → (join invoke time, history index)
    sessions: HashMap<u64, (u64, usize)>,
    /// seq → [(session, receive time, payload, history index)]
    deliveries: BTreeMap<u64, Vec<(u64, u64, Value, usize)>>,
    /// seq → [(session, completion time, index)] of ok acks (auto deliveries included)
    acks: BTreeMap<u64, Vec<(u64, u64, usize)>>,
    /// seqs with an ack of unknown outcome
    maybe_acked: BTreeSet<u64>,
    /// invoke times of session ends
    ends: Vec<u64>,
    /// auto-ack sessions
    auto: BTreeSet<u64>,
    /// sessions whose stream opened / that recorded their end
    opened: BTreeSet<u64>,
    left: BTreeSet<u64>,
    /// invoke times of auto-ack sessions' ends other than the server's (`ended`)
    auto_abandoned: Vec<u64>,
    drained: bool,
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v[k].as_u64()
}

pub fn check(ps: &[Pair]) -> GroupsReport {
    let mut r = GroupsReport::default();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    // Publishes: acknowledged payload → (seq, index), seq → payload; surely failed payloads.
    let mut acked_pub: BTreeMap<u64, (Value, u64, usize)> = BTreeMap::new();
    let mut sent: HashMap<String, Type> = HashMap::new();
    let mut progress: Vec<u64> = Vec::new();
    let mut faults = 0u64;
    for p in ps {
        if p.process == HARNESS && p.f == F::Progress && p.kind == Type::Ok {
            if let Some(a) = u(&p.value, "applied") {
                progress.push(a);
            }
            if let Some(g) = p.value["drained"].as_str() {
                groups.entry(g.to_string()).or_default().drained = true;
            }
            continue;
        }
        if p.process == NEMESIS {
            if p.value["effect"] == true && p.value["fault"] != "heal" {
                faults += 1;
            }
            continue;
        }
        if p.process >= 0 && p.f != F::Progress {
            r.client_ops += 1;
        }
        if p.key.as_deref() != Some(GROUP_TOPIC) {
            continue;
        }
        let v = &p.value;
        match p.f {
            F::Publish => {
                r.published += 1;
                let payload = v["payload"].to_string();
                sent.insert(payload, p.kind);
                if p.kind == Type::Ok {
                    if let Some(seq) = u(v, "seq") {
                        r.acknowledged += 1;
                        acked_pub.insert(seq, (v["payload"].clone(), p.invoke, p.index));
                    }
                }
            }
            F::Join => {
                let (Some(g), Some(sid)) = (v["group"].as_str(), u(v, "session")) else {
                    continue;
                };
                r.sessions += 1;
                let grp = groups.entry(g.to_string()).or_default();
                grp.sessions.insert(sid, (p.invoke, p.index));
                if v["auto"] == true {
                    grp.auto.insert(sid);
                }
                if p.kind == Type::Ok {
                    grp.opened.insert(sid);
                }
            }
            F::Deliver if p.kind == Type::Ok => {
                let (Some(g), Some(sid), Some(seq)) =
                    (v["group"].as_str(), u(v, "session"), u(v, "seq"))
                else {
                    continue;
                };
                r.deliveries += 1;
                let grp = groups.entry(g.to_string()).or_default();
                grp.deliveries.entry(seq).or_default().push((
                    sid,
                    p.complete,
                    v["payload"].clone(),
                    p.index,
                ));
                if v["auto"] == true {
                    grp.acks
                        .entry(seq)
                        .or_default()
                        .push((sid, p.complete, p.index));
                }
            }
            F::Ack => {
                let (Some(g), Some(sid), Some(seq)) =
                    (v["group"].as_str(), u(v, "session"), u(v, "seq"))
                else {
                    continue;
                };
                let grp = groups.entry(g.to_string()).or_default();
                match p.kind {
                    Type::Ok => {
                        r.acks_ok += 1;
                        grp.acks
                            .entry(seq)
                            .or_default()
                            .push((sid, p.complete, p.index));
                    }
                    Type::Info | Type::Invoke => {
                        r.acks_unknown += 1;
                        grp.maybe_acked.insert(seq);
                    }
                    Type::Fail => {}
                }
            }
            F::Leave => {
                if let Some(g) = v["group"].as_str() {
                    let grp = groups.entry(g.to_string()).or_default();
                    grp.ends.push(p.invoke);
                    if let Some(s) = u(v, "session") {
                        grp.left.insert(s);
                    }
                    let auto = u(v, "session").is_some_and(|s| grp.auto.contains(&s));
                    if auto && v["how"] != "ended" {
                        grp.auto_abandoned.push(p.invoke);
                    }
                }
            }
            _ => {}
        }
    }

    let mut found: Vec<GroupAnomaly> = Vec::new();
    let mut flag = |kind: &str, group: &str, what: String, indices: Vec<usize>| {
        found.push(GroupAnomaly {
            kind: kind.to_string(),
            group: group.to_string(),
            what,
            indices,
        });
    };
    // A session still open when the run stopped ended then, unrecorded (after every publish).
    for g in groups.values_mut() {
        let open: Vec<u64> = g.opened.difference(&g.left).copied().collect();
        for sid in open {
            g.ends.push(u64::MAX);
            if g.auto.contains(&sid) {
                g.auto_abandoned.push(u64::MAX);
            }
        }
    }
    let mut unknown = false;
    for (name, g) in &groups {
        let limit = group_spec(name).map_or(0, |s| s.retry_limit);
        let mut redeliveries = 0;
        let mut most = 0;
        for (seq, ds) in &g.deliveries {
            redeliveries += ds.len().saturating_sub(1);
            most = most.max(ds.len());
            // wrong-seq / unexpected
            for (sid, _, payload, idx) in ds {
                match acked_pub.get(seq) {
                    Some((p, _, pidx)) if p != payload => flag(
                        "wrong-seq",
                        name,
                        format!("session {sid} got {seq}:{payload}, but {p} was acknowledged with sequence {seq}"),
                        vec![*idx, *pidx],
                    ),
                    _ => {}
                }
                if matches!(sent.get(&payload.to_string()), None | Some(Type::Fail)) {
                    flag(
                        "unexpected",
                        name,
                        format!("session {sid} got {seq}:{payload}, which no publish that may have succeeded sent"),
                        vec![*idx],
                    );
                }
            }
            // after-ack / double-ack
            if let Some(first) = g.acks.get(seq).and_then(|a| a.iter().min_by_key(|x| x.1)) {
                for (sid, at, _, idx) in ds {
                    let Some((joined, jidx)) = g.sessions.get(sid) else {
                        continue;
                    };
                    if *joined > first.1 && *sid != first.0 {
                        let again = g.acks[seq].iter().find(|a| a.0 == *sid && a.1 >= *at);
                        let (kind, extra) = match again {
                            Some(a) => ("double-ack", vec![a.2]),
                            None => ("after-ack", vec![]),
                        };
                        let mut indices = vec![first.2, *jidx, *idx];
                        indices.extend(extra);
                        flag(
                            kind,
                            name,
                            format!(
                                "sequence {seq} was acked by session {} at {:.3} s, yet session {sid}, opened at {:.3} s, received it{}",
                                first.0,
                                first.1 as f64 / 1e9,
                                *joined as f64 / 1e9,
                                if kind == "double-ack" { " and acked it again" } else { "" }
                            ),
                            indices,
                        );
                    }
                }
            }
            if limit > 0 && ds.len() > limit as usize + 1 {
                flag(
                    "retry-bound",
                    name,
                    format!(
                        "sequence {seq} was delivered {} times; retry limit {limit} allows {}",
                        ds.len(),
                        limit + 1
                    ),
                    ds.iter().map(|d| d.3).collect(),
                );
            }
        }
        r.redeliveries.insert(name.clone(), redeliveries);
        r.max_deliveries.insert(name.clone(), most);
        // lost
        if !g.drained {
            r.undrained.push(name.clone());
            unknown = true;
            continue;
        }
        for (seq, (payload, invoked, pidx)) in &acked_pub {
            let delivered = g.deliveries.contains_key(seq);
            if limit > 0 {
                let ended_after = g.ends.iter().filter(|t| *t > invoked).count();
                if !delivered && ended_after < limit as usize {
                    flag(
                        "lost",
                        name,
                        format!("acknowledged publish {seq}:{payload} was never delivered ({ended_after} sessions ended after it, retry limit {limit})"),
                        vec![*pidx],
                    );
                }
                continue;
            }
            if g.acks.contains_key(seq) || g.maybe_acked.contains(seq) {
                continue;
            }
            // An auto-ack claim acks what it takes before the client reads it: an auto-ack
            // consumer that goes away loses what it was sent but did not read.
            // (it must have been claimable while that session lived: published, and released
            // by whoever received it last, before the session ended)
            let since = g
                .deliveries
                .get(seq)
                .and_then(|ds| ds.iter().map(|d| d.1).max())
                .map_or(*invoked, |t| t.max(*invoked));
            if g.auto_abandoned.iter().any(|t| *t > since) {
                *r.auto_dropped.entry(name.clone()).or_default() += 1;
                continue;
            }
            if delivered {
                flag(
                    "lost-redelivery",
                    name,
                    format!(
                        "acknowledged publish {seq}:{payload} was delivered {} time(s) but never acked: it was not redelivered after its consumer left",
                        g.deliveries[seq].len()
                    ),
                    std::iter::once(*pidx)
                        .chain(g.deliveries[seq].iter().map(|d| d.3))
                        .collect(),
                );
            } else {
                flag(
                    "lost",
                    name,
                    format!("acknowledged publish {seq}:{payload} was never delivered"),
                    vec![*pidx],
                );
            }
        }
    }
    // storm
    if let (Some(first), Some(last)) = (progress.first(), progress.last()) {
        let growth = last.saturating_sub(*first);
        let allowed =
            (STORM_FACTOR * r.client_ops as f64) as u64 + STORM_PER_FAULT * faults + STORM_SLACK;
        r.log_growth = Some(growth);
        r.log_allowed = Some(allowed);
        if growth > allowed {
            flag(
                "storm",
                "*",
                format!(
                    "the log grew by {growth} entries for {} client operations and {faults} faults (allowed {allowed})",
                    r.client_ops
                ),
                vec![],
            );
        }
    }
    for a in found {
        let n = r.anomaly_counts.entry(a.kind.clone()).or_default();
        *n += 1;
        if *n <= SHOWN_PER_KIND {
            r.anomalies.push(a);
        }
    }
    r.valid = if !r.anomaly_counts.is_empty() {
        Some(false)
    } else if unknown {
        None
    } else {
        Some(true)
    };
    r
}

/// History indices the anomalies blame (outlined in the timeline).
pub fn culprits(r: &GroupsReport) -> impl Iterator<Item = usize> + '_ {
    r.anomalies.iter().flat_map(|a| a.indices.iter().copied())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{pairs, Op};

    /// A hand-written history: each call happens 1 ms after the previous one.
    #[derive(Default)]
    struct H {
        ops: Vec<Op>,
        t: u64,
    }

    impl H {
        fn rec(&mut self, process: i64, kind: Type, f: F, value: Value) {
            self.t += 1_000_000;
            let key = (process != HARNESS).then_some(GROUP_TOPIC);
            self.ops.push(Op::new(process, kind, f, key, value, self.t));
        }
        fn both(&mut self, process: i64, f: F, value: Value) {
            self.rec(process, Type::Invoke, f, value.clone());
            self.rec(process, Type::Ok, f, value);
        }
        fn publish(&mut self, payload: i64, seq: u64) {
            self.rec(0, Type::Invoke, F::Publish, json!({ "payload": payload }));
            self.rec(
                0,
                Type::Ok,
                F::Publish,
                json!({"payload": payload, "seq": seq}),
            );
        }
        fn join(&mut self, p: i64, group: &str, session: u64, auto: bool) {
            self.both(
                p,
                F::Join,
                json!({"group": group, "session": session, "auto": auto}),
            );
        }
        fn deliver(&mut self, p: i64, group: &str, session: u64, seq: u64, auto: bool) {
            self.rec(p, Type::Invoke, F::Deliver, Value::Null);
            self.rec(
                p,
                Type::Ok,
                F::Deliver,
                json!({"group": group, "session": session, "seq": seq, "payload": seq, "auto": auto}),
            );
        }
        fn ack(&mut self, p: i64, group: &str, session: u64, seq: u64, kind: Type) {
            let v = json!({"group": group, "session": session, "seq": seq});
            self.rec(p, Type::Invoke, F::Ack, v.clone());
            self.rec(p, kind, F::Ack, v);
        }
        fn leave(&mut self, p: i64, group: &str, session: u64, how: &str) {
            self.both(
                p,
                F::Leave,
                json!({"group": group, "session": session, "how": how}),
            );
        }
        fn applied(&mut self, n: u64) {
            self.both(HARNESS, F::Progress, json!({ "applied": n }));
        }
        fn drained(&mut self, group: &str) {
            self.both(HARNESS, F::Progress, json!({ "drained": group }));
        }
        fn check(&self) -> GroupsReport {
            check(&pairs(&self.ops))
        }
    }

    fn kinds(r: &GroupsReport) -> Vec<&str> {
        r.anomaly_counts.keys().map(String::as_str).collect()
    }

    /// Two events; a manual consumer acks 1, is killed holding 2, which comes back to the next
    /// consumer (who acks it); an auto consumer takes both; a redelivery to a session that was
    /// open before the ack is allowed.
    fn valid_history() -> H {
        let mut h = H::default();
        h.applied(10);
        h.publish(1, 1);
        h.publish(2, 2);
        h.join(10, "manual", 1, false);
        h.join(11, "manual", 2, false);
        h.deliver(10, "manual", 1, 1, false);
        h.deliver(10, "manual", 1, 2, false);
        // session 2 was open before the ack: a redelivery claimed before it is legitimate
        h.ack(10, "manual", 1, 1, Type::Ok);
        h.deliver(11, "manual", 2, 1, false);
        h.leave(10, "manual", 1, "kill");
        h.deliver(11, "manual", 2, 2, false);
        h.ack(11, "manual", 2, 2, Type::Ok);
        h.leave(11, "manual", 2, "leave");
        h.join(20, "auto", 3, true);
        h.deliver(20, "auto", 3, 1, true);
        h.deliver(20, "auto", 3, 2, true);
        h.leave(20, "auto", 3, "ended");
        h.drained("manual");
        h.drained("auto");
        h.applied(40);
        h
    }

    #[test]
    fn a_valid_history_passes() {
        let r = valid_history().check();
        assert_eq!(r.valid, Some(true), "{:?}", r.anomalies);
        assert_eq!(r.deliveries, 6);
        assert_eq!(r.redeliveries["manual"], 2);
        assert_eq!(r.log_growth, Some(30));
    }

    #[test]
    fn a_double_ack_is_caught() {
        let mut h = valid_history();
        // a session opened after 1 was acked gets it and acks it again
        h.join(12, "manual", 9, false);
        h.deliver(12, "manual", 9, 1, false);
        h.ack(12, "manual", 9, 1, Type::Ok);
        let r = h.check();
        assert_eq!(r.valid, Some(false));
        assert_eq!(kinds(&r), ["double-ack"]);
        assert!(r.anomalies[0].what.contains("acked it again"));
    }

    #[test]
    fn a_delivery_after_an_auto_ack_is_caught() {
        let mut h = valid_history();
        h.join(21, "auto", 9, true);
        h.deliver(21, "auto", 9, 2, true);
        let r = h.check();
        assert_eq!(r.valid, Some(false));
        // the second auto delivery is itself an ack of 2: reported as a double ack
        assert_eq!(kinds(&r), ["double-ack"]);
        let mut h = valid_history();
        h.join(12, "manual", 9, false);
        h.deliver(12, "manual", 9, 2, false);
        h.leave(12, "manual", 9, "kill");
        let r = h.check();
        assert_eq!(kinds(&r), ["after-ack"]);
    }

    #[test]
    fn a_lost_redelivery_is_caught() {
        let mut h = valid_history();
        // 3 goes to a consumer that is killed; nobody ever gets it again
        h.publish(3, 3);
        h.join(10, "manual", 7, false);
        h.deliver(10, "manual", 7, 3, false);
        h.leave(10, "manual", 7, "kill");
        h.join(20, "auto", 8, true);
        h.deliver(20, "auto", 8, 3, true);
        h.leave(20, "auto", 8, "ended");
        h.drained("manual");
        let r = h.check();
        assert_eq!(r.valid, Some(false));
        assert_eq!(kinds(&r), ["lost-redelivery"]);
        assert_eq!(r.anomalies[0].group, "manual");
    }

    #[test]
    fn an_event_never_delivered_is_lost_unless_an_auto_consumer_dropped_it() {
        let mut h = valid_history();
        h.publish(3, 3);
        h.join(20, "auto", 8, true);
        h.deliver(20, "auto", 8, 3, true);
        h.leave(20, "auto", 8, "ended");
        let r = h.check();
        assert_eq!(kinds(&r), ["lost"]);
        assert_eq!(r.anomalies[0].group, "manual");
        // in the auto group, an auto consumer that went away after the publish excuses it
        let mut h = valid_history();
        h.publish(3, 3);
        h.join(10, "manual", 7, false);
        h.deliver(10, "manual", 7, 3, false);
        h.ack(10, "manual", 7, 3, Type::Ok);
        h.join(20, "auto", 8, true);
        h.leave(20, "auto", 8, "kill");
        let r = h.check();
        assert_eq!(r.valid, Some(true), "{:?}", r.anomalies);
        assert_eq!(r.auto_dropped["auto"], 1);
        // so does one still open when the clients stopped (no leave recorded)
        let mut h = valid_history();
        h.publish(3, 3);
        h.join(10, "manual", 7, false);
        h.deliver(10, "manual", 7, 3, false);
        h.ack(10, "manual", 7, 3, Type::Ok);
        h.join(20, "auto", 8, true);
        let r = h.check();
        assert_eq!(r.valid, Some(true), "{:?}", r.anomalies);
        assert_eq!(r.auto_dropped["auto"], 1);
        // but a manual session still open proves nothing
        let mut h = valid_history();
        h.publish(3, 3);
        h.join(10, "manual", 7, false);
        h.deliver(10, "manual", 7, 3, false);
        h.join(20, "auto", 8, true);
        h.deliver(20, "auto", 8, 3, true);
        let r = h.check();
        assert_eq!(kinds(&r), ["lost-redelivery"]);
        // an ack whose outcome is unknown may have been applied
        let mut h = valid_history();
        h.publish(3, 3);
        h.join(10, "manual", 7, false);
        h.deliver(10, "manual", 7, 3, false);
        h.ack(10, "manual", 7, 3, Type::Info);
        h.join(20, "auto", 8, true);
        h.deliver(20, "auto", 8, 3, true);
        let r = h.check();
        assert_eq!(r.valid, Some(true), "{:?}", r.anomalies);
    }

    #[test]
    fn deliveries_beyond_the_retry_limit_are_caught() {
        let mut h = valid_history();
        for s in 0..4 {
            h.join(30, "limited", 100 + s, false);
            h.deliver(30, "limited", 100 + s, 1, false);
            h.leave(30, "limited", 100 + s, "kill");
        }
        h.deliver(30, "limited", 103, 2, false);
        h.drained("limited");
        let r = h.check();
        assert_eq!(r.valid, Some(true), "4 deliveries with retry limit 3");
        h.join(30, "limited", 200, false);
        h.deliver(30, "limited", 200, 1, false);
        let r = h.check();
        assert_eq!(kinds(&r), ["retry-bound"]);
        assert!(r.anomalies[0].what.contains("5 times"));
    }

    #[test]
    fn a_storm_is_caught() {
        let mut h = valid_history();
        // 2,000 claims for a single delivery: the log outgrows the clients' work
        h.applied(40 + 2_000);
        let r = h.check();
        assert_eq!(r.valid, Some(false));
        assert_eq!(kinds(&r), ["storm"]);
        assert!(r.log_growth.unwrap() > r.log_allowed.unwrap());
    }

    #[test]
    fn wrong_and_unexpected_payloads_are_caught() {
        let mut h = valid_history();
        // session 2 (open since before any ack) gets sequence 2 with a payload never sent
        h.rec(11, Type::Invoke, F::Deliver, Value::Null);
        h.rec(
            11,
            Type::Ok,
            F::Deliver,
            json!({"group": "manual", "session": 2, "seq": 2, "payload": 77, "auto": false}),
        );
        let r = h.check();
        assert_eq!(kinds(&r), ["unexpected", "wrong-seq"]);
    }

    #[test]
    fn an_unfinished_drain_is_unknown() {
        let mut h = H::default();
        h.publish(1, 1);
        h.join(10, "manual", 1, false);
        h.leave(10, "manual", 1, "broken");
        let r = h.check();
        assert_eq!(r.valid, None);
        assert_eq!(r.undrained, ["manual"]);
    }
}
