//! The history: every invocation and completion of a client operation, and every fault, in
//! the order they happened, as JSON lines.

use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The process id of the nemesis in the history.
pub const NEMESIS: i64 = -1;
/// The process id of the harness's own measurements ([`F::Progress`]).
pub const HARNESS: i64 = -2;
/// The process id of the pause-the-holder nemesis, which runs beside the node nemesis.
pub const HOLDER_NEMESIS: i64 = -3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    /// The operation started.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It surely did not take effect.
    Fail,
    /// Indeterminate: it may or may not have taken effect (timeout, lost answer).
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Read,
    Write,
    Cas,
    Add,
    /// Publish one event to a topic (streams workload).
    Publish,
    /// One event delivered to a live consumer (ok), or its stream breaking (fail).
    Consume,
    /// The final replay of a whole topic from one node.
    Replay,
    Nemesis,
    /// Groups workload: a group consumer's stream opening (a session).
    Join,
    /// Groups workload: one event delivered to a group consumer's session.
    Deliver,
    /// Groups workload: an `events.Stream/Ack` of one delivered event.
    Ack,
    /// Groups workload: a session ending (`how`: leave, kill, broken, ended, halt).
    Leave,
    /// The cluster's applied index, or a group's final drain being done (process -2).
    Progress,
    /// Lock workload: taking the lock (ok: `{"token", "lease"}`).
    Acquire,
    /// Lock workload: the fenced write of the shared register made under the lock.
    #[serde(rename = "fenced-write")]
    FencedWrite,
    /// Lock workload: releasing the lock.
    Release,
    /// Lock workload: the register's whole change feed, read after healing.
    Feed,
}

impl F {
    pub fn name(self) -> &'static str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Add => "add",
            F::Publish => "publish",
            F::Consume => "consume",
            F::Replay => "replay",
            F::Nemesis => "nemesis",
            F::Join => "join",
            F::Deliver => "deliver",
            F::Ack => "ack",
            F::Leave => "leave",
            F::Progress => "progress",
            F::Acquire => "acquire",
            F::FencedWrite => "fenced-write",
            F::Release => "release",
            F::Feed => "feed",
        }
    }
}

/// One history event. Register values are integers (`null` = no record); a `cas` value is
/// `[expected, new]`; a set read's value is the array of elements seen. Streams: a publish's
/// value is `{"payload": p}`, plus `"seq"` when acknowledged; a live delivery's is
/// `{"seq": s, "payload": p}`; a replay's is the array of `[seq, payload]` it returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: Type,
    pub f: F,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    /// The node the process talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `"final"` for the reads of the final phase, after every fault was healed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl Op {
    pub fn new(process: i64, kind: Type, f: F, key: Option<&str>, value: Value, time: u64) -> Op {
        Op {
            process,
            kind,
            f,
            key: key.map(str::to_string),
            value,
            time,
            node: None,
            error: None,
            phase: None,
        }
    }

    pub fn is_final(&self) -> bool {
        self.phase.as_deref() == Some("final")
    }
}

/// A completed operation: its invocation paired with its completion (an invocation without
/// one is indeterminate, `info`, completing at `u64::MAX`).
#[derive(Debug, Clone)]
pub struct Pair {
    /// Index of the invocation in the history.
    pub index: usize,
    pub process: i64,
    pub kind: Type,
    pub f: F,
    pub key: Option<String>,
    /// The completion's value when there is one, else the invocation's.
    pub value: Value,
    pub invoke: u64,
    pub complete: u64,
    pub node: Option<u64>,
    pub final_read: bool,
}

/// Pairs every invocation with the next completion of the same process.
pub fn pairs(history: &[Op]) -> Vec<Pair> {
    let mut open: std::collections::HashMap<i64, usize> = Default::default();
    let mut out: Vec<Pair> = Vec::new();
    for (i, op) in history.iter().enumerate() {
        if op.kind == Type::Invoke {
            if let Some(prev) = open.insert(op.process, out.len()) {
                // A process invoked again without completing: the earlier one stays open.
                out[prev].kind = Type::Info;
            }
            out.push(Pair {
                index: i,
                process: op.process,
                kind: Type::Info,
                f: op.f,
                key: op.key.clone(),
                value: op.value.clone(),
                invoke: op.time,
                complete: u64::MAX,
                node: op.node,
                final_read: op.is_final(),
            });
        } else if let Some(at) = open.remove(&op.process) {
            let p = &mut out[at];
            p.kind = op.kind;
            p.complete = if op.kind == Type::Info {
                u64::MAX
            } else {
                op.time
            };
            if !op.value.is_null() || op.kind == Type::Ok {
                p.value = op.value.clone();
            }
        }
    }
    out
}

/// Appends events to memory and to `history.jsonl` as they happen.
pub struct Recorder {
    start: Instant,
    inner: Mutex<(Vec<Op>, Option<BufWriter<File>>)>,
}

impl Recorder {
    pub fn new(path: Option<&Path>) -> anyhow::Result<Recorder> {
        let file = match path {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Mutex::new((Vec::new(), file)),
        })
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records `op`, stamping its time.
    pub fn record(&self, mut op: Op) -> Op {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        op.time = self.now();
        if let Some(w) = g.1.as_mut() {
            let _ = serde_json::to_writer(&mut *w, &op);
            let _ = w.write_all(b"\n");
        }
        g.0.push(op.clone());
        op
    }

    pub fn flush(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = g.1.as_mut() {
            let _ = w.flush();
        }
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.flush();
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

pub fn load(path: &Path) -> anyhow::Result<Vec<Op>> {
    let f = std::io::BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    for (n, line) in f.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

pub fn write(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}
