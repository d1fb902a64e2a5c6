//! `config.Config`, Micro v3 compatible, replicated and watchable.
//!
//! JSON is handled here, at the edge: a `Set` is flattened into leaves (an object merges its
//! leaves, anything else is one leaf), secret leaves are encrypted here with AES-256-GCM under
//! the cluster's config key (kept in the replicated state, created by the first secret `Set`),
//! so the log, the views and snapshots only ever hold ciphertext. A `Get` reassembles the
//! document from the leaves under the path.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use micro_cluster::{now_ms, Node, WatchSpec};
use micro_proto::config as pb;
use micro_state::views::config::{self as view, Config, NewLeaf};
use serde_json::Value as Json;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::errors::{invalid, status};

/// What a secret reads as without `options.secret`, as in Micro v3.
const HIDDEN: &str = "[secret]";
/// Ciphertext format: `v1:KEYID:` + base64(nonce ‖ AES-256-GCM(json, aad = namespace \0 path)),
/// KEYID the config key it was written with.
const CIPHER_PREFIX: &str = "v1:";

pub struct ConfigService {
    node: Node,
}

impl ConfigService {
    pub fn server(node: Node) -> pb::config_server::ConfigServer<ConfigService> {
        pb::config_server::ConfigServer::new(ConfigService { node })
    }

    /// The cluster's current config key and its id, creating the first (once, cluster-wide)
    /// if no secret was ever set.
    async fn key(&self) -> Result<(u32, Vec<u8>), Status> {
        if let Some(ks) = view::secret_keys(self.node.view()).map_err(|e| status(e.into()))? {
            if let Some(k) = ks.keys.get(&ks.current) {
                return Ok((ks.current, k.clone()));
            }
        }
        self.propose_key(|key| view::Cmd::InitKey { key }).await
    }

    async fn propose_key(
        &self,
        cmd: impl FnOnce(Vec<u8>) -> view::Cmd,
    ) -> Result<(u32, Vec<u8>), Status> {
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
        match self.node.run::<Config>(cmd(k)).await.map_err(status)? {
            (_, view::Out::Key { id, key }) => Ok((id, key)),
            (_, other) => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

/// `a.b.c` → segments; the empty path is the whole document.
fn path_of(path: &str) -> Result<Vec<String>, Status> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let segs: Vec<String> = path.split('.').map(String::from).collect();
    if segs.iter().any(String::is_empty) {
        return Err(invalid(
            "path",
            format!("{path:?} has an empty segment: use dot-separated names like a.b.c"),
        ));
    }
    Ok(segs)
}

fn aad(ns: &str, path: &[String]) -> Vec<u8> {
    let mut a = view::namespace_name(ns).as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(path.join(".").as_bytes());
    a
}

fn encrypt(
    (id, key): (u32, &[u8]),
    ns: &str,
    path: &[String],
    json: &str,
) -> Result<String, Status> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    let aad = aad(ns, path);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: json.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| Status::internal("encryption failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(format!(
        "{CIPHER_PREFIX}{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}

fn decrypt(keys: &view::Keys, ns: &str, path: &[String], text: &str) -> Result<String, Status> {
    let bad = || Status::data_loss(format!("the secret at {} does not decrypt", path.join(".")));
    let (id, body) = text
        .strip_prefix(CIPHER_PREFIX)
        .and_then(|t| t.split_once(':'))
        .ok_or_else(bad)?;
    let key = id
        .parse::<u32>()
        .ok()
        .and_then(|id| keys.keys.get(&id))
        .ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .filter(|r| r.len() > 12)
        .ok_or_else(bad)?;
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let aad = aad(ns, path);
    let pt = cipher
        .decrypt(
            Nonce::from_slice(&raw[..12]),
            Payload {
                msg: &raw[12..],
                aad: &aad,
            },
        )
        .map_err(|_| bad())?;
    String::from_utf8(pt).map_err(|_| bad())
}

/// Flattens a JSON value into leaves relative to where it is set: an object's leaves (an
/// empty object has none), or the value itself.
fn flatten(v: &Json, at: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match v {
        Json::Object(m) => {
            for (k, child) in m {
                at.push(k.clone());
                flatten(child, at, out);
                at.pop();
            }
        }
        other => out.push((at.clone(), other.to_string())),
    }
}

/// Puts `v` at `rel` inside `root` (making objects on the way).
fn insert(root: &mut Json, rel: &[String], v: Json) {
    let Some((last, parents)) = rel.split_last() else {
        *root = v;
        return;
    };
    let mut cur = root;
    for seg in parents {
        if !cur.is_object() {
            *cur = Json::Object(Default::default());
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(seg.clone())
            .or_insert(Json::Null);
    }
    if !cur.is_object() {
        *cur = Json::Object(Default::default());
    }
    cur.as_object_mut()
        .expect("made an object above")
        .insert(last.clone(), v);
}

impl ConfigService {
    /// The document (or value) at `path`, with its revision; `null` when nothing is there.
    async fn read(&self, ns: &str, path: &[String], secrets: bool) -> Result<(Json, u64), Status> {
        self.node.read_barrier(true).await.map_err(status)?;
        read_local(&self.node, ns, path, secrets)
    }
}

/// The value at `path` (dot-separated) of namespace `ns`, secrets decrypted, from this node's
/// copy: for the runtime, which hands config secrets to the instances it starts.
pub(crate) fn secret_value(node: &Node, ns: &str, path: &str) -> Result<Json, Status> {
    read_local(node, ns, &path_of(path)?, true).map(|(v, _)| v)
}

/// [`ConfigService::read`] without the read barrier.
fn read_local(
    node: &Node,
    ns: &str,
    path: &[String],
    secrets: bool,
) -> Result<(Json, u64), Status> {
    let leaves = view::leaves(node.view(), ns, path).map_err(|e| status(e.into()))?;
    let key = if secrets && leaves.iter().any(|(_, l)| l.secret) {
        view::secret_keys(node.view()).map_err(|e| status(e.into()))?
    } else {
        None
    };
    let mut root = Json::Null;
    let mut revision = 0;
    for (p, leaf) in leaves {
        revision = revision.max(leaf.mod_revision);
        let value = if leaf.secret {
            match &key {
                Some(k) => serde_json::from_str(&decrypt(k, ns, &p, &leaf.json)?)
                    .map_err(|e| Status::data_loss(e.to_string()))?,
                None => Json::String(HIDDEN.into()),
            }
        } else {
            serde_json::from_str(&leaf.json).map_err(|e| Status::data_loss(e.to_string()))?
        };
        insert(&mut root, &p[path.len()..], value);
    }
    Ok((root, revision))
}

type WatchStream = super::feed::ResponseStream<pb::WatchResponse>;

#[tonic::async_trait]
impl pb::config_server::Config for ConfigService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        req.namespace = caller.namespace_or("namespace", &req.namespace)?;
        let path = path_of(&req.path)?;
        let secrets = req.options.is_some_and(|o| o.secret);
        let (doc, revision) = self.read(&req.namespace, &path, secrets).await?;
        Ok(Response::new(pb::GetResponse {
            value: Some(pb::Value {
                data: doc.to_string(),
                format: "json".into(),
                revision,
            }),
        }))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        req.namespace = caller.namespace_or("namespace", &req.namespace)?;
        let path = path_of(&req.path)?;
        let data = req.value.map(|v| v.data).unwrap_or_default();
        let json: Json = serde_json::from_str(&data).map_err(|e| {
            invalid(
                "value.data",
                format!("is not JSON ({e}); a string needs quotes: \"\\\"text\\\"\""),
            )
        })?;
        let mut flat = Vec::new();
        flatten(&json, &mut Vec::new(), &mut flat);
        let secret = req.options.is_some_and(|o| o.secret);
        let key = if secret {
            Some(self.key().await?)
        } else {
            None
        };
        let mut leaves = Vec::with_capacity(flat.len());
        for (rel, text) in flat {
            let json = match &key {
                Some((id, k)) => {
                    let full: Vec<String> = path.iter().chain(&rel).cloned().collect();
                    encrypt((*id, k), &req.namespace, &full, &text)?
                }
                None => text,
            };
            leaves.push(NewLeaf {
                path: rel,
                json,
                secret,
            });
        }
        let cmd = view::Cmd::Set {
            namespace: req.namespace,
            path,
            leaves,
            if_revision: req.if_revision,
        };
        match self.node.run::<Config>(cmd).await.map_err(status)? {
            (_, view::Out::Set { revision }) => Ok(Response::new(pb::SetResponse { revision })),
            (_, view::Out::RevisionMismatch { current }) => {
                Err(Status::failed_precondition(format!(
                    "if_revision {} does not match: the path is at revision {current}",
                    req.if_revision.unwrap_or_default()
                )))
            }
            (_, other) => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        req.namespace = caller.namespace_or("namespace", &req.namespace)?;
        let cmd = view::Cmd::Delete {
            namespace: req.namespace,
            path: path_of(&req.path)?,
        };
        self.node.run::<Config>(cmd).await.map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        req.namespace = caller.namespace_or("namespace", &req.namespace)?;
        let path = path_of(&req.path)?;
        let (doc, _) = ConfigService::read(self, &req.namespace, &path, false).await?;
        let data = doc.to_string();
        Ok(Response::new(pb::ReadResponse {
            change: Some(pb::Change {
                namespace: view::namespace_name(&req.namespace).to_string(),
                path: req.path,
                change_set: Some(pb::ChangeSet {
                    checksum: format!("{:08x}", crc32fast::hash(data.as_bytes())),
                    data,
                    format: "json".into(),
                    source: "config".into(),
                    timestamp: (now_ms() / 1000) as i64,
                }),
            }),
        }))
    }

    async fn rotate_key(
        &self,
        _req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let (key_id, _) = self.propose_key(|key| view::Cmd::RotateKey { key }).await?;
        Ok(Response::new(pb::RotateKeyResponse { key_id }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req);
        let mut req = req.into_inner();
        req.namespace = caller.namespace_or("namespace", &req.namespace)?;
        let path = path_of(&req.path)?;
        let spec = WatchSpec {
            key: view::key(&req.namespace, &path),
            prefix: true,
            from_revision: req.from_revision,
            progress_every: None,
        };
        let rx = self.node.watch(spec).await.map_err(status)?;
        let stream = super::feed::per_change(rx, |revision, c| {
            let (_, p) = view::parse_key(&c.key)?;
            let value = match &c.value {
                None => Ok(None),
                Some(v) => micro_state::codec::decode::<view::Leaf>(v)
                    .map(|l| {
                        Some(pb::Value {
                            data: if l.secret {
                                Json::String(HIDDEN.into()).to_string()
                            } else {
                                l.json
                            },
                            format: "json".into(),
                            revision,
                        })
                    })
                    .map_err(super::feed::corrupt),
            };
            Some(value.map(|value| pb::WatchResponse {
                revision,
                path: p.join("."),
                deleted: value.is_none(),
                value,
            }))
        });
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_only_at_their_own_path_and_key() {
        let keys = view::Keys {
            current: 2,
            keys: [(1, vec![7u8; 32]), (2, vec![9u8; 32])].into(),
        };
        let p = |s: &str| path_of(s).unwrap();
        let ct = encrypt(
            (1, &keys.keys[&1]),
            "micro",
            &p("db.password"),
            "\"hunter2\"",
        )
        .unwrap();
        assert!(ct.starts_with("v1:1:") && !ct.contains("hunter2"), "{ct}");
        // Still readable after a rotation: the ciphertext names its key.
        assert_eq!(
            decrypt(&keys, "micro", &p("db.password"), &ct).unwrap(),
            "\"hunter2\""
        );
        assert!(decrypt(&keys, "micro", &p("db.user"), &ct).is_err());
        assert!(decrypt(&keys, "other", &p("db.password"), &ct).is_err());
        let wrong = ct.replacen("v1:1:", "v1:2:", 1);
        assert!(decrypt(&keys, "micro", &p("db.password"), &wrong).is_err());
    }

    #[test]
    fn flatten_and_insert_are_inverse() {
        let v: Json = serde_json::from_str(r#"{"a":{"b":1,"c":[1,2]},"d":"x"}"#).unwrap();
        let mut flat = Vec::new();
        flatten(&v, &mut Vec::new(), &mut flat);
        let mut back = Json::Null;
        for (p, text) in flat {
            insert(&mut back, &p, serde_json::from_str(&text).unwrap());
        }
        assert_eq!(back, v);
        assert!(path_of("a..b").is_err());
    }
}
