//! Dynamic config (Micro v3's `config.Config`): typed gets, sets, compare-and-set, watch.

use crate::Transport as Channel;
use micro_proto::config as pb;
use pb::config_client::ConfigClient;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Config operations in one namespace (default `micro`).
#[derive(Clone)]
pub struct Config {
    client: ConfigClient<Channel>,
    namespace: String,
}

/// A value read from config, with the revision to compare-and-set against.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

/// A running config watch: one [`pb::WatchResponse`] per changed leaf, in revision order.
pub type ConfigWatcher = crate::resumable::Resumable<pb::WatchResponse>;

fn bad_json(e: serde_json::Error) -> Error {
    Error::Status(tonic::Status::invalid_argument(format!(
        "config value: {e}"
    )))
}

impl Config {
    pub(crate) fn new(channel: Channel) -> Self {
        Config {
            client: ConfigClient::new(channel),
            namespace: String::new(),
        }
    }

    /// The same client in another namespace.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// The raw JSON at `path` (`null` when nothing is there) and its revision; secrets read
    /// as `"[secret]"` unless `secrets`.
    pub async fn get_json(&self, path: &str, secrets: bool) -> Result<Versioned<String>, Error> {
        let req = pb::GetRequest {
            namespace: self.namespace.clone(),
            path: path.to_string(),
            options: Some(pb::Options { secret: secrets }),
        };
        let v = self
            .client
            .clone()
            .get(req)
            .await?
            .into_inner()
            .value
            .unwrap_or_default();
        Ok(Versioned {
            value: v.data,
            revision: v.revision,
        })
    }

    /// The value at `path` as a `T` (secrets decrypted); `None` when nothing is there.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Versioned<T>>, Error> {
        let v = self.get_json(path, true).await?;
        let json: serde_json::Value = serde_json::from_str(&v.value).map_err(bad_json)?;
        if json.is_null() {
            return Ok(None);
        }
        Ok(Some(Versioned {
            value: serde_json::from_value(json).map_err(bad_json)?,
            revision: v.revision,
        }))
    }

    async fn set_inner<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        secret: bool,
        if_revision: Option<u64>,
    ) -> Result<u64, Error> {
        let req = pb::SetRequest {
            namespace: self.namespace.clone(),
            path: path.to_string(),
            value: Some(pb::Value {
                data: serde_json::to_string(value).map_err(bad_json)?,
                format: "json".into(),
                revision: 0,
            }),
            options: Some(pb::Options { secret }),
            if_revision,
        };
        Ok(self.client.clone().set(req).await?.into_inner().revision)
    }

    /// Sets `path` (an object merges its leaves); returns the write's revision.
    pub async fn set<T: Serialize>(&self, path: &str, value: &T) -> Result<u64, Error> {
        self.set_inner(path, value, false, None).await
    }

    /// Sets `path` encrypted (reads show `"[secret]"` unless they ask for secrets).
    pub async fn set_secret<T: Serialize>(&self, path: &str, value: &T) -> Result<u64, Error> {
        self.set_inner(path, value, true, None).await
    }

    /// Sets `path` only if its revision is still `revision` (0: only if absent); a mismatch is
    /// `FAILED_PRECONDITION`.
    pub async fn compare_and_set<T: Serialize>(
        &self,
        path: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, Error> {
        self.set_inner(path, value, false, Some(revision)).await
    }

    /// Removes the value or subtree at `path`.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        let req = pb::DeleteRequest {
            namespace: self.namespace.clone(),
            path: path.to_string(),
        };
        self.client.clone().delete(req).await?;
        Ok(())
    }

    /// Makes a new cluster key for secrets written from now on; returns its id.
    pub async fn rotate_key(&self) -> Result<u32, Error> {
        Ok(self
            .client
            .clone()
            .rotate_key(pb::RotateKeyRequest {})
            .await?
            .into_inner()
            .key_id)
    }

    /// Watches every change at or under `path` from `from_revision` (0: changes after now).
    pub async fn watch(&self, path: &str, from_revision: u64) -> Result<ConfigWatcher, Error> {
        let req = pb::WatchRequest {
            namespace: self.namespace.clone(),
            path: path.to_string(),
            from_revision,
        };
        let stream = self.client.clone().watch(req).await?.into_inner();
        Ok(crate::resumable::Resumable::new(stream, from_revision))
    }
}
