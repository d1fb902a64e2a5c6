//! `micro lease`: grant, keep alive, revoke, inspect leases.

use super::*;

#[derive(Subcommand)]
pub(super) enum LeaseCmd {
    /// Grant a lease of TTL (seconds, or e.g. 30s, 5m); prints its id
    Grant {
        #[arg(value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Keep a lease alive (every third of its TTL) until interrupted or the lease is gone
    Keepalive {
        id: u64,
        /// Renew once and exit
        #[arg(long)]
        once: bool,
    },
    /// End a lease now; its records are deleted with it
    Revoke { id: u64 },
    /// Seconds left, granted TTL and attached keys of a lease
    Ttl { id: u64 },
    /// Every live lease
    List,
}

/// A TTL as whole seconds (`30`) or a duration (`30s`, `5m`).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{e}: use seconds or e.g. 30s")),
    }
}

pub(super) async fn lease(server: &Target, out: Output, cmd: LeaseCmd) -> anyhow::Result<ExitCode> {
    let leases = server.connect().await?.leases();
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let id = leases.grant(ttl).await?;
            match out {
                Output::Json => print_json(&json!({"id": id, "ttl": ttl.as_secs()})),
                Output::Table => println!("{id}"),
            }
        }
        LeaseCmd::Keepalive { id, once } => loop {
            let ttl = leases.keep_alive(id).await?;
            match out {
                Output::Json => println!("{}", json!({"id": id, "ttl": ttl.as_secs()})),
                Output::Table => println!("lease {id} kept alive, ttl {}s", ttl.as_secs()),
            }
            if once {
                break;
            }
            tokio::time::sleep((ttl / 3).max(Duration::from_millis(300))).await;
        },
        LeaseCmd::Revoke { id } => {
            let deleted = leases.revoke(id).await?;
            match out {
                Output::Json => print_json(&json!({"id": id, "deleted": deleted})),
                Output::Table => println!("lease {id} revoked; {deleted} records deleted"),
            }
        }
        LeaseCmd::Ttl { id } => {
            let t = leases.time_to_live(id, true).await?;
            let keys: Vec<Value> = t
                .keys
                .iter()
                .map(|k| json!({"database": k.database, "table": k.table, "key": k.key}))
                .collect();
            match out {
                Output::Json => print_json(
                    &json!({"id": t.id, "ttl": t.ttl, "granted_ttl": t.granted_ttl, "keys": keys}),
                ),
                Output::Table => {
                    println!("lease {} ttl {}s (granted {}s)", t.id, t.ttl, t.granted_ttl);
                    for k in &t.keys {
                        println!("  {}/{}/{}", k.database, k.table, k.key);
                    }
                }
            }
        }
        LeaseCmd::List => {
            let all = leases.list().await?;
            match out {
                Output::Json => print_json(&json!(all
                    .iter()
                    .map(|l| json!({"id": l.id, "ttl": l.ttl, "granted_ttl": l.granted_ttl, "keys": l.keys}))
                    .collect::<Vec<_>>())),
                Output::Table => {
                    let mut t = table(&["id", "ttl", "granted ttl", "keys"]);
                    for l in &all {
                        t.add_row(vec![
                            l.id.to_string(),
                            format!("{}s", l.ttl),
                            format!("{}s", l.granted_ttl),
                            l.keys.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
