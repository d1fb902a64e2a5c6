//! Calling users' services: finding their nodes in the registry, balancing across them, and
//! forwarding gRPC calls untouched (the proxy) — what the gateway, `/rpc` and any gRPC client
//! pointed at a node use to reach a service the node does not host.
//!
//! A call for `/greeter.Say/Hello` goes to the registered service named by the
//! `micro-service` header (Micro v3's `Micro-Service`), else by the path's proto package
//! (`greeter`; for `acme.greeter.v1.Say` first `acme.greeter.v1`, then `acme`), in the
//! caller's namespace (its registry domain). Nodes are taken round-robin; a node that could
//! not be reached is skipped for [`EJECT_FOR`] (the registry drops it when its TTL runs out).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use micro::proto::registry as rpb;
use micro::reflection::SERVICE_HEADER;
use micro_cluster::Node;
use micro_state::views::events as events_view;
use micro_state::views::registry as view;
use prost::Message;
use prost_reflect::DescriptorPool;
use tonic::transport::Channel;
use tonic::Status;

use crate::auth::Caller;

pub use micro::discovery::EJECT_FOR;

/// How long reading a service's descriptors may take.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// One registered node of a service.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub address: String,
}

/// What the registry says of a service right now.
pub struct Found {
    pub name: String,
    pub nodes: Vec<Instance>,
    pub endpoints: Vec<rpb::Endpoint>,
    /// Changes when a version or its nodes change (descriptors are re-read then).
    pub fingerprint: Vec<(String, u64)>,
}

impl Found {
    /// The gRPC path of `endpoint` (`Say.Hello`, any case): the one the service registered,
    /// else `/{name}.Say/Hello` as Micro v3 names it.
    pub fn grpc_path(&self, endpoint: &str) -> Option<String> {
        let e = self
            .endpoints
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(endpoint))?;
        micro::service::grpc_path(&self.name, e)
    }
}

/// A service's descriptors and the registration fingerprint they were read at.
type Described = (Vec<(String, u64)>, DescriptorPool);

/// Connections kept to each instance: one HTTP/2 connection is one task on each side, and
/// many callers funnelled through one serialise there.
const CONNECTIONS_PER_INSTANCE: usize = 4;

/// Resolved services, valid while the registry's change counter stays where it was read.
#[derive(Default)]
struct FoundCache {
    registry_seq: u64,
    services: HashMap<(String, String), Arc<Found>>,
}

pub struct Upstreams {
    node: Node,
    found: Mutex<FoundCache>,
    channels: Mutex<HashMap<String, Vec<Channel>>>,
    next: AtomicUsize,
    ejected: micro::discovery::Ejections,
    descriptors: Mutex<HashMap<(String, String), Described>>,
}

impl Upstreams {
    pub fn new(node: Node) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            node,
            found: Mutex::new(FoundCache::default()),
            channels: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            ejected: Default::default(),
            descriptors: Mutex::new(HashMap::new()),
        })
    }

    /// The service `name` in `domain`, from this node's view of the registry. Cached: every
    /// registry change (a registration, a deregistration, a node's TTL running out) is also
    /// published on `registry.events` in the same entry, so that topic's last sequence — one
    /// point read — says whether anything was resolved from an older registry. (Resolving
    /// on every call was the proxy's largest cost of its own: a scan and a decode.)
    pub fn find(&self, domain: &str, name: &str) -> Result<Option<Arc<Found>>, Status> {
        let internal = |e: micro_state::StorageError| Status::internal(e.to_string());
        // Read before the registry itself: a change in between only makes the entry stale
        // for one call.
        let seq = events_view::topic_meta(self.node.view(), view::EVENTS_TOPIC)
            .map_err(internal)?
            .last_seq;
        let key = (domain.to_string(), name.to_string());
        {
            let mut cache = self.found.lock().unwrap_or_else(|e| e.into_inner());
            if cache.registry_seq != seq {
                cache.registry_seq = seq;
                cache.services.clear();
            } else if let Some(f) = cache.services.get(&key) {
                return Ok(Some(f.clone()));
            }
        }
        let Some(found) = self.read(domain, name)? else {
            return Ok(None);
        };
        let found = Arc::new(found);
        let mut cache = self.found.lock().unwrap_or_else(|e| e.into_inner());
        if cache.registry_seq == seq {
            cache.services.insert(key, found.clone());
        }
        Ok(Some(found))
    }

    fn read(&self, domain: &str, name: &str) -> Result<Option<Found>, Status> {
        let versions = view::list(self.node.view(), domain, Some(name))
            .map_err(|e| Status::internal(e.to_string()))?;
        if versions.is_empty() {
            return Ok(None);
        }
        let mut found = Found {
            name: name.to_string(),
            nodes: Vec::new(),
            endpoints: Vec::new(),
            fingerprint: Vec::new(),
        };
        for (_, svc) in versions {
            found
                .fingerprint
                .push((svc.version.clone(), svc.mod_revision));
            for (id, n) in svc.nodes {
                found.nodes.push(Instance {
                    id,
                    address: n.address,
                });
            }
            for e in &svc.endpoints {
                if let Ok(e) = rpb::Endpoint::decode(e.as_slice()) {
                    if !found.endpoints.iter().any(|x| x.name == e.name) {
                        found.endpoints.push(e);
                    }
                }
            }
        }
        Ok(Some(found))
    }

    /// The service a gRPC call is for: the `micro-service` header, else the path's package.
    pub fn resolve(
        &self,
        domain: &str,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Found>, Status> {
        if let Some(h) = headers.get(SERVICE_HEADER) {
            let name = h
                .to_str()
                .map_err(|_| Status::invalid_argument("micro-service is not text"))?;
            return self
                .find(domain, name)?
                .ok_or_else(|| not_found(name, domain));
        }
        let service = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map(|(s, _)| s)
            .ok_or_else(|| Status::unimplemented(format!("{path} is not a gRPC method")))?;
        let package = service.rsplit_once('.').map_or("", |(p, _)| p);
        let first = package.split('.').next().unwrap_or("");
        if micro_proto::PUBLIC_PACKAGES.contains(&package) || package == "raft" {
            // An empty message: the front-errors layer names what exists.
            return Err(Status::unimplemented(""));
        }
        for name in [package, first] {
            if !name.is_empty() {
                if let Some(f) = self.find(domain, name)? {
                    return Ok(f);
                }
            }
        }
        Err(Status::unimplemented(""))
    }

    /// The next node of `found` (round-robin), skipping `tried` and recently unreachable
    /// nodes while others are left.
    pub fn pick(&self, found: &Found, tried: &[String]) -> Result<(Instance, Channel), Status> {
        let pool = self
            .ejected
            .candidates(&found.nodes, |n| n.address.as_str(), tried);
        if pool.is_empty() {
            return Err(Status::unavailable(format!(
                "service {} has no node left to try (tried {})",
                found.name,
                tried.join(", ")
            )));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        let inst = pool[i].clone();
        let channel = self.channel(&inst.address)?;
        Ok((inst, channel))
    }

    /// Marks a node as unreachable for a while.
    pub fn failed(&self, address: &str) {
        self.ejected.eject(address);
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let pool = map.entry(address.to_string()).or_default();
        let i = self.next.load(Ordering::Relaxed) % CONNECTIONS_PER_INSTANCE;
        if let Some(c) = pool.get(i) {
            return Ok(c.clone());
        }
        let url = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let c = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| Status::internal(format!("bad node address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        pool.push(c.clone());
        Ok(c)
    }

    /// The descriptors of `found`'s gRPC services, read by reflection from one of its nodes
    /// and kept until the service's registration changes.
    pub async fn descriptors(&self, domain: &str, found: &Found) -> Result<DescriptorPool, Status> {
        let key = (domain.to_string(), found.name.clone());
        if let Some((fp, pool)) = self
            .descriptors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if *fp == found.fingerprint {
                return Ok(pool.clone());
            }
        }
        // Read without holding the cache (two callers may both read after a change; neither
        // waits for the other's service).
        let mut tried = Vec::new();
        let pool = loop {
            let (inst, channel) = self.pick(found, &tried)?;
            // Bounded: an instance that accepts connections but never answers.
            let fetched = tokio::time::timeout(
                REFLECTION_TIMEOUT,
                micro::reflection::descriptors(channel, None),
            )
            .await
            .unwrap_or_else(|_| {
                Err(micro::Error::Status(Status::unavailable(format!(
                    "no reflection answer within {REFLECTION_TIMEOUT:?}"
                ))))
            });
            match fetched {
                Ok(p) => break p,
                // Not a service's answer, or one another node may not give: try another.
                Err(micro::Error::Status(st)) if micro::discovery::retryable(&st) => {
                    tracing::debug!("reflection on {} failed: {st}", inst.address);
                    self.failed(&inst.address);
                    tried.push(inst.address);
                }
                Err(e @ (micro::Error::Connect { .. } | micro::Error::Service(_))) => {
                    tracing::debug!("reflection on {} failed: {e}", inst.address);
                    tried.push(inst.address);
                }
                Err(e) => {
                    return Err(Status::failed_precondition(format!(
                        "cannot read service {}'s descriptors (does it serve gRPC reflection, as the SDK's services do?): {e}",
                        found.name
                    )))
                }
            }
        };
        self.descriptors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (found.fingerprint.clone(), pool.clone()));
        Ok(pool)
    }

    /// Forwards a gRPC call, headers, body and trailers untouched, to a node of the service
    /// it is for.
    pub async fn forward(
        &self,
        req: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        match self.try_forward(req).await {
            Ok(r) => r,
            Err(status) => status.into_http::<axum::body::Body>(),
        }
    }

    async fn try_forward(
        &self,
        req: http::Request<axum::body::Body>,
    ) -> Result<http::Response<axum::body::Body>, Status> {
        let caller = req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            Status::internal("the proxy runs behind the auth layer; no caller was found")
        })?;
        let found = self.resolve(&caller.namespace, req.uri().path(), req.headers())?;
        let (inst, mut channel) = self.pick(&found, &[])?;
        let (mut parts, body) = req.into_parts();
        // The channel supplies scheme and authority: keep only the path.
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = http::Uri::from(pq);
        }
        let req = http::Request::from_parts(parts, tonic::body::Body::new(body));
        use tower::ServiceExt;
        let answer = match channel.ready().await {
            Ok(ch) => tower::Service::call(ch, req).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(resp) => Ok(resp.map(axum::body::Body::new)),
            Err(e) => {
                self.failed(&inst.address);
                Err(Status::unavailable(format!(
                    "service {} node {} ({}) is unreachable: {e}",
                    found.name, inst.id, inst.address
                )))
            }
        }
    }
}

fn not_found(name: &str, domain: &str) -> Status {
    Status::not_found(format!(
        "service {name:?} is not registered in namespace {domain:?}"
    ))
}

/// The gRPC front end's fallback: every call no built-in service answers goes through here.
#[derive(Clone)]
pub struct Proxy(pub Arc<Upstreams>);

impl tower::Service<http::Request<axum::body::Body>> for Proxy {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let up = self.0.clone();
        Box::pin(async move { Ok(up.forward(req).await) })
    }
}
