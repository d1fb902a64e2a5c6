//! Writing a service: serve tonic handlers, be found through the registry, be called through
//! the node's gateway, proxy and CLI.
//!
//! ```no_run
//! # async fn demo<S>(say: S) -> Result<(), micro::Error>
//! # where S: tonic::server::NamedService + tower::Service<http::Request<tonic::body::Body>,
//! #   Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
//! #   + Clone + Send + Sync + 'static, S::Future: Send + 'static {
//! micro::Service::new("greeter")
//!     .descriptors(b"...encoded FileDescriptorSet...")
//!     .add_service(say)
//!     .run() // until SIGINT or SIGTERM; deregisters on the way out
//!     .await
//! # }
//! ```
//!
//! The service listens on a free port of 127.0.0.1 (or `MICRO_SERVICE_ADDRESS`), registers
//! every endpoint of its gRPC services with the registry (shapes taken from the protobuf
//! descriptors, which it also serves by gRPC reflection so the gateway and CLI can transcode
//! JSON), re-registers every `MICRO_REGISTER_INTERVAL` (30 s) with a TTL of
//! `MICRO_REGISTER_TTL` (90 s) — Micro's defaults — and serves `grpc.health.v1.Health`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::proto::registry as pb;
use crate::{Client, Error};

/// Endpoint metadata naming the gRPC method an endpoint is served at (`/greeter.Say/Hello`),
/// for services whose proto package is not their registered name.
pub const GRPC_PATH: &str = "grpc_path";
/// The gRPC method a registered endpoint of `service` is served at: its [`GRPC_PATH`], else
/// Micro v3's convention (`Say.Hello` of `greeter` → `/greeter.Say/Hello`); `None` when the
/// endpoint's name is not `Service.Method`.
pub fn grpc_path(service: &str, endpoint: &pb::Endpoint) -> Option<String> {
    if let Some(p) = endpoint.metadata.get(GRPC_PATH) {
        return Some(p.clone());
    }
    let (svc, method) = endpoint.name.split_once('.')?;
    Some(format!("/{service}.{svc}/{method}"))
}

/// Endpoint metadata Micro v3 sets on streaming endpoints.
pub const STREAM: &str = "stream";

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;
type Subscriber = Box<dyn FnOnce(Client) -> Task + Send>;
type RouterLayer = Box<dyn FnOnce(axum::Router) -> axum::Router + Send>;

/// A service in the making; [`Service::run`] serves it.
pub struct Service {
    name: String,
    version: String,
    metadata: BTreeMap<String, String>,
    routes: Option<Routes>,
    served: Vec<&'static str>,
    pool: DescriptorPool,
    descriptor_sets: Vec<Vec<u8>>,
    descriptor_error: Option<String>,
    address: Option<String>,
    advertise: Option<String>,
    ttl: Duration,
    interval: Duration,
    timeout: Option<Duration>,
    client: Option<Client>,
    subscribers: Vec<Subscriber>,
    layers: Vec<RouterLayer>,
}

fn env_secs(name: &str) -> Option<Duration> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().trim_end_matches('s');
    v.parse::<u64>().ok().map(Duration::from_secs)
}

impl Service {
    /// A service registered as `name` (version `latest`).
    pub fn new(name: impl Into<String>) -> Service {
        Service {
            name: name.into(),
            version: "latest".into(),
            metadata: BTreeMap::new(),
            routes: None,
            served: Vec::new(),
            pool: DescriptorPool::new(),
            descriptor_sets: Vec::new(),
            descriptor_error: None,
            address: std::env::var("MICRO_SERVICE_ADDRESS")
                .ok()
                .filter(|a| !a.is_empty()),
            advertise: None,
            ttl: env_secs("MICRO_REGISTER_TTL").unwrap_or(Duration::from_secs(90)),
            interval: env_secs("MICRO_REGISTER_INTERVAL").unwrap_or(Duration::from_secs(30)),
            timeout: None,
            client: None,
            subscribers: Vec::new(),
            layers: Vec::new(),
        }
    }

    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }

    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The encoded `FileDescriptorSet` describing the services (tonic-prost-build's
    /// `file_descriptor_set_path`, or protox's output). Without it the service still serves
    /// gRPC, but the gateway and the CLI cannot transcode JSON for it.
    pub fn descriptors(mut self, file_descriptor_set: &[u8]) -> Self {
        match self.pool.decode_file_descriptor_set(file_descriptor_set) {
            Ok(()) => self.descriptor_sets.push(file_descriptor_set.to_vec()),
            Err(e) => self.descriptor_error = Some(e.to_string()),
        }
        self
    }

    /// Serves a tonic service (a generated `...Server::new(handler)`).
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.served.push(S::NAME);
        self.routes = Some(match self.routes.take() {
            Some(r) => r.add_service(svc),
            None => Routes::new(svc),
        });
        self
    }

    /// Listens on this address (default: `MICRO_SERVICE_ADDRESS`, else a free port of
    /// 127.0.0.1).
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.address = Some(addr.into());
        self
    }

    /// The `host:port` registered for callers (default: the address listened on).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// How long the registration lives without a refresh (default 90 s, `MICRO_REGISTER_TTL`).
    pub fn register_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often it is refreshed (default 30 s, `MICRO_REGISTER_INTERVAL`).
    pub fn register_interval(mut self, every: Duration) -> Self {
        self.interval = every;
        self
    }

    /// Fails a handler still running after `d` with `DEADLINE_EXCEEDED`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// The node connection to register with (default: [`Client::from_env`], found as the
    /// CLI finds it).
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Wraps every handler in a tower layer (logging, auth checks, metrics, ...). Layers
    /// added later wrap the earlier ones.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<
                http::Request<axum::body::Body>,
                Response = http::Response<axum::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<http::Request<axum::body::Body>>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |r| r.layer(layer)));
        self
    }

    /// Runs `handler` for every event of `topic`, as a member of consumer group `group` (one
    /// instance of the service gets each event). An event whose handler fails is redelivered.
    pub fn subscribe<F, Fut>(mut self, topic: &str, group: &str, handler: F) -> Self
    where
        F: Fn(crate::events::Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (topic, group) = (topic.to_string(), group.to_string());
        self.subscribers.push(Box::new(move |client: Client| {
            Box::pin(async move { consume_forever(client, topic, group, handler).await })
        }));
        self
    }

    /// Runs `handler` for every broker message published to `topic` while the service runs
    /// (pub/sub: every instance gets every message, none is kept).
    pub fn subscribe_broker<F, Fut>(mut self, topic: &str, handler: F) -> Self
    where
        F: Fn(crate::proto::broker::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let topic = topic.to_string();
        self.subscribers.push(Box::new(move |client: Client| {
            Box::pin(async move { broker_forever(client, topic, handler).await })
        }));
        self
    }

    /// The registration this service sends (without its node), endpoints described from the
    /// descriptors.
    pub fn describe(&self) -> pb::Service {
        let mut endpoints = Vec::new();
        for full in &self.served {
            let Some(sd) = self.pool.get_service_by_name(full) else {
                continue;
            };
            for m in sd.methods() {
                let mut metadata = HashMap::new();
                metadata.insert(
                    GRPC_PATH.to_string(),
                    format!("/{}/{}", sd.full_name(), m.name()),
                );
                if m.is_server_streaming() || m.is_client_streaming() {
                    metadata.insert(STREAM.to_string(), "true".to_string());
                }
                endpoints.push(pb::Endpoint {
                    name: format!("{}.{}", sd.name(), m.name()),
                    request: Some(value_of(&m.input(), 0)),
                    response: Some(value_of(&m.output(), 0)),
                    metadata,
                });
            }
        }
        pb::Service {
            name: self.name.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone().into_iter().collect(),
            endpoints,
            nodes: Vec::new(),
            options: None,
        }
    }

    /// Serves until SIGINT or SIGTERM, then deregisters and stops.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then deregisters and stops.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let mut running = self.start().await?;
        tokio::select! {
            _ = shutdown => {}
            r = &mut running.task => {
                return r.map_err(|e| Error::Service(format!("the service stopped: {e}")))?;
            }
        }
        running.stop().await
    }

    /// Starts serving and returns once the service is registered (for tests and embedding);
    /// [`Running::stop`] deregisters and stops it.
    pub async fn start(mut self) -> Result<Running, Error> {
        if let Some(e) = &self.descriptor_error {
            return Err(Error::Service(format!(
                "the service's descriptors do not decode: {e}"
            )));
        }
        if self.routes.is_none() && self.subscribers.is_empty() {
            return Err(Error::Service(
                "the service has nothing to do: add_service or subscribe first".into(),
            ));
        }
        let bind = self.address.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| Error::Service(format!("cannot listen on {bind}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Service(e.to_string()))?;
        let advertise = match &self.advertise {
            Some(a) => a.clone(),
            None if local.ip().is_unspecified() => {
                format!("127.0.0.1:{}", local.port())
            }
            None => local.to_string(),
        };
        let client = match self.client.take() {
            Some(c) => c,
            None => Client::from_env().await?,
        };

        // A worker with only subscribers still serves its health.
        let (health, health_svc) = tonic_health::server::health_reporter();
        let mut routes = match self.routes.take() {
            // The service may be a health service itself: one route per gRPC service.
            Some(r) if self.served.contains(&HEALTH) => r,
            Some(r) => r.add_service(health_svc),
            None => Routes::new(health_svc),
        };
        if !self.descriptor_sets.is_empty() && !self.served.contains(&REFLECTION) {
            let mut b = tonic_reflection::server::Builder::configure();
            for set in &self.descriptor_sets {
                b = b.register_encoded_file_descriptor_set(set);
            }
            let reflection = b
                .build_v1()
                .map_err(|e| Error::Service(format!("reflection: {e}")))?;
            routes = routes.add_service(reflection);
        }
        let mut router = routes.into_axum_router();
        for wrap in self.layers.drain(..) {
            router = wrap(router);
        }
        let routes = Routes::from(router);
        for name in &self.served {
            health
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }

        let mut registration = self.describe();
        // A supervisor that names the instance (Micro's runtime does) can deregister it when
        // the process dies without doing so itself.
        let node_id = std::env::var("MICRO_SERVICE_NODE_ID")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("{}-{}", self.name, random_id()));
        let port = advertise
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        registration.nodes = vec![pb::Node {
            id: node_id.clone(),
            address: advertise.clone(),
            port,
            metadata: HashMap::new(),
        }];
        let registry = client.registry();
        let ttl_s = self.ttl.as_secs().max(1) as i64;
        registry.register(registration.clone(), ttl_s).await?;
        tracing::info!(
            service = %self.name,
            node = %node_id,
            address = %advertise,
            "registered"
        );
        eprintln!(
            "service {} ({}) listening on {advertise}, registered as {node_id}",
            self.name, self.version
        );

        let refresh = {
            let (registry, registration, every) =
                (registry.clone(), registration.clone(), self.interval);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = registry.register(registration.clone(), ttl_s).await {
                        tracing::warn!("re-registering failed (retrying in {every:?}): {e}");
                    }
                }
            })
        };
        let subscribers: Vec<_> = self
            .subscribers
            .drain(..)
            .map(|s| tokio::spawn(s(client.clone())))
            .collect();

        let (serve_stop, serve_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut server = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some(t) = self.timeout {
            server = server.timeout(t);
        }
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut serving = tokio::spawn(server.add_routes(routes).serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = serve_stop_rx.await;
            },
        ));
        let name = self.name.clone();
        let id = node_id.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let failed = tokio::select! {
                _ = stop_rx => None,
                r = &mut serving => Some(r),
            };
            refresh.abort();
            for s in subscribers {
                s.abort();
            }
            // Leave the registry first, so no new call is routed here while we drain.
            let dereg = tokio::time::timeout(
                Duration::from_secs(5),
                registry.deregister(registration.clone()),
            )
            .await;
            match dereg {
                Ok(Ok(())) => eprintln!("service {name}: deregistered {id}"),
                Ok(Err(e)) => tracing::warn!("deregistering {id} failed: {e}"),
                Err(_) => tracing::warn!("deregistering {id} timed out"),
            }
            let _ = serve_stop.send(());
            let failed = match failed {
                Some(r) => Some(r),
                // In-flight calls get a moment to finish.
                None => tokio::time::timeout(Duration::from_secs(5), serving)
                    .await
                    .ok(),
            };
            match failed {
                Some(Ok(Ok(()))) | None => Ok(()),
                Some(Ok(Err(e))) => Err(Error::Service(format!("serving failed: {e}"))),
                Some(Err(e)) => Err(Error::Service(format!("serving failed: {e}"))),
            }
        });
        Ok(Running {
            address: advertise,
            node_id,
            stop: Some(stop_tx),
            task,
        })
    }
}

/// A started service.
pub struct Running {
    /// The `host:port` it registered.
    pub address: String,
    /// Its node id in the registry.
    pub node_id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Deregisters, then stops serving (in-flight calls get up to 5 s).
    pub async fn stop(&mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::Service(format!("the service stopped: {e}")))?
    }
}

/// The fields of a message as Micro v3's registry describes them (nested messages to a few
/// levels: a recursive message would otherwise never end).
fn value_of(desc: &MessageDescriptor, depth: usize) -> pb::Value {
    let values = desc
        .fields()
        .map(|f| {
            let ty = match f.kind() {
                Kind::Message(m) => {
                    let mut v = if depth < 3 {
                        value_of(&m, depth + 1)
                    } else {
                        pb::Value {
                            name: String::new(),
                            r#type: m.name().to_string(),
                            values: Vec::new(),
                        }
                    };
                    v.name = f.name().to_string();
                    if f.is_list() {
                        v.r#type = format!("[]{}", v.r#type);
                    }
                    return v;
                }
                Kind::Enum(e) => e.name().to_string(),
                k => format!("{k:?}").to_lowercase(),
            };
            pb::Value {
                name: f.name().to_string(),
                r#type: if f.is_list() { format!("[]{ty}") } else { ty },
                values: Vec::new(),
            }
        })
        .collect();
    pb::Value {
        name: desc.name().to_string(),
        r#type: desc.name().to_string(),
        values,
    }
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    // An id that only has to differ between instances: fall back to the clock and pid.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = ((t as u64) ^ u64::from(std::process::id())).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn consume_forever<F, Fut>(client: Client, topic: String, group: String, handler: F)
where
    F: Fn(crate::events::Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let events = client.events();
    loop {
        let req = crate::events::ConsumeRequest {
            topic: topic.clone(),
            group: group.clone(),
            auto_ack: false,
            ..Default::default()
        };
        match events.consume(req).await {
            Ok(mut consumer) => loop {
                match consumer.next().await {
                    Ok(Some(ev)) => {
                        let id = ev.id.clone();
                        let ok = match handler(ev).await {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!("subscriber of {topic} failed on {id}: {e}");
                                false
                            }
                        };
                        if let Err(e) = events.ack(&group, &id, ok).await {
                            tracing::warn!("ack of {id} on {topic} failed: {e}");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("consuming {topic}: {e}");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!("consuming {topic}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn broker_forever<F, Fut>(client: Client, topic: String, handler: F)
where
    F: Fn(crate::proto::broker::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let req = crate::proto::broker::SubscribeRequest {
            topic: topic.clone(),
            ..Default::default()
        };
        match client.broker().subscribe(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => handler(m).await,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!("broker subscription to {topic}: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("broker subscription to {topic}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Who is calling a handler: the caller's token and namespace as the node passed them on.
///
/// The node verified the token before routing the call here, so the claims are read
/// without verifying the signature again: keep service ports private to the cluster (reach
/// them through the node), or check the token with `Auth.Inspect`.
#[derive(Clone, Debug, Default)]
pub struct Context {
    token: Option<String>,
    namespace: Option<String>,
    traceparent: Option<String>,
}

/// The account a token names.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Account {
    /// Account id.
    #[serde(rename = "sub", default)]
    pub id: String,
    /// Its namespace.
    #[serde(rename = "iss", default)]
    pub issuer: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl Context {
    /// The context of a request a handler received.
    pub fn of<T>(req: &tonic::Request<T>) -> Context {
        let md = req.metadata();
        let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        Context {
            token: text("authorization").and_then(|v| {
                v.split_once(' ')
                    .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim().to_string())
            }),
            namespace: text(crate::auth::NAMESPACE_HEADER),
            traceparent: text("traceparent"),
        }
    }

    /// The caller's access token.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The caller's account, read from its token.
    pub fn account(&self) -> Option<Account> {
        use base64::Engine;
        let payload = self.token.as_deref()?.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A request for a downstream call acting for the same caller (token, namespace and
    /// trace context carried on).
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let md = req.metadata_mut();
        if let Some(v) = self
            .token
            .as_ref()
            .and_then(|t| format!("Bearer {t}").parse().ok())
        {
            md.insert("authorization", v);
        }
        if let Some(v) = self.namespace.as_ref().and_then(|n| n.parse().ok()) {
            md.insert(crate::auth::NAMESPACE_HEADER, v);
        }
        if let Some(v) = self.traceparent.as_ref().and_then(|n| n.parse().ok()) {
            md.insert("traceparent", v);
        }
        req
    }
}

/// A layer logging every call a service answers (method, HTTP status, time to the answer's
/// headers; the gRPC status when it came with them) at `tracing`'s info level:
/// `Service::new(..).layer(micro::service::Logging)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Logging;

impl<S> tower::Layer<S> for Logging {
    type Service = LoggingService<S>;

    fn layer(&self, inner: S) -> LoggingService<S> {
        LoggingService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct LoggingService<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<axum::body::Body>> for LoggingService<S>
where
    S: tower::Service<
        http::Request<axum::body::Body>,
        Response = http::Response<axum::body::Body>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let method = req.uri().path().to_string();
        let start = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let grpc_status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            tracing::info!(
                %method,
                http_status = resp.status().as_u16(),
                %grpc_status,
                elapsed_us = start.elapsed().as_micros() as u64,
                "call"
            );
            Ok(resp)
        })
    }
}
