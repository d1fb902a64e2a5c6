//! `micro lock` (run a command while holding a lock) and `micro election`.

use super::*;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct LockArgs {
    #[command(subcommand)]
    cmd: Option<LockSub>,
    /// The lock
    name: Option<String>,
    /// The lock's lease TTL (kept alive while the command runs)
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    ttl: Duration,
    /// Give up after waiting this long (default: wait as long as it takes)
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// The command to run while holding the lock (after `--`)
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
pub(super) enum LockSub {
    /// Every held lock: its holder's token and lease, and how many wait
    List,
}

#[derive(Subcommand)]
pub(super) enum ElectionCmd {
    /// Stand for election NAME with VALUE; prints when leading and stays leader until
    /// interrupted (or the leadership is lost)
    Campaign {
        name: String,
        value: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        ttl: Duration,
    },
    /// The current leader of NAME
    Leader { name: String },
    /// Print the leader of NAME, then every change, one per line
    Observe {
        name: String,
        /// Stop after this many lines
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

pub(super) async fn lock(server: &Target, out: Output, args: LockArgs) -> anyhow::Result<ExitCode> {
    let sync = server.connect().await?.sync();
    if let Some(LockSub::List) = args.cmd {
        let locks = sync.list().await?;
        match out {
            Output::Json => print_json(&json!(locks
                .iter()
                .map(|l| json!({"name": l.name, "token": l.token, "lease": l.lease, "waiting": l.waiting}))
                .collect::<Vec<_>>())),
            Output::Table => {
                let mut t = table(&["name", "token", "lease", "waiting"]);
                for l in &locks {
                    t.add_row(vec![
                        l.name.clone(),
                        l.token.to_string(),
                        l.lease.to_string(),
                        l.waiting.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(name) = args.name else {
        anyhow::bail!("name the lock: `micro lock NAME -- CMD ARGS...` (or `micro lock list`)");
    };
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("give the command to run after `--`: `micro lock {name} -- CMD ARGS...`");
    };
    let guard = sync.lock_within(&name, args.ttl, args.wait).await?;
    let token = guard.token();
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("MICRO_LOCK_NAME", &name)
        .env("MICRO_LOCK_TOKEN", token.to_string())
        .env("MICRO_LOCK_FENCE", format!("{name}:{token}"))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = guard.lost() => {
            let _ = child.kill().await;
            eprintln!("error: lost lock {name:?} (token {token}): its lease could not be kept alive; the command was killed");
            return Ok(ExitCode::from(75));
        }
    };
    guard.unlock().await?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn leader_json(l: &micro::proto::sync::LeaderResponse) -> Value {
    let mut v = json!({"name": l.name, "token": l.token, "revision": l.revision});
    put_bytes(&mut v, "value", &l.value);
    v
}

pub(super) async fn election(
    server: &Target,
    out: Output,
    cmd: ElectionCmd,
) -> anyhow::Result<ExitCode> {
    let sync = server.connect().await?.sync();
    match cmd {
        ElectionCmd::Campaign { name, value, ttl } => {
            let guard = sync.campaign(&name, value.into_bytes(), ttl).await?;
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"name": name, "token": guard.token(), "leading": true})
                ),
                Output::Table => println!("leading {name} with token {}", guard.token()),
            }
            tokio::select! {
                _ = guard.lost() => {
                    eprintln!("error: lost the leadership of {name:?}");
                    return Ok(ExitCode::from(75));
                }
                _ = tokio::signal::ctrl_c() => {}
            }
            guard.unlock().await?;
        }
        ElectionCmd::Leader { name } => {
            let l = sync.leader(&name).await?;
            match out {
                Output::Json => print_json(&leader_json(&l)),
                Output::Table if l.token == 0 => println!("{name} has no leader"),
                Output::Table => println!("{}\t{}", l.token, String::from_utf8_lossy(&l.value)),
            }
        }
        ElectionCmd::Observe { name, limit } => {
            let mut o = sync.observe(&name).await?;
            let mut n = 0;
            while let Some(l) = o.next().await? {
                match out {
                    Output::Json => println!("{}", leader_json(&l)),
                    Output::Table => println!(
                        "{}\t{}\t{}",
                        l.revision,
                        l.token,
                        String::from_utf8_lossy(&l.value)
                    ),
                }
                n += 1;
                if limit > 0 && n >= limit {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
