//! `runtime.Runtime`, Micro v3 compatible: Create/Read/Update/Delete are replicated desired
//! state (`views::runtime`); Logs reads each instance's log on the node that runs it, through
//! whichever node the client asked (it calls the others' `Logs` with the caller's credentials
//! and `micro-runtime-local`, which limits an answer to the node's own instances).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use micro_cluster::{now_ms, Node};
use micro_proto::runtime as pb;
use micro_state::views::auth::Account;
use micro_state::views::runtime::{self as view, Runtime, Status as St};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::auth::token;
use crate::auth::Caller;
use crate::errors::{invalid, status};
use crate::runtime::logs::{self, Line, LogDir};

/// Set on a node's call to another node's `Logs`: answer with your own instances only.
pub const LOCAL_HEADER: &str = "micro-runtime-local";
/// How long a member has to start answering a `Logs` fan-out.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RuntimeService {
    node: Node,
    logs: LogDir,
}

impl RuntimeService {
    pub fn server(
        rt: &crate::runtime::Runtime,
    ) -> pb::runtime_server::RuntimeServer<RuntimeService> {
        pb::runtime_server::RuntimeServer::new(RuntimeService {
            node: rt.node.clone(),
            logs: rt.logs.clone(),
        })
    }

    async fn run(&self, cmd: view::Cmd, ns: &str, name: &str) -> Result<(), Status> {
        match self.node.run::<Runtime>(cmd).await.map_err(status)?.1 {
            view::Out::Done | view::Out::Stale => Ok(()),
            view::Out::NotFound => Err(not_found(ns, name)),
            view::Out::Exists => Err(Status::already_exists(format!(
                "service {name:?} already exists in namespace {ns:?}: `micro update {name}` rebuilds and restarts it, `micro kill {name}` removes it"
            ))),
        }
    }
}

fn not_found(ns: &str, name: &str) -> Status {
    Status::not_found(format!(
        "service {name:?} is not run by the runtime in namespace {ns:?} (`micro status` lists what is)"
    ))
}

/// The service a request names (`resource.service.name`).
fn service_name(resource: &Option<pb::Resource>) -> Result<&pb::Service, Status> {
    match resource.as_ref().and_then(|r| r.service.as_ref()) {
        Some(s) if !s.name.is_empty() => Ok(s),
        _ => Err(invalid("resource.service.name", "must not be empty")),
    }
}

/// The account id the runtime generates for a service.
pub fn account_id(name: &str) -> String {
    format!("runtime-{name}")
}

/// The least advanced state of the instances: what the service as a whole can promise.
fn overall(svc: &view::Service) -> St {
    if svc.deleting {
        return St::Stopping;
    }
    if svc.instances.iter().any(|i| i.status == St::Error) {
        return St::Error;
    }
    svc.instances
        .iter()
        .map(|i| match i.status {
            St::Unknown => St::Pending,
            s => s,
        })
        .min()
        .unwrap_or(St::Pending)
}

pub fn to_pb(svc: &view::Service) -> pb::Service {
    let spec = &svc.spec;
    let mut metadata: std::collections::HashMap<String, String> =
        spec.metadata.clone().into_iter().collect();
    let running = svc
        .instances
        .iter()
        .filter(|i| i.status == St::Running)
        .count();
    metadata.insert("instances".into(), svc.instances.len().to_string());
    metadata.insert("running".into(), running.to_string());
    metadata.insert("generation".into(), svc.generation.to_string());
    metadata.insert("created".into(), (svc.created_ms / 1000).to_string());
    metadata.insert("updated".into(), (svc.updated_ms / 1000).to_string());
    metadata.insert("status".into(), overall(svc).name().into());
    if !spec.kind.is_empty() {
        metadata.insert("type".into(), spec.kind.clone());
    }
    metadata.insert("source_type".into(), spec.source_kind.name().into());
    if let Some(e) = svc.instances.iter().find(|i| !i.error.is_empty()) {
        metadata.insert("error".into(), e.error.clone());
    }
    pb::Service {
        name: spec.name.clone(),
        version: spec.version.clone(),
        source: spec.source.clone(),
        metadata,
        status: overall(svc).number(),
        instances: svc
            .instances
            .iter()
            .enumerate()
            .map(|(n, i)| pb::Instance {
                index: n as i64,
                node: i.node,
                status: i.status.number(),
                status_name: i.status.name().into(),
                restarts: i.restarts as i64,
                started: (i.started_ms / 1000) as i64,
                error: i.error.clone(),
                output: i.output.clone(),
                pid: i.pid as i64,
                generation: svc.generation as i64,
            })
            .collect(),
    }
}

/// What a source is, checked the way a node will use it: an absolute path, readable here, of
/// a Cargo project or an executable. Git sources are recognised and refused (these nodes do
/// not fetch code).
fn check_source(node: &Node, source: &str) -> Result<view::SourceKind, Status> {
    const FIELD: &str = "resource.service.source";
    if source.is_empty() {
        return Err(invalid(
            FIELD,
            "must not be empty: give the path of a Cargo project or an executable",
        ));
    }
    if source.contains("://") || source.starts_with("github.com/") || source.starts_with("git@") {
        return Err(invalid(
            FIELD,
            format!("{source:?} is a git source; this runtime runs local paths only (clone it and `micro run` the directory)"),
        ));
    }
    let path = Path::new(source);
    if !path.is_absolute() {
        return Err(invalid(
            FIELD,
            format!("{source:?} must be an absolute path (the CLI makes it one)"),
        ));
    }
    match std::fs::metadata(path) {
        Err(_) => Err(invalid(
            FIELD,
            format!("{source} does not exist on node {} (every node runs from its own copy of the path)", node.id()),
        )),
        Ok(m) if m.is_file() => Ok(view::SourceKind::Executable),
        Ok(_) if path.join("Cargo.toml").is_file() => Ok(view::SourceKind::Cargo),
        Ok(_) => Err(invalid(
            FIELD,
            format!("{source} has no Cargo.toml: give a Cargo project directory or an executable"),
        )),
    }
}

type LogStream = super::feed::ResponseStream<pb::LogRecord>;

#[tonic::async_trait]
impl pb::runtime_server::Runtime for RuntimeService {
    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let opts = r.options.unwrap_or_default();
        let ns = caller.namespace_or("options.namespace", &opts.namespace)?;
        let svc = service_name(&r.resource)?.clone();
        let source_kind = check_source(&self.node, &svc.source)?;
        if !opts.image.is_empty() {
            return Err(invalid(
                "options.image",
                "images are not run here; give a source path",
            ));
        }
        let instances = match opts.instances {
            0 => 1,
            n if n < 0 || n > view::MAX_INSTANCES as i64 => {
                return Err(invalid(
                    "options.instances",
                    format!("is {n}; use 1 to {}", view::MAX_INSTANCES),
                ))
            }
            n => n as u32,
        };
        let secret = token::new_secret().map_err(Status::internal)?;
        let plain = secret.clone();
        let hash = tokio::task::spawn_blocking(move || token::hash_secret(&plain))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::internal)?;
        let id = account_id(&svc.name);
        let account = Account {
            id: id.clone(),
            name: id,
            kind: "service".into(),
            issuer: ns.clone(),
            scopes: vec![view::SERVICE_SCOPE.into()],
            metadata: BTreeMap::from([("runtime".to_string(), svc.name.clone())]),
            secret_hash: hash,
            created_ms: 0,
        };
        let spec = view::Spec {
            namespace: ns.clone(),
            name: svc.name.clone(),
            version: if svc.version.is_empty() {
                "latest".into()
            } else {
                svc.version.clone()
            },
            source: svc.source.clone(),
            kind: opts.r#type,
            command: opts.command,
            args: opts.args,
            env: opts.env,
            secrets: opts.secrets.into_iter().collect(),
            entrypoint: opts.entrypoint,
            metadata: svc.metadata.into_iter().collect(),
            instances,
            source_kind,
        };
        let cmd = view::Cmd::Create(Box::new(view::Create {
            spec,
            account,
            secret,
        }));
        self.run(cmd, &ns, &svc.name).await?;
        Ok(Response::new(pb::CreateResponse {}))
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = Caller::of(&req);
        let opts = req.into_inner().options.unwrap_or_default();
        let ns = caller.namespace_or("options.namespace", &opts.namespace)?;
        self.node.read_barrier(true).await.map_err(status)?;
        let services = view::list(self.node.view(), Some(&ns))
            .map_err(|e| status(e.into()))?
            .iter()
            .filter(|s| opts.service.is_empty() || s.spec.name == opts.service)
            .filter(|s| opts.version.is_empty() || s.spec.version == opts.version)
            .filter(|s| opts.r#type.is_empty() || s.spec.kind == opts.r#type)
            .map(to_pb)
            .collect();
        Ok(Response::new(pb::ReadResponse { services }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = caller.namespace_or(
            "options.namespace",
            &r.options.unwrap_or_default().namespace,
        )?;
        let name = service_name(&r.resource)?.name.clone();
        let cmd = view::Cmd::Delete {
            namespace: ns.clone(),
            name: name.clone(),
        };
        self.run(cmd, &ns, &name).await?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let opts = r.options.unwrap_or_default();
        let ns = caller.namespace_or("options.namespace", &opts.namespace)?;
        let name = service_name(&r.resource)?.name.clone();
        if opts.instances < 0 || opts.instances > view::MAX_INSTANCES as i64 {
            return Err(invalid(
                "options.instances",
                format!(
                    "is {}; use 0 (unchanged) to {}",
                    opts.instances,
                    view::MAX_INSTANCES
                ),
            ));
        }
        let cmd = view::Cmd::Update {
            namespace: ns.clone(),
            name: name.clone(),
            instances: opts.instances as u32,
            entrypoint: opts.entrypoint,
        };
        self.run(cmd, &ns, &name).await?;
        Ok(Response::new(pb::UpdateResponse {}))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let caller = Caller::of(&req);
        let local = req.metadata().contains_key(LOCAL_HEADER);
        let forward: Vec<(
            String,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        )> = ["authorization", crate::auth::NAMESPACE_HEADER]
            .iter()
            .filter_map(|k| req.metadata().get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let r = req.into_inner();
        let ns = caller.namespace_or(
            "options.namespace",
            &r.options
                .as_ref()
                .map(|o| o.namespace.clone())
                .unwrap_or_default(),
        )?;
        if r.service.is_empty() {
            return Err(invalid("service", "must not be empty"));
        }
        if r.count < 0 || r.since < 0 {
            return Err(invalid("count", "count and since must not be negative"));
        }
        if !local {
            self.node.read_barrier(true).await.map_err(status)?;
        }
        let svc = view::get(self.node.view(), &ns, &r.service)
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| not_found(&ns, &r.service))?;
        let query = Query {
            since_ms: if r.since > 0 {
                now_ms().saturating_sub(r.since as u64 * 1000)
            } else {
                0
            },
            count: r.count as usize,
            follow: r.stream,
        };
        let me = self.node.id();
        let mut sources = Vec::new();
        let mut remote_nodes = std::collections::BTreeSet::new();
        for (i, inst) in svc.instances.iter().enumerate() {
            if inst.node == me {
                sources.push(Source::Local(i as u32));
            } else if inst.node != 0 && !local {
                remote_nodes.insert(inst.node);
            }
        }
        if !remote_nodes.is_empty() {
            let status = self.node.status().await;
            for id in remote_nodes {
                let addr = status
                    .members
                    .iter()
                    .find(|m| m.id == id && !m.grpc_address.is_empty())
                    .map(|m| m.grpc_address.clone());
                sources.push(Source::Remote(id, addr));
            }
        }
        let (tx, rx) = mpsc::channel(256);
        let ctx = Ctx {
            logs: self.logs.clone(),
            ns,
            name: r.service.clone(),
            node: me,
            query,
            forward,
            request: r,
            marker: local,
        };
        tokio::spawn(stream_logs(ctx, sources, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[derive(Clone, Copy)]
struct Query {
    since_ms: u64,
    count: usize,
    follow: bool,
}

enum Source {
    Local(u32),
    /// A member and its gRPC address (None: it does not answer).
    Remote(u64, Option<String>),
}

struct Ctx {
    logs: LogDir,
    ns: String,
    name: String,
    node: u64,
    query: Query,
    forward: Vec<(
        String,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
    request: pb::LogsRequest,
    /// Answering another node: mark where history ends and live lines begin.
    marker: bool,
}

/// What one source sends: its history once, then (following) live records.
enum Part {
    History(Vec<pb::LogRecord>),
    Live(pb::LogRecord),
}

const MARKER: &str = "micro-live";

fn record(ctx: &Ctx, instance: u32, l: Line) -> pb::LogRecord {
    pb::LogRecord {
        timestamp: (l.ms / 1000) as i64,
        metadata: [
            ("service", ctx.name.clone()),
            ("instance", instance.to_string()),
            ("node", ctx.node.to_string()),
            ("stream", l.stream),
            ("ms", l.ms.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        message: l.text,
    }
}

fn ms_of(r: &pb::LogRecord) -> u64 {
    r.metadata
        .get("ms")
        .and_then(|m| m.parse().ok())
        .unwrap_or(r.timestamp as u64 * 1000)
}

fn keep(mut records: Vec<pb::LogRecord>, q: Query) -> Vec<pb::LogRecord> {
    records.retain(|r| ms_of(r) >= q.since_ms);
    records.sort_by_key(ms_of);
    if q.count > 0 && records.len() > q.count {
        records.drain(..records.len() - q.count);
    }
    records
}

async fn stream_logs(
    ctx: Ctx,
    sources: Vec<Source>,
    out: mpsc::Sender<Result<pb::LogRecord, Status>>,
) {
    let ctx = std::sync::Arc::new(ctx);
    let (ptx, mut prx) = mpsc::channel::<(usize, Part)>(256);
    let n = sources.len();
    for (k, s) in sources.into_iter().enumerate() {
        let (ctx, ptx) = (ctx.clone(), ptx.clone());
        tokio::spawn(async move {
            match s {
                Source::Local(i) => local_source(&ctx, i, k, ptx).await,
                Source::Remote(id, addr) => remote_source(&ctx, id, addr, k, ptx).await,
            }
        });
    }
    drop(ptx);
    // Every source's history first, merged in time order; then live lines as they come.
    let mut history = Vec::new();
    let mut waiting = n;
    let mut early_live = Vec::new();
    while waiting > 0 {
        match prx.recv().await {
            Some((_, Part::History(h))) => {
                history.extend(h);
                waiting -= 1;
            }
            Some((_, Part::Live(r))) => early_live.push(r),
            None => break,
        }
    }
    for r in keep(history, ctx.query) {
        if out.send(Ok(r)).await.is_err() {
            return;
        }
    }
    if !ctx.query.follow {
        return;
    }
    if ctx.marker {
        let mut m = pb::LogRecord::default();
        m.metadata.insert(MARKER.into(), "1".into());
        if out.send(Ok(m)).await.is_err() {
            return;
        }
    }
    for r in early_live {
        if out.send(Ok(r)).await.is_err() {
            return;
        }
    }
    while let Some((_, part)) = prx.recv().await {
        if let Part::Live(r) = part {
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
}

async fn local_source(ctx: &Ctx, instance: u32, k: usize, tx: mpsc::Sender<(usize, Part)>) {
    let writer = ctx.logs.writer(&ctx.ns, &ctx.name, instance);
    let mut written = writer.subscribe();
    written.borrow_and_update();
    let path = writer.path().to_path_buf();
    let mut tail = logs::Tail::at_end(&path);
    let offset = tail.offset();
    let history = tokio::task::spawn_blocking({
        let path = path.clone();
        move || logs::read_until(&path, offset)
    })
    .await
    .unwrap_or_default();
    let records = history
        .into_iter()
        .map(|l| record(ctx, instance, l))
        .collect();
    if tx
        .send((k, Part::History(keep(records, ctx.query))))
        .await
        .is_err()
        || !ctx.query.follow
    {
        return;
    }
    loop {
        for l in tail.read_new() {
            if tx
                .send((k, Part::Live(record(ctx, instance, l))))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            changed = written.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

async fn remote_source(
    ctx: &Ctx,
    id: u64,
    addr: Option<String>,
    k: usize,
    tx: mpsc::Sender<(usize, Part)>,
) {
    let unreachable = |why: String| {
        let mut r = pb::LogRecord {
            timestamp: (now_ms() / 1000) as i64,
            message: format!("node {id} did not answer for its instances' logs: {why}"),
            ..Default::default()
        };
        r.metadata.insert("stream".into(), "runtime".into());
        r.metadata.insert("node".into(), id.to_string());
        r.metadata.insert("ms".into(), now_ms().to_string());
        r
    };
    let Some(addr) = addr else {
        let _ = tx
            .send((k, Part::History(vec![unreachable("unreachable".into())])))
            .await;
        return;
    };
    let stream = async {
        let mut client = pb::runtime_client::RuntimeClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = Request::new(ctx.request.clone());
        for (key, v) in &ctx.forward {
            if let Ok(key) = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()) {
                req.metadata_mut().insert(key, v.clone());
            }
        }
        req.metadata_mut().insert(
            LOCAL_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        client
            .logs(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    let mut stream = match tokio::time::timeout(REMOTE_TIMEOUT, stream).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx.send((k, Part::History(vec![unreachable(e)]))).await;
            return;
        }
        Err(_) => {
            let _ = tx
                .send((k, Part::History(vec![unreachable("timed out".into())])))
                .await;
            return;
        }
    };
    let mut history = Vec::new();
    let mut live = false;
    loop {
        let next = tokio::select! {
            n = stream.message() => n,
            _ = tx.closed() => return,
        };
        match next {
            Ok(Some(r)) if r.metadata.contains_key(MARKER) => {
                live = true;
                if tx
                    .send((k, Part::History(std::mem::take(&mut history))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Some(r)) if live => {
                if tx.send((k, Part::Live(r))).await.is_err() {
                    return;
                }
            }
            Ok(Some(r)) => history.push(r),
            Ok(None) | Err(_) => {
                if !live {
                    let _ = tx.send((k, Part::History(history))).await;
                }
                return;
            }
        }
    }
}
