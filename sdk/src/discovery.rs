//! Calling services directly, found through the registry: no hop through a node.
//!
//! ```no_run
//! # #[derive(Clone, PartialEq, prost::Message)] struct Request { #[prost(string, tag = "1")] name: String }
//! # #[derive(Clone, PartialEq, prost::Message)] struct Response { #[prost(string, tag = "1")] msg: String }
//! # async fn demo(client: micro::Client) -> Result<(), micro::Error> {
//! let services = client.services();
//! let resp: Response = services
//!     .call("greeter", "Say.Hello", Request { name: "John".into() })
//!     .await?;
//! // or a generated tonic client over a balanced channel:
//! // let mut say = SayClient::new(services.channel("greeter").await?);
//! # Ok(()) }
//! ```
//!
//! The nodes of a service are read from the registry once and then kept current by a
//! registry watch, so instances that deregister or expire stop getting calls. Each call goes
//! to the next node (round-robin, or the one with the fewest calls in flight); a call that
//! fails with `UNAVAILABLE` — gRPC's code for "not processed, safe to retry" — or whose
//! connection broke under it (an instance killed mid-call may have run it) is retried on
//! another node, and a node that could not be reached is passed over for a few seconds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::proto::registry as pb;
use crate::{Client, Error};

/// How a node is chosen for each call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each node in turn.
    #[default]
    RoundRobin,
    /// The node with the fewest calls in flight from this client.
    LeastOutstanding,
}

/// Whether a failed call may be tried on another node: `UNAVAILABLE` (gRPC's "not
/// processed"), or the connection failing under it — a status with a transport error as its
/// source did not come from the service (an instance killed mid-call may have run it).
pub fn retryable(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable || std::error::Error::source(s).is_some()
}

/// How long a node that could not be reached is passed over.
pub const EJECT_FOR: Duration = Duration::from_secs(5);

/// Nodes that could not be reached lately: passed over for [`EJECT_FOR`] while others are
/// left (shared with the node's proxy).
#[derive(Debug, Default)]
pub struct Ejections(Mutex<HashMap<String, Instant>>);

impl Ejections {
    /// Passes `address` over for a while.
    pub fn eject(&self, address: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string(), Instant::now() + EJECT_FOR);
    }

    /// The nodes to choose from: those not `tried` yet, without the ejected ones unless only
    /// ejected ones are left.
    pub fn candidates<'a, T>(
        &self,
        all: &'a [T],
        address: impl Fn(&T) -> &str,
        tried: &[String],
    ) -> Vec<&'a T> {
        let now = Instant::now();
        let mut ej = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ej.retain(|_, until| *until > now);
        let fresh: Vec<&T> = all
            .iter()
            .filter(|n| !tried.iter().any(|t| t == address(n)))
            .collect();
        let healthy: Vec<&T> = fresh
            .iter()
            .copied()
            .filter(|n| !ej.contains_key(address(n)))
            .collect();
        if healthy.is_empty() {
            fresh
        } else {
            healthy
        }
    }
}

struct Instance {
    address: String,
    channel: Channel,
    outstanding: Arc<AtomicUsize>,
}

struct Known {
    instances: RwLock<Vec<Arc<Instance>>>,
    endpoints: RwLock<Vec<pb::Endpoint>>,
    next: AtomicUsize,
    ejected: Ejections,
    /// The registry watch keeping this current (it waits on the server: aborted on drop).
    watcher: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Known {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.get() {
            w.abort();
        }
    }
}

/// What is known of each service, found once: a lookup on every call is a plain lock and a
/// map read; only the first call for a service waits for the registry.
type KnownMap = HashMap<String, Arc<tokio::sync::OnceCell<Arc<Known>>>>;

/// Services found through the registry. Cheap to clone; clones share what they found.
#[derive(Clone)]
pub struct Services {
    client: Client,
    balance: Balance,
    retries: usize,
    known: Arc<Mutex<KnownMap>>,
}

impl Services {
    pub(crate) fn new(client: Client) -> Services {
        Services {
            client,
            balance: Balance::default(),
            retries: 2,
            known: Arc::default(),
        }
    }

    /// How nodes are chosen (default round-robin).
    pub fn balance(mut self, b: Balance) -> Self {
        self.balance = b;
        self
    }

    /// How many other nodes a call failing with `UNAVAILABLE` is retried on (default 2).
    pub fn retries(mut self, n: usize) -> Self {
        self.retries = n;
        self
    }

    async fn known(&self, service: &str) -> Result<Arc<Known>, Error> {
        let cell = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.find(service)).await.cloned()
    }

    async fn find(&self, service: &str) -> Result<Arc<Known>, Error> {
        let registry = self.client.registry();
        // Watch first, then read: a change between the two is not missed.
        let mut watch = registry.watch(Some(service), 0).await?;
        let versions = registry.get(service).await?;
        let known = Arc::new(Known {
            instances: RwLock::new(Vec::new()),
            endpoints: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            ejected: Ejections::default(),
            watcher: std::sync::OnceLock::new(),
        });
        known.update(versions)?;
        let weak = Arc::downgrade(&known);
        let name = service.to_string();
        let watcher = tokio::spawn(async move {
            // Every change of the service: read it whole again.
            loop {
                match watch.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match registry.watch(Some(&name), watch.resume_from()).await {
                            Ok(w) => watch = w,
                            Err(_) => continue,
                        }
                    }
                }
                let Some(k) = weak.upgrade() else { return };
                match registry.get(&name).await {
                    Ok(v) => {
                        let _ = k.update(v);
                    }
                    Err(e) if e.is_not_found() => {
                        let _ = k.update(Vec::new());
                    }
                    Err(_) => {}
                }
            }
        });
        let _ = known.watcher.set(watcher);
        Ok(known)
    }

    /// Calls `endpoint` (`Say.Hello`) of `service` with a prost message.
    pub async fn call<Req, Resp>(
        &self,
        service: &str,
        endpoint: &str,
        req: Req,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let known = self.known(service).await?;
        let path: http::uri::PathAndQuery = known
            .path(service, endpoint)?
            .parse()
            .map_err(|e| Error::Service(format!("bad endpoint {endpoint}: {e}")))?;
        let mut tried = Vec::new();
        loop {
            let inst = known.pick(self.balance, &tried, service)?;
            let _in_flight = Outstanding::new(&inst.outstanding);
            let mut grpc = tonic::client::Grpc::new(inst.channel.clone());
            let answer = match grpc.ready().await {
                Ok(()) => {
                    let mut request = tonic::Request::new(req.clone());
                    self.client.authorize(&mut request);
                    grpc.unary(
                        request,
                        path.clone(),
                        tonic_prost::ProstCodec::<Req, Resp>::default(),
                    )
                    .await
                }
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match answer {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if retryable(&s) && tried.len() < self.retries => {
                    known.eject(&inst.address);
                    tried.push(inst.address.clone());
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// A channel to `service` for generated tonic clients: each call goes to a node chosen
    /// as [`Services::balance`] says, carrying this client's token.
    pub async fn channel(&self, service: &str) -> Result<ServiceChannel, Error> {
        let known = self.known(service).await?;
        Ok(ServiceChannel {
            known,
            service: service.to_string(),
            balance: self.balance,
            client: self.client.clone(),
        })
    }

    /// The addresses of `service`'s nodes this client knows now.
    pub async fn nodes(&self, service: &str) -> Result<Vec<String>, Error> {
        let known = self.known(service).await?;
        let list = known
            .instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|i| i.address.clone())
            .collect();
        Ok(list)
    }
}

impl Known {
    fn update(&self, versions: Vec<pb::Service>) -> Result<(), Error> {
        let mut instances = self.instances.write().unwrap_or_else(|e| e.into_inner());
        let old: HashMap<String, Arc<Instance>> = instances
            .drain(..)
            .map(|i| (i.address.clone(), i))
            .collect();
        let mut endpoints = Vec::new();
        for s in versions {
            for n in s.nodes {
                if instances.iter().any(|i| i.address == n.address) {
                    continue;
                }
                let inst = match old.get(&n.address) {
                    Some(i) => i.clone(),
                    None => Arc::new(Instance {
                        channel: channel_to(&n.address)?,
                        address: n.address,
                        outstanding: Arc::new(AtomicUsize::new(0)),
                    }),
                };
                instances.push(inst);
            }
            for e in s.endpoints {
                if !endpoints.iter().any(|x: &pb::Endpoint| x.name == e.name) {
                    endpoints.push(e);
                }
            }
        }
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = endpoints;
        Ok(())
    }

    fn path(&self, service: &str, endpoint: &str) -> Result<String, Error> {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        // An endpoint not (yet) registered is called by the convention.
        let unregistered;
        let e = match endpoints
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(endpoint))
        {
            Some(e) => e,
            None => {
                unregistered = pb::Endpoint {
                    name: endpoint.to_string(),
                    ..Default::default()
                };
                &unregistered
            }
        };
        crate::service::grpc_path(service, e)
            .ok_or_else(|| Error::Service(format!("endpoint {endpoint:?} is not Service.Method")))
    }

    fn eject(&self, address: &str) {
        self.ejected.eject(address);
    }

    fn pick(
        &self,
        balance: Balance,
        tried: &[String],
        service: &str,
    ) -> Result<Arc<Instance>, Error> {
        let instances = self.instances.read().unwrap_or_else(|e| e.into_inner());
        let pool = self
            .ejected
            .candidates(&instances, |i| i.address.as_str(), tried);
        if pool.is_empty() {
            return Err(Error::Status(tonic::Status::unavailable(format!(
                "service {service} has no node to call{}",
                if tried.is_empty() {
                    ""
                } else {
                    " (every node failed)"
                }
            ))));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match balance {
            Balance::RoundRobin => pool[start % pool.len()],
            // Ties go round-robin too, so equal nodes share the load.
            Balance::LeastOutstanding => (0..pool.len())
                .map(|k| pool[(start + k) % pool.len()])
                .min_by_key(|i| i.outstanding.load(Ordering::Relaxed))
                .unwrap_or(pool[0]),
        };
        Ok(chosen.clone())
    }
}

fn channel_to(address: &str) -> Result<Channel, Error> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| Error::Service(format!("bad node address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Counts a call in flight on a node for as long as it lives.
struct Outstanding(Arc<AtomicUsize>);

impl Outstanding {
    fn new(c: &Arc<AtomicUsize>) -> Outstanding {
        c.fetch_add(1, Ordering::Relaxed);
        Outstanding(c.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A balanced channel to one service's nodes, for generated tonic clients.
#[derive(Clone)]
pub struct ServiceChannel {
    known: Arc<Known>,
    service: String,
    balance: Balance,
    client: Client,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for ServiceChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let picked = self.known.pick(self.balance, &[], &self.service);
        let known = self.known.clone();
        self.client.authorize_headers(req.headers_mut());
        Box::pin(async move {
            let inst = match picked {
                Ok(i) => i,
                Err(e) => {
                    let status = match e {
                        Error::Status(s) => s,
                        other => tonic::Status::unavailable(other.to_string()),
                    };
                    return Ok(status.into_http());
                }
            };
            let _in_flight = Outstanding::new(&inst.outstanding);
            let mut ch = inst.channel.clone();
            use tower::ServiceExt;
            let r = match ch.ready().await {
                Ok(ch) => tower::Service::call(ch, req).await,
                Err(e) => Err(e),
            };
            if r.is_err() {
                known.eject(&inst.address);
            }
            r
        })
    }
}
