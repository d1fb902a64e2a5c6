//! The set-full checker: unique elements are added (`add`), and reads return the whole set.
//!
//! - lost: an acknowledged add missing from the final read (or from any read invoked after
//!   the add was acknowledged: reads are linearizable, so they must see it);
//! - unexpected: an element that was never attempted is present;
//! - vanished: an element a read saw that a later read (invoked after the first completed)
//!   does not.
//!
//! Indeterminate adds may be present or absent ("recovered" counts those present).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Pair, Type, F};

/// The key the set workload's adds and reads carry in the history.
pub const SET_KEY: &str = "set";

#[derive(Debug, Clone, Default, Serialize)]
pub struct SetReport {
    /// `None` when there was no successful final read to judge by.
    pub valid: Option<bool>,
    pub attempted: usize,
    pub acknowledged: usize,
    pub indeterminate: usize,
    /// Indeterminate adds present at the end.
    pub recovered: usize,
    pub final_size: usize,
    pub reads_checked: usize,
    pub lost_count: usize,
    pub unexpected_count: usize,
    pub stale_count: usize,
    pub vanished_count: usize,
    /// Acknowledged adds missing from a final read (first few).
    pub lost: Vec<i64>,
    pub unexpected: Vec<i64>,
    /// (element, history index of the read that missed it) for acknowledged adds a later read
    /// did not see.
    pub stale: Vec<(i64, usize)>,
    /// (element, history index of the read that no longer saw it).
    pub vanished: Vec<(i64, usize)>,
}

struct Read {
    index: usize,
    invoke: u64,
    complete: u64,
    elems: BTreeSet<i64>,
    final_read: bool,
}

const MAX_LISTED: usize = 50;

pub fn check(pairs: &[Pair]) -> SetReport {
    let mut adds: BTreeMap<i64, (Type, u64)> = BTreeMap::new(); // element → (type, completion)
    let mut reads: Vec<Read> = Vec::new();
    for p in pairs.iter().filter(|p| p.key.as_deref() == Some(SET_KEY)) {
        match p.f {
            F::Add => {
                if let Some(v) = p.value.as_i64() {
                    adds.insert(v, (p.kind, p.complete));
                }
            }
            F::Read if p.kind == Type::Ok => reads.push(Read {
                index: p.index,
                invoke: p.invoke,
                complete: p.complete,
                elems: p
                    .value
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(i64::MIN)).collect())
                    .unwrap_or_default(),
                final_read: p.final_read,
            }),
            _ => {}
        }
    }
    let mut rep = SetReport {
        attempted: adds.len(),
        acknowledged: adds.values().filter(|a| a.0 == Type::Ok).count(),
        indeterminate: adds.values().filter(|a| a.0 == Type::Info).count(),
        reads_checked: reads.len(),
        ..Default::default()
    };
    if adds.is_empty() && reads.is_empty() {
        return rep;
    }
    reads.sort_by_key(|r| r.invoke);
    // Every read: no unexpected elements, and every add acknowledged before it began.
    let mut unexpected = BTreeSet::new();
    for r in &reads {
        for e in &r.elems {
            if !adds.contains_key(e) {
                unexpected.insert(*e);
            }
        }
        for (e, (t, done)) in &adds {
            if *t == Type::Ok && *done < r.invoke && !r.elems.contains(e) && !r.final_read {
                rep.stale.push((*e, r.index));
            }
        }
    }
    // Nothing seen disappears later. Elements seen by reads completed before each read began:
    // sweep reads by invocation, folding in reads by completion.
    let mut by_complete: Vec<&Read> = reads.iter().collect();
    by_complete.sort_by_key(|r| r.complete);
    let mut seen: BTreeMap<i64, u64> = BTreeMap::new();
    let mut j = 0;
    for r in &reads {
        while j < by_complete.len() && by_complete[j].complete < r.invoke {
            for e in &by_complete[j].elems {
                seen.entry(*e).or_insert(by_complete[j].complete);
            }
            j += 1;
        }
        for e in seen.keys() {
            if !r.elems.contains(e) {
                rep.vanished.push((*e, r.index));
            }
        }
    }
    rep.unexpected = unexpected.into_iter().collect();
    let finals: Vec<&Read> = reads.iter().filter(|r| r.final_read).collect();
    match finals.last() {
        None => rep.valid = None,
        Some(last) => {
            rep.final_size = last.elems.len();
            for (e, (t, _)) in &adds {
                match t {
                    Type::Ok if finals.iter().any(|r| !r.elems.contains(e)) => rep.lost.push(*e),
                    Type::Info if last.elems.contains(e) => rep.recovered += 1,
                    _ => {}
                }
            }
            rep.valid = Some(
                rep.lost.is_empty()
                    && rep.unexpected.is_empty()
                    && rep.stale.is_empty()
                    && rep.vanished.is_empty(),
            );
        }
    }
    // Also judge without a final read: in-run anomalies are anomalies regardless.
    if rep.valid.is_none()
        && !(rep.stale.is_empty() && rep.vanished.is_empty() && rep.unexpected.is_empty())
    {
        rep.valid = Some(false);
    }
    rep.lost_count = rep.lost.len();
    rep.unexpected_count = rep.unexpected.len();
    rep.stale_count = rep.stale.len();
    rep.vanished_count = rep.vanished.len();
    rep.stale.truncate(MAX_LISTED);
    rep.vanished.truncate(MAX_LISTED);
    rep.lost.truncate(MAX_LISTED);
    rep.unexpected.truncate(MAX_LISTED);
    rep
}
