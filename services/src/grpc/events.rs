//! `events.Stream` and `events.Store`, Micro v3 compatible, over the replicated events view.
//!
//! A plain consumer reads the view from its start position and follows new entries as this
//! node applies them. A group consumer claims events through the log (so the group's cursor
//! and pending acks are the same on every node and survive restarts), and releases its claims
//! when its stream ends. Acks come through the `Ack` RPC or, as Micro v3 clients send them,
//! on the consume stream itself (see [`StreamService`]).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use micro_cluster::Node;
use micro_proto::events as pb;
use micro_state::views::events::{
    self as view, Ack, Claim, Publish, Release, Retention, Start, StoredEvent,
};
use micro_state::{Command, Outcome};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};

use crate::auth::{names, Caller};
use crate::errors::{invalid, status};
use crate::grpc::pace::Pace;

const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// The shortest ack wait a consumer gets (a shorter one is raised to it): every redelivery
/// is a log entry, and a consumer that never acks must not make the cluster write entries as
/// fast as it can claim.
const MIN_ACK_WAIT: Duration = Duration::from_millis(100);
/// The least time between two claims that only a pending deadline justifies (see
/// `follow_group`).
const RECLAIM_AFTER: Duration = Duration::from_millis(50);
/// How often a waiting consumer looks whether its client went away.
const NOTICE_GONE: Duration = Duration::from_millis(500);
const BATCH: usize = 256;
/// `events.Store/Read` without a limit returns this many events (Micro v3's default).
const DEFAULT_READ_LIMIT: u64 = 250;

pub struct EventsService {
    node: Node,
}

/// Largest request message `events.Stream` decodes.
const MAX_REQUEST: usize = 16 * 1024 * 1024;

impl EventsService {
    pub fn servers(node: Node) -> (StreamService, pb::store_server::StoreServer<EventsService>) {
        (
            StreamService {
                inner: pb::stream_server::StreamServer::new(EventsService { node: node.clone() })
                    .max_decoding_message_size(MAX_REQUEST),
                node: node.clone(),
            },
            pb::store_server::StoreServer::new(EventsService { node }),
        )
    }
}

/// `events.Stream` as served: the generated service, except for `Consume`.
///
/// Micro v3 declares `Consume` server-streaming, but its clients call it as a bidirectional
/// stream: they send the `ConsumeRequest`, keep their side open, and later send an
/// `AckRequest {id, success}` on the same stream for each event they ack or nack (Micro v3's
/// `service/events/client`). A generated server-streaming handler would not even start
/// before the client closed its side (tonic reads the request to its end first), so a v3
/// client would wait forever. The wire does not say whether a method streams requests, so
/// `Consume` is served here as a bidirectional stream with the v3 declaration unchanged: the
/// first message is the `ConsumeRequest`, every later one an `AckRequest` for the consume's
/// group. Clients that send one request and close their side (tonic, the gateway) are served
/// exactly as before.
#[derive(Clone)]
pub struct StreamService {
    inner: pb::stream_server::StreamServer<EventsService>,
    node: Node,
}

impl tonic::server::NamedService for StreamService {
    const NAME: &'static str = pb::stream_server::SERVICE_NAME;
}

impl<B> tower::Service<http::Request<B>> for StreamService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/events.Stream/Consume" {
            return self.inner.call(req);
        }
        let node = self.node.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ConsumeCodec)
                .apply_max_message_size_config(Some(MAX_REQUEST), None);
            Ok(grpc.streaming(ConsumeHandler(node), req).await)
        })
    }
}

struct ConsumeHandler(Node);

impl tonic::server::StreamingService<Bytes> for ConsumeHandler {
    type Response = pb::Event;
    type ResponseStream = EventStream;
    type Future = tonic::codegen::BoxFuture<Response<EventStream>, Status>;

    fn call(&mut self, req: Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let node = self.0.clone();
        Box::pin(async move {
            let caller = Caller::of(&req);
            let mut incoming = req.into_inner();
            let first = incoming.message().await?.ok_or_else(|| {
                Status::invalid_argument("the stream must start with a ConsumeRequest")
            })?;
            let req = pb::ConsumeRequest::decode(first)
                .map_err(|e| Status::invalid_argument(format!("invalid ConsumeRequest: {e}")))?;
            consume(node, &caller, req, Some(incoming)).await
        })
    }
}

/// Encodes events; hands request messages over undecoded (the first is a `ConsumeRequest`,
/// the others `AckRequest`s).
#[derive(Debug, Clone, Copy, Default)]
struct ConsumeCodec;

impl Codec for ConsumeCodec {
    type Encode = pb::Event;
    type Decode = Bytes;
    type Encoder = ConsumeCodec;
    type Decoder = ConsumeCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ConsumeCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ConsumeCodec
    }
}

impl Encoder for ConsumeCodec {
    type Item = pb::Event;
    type Error = Status;

    fn encode(&mut self, item: pb::Event, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding an event: {e}")))
    }
}

impl Decoder for ConsumeCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Acks sent on a consume stream (Micro v3's way), written as `Ack` commands for `group`:
/// what arrived together goes in one command per run of acks or nacks. Acks on a plain
/// consumer's stream, or naming another topic or group, are ignored (a plain consumer has
/// nothing pending). Ends with the client's side of the stream.
async fn read_acks(node: Node, topic: String, group: String, incoming: tonic::Streaming<Bytes>) {
    // Each run below is a log entry: at most Pace::RATE a second per stream (acks that arrive
    // while this waits are written together in the next round).
    let mut pace = Pace::new();
    let mut batches = incoming.ready_chunks(256);
    while let Some(batch) = batches.next().await {
        let mut runs: Vec<(bool, Vec<u64>)> = Vec::new();
        let mut ended = false;
        for item in batch {
            let raw = match item {
                Ok(raw) => raw,
                Err(e) => {
                    tracing::debug!("consume stream of {topic}/{group}: {e}");
                    ended = true;
                    break;
                }
            };
            let ack = match pb::AckRequest::decode(raw) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("consume stream of {topic}: not an AckRequest: {e}");
                    continue;
                }
            };
            match parse_id(&ack.id) {
                Some((t, seq))
                    if t == names::shown(&topic)
                        && !group.is_empty()
                        && (ack.group.is_empty() || ack.group == group) =>
                {
                    match runs.last_mut() {
                        Some((success, seqs)) if *success == ack.success => seqs.push(seq),
                        _ => runs.push((ack.success, vec![seq])),
                    }
                }
                _ => tracing::debug!(
                    "consume stream of {topic}/{group}: ignoring ack {:?}",
                    ack.id
                ),
            }
        }
        for (success, seqs) in runs {
            pace.take().await;
            let cmd = Command::Events(view::Cmd::Ack(Ack {
                topic: topic.clone(),
                group: group.clone(),
                seqs,
                success,
            }));
            if let Err(e) = node.write(cmd).await {
                tracing::debug!("ack on the consume stream of {topic}/{group}: {e}");
            }
        }
        if ended {
            break;
        }
    }
}

/// Once the consumer's response stream is over: lets the ack reader finish what the client
/// already sent (it ends as soon as the client's side does), then stops it.
async fn end_acks(acks: Option<tokio::task::JoinHandle<()>>) {
    if let Some(mut h) = acks {
        if tokio::time::timeout(NOTICE_GONE, &mut h).await.is_err() {
            h.abort();
        }
    }
}

/// A publish request as a command, in the caller's namespace (shared with the store's
/// transactional outbox).
pub fn publish_command(
    caller: &Caller,
    req: pb::PublishRequest,
    field: &str,
) -> Result<Command, Status> {
    if req.timestamp < 0 {
        return Err(invalid(
            &format!("{field}timestamp"),
            "must be unix seconds (or 0 for now)",
        ));
    }
    if req.timestamp > super::store::MAX_SECONDS {
        return Err(invalid(
            &format!("{field}timestamp"),
            format!(
                "is {}: must be at most {} (unix seconds)",
                req.timestamp,
                super::store::MAX_SECONDS
            ),
        ));
    }
    let cmd = Command::Events(view::Cmd::Publish(Publish {
        topic: caller.scoped(&format!("{field}topic"), &req.topic)?,
        metadata: req.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        payload: req.payload,
        timestamp_ms: (req.timestamp as u64).saturating_mul(1000),
    }));
    super::sync::fenced(caller, cmd, req.fence, field)
}

/// The event as its publisher's namespace knows it (`topic` is the stored name).
fn to_event(topic: &str, seq: u64, e: StoredEvent) -> pb::Event {
    let topic = names::shown(topic);
    pb::Event {
        id: format!("{topic}/{seq}"),
        topic: topic.to_string(),
        metadata: e.metadata.into_iter().collect(),
        payload: e.payload,
        timestamp: (e.timestamp_ms / 1000) as i64,
        sequence: seq,
    }
}

/// `topic/seq` → seq.
fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (topic, seq) = id.rsplit_once('/')?;
    Some((topic, seq.parse().ok()?))
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Where a consumer starts, resolved on this node's (barrier-fresh) view.
fn resolve_start(node: &Node, req: &pb::ConsumeRequest) -> Result<(u64, Option<u64>), Status> {
    let db = node.view();
    let meta = view::topic_meta(db, &req.topic).map_err(|e| status(e.into()))?;
    let wanted = if req.from_sequence > 0 {
        req.from_sequence
    } else if req.from_start {
        meta.first_seq
    } else if req.offset > 0 {
        view::seq_at_time(db, &req.topic, (req.offset as u64).saturating_mul(1000))
            .map_err(|e| status(e.into()))?
    } else {
        meta.last_seq + 1
    };
    if wanted < meta.first_seq && meta.first_seq > 1 {
        if req.strict {
            return Err(Status::out_of_range(format!(
                "sequence {wanted} of topic {} was trimmed by retention; the first retained is {}",
                names::shown(&req.topic),
                meta.first_seq
            )));
        }
        return Ok((meta.first_seq, Some(meta.first_seq)));
    }
    Ok((wanted.max(1), None))
}

#[tonic::async_trait]
impl pb::stream_server::Stream for EventsService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let topic = req.topic.clone();
        let (_, out) = self
            .node
            .write(publish_command(&caller, req, "")?)
            .await
            .map_err(status)?;
        match out {
            Outcome::Events(view::Out::Published { seq }) => {
                Ok(Response::new(pb::PublishResponse {
                    sequence: seq,
                    id: format!("{topic}/{seq}"),
                }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    type ConsumeStream = EventStream;

    /// Kept for the generated trait: served through [`StreamService`] (as `servers` does),
    /// `Consume` is routed there and never reaches this.
    async fn consume(
        &self,
        req: Request<pb::ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let caller = Caller::of(&req);
        consume(self.node.clone(), &caller, req.into_inner(), None).await
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let Some((topic, seq)) = parse_id(&req.id) else {
            return Err(invalid("id", "is not an event id (topic/sequence)"));
        };
        if req.group.is_empty() {
            return Err(invalid(
                "group",
                "is required: acks belong to a consumer group",
            ));
        }
        let cmd = Command::Events(view::Cmd::Ack(Ack {
            topic: caller.scoped("id", topic)?,
            group: req.group,
            seqs: vec![seq],
            success: req.success,
        }));
        self.node.write(cmd).await.map_err(status)?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn topics(
        &self,
        req: Request<pb::TopicsRequest>,
    ) -> Result<Response<pb::TopicsResponse>, Status> {
        let caller = Caller::of(&req);
        self.node.read_barrier(true).await.map_err(status)?;
        let topics = view::topics(self.node.view()).map_err(|e| status(e.into()))?;
        let last_seq: BTreeMap<&str, u64> = topics
            .iter()
            .map(|(t, m)| (t.as_str(), m.last_seq))
            .collect();
        let mut groups: BTreeMap<String, Vec<pb::GroupStatus>> = BTreeMap::new();
        for (topic, name, g) in view::groups(self.node.view()).map_err(|e| status(e.into()))? {
            let last = last_seq.get(topic.as_str()).copied().unwrap_or(0);
            groups.entry(topic).or_default().push(pb::GroupStatus {
                name,
                cursor: g.cursor,
                pending: g.pending.len() as u64,
                lag: (last + 1).saturating_sub(g.cursor),
                dead: g.dead,
            });
        }
        Ok(Response::new(pb::TopicsResponse {
            topics: topics
                .iter()
                .filter_map(|(stored, m)| Some((stored, caller.owns(stored)?, m)))
                .map(|(stored, name, m)| pb::Topic {
                    groups: groups.remove(stored.as_str()).unwrap_or_default(),
                    name: name.to_string(),
                    first_sequence: m.first_seq,
                    last_sequence: m.last_seq,
                    max_events: m.max_events,
                    max_age: m.max_age_ms,
                })
                .collect(),
        }))
    }

    async fn retention(
        &self,
        req: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let cmd = Command::Events(view::Cmd::SetRetention(Retention {
            topic: caller.scoped("topic", &req.topic)?,
            max_events: req.max_events,
            max_age_ms: req.max_age,
        }));
        self.node.write(cmd).await.map_err(status)?;
        Ok(Response::new(pb::RetentionResponse {}))
    }
}

/// Starts a consumer; `incoming` is the rest of the client's side of the stream (acks).
async fn consume(
    node: Node,
    caller: &Caller,
    mut req: pb::ConsumeRequest,
    incoming: Option<tonic::Streaming<Bytes>>,
) -> Result<Response<EventStream>, Status> {
    if req.topic.is_empty() {
        return Err(invalid("topic", "must not be empty"));
    }
    req.topic = caller.scoped("topic", &req.topic)?;
    if req.ack_wait < 0 || req.retry_limit < 0 {
        return Err(invalid("ack_wait", "and retry_limit must not be negative"));
    }
    if req.retry_limit > i64::from(u32::MAX) {
        return Err(invalid(
            "retry_limit",
            format!("must be at most {} (0: no limit)", u32::MAX),
        ));
    }
    node.read_barrier(true).await.map_err(status)?;
    let (start, trimmed) = resolve_start(&node, &req)?;
    let (tx, rx) = mpsc::channel(BATCH);
    let acks = incoming.map(|s| {
        tokio::spawn(read_acks(
            node.clone(),
            req.topic.clone(),
            req.group.clone(),
            s,
        ))
    });
    let open = micro_cluster::trace::Open::new("micro_consumers");
    if req.group.is_empty() {
        tokio::spawn(async move {
            follow(node, req, start, tx).await;
            end_acks(acks).await;
            drop(open);
        });
    } else {
        tokio::spawn(async move {
            follow_group(node, req, start, tx, acks).await;
            drop(open);
        });
    }
    let mut resp =
        Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as EventStream);
    if let Some(first) = trimmed {
        // Said in the response headers, so Micro v3 clients that do not know it still work.
        if let Ok(v) = first.to_string().parse() {
            resp.metadata_mut().insert("x-micro-trimmed-to", v);
        }
    }
    Ok(resp)
}

/// Waits until this node applies something that touched the topic, or `timeout` (a waiting
/// consumer re-checks at least every NOTICE_GONE, to notice a client that went away).
async fn applied_change(rx: &mut micro_cluster::TopicWatch, timeout: Duration) {
    rx.changed(timeout).await;
}

/// A plain consumer: every event from `next` on, in order, then live.
async fn follow(
    node: Node,
    req: pb::ConsumeRequest,
    mut next: u64,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
) {
    // Subscribed before the first read: a batch applied after the read wakes the wait below.
    let mut changes = node.topic_changes(&req.topic);
    let end = view::topic_meta(node.view(), &req.topic)
        .map(|m| m.last_seq)
        .unwrap_or(0);
    let mut sent = 0u64;
    loop {
        let batch = match view::read(node.view(), &req.topic, next, BATCH) {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        };
        // A short batch means we are caught up: wait for the next apply that touches the topic.
        // (The wake-up cannot be missed: the subscription predates the read.)
        let caught_up = batch.len() < BATCH;
        for (seq, e) in batch {
            if req.stop_at_end && seq > end {
                return;
            }
            if tx.send(Ok(to_event(&req.topic, seq, e))).await.is_err() {
                return;
            }
            next = seq + 1;
            sent += 1;
            if req.limit > 0 && sent >= req.limit {
                return;
            }
        }
        if req.stop_at_end && next > end {
            return;
        }
        if tx.is_closed() {
            return;
        }
        if caught_up {
            applied_change(&mut changes, NOTICE_GONE).await;
        }
    }
}

/// Whether a claim now could deliver anything. Every claim is a log entry, so a group
/// consumer claims only when one could: the group is new, has events past its cursor, or has
/// a pending event whose deadline the log clock has passed. Judged on this node's view, which
/// is a prefix of the log: what it says is claimable is still claimable when the claim is
/// applied (unless another consumer took it first, and then the view changes).
enum Worth {
    Claim,
    /// Nothing pending: only a new event (or a nack, or a release) can change that.
    WaitForNews,
    /// The earliest pending deadline is `wait` ahead of the log clock.
    DueIn {
        deadline_ms: u64,
        wait: Duration,
    },
}

fn claim_worth(node: &Node, topic: &str, group: &str) -> Result<Worth, Status> {
    let db = node.view();
    let storage = |e: micro_state::StorageError| Status::internal(e.to_string());
    let Some(g) = view::group(db, topic, group).map_err(storage)? else {
        return Ok(Worth::Claim);
    };
    if g.cursor <= view::topic_meta(db, topic).map_err(storage)?.last_seq {
        return Ok(Worth::Claim);
    }
    let Some(deadline_ms) = g.pending.values().map(|p| p.deadline_ms).min() else {
        return Ok(Worth::WaitForNews);
    };
    let clock = micro_state::clock_ms(db).map_err(storage)?;
    Ok(if deadline_ms <= clock {
        Worth::Claim
    } else {
        Worth::DueIn {
            deadline_ms,
            wait: Duration::from_millis(deadline_ms - clock),
        }
    })
}

/// A group consumer: claims events through the log, delivers them, releases on exit.
async fn follow_group(
    node: Node,
    req: pb::ConsumeRequest,
    start: u64,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
    acks: Option<tokio::task::JoinHandle<()>>,
) {
    let consumer = random_id();
    let ack_wait = if req.auto_ack {
        Duration::ZERO
    } else if req.ack_wait > 0 {
        Duration::from_nanos(req.ack_wait as u64).max(MIN_ACK_WAIT)
    } else {
        DEFAULT_ACK_WAIT
    };
    let explicit_start = req.from_sequence > 0 || req.from_start || req.offset > 0;
    let mut changes = node.topic_changes(&req.topic);
    let mut sent = 0u64;
    let end = view::topic_meta(node.view(), &req.topic)
        .map(|m| m.last_seq)
        .unwrap_or(0);
    // When only time can make a claim deliver: the pending deadline waited for, and the
    // instant (on this node's clock) to claim at.
    let mut timer: Option<(u64, Instant)> = None;
    // Every claim is a log entry: at most Pace::RATE a second for this stream, whatever the
    // client does (nacking every event as it arrives, say).
    let mut pace = Pace::new();
    #[cfg(debug_assertions)]
    let planted = planted::Bug::from_env();
    #[cfg(debug_assertions)]
    if planted == Some(planted::Bug::RedeliverAfterAck) {
        planted::replay_delivered(&node, &req, &tx).await;
    }
    loop {
        if tx.is_closed() {
            break;
        }
        match claim_worth(&node, &req.topic, &req.group) {
            Ok(Worth::Claim) => {}
            Ok(Worth::WaitForNews) => {
                timer = None;
                if req.stop_at_end {
                    break;
                }
                applied_change(&mut changes, NOTICE_GONE).await;
                continue;
            }
            Ok(Worth::DueIn { deadline_ms, wait }) => {
                if req.stop_at_end {
                    break;
                }
                // Clocks differ between nodes: when the deadline has passed here it may not
                // have on the leader, and the claim delivers nothing. So the next claim for
                // the same reason waits at least RECLAIM_AFTER (see the empty-claim case).
                let at = match timer {
                    Some((d, at)) if d == deadline_ms => at,
                    _ => {
                        let at = Instant::now() + wait.max(RECLAIM_AFTER);
                        timer = Some((deadline_ms, at));
                        at
                    }
                };
                let now = Instant::now();
                if now < at {
                    applied_change(&mut changes, (at - now).min(NOTICE_GONE)).await;
                    continue;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                break;
            }
        }
        timer = None;
        let max = if req.limit > 0 {
            (req.limit - sent).min(64) as u32
        } else {
            64
        };
        #[allow(unused_mut)]
        let mut retry_limit = req.retry_limit as u32;
        #[cfg(debug_assertions)]
        if planted == Some(planted::Bug::LoseRedelivery) {
            retry_limit = 1;
        }
        pace.take().await;
        if tx.is_closed() {
            // The client left while this waited: an auto-ack claim now would ack events
            // nobody will read.
            break;
        }
        let cmd = Command::Events(view::Cmd::Claim(Claim {
            topic: req.topic.clone(),
            group: req.group.clone(),
            consumer: consumer.clone(),
            max,
            ack_wait_ms: ack_wait.as_millis() as u64,
            retry_limit,
            auto_ack: req.auto_ack,
            start: if explicit_start {
                Start::Sequence(start)
            } else {
                Start::End
            },
        }));
        let seqs = match node.write(cmd).await {
            // The claim was applied on the leader; read the events only once this node has
            // applied it too (and so every event it names).
            Ok((index, out)) => match (out, node.wait_applied(index).await) {
                (Outcome::Events(view::Out::Claimed(c)), Ok(())) => c.seqs,
                (_, Err(e)) => {
                    let _ = tx.send(Err(status(e))).await;
                    break;
                }
                _ => Vec::new(),
            },
            Err(e) => {
                let _ = tx.send(Err(status(e))).await;
                break;
            }
        };
        if seqs.is_empty() {
            // Another consumer was faster, or the deadline had not passed on the leader's
            // clock. The view now includes this claim: `claim_worth` says what to wait for,
            // so an empty claim is never followed by another without something changing.
            if req.stop_at_end {
                break;
            }
            continue;
        }
        for seq in seqs {
            let ev = match view::get(node.view(), &req.topic, seq) {
                Ok(Some(e)) => e,
                // Trimmed by retention after the claim: nothing left to deliver.
                Ok(None) => continue,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    break;
                }
            };
            if tx.send(Ok(to_event(&req.topic, seq, ev))).await.is_err() {
                break;
            }
            #[cfg(debug_assertions)]
            if planted == Some(planted::Bug::RedeliverAfterAck) {
                planted::remember(&req, seq);
            }
            sent += 1;
        }
        if (req.limit > 0 && sent >= req.limit) || (req.stop_at_end && end == 0) {
            break;
        }
    }
    // The consumer is gone: whatever it did not ack goes to the group's other consumers now
    // rather than after ack_wait (but first the acks it sent on its stream).
    drop(tx);
    end_acks(acks).await;
    if !req.auto_ack {
        let cmd = Command::Events(view::Cmd::Release(Release {
            topic: req.topic.clone(),
            group: req.group.clone(),
            consumer,
        }));
        if let Err(e) = node.write(cmd).await {
            tracing::debug!("release after consumer left: {e}");
        }
    }
}

/// Planted bugs for the fault harness (`micro-jepsen --workload groups --planted-groups-bug`)
/// to prove that its consumer-groups checker notices them. They exist only in debug builds;
/// release binaries have no such switch. `MICRO_PLANTED_BUG_GROUPS`:
/// - `lose-redelivery`: every claim gives up on an event after its first delivery, as if
///   `retry_limit` were 1, so an event whose consumer left without acking is never delivered
///   again;
/// - `redeliver-after-ack`: each node remembers the last events it delivered to each group,
///   and every new consumer of the group first gets them again, acked or not.
#[cfg(debug_assertions)]
mod planted {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Bug {
        LoseRedelivery,
        RedeliverAfterAck,
    }

    impl Bug {
        pub fn from_env() -> Option<Bug> {
            match std::env::var("MICRO_PLANTED_BUG_GROUPS").ok()?.as_str() {
                "lose-redelivery" => Some(Bug::LoseRedelivery),
                "redeliver-after-ack" => Some(Bug::RedeliverAfterAck),
                _ => None,
            }
        }
    }

    type Delivered = HashMap<(String, String), VecDeque<u64>>;
    static DELIVERED: Mutex<Option<Delivered>> = Mutex::new(None);

    pub fn remember(req: &pb::ConsumeRequest, seq: u64) {
        let mut g = DELIVERED.lock().unwrap_or_else(|e| e.into_inner());
        let q = g
            .get_or_insert_with(HashMap::new)
            .entry((req.topic.clone(), req.group.clone()))
            .or_default();
        q.push_back(seq);
        if q.len() > 8 {
            q.pop_front();
        }
    }

    pub async fn replay_delivered(
        node: &Node,
        req: &pb::ConsumeRequest,
        tx: &mpsc::Sender<Result<pb::Event, Status>>,
    ) {
        let seqs: Vec<u64> = {
            let g = DELIVERED.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref()
                .and_then(|m| m.get(&(req.topic.clone(), req.group.clone())))
                .map(|q| q.iter().copied().collect())
                .unwrap_or_default()
        };
        for seq in seqs {
            if let Ok(Some(ev)) = view::get(node.view(), &req.topic, seq) {
                let _ = tx.send(Ok(to_event(&req.topic, seq, ev))).await;
            }
        }
    }
}

#[tonic::async_trait]
impl pb::store_server::Store for EventsService {
    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        if req.topic.is_empty() {
            return Err(invalid("topic", "must not be empty"));
        }
        req.topic = caller.scoped("topic", &req.topic)?;
        self.node.read_barrier(true).await.map_err(status)?;
        let meta = view::topic_meta(self.node.view(), &req.topic).map_err(|e| status(e.into()))?;
        let limit = if req.limit == 0 {
            DEFAULT_READ_LIMIT
        } else {
            req.limit.min(10_000)
        } as usize;
        let events = view::read(
            self.node.view(),
            &req.topic,
            meta.first_seq.saturating_add(req.offset),
            limit,
        )
        .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::ReadResponse {
            events: events
                .into_iter()
                .map(|(seq, e)| to_event(&req.topic, seq, e))
                .collect(),
        }))
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = Caller::of(&req);
        let ev = req
            .into_inner()
            .event
            .ok_or_else(|| invalid("event", "is required"))?;
        let cmd = publish_command(
            &caller,
            pb::PublishRequest {
                topic: ev.topic,
                metadata: ev.metadata,
                payload: ev.payload,
                timestamp: ev.timestamp,
                fence: None,
            },
            "event.",
        )?;
        self.node.write(cmd).await.map_err(status)?;
        Ok(Response::new(pb::WriteResponse {}))
    }
}
