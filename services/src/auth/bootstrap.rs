//! The first start of a cluster: its token-signing key and its first administrator.
//!
//! Every node tries once it is up; the log decides (the first key and the first admin win,
//! later proposals change nothing), so exactly one node's attempt creates the admin. That node
//! writes the admin's credentials to the local user's CLI config (env `local`, file mode
//! 0600): the user who started the server is logged in, nobody else is, and the secret never
//! enters the log (only its argon2 hash does) or any log line.

use std::path::PathBuf;
use std::time::Duration;

use micro::env::{Env, Envs, LOCAL};
use micro_cluster::Node;
use micro_state::views::auth::{self as view, Auth, ADMIN_NAMESPACE};

use super::token;

/// The first admin's account id.
pub const ADMIN_ID: &str = "admin";

/// Where the first admin's credentials go.
pub struct Local {
    /// The CLI config directory (`micro::env::config_dir()`).
    pub config_dir: PathBuf,
    /// The gRPC address the CLI should use for this cluster.
    pub server: String,
}

/// Creates the signing key and the first admin if the cluster has none, retrying while there
/// is no leader, until done or the node stops.
pub async fn run(node: Node, local: Local) {
    let mut stopping = node.stopping();
    let mut backoff = Duration::from_millis(100);
    // The secret and its hash survive failed attempts: argon2 is slow by design, and hashing
    // again on every retry while there is no leader yet slowed a loaded machine's start-up
    // to a crawl (three nodes hashing over and over).
    let mut secret = None;
    loop {
        match attempt(&node, &local, &mut secret).await {
            Ok(()) => return,
            Err(e) => tracing::debug!("auth bootstrap: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn attempt(
    node: &Node,
    local: &Local,
    secret: &mut Option<(String, String)>,
) -> anyhow::Result<()> {
    super::signing_keys(node)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    if !view::accounts(node.view(), ADMIN_NAMESPACE)?.is_empty() {
        // Our own Bootstrap may have been applied even though its answer was lost (a leader
        // change while it committed): then the admin is ours — its hash is the one we made —
        // and only we can write its credentials. Without this, such a start left an admin
        // whose secret nobody had.
        if let Some((plain, hash)) = secret.as_ref() {
            let admin = view::account(node.view(), ADMIN_NAMESPACE, ADMIN_ID)?;
            if admin.is_some_and(|a| a.secret_hash == *hash) {
                write_local(local, plain)?;
            }
        }
        return Ok(());
    }
    // Make sure the credentials can be kept before creating an account nobody could use —
    // without rewriting the file: nodes sharing a config dir (a local cluster) would
    // otherwise write back what they read just before the winner wrote the credentials.
    Envs::check_writable(&local.config_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the admin's credentials to {}: {e}; set MICRO_CONFIG_DIR to a writable directory",
            local.config_dir.display()
        )
    })?;
    let (secret, hash) = match secret {
        Some(pair) => pair.clone(),
        None => {
            let plain = token::new_secret().map_err(anyhow::Error::msg)?;
            let p = plain.clone();
            let hash = tokio::task::spawn_blocking(move || token::hash_secret(&p))
                .await?
                .map_err(anyhow::Error::msg)?;
            secret.insert((plain, hash)).clone()
        }
    };
    let admin = view::Account {
        id: ADMIN_ID.into(),
        name: ADMIN_ID.into(),
        kind: "user".into(),
        issuer: ADMIN_NAMESPACE.into(),
        scopes: vec!["admin".into()],
        metadata: Default::default(),
        secret_hash: hash,
        created_ms: 0,
    };
    let (_, out) = node.run::<Auth>(view::Cmd::Bootstrap(admin)).await?;
    if out != view::Out::Done {
        // Another node created it first: its credentials are where it wrote them.
        return Ok(());
    }
    write_local(local, &secret)
}

/// Writes the first admin's credentials as the `local` env of the user's CLI config.
fn write_local(local: &Local, secret: &str) -> anyhow::Result<()> {
    let mut envs = Envs::load(&local.config_dir)?;
    envs.envs.insert(
        LOCAL.into(),
        Env {
            server: local.server.clone(),
            id: Some(ADMIN_ID.into()),
            secret: Some(secret.to_string()),
            ..Default::default()
        },
    );
    if envs.current.is_none() {
        envs.current = Some(LOCAL.into());
    }
    envs.save(&local.config_dir)?;
    eprintln!(
        "micro: created the cluster's first admin account {ADMIN_ID:?} (namespace {ADMIN_NAMESPACE:?}); the CLI of this user is logged in with it (env {LOCAL:?} in {})",
        local.config_dir.join("config.json").display()
    );
    Ok(())
}
