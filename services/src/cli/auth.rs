//! `micro login`, `logout`, `user`, `env` and `auth ...`: who the CLI is, and the accounts
//! and rules of the cluster.

use super::*;
use micro::env::{Env, Envs};
use micro::proto::auth as pb;
use micro::Credentials;

/// Where the CLI talks to and as whom: the chosen env of the config file, and `--server`.
pub(crate) struct Target {
    pub server: String,
    pub env_name: String,
    pub envs: Envs,
    pub dir: PathBuf,
}

fn now_s() -> i64 {
    micro_cluster::now_ms() as i64 / 1000
}

impl Target {
    /// `--server` (or MICRO_SERVER) wins; else the env's server; else the default port.
    pub fn new(server: Option<String>, env: Option<String>) -> anyhow::Result<Target> {
        let dir = micro::env::config_dir();
        let envs = Envs::load(&dir)?;
        let env_name = env.unwrap_or_else(|| envs.current_name().to_string());
        let server = server
            .or_else(|| {
                envs.envs
                    .get(&env_name)
                    .map(|e| e.server.clone())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "127.0.0.1:8081".into());
        Ok(Target {
            server,
            env_name,
            envs,
            dir,
        })
    }

    fn env(&self) -> Env {
        self.envs
            .envs
            .get(&self.env_name)
            .cloned()
            .unwrap_or_default()
    }

    /// A client logged in as the env's account (MICRO_AUTH_* in the environment win); a
    /// token it had to fetch is saved for the next command.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let from_env = Credentials::from_env();
        let env = self.env();
        let creds = if from_env != Credentials::None {
            from_env.clone()
        } else {
            env.credentials(now_s())
        };
        let mut builder = Client::builder(&self.server).credentials(creds.clone());
        if let Some(ns) = &env.namespace {
            builder = builder.namespace(ns.clone());
        }
        let client = builder.connect().await.map_err(|e| match e.code() {
            Some(tonic::Code::Unauthenticated) => anyhow::anyhow!(
                "{e}; log in again with `micro login --id ID --secret SECRET` (env {:?})",
                self.env_name
            ),
            _ => e.into(),
        })?;
        if from_env == Credentials::None
            && matches!(creds, Credentials::Account { .. } | Credentials::Refresh(_))
        {
            let t = client.token();
            let mut envs = Envs::load(&self.dir).unwrap_or_default();
            let e = envs.envs.entry(self.env_name.clone()).or_default();
            if e.server.is_empty() {
                e.server = self.server.clone();
            }
            e.access_token = Some(t.access_token);
            e.expiry = t.expiry;
            if !t.refresh_token.is_empty() {
                e.refresh_token = Some(t.refresh_token);
            }
            // Not fatal: the next command logs in again.
            let _ = envs.save(&self.dir);
        }
        Ok(client)
    }
}

#[derive(Args)]
pub(super) struct LoginArgs {
    /// Account id or name
    #[arg(long, env = "MICRO_AUTH_ID")]
    id: String,
    /// The account's secret (read from stdin when not given)
    #[arg(long, env = "MICRO_AUTH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The account's namespace
    #[arg(long, default_value = "micro")]
    namespace: String,
}

#[derive(Subcommand)]
pub(super) enum AuthCmd {
    /// Print a current access token (for `curl -H "Authorization: Bearer $(micro auth token)"`)
    Token,
    /// Create an account or a rule
    Create {
        #[command(subcommand)]
        what: CreateCmd,
    },
    /// List accounts or rules
    List {
        #[command(subcommand)]
        what: ListCmd,
    },
    /// Delete an account or a rule
    Delete {
        #[command(subcommand)]
        what: DeleteCmd,
    },
    /// Make a new token-signing key current (tokens signed by the old one keep working until
    /// they expire)
    RotateKey,
}

#[derive(Args, Clone)]
pub(super) struct Ns {
    /// Namespace (default: your account's)
    #[arg(long)]
    namespace: Option<String>,
}

impl Ns {
    fn options(&self) -> Option<pb::Options> {
        self.namespace.as_ref().map(|n| pb::Options {
            namespace: n.clone(),
        })
    }
}

#[derive(Subcommand)]
pub(super) enum CreateCmd {
    /// `micro auth create account ID [--secret S] [--scopes a,b] [--type user|service]`
    Account {
        id: String,
        /// Generated (and printed once) when not given
        #[arg(long)]
        secret: Option<String>,
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Login name (default: the id)
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "type", default_value = "user")]
        kind: String,
        #[command(flatten)]
        ns: Ns,
    },
    /// `micro auth create rule ID --resource type:name:endpoint [--scope S] [--access granted|denied] [--priority N]`
    Rule {
        id: String,
        /// "" public, "*" any account of the namespace, "+" any account, else a scope
        #[arg(long, default_value = "")]
        scope: String,
        /// type:name:endpoint, e.g. service:store:Store.Read (`*` matches anything)
        #[arg(long)]
        resource: String,
        #[arg(long, value_enum, default_value_t = Access::Granted)]
        access: Access,
        /// Higher is evaluated first
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[command(flatten)]
        ns: Ns,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Access {
    Granted,
    Denied,
}

#[derive(Subcommand)]
pub(super) enum ListCmd {
    Accounts {
        #[command(flatten)]
        ns: Ns,
    },
    Rules {
        #[command(flatten)]
        ns: Ns,
    },
}

#[derive(Subcommand)]
pub(super) enum DeleteCmd {
    Account {
        id: String,
        #[command(flatten)]
        ns: Ns,
    },
    Rule {
        id: String,
        #[command(flatten)]
        ns: Ns,
    },
}

#[derive(Subcommand)]
pub(super) enum EnvCmd {
    /// Make NAME the current env
    Set { name: String },
    /// Add (or change) env NAME pointing at a node's gRPC address
    Add { name: String, server: String },
    /// Remove env NAME and its credentials
    Del { name: String },
}

fn read_secret() -> anyhow::Result<String> {
    use std::io::BufRead;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("secret: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let s = line.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        anyhow::bail!("no secret given: pass --secret or type it on stdin");
    }
    Ok(s)
}

pub(super) async fn login(t: &Target, out: Output, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let secret = match args.secret {
        Some(s) => s,
        None => read_secret()?,
    };
    let client = Client::builder(&t.server)
        .credentials(Credentials::Account {
            id: args.id.clone(),
            secret,
        })
        .namespace(args.namespace.clone())
        .connect()
        .await?;
    let tok = client.token();
    let mut envs = Envs::load(&t.dir)?;
    let e = envs.envs.entry(t.env_name.clone()).or_default();
    *e = Env {
        server: t.server.clone(),
        namespace: (args.namespace != "micro").then(|| args.namespace.clone()),
        id: Some(args.id.clone()),
        secret: None,
        refresh_token: Some(tok.refresh_token),
        access_token: Some(tok.access_token),
        expiry: tok.expiry,
    };
    if envs.current.is_none() {
        envs.current = Some(t.env_name.clone());
    }
    envs.save(&t.dir)?;
    match out {
        Output::Json => {
            print_json(&json!({"env": t.env_name, "id": args.id, "namespace": args.namespace}))
        }
        Output::Table => println!(
            "logged in as {} (namespace {}) in env {}",
            args.id, args.namespace, t.env_name
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn logout(t: &Target) -> anyhow::Result<ExitCode> {
    let mut envs = Envs::load(&t.dir)?;
    if let Some(e) = envs.envs.get_mut(&t.env_name) {
        *e = Env {
            server: e.server.clone(),
            namespace: e.namespace.clone(),
            ..Default::default()
        };
        envs.save(&t.dir)?;
    }
    println!("logged out of env {}", t.env_name);
    Ok(ExitCode::SUCCESS)
}

fn account_json(a: &pb::Account) -> Value {
    json!({
        "id": a.id, "name": a.name, "type": a.r#type, "issuer": a.issuer,
        "scopes": a.scopes, "metadata": a.metadata,
    })
}

pub(super) async fn user(t: &Target, out: Output) -> anyhow::Result<ExitCode> {
    let client = t.connect().await?;
    let token = client.token().access_token;
    if token.is_empty() {
        anyhow::bail!("not logged in (env {:?}): run `micro login`", t.env_name);
    }
    let a = client
        .auth()
        .inspect(pb::InspectRequest {
            token,
            options: None,
        })
        .await?
        .into_inner()
        .account
        .unwrap_or_default();
    match out {
        Output::Json => print_json(&account_json(&a)),
        Output::Table => {
            let mut tb = table(&["id", "name", "type", "namespace", "scopes"]);
            tb.add_row(vec![a.id, a.name, a.r#type, a.issuer, a.scopes.join(",")]);
            println!("{tb}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `micro dashboard`: the node's dashboard URL with a fresh access token in its fragment (the
/// page moves it into a cookie and out of the address bar at once).
pub(super) async fn dashboard(t: &Target, out: Output) -> anyhow::Result<ExitCode> {
    let client = t.connect().await?;
    let status = client.cluster_status().await?;
    let http = status
        .members
        .iter()
        .find(|m| m.id == status.node_id)
        .map(|m| m.http_address.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("node {} did not report its HTTP address", status.node_id)
        })?;
    let token = client.token().access_token;
    let url = if token.is_empty() {
        format!("http://{http}/")
    } else {
        format!("http://{http}/#/cluster?token={token}")
    };
    match out {
        Output::Json => print_json(&serde_json::json!({ "url": url })),
        Output::Table => println!("{url}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn env(t: &Target, out: Output, cmd: Option<EnvCmd>) -> anyhow::Result<ExitCode> {
    let mut envs = Envs::load(&t.dir)?;
    match cmd {
        None => {
            let current = envs.current_name().to_string();
            match out {
                Output::Json => print_json(&json!(envs
                    .envs
                    .iter()
                    .map(
                        |(n, e)| json!({"name": n, "server": e.server, "current": *n == current,
                        "id": e.id, "namespace": e.namespace})
                    )
                    .collect::<Vec<_>>())),
                Output::Table => {
                    let mut tb = table(&["", "name", "server", "account", "namespace"]);
                    for (n, e) in &envs.envs {
                        tb.add_row(vec![
                            if *n == current {
                                "*".into()
                            } else {
                                String::new()
                            },
                            n.clone(),
                            e.server.clone(),
                            e.id.clone().unwrap_or_default(),
                            e.namespace.clone().unwrap_or_else(|| "micro".into()),
                        ]);
                    }
                    println!("{tb}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(EnvCmd::Set { name }) => {
            if !envs.envs.contains_key(&name) {
                anyhow::bail!("no env {name:?}; add it with `micro env add {name} HOST:PORT`");
            }
            envs.current = Some(name);
        }
        Some(EnvCmd::Add { name, server }) => {
            envs.envs.entry(name).or_default().server = server;
        }
        Some(EnvCmd::Del { name }) => {
            if envs.envs.remove(&name).is_none() {
                anyhow::bail!("no env {name:?}");
            }
            if envs.current.as_deref() == Some(name.as_str()) {
                envs.current = None;
            }
        }
    }
    envs.save(&t.dir)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn auth(t: &Target, out: Output, cmd: AuthCmd) -> anyhow::Result<ExitCode> {
    let client = t.connect().await?;
    match cmd {
        AuthCmd::Token => {
            let tok = client.token().access_token;
            if tok.is_empty() {
                anyhow::bail!("not logged in (env {:?}): run `micro login`", t.env_name);
            }
            println!("{tok}");
        }
        AuthCmd::RotateKey => {
            let kid = client
                .auth()
                .rotate_key(pb::RotateKeyRequest {})
                .await?
                .into_inner()
                .kid;
            match out {
                Output::Json => print_json(&json!({"kid": kid})),
                Output::Table => println!("new tokens are signed with key {kid}"),
            }
        }
        AuthCmd::Create {
            what:
                CreateCmd::Account {
                    id,
                    secret,
                    scopes,
                    name,
                    kind,
                    ns,
                },
        } => {
            let a = client
                .auth()
                .generate(pb::GenerateRequest {
                    id,
                    secret: secret.unwrap_or_default(),
                    scopes,
                    name: name.unwrap_or_default(),
                    r#type: kind,
                    options: ns.options(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .account
                .unwrap_or_default();
            let mut v = account_json(&a);
            v["secret"] = json!(a.secret);
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    println!("created account {} in namespace {}", a.id, a.issuer);
                    println!("secret: {}  (shown once: keep it)", a.secret);
                }
            }
        }
        AuthCmd::Create {
            what:
                CreateCmd::Rule {
                    id,
                    scope,
                    resource,
                    access,
                    priority,
                    ns,
                },
        } => {
            let res = crate::auth::rules::parse_resource(&resource)
                .map_err(|e| anyhow::anyhow!("--resource: {e}"))?;
            client
                .rules()
                .create(pb::CreateRequest {
                    rule: Some(pb::Rule {
                        id: id.clone(),
                        scope,
                        resource: Some(pb::Resource {
                            name: res.name,
                            r#type: res.kind,
                            endpoint: res.endpoint,
                        }),
                        access: match access {
                            Access::Granted => pb::Access::Granted as i32,
                            Access::Denied => pb::Access::Denied as i32,
                        },
                        priority,
                    }),
                    options: ns.options(),
                })
                .await?;
            if out == Output::Table {
                println!("created rule {id}");
            }
        }
        AuthCmd::List {
            what: ListCmd::Accounts { ns },
        } => {
            let accounts = client
                .accounts()
                .list(pb::ListAccountsRequest {
                    options: ns.options(),
                })
                .await?
                .into_inner()
                .accounts;
            match out {
                Output::Json => print_json(&json!(accounts
                    .iter()
                    .map(account_json)
                    .collect::<Vec<_>>())),
                Output::Table => {
                    let mut tb = table(&["id", "name", "type", "namespace", "scopes"]);
                    for a in accounts {
                        tb.add_row(vec![a.id, a.name, a.r#type, a.issuer, a.scopes.join(",")]);
                    }
                    println!("{tb}");
                }
            }
        }
        AuthCmd::List {
            what: ListCmd::Rules { ns },
        } => {
            let rules = client
                .rules()
                .list(pb::ListRequest {
                    options: ns.options(),
                })
                .await?
                .into_inner()
                .rules;
            let access = |a: i32| match pb::Access::try_from(a) {
                Ok(pb::Access::Granted) => "granted",
                Ok(pb::Access::Denied) => "denied",
                _ => "unknown",
            };
            let resource = |r: &pb::Rule| {
                r.resource
                    .as_ref()
                    .map(|r| format!("{}:{}:{}", r.r#type, r.name, r.endpoint))
                    .unwrap_or_default()
            };
            match out {
                Output::Json => print_json(&json!(rules
                    .iter()
                    .map(
                        |r| json!({"id": r.id, "scope": r.scope, "resource": resource(r),
                        "access": access(r.access), "priority": r.priority})
                    )
                    .collect::<Vec<_>>())),
                Output::Table => {
                    let mut tb = table(&["id", "scope", "resource", "access", "priority"]);
                    for r in &rules {
                        tb.add_row(vec![
                            r.id.clone(),
                            format!("{:?}", r.scope),
                            resource(r),
                            access(r.access).into(),
                            r.priority.to_string(),
                        ]);
                    }
                    println!("{tb}");
                }
            }
        }
        AuthCmd::Delete {
            what: DeleteCmd::Account { id, ns },
        } => {
            client
                .accounts()
                .delete(pb::DeleteAccountRequest {
                    id: id.clone(),
                    options: ns.options(),
                })
                .await?;
            if out == Output::Table {
                println!("deleted account {id}");
            }
        }
        AuthCmd::Delete {
            what: DeleteCmd::Rule { id, ns },
        } => {
            client
                .rules()
                .delete(pb::DeleteRequest {
                    id: id.clone(),
                    options: ns.options(),
                })
                .await?;
            if out == Output::Table {
                println!("deleted rule {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
