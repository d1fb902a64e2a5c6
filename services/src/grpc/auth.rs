//! `auth.Auth`, `auth.Accounts`, `auth.Rules`: Micro v3's services over the auth view.
//!
//! Secrets are hashed (argon2, off the async runtime) and refresh tokens digested here, at
//! the edge, so the log and snapshots never hold either in plain text. Who may call what is
//! decided by the auth layer before a handler runs ([`crate::auth`]); handlers only pick the
//! namespace (`options.namespace`, else the request's).

use std::sync::Arc;

use micro_cluster::{now_ms, Node};
use micro_proto::auth as pb;
use micro_state::views::auth::{self as view, Auth};
use tonic::{Request, Response, Status};

use crate::auth::token::{self, Claims};
use crate::auth::{check_namespace, Authenticator, Caller};
use crate::errors::{invalid, status};

/// Access token lifetime when the request asks for none, and the most it may ask for.
pub const DEFAULT_TOKEN_SECS: u64 = 3600;
pub const MAX_TOKEN_SECS: u64 = 24 * 3600;
/// How long a refresh token works.
pub const REFRESH_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Clone)]
pub struct AuthService {
    node: Node,
    auth: Arc<Authenticator>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The namespace a request's `options` name, else the caller's.
fn namespace_of(caller: &Caller, options: &Option<pb::Options>) -> Result<String, Status> {
    let ns = options.as_ref().map(|o| o.namespace.as_str()).unwrap_or("");
    if !ns.is_empty() {
        check_namespace(ns)
            .map_err(|_| invalid("options.namespace", format!("{ns:?} is not a namespace")))?;
    }
    caller.namespace_or("options.namespace", ns)
}

fn account_pb(a: &view::Account) -> pb::Account {
    pb::Account {
        id: a.id.clone(),
        r#type: a.kind.clone(),
        metadata: a.metadata.clone().into_iter().collect(),
        scopes: a.scopes.clone(),
        issuer: a.issuer.clone(),
        secret: String::new(),
        name: a.name.clone(),
    }
}

fn claims_pb(c: &Claims) -> pb::Account {
    pb::Account {
        id: c.sub.clone(),
        r#type: c.kind.clone(),
        metadata: c.metadata.clone().into_iter().collect(),
        scopes: c.scopes.clone(),
        issuer: c.iss.clone(),
        secret: String::new(),
        name: c.name.clone(),
    }
}

/// argon2 is slow on purpose: keep it off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

fn wrong_login() -> Status {
    Status::unauthenticated("wrong id or secret")
}

impl AuthService {
    pub fn new(node: Node, auth: Arc<Authenticator>) -> AuthService {
        AuthService { node, auth }
    }

    pub fn servers(
        node: Node,
        auth: Arc<Authenticator>,
    ) -> (
        pb::auth_server::AuthServer<AuthService>,
        pb::accounts_server::AccountsServer<AuthService>,
        pb::rules_server::RulesServer<AuthService>,
    ) {
        let s = AuthService::new(node, auth);
        (
            pb::auth_server::AuthServer::new(s.clone()),
            pb::accounts_server::AccountsServer::new(s.clone()),
            pb::rules_server::RulesServer::new(s),
        )
    }

    async fn issue(
        &self,
        account: &view::Account,
        lifetime_s: u64,
        refresh_token: String,
    ) -> Result<pb::Token, Status> {
        let keys = crate::auth::signing_keys(&self.node).await?;
        let now = now_ms() / 1000;
        let claims = Claims::for_account(account, now, lifetime_s);
        let access = token::sign(&keys, &claims).map_err(internal)?;
        Ok(pb::Token {
            access_token: access,
            refresh_token,
            created: now as i64,
            expiry: claims.exp as i64,
        })
    }

    async fn propose(&self, cmd: view::Cmd) -> Result<view::Out, Status> {
        Ok(self.node.run::<Auth>(cmd).await.map_err(status)?.1)
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace_of(&caller, &r.options)?;
        if r.id.is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        let kind = if r.r#type.is_empty() {
            "user".to_string()
        } else {
            r.r#type
        };
        let secret = if r.secret.is_empty() {
            token::new_secret().map_err(internal)?
        } else {
            r.secret
        };
        let plain = secret.clone();
        let hash = blocking(move || token::hash_secret(&plain))
            .await?
            .map_err(internal)?;
        let account = view::Account {
            name: if r.name.is_empty() {
                r.id.clone()
            } else {
                r.name
            },
            id: r.id,
            kind,
            issuer: ns.clone(),
            scopes: r.scopes,
            metadata: r.metadata.into_iter().collect(),
            secret_hash: hash,
            created_ms: 0,
        };
        match self
            .propose(view::Cmd::CreateAccount(account.clone()))
            .await?
        {
            view::Out::Done => {
                let mut out = account_pb(&account);
                out.secret = secret;
                Ok(Response::new(pb::GenerateResponse { account: Some(out) }))
            }
            view::Out::Exists => Err(Status::already_exists(format!(
                "an account with id {:?} or name {:?} already exists in namespace {ns:?}",
                account.id, account.name
            ))),
            other => Err(internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn inspect(
        &self,
        req: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let token = req.into_inner().token;
        if token.is_empty() {
            return Err(invalid("token", "must not be empty"));
        }
        let claims = self.auth.verify(&token)?;
        Ok(Response::new(pb::InspectResponse {
            account: Some(claims_pb(&claims)),
        }))
    }

    async fn token(
        &self,
        req: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let lifetime = match r.token_expiry {
            0 => DEFAULT_TOKEN_SECS,
            n if n < 0 => return Err(invalid("token_expiry", "must not be negative")),
            n => (n as u64).min(MAX_TOKEN_SECS),
        };
        // What this node answers must include every account and token acknowledged anywhere.
        self.node.read_barrier(true).await.map_err(status)?;
        let view = self.node.view();
        let token = if !r.refresh_token.is_empty() {
            let refused = || {
                Status::unauthenticated("the refresh token is not valid (expired, revoked, or its account was deleted): log in again")
            };
            let (ns, id, digest) = token::parse_refresh(&r.refresh_token).ok_or_else(refused)?;
            let live = view::refresh(view, &ns, &id, &digest)
                .map_err(internal)?
                .is_some_and(|t| t.expires_ms > now_ms());
            let account = view::account(view, &ns, &id).map_err(internal)?;
            match account {
                Some(a) if live => self.issue(&a, lifetime, r.refresh_token).await?,
                _ => return Err(refused()),
            }
        } else {
            if r.id.is_empty() {
                return Err(invalid("id", "must not be empty (or send refresh_token)"));
            }
            // Logging in names the namespace in `options` (or the header); the token's
            // issuer cannot be it, there is no token yet.
            let ns = match r.options.as_ref().map(|o| o.namespace.as_str()) {
                Some(ns) if !ns.is_empty() => ns.to_string(),
                _ => caller.namespace.clone(),
            };
            let account = view::login(view, &ns, &r.id)
                .map_err(internal)?
                .ok_or_else(wrong_login)?;
            let (secret, hash) = (r.secret, account.secret_hash.clone());
            if !blocking(move || token::check_secret(&secret, &hash)).await? {
                return Err(wrong_login());
            }
            let (refresh, digest) = token::new_refresh(&ns, &account.id).map_err(internal)?;
            let cmd = view::Cmd::AddRefreshPruned {
                namespace: ns,
                id: account.id.clone(),
                digest,
                expires_ms: now_ms() + REFRESH_MS,
            };
            match self.propose(cmd).await? {
                view::Out::Done => self.issue(&account, lifetime, refresh).await?,
                _ => return Err(wrong_login()),
            }
        };
        Ok(Response::new(pb::TokenResponse { token: Some(token) }))
    }

    async fn rotate_key(
        &self,
        _req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let (pkcs8, public) = token::new_key_pair().map_err(internal)?;
        match self.propose(view::Cmd::RotateKey { pkcs8, public }).await? {
            view::Out::Key { kid } => Ok(Response::new(pb::RotateKeyResponse { kid })),
            other => Err(internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl pb::accounts_server::Accounts for AuthService {
    async fn list(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let caller = Caller::of(&req);
        let ns = namespace_of(&caller, &req.get_ref().options)?;
        self.node.read_barrier(true).await.map_err(status)?;
        let accounts = view::accounts(self.node.view(), &ns).map_err(internal)?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(account_pb).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace_of(&caller, &r.options)?;
        if r.id.is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        match self
            .propose(view::Cmd::DeleteAccount {
                namespace: ns.clone(),
                id: r.id.clone(),
            })
            .await?
        {
            view::Out::Done => Ok(Response::new(pb::DeleteAccountResponse {})),
            _ => Err(Status::not_found(format!(
                "no account {:?} in namespace {ns:?}",
                r.id
            ))),
        }
    }

    async fn change_secret(
        &self,
        req: Request<pb::ChangeSecretRequest>,
    ) -> Result<Response<pb::ChangeSecretResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace_of(&caller, &r.options)?;
        if r.new_secret.is_empty() {
            return Err(invalid("new_secret", "must not be empty"));
        }
        let own = caller
            .claims
            .as_ref()
            .is_some_and(|c| c.sub == r.id && c.iss == ns);
        if !caller.admin && !own {
            return Err(Status::permission_denied(
                "only the account itself or an admin of namespace \"micro\" may change its secret",
            ));
        }
        self.node.read_barrier(true).await.map_err(status)?;
        let account = view::account(self.node.view(), &ns, &r.id)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!("no account {:?} in namespace {ns:?}", r.id))
            })?;
        let (old, hash) = (r.old_secret, account.secret_hash.clone());
        if !blocking(move || token::check_secret(&old, &hash)).await? {
            return Err(Status::permission_denied("old_secret is wrong"));
        }
        let new = r.new_secret;
        let new_hash = blocking(move || token::hash_secret(&new))
            .await?
            .map_err(internal)?;
        match self
            .propose(view::Cmd::ChangeSecret {
                namespace: ns,
                id: r.id,
                if_hash: account.secret_hash,
                secret_hash: new_hash,
            })
            .await?
        {
            view::Out::Done => Ok(Response::new(pb::ChangeSecretResponse {})),
            view::Out::Mismatch => Err(Status::aborted("the secret changed meanwhile; retry")),
            _ => Err(Status::not_found("the account was deleted meanwhile")),
        }
    }
}

#[tonic::async_trait]
impl pb::rules_server::Rules for AuthService {
    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace_of(&caller, &r.options)?;
        let rule = r.rule.ok_or_else(|| invalid("rule", "is required"))?;
        let res = rule.resource.ok_or_else(|| {
            invalid(
                "rule.resource",
                "is required (type, name, endpoint; * for any)",
            )
        })?;
        let access = match pb::Access::try_from(rule.access) {
            Ok(pb::Access::Granted) => 1,
            Ok(pb::Access::Denied) => 2,
            _ => return Err(invalid("rule.access", "must be GRANTED or DENIED")),
        };
        let cmd = view::Cmd::PutRule {
            namespace: ns,
            rule: view::Rule {
                id: rule.id,
                scope: rule.scope,
                resource_type: res.r#type,
                resource_name: res.name,
                resource_endpoint: res.endpoint,
                access,
                priority: rule.priority,
            },
        };
        self.propose(cmd).await?;
        Ok(Response::new(pb::CreateResponse {}))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace_of(&caller, &r.options)?;
        match self
            .propose(view::Cmd::DeleteRule {
                namespace: ns.clone(),
                id: r.id.clone(),
            })
            .await?
        {
            view::Out::Done => Ok(Response::new(pb::DeleteResponse {})),
            _ => Err(Status::not_found(format!(
                "no rule {:?} in namespace {ns:?}",
                r.id
            ))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = Caller::of(&req);
        let ns = namespace_of(&caller, &req.get_ref().options)?;
        self.node.read_barrier(true).await.map_err(status)?;
        let rules = view::rules(self.node.view(), &ns).map_err(internal)?;
        Ok(Response::new(pb::ListResponse {
            rules: rules
                .into_iter()
                .map(|r| pb::Rule {
                    id: r.id,
                    scope: r.scope,
                    resource: Some(pb::Resource {
                        name: r.resource_name,
                        r#type: r.resource_type,
                        endpoint: r.resource_endpoint,
                    }),
                    access: r.access,
                    priority: r.priority,
                })
                .collect(),
        }))
    }
}
