//! Linearizability of read/write/cas registers: the Wing–Gong search with Lowe's memoisation
//! of (linearized set, state) (as in Knossos' "linear" and Porcupine), run per key
//! (P-compositionality: a history is linearizable iff every key's sub-history is).
//!
//! Indeterminate (`info`) operations may take effect at any point after their invocation, or
//! never: they complete "at infinity" and the search succeeds once every determinate operation
//! is linearized. `fail` operations and indeterminate reads carry no information and are
//! dropped.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::history::{Pair, Type, F};

/// A register value: `None` is "no record".
pub type Val = Option<i64>;

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegF {
    Read(Val),
    Write(i64),
    Cas(Val, i64),
}

#[derive(Debug, Clone)]
pub struct RegOp {
    /// Index of the invocation in the history.
    pub index: usize,
    pub process: i64,
    pub f: RegF,
    pub invoke: u64,
    /// `u64::MAX` for indeterminate operations.
    pub complete: u64,
    pub info: bool,
}

impl RegOp {
    fn step(&self, s: Val) -> Option<Val> {
        match self.f {
            RegF::Read(v) => (s == v).then_some(s),
            RegF::Write(v) => Some(Some(v)),
            RegF::Cas(from, to) => (s == from).then_some(Some(to)),
        }
    }

    pub fn describe(&self) -> String {
        let v = |v: Val| v.map_or("nil".to_string(), |v| v.to_string());
        let what = match self.f {
            RegF::Read(x) => format!("read -> {}", v(x)),
            RegF::Write(x) => format!("write {x}"),
            RegF::Cas(a, b) => format!("cas {} -> {b}", v(a)),
        };
        let end = if self.info {
            "info (may or may not have happened)".to_string()
        } else {
            format!("{:.3}s", self.complete as f64 / 1e9)
        };
        format!(
            "#{} p{} {what}  [{:.3}s .. {end}]",
            self.index,
            self.process,
            self.invoke as f64 / 1e9
        )
    }
}

/// A value that is not an integer (or null) cannot have been written by the workload; it maps
/// to a sentinel that matches no write, so reading it is an anomaly.
fn val(v: &Value) -> Val {
    match v {
        Value::Null => None,
        v => Some(v.as_i64().unwrap_or(i64::MIN)),
    }
}

/// The register operations of one key, in invocation order.
pub fn reg_ops(pairs: &[&Pair]) -> Vec<RegOp> {
    let mut out = Vec::new();
    for p in pairs {
        if p.kind == Type::Fail {
            continue;
        }
        let info = p.kind != Type::Ok;
        let f = match p.f {
            F::Read if info => continue,
            F::Read => RegF::Read(val(&p.value)),
            F::Write => match p.value.as_i64() {
                Some(v) => RegF::Write(v),
                None => continue,
            },
            F::Cas => match p.value.as_array().map(Vec::as_slice) {
                Some([from, to]) if to.is_i64() => RegF::Cas(val(from), to.as_i64().unwrap_or(0)),
                _ => continue,
            },
            _ => continue,
        };
        out.push(RegOp {
            index: p.index,
            process: p.process,
            f,
            invoke: p.invoke,
            complete: if info { u64::MAX } else { p.complete },
            info,
        });
    }
    out.sort_by_key(|o| (o.invoke, o.index));
    out
}

/// Drops indeterminate writes whose value nobody observed. Sound: in any linearization that
/// includes such a write, the next operation is a write (a read or cas after it would have to
/// observe its value), so removing it keeps the linearization valid. This keeps the search from
/// exploring every placement of every timed-out write.
pub fn prune(ops: Vec<RegOp>) -> Vec<RegOp> {
    let mut observed = HashSet::new();
    for o in &ops {
        match o.f {
            RegF::Read(Some(v)) => {
                observed.insert(v);
            }
            RegF::Cas(Some(v), _) => {
                observed.insert(v);
            }
            _ => {}
        }
    }
    ops.into_iter()
        .filter(|o| {
            !o.info
                || match o.f {
                    RegF::Write(v) | RegF::Cas(_, v) => observed.contains(&v),
                    RegF::Read(_) => false,
                }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Linearizable,
    NotLinearizable,
    /// The search visited more than its budget of states.
    Unknown,
}

const NIL: usize = usize::MAX;

/// Decides whether `ops` (one register, initially without a record) is linearizable,
/// visiting at most `budget` distinct (linearized set, state) configurations.
pub fn search(ops: &[RegOp], budget: usize) -> Search {
    let required = ops.iter().filter(|o| !o.info).count();
    if required == 0 {
        return Search::Linearizable;
    }
    // Events: (time, is_return, op). At equal times calls go first (treated as concurrent).
    let mut evs: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        evs.push((o.invoke, false, i));
        evs.push((o.complete, true, i));
    }
    evs.sort_unstable();
    let n = evs.len();
    let head = n;
    let mut next = vec![NIL; n + 1];
    let mut prev = vec![NIL; n + 1];
    let mut ret_of = vec![NIL; ops.len()];
    for (i, e) in evs.iter().enumerate() {
        if e.1 {
            ret_of[e.2] = i;
        }
        next[i] = if i + 1 < n { i + 1 } else { NIL };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    next[head] = 0;

    let words = ops.len().div_ceil(64);
    let mut lin = vec![0u64; words];
    let mut state: Val = None;
    let mut done = 0usize;
    let mut stack: Vec<(usize, Val)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, Val)> = HashSet::new();
    let mut cur = next[head];
    loop {
        if done == required {
            return Search::Linearizable;
        }
        if cur == NIL {
            // Only calls of ops that cannot be linearized now remain, and no return: cannot
            // happen (every call has a later return), but backtrack to be safe.
            match stack.pop() {
                None => return Search::NotLinearizable,
                Some((c, s)) => {
                    cur = unlink_back(
                        c, s, &evs, ops, &mut lin, &mut state, &mut done, &mut next, &mut prev,
                        &ret_of,
                    );
                    continue;
                }
            }
        }
        let (_, is_ret, op) = evs[cur];
        if !is_ret {
            if let Some(ns) = ops[op].step(state) {
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), ns)) {
                    if cache.len() > budget {
                        return Search::Unknown;
                    }
                    stack.push((cur, state));
                    state = ns;
                    if !ops[op].info {
                        done += 1;
                    }
                    // lift the call and its return
                    let r = ret_of[op];
                    for x in [cur, r] {
                        let (p, nx) = (prev[x], next[x]);
                        next[p] = nx;
                        if nx != NIL {
                            prev[nx] = p;
                        }
                    }
                    cur = next[head];
                    continue;
                }
                lin[op / 64] &= !(1 << (op % 64));
            }
            cur = next[cur];
        } else {
            // The earliest pending return: its op must have been linearized by now. Backtrack.
            match stack.pop() {
                None => return Search::NotLinearizable,
                Some((c, s)) => {
                    cur = unlink_back(
                        c, s, &evs, ops, &mut lin, &mut state, &mut done, &mut next, &mut prev,
                        &ret_of,
                    );
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn unlink_back(
    c: usize,
    s: Val,
    evs: &[(u64, bool, usize)],
    ops: &[RegOp],
    lin: &mut [u64],
    state: &mut Val,
    done: &mut usize,
    next: &mut [usize],
    prev: &mut [usize],
    ret_of: &[usize],
) -> usize {
    let op = evs[c].2;
    lin[op / 64] &= !(1 << (op % 64));
    *state = s;
    if !ops[op].info {
        *done -= 1;
    }
    // unlift in reverse order: the return, then the call
    for x in [ret_of[op], c] {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != NIL {
            prev[nx] = x;
        }
    }
    next[c]
}

/// An anomaly on one key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyAnomaly {
    pub key: String,
    /// Every operation on the key, as checked.
    pub ops: usize,
    /// The shortest prefix of the key's history (cut at a completion) that is not
    /// linearizable; its last completed op is the first that no linearization explains.
    pub prefix_len: usize,
    pub culprit: String,
    /// History indices of the culprit's invocation(s).
    pub culprit_indices: Vec<usize>,
    /// The failing prefix, oldest first.
    pub prefix: Vec<String>,
    /// History indices of the failing prefix's operations.
    pub indices: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RegisterReport {
    pub keys: usize,
    pub ops_checked: usize,
    pub valid: bool,
    /// Keys whose search ran out of budget.
    pub unknown_keys: Vec<String>,
    pub anomalies: Vec<KeyAnomaly>,
}

/// The history cut at time `t`: operations invoked before it, those completing after it
/// becoming indeterminate.
fn cut(ops: &[RegOp], t: u64) -> Vec<RegOp> {
    ops.iter()
        .filter(|o| o.invoke <= t)
        .map(|o| {
            let mut o = o.clone();
            if o.complete > t {
                o.complete = u64::MAX;
                o.info = true;
            }
            o
        })
        .filter(|o| !(o.info && matches!(o.f, RegF::Read(_))))
        .collect()
}

/// Finds the shortest failing prefix by bisection over completion times (linearizability is
/// prefix-closed).
fn minimise(ops: &[RegOp], budget: usize) -> (u64, Vec<RegOp>) {
    let mut times: Vec<u64> = ops.iter().filter(|o| !o.info).map(|o| o.complete).collect();
    times.sort_unstable();
    times.dedup();
    let (mut lo, mut hi) = (0usize, times.len().saturating_sub(1));
    // invariant: the cut at times[hi] fails
    while lo < hi {
        let mid = (lo + hi) / 2;
        if search(&prune(cut(ops, times[mid])), budget) == Search::NotLinearizable {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let t = times.get(hi).copied().unwrap_or(u64::MAX);
    (t, cut(ops, t))
}

/// Checks every register key (keys are the pairs' keys) for linearizability.
pub fn check(pairs: &[Pair], budget: usize) -> RegisterReport {
    let mut by_key: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in pairs {
        if matches!(p.f, F::Read | F::Write | F::Cas) {
            if let Some(k) = p.key.as_deref().filter(|k| k.starts_with("r/")) {
                by_key.entry(k).or_default().push(p);
            }
        }
    }
    let mut rep = RegisterReport {
        keys: by_key.len(),
        valid: true,
        ..Default::default()
    };
    for (key, ps) in by_key {
        let ops = reg_ops(&ps);
        rep.ops_checked += ops.len();
        match search(&prune(ops.clone()), budget) {
            Search::Linearizable => {}
            Search::Unknown => rep.unknown_keys.push(key.to_string()),
            Search::NotLinearizable => {
                rep.valid = false;
                let (t, prefix) = minimise(&ops, budget);
                let culprit = prefix
                    .iter()
                    .filter(|o| o.complete == t)
                    .map(RegOp::describe)
                    .collect::<Vec<_>>()
                    .join("; ");
                let culprit_indices = prefix
                    .iter()
                    .filter(|o| o.complete == t)
                    .map(|o| o.index)
                    .collect();
                rep.anomalies.push(KeyAnomaly {
                    key: key.to_string(),
                    culprit_indices,
                    ops: ops.len(),
                    prefix_len: prefix.len(),
                    culprit,
                    prefix: prefix.iter().map(RegOp::describe).collect(),
                    indices: prefix.iter().map(|o| o.index).collect(),
                });
            }
        }
    }
    rep
}
