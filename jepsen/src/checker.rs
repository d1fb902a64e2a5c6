//! Checkers over a recorded history, and the verdict that combines them.

pub mod groups;
pub mod lock;
pub mod register;
pub mod set;
pub mod streams;

/// `kind n, kind n` of a checker's anomaly counts, or `none`.
fn counts(m: &std::collections::BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".to_string();
    }
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{pairs, Op, Type, F, HARNESS, NEMESIS};

/// States a single key's linearizability search may visit before giving up ("unknown").
pub const DEFAULT_BUDGET: usize = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Anomaly,
    /// Nothing wrong found, but something could not be checked (search budget, no final read).
    Unknown,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FaultCount {
    pub attempted: usize,
    /// The fault took effect (e.g. the node was running when killed).
    pub effective: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub valid: Validity,
    /// ok/fail/info per operation type (client operations only).
    pub counts: BTreeMap<&'static str, Counts>,
    pub faults: BTreeMap<String, FaultCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<register::RegisterReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<set::SetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<streams::StreamReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<groups::GroupsReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<lock::LockReport>,
}

/// Runs every checker that has operations to check.
pub fn check(history: &[Op], budget: usize) -> Verdict {
    let ps = pairs(history);
    let mut counts: BTreeMap<&'static str, Counts> = BTreeMap::new();
    for p in ps
        .iter()
        .filter(|p| p.process != NEMESIS && p.process != HARNESS && p.f != F::Nemesis)
    {
        let c = counts.entry(p.f.name()).or_default();
        match p.kind {
            Type::Ok => c.ok += 1,
            Type::Fail => c.fail += 1,
            _ => c.info += 1,
        }
    }
    let mut faults: BTreeMap<String, FaultCount> = BTreeMap::new();
    for p in ps.iter().filter(|p| p.f == F::Nemesis) {
        let fault = p.value["fault"].as_str().unwrap_or("?");
        if fault == "heal" {
            continue;
        }
        let c = faults.entry(fault.to_string()).or_default();
        c.attempted += 1;
        if p.value["effect"].as_bool() == Some(true) {
            c.effective += 1;
        }
    }
    let has_register = ps
        .iter()
        .any(|p| p.key.as_deref().is_some_and(|k| k.starts_with("r/")));
    let has_set = ps.iter().any(|p| p.key.as_deref() == Some(set::SET_KEY));
    let is_groups = |p: &crate::history::Pair| {
        p.key.as_deref() == Some(crate::workload::GROUP_TOPIC) || p.process == HARNESS
    };
    let stream_ps: Vec<crate::history::Pair> =
        ps.iter().filter(|p| !is_groups(p)).cloned().collect();
    let has_streams = stream_ps
        .iter()
        .any(|p| matches!(p.f, F::Publish | F::Consume | F::Replay));
    let has_groups = ps.iter().any(|p| {
        p.key.as_deref() == Some(crate::workload::GROUP_TOPIC)
            && matches!(p.f, F::Publish | F::Join)
    });
    let groups = has_groups.then(|| groups::check(&ps));
    let has_lock = ps
        .iter()
        .any(|p| p.key.as_deref() == Some(crate::workload::LOCK_KEY) && matches!(p.f, F::Acquire));
    let lock = has_lock.then(|| lock::check(&ps));
    let register = has_register.then(|| register::check(&ps, budget));
    let set = has_set.then(|| set::check(&ps));
    let streams = has_streams.then(|| streams::check(&stream_ps));
    let anomaly = register.as_ref().is_some_and(|r| !r.valid)
        || set.as_ref().is_some_and(|s| s.valid == Some(false))
        || streams.as_ref().is_some_and(|s| s.valid == Some(false))
        || groups.as_ref().is_some_and(|g| g.valid == Some(false))
        || lock.as_ref().is_some_and(|l| l.valid == Some(false));
    let unknown = register
        .as_ref()
        .is_some_and(|r| !r.unknown_keys.is_empty())
        || set.as_ref().is_some_and(|s| s.valid.is_none())
        || streams.as_ref().is_some_and(|s| s.valid.is_none())
        || groups.as_ref().is_some_and(|g| g.valid.is_none())
        || lock.as_ref().is_some_and(|l| l.valid.is_none());
    Verdict {
        valid: if anomaly {
            Validity::Anomaly
        } else if unknown {
            Validity::Unknown
        } else {
            Validity::Valid
        },
        counts,
        faults,
        register,
        set,
        streams,
        groups,
        lock,
    }
}

impl Verdict {
    /// A human summary, a few lines long (plus the failing sub-histories).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let v = match self.valid {
            Validity::Valid => "VALID",
            Validity::Anomaly => "ANOMALY",
            Validity::Unknown => "UNKNOWN",
        };
        s.push_str(&format!("verdict: {v}\n"));
        for (f, c) in &self.counts {
            s.push_str(&format!(
                "  {f:<12} ok {:>6}  fail {:>5}  info {:>5}\n",
                c.ok, c.fail, c.info
            ));
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, c)| format!("{k} {}/{}", c.effective, c.attempted))
            .collect();
        s.push_str(&format!(
            "  faults (took effect/attempted): {}\n",
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(", ")
            }
        ));
        if let Some(r) = &self.register {
            s.push_str(&format!(
                "  register: {} keys, {} ops checked, {}\n",
                r.keys,
                r.ops_checked,
                if r.valid {
                    "linearizable"
                } else {
                    "NOT linearizable"
                }
            ));
            if !r.unknown_keys.is_empty() {
                s.push_str(&format!(
                    "  register: search budget exhausted on {:?}\n",
                    r.unknown_keys
                ));
            }
            for a in &r.anomalies {
                s.push_str(&format!(
                    "  key {}: no linearization explains {}\n    shortest failing prefix ({} of {} ops):\n",
                    a.key, a.culprit, a.prefix_len, a.ops
                ));
                let skip = a.prefix.len().saturating_sub(20);
                if skip > 0 {
                    s.push_str(&format!("      ... {skip} earlier ops\n"));
                }
                for line in &a.prefix[skip..] {
                    s.push_str(&format!("      {line}\n"));
                }
            }
        }
        if let Some(r) = &self.set {
            s.push_str(&format!(
                "  set: {} attempted, {} acknowledged, {} indeterminate ({} recovered), final size {}, {} reads; lost {}, unexpected {}, stale {}, vanished {}{}\n",
                r.attempted,
                r.acknowledged,
                r.indeterminate,
                r.recovered,
                r.final_size,
                r.reads_checked,
                r.lost_count,
                r.unexpected_count,
                r.stale_count,
                r.vanished_count,
                if r.valid.is_none() { " (no final read: unknown)" } else { "" }
            ));
            if !r.lost.is_empty() {
                s.push_str(&format!("    lost: {:?}\n", r.lost));
            }
            if !r.unexpected.is_empty() {
                s.push_str(&format!("    unexpected: {:?}\n", r.unexpected));
            }
            if !r.stale.is_empty() {
                s.push_str(&format!("    stale (element, read #): {:?}\n", r.stale));
            }
            if !r.vanished.is_empty() {
                s.push_str(&format!(
                    "    vanished (element, read #): {:?}\n",
                    r.vanished
                ));
            }
        }
        if let Some(r) = &self.streams {
            let anomalies = counts(&r.anomaly_counts);
            s.push_str(&format!(
                "  streams: {} topics, {} published ({} acknowledged, {} indeterminate ({} recovered), {} failed), {} replays of {} events, {} live deliveries; anomalies: {}{}\n",
                r.topics,
                r.attempted,
                r.acknowledged,
                r.indeterminate,
                r.recovered,
                r.failed,
                r.replays,
                r.replayed,
                r.live_delivered,
                anomalies,
                if r.unreplayed.is_empty() {
                    String::new()
                } else {
                    format!(" (no final replay of {:?}: unknown)", r.unreplayed)
                }
            ));
            for a in &r.anomalies {
                s.push_str(&format!("    {} [{}]: {}\n", a.kind, a.topic, a.what));
                for e in &a.evidence {
                    s.push_str(&format!("      {e}\n"));
                }
            }
        }
        if let Some(r) = &self.groups {
            let anomalies = counts(&r.anomaly_counts);
            s.push_str(&format!(
                "  groups: {} published ({} acknowledged), {} sessions, {} deliveries, {} acks ok ({} unknown), redeliveries {:?}, most deliveries of one event {:?}, auto-ack dropped {:?}, log growth {} (allowed {}) for {} client ops; anomalies: {}{}\n",
                r.published,
                r.acknowledged,
                r.sessions,
                r.deliveries,
                r.acks_ok,
                r.acks_unknown,
                r.redeliveries,
                r.max_deliveries,
                r.auto_dropped,
                r.log_growth.map_or("?".to_string(), |g| g.to_string()),
                r.log_allowed.map_or("?".to_string(), |g| g.to_string()),
                r.client_ops,
                anomalies,
                if r.undrained.is_empty() {
                    String::new()
                } else {
                    format!(" (final drain unfinished for {:?}: unknown)", r.undrained)
                }
            ));
            for a in &r.anomalies {
                s.push_str(&format!("    {} [{}]: {}\n", a.kind, a.group, a.what));
            }
        }
        if let Some(r) = &self.lock {
            let anomalies = counts(&r.anomaly_counts);
            s.push_str(&format!(
                "  lock: {} acquired ({} failed, {} unknown), {} fenced writes ({} acknowledged, {} refused, {} failed, {} indeterminate ({} recovered)), {} stale ({} refused), {} paused holders ({} refused, {} accepted), {} committed; anomalies: {}{}\n",
                r.acquired,
                r.acquire_failed,
                r.acquire_unknown,
                r.writes,
                r.acknowledged,
                r.refused,
                r.failed,
                r.indeterminate,
                r.recovered,
                r.stale,
                r.stale_refused,
                r.paused,
                r.paused_refused,
                r.paused_accepted,
                r.committed,
                anomalies,
                if r.valid.is_none() { " (no final feed: unknown)" } else { "" }
            ));
            for a in &r.anomalies {
                s.push_str(&format!("    {}: {}\n", a.kind, a.what));
            }
        }
        s
    }
}
