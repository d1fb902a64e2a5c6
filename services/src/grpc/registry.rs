//! `registry.Registry`, Micro v3 compatible, replicated: every node answers the same, and
//! `Watch` can start at any retained revision.

use micro_cluster::{Node, WatchSpec};
use micro_proto::registry as pb;
use micro_state::keys;
use micro_state::views::registry::{self as view, Registry, WILDCARD_DOMAIN};
use prost::Message;
use std::collections::BTreeMap;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::errors::{invalid, status};

/// The longest TTL a registration may ask for (a year, as for leases).
const MAX_TTL_SECONDS: i64 = 365 * 24 * 3600;

pub struct RegistryService {
    node: Node,
}

impl RegistryService {
    pub fn server(node: Node) -> pb::registry_server::RegistryServer<RegistryService> {
        pb::registry_server::RegistryServer::new(RegistryService { node })
    }
}

/// The domain a request names (`options.domain`), else the request's namespace (Micro v3:
/// domain = namespace); an account may only use its own (admins any, and `*`).
fn domain_of(caller: &Caller, opts: &Option<pb::Options>) -> Result<String, Status> {
    let d = opts.as_ref().map_or("", |o| o.domain.as_str());
    caller.namespace_or("options.domain", d)
}

/// A stored service version as the wire has it.
fn to_pb(domain: &str, svc: view::Service) -> Result<pb::Service, Status> {
    let endpoints = svc
        .endpoints
        .iter()
        .map(|b| pb::Endpoint::decode(b.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::internal(format!("corrupt endpoint in the registry: {e}")))?;
    Ok(pb::Service {
        name: svc.name,
        version: svc.version,
        metadata: svc.metadata.into_iter().collect(),
        endpoints,
        nodes: svc
            .nodes
            .into_iter()
            .map(|(id, n)| pb::Node {
                id,
                address: n.address,
                port: n.port,
                metadata: n.metadata.into_iter().collect(),
            })
            .collect(),
        options: Some(pb::Options {
            ttl: 0,
            domain: domain.to_string(),
        }),
    })
}

fn register_cmd(caller: &Caller, s: pb::Service) -> Result<view::Register, Status> {
    let ttl = s.options.as_ref().map_or(0, |o| o.ttl);
    if !(0..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(invalid(
            "options.ttl",
            format!("is {ttl}; use 0 (never expire) to {MAX_TTL_SECONDS} seconds"),
        ));
    }
    let mut nodes = BTreeMap::new();
    for (i, n) in s.nodes.into_iter().enumerate() {
        if n.id.is_empty() {
            return Err(invalid(&format!("nodes[{i}].id"), "must not be empty"));
        }
        nodes.insert(
            n.id,
            view::Node {
                address: n.address,
                port: n.port,
                metadata: n.metadata.into_iter().collect(),
                lease: 0,
            },
        );
    }
    Ok(view::Register {
        domain: domain_of(caller, &s.options)?,
        name: s.name,
        version: s.version,
        metadata: s.metadata.into_iter().collect(),
        endpoints: s.endpoints.iter().map(Message::encode_to_vec).collect(),
        nodes,
        ttl_ms: ttl as u64 * 1000,
    })
}

type WatchStream = super::feed::ResponseStream<pb::Result>;

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn get_service(
        &self,
        req: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        if req.service.is_empty() {
            return Err(invalid("service", "must not be empty"));
        }
        self.node.read_barrier(true).await.map_err(status)?;
        let domain = domain_of(&caller, &req.options)?;
        let found = view::list(self.node.view(), &domain, Some(&req.service))
            .map_err(|e| status(e.into()))?;
        if found.is_empty() {
            return Err(Status::not_found(format!(
                "service {:?} not found in domain {domain:?}",
                req.service
            )));
        }
        let services = found
            .into_iter()
            .map(|(d, s)| to_pb(&d, s))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::GetResponse { services }))
    }

    async fn register(
        &self,
        req: Request<pb::Service>,
    ) -> Result<Response<pb::EmptyResponse>, Status> {
        let cmd = register_cmd(&Caller::of(&req), req.into_inner())?;
        self.node
            .run::<Registry>(view::Cmd::Register(cmd))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EmptyResponse {}))
    }

    async fn deregister(
        &self,
        req: Request<pb::Service>,
    ) -> Result<Response<pb::EmptyResponse>, Status> {
        let caller = Caller::of(&req);
        let s = req.into_inner();
        let cmd = view::Cmd::Deregister {
            domain: domain_of(&caller, &s.options)?,
            name: s.name,
            version: s.version,
            nodes: s.nodes.into_iter().map(|n| n.id).collect(),
        };
        self.node.run::<Registry>(cmd).await.map_err(status)?;
        Ok(Response::new(pb::EmptyResponse {}))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = Caller::of(&req);
        let domain = domain_of(&caller, &req.into_inner().options)?;
        self.node.read_barrier(true).await.map_err(status)?;
        let services = view::list(self.node.view(), &domain, None)
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(|(d, s)| to_pb(&d, s))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListResponse { services }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let domain = domain_of(&caller, &req.options)?;
        let name = (!req.service.is_empty()).then_some(req.service.as_str());
        let key = if domain == WILDCARD_DOMAIN {
            keys::registry_prefix(None, None)
        } else {
            keys::registry_prefix(Some(&domain), name)
        };
        let spec = WatchSpec {
            key,
            prefix: true,
            from_revision: req.from_revision,
            progress_every: None,
        };
        let rx = self.node.watch(spec).await.map_err(status)?;
        // With every domain watched, a name filter cannot be a key prefix: filter here.
        let only = (domain == WILDCARD_DOMAIN).then(|| req.service.clone());
        let stream = super::feed::per_change(rx, move |revision, c| {
            let (d, name, version) = keys::parse_registry_key(&c.key)?;
            if only.as_ref().is_some_and(|o| !o.is_empty() && *o != name) {
                return None;
            }
            let timestamp = (c.time_ms / 1000) as i64;
            let (action, service) = match &c.value {
                None => (
                    "delete",
                    Ok(pb::Service {
                        name,
                        version,
                        options: Some(pb::Options { ttl: 0, domain: d }),
                        ..Default::default()
                    }),
                ),
                Some(v) => (
                    if c.prev_revision == 0 {
                        "create"
                    } else {
                        "update"
                    },
                    micro_state::codec::decode::<view::Service>(v)
                        .map_err(super::feed::corrupt)
                        .and_then(|s| to_pb(&d, s)),
                ),
            };
            Some(service.map(|service| pb::Result {
                action: action.into(),
                service: Some(service),
                timestamp,
                revision,
            }))
        });
        Ok(Response::new(stream))
    }
}
