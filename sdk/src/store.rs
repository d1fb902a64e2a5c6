//! The key-value store client.

use std::time::Duration;

use crate::Transport as Channel;
use futures::StreamExt;
use micro_proto::store as pb;
use pb::store_client::StoreClient;

use crate::Error;

/// Store operations; database and table default to `micro`, as in Micro v3.
#[derive(Clone)]
pub struct Store {
    client: StoreClient<Channel>,
    database: String,
    table: String,
}

/// Options of [`Store::query`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub prefix: bool,
    pub suffix: bool,
    pub limit: u64,
    pub offset: u64,
    pub descending: bool,
    /// Read from the connected node without a read index (faster, may be stale).
    pub serializable: bool,
}

/// Options of [`Store::put`].
#[derive(Debug, Clone, Default)]
pub struct Put {
    /// Expire after this long (whole seconds, rounded up).
    pub ttl: Option<Duration>,
    /// Attach to this lease (the record is deleted with it).
    pub lease: u64,
    /// Write only while this lock token is the lock's newest (see `sync.Sync`).
    pub fence: Option<micro_proto::sync::Fence>,
}

/// Options of [`Store::watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Watch every key starting with the key.
    pub prefix: bool,
    /// The first revision to deliver; 0 means changes after now.
    pub from_revision: u64,
    /// Include each change's previous record (while it is still in the history).
    pub prev_record: bool,
    /// Ask for a progress notification after this long without changes.
    pub progress_every: Option<Duration>,
}

/// A running store watch: one [`pb::WatchResponse`] per revision (all its changes together),
/// or a progress notification.
pub type Watcher = crate::resumable::Resumable<pb::WatchResponse>;

/// Options of [`Store::list_with`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: String,
    /// Only keys ending with this.
    pub suffix: String,
    /// At most this many keys (0: all).
    pub limit: u64,
    /// Skip this many matching keys first.
    pub offset: u64,
    pub descending: bool,
}

impl Store {
    pub(crate) fn new(channel: Channel) -> Self {
        Store {
            client: StoreClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
            database: String::new(),
            table: String::new(),
        }
    }

    /// The same client on another database / table.
    pub fn scope(mut self, database: &str, table: &str) -> Self {
        self.database = database.to_string();
        self.table = table.to_string();
        self
    }

    /// Writes a record; returns its new mod revision.
    pub async fn write(&self, key: &str, value: Vec<u8>) -> Result<u64, Error> {
        self.write_with_ttl(key, value, None).await
    }

    /// Writes a record that expires after `ttl` (whole seconds, rounded up).
    pub async fn write_with_ttl(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<u64, Error> {
        let expiry = ttl.map_or(0, |d| d.as_millis().div_ceil(1000) as i64);
        let req = pb::WriteRequest {
            record: Some(pb::Record {
                key: key.to_string(),
                value,
                expiry,
                ..Default::default()
            }),
            options: Some(pb::WriteOptions {
                database: self.database.clone(),
                table: self.table.clone(),
            }),
            fence: None,
        };
        Ok(self.client.clone().write(req).await?.into_inner().revision)
    }

    /// Writes a record with options (TTL, lease); returns its new mod revision.
    pub async fn put(&self, key: &str, value: Vec<u8>, opts: Put) -> Result<u64, Error> {
        let expiry = opts.ttl.map_or(0, |d| d.as_millis().div_ceil(1000) as i64);
        let req = pb::WriteRequest {
            record: Some(pb::Record {
                key: key.to_string(),
                value,
                expiry,
                lease: opts.lease,
                ..Default::default()
            }),
            options: Some(pb::WriteOptions {
                database: self.database.clone(),
                table: self.table.clone(),
            }),
            fence: opts.fence,
        };
        Ok(self.client.clone().write(req).await?.into_inner().revision)
    }

    /// Watches `key` (or, with `prefix`, every key under it) from a revision: first what
    /// the history holds, then live changes.
    pub async fn watch(&self, key: &str, opts: WatchOptions) -> Result<Watcher, Error> {
        let req = pb::WatchRequest {
            key: key.to_string(),
            prefix: opts.prefix,
            from_revision: opts.from_revision,
            prev_record: opts.prev_record,
            progress_every: opts.progress_every.map_or(0, |d| d.as_secs().max(1)),
            database: self.database.clone(),
            table: self.table.clone(),
        };
        let stream = self.client.clone().watch(req).await?.into_inner();
        Ok(crate::resumable::Resumable::new(stream, opts.from_revision))
    }

    /// Drops the change history below `revision`; returns the first revision still kept.
    pub async fn compact(&self, revision: u64) -> Result<u64, Error> {
        Ok(self
            .client
            .clone()
            .compact(pb::CompactRequest { revision })
            .await?
            .into_inner()
            .compact_revision)
    }

    /// Reads one record; `Err` with `is_not_found()` when there is none.
    pub async fn read(&self, key: &str) -> Result<pb::Record, Error> {
        let mut recs = self.query(key, Query::default()).await?;
        recs.pop()
            .ok_or_else(|| Error::Status(tonic::Status::not_found(format!("{key} not found"))))
    }

    /// Reads records matching `key` with the given options.
    pub async fn query(&self, key: &str, q: Query) -> Result<Vec<pb::Record>, Error> {
        let req = pb::ReadRequest {
            key: key.to_string(),
            options: Some(pb::ReadOptions {
                database: self.database.clone(),
                table: self.table.clone(),
                prefix: q.prefix,
                suffix: q.suffix,
                limit: q.limit,
                offset: q.offset,
                order: if q.descending { "desc" } else { "asc" }.into(),
                consistency: if q.serializable { "serializable" } else { "" }.into(),
            }),
        };
        match self.client.clone().read(req).await {
            Ok(r) => Ok(r.into_inner().records),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Vec::new()),
            Err(s) => Err(s.into()),
        }
    }

    /// Deletes a record.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let req = pb::DeleteRequest {
            key: key.to_string(),
            options: Some(pb::DeleteOptions {
                database: self.database.clone(),
                table: self.table.clone(),
            }),
            fence: None,
        };
        self.client.clone().delete(req).await?;
        Ok(())
    }

    /// Lists keys (optionally under a prefix), gathering the server stream.
    pub async fn list(&self, prefix: &str, limit: u64) -> Result<Vec<String>, Error> {
        self.list_with(ListQuery {
            prefix: prefix.to_string(),
            limit,
            ..Default::default()
        })
        .await
    }

    /// Lists keys with every option of Micro's `ListOptions`.
    pub async fn list_with(&self, q: ListQuery) -> Result<Vec<String>, Error> {
        let req = pb::ListRequest {
            options: Some(pb::ListOptions {
                database: self.database.clone(),
                table: self.table.clone(),
                prefix: q.prefix,
                suffix: q.suffix,
                limit: q.limit,
                offset: q.offset,
                order: if q.descending { "desc" } else { "asc" }.into(),
                // linearizable
                consistency: String::new(),
            }),
        };
        let mut stream = self.client.clone().list(req).await?.into_inner();
        let mut keys = Vec::new();
        while let Some(msg) = stream.next().await {
            keys.extend(msg?.keys);
        }
        Ok(keys)
    }

    pub async fn databases(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .client
            .clone()
            .databases(pb::DatabasesRequest {})
            .await?
            .into_inner()
            .databases)
    }

    pub async fn tables(&self, database: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .client
            .clone()
            .tables(pb::TablesRequest {
                database: database.to_string(),
            })
            .await?
            .into_inner()
            .tables)
    }

    /// Compare-and-swap: applies `success` if every guard holds, else `failure`.
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        Ok(self.client.clone().txn(req).await?.into_inner())
    }
}
