//! Client processes: each is bound to one node and runs one operation at a time, recording
//! its invocation and completion.
//!
//! Classification of outcomes: a timeout, a lost connection or a server "may or may not have
//! taken effect" is `info` (indeterminate); only answers that prove the operation did not
//! apply are `fail` (InvalidArgument, NotFound, a refused connection, a cas whose guard did not
//! hold). A read that finds no record is an `ok` read of `null`.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micro::proto::store as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::checker::set::SET_KEY;
use crate::history::{Op, Recorder, Type, F};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Per-key read/write/cas on a few rotating keys with unique written values.
    Register,
    /// Unique adds (keys `set/<n>`), occasional reads of the whole set.
    Set,
    /// Publishes of unique payloads to a few topics, a live consumer per topic, a final replay
    /// of every topic on every node.
    Streams,
    /// Publishes to one topic consumed by four consumer groups (manual ack, auto ack, mixed,
    /// manual with a retry limit) whose consumers join, leave, get killed and reconnect to
    /// other nodes; a final drain of every group.
    Groups,
    /// Critical sections under one lock: acquire, read the shared register, write it with the
    /// lock's fence, release; a final read of the register's whole change feed.
    Lock,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(Workload::Register),
            "set" => Ok(Workload::Set),
            "streams" => Ok(Workload::Streams),
            "groups" => Ok(Workload::Groups),
            "lock" => Ok(Workload::Lock),
            o => Err(format!(
                "unknown workload {o:?} (register, set, streams, groups, lock)"
            )),
        }
    }
}

/// The lock of the lock workload, and the register its holders read-modify-write.
pub const LOCK_NAME: &str = "jepsen-lock";
pub const LOCK_KEY: &str = "lock/register";

/// A pause-the-holder fault offered to the next lock holder (see `nemesis::HolderPauser`).
pub struct PauseRequest {
    /// The holder that takes the pause says who it is: (process, token).
    pub taken: tokio::sync::oneshot::Sender<(i64, u64)>,
    /// The pause lasts until this resolves (or its sender is dropped).
    pub resume: tokio::sync::oneshot::Receiver<()>,
}

/// State shared by the client processes.
pub struct Ctx {
    pub rec: Arc<Recorder>,
    pub op_timeout: Duration,
    pub workloads: Vec<Workload>,
    /// Register keys in use at a time.
    pub keys: u64,
    /// Operations per register key before the processes move on to fresh keys (keeps each
    /// key's history short enough for the linearizability search).
    pub ops_per_key: u64,
    /// Percent of register operations that are reads / writes (the rest are cas).
    pub read_pct: u32,
    pub write_pct: u32,
    /// Percent of set operations that read the whole set.
    pub set_read_pct: u32,
    /// Topics of the streams workload: `ev-0`, `ev-1`, ...
    pub topics: u64,
    /// Lock workload: the TTL of a holder's lease, and how long a lock call may wait in the
    /// queue (the server gives up the place after that).
    pub lock_ttl: Duration,
    pub lock_wait: Duration,
    /// A pause-the-holder fault waiting for the next holder to take it.
    pause: Mutex<Option<PauseRequest>>,
    pub stop: AtomicBool,
    halt: tokio::sync::watch::Sender<bool>,
    next_value: AtomicI64,
    /// Session ids of the groups workload.
    next_session: AtomicU64,
    key_ops: AtomicU64,
    used_keys: Mutex<BTreeSet<String>>,
}

impl Ctx {
    pub fn new(rec: Arc<Recorder>, op_timeout: Duration, workloads: Vec<Workload>) -> Ctx {
        Ctx {
            rec,
            op_timeout,
            workloads,
            keys: 5,
            ops_per_key: 300,
            read_pct: 50,
            write_pct: 30,
            set_read_pct: 4,
            topics: 3,
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_secs(5),
            pause: Mutex::new(None),
            stop: AtomicBool::new(false),
            halt: tokio::sync::watch::channel(false).0,
            next_value: AtomicI64::new(1),
            next_session: AtomicU64::new(1),
            key_ops: AtomicU64::new(0),
            used_keys: Mutex::new(BTreeSet::new()),
        }
    }

    /// Stops the clients and the live consumers.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.halt.send_replace(true);
    }

    /// Resolves once [`Ctx::halt`] was called.
    pub async fn halted(&self) {
        let mut rx = self.halt.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Offers a pause to the next lock holder (replacing an offer nobody took).
    pub fn offer_pause(&self, req: PauseRequest) {
        *self.pause.lock().unwrap_or_else(|e| e.into_inner()) = Some(req);
    }

    /// Withdraws an offer nobody took.
    pub fn withdraw_pause(&self) {
        self.pause.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn take_pause(&self) -> Option<PauseRequest> {
        self.pause.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The topics of the streams workload.
    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics.max(1)).map(topic).collect()
    }

    fn value(&self) -> i64 {
        self.next_value.fetch_add(1, Ordering::SeqCst)
    }

    fn pick_key(&self, rng: &mut StdRng) -> String {
        let n = self.key_ops.fetch_add(1, Ordering::SeqCst);
        let group = n / (self.ops_per_key * self.keys).max(1);
        let k = format!("r/{}", group * self.keys + rng.random_range(0..self.keys));
        self.used_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k.clone());
        k
    }

    pub fn used_keys(&self) -> Vec<String> {
        self.used_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// The name of stream topic `n`.
pub fn topic(n: u64) -> String {
    format!("ev-{n}")
}

pub enum Outcome<T> {
    Ok(T),
    Fail(String),
    Info(String),
}

/// True when the error proves the request was never processed.
fn surely_failed(e: &micro::Error) -> bool {
    match e {
        micro::Error::Connect { .. } => true,
        // Not a call's answer: nothing proves what happened to it.
        micro::Error::Service(_) => false,
        micro::Error::Status(s) => {
            matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ) || refused(s)
        }
    }
}

/// A transport error whose cause is a refused TCP connection: nothing was sent.
fn refused(s: &tonic::Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cur = e.source();
    }
    false
}

fn describe(e: &micro::Error) -> String {
    let code = e.code().map(|c| format!("{c:?}: ")).unwrap_or_default();
    let mut msg = format!("{code}{e}");
    msg.truncate(300);
    msg
}

/// Runs `fut` under the operation timeout and classifies the result.
pub async fn call<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, micro::Error>>,
) -> Outcome<T> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Outcome::Info(format!("timed out after {timeout:?}")),
        Ok(Ok(v)) => Outcome::Ok(v),
        Ok(Err(e)) if surely_failed(&e) => Outcome::Fail(describe(&e)),
        Ok(Err(e)) => Outcome::Info(describe(&e)),
    }
}

fn parse_value(v: &[u8]) -> Value {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or_else(|| json!(String::from_utf8_lossy(v)), |n| json!(n))
}

/// A lock-workload value: the JSON the holders write (a string if it is not JSON).
fn parse_json(v: &[u8]) -> Value {
    serde_json::from_slice(v).unwrap_or_else(|_| json!(String::from_utf8_lossy(v)))
}

/// The current token a refused fence names: `fence token A is older than lock "L"'s current
/// token B: ...`.
fn refused_by(msg: &str) -> Option<u64> {
    let rest = &msg[msg.find("current token ")? + "current token ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One client process.
pub struct Process {
    pub id: i64,
    pub node: u64,
    pub addr: String,
    client: Option<micro::Client>,
    rng: StdRng,
    ctx: Arc<Ctx>,
}

impl Process {
    pub fn new(id: i64, node: u64, addr: String, seed: u64, ctx: Arc<Ctx>) -> Process {
        Process {
            id,
            node,
            addr,
            client: None,
            rng: StdRng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ctx,
        }
    }

    fn invoke(&self, f: F, key: &str, value: Value, phase: Option<&str>) {
        let mut op = Op::new(self.id, Type::Invoke, f, Some(key), value, 0);
        op.node = Some(self.node);
        op.phase = phase.map(str::to_string);
        self.ctx.rec.record(op);
    }

    fn complete<T>(
        &self,
        f: F,
        key: &str,
        out: &Outcome<T>,
        value: Value,
        phase: Option<&str>,
    ) -> Type {
        let (kind, err) = match out {
            Outcome::Ok(_) => (Type::Ok, None),
            Outcome::Fail(e) => (Type::Fail, Some(e.clone())),
            Outcome::Info(e) => (Type::Info, Some(e.clone())),
        };
        let mut op = Op::new(self.id, kind, f, Some(key), value, 0);
        op.node = Some(self.node);
        op.error = err;
        op.phase = phase.map(str::to_string);
        self.ctx.rec.record(op);
        kind
    }

    /// The client, connecting first if needed (a failed connect is part of the operation).
    async fn connect(&mut self) -> Result<micro::Client, micro::Error> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = crate::connect(&self.addr).await?;
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn run_op<T, Fut>(&mut self, f: impl FnOnce(micro::Client) -> Fut) -> Outcome<T>
    where
        Fut: Future<Output = Result<T, micro::Error>>,
    {
        self.run_op_within(self.ctx.op_timeout, f).await
    }

    async fn run_op_within<T, Fut>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(micro::Client) -> Fut,
    ) -> Outcome<T>
    where
        Fut: Future<Output = Result<T, micro::Error>>,
    {
        let start = tokio::time::Instant::now();
        let client = match tokio::time::timeout(timeout, self.connect()).await {
            Err(_) => return Outcome::Fail("connect timed out (nothing sent)".into()),
            Ok(Err(e)) => return Outcome::Fail(describe(&e)),
            Ok(Ok(c)) => c,
        };
        let left = timeout.saturating_sub(start.elapsed());
        call(left.max(Duration::from_millis(50)), f(client)).await
    }

    /// Reads a register; `Ok((value, mod_revision))`, `(null, 0)` when there is no record.
    pub async fn read(&mut self, key: &str, final_read: bool) -> Outcome<(Value, u64)> {
        let phase = final_read.then_some("final");
        self.invoke(F::Read, key, Value::Null, phase);
        let k = key.to_string();
        let out = self
            .run_op(|c| async move {
                match c.store().read(&k).await {
                    Ok(r) => Ok((parse_value(&r.value), r.mod_revision)),
                    Err(e) if e.is_not_found() => Ok((Value::Null, 0)),
                    Err(e) => Err(e),
                }
            })
            .await;
        let value = match &out {
            Outcome::Ok((v, _)) => v.clone(),
            _ => Value::Null,
        };
        self.complete(F::Read, key, &out, value, phase);
        out
    }

    async fn write(&mut self, key: &str) {
        let v = self.ctx.value();
        self.invoke(F::Write, key, json!(v), None);
        let k = key.to_string();
        let out = self
            .run_op(|c| async move { c.store().write(&k, v.to_string().into_bytes()).await })
            .await;
        self.complete(F::Write, key, &out, json!(v), None);
    }

    /// Reads the key, then swaps the value read for a new one, guarded by its mod revision
    /// (values are unique, so the revision identifies the value).
    async fn cas(&mut self, key: &str) {
        let Outcome::Ok((from, rev)) = self.read(key, false).await else {
            return;
        };
        if !(from.is_null() || from.is_i64()) {
            return;
        }
        let to = self.ctx.value();
        let value = json!([from, to]);
        self.invoke(F::Cas, key, value.clone(), None);
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: key.to_string(),
                database: String::new(),
                table: String::new(),
                mod_revision: rev,
            }],
            success: vec![pb::TxnOp {
                op: Some(pb::txn_op::Op::Write(pb::WriteRequest {
                    record: Some(pb::Record {
                        key: key.to_string(),
                        value: to.to_string().into_bytes(),
                        ..Default::default()
                    }),
                    options: None,
                    fence: None,
                })),
            }],
            failure: vec![],
            fence: None,
        };
        let out = self
            .run_op(|c| async move { c.store().txn(req).await })
            .await;
        let out = match out {
            Outcome::Ok(r) if !r.succeeded => Outcome::Fail("guard did not hold".into()),
            o => o,
        };
        self.complete(F::Cas, key, &out, value, None);
    }

    async fn add(&mut self) {
        let v = self.ctx.value();
        self.invoke(F::Add, SET_KEY, json!(v), None);
        let out = self
            .run_op(|c| async move {
                c.store()
                    .write(&format!("set/{v}"), v.to_string().into_bytes())
                    .await
            })
            .await;
        self.complete(F::Add, SET_KEY, &out, json!(v), None);
    }

    /// Publishes a unique payload to `topic`, recording the sequence it is acknowledged with.
    async fn publish(&mut self, topic: &str) {
        let v = self.ctx.value();
        self.invoke(F::Publish, topic, json!({ "payload": v }), None);
        let t = topic.to_string();
        let out = self
            .run_op(|c| async move {
                c.events()
                    .publish(&t, v.to_string().into_bytes(), Default::default())
                    .await
            })
            .await;
        let value = match &out {
            Outcome::Ok(seq) => json!({"payload": v, "seq": seq}),
            _ => json!({ "payload": v }),
        };
        self.complete(F::Publish, topic, &out, value, None);
    }

    /// Replays `topic` from sequence 1 to its current end (a linearizable start: the node
    /// passes a read barrier first), recorded as a final `replay` of `[seq, payload]` pairs.
    pub async fn replay(&mut self, topic: &str) -> bool {
        let phase = Some("final");
        self.invoke(F::Replay, topic, Value::Null, phase);
        let t = topic.to_string();
        // A whole topic may take a while to stream: allow more than one operation's time.
        let timeout = self.ctx.op_timeout * 10;
        let client = match tokio::time::timeout(timeout, self.connect()).await {
            Ok(Ok(c)) => Outcome::Ok(c),
            Ok(Err(e)) => Outcome::Fail(describe(&e)),
            Err(_) => Outcome::Fail("connect timed out (nothing sent)".into()),
        };
        let out = match client {
            Outcome::Ok(c) => {
                call(timeout, async move {
                    let req = micro::events::ConsumeRequest {
                        topic: t,
                        from_sequence: 1,
                        stop_at_end: true,
                        ..Default::default()
                    };
                    let mut consumer = c.events().consume(req).await?;
                    let mut got = Vec::new();
                    while let Some(e) = consumer.next().await? {
                        got.push(json!([e.sequence, parse_value(&e.payload)]));
                    }
                    Ok(got)
                })
                .await
            }
            Outcome::Fail(e) => Outcome::Fail(e),
            Outcome::Info(e) => Outcome::Info(e),
        };
        let value = match &out {
            Outcome::Ok(v) => Value::Array(v.clone()),
            _ => Value::Null,
        };
        self.complete(F::Replay, topic, &out, value, phase) == Type::Ok
    }

    /// Reads the whole set (a linearizable prefix read).
    pub async fn read_set(&mut self, final_read: bool) -> bool {
        let phase = final_read.then_some("final");
        self.invoke(F::Read, SET_KEY, Value::Null, phase);
        let out = self
            .run_op(|c| async move {
                let q = micro::store::Query {
                    prefix: true,
                    ..Default::default()
                };
                let recs = c.store().query("set/", q).await?;
                let mut elems: Vec<Value> = recs
                    .iter()
                    .map(|r| {
                        r.key
                            .strip_prefix("set/")
                            .and_then(|n| n.parse::<i64>().ok())
                            .map_or_else(|| json!(r.key), |n| json!(n))
                    })
                    .collect();
                elems.sort_by_key(|v| v.as_i64());
                Ok(elems)
            })
            .await;
        let value = match &out {
            Outcome::Ok(v) => Value::Array(v.clone()),
            _ => Value::Null,
        };
        let kind = self.complete(F::Read, SET_KEY, &out, value, phase);
        kind == Type::Ok
    }

    fn record_lock(&self, kind: Type, f: F, value: Value, error: Option<String>, fin: bool) {
        let mut op = Op::new(self.id, kind, f, Some(LOCK_KEY), value, 0);
        op.node = Some(self.node);
        op.error = error;
        op.phase = fin.then(|| "final".to_string());
        self.ctx.rec.record(op);
    }

    fn record_outcome<T>(&self, f: F, out: &Outcome<T>, value: Value, fin: bool) -> Type {
        let (kind, err) = match out {
            Outcome::Ok(_) => (Type::Ok, None),
            Outcome::Fail(e) => (Type::Fail, Some(e.clone())),
            Outcome::Info(e) => (Type::Info, Some(e.clone())),
        };
        self.record_lock(kind, f, value, err, fin);
        kind
    }

    /// Reads the shared register: `(value, mod_revision)`, `(null, 0)` when there is none.
    async fn read_lock_register(&mut self, fin: bool) -> Outcome<(Value, u64)> {
        self.record_lock(Type::Invoke, F::Read, Value::Null, None, fin);
        let out = self
            .run_op(|c| async move {
                match c.store().read(LOCK_KEY).await {
                    Ok(r) => Ok((parse_json(&r.value), r.mod_revision)),
                    Err(e) if e.is_not_found() => Ok((Value::Null, 0)),
                    Err(e) => Err(e),
                }
            })
            .await;
        let value = match &out {
            Outcome::Ok((v, rev)) => json!({"value": v, "revision": rev}),
            _ => Value::Null,
        };
        self.record_outcome(F::Read, &out, value, fin);
        out
    }

    /// One critical section: take the lock, read the register, write a value naming the one
    /// read (so the committed sequence can be rebuilt and checked) with the lock's fence,
    /// release. A pause-the-holder fault, when one is offered, stops the lease's renewal
    /// between the read and the write, as a SIGSTOPped client would, until the nemesis ends
    /// it: the write then carries a token that is stale if anyone took the lock meanwhile.
    async fn critical_section(&mut self) {
        let (ttl, wait) = (self.ctx.lock_ttl, self.ctx.lock_wait);
        self.record_lock(Type::Invoke, F::Acquire, Value::Null, None, false);
        let out = self
            .run_op_within(wait + self.ctx.op_timeout, |c| async move {
                c.sync().lock_within(LOCK_NAME, ttl, Some(wait)).await
            })
            .await;
        let out = match out {
            // The server gave up our place in the queue: we never held it.
            Outcome::Info(e) if e.contains("gave up the place in the queue") => Outcome::Fail(e),
            o => o,
        };
        let guard = match out {
            Outcome::Ok(g) => {
                let v = json!({"token": g.token(), "lease": g.lease()});
                self.record_lock(Type::Ok, F::Acquire, v, None, false);
                g
            }
            o => {
                self.record_outcome(F::Acquire, &o, Value::Null, false);
                return;
            }
        };
        let token = guard.token();
        if let Outcome::Ok((read, _)) = self.read_lock_register(false).await {
            let mut paused = false;
            if let Some(req) = self.ctx.take_pause() {
                if req.taken.send((self.id, token)).is_ok() {
                    paused = true;
                    guard.stop_keep_alive();
                    tokio::select! {
                        _ = req.resume => {}
                        _ = self.ctx.halted() => {}
                    }
                }
            }
            let id = self.ctx.value();
            let mut value = json!({
                "id": id,
                "token": token,
                "prev": read.get("id").cloned().unwrap_or(Value::Null),
                "process": self.id,
            });
            if paused {
                value["paused"] = json!(true);
            }
            self.record_lock(Type::Invoke, F::FencedWrite, value.clone(), None, false);
            let body = value.to_string().into_bytes();
            let fence = guard.fence();
            let out = self
                .run_op(|c| async move {
                    let put = micro::store::Put {
                        fence: Some(fence),
                        ..Default::default()
                    };
                    c.store().put(LOCK_KEY, body, put).await
                })
                .await;
            // A stale fence is refused by apply: surely not written.
            let out = match out {
                Outcome::Info(e) if e.starts_with("FailedPrecondition") => {
                    if let Some(current) = refused_by(&e) {
                        value["refused_by"] = json!(current);
                    }
                    Outcome::Fail(e)
                }
                o => o,
            };
            if let Outcome::Ok(rev) = &out {
                value["revision"] = json!(rev);
            }
            self.record_outcome(F::FencedWrite, &out, value, false);
        }
        self.record_lock(
            Type::Invoke,
            F::Release,
            json!({ "token": token }),
            None,
            false,
        );
        let out = self.run_op(|_| guard.unlock()).await;
        self.record_outcome(F::Release, &out, json!({ "token": token }), false);
    }

    /// After healing: the register's final value, then its whole change feed from revision 1
    /// up to that value's revision, recorded as a final `feed` of `[revision, value]` pairs
    /// (`null` for a delete). False when either failed.
    pub async fn lock_feed(&mut self) -> bool {
        let Outcome::Ok((_, last)) = self.read_lock_register(true).await else {
            return false;
        };
        self.record_lock(Type::Invoke, F::Feed, json!({ "to": last }), None, true);
        // The whole feed may take a while to stream: allow more than one operation's time.
        let timeout = self.ctx.op_timeout * 10;
        let out = self
            .run_op_within(timeout, |c| async move {
                let mut got = Vec::new();
                if last == 0 {
                    return Ok(got);
                }
                let opts = micro::store::WatchOptions {
                    from_revision: 1,
                    ..Default::default()
                };
                let mut w = c.store().watch(LOCK_KEY, opts).await?;
                while let Some(resp) = w.next().await? {
                    for e in &resp.events {
                        let rec = e.record.clone().unwrap_or_default();
                        let v = if e.r#type == "delete" {
                            Value::Null
                        } else {
                            parse_json(&rec.value)
                        };
                        got.push(json!([resp.revision, v]));
                    }
                    if resp.revision >= last {
                        break;
                    }
                }
                Ok(got)
            })
            .await;
        let value = match &out {
            Outcome::Ok(v) => Value::Array(v.clone()),
            _ => Value::Null,
        };
        self.record_outcome(F::Feed, &out, value, true) == Type::Ok
    }

    /// One randomly chosen operation.
    pub async fn step(&mut self) {
        let w = self.ctx.workloads[self.rng.random_range(0..self.ctx.workloads.len())];
        match w {
            Workload::Register => {
                let key = self.ctx.pick_key(&mut self.rng);
                let r = self.rng.random_range(0..100);
                if r < self.ctx.read_pct {
                    self.read(&key, false).await;
                } else if r < self.ctx.read_pct + self.ctx.write_pct {
                    self.write(&key).await;
                } else {
                    self.cas(&key).await;
                }
            }
            Workload::Set => {
                if self.rng.random_range(0..100) < self.ctx.set_read_pct {
                    self.read_set(false).await;
                } else {
                    self.add().await;
                }
            }
            Workload::Streams => {
                let t = topic(self.rng.random_range(0..self.ctx.topics.max(1)));
                self.publish(&t).await;
            }
            Workload::Groups => self.publish(GROUP_TOPIC).await,
            Workload::Lock => self.critical_section().await,
        }
    }

    /// Runs operations at one per `interval` (with jitter) until the context stops.
    pub async fn run(mut self, interval: Duration) -> Process {
        let mut next =
            tokio::time::Instant::now() + interval.mul_f64(self.rng.random_range(0.0..1.0));
        while !self.ctx.stop.load(Ordering::SeqCst) {
            tokio::time::sleep_until(next).await;
            if self.ctx.stop.load(Ordering::SeqCst) {
                break;
            }
            self.step().await;
            let jitter = interval.mul_f64(self.rng.random_range(0.5..1.5));
            next = (next + jitter).max(tokio::time::Instant::now());
        }
        self
    }
}

/// A live consumer of one topic: follows it from sequence 1 until the run stops, recording
/// every event it receives as a `consume` ok (`{"seq", "payload"}`). When its stream breaks
/// (fail, with the error) it resumes from the next sequence on the next node.
pub struct LiveConsumer {
    pub id: i64,
    pub topic: String,
    /// (node id, gRPC address) of every node; it starts on `nodes[start]`.
    pub nodes: Vec<(u64, String)>,
    pub start: usize,
    pub ctx: Arc<Ctx>,
}

impl LiveConsumer {
    fn record(&self, kind: Type, node: u64, value: Value, error: Option<String>) {
        let mut op = Op::new(self.id, kind, F::Consume, Some(&self.topic), value, 0);
        op.node = Some(node);
        op.error = error;
        self.ctx.rec.record(op);
    }

    /// Follows the topic until the run stops; returns how many events it received.
    pub async fn run(self) -> u64 {
        let next = AtomicU64::new(1);
        let mut at = self.start % self.nodes.len().max(1);
        let halted = self.ctx.halted();
        tokio::pin!(halted);
        loop {
            let (node, addr) = self.nodes[at].clone();
            let req = micro::events::ConsumeRequest {
                topic: self.topic.clone(),
                from_sequence: next.load(Ordering::SeqCst),
                ..Default::default()
            };
            let follow = async {
                let c = crate::connect(&addr).await?;
                let mut consumer =
                    tokio::time::timeout(self.ctx.op_timeout, c.events().consume(req))
                        .await
                        .map_err(|_| {
                            micro::Error::Status(tonic::Status::deadline_exceeded(
                                "consume did not start in time",
                            ))
                        })??;
                while let Some(e) = consumer.next().await? {
                    let payload = parse_value(&e.payload);
                    self.record(Type::Invoke, node, Value::Null, None);
                    self.record(
                        Type::Ok,
                        node,
                        json!({"seq": e.sequence, "payload": payload}),
                        None,
                    );
                    next.store(e.sequence + 1, Ordering::SeqCst);
                }
                Ok::<(), micro::Error>(())
            };
            let res = tokio::select! {
                r = follow => r,
                _ = &mut halted => return next.load(Ordering::SeqCst) - 1,
            };
            // The stream ended or broke: say so, then resume on the next node.
            let error = match res {
                Ok(()) => "the stream ended".to_string(),
                Err(e) => describe(&e),
            };
            let from = next.load(Ordering::SeqCst);
            self.record(Type::Invoke, node, json!({ "from": from }), None);
            self.record(Type::Fail, node, json!({ "from": from }), Some(error));
            at = (at + 1) % self.nodes.len();
            let pause = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                _ = pause => {}
                _ = &mut halted => return next.load(Ordering::SeqCst) - 1,
            }
        }
    }
}

/// The topic of the groups workload.
pub const GROUP_TOPIC: &str = "g-0";
/// The groups' ack wait: short, so that redeliveries happen within a run.
pub const GROUP_ACK_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Manual,
    Auto,
    /// Each session picks manual or auto at random.
    Mixed,
}

/// One consumer group of the groups workload.
#[derive(Debug, Clone, Copy)]
pub struct GroupSpec {
    pub name: &'static str,
    pub mode: AckMode,
    /// 0: no limit.
    pub retry_limit: u32,
    /// Percent of deliveries a manual session acks at once (the rest it acks when it leaves,
    /// or never when it is killed).
    pub ack_pct: u32,
}

pub const GROUPS: [GroupSpec; 4] = [
    GroupSpec {
        name: "manual",
        mode: AckMode::Manual,
        retry_limit: 0,
        ack_pct: 90,
    },
    GroupSpec {
        name: "auto",
        mode: AckMode::Auto,
        retry_limit: 0,
        ack_pct: 0,
    },
    GroupSpec {
        name: "mixed",
        mode: AckMode::Mixed,
        retry_limit: 0,
        ack_pct: 90,
    },
    GroupSpec {
        name: "limited",
        mode: AckMode::Manual,
        retry_limit: 3,
        ack_pct: 40,
    },
];

pub fn group_spec(name: &str) -> Option<&'static GroupSpec> {
    GROUPS.iter().find(|g| g.name == name)
}

/// How a session ended.
enum End {
    /// Ran its time; acked what it still held, then closed the stream.
    Leave,
    /// Ran its time; closed the stream without acking what it held (a crashed consumer).
    Kill,
    /// The stream broke (its node died, a partition, ...), or did not open.
    Broken(String),
    /// The server ended the stream (a drain: nothing left).
    Ended,
    /// The run stopped.
    Halt,
}

/// A consumer of one group: runs sessions (streams) one after the other, each on a random
/// node, for a random time; records every join, delivery, ack and leave.
pub struct GroupConsumer {
    pub id: i64,
    pub spec: &'static GroupSpec,
    pub nodes: Vec<(u64, String)>,
    pub ctx: Arc<Ctx>,
    rng: StdRng,
}

impl GroupConsumer {
    pub fn new(
        id: i64,
        spec: &'static GroupSpec,
        nodes: Vec<(u64, String)>,
        seed: u64,
        ctx: Arc<Ctx>,
    ) -> GroupConsumer {
        GroupConsumer {
            id,
            spec,
            nodes,
            ctx,
            rng: StdRng::seed_from_u64(seed ^ (id as u64 + 7).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
        }
    }

    fn record(&self, kind: Type, f: F, node: u64, value: Value, error: Option<String>, fin: bool) {
        let mut op = Op::new(self.id, kind, f, Some(GROUP_TOPIC), value, 0);
        op.node = Some(node);
        op.error = error;
        op.phase = fin.then(|| "final".to_string());
        self.ctx.rec.record(op);
    }

    /// Runs sessions until the run stops.
    pub async fn run(mut self) {
        let ctx = self.ctx.clone();
        let halted = ctx.halted();
        tokio::pin!(halted);
        while !self.ctx.stop.load(Ordering::SeqCst) {
            let at = self.rng.random_range(0..self.nodes.len());
            let auto = match self.spec.mode {
                AckMode::Auto => true,
                AckMode::Manual => false,
                AckMode::Mixed => self.rng.random_bool(0.5),
            };
            let life = Duration::from_millis(self.rng.random_range(300..4000));
            let leave = self.rng.random_bool(0.5);
            let session = self.session(at, auto, Some((life, leave)), false);
            tokio::select! {
                _ = session => {}
                _ = &mut halted => break,
            }
            let pause = Duration::from_millis(self.rng.random_range(20..300));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut halted => break,
            }
        }
    }

    /// One session on `nodes[at]`: with `life`, for that long, then leaving (acking what it
    /// holds) or being killed; without, until the server ends the stream (`stop_at_end`: the
    /// final drain, which acks everything). Returns how many events it received and whether
    /// the stream ended normally.
    pub async fn session(
        &mut self,
        at: usize,
        auto: bool,
        life: Option<(Duration, bool)>,
        drain: bool,
    ) -> (u64, bool) {
        let (node, addr) = self.nodes[at].clone();
        let group = self.spec.name;
        let sid = self.ctx.next_session.fetch_add(1, Ordering::SeqCst);
        let who = json!({"group": group, "session": sid, "auto": auto});
        self.record(Type::Invoke, F::Join, node, who.clone(), None, drain);
        let req = micro::events::ConsumeRequest {
            topic: GROUP_TOPIC.to_string(),
            group: group.to_string(),
            from_start: true,
            auto_ack: auto,
            ack_wait: GROUP_ACK_WAIT.as_nanos() as i64,
            retry_limit: i64::from(self.spec.retry_limit),
            stop_at_end: drain,
            ..Default::default()
        };
        let opened = call(self.ctx.op_timeout, async {
            let c = crate::connect(&addr).await?;
            let consumer = c.events().consume(req).await?;
            Ok((c, consumer))
        })
        .await;
        let (client, mut consumer) = match opened {
            Outcome::Ok(v) => {
                self.record(Type::Ok, F::Join, node, who.clone(), None, drain);
                v
            }
            Outcome::Fail(e) => {
                self.record(Type::Fail, F::Join, node, who, Some(e), drain);
                return (0, false);
            }
            Outcome::Info(e) => {
                self.record(Type::Info, F::Join, node, who, Some(e), drain);
                return (0, false);
            }
        };
        let deadline = life.map(|(d, _)| tokio::time::Instant::now() + d);
        let mut held: Vec<(u64, String)> = Vec::new();
        let mut got = 0u64;
        let end = loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, consumer.next()).await.ok(),
                    None => Some(consumer.next().await),
                }
            };
            let ev = match next.await {
                None => {
                    break if life.is_some_and(|(_, leave)| leave) {
                        End::Leave
                    } else {
                        End::Kill
                    }
                }
                Some(Err(e)) => break End::Broken(describe(&e)),
                Some(Ok(None)) => break End::Ended,
                Some(Ok(Some(e))) => e,
            };
            if self.ctx.stop.load(Ordering::SeqCst) && !drain {
                break End::Halt;
            }
            got += 1;
            let payload = parse_value(&ev.payload);
            let v = json!({"group": group, "session": sid, "seq": ev.sequence, "payload": payload, "auto": auto});
            self.record(Type::Invoke, F::Deliver, node, Value::Null, None, drain);
            self.record(Type::Ok, F::Deliver, node, v, None, drain);
            if auto {
                continue;
            }
            if drain || self.rng.random_range(0..100) < self.spec.ack_pct {
                self.ack(&client, node, sid, ev.sequence, &ev.id, drain)
                    .await;
            } else {
                held.push((ev.sequence, ev.id));
            }
        };
        if matches!(end, End::Leave) {
            for (seq, id) in std::mem::take(&mut held) {
                self.ack(&client, node, sid, seq, &id, drain).await;
            }
        }
        drop(consumer);
        let (how, err) = match &end {
            End::Leave => ("leave", None),
            End::Kill => ("kill", None),
            End::Broken(e) => ("broken", Some(e.clone())),
            End::Ended => ("ended", None),
            End::Halt => ("halt", None),
        };
        let v = json!({"group": group, "session": sid, "how": how});
        self.record(Type::Invoke, F::Leave, node, v.clone(), None, drain);
        self.record(Type::Ok, F::Leave, node, v, err, drain);
        (got, matches!(end, End::Ended))
    }

    /// Acks one event; in the drain, retries until an ack is surely applied.
    async fn ack(&self, c: &micro::Client, node: u64, sid: u64, seq: u64, id: &str, drain: bool) {
        let group = self.spec.name;
        for _ in 0..if drain { 10 } else { 1 } {
            let v = json!({"group": group, "session": sid, "seq": seq});
            self.record(Type::Invoke, F::Ack, node, v.clone(), None, drain);
            let out = call(self.ctx.op_timeout, c.events().ack(group, id, true)).await;
            let kind = match &out {
                Outcome::Ok(()) => Type::Ok,
                Outcome::Fail(_) => Type::Fail,
                Outcome::Info(_) => Type::Info,
            };
            let err = match out {
                Outcome::Fail(e) | Outcome::Info(e) => Some(e),
                Outcome::Ok(()) => None,
            };
            self.record(kind, F::Ack, node, v, err, drain);
            if kind == Type::Ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
