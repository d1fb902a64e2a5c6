//! `micro config`: dynamic config (get, set, del, watch).

use super::*;

#[derive(Subcommand)]
pub(super) enum ConfigCmd {
    /// Print the value at PATH (dot separated; empty for the whole document) as JSON
    Get {
        #[arg(default_value = "")]
        path: String,
        /// Show secrets instead of "[secret]"
        #[arg(long)]
        secret: bool,
    },
    /// Set PATH to VALUE (JSON, or else taken as a string); an object merges
    Set {
        path: String,
        value: String,
        /// Store the value encrypted; reads show "[secret]" unless they ask with --secret
        #[arg(long)]
        secret: bool,
        /// Only if PATH is still at this revision (0: only if absent)
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Remove the value or subtree at PATH
    #[command(alias = "delete")]
    Del { path: String },
    /// Make a new cluster key for secrets written from now on (older ones stay readable)
    RotateKey,
    /// Print every change at or under PATH, one per line
    Watch {
        #[arg(default_value = "")]
        path: String,
        /// Replay changes from this revision first (default: changes after now)
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Stop after this many changes
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

/// `--namespace`, shared by the config commands.
#[derive(Args, Clone)]
pub(super) struct Namespace {
    /// Namespace (default "micro")
    #[arg(long, global = true, default_value = "")]
    namespace: String,
}

pub(super) async fn config(
    server: &Target,
    out: Output,
    ns: Namespace,
    cmd: ConfigCmd,
) -> anyhow::Result<ExitCode> {
    let config = server.connect().await?.config().namespace(&ns.namespace);
    match cmd {
        ConfigCmd::Get { path, secret } => {
            let v = config.get_json(&path, secret).await?;
            let json: Value = serde_json::from_str(&v.value)?;
            match out {
                Output::Json => {
                    print_json(&json!({"path": path, "value": json, "revision": v.revision}))
                }
                Output::Table => print_json(&json),
            }
            if json.is_null() {
                eprintln!("nothing at {path:?}");
                return Ok(ExitCode::FAILURE);
            }
        }
        ConfigCmd::Set {
            path,
            value,
            secret,
            if_revision,
        } => {
            // JSON if it parses (42, true, {"a":1}, "quoted"), else the text as a string.
            let v: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            let rev = match (if_revision, secret) {
                (Some(r), false) => config.compare_and_set(&path, &v, r).await?,
                (Some(_), true) => {
                    anyhow::bail!("--if-revision and --secret cannot be combined yet")
                }
                (None, true) => config.set_secret(&path, &v).await?,
                (None, false) => config.set(&path, &v).await?,
            };
            match out {
                Output::Json => print_json(&json!({"path": path, "revision": rev})),
                Output::Table => println!("set {path} at revision {rev}"),
            }
        }
        ConfigCmd::Del { path } => {
            config.delete(&path).await?;
            match out {
                Output::Json => print_json(&json!({"path": path, "deleted": true})),
                Output::Table => println!("deleted {path}"),
            }
        }
        ConfigCmd::RotateKey => {
            let id = config.rotate_key().await?;
            match out {
                Output::Json => print_json(&json!({"key_id": id})),
                Output::Table => println!("secrets are now written with key {id}"),
            }
        }
        ConfigCmd::Watch {
            path,
            from_revision,
            limit,
        } => {
            let mut w = config.watch(&path, from_revision).await?;
            let mut seen = 0;
            while let Some(c) = w.next().await? {
                let data = c.value.as_ref().map(|v| v.data.clone());
                match out {
                    Output::Json => {
                        let value: Value = data
                            .as_deref()
                            .and_then(|d| serde_json::from_str(d).ok())
                            .unwrap_or(Value::Null);
                        println!(
                            "{}",
                            json!({"revision": c.revision, "path": c.path, "type": if c.deleted { "delete" } else { "put" }, "value": value})
                        );
                    }
                    Output::Table => match data {
                        Some(d) => println!("{}\tput\t{}\t{d}", c.revision, c.path),
                        None => println!("{}\tdelete\t{}", c.revision, c.path),
                    },
                }
                seen += 1;
                if limit > 0 && seen >= limit {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
