//! Credentials for a harness's clients: the cluster's first admin, as its first node wrote
//! them to the CLI config dir the harness gave the servers (`MICRO_CONFIG_DIR`). One login
//! per cluster; the access token (valid for a day, verified by every node locally) is then
//! sent by every client of any node of that cluster.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Access tokens by node gRPC address (several clusters may live in one process).
static TOKENS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// The admin token of the cluster node `addr` belongs to, once [`login`] ran.
pub fn token_for(addr: &str) -> Option<String> {
    TOKENS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(addr).cloned())
}

/// Remembers `token` for these node addresses.
pub fn remember(addrs: impl IntoIterator<Item = String>, token: &str) {
    let mut map = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    for a in addrs {
        map.insert(a, token.to_string());
    }
}

/// A client of node `addr`, as the admin of its cluster once [`login`] ran.
pub async fn connect(addr: &str) -> Result<micro::Client, micro::Error> {
    let token = token_for(addr);
    micro::Client::builder(addr)
        .credentials(token.map_or(micro::Credentials::None, micro::Credentials::Token))
        .connect()
        .await
}

/// Waits (up to `timeout`) for the admin's credentials in `config_dir`, logs in through any
/// of `addrs` (gRPC) and remembers the token for all of them; returns it.
pub async fn login(
    config_dir: &Path,
    addrs: &[(u64, String)],
    timeout: Duration,
) -> anyhow::Result<micro::Token> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last = String::from("no credentials written yet");
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no admin login within {timeout:?}: {last}");
        }
        let creds = match micro::env::Envs::load(config_dir).map(|e| e.current().cloned()) {
            Ok(Some(micro::env::Env {
                id: Some(id),
                secret: Some(secret),
                ..
            })) => micro::Credentials::Account { id, secret },
            Ok(_) => continue,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        for (_, addr) in addrs {
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                micro::Client::builder(addr)
                    .credentials(creds.clone())
                    .token_lifetime(Duration::from_secs(24 * 3600))
                    .connect(),
            )
            .await;
            match got {
                Ok(Ok(c)) => {
                    let token = c.token();
                    remember(addrs.iter().map(|(_, a)| a.clone()), &token.access_token);
                    return Ok(token);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("login through {addr} timed out"),
            }
        }
    }
}
