//! The events view: per topic, a dense sequence of events starting at 1, with retention, and
//! consumer groups whose cursors and pending acks are part of the replicated state.
//!
//! Group delivery is decided by apply, so it is the same on every node and survives any
//! restart: a consumer *claims* events (the next ones past the group's cursor, first any whose
//! ack deadline passed), acks them, or releases its claims when it goes away.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, check_size, Outcome, FIXED_SIZE};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};

/// Marker for [`crate::command::View`].
pub struct Events;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    Publish(Publish),
    SetRetention(Retention),
    Claim(Claim),
    Ack(Ack),
    Release(Release),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    /// The event's sequence in its topic.
    Published {
        seq: u64,
    },
    RetentionSet,
    Claimed(Claimed),
    /// How many pending events the ack or release touched.
    Count(u64),
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::Publish(p) => FIXED_SIZE + p.topic.len() + p.payload.len(),
            Cmd::Ack(a) => FIXED_SIZE + a.topic.len() + 8 * a.seqs.len(),
            Cmd::SetRetention(_) | Cmd::Claim(_) | Cmd::Release(_) => FIXED_SIZE,
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Publish(p) => {
                check_name("topic", &p.topic, true)?;
                check_size("payload", p.payload.len(), crate::MAX_VALUE_BYTES)
            }
            Cmd::SetRetention(r) => check_name("topic", &r.topic, true),
            Cmd::Claim(c) => {
                check_name("topic", &c.topic, true)?;
                check_name("group", &c.group, true)
            }
            Cmd::Ack(a) => {
                check_name("topic", &a.topic, true)?;
                check_name("group", &a.group, true)
            }
            Cmd::Release(r) => {
                check_name("topic", &r.topic, true)?;
                check_name("group", &r.group, true)
            }
        }
    }
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    now: u64,
) -> Result<Outcome, StorageError> {
    // Consumers of the topic wake on any change of its events or groups (a nack or a release
    // makes events claimable again).
    let topic = match cmd {
        Cmd::Publish(p) => &p.topic,
        Cmd::SetRetention(r) => &r.topic,
        Cmd::Claim(c) => &c.topic,
        Cmd::Ack(a) => &a.topic,
        Cmd::Release(r) => &r.topic,
    };
    ov.feed.topics.insert(topic.clone());
    Ok(Outcome::Events(match cmd {
        Cmd::Publish(p) => Out::Published {
            seq: publish(ov, p, now)?,
        },
        Cmd::SetRetention(r) => {
            set_retention(ov, r, now)?;
            Out::RetentionSet
        }
        Cmd::Claim(c) => Out::Claimed(claim(ov, c, now)?),
        Cmd::Ack(a) => Out::Count(ack(ov, a, now)?),
        Cmd::Release(r) => Out::Count(release(ov, r, now)?),
    }))
}

/// Default retention: at most this many events per topic...
pub const DEFAULT_MAX_EVENTS: u64 = 1_000_000;
/// ...and none older than this (7 days).
pub const DEFAULT_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    /// The publisher's timestamp (ms) if it gave one, else the log time.
    pub timestamp_ms: u64,
    /// The state clock when the event was appended (orders time-based replay).
    pub log_time_ms: u64,
    pub metadata: BTreeMap<String, String>,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// First retained sequence (last + 1 when empty).
    pub first_seq: u64,
    /// Last assigned sequence (0 before the first event).
    pub last_seq: u64,
    /// 0 means unlimited.
    pub max_events: u64,
    /// 0 means unlimited.
    pub max_age_ms: u64,
}

impl Default for TopicMeta {
    fn default() -> Self {
        TopicMeta {
            first_seq: 1,
            last_seq: 0,
            max_events: DEFAULT_MAX_EVENTS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub consumer: String,
    pub deadline_ms: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupState {
    /// The next sequence never delivered to the group.
    pub cursor: u64,
    /// Delivered, not yet acked, by sequence.
    pub pending: BTreeMap<u64, Pending>,
    /// Events given up on after the retry limit.
    pub dead: u64,
    /// Consumers that claimed recently (id → last claim time), to share new events fairly.
    pub consumers: BTreeMap<String, u64>,
}

/// A consumer that has not claimed for this long no longer counts towards the fair share.
pub const CONSUMER_TTL_MS: u64 = 60_000;

/// Appends an event to a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Publish {
    pub topic: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Publisher timestamp in ms; 0 means "now" (the log time).
    pub timestamp_ms: u64,
}

/// Sets a topic's retention (0 = unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Retention {
    pub topic: String,
    pub max_events: u64,
    pub max_age_ms: u64,
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// At this sequence (clamped to the retained range).
    Sequence(u64),
    /// After the last event at the time of the claim.
    End,
}

/// Claims up to `max` events for `consumer` of `group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub topic: String,
    pub group: String,
    pub consumer: String,
    pub max: u32,
    /// Redeliver if not acked within this long; 0 with `auto_ack` (whatever an auto-ack
    /// consumer takes, new or due again, is acked by being delivered).
    pub ack_wait_ms: u64,
    /// Give up on an event after this many deliveries; 0 means never.
    pub retry_limit: u32,
    pub auto_ack: bool,
    /// Where the group starts if it does not exist yet.
    pub start: Start,
}

/// Acks (or with `success: false`, nacks: redeliver now) events of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub topic: String,
    pub group: String,
    pub seqs: Vec<u64>,
    pub success: bool,
}

/// Makes every event claimed by `consumer` redeliverable at once (it went away).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub topic: String,
    pub group: String,
    pub consumer: String,
}

fn corrupt(what: &str) -> impl Fn(codec::Error) -> StorageError + '_ {
    move |e| StorageError(format!("corrupt {what}: {e}"))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn event_key(topic: &str, seq: u64) -> Vec<u8> {
    let mut k = vec![keys::EVENT];
    put_str(&mut k, topic);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn topic_key(topic: &str) -> Vec<u8> {
    let mut k = vec![keys::TOPIC];
    k.extend_from_slice(topic.as_bytes());
    k
}

fn group_key(topic: &str, group: &str) -> Vec<u8> {
    let mut k = vec![keys::GROUP];
    put_str(&mut k, topic);
    k.extend_from_slice(group.as_bytes());
    k
}

/// The topic's metadata (defaults for a topic never written).
pub fn topic_meta<S: Read + ?Sized>(s: &S, topic: &str) -> Result<TopicMeta, StorageError> {
    match s.get(&topic_key(topic))? {
        Some(b) => codec::decode(&b).map_err(corrupt("topic")),
        None => Ok(TopicMeta::default()),
    }
}

/// Every topic with its metadata.
pub fn topics<S: Read + ?Sized>(s: &S) -> Result<Vec<(String, TopicMeta)>, StorageError> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &[keys::TOPIC],
        Some(&[keys::TOPIC + 1]),
        false,
        &mut |k, v| {
            match codec::decode(v) {
                Ok(m) => out.push((String::from_utf8_lossy(&k[1..]).into_owned(), m)),
                Err(e) => err = Some(corrupt("topic")(e)),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// Every consumer group, as (topic, group, state).
pub fn groups<S: Read + ?Sized>(s: &S) -> Result<Vec<(String, String, GroupState)>, StorageError> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &[keys::GROUP],
        Some(&[keys::GROUP + 1]),
        false,
        &mut |k, v| {
            let parsed = keys::take_str(&k[1..])
                .map(|(topic, rest)| (topic, String::from_utf8_lossy(rest).into_owned()));
            match (parsed, codec::decode(v)) {
                (Some((topic, group)), Ok(g)) => out.push((topic, group, g)),
                (None, _) => err = Some(StorageError("corrupt group key".into())),
                (_, Err(e)) => err = Some(corrupt("group")(e)),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// A group's state, if the group exists.
pub fn group<S: Read + ?Sized>(
    s: &S,
    topic: &str,
    group: &str,
) -> Result<Option<GroupState>, StorageError> {
    match s.get(&group_key(topic, group))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(corrupt("group"))?)),
        None => Ok(None),
    }
}

/// Up to `limit` events with sequence >= `from`, in order.
pub fn read<S: Read + ?Sized>(
    s: &S,
    topic: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, StoredEvent)>, StorageError> {
    let start = event_key(topic, from);
    let end = prefix_end(&event_key(topic, 0)[..start.len() - 8]);
    let mut out = Vec::new();
    let mut err = None;
    s.scan(&start, end.as_deref(), false, &mut |k, v| {
        let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap_or_default());
        match codec::decode(v) {
            Ok(e) => out.push((seq, e)),
            Err(e) => err = Some(corrupt("event")(e)),
        }
        err.is_none() && out.len() < limit
    })?;
    err.map_or(Ok(out), Err)
}

/// One event.
pub fn get<S: Read + ?Sized>(
    s: &S,
    topic: &str,
    seq: u64,
) -> Result<Option<StoredEvent>, StorageError> {
    match s.get(&event_key(topic, seq))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(corrupt("event"))?)),
        None => Ok(None),
    }
}

/// The first retained sequence appended at or after `time_ms` (last + 1 if none).
pub fn seq_at_time<S: Read + ?Sized>(
    s: &S,
    topic: &str,
    time_ms: u64,
) -> Result<u64, StorageError> {
    let meta = topic_meta(s, topic)?;
    let mut found = None;
    let start = event_key(topic, meta.first_seq);
    let end = prefix_end(&start[..start.len() - 8]);
    let mut err = None;
    s.scan(
        &start,
        end.as_deref(),
        false,
        &mut |k, v| match codec::decode::<StoredEvent>(v) {
            Ok(e) if e.log_time_ms >= time_ms => {
                found = Some(u64::from_be_bytes(
                    k[k.len() - 8..].try_into().unwrap_or_default(),
                ));
                false
            }
            Ok(_) => true,
            Err(e) => {
                err = Some(corrupt("event")(e));
                false
            }
        },
    )?;
    if let Some(e) = err {
        return Err(e);
    }
    Ok(found.unwrap_or(meta.last_seq + 1))
}

fn save_meta<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, topic: &str, m: &TopicMeta) {
    ov.put(topic_key(topic), codec::encode(m));
}

/// Drops events beyond the topic's retention at clock `now`.
fn trim<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    topic: &str,
    m: &mut TopicMeta,
    now: u64,
) -> Result<(), StorageError> {
    while m.first_seq <= m.last_seq {
        let count = m.last_seq - m.first_seq + 1;
        let over_count = m.max_events > 0 && count > m.max_events;
        let too_old = m.max_age_ms > 0
            && match get(ov, topic, m.first_seq)? {
                Some(e) => e.log_time_ms.saturating_add(m.max_age_ms) <= now,
                None => true,
            };
        if !(over_count || too_old) {
            break;
        }
        ov.delete(event_key(topic, m.first_seq));
        m.first_seq += 1;
    }
    Ok(())
}

/// Appends an event; returns its sequence.
pub(crate) fn publish<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    p: &Publish,
    now: u64,
) -> Result<u64, StorageError> {
    let mut m = topic_meta(ov, &p.topic)?;
    m.last_seq += 1;
    let seq = m.last_seq;
    let ev = StoredEvent {
        id: format!("{}/{seq}", p.topic),
        timestamp_ms: if p.timestamp_ms > 0 {
            p.timestamp_ms
        } else {
            now
        },
        log_time_ms: now,
        metadata: p.metadata.clone(),
        payload: p.payload.clone(),
    };
    ov.put(event_key(&p.topic, seq), codec::encode(&ev));
    trim(ov, &p.topic, &mut m, now)?;
    save_meta(ov, &p.topic, &m);
    Ok(seq)
}

/// Sets retention and trims at once.
pub(crate) fn set_retention<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    r: &Retention,
    now: u64,
) -> Result<(), StorageError> {
    let mut m = topic_meta(ov, &r.topic)?;
    m.max_events = r.max_events;
    m.max_age_ms = r.max_age_ms;
    trim(ov, &r.topic, &mut m, now)?;
    save_meta(ov, &r.topic, &m);
    Ok(())
}

/// The outcome of a claim: events to deliver, and events given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Claimed {
    pub seqs: Vec<u64>,
    pub dead: Vec<u64>,
}

pub(crate) fn claim<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    c: &Claim,
    now: u64,
) -> Result<Claimed, StorageError> {
    let m = topic_meta(ov, &c.topic)?;
    let mut g = match group(ov, &c.topic, &c.group)? {
        Some(g) => g,
        None => GroupState {
            cursor: match c.start {
                Start::Sequence(s) => s.max(1),
                Start::End => m.last_seq + 1,
            },
            ..Default::default()
        },
    };
    let mut out = Claimed::default();
    let max = c.max.max(1) as usize;
    // First, events whose ack deadline passed, lowest sequence first.
    let due: Vec<u64> = g
        .pending
        .iter()
        .filter(|(_, p)| p.deadline_ms <= now)
        .map(|(s, _)| *s)
        .collect();
    for seq in due {
        if out.seqs.len() >= max {
            break;
        }
        let p = g.pending.get_mut(&seq).expect("due pending entry");
        if seq < m.first_seq || (c.retry_limit > 0 && p.attempts >= c.retry_limit) {
            g.pending.remove(&seq);
            g.dead += 1;
            out.dead.push(seq);
            continue;
        }
        out.seqs.push(seq);
        if c.auto_ack {
            // An auto-ack consumer acks by taking it. Left pending with a deadline of
            // now + 0, it would be due again at every claim: redelivered forever, one log
            // entry per claim.
            g.pending.remove(&seq);
            continue;
        }
        p.attempts += 1;
        p.consumer = c.consumer.clone();
        p.deadline_ms = now.saturating_add(c.ack_wait_ms);
    }
    // Then new events past the cursor, at most a fair share of them: with k consumers
    // claiming, each takes about 1/k of what is waiting, so a group splits the stream.
    g.cursor = g.cursor.max(m.first_seq);
    g.consumers.insert(c.consumer.clone(), now);
    g.consumers
        .retain(|_, seen| seen.saturating_add(CONSUMER_TTL_MS) > now);
    let waiting = (m.last_seq + 1).saturating_sub(g.cursor);
    let share = waiting.div_ceil(g.consumers.len().max(1) as u64) as usize;
    let max = max.min(out.seqs.len() + share);
    while out.seqs.len() < max && g.cursor <= m.last_seq {
        let seq = g.cursor;
        g.cursor += 1;
        if !c.auto_ack {
            g.pending.insert(
                seq,
                Pending {
                    consumer: c.consumer.clone(),
                    deadline_ms: now.saturating_add(c.ack_wait_ms),
                    attempts: 1,
                },
            );
        }
        out.seqs.push(seq);
    }
    ov.put(group_key(&c.topic, &c.group), codec::encode(&g));
    Ok(out)
}

/// Returns how many of the sequences were pending.
pub(crate) fn ack<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    a: &Ack,
    now: u64,
) -> Result<u64, StorageError> {
    let Some(mut g) = group(ov, &a.topic, &a.group)? else {
        return Ok(0);
    };
    let mut n = 0;
    for seq in &a.seqs {
        if a.success {
            n += g.pending.remove(seq).is_some() as u64;
        } else if let Some(p) = g.pending.get_mut(seq) {
            p.deadline_ms = now;
            n += 1;
        }
    }
    ov.put(group_key(&a.topic, &a.group), codec::encode(&g));
    Ok(n)
}

pub(crate) fn release<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    r: &Release,
    now: u64,
) -> Result<u64, StorageError> {
    let Some(mut g) = group(ov, &r.topic, &r.group)? else {
        return Ok(0);
    };
    g.consumers.remove(&r.consumer);
    let mut n = 0;
    for p in g.pending.values_mut().filter(|p| p.consumer == r.consumer) {
        p.deadline_ms = p.deadline_ms.min(now);
        n += 1;
    }
    ov.put(group_key(&r.topic, &r.group), codec::encode(&g));
    Ok(n)
}
