//! The runtime: which services should run, how many instances, on which node, and how each
//! instance is doing — replicated desired and observed state for `micro run`.
//!
//! A service is created with its spec and a generated account (created here, in the same
//! entry, so an instance never starts without credentials). The leader places instances on
//! nodes (`Place`); each node's supervisor runs the instances placed on it and reports what it
//! sees (`Report`), so every node answers `status` the same. A report from a node an instance is
//! no longer placed on, or about an older generation, is ignored: a node that comes back after
//! its instances moved cannot overwrite what their new node says. `Update` bumps the generation
//! (rebuild and restart everywhere). `Delete` marks the service deleting; it disappears, with
//! its account, once every instance has reported `Stopped` or been unplaced, so an instance can
//! still deregister itself with its own credentials while it stops.
//!
//! Every change is a change in the feed under the service's key (`RUNTIME ns name`), so the
//! supervisors wake on it rather than poll.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, check_size, reject, Outcome, FIXED_SIZE};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};
use crate::views::{auth, history};

/// Marker for [`crate::command::View`].
pub struct Runtime;

/// The most instances one service may ask for.
pub const MAX_INSTANCES: u32 = 64;
/// The most bytes of output a report may carry (the last lines before a crash).
pub const MAX_OUTPUT_BYTES: usize = 4096;
/// The rule `Create` adds to a namespace (if absent) so its services' accounts (scope
/// `service`) may call Micro and each other (an operator may change or delete it; a later
/// `Create` puts it back only if it is absent).
pub const SERVICE_RULE: &str = "runtime-services";
/// The rule `Create` adds beside [`SERVICE_RULE`]: scope `service` may not call the runtime.
pub const SERVICE_RULE_NO_RUNTIME: &str = "runtime-services-no-runtime";
/// The scope of the accounts the runtime generates.
pub const SERVICE_SCOPE: &str = "service";

/// Micro's `runtime.ServiceStatus`, with its numbers (the wire's `Service.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, PartialOrd, Ord)]
pub enum Status {
    Unknown,
    #[default]
    Pending,
    Building,
    Starting,
    Running,
    Stopping,
    Stopped,
    Error,
}

impl Status {
    pub fn number(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Pending => "pending",
            Status::Building => "building",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Error => "error",
        }
    }
}

/// What a source is. The front end decides it when the service is created; the supervisor
/// acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SourceKind {
    /// A directory with a Cargo project: built with `cargo build` on each node.
    #[default]
    Cargo,
    /// An executable file: run as it is.
    Executable,
    /// A git repository (`github.com/org/repo[/path][@ref]`, `https://...`): kept in the model
    /// for a runtime that can fetch code; these nodes cannot, so the front end refuses it.
    Git,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Cargo => "cargo",
            SourceKind::Executable => "executable",
            SourceKind::Git => "git",
        }
    }
}

/// What should run: Micro v3's `Service` + `CreateOptions`, as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Spec {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// An absolute path on the nodes: a directory with a Cargo project, or an executable.
    pub source: String,
    /// Micro's `type` (free text, shown).
    pub kind: String,
    /// Replaces the program (`command[0]`, then its arguments) when not empty.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Passed as environment variables; never shown by reads.
    pub secrets: BTreeMap<String, String>,
    /// The Cargo binary to run when the package has several (`--bin`).
    pub entrypoint: String,
    pub metadata: BTreeMap<String, String>,
    pub instances: u32,
    pub source_kind: SourceKind,
}

/// One instance: where it is placed and what its node last said of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Instance {
    /// The node it is placed on; 0 while unplaced.
    pub node: u64,
    pub status: Status,
    /// Times its process was restarted after it exited (by this placement and generation).
    pub restarts: u32,
    /// When the current process started (the node's clock, ms), 0 when none runs.
    pub started_ms: u64,
    /// Why it is not running (exit code, build failure, backoff), empty when fine.
    pub error: String,
    /// The last lines it wrote before its latest exit (crash loops show them).
    pub output: String,
    pub pid: u32,
    /// The state clock when this instance last changed.
    pub updated_ms: u64,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Service {
    pub spec: Spec,
    /// Bumped by every `Update`: instances of an older generation are rebuilt and restarted.
    pub generation: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The generated account's id (namespace = the service's) and its secret, which the
    /// supervisors hand to instances; never shown by reads.
    pub account: String,
    pub secret: String,
    /// `Delete` was asked: instances stop, then the service and its account go.
    pub deleting: bool,
    pub instances: Vec<Instance>,
    /// The revision of the last change.
    pub mod_revision: u64,
}

/// A node's observation of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    pub namespace: String,
    pub name: String,
    pub instance: u32,
    /// The reporting node: the report is ignored unless the instance is placed there.
    pub node: u64,
    /// The generation the node runs: the report is ignored if it is not the current one.
    pub generation: u64,
    pub status: Status,
    pub restarts: u32,
    pub started_ms: u64,
    pub error: String,
    pub output: String,
    pub pid: u32,
}

/// A new service and its account (`account.secret_hash` set by the edge, `secret` the plain
/// secret for the instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Create {
    pub spec: Spec,
    pub account: auth::Account,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Creates the service and its account; `Exists` if the name is taken in the namespace.
    Create(Box<Create>),
    /// Rebuilds and restarts every instance (new generation); `instances` > 0 changes the
    /// count, a non-empty `entrypoint` replaces it.
    Update {
        namespace: String,
        name: String,
        instances: u32,
        entrypoint: String,
    },
    /// Stops every instance, then removes the service and its account.
    Delete {
        namespace: String,
        name: String,
    },
    /// The leader's placement: `nodes[i]` for instance `i` (0: unplaced), for `generation`
    /// of a service with exactly `nodes.len()` instances, else ignored (it was decided on an
    /// older state; the leader decides again).
    Place {
        namespace: String,
        name: String,
        generation: u64,
        nodes: Vec<u64>,
    },
    Report(Report),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    Done,
    Exists,
    NotFound,
    /// A placement or report for a state that has moved on; nothing changed.
    Stale,
}

fn check_spec(s: &Spec) -> Result<(), Outcome> {
    check_name("options.namespace", &s.namespace, true)?;
    check_name("resource.service.name", &s.name, true)?;
    if s.name.contains('/') || s.name.contains('\0') || s.name.chars().any(char::is_whitespace) {
        return Err(reject(
            "resource.service.name",
            "may not contain '/', NUL or whitespace".into(),
        ));
    }
    check_name("resource.service.version", &s.version, false)?;
    check_name("resource.service.source", &s.source, true)?;
    check_name("options.type", &s.kind, false)?;
    check_name("options.entrypoint", &s.entrypoint, false)?;
    if s.instances == 0 || s.instances > MAX_INSTANCES {
        return Err(reject(
            "options.instances",
            format!("is {}; use 1 to {MAX_INSTANCES}", s.instances),
        ));
    }
    let strings = s
        .command
        .iter()
        .chain(&s.args)
        .chain(&s.env)
        .chain(s.secrets.keys())
        .chain(s.secrets.values())
        .chain(s.metadata.keys())
        .chain(s.metadata.values());
    let total: usize = strings.map(String::len).sum();
    check_size("options", total, crate::MAX_KEY_BYTES * 16)?;
    for (i, e) in s.env.iter().enumerate() {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(reject(
                    &format!("options.env[{i}]"),
                    format!("{e:?} is not KEY=VALUE"),
                ))
            }
        }
    }
    Ok(())
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::Create(c) => {
                let (spec, secret) = (&c.spec, &c.secret);
                4 * FIXED_SIZE
                    + spec.name.len()
                    + spec.source.len()
                    + secret.len()
                    + spec
                        .command
                        .iter()
                        .chain(&spec.args)
                        .chain(&spec.env)
                        .map(String::len)
                        .sum::<usize>()
            }
            Cmd::Report(r) => FIXED_SIZE + r.name.len() + r.error.len() + r.output.len(),
            Cmd::Place { name, nodes, .. } => FIXED_SIZE + name.len() + 8 * nodes.len(),
            Cmd::Update { name, .. } | Cmd::Delete { name, .. } => FIXED_SIZE + name.len(),
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::Create(c) => {
                let (spec, account, secret) = (&c.spec, &c.account, &c.secret);
                check_spec(spec)?;
                auth::Cmd::CreateAccount(account.clone()).validate()?;
                if account.issuer != spec.namespace {
                    return Err(reject(
                        "account",
                        "must belong to the service's namespace".into(),
                    ));
                }
                check_name("secret", secret, true)
            }
            Cmd::Update {
                namespace,
                name,
                instances,
                entrypoint,
            } => {
                check_name("options.namespace", namespace, true)?;
                check_name("resource.service.name", name, true)?;
                check_name("options.entrypoint", entrypoint, false)?;
                if *instances > MAX_INSTANCES {
                    return Err(reject(
                        "options.instances",
                        format!("is {instances}; use 0 (unchanged) to {MAX_INSTANCES}"),
                    ));
                }
                Ok(())
            }
            Cmd::Delete { namespace, name } => {
                check_name("options.namespace", namespace, true)?;
                check_name("resource.service.name", name, true)
            }
            Cmd::Place {
                namespace,
                name,
                nodes,
                ..
            } => {
                check_name("namespace", namespace, true)?;
                check_name("name", name, true)?;
                if nodes.len() > MAX_INSTANCES as usize {
                    return Err(reject("nodes", "more nodes than instances allowed".into()));
                }
                Ok(())
            }
            Cmd::Report(r) => {
                check_name("namespace", &r.namespace, true)?;
                check_name("name", &r.name, true)?;
                check_size("error", r.error.len(), MAX_OUTPUT_BYTES)?;
                check_size("output", r.output.len(), MAX_OUTPUT_BYTES)
            }
        }
    }
}

/// `RUNTIME ns(len-prefixed) name`.
pub fn key(ns: &str, name: &str) -> Vec<u8> {
    let mut out = prefix(Some(ns));
    out.extend_from_slice(name.as_bytes());
    out
}

/// Every service (`None`) or a namespace's.
pub fn prefix(ns: Option<&str>) -> Vec<u8> {
    let mut out = vec![keys::RUNTIME];
    if let Some(ns) = ns {
        keys::push_str(&mut out, ns);
    }
    out
}

fn corrupt(e: codec::Error) -> StorageError {
    StorageError(format!("corrupt runtime entry: {e}"))
}

/// One service.
pub fn get<S: Read + ?Sized>(s: &S, ns: &str, name: &str) -> Result<Option<Service>, StorageError> {
    match s.get(&key(ns, name))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(corrupt)?)),
        None => Ok(None),
    }
}

/// Every service of a namespace (`None`: of all), in key order.
pub fn list<S: Read + ?Sized>(s: &S, ns: Option<&str>) -> Result<Vec<Service>, StorageError> {
    let p = prefix(ns);
    let mut out = Vec::new();
    let mut err = None;
    s.scan(&p, prefix_end(&p).as_deref(), false, &mut |_, v| {
        match codec::decode::<Service>(v) {
            Ok(svc) => out.push(svc),
            Err(e) => err = Some(corrupt(e)),
        }
        err.is_none()
    })?;
    err.map_or(Ok(out), Err)
}

fn save<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, svc: &mut Service, revision: u64, now: u64) {
    let k = key(&svc.spec.namespace, &svc.spec.name);
    let prev = svc.mod_revision;
    svc.mod_revision = revision;
    svc.updated_ms = now;
    let bytes = codec::encode(svc);
    ov.put(k.clone(), bytes.clone());
    history::record(ov, revision, now, k, Some(bytes), prev);
}

/// Removes a deleting service once none of its instances can still be running.
fn remove_if_stopped<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    svc: &mut Service,
    revision: u64,
    now: u64,
) -> Result<bool, StorageError> {
    let done = svc
        .instances
        .iter()
        .all(|i| i.node == 0 || i.status == Status::Stopped);
    if !svc.deleting || !done {
        return Ok(false);
    }
    let k = key(&svc.spec.namespace, &svc.spec.name);
    ov.delete(k.clone());
    history::record(ov, revision, now, k, None, svc.mod_revision);
    auth::apply(
        ov,
        &auth::Cmd::DeleteAccount {
            namespace: svc.spec.namespace.clone(),
            id: svc.account.clone(),
        },
        revision,
        now,
    )?;
    Ok(true)
}

fn fresh(node: u64, now: u64) -> Instance {
    Instance {
        node,
        updated_ms: now,
        ..Default::default()
    }
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    let out = match cmd {
        Cmd::Create(c) => {
            let (spec, account, secret) = (&c.spec, &c.account, &c.secret);
            if get(ov, &spec.namespace, &spec.name)?.is_some() {
                return Ok(Outcome::Runtime(Out::Exists));
            }
            // A leftover account of the same id (made by hand) is replaced: the runtime owns it.
            auth::apply(
                ov,
                &auth::Cmd::DeleteAccount {
                    namespace: account.issuer.clone(),
                    id: account.id.clone(),
                },
                revision,
                now,
            )?;
            match auth::apply(ov, &auth::Cmd::CreateAccount(account.clone()), revision, now)? {
                Outcome::Auth(auth::Out::Done) => {}
                Outcome::Auth(auth::Out::Exists) => {
                    return Ok(reject(
                        "account",
                        format!(
                            "an account named {:?} exists in namespace {:?}; delete it or pick another service name",
                            account.name, account.issuer
                        ),
                    ))
                }
                other => return Ok(other),
            }
            // Services may call Micro and each other, but not run services themselves.
            for (id, resource, access, priority) in [
                (SERVICE_RULE, "*", 1, 0),
                (SERVICE_RULE_NO_RUNTIME, "runtime", 2, 1),
            ] {
                if auth::rule(ov, &spec.namespace, id)?.is_none() {
                    let rule = auth::Rule {
                        id: id.into(),
                        scope: SERVICE_SCOPE.into(),
                        resource_type: "service".into(),
                        resource_name: resource.into(),
                        resource_endpoint: "*".into(),
                        access,
                        priority,
                    };
                    let namespace = spec.namespace.clone();
                    auth::apply(ov, &auth::Cmd::PutRule { namespace, rule }, revision, now)?;
                }
            }
            let mut svc = Service {
                spec: spec.clone(),
                generation: 1,
                created_ms: now,
                account: account.id.clone(),
                secret: secret.clone(),
                instances: (0..spec.instances).map(|_| fresh(0, now)).collect(),
                ..Default::default()
            };
            save(ov, &mut svc, revision, now);
            Out::Done
        }
        Cmd::Update {
            namespace,
            name,
            instances,
            entrypoint,
        } => match get(ov, namespace, name)? {
            Some(svc) if svc.deleting => Out::NotFound,
            None => Out::NotFound,
            Some(mut svc) => {
                svc.generation += 1;
                if *instances > 0 {
                    svc.spec.instances = *instances;
                }
                if !entrypoint.is_empty() {
                    svc.spec.entrypoint = entrypoint.clone();
                }
                let n = svc.spec.instances as usize;
                // Instances keep their nodes (a rebuild in place); new ones wait for placement.
                let mut next: Vec<Instance> = svc
                    .instances
                    .iter()
                    .take(n)
                    .map(|i| fresh(i.node, now))
                    .collect();
                next.resize_with(n, || fresh(0, now));
                svc.instances = next;
                save(ov, &mut svc, revision, now);
                Out::Done
            }
        },
        Cmd::Delete { namespace, name } => match get(ov, namespace, name)? {
            None => Out::NotFound,
            Some(mut svc) => {
                svc.deleting = true;
                for i in svc.instances.iter_mut() {
                    if i.node != 0 && i.status != Status::Stopped {
                        i.status = Status::Stopping;
                        i.updated_ms = now;
                    }
                }
                if !remove_if_stopped(ov, &mut svc, revision, now)? {
                    save(ov, &mut svc, revision, now);
                }
                Out::Done
            }
        },
        Cmd::Place {
            namespace,
            name,
            generation,
            nodes,
        } => match get(ov, namespace, name)? {
            None => Out::NotFound,
            Some(svc) if svc.generation != *generation || svc.instances.len() != nodes.len() => {
                Out::Stale
            }
            Some(mut svc) => {
                let mut changed = false;
                for (i, &node) in svc.instances.iter_mut().zip(nodes) {
                    if i.node != node {
                        let stopped = svc.deleting && node == 0;
                        *i = fresh(node, now);
                        if stopped {
                            i.status = Status::Stopped;
                        }
                        changed = true;
                    }
                }
                if !changed {
                    Out::Stale
                } else {
                    if !remove_if_stopped(ov, &mut svc, revision, now)? {
                        save(ov, &mut svc, revision, now);
                    }
                    Out::Done
                }
            }
        },
        Cmd::Report(r) => match get(ov, &r.namespace, &r.name)? {
            None => Out::NotFound,
            Some(mut svc) => {
                let current =
                    svc.generation == r.generation || (svc.deleting && r.status == Status::Stopped);
                match svc.instances.get_mut(r.instance as usize) {
                    Some(i) if i.node == r.node && r.node != 0 && current => {
                        // While deleting, only stopping news counts: a late "running" from a
                        // supervisor that has not seen the delete yet must not undo it.
                        let status = if svc.deleting && r.status != Status::Stopped {
                            Status::Stopping
                        } else {
                            r.status
                        };
                        *i = Instance {
                            node: r.node,
                            status,
                            restarts: r.restarts,
                            started_ms: r.started_ms,
                            error: r.error.clone(),
                            output: r.output.clone(),
                            pid: r.pid,
                            updated_ms: now,
                        };
                        if !remove_if_stopped(ov, &mut svc, revision, now)? {
                            save(ov, &mut svc, revision, now);
                        }
                        Out::Done
                    }
                    _ => Out::Stale,
                }
            }
        },
    };
    Ok(Outcome::Runtime(out))
}
