//! The service registry, with Micro v3's semantics, replicated: services keyed by domain, name
//! and version; the first Register of a (name, version) creates it and later ones add nodes
//! (an update) or refresh them; endpoints and metadata of the first registration stick; a
//! service disappears with its last node. A node registered with a TTL holds a lease (see
//! `lease`): re-registering keeps it alive, and when it expires the node is removed at the
//! same log index on every node — and, like every lease, it cannot expire because of an
//! election or an outage.
//!
//! Every create, update and delete is a change in the feed under the service's key (its value
//! the whole service after the change), so the registry can be watched from any revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, check_size, reject, Outcome, FIXED_SIZE};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};
use crate::views::{events, history, lease};

/// The events topic every registry change is also published on, atomically with the change
/// (same log entry): a protobuf `registry.Event{id, type, timestamp, service}` per change,
/// replayable like any topic. `id` is the change's revision.
pub const EVENTS_TOPIC: &str = "registry.events";

/// Marker for [`crate::command::View`].
pub struct Registry;

/// The domain used when a request names none, as in Micro v3.
pub const DEFAULT_DOMAIN: &str = "micro";
/// The domain that means "every domain" on reads and watches.
pub const WILDCARD_DOMAIN: &str = "*";
/// The most endpoint bytes one registration may carry.
pub const MAX_ENDPOINT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    pub address: String,
    pub port: i64,
    pub metadata: BTreeMap<String, String>,
    /// The lease that keeps the node registered; 0 when it never expires.
    pub lease: u64,
}

/// One version of a service, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Service {
    pub name: String,
    pub version: String,
    pub metadata: BTreeMap<String, String>,
    /// Encoded `registry.Endpoint` messages, kept as the first registration sent them.
    pub endpoints: Vec<Vec<u8>>,
    pub nodes: BTreeMap<String, Node>,
    /// The revision of the last change watchers saw (create or update).
    pub mod_revision: u64,
}

/// A registration: the service and the nodes to add or refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Register {
    pub domain: String,
    pub name: String,
    pub version: String,
    pub metadata: BTreeMap<String, String>,
    pub endpoints: Vec<Vec<u8>>,
    /// Node id → node (its `lease` is ignored).
    pub nodes: BTreeMap<String, Node>,
    /// 0: the nodes never expire.
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    Register(Register),
    /// Removes these nodes of the service version.
    Deregister {
        domain: String,
        name: String,
        version: String,
        nodes: Vec<String>,
    },
}

/// What a command did to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Create,
    Update,
    Delete,
    /// Known nodes refreshed (or nothing to remove): no change watchers see.
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    Done(Action),
}

/// `""` means the default domain.
pub fn domain_name(domain: &str) -> &str {
    if domain.is_empty() {
        DEFAULT_DOMAIN
    } else {
        domain
    }
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::Register(r) => {
                FIXED_SIZE
                    + r.endpoints.iter().map(Vec::len).sum::<usize>()
                    + r.nodes.len() * FIXED_SIZE
            }
            Cmd::Deregister { nodes, .. } => FIXED_SIZE + nodes.len() * FIXED_SIZE,
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Register(r) => {
                check_name("name", &r.name, true)?;
                check_name("version", &r.version, false)?;
                check_name("options.domain", &r.domain, false)?;
                if r.domain == WILDCARD_DOMAIN {
                    return Err(reject(
                        "options.domain",
                        "\"*\" means every domain: register in one".into(),
                    ));
                }
                if r.nodes.is_empty() {
                    return Err(reject("nodes", "must list at least one node".into()));
                }
                for id in r.nodes.keys() {
                    check_name("nodes.id", id, true)?;
                }
                check_size(
                    "endpoints",
                    r.endpoints.iter().map(Vec::len).sum(),
                    MAX_ENDPOINT_BYTES,
                )
            }
            Cmd::Deregister {
                domain,
                name,
                version,
                ..
            } => {
                check_name("name", name, true)?;
                check_name("version", version, false)?;
                check_name("options.domain", domain, false)
            }
        }
    }
}

fn corrupt(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt registry entry: {e}"))
}

/// One version of a service.
pub fn get<S: Read + ?Sized>(
    s: &S,
    domain: &str,
    name: &str,
    version: &str,
) -> Result<Option<Service>, StorageError> {
    match s.get(&keys::registry_key(domain, name, version))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

/// Every version of `name` (every service when `None`) in `domain` (every domain for `*`),
/// as (domain, service).
pub fn list<S: Read + ?Sized>(
    s: &S,
    domain: &str,
    name: Option<&str>,
) -> Result<Vec<(String, Service)>, StorageError> {
    let domain = domain_name(domain);
    let prefix = if domain == WILDCARD_DOMAIN {
        keys::registry_prefix(None, None)
    } else {
        keys::registry_prefix(Some(domain), name)
    };
    let mut out = Vec::new();
    let mut err = None;
    s.scan(
        &prefix,
        prefix_end(&prefix).as_deref(),
        false,
        &mut |k, v| {
            let Some((d, _, _)) = keys::parse_registry_key(k) else {
                err = Some(StorageError("corrupt registry key".into()));
                return false;
            };
            match codec::decode::<Service>(v) {
                Ok(svc) if name.is_none_or(|n| svc.name == n) => out.push((d, svc)),
                Ok(_) => {}
                Err(e) => err = Some(corrupt(e)),
            }
            err.is_none()
        },
    )?;
    err.map_or(Ok(out), Err)
}

/// A minimal protobuf writer for `registry.Event`: this crate has no protobuf library, and the
/// message is small. Field numbers are those of Micro v3's registry.proto.
mod wire {
    use std::collections::BTreeMap;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        tag(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        if !s.is_empty() {
            bytes(out, field, s.as_bytes());
        }
    }

    pub fn int(out: &mut Vec<u8>, field: u32, v: i64) {
        if v != 0 {
            tag(out, field, 0);
            varint(out, v as u64);
        }
    }

    pub fn map(out: &mut Vec<u8>, field: u32, m: &BTreeMap<String, String>) {
        for (k, v) in m {
            let mut entry = Vec::new();
            string(&mut entry, 1, k);
            string(&mut entry, 2, v);
            bytes(out, field, &entry);
        }
    }
}

/// `registry.Service` as protobuf (nodes: `only` if given, else all).
fn service_pb(domain: &str, svc: &Service, only: Option<&BTreeMap<String, Node>>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::string(&mut out, 1, &svc.name);
    wire::string(&mut out, 2, &svc.version);
    wire::map(&mut out, 3, &svc.metadata);
    for e in &svc.endpoints {
        wire::bytes(&mut out, 4, e);
    }
    for (id, n) in only.unwrap_or(&svc.nodes) {
        let mut node = Vec::new();
        wire::string(&mut node, 1, id);
        wire::string(&mut node, 2, &n.address);
        wire::int(&mut node, 3, n.port);
        wire::map(&mut node, 4, &n.metadata);
        wire::bytes(&mut out, 5, &node);
    }
    let mut opts = Vec::new();
    wire::string(&mut opts, 2, domain);
    wire::bytes(&mut out, 6, &opts);
    out
}

/// Publishes the change on [`EVENTS_TOPIC`] (`kind`: Create 0, Delete 1, Update 2).
fn publish<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    domain: &str,
    kind: i64,
    service: Vec<u8>,
    revision: u64,
    now: u64,
) -> Result<(), StorageError> {
    let mut ev = Vec::new();
    wire::string(&mut ev, 1, &revision.to_string());
    wire::int(&mut ev, 2, kind);
    wire::int(&mut ev, 3, (now / 1000) as i64);
    wire::bytes(&mut ev, 4, &service);
    let p = events::Publish {
        topic: EVENTS_TOPIC.into(),
        metadata: [
            ("domain".to_string(), domain.to_string()),
            ("revision".to_string(), revision.to_string()),
        ]
        .into(),
        payload: ev,
        timestamp_ms: 0,
    };
    events::publish(ov, &p, now)?;
    Ok(())
}

/// Writes (or with `None` deletes) the service as a change at `revision`.
fn save<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    key: Vec<u8>,
    svc: Option<&mut Service>,
    prev_revision: u64,
    revision: u64,
    now: u64,
) {
    match svc {
        Some(svc) => {
            svc.mod_revision = revision;
            let bytes = codec::encode(&*svc);
            ov.put(key.clone(), bytes.clone());
            history::record(ov, revision, now, key, Some(bytes), prev_revision);
        }
        None => {
            ov.delete(key.clone());
            history::record(ov, revision, now, key, None, prev_revision);
        }
    }
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    let action = match cmd {
        Cmd::Register(r) => register(ov, r, revision, now)?,
        Cmd::Deregister {
            domain,
            name,
            version,
            nodes,
        } => deregister(ov, domain_name(domain), name, version, nodes, revision, now)?,
    };
    Ok(Outcome::Registry(Out::Done(action)))
}

fn register<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    r: &Register,
    revision: u64,
    now: u64,
) -> Result<Action, StorageError> {
    let domain = domain_name(&r.domain);
    let key = keys::registry_key(domain, &r.name, &r.version);
    let existing = get(ov, domain, &r.name, &r.version)?;
    let created = existing.is_none();
    let mut svc = existing.unwrap_or_else(|| {
        let mut metadata = r.metadata.clone();
        metadata.insert("domain".into(), domain.to_string());
        Service {
            name: r.name.clone(),
            version: r.version.clone(),
            metadata,
            endpoints: r.endpoints.clone(),
            nodes: BTreeMap::new(),
            mod_revision: 0,
        }
    });
    let mut added = false;
    for (id, n) in &r.nodes {
        let owner = keys::reg_node_key(domain, &r.name, &r.version, id);
        match svc.nodes.get_mut(id) {
            Some(known) => {
                // A refresh: keep it alive (or start/stop expiring if the TTL changed).
                let kept = known.lease != 0
                    && r.ttl_ms > 0
                    && lease::keep_for(ov, known.lease, r.ttl_ms, now)?;
                if !kept {
                    if known.lease != 0 {
                        lease::drop_for(ov, known.lease)?;
                    }
                    known.lease = if r.ttl_ms > 0 {
                        lease::grant_for(ov, &owner, r.ttl_ms, revision, now)?
                    } else {
                        0
                    };
                }
            }
            None => {
                let mut node = n.clone();
                node.metadata.insert("domain".into(), domain.to_string());
                node.lease = if r.ttl_ms > 0 {
                    lease::grant_for(ov, &owner, r.ttl_ms, revision, now)?
                } else {
                    0
                };
                svc.nodes.insert(id.clone(), node);
                added = true;
            }
        }
    }
    if created || added {
        let prev = svc.mod_revision;
        save(ov, key, Some(&mut svc), prev, revision, now);
        let kind = if created { 0 } else { 2 };
        publish(
            ov,
            domain,
            kind,
            service_pb(domain, &svc, None),
            revision,
            now,
        )?;
        Ok(if created {
            Action::Create
        } else {
            Action::Update
        })
    } else {
        // Lease ids may have changed; the service as watchers see it did not.
        ov.put(key, codec::encode(&svc));
        Ok(Action::Refresh)
    }
}

/// Removes `nodes` of a service version as a change at `revision`.
fn deregister<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    domain: &str,
    name: &str,
    version: &str,
    nodes: &[String],
    revision: u64,
    now: u64,
) -> Result<Action, StorageError> {
    let key = keys::registry_key(domain, name, version);
    let Some(mut svc) = get(ov, domain, name, version)? else {
        return Ok(Action::Refresh);
    };
    let mut removed = BTreeMap::new();
    for id in nodes {
        if let Some(n) = svc.nodes.remove(id) {
            if n.lease != 0 {
                lease::drop_for(ov, n.lease)?;
            }
            removed.insert(id.clone(), n);
        }
    }
    if removed.is_empty() && !svc.nodes.is_empty() {
        return Ok(Action::Refresh);
    }
    changed(ov, domain, key, svc, &removed, revision, now)
}

/// A node's lease ended: remove the node (owner key `REG_NODE ...`) as a change at
/// `revision`. Returns whether a node was removed.
pub(crate) fn expire_node<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    owner: &[u8],
    revision: u64,
    now: u64,
) -> Result<bool, StorageError> {
    let (domain, name, version, id) = keys::parse_reg_node_key(owner)
        .ok_or_else(|| StorageError("corrupt registry node key".into()))?;
    let key = keys::registry_key(&domain, &name, &version);
    let Some(mut svc) = get(ov, &domain, &name, &version)? else {
        return Ok(false);
    };
    let Some(node) = svc.nodes.remove(&id) else {
        return Ok(false);
    };
    let removed = BTreeMap::from([(id, node)]);
    changed(ov, &domain, key, svc, &removed, revision, now)?;
    Ok(true)
}

/// Saves a service that lost `removed` nodes: deleted with its last node, else updated; and
/// publishes the change (a delete names the nodes that left).
fn changed<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    domain: &str,
    key: Vec<u8>,
    mut svc: Service,
    removed: &BTreeMap<String, Node>,
    revision: u64,
    now: u64,
) -> Result<Action, StorageError> {
    let prev = svc.mod_revision;
    if svc.nodes.is_empty() {
        save(ov, key, None, prev, revision, now);
        publish(
            ov,
            domain,
            1,
            service_pb(domain, &svc, Some(removed)),
            revision,
            now,
        )?;
        Ok(Action::Delete)
    } else {
        save(ov, key, Some(&mut svc), prev, revision, now);
        publish(ov, domain, 2, service_pb(domain, &svc, None), revision, now)?;
        Ok(Action::Update)
    }
}
