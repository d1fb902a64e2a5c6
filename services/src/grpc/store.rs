//! `store.Store`, Micro v3 compatible.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use micro_cluster::{now_ms, Node};
use micro_cluster::{WatchEvent, WatchSpec};
use micro_proto::store as pb;
use micro_state::views::store::{self as view, Query};
use micro_state::views::{events as events_view, history};
use micro_state::{keys, Command, Compare, Delete, MetaField, Outcome, Put, Txn};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::errors::{invalid, status};

pub struct StoreService {
    node: Node,
}

impl StoreService {
    pub fn new(node: Node) -> Self {
        StoreService { node }
    }

    pub fn server(node: Node) -> pb::store_server::StoreServer<StoreService> {
        pb::store_server::StoreServer::new(StoreService::new(node))
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    async fn barrier(&self, consistency: &str, field: &str) -> Result<(), Status> {
        let linearizable = match consistency {
            "" | "linearizable" => true,
            "serializable" => false,
            other => {
                return Err(invalid(
                    field,
                    format!("is {other:?}; use \"linearizable\" or \"serializable\""),
                ))
            }
        };
        self.node.read_barrier(linearizable).await.map_err(status)
    }
}

/// The largest number of seconds (an expiry, a timestamp) that fits the state's milliseconds
/// and reads back unchanged: `i64::MAX / 1000` s, about 292 million years.
pub const MAX_SECONDS: i64 = i64::MAX / 1000;

fn descending(order: &str, field: &str) -> Result<bool, Status> {
    match order {
        "" | "asc" => Ok(false),
        "desc" => Ok(true),
        other => Err(invalid(
            field,
            format!("is {other:?}; use \"asc\" or \"desc\""),
        )),
    }
}

fn to_record(e: view::Entry, now: u64) -> pb::Record {
    let expiry = e
        .record
        .expiry_ms
        .map_or(0, |at| at.saturating_sub(now).div_ceil(1000) as i64);
    pb::Record {
        key: e.key,
        value: e.record.value,
        expiry,
        metadata: e
            .record
            .metadata
            .into_iter()
            .map(|(k, f)| {
                (
                    k,
                    pb::Field {
                        r#type: f.kind,
                        value: f.value,
                    },
                )
            })
            .collect(),
        create_revision: e.record.create_revision,
        mod_revision: e.record.mod_revision,
        version: e.record.version,
        lease: e.record.lease,
    }
}

fn put_command(
    node: &Node,
    caller: &Caller,
    req: pb::WriteRequest,
    field: &str,
) -> Result<Command, Status> {
    let fence = req.fence.clone();
    let cmd = put_command_inner(node, caller, req, field)?;
    super::sync::fenced(caller, cmd, fence, field)
}

fn put_command_inner(
    node: &Node,
    caller: &Caller,
    req: pb::WriteRequest,
    field: &str,
) -> Result<Command, Status> {
    let rec = req
        .record
        .ok_or_else(|| invalid(&format!("{field}record"), "is required"))?;
    super::lease::check_use(node, caller, &format!("{field}record.lease"), rec.lease)?;
    if rec.expiry < 0 {
        return Err(invalid(
            &format!("{field}record.expiry"),
            "must be 0 (no expiry) or a number of seconds",
        ));
    }
    if rec.expiry > MAX_SECONDS {
        return Err(invalid(
            &format!("{field}record.expiry"),
            format!(
                "is {}: must be at most {MAX_SECONDS} seconds (the expiry is kept in milliseconds)",
                rec.expiry
            ),
        ));
    }
    let opts = req.options.unwrap_or_default();
    let metadata: BTreeMap<String, MetaField> = rec
        .metadata
        .into_iter()
        .map(|(k, f)| {
            (
                k,
                MetaField {
                    kind: f.r#type,
                    value: f.value,
                },
            )
        })
        .collect();
    Ok(Command::Store(view::Cmd::Put(Put {
        db: caller.namespace_or(&format!("{field}options.database"), &opts.database)?,
        table: opts.table,
        key: rec.key,
        value: rec.value,
        metadata,
        ttl_ms: (rec.expiry as u64).saturating_mul(1000),
        lease: rec.lease,
    })))
}

fn delete_command(caller: &Caller, req: pb::DeleteRequest, field: &str) -> Result<Command, Status> {
    let opts = req.options.unwrap_or_default();
    let cmd = Command::Store(view::Cmd::Delete(Delete {
        db: caller.namespace_or(&format!("{field}options.database"), &opts.database)?,
        table: opts.table,
        key: req.key,
    }));
    super::sync::fenced(caller, cmd, req.fence, field)
}

fn txn_ops(
    node: &Node,
    caller: &Caller,
    ops: Vec<pb::TxnOp>,
    branch: &str,
) -> Result<Vec<Command>, Status> {
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| match op.op {
            Some(pb::txn_op::Op::Write(w)) => {
                put_command(node, caller, w, &format!("{branch}[{i}].write."))
            }
            Some(pb::txn_op::Op::Delete(d)) => {
                delete_command(caller, d, &format!("{branch}[{i}].delete."))
            }
            Some(pb::txn_op::Op::Publish(p)) => {
                super::events::publish_command(caller, p, &format!("{branch}[{i}].publish."))
            }
            None => Err(invalid(
                &format!("{branch}[{i}]"),
                "needs a write or a delete",
            )),
        })
        .collect()
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// A change of the history as a watch event of `db`/`table` (`None` if it is not a store
/// record of that table: the filter makes that impossible).
fn watch_event(
    node: &Node,
    c: history::Change,
    header: usize,
    with_prev: bool,
) -> Result<pb::WatchEvent, Status> {
    let key = String::from_utf8_lossy(&c.key[header..]).into_owned();
    let decode = |bytes: &[u8]| {
        view::decode_record(bytes).map_err(|e| Status::internal(format!("corrupt history: {e}")))
    };
    let record = match &c.value {
        Some(v) => to_record(
            view::Entry {
                key: key.clone(),
                record: decode(v)?,
            },
            now_ms(),
        ),
        None => pb::Record {
            key: key.clone(),
            mod_revision: c.revision,
            ..Default::default()
        },
    };
    let prev_record = if with_prev && c.prev_revision > 0 {
        match history::value_at(node.view(), &c.key, c.prev_revision)
            .map_err(|e| status(e.into()))?
        {
            Some(v) => Some(to_record(
                view::Entry {
                    key,
                    record: decode(&v)?,
                },
                now_ms(),
            )),
            None => None,
        }
    } else {
        None
    };
    Ok(pb::WatchEvent {
        r#type: if c.value.is_some() { "put" } else { "delete" }.into(),
        record: Some(record),
        prev_record,
    })
}

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let mut opts = req.options.unwrap_or_default();
        opts.database = caller.namespace_or("options.database", &opts.database)?;
        if req.key.is_empty() && !opts.prefix && !opts.suffix {
            return Err(invalid(
                "key",
                "must not be empty (or set options.prefix to read everything)",
            ));
        }
        let desc = descending(&opts.order, "options.order")?;
        self.barrier(&opts.consistency, "options.consistency")
            .await?;
        let now = now_ms();
        // Micro's `suffix: true` means the key is a suffix to match.
        let q = Query {
            db: opts.database,
            table: opts.table,
            key: if opts.suffix && !opts.prefix {
                String::new()
            } else {
                req.key.clone()
            },
            prefix: opts.prefix || opts.suffix,
            suffix: if opts.suffix {
                req.key.clone()
            } else {
                String::new()
            },
            limit: opts.limit,
            offset: opts.offset,
            descending: desc,
        };
        let entries = view::query(self.node.view(), &q, now).map_err(|e| status(e.into()))?;
        if entries.is_empty() && !opts.prefix && !opts.suffix {
            return Err(Status::not_found(format!("key {:?} not found", req.key)));
        }
        Ok(Response::new(pb::ReadResponse {
            records: entries.into_iter().map(|e| to_record(e, now)).collect(),
        }))
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let cmd = put_command(&self.node, &Caller::of(&req), req.into_inner(), "")?;
        let (_, out) = self.node.write(cmd).await.map_err(status)?;
        let revision = match out {
            Outcome::Store(view::Out::Put { revision }) => revision,
            other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.node
            .write(delete_command(&Caller::of(&req), req.into_inner(), "")?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let caller = Caller::of(&req);
        let mut opts = req.into_inner().options.unwrap_or_default();
        opts.database = caller.namespace_or("options.database", &opts.database)?;
        let desc = descending(&opts.order, "options.order")?;
        self.barrier(&opts.consistency, "options.consistency")
            .await?;
        let q = Query {
            db: opts.database,
            table: opts.table,
            key: opts.prefix,
            prefix: true,
            suffix: opts.suffix,
            limit: opts.limit,
            offset: opts.offset,
            descending: desc,
        };
        let keys: Vec<String> = view::query(self.node.view(), &q, now_ms())
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(|e| e.key)
            .collect();
        let batches: Vec<Result<pb::ListResponse, Status>> = keys
            .chunks(1000)
            .map(|c| Ok(pb::ListResponse { keys: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn databases(
        &self,
        req: Request<pb::DatabasesRequest>,
    ) -> Result<Response<pb::DatabasesResponse>, Status> {
        let caller = Caller::of(&req);
        self.barrier("", "").await?;
        let mut databases = view::databases(self.node.view()).map_err(|e| status(e.into()))?;
        // An account sees its own namespace's database only.
        if !caller.admin {
            databases.retain(|d| *d == caller.namespace);
        }
        Ok(Response::new(pb::DatabasesResponse { databases }))
    }

    async fn tables(
        &self,
        req: Request<pb::TablesRequest>,
    ) -> Result<Response<pb::TablesResponse>, Status> {
        let caller = Caller::of(&req);
        let db = caller.namespace_or("database", &req.into_inner().database)?;
        self.barrier("", "").await?;
        let tables = view::tables(self.node.view(), &db).map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::TablesResponse { tables }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let txn = Txn {
            compare: req
                .compare
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    Ok(Compare {
                        db: caller.namespace_or(&format!("compare[{i}].database"), &c.database)?,
                        table: c.table,
                        key: c.key,
                        mod_revision: c.mod_revision,
                    })
                })
                .collect::<Result<_, Status>>()?,
            success: txn_ops(&self.node, &caller, req.success, "success")?,
            failure: txn_ops(&self.node, &caller, req.failure, "failure")?,
        };
        let cmd = super::sync::fenced(&caller, Command::Txn(txn), req.fence, "")?;
        let (_, out) = self.node.write(cmd).await.map_err(status)?;
        let Outcome::Txn {
            succeeded,
            revision,
            results,
        } = out
        else {
            return Err(Status::internal("txn produced no outcome"));
        };
        let results = results
            .into_iter()
            .map(|o| match o {
                Outcome::Store(view::Out::Put { revision }) => pb::TxnOpResult {
                    revision,
                    ..Default::default()
                },
                Outcome::Store(view::Out::Deleted { existed }) => pb::TxnOpResult {
                    existed,
                    ..Default::default()
                },
                Outcome::Events(events_view::Out::Published { seq }) => pb::TxnOpResult {
                    sequence: seq,
                    ..Default::default()
                },
                _ => pb::TxnOpResult::default(),
            })
            .collect();
        Ok(Response::new(pb::TxnResponse {
            succeeded,
            results,
            revision,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        req.database = caller.namespace_or("database", &req.database)?;
        if req.key.is_empty() && !req.prefix {
            return Err(invalid(
                "key",
                "must not be empty (or set prefix to watch the whole table)",
            ));
        }
        let (db, table) = (view::db_name(&req.database), view::table_name(&req.table));
        let header = keys::store_key(db, table, "").len();
        let spec = WatchSpec {
            key: keys::store_key(db, table, &req.key),
            prefix: req.prefix,
            from_revision: req.from_revision,
            progress_every: (req.progress_every > 0)
                .then(|| std::time::Duration::from_secs(req.progress_every.min(86_400))),
        };
        let rx = self.node.watch(spec).await.map_err(status)?;
        let node = self.node.clone();
        let with_prev = req.prev_record;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
            let compact_revision = micro_state::compact_revision(node.view()).unwrap_or(0);
            match item.map_err(status)? {
                WatchEvent::Changes { revision, changes } => Ok(pb::WatchResponse {
                    revision,
                    events: changes
                        .into_iter()
                        .map(|c| watch_event(&node, c, header, with_prev))
                        .collect::<Result<_, _>>()?,
                    progress: false,
                    compact_revision,
                }),
                WatchEvent::Progress { revision } => Ok(pb::WatchResponse {
                    revision,
                    events: Vec::new(),
                    progress: true,
                    compact_revision,
                }),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let revision = req.into_inner().revision;
        // Steps are picked from this node's copy: bring it up to date first.
        self.node.read_barrier(true).await.map_err(status)?;
        let view = self.node.view();
        let mut first = micro_state::compact_revision(view).map_err(|e| status(e.into()))?;
        let current = micro_state::revision(view).map_err(|e| status(e.into()))?;
        // One command drops a bounded step; repeat until the asked revision is reached. A
        // revision past the current one goes as it is, for the state machine to refuse whole.
        while first < revision {
            let step = if revision > current + 1 {
                revision
            } else {
                history::compact_step(view, first, revision, history::MAX_COMPACT_CHANGES)
                    .map_err(|e| status(e.into()))?
            };
            let (_, out) = self
                .node
                .run::<micro_state::views::meta::Meta>(micro_state::views::meta::Cmd::Compact {
                    revision: step,
                })
                .await
                .map_err(status)?;
            let micro_state::views::meta::Out::Compacted { revision: now } = out else {
                return Err(Status::internal("compaction produced another outcome"));
            };
            if now <= first {
                break;
            }
            first = now;
        }
        Ok(Response::new(pb::CompactResponse {
            compact_revision: first,
        }))
    }
}
