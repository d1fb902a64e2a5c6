//! `micro store`: the key-value store.

use super::*;

#[derive(Args, Clone)]
pub(super) struct Scope {
    /// Database (default "micro")
    #[arg(short = 'd', long, default_value = "")]
    database: String,
    /// Table (default "micro")
    #[arg(short = 't', long, default_value = "")]
    table: String,
}

#[derive(Subcommand)]
pub(super) enum StoreCmd {
    /// Write a record
    Write {
        key: String,
        value: String,
        /// Time to live, e.g. 10s, 5m, 1h
        #[arg(long, value_parser = humantime::parse_duration)]
        expiry: Option<Duration>,
        /// Attach the record to this lease (it is deleted when the lease ends)
        #[arg(long, default_value_t = 0)]
        lease: u64,
        /// Write only while LOCK:TOKEN is the lock's newest token (`$MICRO_LOCK_FENCE` under
        /// `micro lock`)
        #[arg(long, value_parser = parse_fence)]
        fence: Option<micro::proto::sync::Fence>,
        #[command(flatten)]
        scope: Scope,
    },
    /// Print every change of a key (or of every key under a prefix), one per line: first
    /// those since --from-revision, then live ones
    Watch {
        key: String,
        /// Watch every key starting with KEY
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: changes after now)
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Stop after this many changes
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Also print each change's previous value
        #[arg(long)]
        prev: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Drop the change history below REVISION (watches from below it then fail)
    Compact { revision: u64 },
    /// Read a record (or records with --prefix / --suffix)
    Read {
        key: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long)]
        suffix: bool,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, value_parser = ["asc", "desc"], default_value = "asc")]
        order: String,
        /// Read this node's copy without asking the leader (faster, may be stale)
        #[arg(long)]
        serializable: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Delete a record
    Delete {
        key: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// List keys
    List {
        /// Only keys starting with this
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys ending with this
        #[arg(long, default_value = "")]
        suffix: String,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Skip this many matching keys first
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, value_parser = ["asc", "desc"], default_value = "asc")]
        order: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// List databases
    Databases,
    /// List the tables of a database
    Tables {
        #[arg(short = 'd', long, default_value = "")]
        database: String,
    },
}

fn record_json(r: &Record) -> Value {
    let mut v = json!({
        "key": r.key,
        "expiry": r.expiry,
        "create_revision": r.create_revision,
        "mod_revision": r.mod_revision,
        "version": r.version,
        "lease": r.lease,
        "metadata": r.metadata.iter().map(|(k, f)| (k.clone(), json!({"type": f.r#type, "value": f.value}))).collect::<serde_json::Map<_, _>>(),
    });
    put_bytes(&mut v, "value", &r.value);
    v
}

/// `LOCK:TOKEN` as a fence.
fn parse_fence(s: &str) -> Result<micro::proto::sync::Fence, String> {
    let (lock, token) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not LOCK:TOKEN"))?;
    let token = token
        .parse()
        .map_err(|_| format!("`{token}` is not a token (a number)"))?;
    Ok(micro::proto::sync::Fence {
        lock: lock.to_string(),
        token,
    })
}

/// One change of a watch, as a line: `REVISION TYPE KEY VALUE` or a JSON object.
fn print_change(revision: u64, e: &micro::proto::store::WatchEvent, out: Output) {
    let rec = e.record.clone().unwrap_or_default();
    match out {
        Output::Json => {
            let mut v = record_json(&rec);
            v["revision"] = json!(revision);
            v["type"] = json!(e.r#type);
            if e.r#type == "delete" {
                if let Some(o) = v.as_object_mut() {
                    o.remove("value");
                }
                v["value"] = Value::Null;
            }
            if let Some(p) = &e.prev_record {
                put_bytes(&mut v, "prev_value", &p.value);
            }
            println!("{v}");
        }
        Output::Table => {
            let mut line = format!("{revision}\t{}\t{}", e.r#type, rec.key);
            if e.r#type == "put" {
                line.push('\t');
                line.push_str(&String::from_utf8_lossy(&rec.value));
            }
            if let Some(p) = &e.prev_record {
                line.push_str("\t(was ");
                line.push_str(&String::from_utf8_lossy(&p.value));
                line.push(')');
            }
            println!("{line}");
        }
    }
}

pub(super) async fn store(server: &Target, out: Output, cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    let client = server.connect().await?;
    match cmd {
        StoreCmd::Write {
            key,
            value,
            expiry,
            lease,
            fence,
            scope,
        } => {
            let opts = micro::store::Put {
                ttl: expiry,
                lease,
                fence,
            };
            let rev = client
                .store()
                .scope(&scope.database, &scope.table)
                .put(&key, value.into_bytes(), opts)
                .await?;
            if out == Output::Json {
                print_json(&json!({"key": key, "revision": rev}));
            }
        }
        StoreCmd::Watch {
            key,
            prefix,
            from_revision,
            limit,
            prev,
            scope,
        } => {
            let opts = micro::store::WatchOptions {
                prefix,
                from_revision,
                prev_record: prev,
                progress_every: None,
            };
            let mut w = client
                .store()
                .scope(&scope.database, &scope.table)
                .watch(&key, opts)
                .await?;
            let mut seen = 0u64;
            while let Some(resp) = w.next().await? {
                for e in &resp.events {
                    print_change(resp.revision, e, out);
                    seen += 1;
                    if limit > 0 && seen >= limit {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        }
        StoreCmd::Compact { revision } => {
            let first = client.store().compact(revision).await?;
            match out {
                Output::Json => print_json(&json!({"compact_revision": first})),
                Output::Table => println!("history kept from revision {first}"),
            }
        }
        StoreCmd::Read {
            key,
            prefix,
            suffix,
            limit,
            offset,
            order,
            serializable,
            scope,
        } => {
            let q = Query {
                prefix,
                suffix,
                limit,
                offset,
                descending: order == "desc",
                serializable,
            };
            let recs = client
                .store()
                .scope(&scope.database, &scope.table)
                .query(&key, q)
                .await?;
            if recs.is_empty() && !prefix && !suffix {
                eprintln!("key {key:?} not found");
                return Ok(ExitCode::FAILURE);
            }
            match out {
                Output::Json => print_json(&Value::Array(recs.iter().map(record_json).collect())),
                Output::Table if !prefix && !suffix => {
                    println!("{}", String::from_utf8_lossy(&recs[0].value));
                }
                Output::Table => {
                    let mut t = table(&["key", "value", "expiry"]);
                    for r in &recs {
                        let exp = if r.expiry > 0 {
                            format!("{}s", r.expiry)
                        } else {
                            "-".into()
                        };
                        t.add_row(vec![
                            r.key.clone(),
                            String::from_utf8_lossy(&r.value).into_owned(),
                            exp,
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        StoreCmd::Delete { key, scope } => {
            client
                .store()
                .scope(&scope.database, &scope.table)
                .delete(&key)
                .await?;
            if out == Output::Json {
                print_json(&json!({"key": key, "deleted": true}));
            }
        }
        StoreCmd::List {
            prefix,
            suffix,
            limit,
            offset,
            order,
            scope,
        } => {
            let q = micro::store::ListQuery {
                prefix,
                suffix,
                limit,
                offset,
                descending: order == "desc",
            };
            let keys = client
                .store()
                .scope(&scope.database, &scope.table)
                .list_with(q)
                .await?;
            match out {
                Output::Json => print_json(&json!(keys)),
                Output::Table => keys.iter().for_each(|k| println!("{k}")),
            }
        }
        StoreCmd::Databases => {
            let dbs = client.store().databases().await?;
            match out {
                Output::Json => print_json(&json!(dbs)),
                Output::Table => dbs.iter().for_each(|d| println!("{d}")),
            }
        }
        StoreCmd::Tables { database } => {
            let tables = client.store().tables(&database).await?;
            match out {
                Output::Json => print_json(&json!(tables)),
                Output::Table => tables.iter().for_each(|t| println!("{t}")),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
