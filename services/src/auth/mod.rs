//! Authentication and authorisation of every client request.
//!
//! One enforcement point: a tower layer in front of every gRPC service ([`AuthLayer`]). The
//! HTTP gateway calls this node's gRPC port passing the caller's token along, so HTTP, SSE
//! and gRPC clients meet the same checks. The layer verifies the bearer token locally (the
//! signing keys are in the replicated state), picks the namespace (`micro-namespace`, else
//! the token's issuer, else `micro`), and decides:
//!
//! - `auth.Auth/Token` is public (it is how one logs in);
//! - cluster administration (membership, snapshots) and auth administration need an admin of
//!   namespace `micro` ([`Claims::is_cluster_admin`]), who may also do everything else;
//! - anything else is decided by the namespace's rules ([`rules`]), Micro v3's evaluation.
//!   There is no default rule: what no rule grants is forbidden.
//!
//! No valid account and not allowed: `UNAUTHENTICATED` (HTTP 401). An account that is not
//! allowed: `PERMISSION_DENIED` (403). The [`Caller`] goes to the handlers in the request's
//! extensions, for namespacing their data.

pub mod bootstrap;
pub mod rules;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use micro_cluster::Node;
use micro_proto::PUBLIC_PACKAGES;
use micro_state::views::auth as view;
use tonic::codegen::BoxFuture;
use tonic::Status;

use rules::{Resource, RuleSet, Subject};
pub use token::Claims;
use token::Verifier;

/// The namespace when neither the request nor its token names one.
pub const DEFAULT_NAMESPACE: &str = "micro";
/// The metadata (and HTTP header) naming the namespace of a request.
pub const NAMESPACE_HEADER: &str = "micro-namespace";

/// Who made a request, as the auth layer established it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified token's claims (None: no token, on a public endpoint).
    pub claims: Option<Arc<Claims>>,
    /// The namespace the request acts in.
    pub namespace: String,
    /// An admin of every namespace (or auth is disabled).
    pub admin: bool,
}

impl Caller {
    /// The caller of a request; without the layer (in-process use), nobody in particular.
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller {
                claims: None,
                namespace: DEFAULT_NAMESPACE.into(),
                admin: false,
            })
    }

    /// Checks that the caller may act in namespace `ns` (a request field naming one): its
    /// own, or any for an admin.
    pub fn may_use(&self, field: &str, ns: &str) -> Result<(), Status> {
        if self.admin || ns == self.namespace {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{field} {ns:?} is not this request's namespace {:?}; an account may only use its own namespace",
            self.namespace
        )))
    }

    /// `ns` if set, else the request's namespace; refused if the caller may not use it.
    pub fn namespace_or(&self, field: &str, ns: &str) -> Result<String, Status> {
        if ns.is_empty() {
            return Ok(self.namespace.clone());
        }
        self.may_use(field, ns)?;
        Ok(ns.to_string())
    }

    /// The stored name of `name` (a topic, lock or election) in the request's namespace, see
    /// [`names`]; a name with a NUL byte is refused, naming `field`.
    pub fn scoped(&self, field: &str, name: &str) -> Result<String, Status> {
        if name.contains('\0') {
            return Err(crate::errors::invalid(field, "must not contain a NUL byte"));
        }
        Ok(names::scoped(&self.namespace, name))
    }

    /// The caller's name for a stored one, if it is of the request's namespace.
    pub fn owns<'a>(&self, stored: &'a str) -> Option<&'a str> {
        let (ns, name) = names::split(stored);
        (ns == self.namespace).then_some(name)
    }
}

/// Names that every namespace shares one keyspace for (events and broker topics, locks,
/// elections) are stored per namespace: the `micro` namespace's as given, so what was written
/// before namespaces keeps its name, and another namespace's as `\0ns\0name`. A caller's name
/// never contains NUL (refused on the way in), so the two never collide, and the name a caller
/// sees is always the part after the prefix.
pub mod names {
    use super::DEFAULT_NAMESPACE;

    /// The stored form of `name` in namespace `ns`.
    pub fn scoped(ns: &str, name: &str) -> String {
        if ns == DEFAULT_NAMESPACE {
            name.to_string()
        } else {
            format!("\0{ns}\0{name}")
        }
    }

    /// (namespace, name) of a stored name.
    pub fn split(stored: &str) -> (&str, &str) {
        stored
            .strip_prefix('\0')
            .and_then(|rest| rest.split_once('\0'))
            .unwrap_or((DEFAULT_NAMESPACE, stored))
    }

    /// The name a caller knows a stored name by.
    pub fn shown(stored: &str) -> &str {
        split(stored).1
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn scoped_names_round_trip_and_micro_keeps_its_names() {
            assert_eq!(scoped("micro", "orders"), "orders");
            assert_eq!(split("orders"), ("micro", "orders"));
            let s = scoped("team-a", "orders");
            assert_ne!(s, "orders");
            assert_eq!(split(&s), ("team-a", "orders"));
            assert_eq!(shown(&s), "orders");
            // A name that merely looks scoped (no second NUL) is micro's.
            assert_eq!(split("\0odd"), ("micro", "\0odd"));
            assert_eq!(split(&scoped("b", "x/y")), ("b", "x/y"));
        }

        proptest::proptest! {
            /// Any namespace and NUL-free name round-trip, and never collide with another
            /// namespace's; any stored string splits without panicking.
            #[test]
            fn scoped_names_never_collide(
                ns in "[a-zA-Z0-9._-]{1,12}",
                other in "[a-zA-Z0-9._-]{1,12}",
                name in "[^\u{0}]{0,24}",
                raw in ".{0,40}",
            ) {
                let stored = scoped(&ns, &name);
                proptest::prop_assert_eq!(split(&stored), (ns.as_str(), name.as_str()));
                if other != ns {
                    proptest::prop_assert_ne!(scoped(&other, &name), stored);
                }
                let _ = split(&raw);
            }
        }
    }
}

/// What a method needs beyond a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: anyone may call it.
    Public,
    /// Any valid account (the handler checks the rest).
    Account,
    /// An admin of namespace `micro`.
    Admin,
    /// What the namespace's rules grant.
    Rules,
}

fn need(service: &str, method: &str) -> Need {
    match (service, method) {
        ("auth.Auth", "Token") => Need::Public,
        ("auth.Auth", "Inspect") | ("auth.Accounts", "ChangeSecret") => Need::Account,
        ("auth.Auth", _) | ("auth.Accounts", _) | ("auth.Rules", _) => Need::Admin,
        ("cluster.Cluster", "Status") => Need::Rules,
        // The cluster's config-secret key, like its token-signing key.
        ("config.Config", "RotateKey") => Need::Admin,
        ("cluster.Cluster", _) => Need::Admin,
        // A user service's descriptors and health carry no data: any account may read them
        // (the gateway and the CLI need them to call what the rules allow).
        ("grpc.reflection.v1.ServerReflection", _) | ("grpc.health.v1.Health", _) => Need::Account,
        _ => Need::Rules,
    }
}

/// The cluster's signing keys, creating the first if there is none yet (the first proposal
/// wins cluster-wide; the others change nothing).
pub async fn signing_keys(node: &Node) -> Result<view::Keys, Status> {
    let internal = |e: micro_state::StorageError| Status::internal(e.to_string());
    if let Some(ks) = view::signing_keys(node.view()).map_err(internal)? {
        return Ok(ks);
    }
    let (pkcs8, public) = token::new_key_pair().map_err(Status::internal)?;
    node.run::<view::Auth>(view::Cmd::InitKey { pkcs8, public })
        .await
        .map_err(crate::errors::status)?;
    view::signing_keys(node.view())
        .map_err(internal)?
        .ok_or_else(|| Status::unavailable("the signing key is not applied here yet; retry"))
}

fn now_s() -> u64 {
    micro_cluster::now_ms() / 1000
}

/// The node's auth state: token verification and the rules of each namespace, cached.
pub struct Authenticator {
    node: Node,
    verifier: Verifier,
    /// (rules epoch they were read at, namespace → rules)
    rules: Mutex<(u64, HashMap<String, Arc<RuleSet>>)>,
    disabled: bool,
}

impl Authenticator {
    pub fn new(node: Node, disabled: bool) -> Arc<Authenticator> {
        Arc::new(Authenticator {
            node,
            verifier: Verifier::new(),
            rules: Mutex::new((0, HashMap::new())),
            disabled,
        })
    }

    /// The claims of a token, verified against the cluster's keys.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, Status> {
        self.verifier
            .verify(token, now_s(), || {
                view::signing_keys(self.node.view()).ok().flatten()
            })
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    fn rules(&self, ns: &str) -> Result<Arc<RuleSet>, Status> {
        let view = self.node.view();
        let epoch = view::rules_epoch(view).map_err(|e| Status::internal(e.to_string()))?;
        let mut cache = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != epoch {
            *cache = (epoch, HashMap::new());
        }
        if let Some(r) = cache.1.get(ns) {
            return Ok(r.clone());
        }
        let set = Arc::new(RuleSet::new(
            &view::rules(view, ns).map_err(|e| Status::internal(e.to_string()))?,
        ));
        cache.1.insert(ns.to_string(), set.clone());
        Ok(set)
    }

    /// Decides a request for gRPC `path` with these headers.
    pub fn authorize(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let header_ns = match headers.get(NAMESPACE_HEADER) {
            Some(v) => {
                let ns = v.to_str().unwrap_or("");
                check_namespace(ns)?;
                Some(ns.to_string())
            }
            None => None,
        };
        if self.disabled {
            return Ok(Caller {
                claims: None,
                namespace: header_ns.unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
                admin: true,
            });
        }
        let claims = match bearer(headers)? {
            Some(t) => Some(self.verify(t)?),
            None => None,
        };
        let namespace = header_ns
            .or_else(|| claims.as_ref().map(|c| c.iss.clone()))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let admin = claims.as_ref().is_some_and(|c| c.is_cluster_admin());
        let caller = Caller {
            claims,
            namespace,
            admin,
        };
        // Not a method path: let the router answer (UNIMPLEMENTED, naming what exists).
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Ok(caller);
        };
        // A call routed to a user service by header is that service's (v3's Micro-Service).
        let routed = headers
            .get(micro::reflection::SERVICE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|_| {
                let pkg = service.rsplit_once('.').map_or(service, |(p, _)| p);
                !PUBLIC_PACKAGES.contains(&pkg)
            });
        let routed_service = routed.map(|r| {
            let svc = service.rsplit_once('.').map_or(service, |(_, s)| s);
            format!("{r}.{svc}")
        });
        // The node's own health carries no data (a user service's is that service's).
        let need = if routed.is_none() && service == "grpc.health.v1.Health" {
            Need::Public
        } else {
            need(service, method)
        };
        let service = routed_service.as_deref().unwrap_or(service);
        if need == Need::Public || caller.admin {
            return Ok(caller);
        }
        let Some(claims) = caller.claims.clone() else {
            if need == Need::Rules && self.rules_allow(None, &caller.namespace, service, method)? {
                return Ok(caller);
            }
            return Err(Status::unauthenticated(
                "no credentials: log in (`micro login`, or the SDK's credentials) and send `authorization: Bearer <token>`",
            ));
        };
        let allowed = match need {
            Need::Public | Need::Account => true,
            Need::Admin => false,
            Need::Rules => self.rules_allow(Some(&claims), &caller.namespace, service, method)?,
        };
        if allowed {
            return Ok(caller);
        }
        let (pkg, endpoint) = resource_of(service, method);
        Err(Status::permission_denied(match need {
            Need::Admin => format!(
                "{service}/{method} needs an admin of namespace {DEFAULT_NAMESPACE:?}; account {:?} of {:?} is not one",
                claims.sub, claims.iss
            ),
            _ => format!(
                "account {:?} of namespace {:?} may not access service:{pkg}:{endpoint} in namespace {:?} (no rule grants it)",
                claims.sub, claims.iss, caller.namespace
            ),
        }))
    }

    fn rules_allow(
        &self,
        claims: Option<&Claims>,
        ns: &str,
        service: &str,
        method: &str,
    ) -> Result<bool, Status> {
        let (pkg, endpoint) = resource_of(service, method);
        let subject = claims.map(|c| Subject {
            issuer: &c.iss,
            scopes: &c.scopes,
        });
        Ok(self
            .rules(ns)?
            .allows(subject.as_ref(), ns, &Resource::service(pkg, &endpoint)))
    }
}

/// `store.Store`, `Read` → (`store`, `Store.Read`): Micro's resource for a gRPC method.
fn resource_of<'a>(service: &'a str, method: &str) -> (&'a str, String) {
    match service.rsplit_once('.') {
        Some((pkg, svc)) => (pkg, format!("{svc}.{method}")),
        None => (service, method.to_string()),
    }
}

/// A namespace name: what Micro v3 accepts (letters, digits, `-`, `_`, `.`).
pub fn check_namespace(ns: &str) -> Result<(), Status> {
    let ok = !ns.is_empty()
        && ns.len() <= 128
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{NAMESPACE_HEADER} {ns:?} is not a namespace (1-128 of letters, digits, '-', '_', '.')"
        )))
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Status> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization is not text"))?;
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(Status::unauthenticated(
            "authorization must be `Bearer <token>`",
        )),
    }
}

/// The tower layer enforcing auth in front of the gRPC services.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.auth.authorize(req.uri().path(), req.headers()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_what_the_issue_says() {
        assert_eq!(need("auth.Auth", "Token"), Need::Public);
        assert_eq!(need("auth.Auth", "Generate"), Need::Admin);
        assert_eq!(need("auth.Rules", "Create"), Need::Admin);
        assert_eq!(need("cluster.Cluster", "RemoveMember"), Need::Admin);
        assert_eq!(need("cluster.Cluster", "Snapshot"), Need::Admin);
        assert_eq!(need("store.Store", "Read"), Need::Rules);
        assert_eq!(
            resource_of("store.Store", "Read"),
            ("store", "Store.Read".to_string())
        );
    }

    #[test]
    fn bearer_and_namespace_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        assert!(check_namespace("team-a").is_ok());
        assert!(check_namespace("").is_err());
        assert!(check_namespace("a/b").is_err());
    }
}
