//! Named environments and their credentials: the file the CLI keeps (Micro v3's envs).
//!
//! `$MICRO_CONFIG_DIR/config.json`, else `$XDG_CONFIG_HOME/micro/config.json`, else
//! `~/.config/micro/config.json`, mode 0600 in a 0700 directory. `micro server` writes the
//! `local` env with the first admin's credentials when it creates the cluster, so the local
//! user's CLI is logged in without a step; `micro login` replaces them with a refresh token.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The env a server writes and the CLI uses when none is chosen.
pub const LOCAL: &str = "local";

/// One env: where its server is and who we are there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    /// gRPC address of a node.
    #[serde(default)]
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Account id (or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The account's secret, only as the server's bootstrap wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The last access token and its expiry (Unix seconds), reused until near expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expiry: i64,
}

impl Env {
    /// The credentials this env holds, best first.
    pub fn credentials(&self, now_s: i64) -> crate::auth::Credentials {
        use crate::auth::Credentials;
        match (
            &self.access_token,
            &self.refresh_token,
            &self.id,
            &self.secret,
        ) {
            (Some(t), _, _, _) if self.expiry > now_s + 30 => Credentials::Token(t.clone()),
            (_, Some(r), _, _) => Credentials::Refresh(r.clone()),
            (_, _, Some(id), Some(secret)) => Credentials::Account {
                id: id.clone(),
                secret: secret.clone(),
            },
            _ => Credentials::None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, Env>,
}

/// The directory of the CLI's config.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MICRO_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("micro");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".config").join("micro")
}

fn file(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

impl Envs {
    /// The envs in `dir` (none yet: empty).
    pub fn load(dir: &Path) -> std::io::Result<Envs> {
        match std::fs::read(file(dir)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not valid: {e}", file(dir).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Envs::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the envs to `dir` atomically, readable by the owner only.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = dir.join(format!(".config.json.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file(dir))
    }

    /// Whether envs could be saved in `dir` (created if missing), without touching the file.
    pub fn check_writable(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let probe = dir.join(format!(".probe.{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)
    }

    /// The current env's name (`local` when none was chosen).
    pub fn current_name(&self) -> &str {
        self.current.as_deref().unwrap_or(LOCAL)
    }

    pub fn current(&self) -> Option<&Env> {
        self.envs.get(self.current_name())
    }
}

/// Where to connect and as whom, found as the CLI finds it.
pub struct Resolved {
    pub server: String,
    pub credentials: crate::auth::Credentials,
    pub namespace: Option<String>,
    /// The env the server and credentials came from.
    pub env_name: String,
}

/// The gRPC address used when nothing names one.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8081";

impl Resolved {
    /// `MICRO_SERVER`, else the server of env `MICRO_ENV` (else the current env), else
    /// [`DEFAULT_SERVER`]; credentials from the environment, else that env's login; the
    /// namespace from `MICRO_NAMESPACE`, else that env's.
    pub fn from_env() -> Resolved {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let envs = Envs::load(&config_dir()).unwrap_or_default();
        let env_name = var("MICRO_ENV").unwrap_or_else(|| envs.current_name().to_string());
        let env = envs.envs.get(&env_name).cloned().unwrap_or_default();
        let server = var("MICRO_SERVER")
            .or_else(|| Some(env.server.clone()).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_SERVER.into());
        let mut credentials = crate::auth::Credentials::from_env();
        if credentials == crate::auth::Credentials::None {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            credentials = env.credentials(now);
        }
        Resolved {
            server,
            credentials,
            // Micro v3's runtime names a service's namespace this way.
            namespace: var("MICRO_NAMESPACE").or_else(|| env.namespace.clone()),
            env_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_owner_only_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("micro-env-test-{}", std::process::id()));
        let mut envs = Envs::load(&dir).unwrap();
        assert_eq!(envs, Envs::default());
        envs.envs.insert(
            LOCAL.into(),
            Env {
                server: "127.0.0.1:8081".into(),
                id: Some("admin".into()),
                secret: Some("s".into()),
                ..Default::default()
            },
        );
        envs.save(&dir).unwrap();
        let mode = std::fs::metadata(file(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Envs::load(&dir).unwrap();
        assert_eq!(back.current().unwrap().id.as_deref(), Some("admin"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
