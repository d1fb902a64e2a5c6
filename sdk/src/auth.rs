//! Credentials and tokens: every call carries `authorization: Bearer <access token>`.
//!
//! A client logs in once when it connects (an account's id and secret, a refresh token, or
//! an access token you already have) and keeps its access token fresh in the background:
//! a new one is fetched with the refresh token when three quarters of its life have passed.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use crate::proto::auth as pb;
use crate::Error;

/// The gRPC metadata naming the namespace a request acts in.
pub const NAMESPACE_HEADER: &str = "micro-namespace";

/// How a client proves who it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Anonymous: only public endpoints (and what public rules grant) work.
    #[default]
    None,
    /// An access token to send as it is (it is not refreshed).
    Token(String),
    /// An account's id (or name) and secret.
    Account { id: String, secret: String },
    /// A refresh token from an earlier login.
    Refresh(String),
}

impl std::fmt::Debug for Credentials {
    // Never print a secret or a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => write!(f, "None"),
            Credentials::Token(_) => write!(f, "Token(..)"),
            Credentials::Account { id, .. } => write!(f, "Account {{ id: {id:?}, .. }}"),
            Credentials::Refresh(_) => write!(f, "Refresh(..)"),
        }
    }
}

impl Credentials {
    /// From the environment, as Micro v3 hands them to services: `MICRO_AUTH_TOKEN`, else
    /// `MICRO_AUTH_ID` + `MICRO_AUTH_SECRET`.
    pub fn from_env() -> Credentials {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(t) = var("MICRO_AUTH_TOKEN") {
            return Credentials::Token(t);
        }
        match (var("MICRO_AUTH_ID"), var("MICRO_AUTH_SECRET")) {
            (Some(id), Some(secret)) => Credentials::Account { id, secret },
            _ => Credentials::None,
        }
    }
}

/// A token as the server issued it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds.
    pub created: i64,
    pub expiry: i64,
}

impl From<pb::Token> for Token {
    fn from(t: pb::Token) -> Self {
        Token {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            created: t.created,
            expiry: t.expiry,
        }
    }
}

#[derive(Default)]
pub(crate) struct Shared {
    bearer: RwLock<Option<AsciiMetadataValue>>,
    token: RwLock<Token>,
    namespace: Option<AsciiMetadataValue>,
}

/// Adds the current access token (and the namespace, if one was chosen) to every call.
#[derive(Clone, Default)]
pub struct Authorizer {
    shared: Arc<Shared>,
}

impl Interceptor for Authorizer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut req);
        Ok(req)
    }
}

impl Authorizer {
    fn bearer_value(&self) -> Option<AsciiMetadataValue> {
        self.shared
            .bearer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds the token (and the namespace, unless the request names one) to a request: on
    /// every call of every SDK client, so straight into its metadata.
    pub(crate) fn apply<T>(&self, req: &mut tonic::Request<T>) {
        let md = req.metadata_mut();
        if let Some(b) = self.bearer_value() {
            md.insert("authorization", b);
        }
        if let Some(ns) = &self.shared.namespace {
            if !md.contains_key(NAMESPACE_HEADER) {
                md.insert(NAMESPACE_HEADER, ns.clone());
            }
        }
    }

    /// The same for a request's HTTP headers (channels that do not go through the
    /// interceptor, e.g. straight to a service's node).
    pub(crate) fn headers(&self, h: &mut http::HeaderMap) {
        let value = |v: &AsciiMetadataValue| http::HeaderValue::from_bytes(v.as_encoded_bytes());
        if let Some(Ok(v)) = self.bearer_value().as_ref().map(value) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        if let Some(ns) = &self.shared.namespace {
            if !h.contains_key(NAMESPACE_HEADER) {
                if let Ok(v) = value(ns) {
                    h.insert(NAMESPACE_HEADER, v);
                }
            }
        }
    }
}

/// What every client of the SDK talks through: a channel that authenticates its calls.
pub type Transport = InterceptedService<Channel, Authorizer>;

fn bearer(token: &str) -> Result<AsciiMetadataValue, Error> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::Status(tonic::Status::invalid_argument("token is not ASCII")))
}

impl Authorizer {
    pub(crate) fn new(namespace: Option<&str>) -> Result<Authorizer, Error> {
        let namespace = match namespace {
            Some(ns) => Some(ns.parse().map_err(|_| {
                Error::Status(tonic::Status::invalid_argument(format!(
                    "namespace {ns:?} is not ASCII"
                )))
            })?),
            None => None,
        };
        Ok(Authorizer {
            shared: Arc::new(Shared {
                namespace,
                ..Default::default()
            }),
        })
    }

    pub(crate) fn set(&self, token: Token) -> Result<(), Error> {
        let b = bearer(&token.access_token)?;
        *self
            .shared
            .bearer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(b);
        *self.shared.token.write().unwrap_or_else(|e| e.into_inner()) = token;
        Ok(())
    }

    pub(crate) fn token(&self) -> Token {
        self.shared
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Logs in with `creds` over `channel` and, for renewable credentials, keeps the token
    /// fresh until every client using this authorizer is gone.
    pub(crate) async fn login(
        &self,
        channel: &Channel,
        creds: &Credentials,
        lifetime: Option<Duration>,
    ) -> Result<(), Error> {
        match creds {
            Credentials::None => return Ok(()),
            Credentials::Token(t) => {
                return self.set(Token {
                    access_token: t.clone(),
                    ..Default::default()
                })
            }
            Credentials::Account { .. } | Credentials::Refresh(_) => {}
        }
        let token = fetch(channel, &self.shared.namespace, creds, lifetime).await?;
        self.set(token.clone())?;
        let renew = match creds {
            // A refresh token logs in again with itself; an account with the refresh token it
            // just got (no secret hashing on the server for every renewal).
            Credentials::Refresh(_) => creds.clone(),
            _ if !token.refresh_token.is_empty() => Credentials::Refresh(token.refresh_token),
            _ => creds.clone(),
        };
        tokio::spawn(keep_fresh(
            channel.clone(),
            Arc::downgrade(&self.shared),
            renew,
            creds.clone(),
            lifetime,
        ));
        Ok(())
    }
}

/// Asks the server for a token.
pub(crate) async fn fetch(
    channel: &Channel,
    namespace: &Option<AsciiMetadataValue>,
    creds: &Credentials,
    lifetime: Option<Duration>,
) -> Result<Token, Error> {
    let mut req = pb::TokenRequest {
        token_expiry: lifetime.map_or(0, |d| d.as_secs() as i64),
        ..Default::default()
    };
    match creds {
        Credentials::Account { id, secret } => {
            req.id = id.clone();
            req.secret = secret.clone();
        }
        Credentials::Refresh(r) => req.refresh_token = r.clone(),
        Credentials::None | Credentials::Token(_) => {
            return Err(Error::Status(tonic::Status::invalid_argument(
                "these credentials cannot log in",
            )))
        }
    }
    let mut req = tonic::Request::new(req);
    if let Some(ns) = namespace {
        req.metadata_mut().insert(NAMESPACE_HEADER, ns.clone());
    }
    let resp = pb::auth_client::AuthClient::new(channel.clone())
        .token(req)
        .await?
        .into_inner();
    resp.token
        .map(Token::from)
        .ok_or_else(|| Error::Status(tonic::Status::internal("the server sent no token")))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn keep_fresh(
    channel: Channel,
    shared: Weak<Shared>,
    renew: Credentials,
    original: Credentials,
    lifetime: Option<Duration>,
) {
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = {
            let Some(s) = shared.upgrade() else { return };
            let t = s.token.read().unwrap_or_else(|e| e.into_inner()).clone();
            let life = (t.expiry - t.created).max(4);
            let at = t.created + life * 3 / 4;
            Duration::from_secs((at - now_s()).max(1) as u64)
        };
        tokio::time::sleep(wait).await;
        let Some(s) = shared.upgrade() else { return };
        let ns = s.namespace.clone();
        drop(s);
        let got = match fetch(&channel, &ns, &renew, lifetime).await {
            Err(e) if e.code() == Some(tonic::Code::Unauthenticated) && original != renew => {
                // The refresh token was revoked (secret changed): the secret may still work.
                fetch(&channel, &ns, &original, lifetime).await
            }
            other => other,
        };
        match got {
            Ok(t) => {
                retry = Duration::from_secs(1);
                let Some(s) = shared.upgrade() else { return };
                if let Ok(b) = bearer(&t.access_token) {
                    *s.bearer.write().unwrap_or_else(|e| e.into_inner()) = Some(b);
                    *s.token.write().unwrap_or_else(|e| e.into_inner()) = t;
                }
            }
            Err(_) => {
                // The server is unreachable or refusing: try again soon, backing off.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}
