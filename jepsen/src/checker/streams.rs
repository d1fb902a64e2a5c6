//! The streams checker: events published to a few topics, a live consumer per topic, and a
//! final replay of every topic from sequence 1 on every node.
//!
//! Per topic, with the first final replay as the reference:
//! - **order**: every replay is dense and in order: its i-th event has sequence i (a jump is a
//!   **gap**, a repeat or a step back is **order**); no payload appears twice (**duplicate**);
//! - **mismatch**: every node's replay is identical to the reference;
//! - **lost**: every acknowledged publish is in the replay, at the sequence it was acknowledged
//!   with (elsewhere: **wrong-seq**);
//! - **unexpected**: every replayed payload was invoked by some publish that did not surely
//!   fail (indeterminate publishes may or may not be present: present ones are "recovered");
//! - **realtime**: a publish acknowledged before another was invoked has the lower sequence;
//! - **live**: what each live consumer received is a prefix of the replay: sequences
//!   1, 2, 3, ... with the replay's payloads.
//!
//! A topic that was published to but has no successful final replay makes the verdict unknown
//! (unless something else is wrong).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::history::{Pair, Type, F};

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    /// `None` when some topic had no final replay to judge by.
    pub valid: Option<bool>,
    pub topics: usize,
    pub attempted: usize,
    pub acknowledged: usize,
    pub indeterminate: usize,
    pub failed: usize,
    /// Indeterminate publishes present in the replay.
    pub recovered: usize,
    /// Final replays checked (topics × nodes).
    pub replays: usize,
    /// Events in the reference replays, over all topics.
    pub replayed: usize,
    /// Events the live consumers received.
    pub live_delivered: usize,
    /// Anomalies by kind (lost, wrong-seq, gap, order, duplicate, mismatch, unexpected,
    /// realtime, live).
    pub anomaly_counts: BTreeMap<String, usize>,
    /// The first few anomalies of each kind, each with its evidence.
    pub anomalies: Vec<StreamAnomaly>,
    /// Topics published to without a successful final replay.
    pub unreplayed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamAnomaly {
    pub kind: String,
    pub topic: String,
    /// One line: what is wrong.
    pub what: String,
    /// The operations and replay entries that show it.
    pub evidence: Vec<String>,
    /// History indices of the operations involved (outlined in the timeline).
    pub culprit_indices: Vec<usize>,
}

/// Anomalies listed per kind (all are counted).
const MAX_LISTED: usize = 5;

#[derive(Debug, Clone)]
struct Publish {
    index: usize,
    process: i64,
    kind: Type,
    payload: String,
    seq: Option<u64>,
    invoke: u64,
    complete: u64,
    node: Option<u64>,
}

impl Publish {
    fn describe(&self) -> String {
        let kind = match self.kind {
            Type::Ok => "ok",
            Type::Fail => "fail",
            _ => "info",
        };
        let seq = self.seq.map_or(String::new(), |s| format!(" seq {s}"));
        let done = if self.complete == u64::MAX {
            "never completed".to_string()
        } else {
            format!("{:.3}s", self.complete as f64 / 1e9)
        };
        format!(
            "#{} p{} publish {} -> {kind}{seq} (node {}, {:.3}s .. {done})",
            self.index,
            self.process,
            self.payload,
            self.node.map_or("?".into(), |n| n.to_string()),
            self.invoke as f64 / 1e9,
        )
    }
}

#[derive(Debug, Clone)]
struct Replay {
    index: usize,
    node: Option<u64>,
    entries: Vec<(u64, String)>,
}

impl Replay {
    fn name(&self) -> String {
        format!(
            "replay #{} on node {}",
            self.index,
            self.node.map_or("?".into(), |n| n.to_string())
        )
    }

    /// The entries around position `pos` (0-based), for evidence.
    fn window(&self, pos: usize) -> String {
        let lo = pos.saturating_sub(2);
        let hi = (pos + 3).min(self.entries.len());
        let shown: Vec<String> = self.entries[lo..hi]
            .iter()
            .map(|(s, p)| format!("{s}:{p}"))
            .collect();
        format!(
            "{} ({} events) around position {}: [{}{}{}]",
            self.name(),
            self.entries.len(),
            pos + 1,
            if lo > 0 { "... " } else { "" },
            shown.join(", "),
            if hi < self.entries.len() { " ..." } else { "" }
        )
    }
}

/// A payload as a comparable string: integers print as themselves, strings quoted.
fn payload_key(v: &Value) -> String {
    v.to_string()
}

fn entries(v: &Value) -> Vec<(u64, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let seq = e.get(0).and_then(Value::as_u64).unwrap_or(0);
                    let p = e.get(1).map_or_else(|| "null".into(), payload_key);
                    (seq, p)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One event a live consumer received: (history index, seq, payload, node).
type Delivery = (usize, u64, String, Option<u64>);

#[derive(Default)]
struct Topic {
    publishes: Vec<Publish>,
    replays: Vec<Replay>,
    /// (process) → deliveries in history order: (index, seq, payload, node).
    live: BTreeMap<i64, Vec<Delivery>>,
}

struct Out<'a> {
    rep: &'a mut StreamReport,
}

impl Out<'_> {
    fn flag(
        &mut self,
        kind: &str,
        topic: &str,
        what: String,
        evidence: Vec<String>,
        idx: Vec<usize>,
    ) {
        let n = self.rep.anomaly_counts.entry(kind.to_string()).or_default();
        *n += 1;
        if *n <= MAX_LISTED {
            self.rep.anomalies.push(StreamAnomaly {
                kind: kind.to_string(),
                topic: topic.to_string(),
                what,
                evidence,
                culprit_indices: idx,
            });
        }
    }
}

pub fn check(pairs: &[Pair]) -> StreamReport {
    let mut topics: BTreeMap<String, Topic> = BTreeMap::new();
    for p in pairs {
        let Some(topic) = p.key.clone() else { continue };
        match p.f {
            F::Publish => {
                let t = topics.entry(topic).or_default();
                t.publishes.push(Publish {
                    index: p.index,
                    process: p.process,
                    kind: p.kind,
                    payload: p
                        .value
                        .get("payload")
                        .map_or_else(|| "null".into(), payload_key),
                    seq: if p.kind == Type::Ok {
                        p.value.get("seq").and_then(Value::as_u64)
                    } else {
                        None
                    },
                    invoke: p.invoke,
                    complete: p.complete,
                    node: p.node,
                });
            }
            F::Replay if p.kind == Type::Ok && p.final_read => {
                topics.entry(topic).or_default().replays.push(Replay {
                    index: p.index,
                    node: p.node,
                    entries: entries(&p.value),
                });
            }
            F::Consume if p.kind == Type::Ok => {
                let seq = p.value.get("seq").and_then(Value::as_u64).unwrap_or(0);
                let payload = p
                    .value
                    .get("payload")
                    .map_or_else(|| "null".into(), payload_key);
                topics
                    .entry(topic)
                    .or_default()
                    .live
                    .entry(p.process)
                    .or_default()
                    .push((p.index, seq, payload, p.node));
            }
            _ => {}
        }
    }
    let mut rep = StreamReport {
        topics: topics.len(),
        ..Default::default()
    };
    for (name, t) in &mut topics {
        t.replays.sort_by_key(|r| r.index);
        for d in t.live.values_mut() {
            d.sort_by_key(|d| d.0);
        }
        rep.attempted += t.publishes.len();
        rep.acknowledged += t.publishes.iter().filter(|p| p.kind == Type::Ok).count();
        rep.indeterminate += t.publishes.iter().filter(|p| p.kind == Type::Info).count();
        rep.failed += t.publishes.iter().filter(|p| p.kind == Type::Fail).count();
        rep.replays += t.replays.len();
        rep.live_delivered += t.live.values().map(Vec::len).sum::<usize>();
        let mut out = Out { rep: &mut rep };
        check_topic(name, t, &mut out);
    }
    let anomalous = !rep.anomaly_counts.is_empty();
    rep.valid = if anomalous {
        Some(false)
    } else if !rep.unreplayed.is_empty() {
        None
    } else {
        Some(true)
    };
    rep
}

fn check_topic(name: &str, t: &Topic, out: &mut Out<'_>) {
    // Every replay: in order (sequences rise), dense (by one, from 1), no payload twice.
    for r in &t.replays {
        let descent = r
            .entries
            .windows(2)
            .position(|w| w[1].0 <= w[0].0)
            .map(|i| i + 1);
        if let Some(pos) = descent {
            out.flag(
                "order",
                name,
                format!(
                    "{}: sequence {} follows {}",
                    r.name(),
                    r.entries[pos].0,
                    r.entries[pos - 1].0
                ),
                vec![r.window(pos)],
                vec![r.index],
            );
        } else if let Some(pos) = r
            .entries
            .iter()
            .enumerate()
            .position(|(i, (seq, _))| *seq != i as u64 + 1)
        {
            let (want, seq) = (pos as u64 + 1, r.entries[pos].0);
            out.flag(
                "gap",
                name,
                format!(
                    "{}: {} comes where {want} was due: {} missing",
                    r.name(),
                    seq,
                    if seq == want + 1 {
                        format!("{want} is")
                    } else {
                        format!("{want}..={} are", seq - 1)
                    }
                ),
                vec![r.window(pos)],
                vec![r.index],
            );
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (pos, (seq, payload)) in r.entries.iter().enumerate() {
            if let Some(first) = seen.insert(payload.as_str(), pos) {
                out.flag(
                    "duplicate",
                    name,
                    format!(
                        "{}: payload {payload} at sequences {} and {seq}",
                        r.name(),
                        r.entries[first].0
                    ),
                    vec![r.window(pos)],
                    vec![r.index],
                );
                break;
            }
        }
    }
    let Some(reference) = t.replays.first() else {
        if !t.publishes.is_empty() {
            out.rep.unreplayed.push(name.to_string());
        }
        // Without a replay only the live consumers' own order can be judged.
        check_live(name, t, None, out);
        return;
    };
    out.rep.replayed += reference.entries.len();
    let mut by_payload: BTreeMap<&str, &Publish> = BTreeMap::new();
    for p in &t.publishes {
        // A payload published twice would be a harness bug; keep the first.
        by_payload.entry(p.payload.as_str()).or_insert(p);
    }
    // Every node's replay is the same.
    for r in &t.replays[1..] {
        if r.entries == reference.entries {
            continue;
        }
        let pos = r
            .entries
            .iter()
            .zip(&reference.entries)
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| r.entries.len().min(reference.entries.len()));
        let show = |x: &Replay| {
            x.entries
                .get(pos)
                .map_or("nothing".to_string(), |(s, p)| format!("{s}:{p}"))
        };
        let mut evidence = vec![reference.window(pos), r.window(pos)];
        for x in [reference, r] {
            if let Some(p) = x
                .entries
                .get(pos)
                .and_then(|(_, p)| by_payload.get(p.as_str()))
            {
                evidence.push(p.describe());
            }
        }
        out.flag(
            "mismatch",
            name,
            format!(
                "{} and {} differ at position {}: {} vs {} ({} vs {} events)",
                reference.name(),
                r.name(),
                pos + 1,
                show(reference),
                show(r),
                reference.entries.len(),
                r.entries.len()
            ),
            evidence,
            vec![reference.index, r.index],
        );
    }

    // Against the reference replay.
    let at: BTreeMap<&str, usize> = reference
        .entries
        .iter()
        .enumerate()
        .rev() // the first occurrence wins
        .map(|(i, (_, p))| (p.as_str(), i))
        .collect();
    for p in t.publishes.iter().filter(|p| p.kind == Type::Ok) {
        match (at.get(p.payload.as_str()), p.seq) {
            (None, _) => {
                let slot = p.seq.and_then(|s| s.checked_sub(1)).map(|s| s as usize);
                let mut ev = vec![p.describe()];
                if let Some(s) = slot {
                    ev.push(reference.window(s.min(reference.entries.len().saturating_sub(1))));
                }
                out.flag(
                    "lost",
                    name,
                    format!(
                        "acknowledged publish of {} (seq {}) is not in the replay",
                        p.payload,
                        p.seq.map_or("?".into(), |s| s.to_string())
                    ),
                    ev,
                    vec![p.index, reference.index],
                );
            }
            (Some(pos), Some(seq)) if reference.entries[*pos].0 != seq => {
                out.flag(
                    "wrong-seq",
                    name,
                    format!(
                        "publish of {} was acknowledged with sequence {seq} but the replay has it at {}",
                        p.payload, reference.entries[*pos].0
                    ),
                    vec![p.describe(), reference.window(*pos)],
                    vec![p.index, reference.index],
                );
            }
            _ => {}
        }
    }
    let mut recovered = 0;
    for (pos, (seq, payload)) in reference.entries.iter().enumerate() {
        match by_payload.get(payload.as_str()) {
            None => out.flag(
                "unexpected",
                name,
                format!("the replay holds {payload} at sequence {seq}, which no publish sent"),
                vec![reference.window(pos)],
                vec![reference.index],
            ),
            Some(p) if p.kind == Type::Fail => out.flag(
                "unexpected",
                name,
                format!(
                    "the replay holds {payload} at sequence {seq}, whose publish surely failed"
                ),
                vec![p.describe(), reference.window(pos)],
                vec![p.index, reference.index],
            ),
            Some(p) if p.kind == Type::Info => recovered += 1,
            _ => {}
        }
    }
    out.rep.recovered += recovered;

    // Real-time order: a publish acknowledged before another was invoked comes first.
    let mut acked: Vec<(u64, usize, &Publish)> = t
        .publishes
        .iter()
        .filter(|p| p.kind == Type::Ok)
        .filter_map(|p| at.get(p.payload.as_str()).map(|pos| (p.complete, *pos, p)))
        .collect();
    acked.sort_by_key(|a| a.0);
    // prefix maxima of replay position, with the publish that holds it
    let mut best: Vec<(usize, &Publish)> = Vec::with_capacity(acked.len());
    for (_, pos, p) in &acked {
        let b = match best.last() {
            Some((bp, bpub)) if *bp >= *pos => (*bp, *bpub),
            _ => (*pos, *p),
        };
        best.push(b);
    }
    for later in &t.publishes {
        let Some(&pos) = at.get(later.payload.as_str()) else {
            continue;
        };
        let n = acked.partition_point(|a| a.0 < later.invoke);
        if n == 0 {
            continue;
        }
        let (bpos, earlier) = best[n - 1];
        if bpos > pos {
            out.flag(
                "realtime",
                name,
                format!(
                    "{} was acknowledged before {} was invoked, yet has the higher sequence ({} > {})",
                    earlier.payload,
                    later.payload,
                    reference.entries[bpos].0,
                    reference.entries[pos].0
                ),
                vec![earlier.describe(), later.describe(), reference.window(pos)],
                vec![earlier.index, later.index],
            );
        }
    }
    check_live(name, t, Some(reference), out);
}

/// Each live consumer received sequences 1, 2, 3, ... and (given a replay) the replay's
/// payloads at those sequences.
fn check_live(name: &str, t: &Topic, reference: Option<&Replay>, out: &mut Out<'_>) {
    for (process, deliveries) in &t.live {
        for (i, (index, seq, payload, node)) in deliveries.iter().enumerate() {
            let want = i as u64 + 1;
            let on = format!(
                "live consumer p{process} (event {want}, #{index} from node {})",
                node.map_or("?".into(), |n| n.to_string())
            );
            let prev = |k: usize| -> Vec<String> {
                deliveries[i.saturating_sub(k)..=i]
                    .iter()
                    .map(|(ix, s, p, n)| {
                        format!(
                            "#{ix} p{process} received {s}:{p} from node {}",
                            n.map_or("?".into(), |n| n.to_string())
                        )
                    })
                    .collect()
            };
            if *seq != want {
                out.flag(
                    "live",
                    name,
                    format!("{on}: received sequence {seq} where {want} was due"),
                    prev(2),
                    vec![*index],
                );
                break;
            }
            let Some(r) = reference else { continue };
            let pos = i;
            match r.entries.get(pos) {
                None => {
                    out.flag(
                        "live",
                        name,
                        format!(
                            "{on}: received {seq}:{payload}, beyond the replay's {} events",
                            r.entries.len()
                        ),
                        vec![
                            prev(0).join(""),
                            r.window(r.entries.len().saturating_sub(1)),
                        ],
                        vec![*index, r.index],
                    );
                    break;
                }
                Some((_, p)) if p != payload => {
                    out.flag(
                        "live",
                        name,
                        format!("{on}: received {seq}:{payload}, the replay has {seq}:{p}"),
                        vec![prev(0).join(""), r.window(pos)],
                        vec![*index, r.index],
                    );
                    break;
                }
                _ => {}
            }
        }
    }
}

/// The culprit history indices of every listed anomaly.
pub fn culprits(rep: &StreamReport) -> BTreeSet<usize> {
    rep.anomalies
        .iter()
        .flat_map(|a| a.culprit_indices.iter().copied())
        .collect()
}
