//! Auth: accounts, rules, refresh tokens and the cluster's token-signing keys, per namespace
//! (an account's namespace is its issuer, as in Micro v3).
//!
//! Everything secret arrives already derived at the edge: account secrets as argon2 PHC
//! strings, refresh tokens as SHA-256 digests, signing keys as generated key pairs (apply has
//! no RNG). Nothing here is written to the change feed: watching the store must never show a
//! password hash. Every rule change bumps `META_RULES_EPOCH`, which front ends compare to know
//! when their cached rules are stale (logins and account changes leave it alone: the caches
//! hold nothing of them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{check_name, reject, Outcome, FIXED_SIZE};
use crate::keys;
use crate::storage::{prefix_end, Overlay, Read, StorageError};

/// Marker for [`crate::command::View`].
pub struct Auth;

/// The namespace of the cluster's own administrators.
pub const ADMIN_NAMESPACE: &str = "micro";
/// How long a retired signing key still verifies tokens (the longest access token lifetime).
pub const KEY_GRACE_MS: u64 = 24 * 3600 * 1000;
/// The most scopes / metadata entries an account may carry.
const MAX_SCOPES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Account {
    pub id: String,
    /// Login name (defaults to the id); unique within the namespace.
    pub name: String,
    /// `user` or `service` (Micro v3's types).
    pub kind: String,
    pub issuer: String,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// argon2 PHC string of the secret; never the secret itself.
    pub secret_hash: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Rule {
    pub id: String,
    /// `""` public, `*` any account of the namespace, `+` any account, else a scope name.
    pub scope: String,
    pub resource_type: String,
    pub resource_name: String,
    pub resource_endpoint: String,
    /// Micro's `Access`: 1 granted, 2 denied.
    pub access: i32,
    pub priority: i32,
}

/// A refresh token as stored: the account it logs in and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refresh {
    pub expires_ms: u64,
}

/// One token-signing key pair (Ed25519: PKCS#8 document and raw public key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub pkcs8: Vec<u8>,
    pub public: Vec<u8>,
    /// When a newer key replaced it (0 while current); it verifies until `retired_ms +
    /// KEY_GRACE_MS`.
    pub retired_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Keys {
    pub current: u32,
    pub keys: BTreeMap<u32, SigningKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// Sets the first signing key; later proposals are ignored (the first wins).
    InitKey {
        pkcs8: Vec<u8>,
        public: Vec<u8>,
    },
    /// Makes a new key current; the old one keeps verifying for `KEY_GRACE_MS`, keys retired
    /// longer ago are dropped.
    RotateKey {
        pkcs8: Vec<u8>,
        public: Vec<u8>,
    },
    /// Creates an account; `Exists` if the id or the name is taken in its namespace.
    CreateAccount(Account),
    /// Creates the first administrator: only if namespace `micro` has no account yet.
    Bootstrap(Account),
    /// Removes an account, its name and its refresh tokens.
    DeleteAccount {
        namespace: String,
        id: String,
    },
    /// Replaces the secret hash, if it is still `if_hash` (the one the edge verified the old
    /// secret against); drops the account's refresh tokens.
    ChangeSecret {
        namespace: String,
        id: String,
        if_hash: String,
        secret_hash: String,
    },
    /// Records a refresh token for an existing account.
    AddRefresh {
        namespace: String,
        id: String,
        digest: Vec<u8>,
        expires_ms: u64,
    },
    /// Creates or replaces a rule.
    PutRule {
        namespace: String,
        rule: Rule,
    },
    DeleteRule {
        namespace: String,
        id: String,
    },
    /// As `AddRefresh`, and drops the account's refresh tokens that have expired by the
    /// entry's clock, so an account that logs in often does not collect them. (Appended:
    /// `AddRefresh` keeps its meaning for the entries already in logs.)
    AddRefreshPruned {
        namespace: String,
        id: String,
        digest: Vec<u8>,
        expires_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    Done,
    Exists,
    NotFound,
    /// `ChangeSecret`'s `if_hash` no longer matches.
    Mismatch,
    /// The current signing key.
    Key {
        kid: u32,
    },
}

fn check_account(a: &Account) -> Result<(), Outcome> {
    check_name("id", &a.id, true)?;
    check_name("name", &a.name, true)?;
    check_name("options.namespace", &a.issuer, true)?;
    check_name("type", &a.kind, true)?;
    check_name("secret", &a.secret_hash, true)?;
    if a.scopes.len() > MAX_SCOPES || a.metadata.len() > MAX_SCOPES {
        return Err(reject(
            "scopes",
            format!("at most {MAX_SCOPES} scopes and {MAX_SCOPES} metadata entries"),
        ));
    }
    for s in &a.scopes {
        check_name("scopes", s, true)?;
    }
    for (k, v) in &a.metadata {
        check_name("metadata", k, true)?;
        check_name("metadata", v, false)?;
    }
    Ok(())
}

impl Cmd {
    pub fn size_hint(&self) -> usize {
        match self {
            Cmd::InitKey { pkcs8, public } | Cmd::RotateKey { pkcs8, public } => {
                FIXED_SIZE + pkcs8.len() + public.len()
            }
            Cmd::CreateAccount(a) | Cmd::Bootstrap(a) => {
                FIXED_SIZE
                    + a.id.len()
                    + a.name.len()
                    + a.secret_hash.len()
                    + a.scopes.iter().map(String::len).sum::<usize>()
                    + a.metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            _ => 2 * FIXED_SIZE,
        }
    }

    pub fn validate(&self) -> Result<(), Outcome> {
        match self {
            Cmd::InitKey { pkcs8, public } | Cmd::RotateKey { pkcs8, public } => {
                if pkcs8.is_empty() || public.len() != 32 {
                    return Err(reject("key", "must be an Ed25519 key pair".into()));
                }
                Ok(())
            }
            Cmd::CreateAccount(a) | Cmd::Bootstrap(a) => check_account(a),
            Cmd::DeleteAccount { namespace, id } | Cmd::DeleteRule { namespace, id } => {
                check_name("options.namespace", namespace, true)?;
                check_name("id", id, true)
            }
            Cmd::ChangeSecret {
                namespace,
                id,
                secret_hash,
                ..
            } => {
                check_name("options.namespace", namespace, true)?;
                check_name("id", id, true)?;
                check_name("new_secret", secret_hash, true)
            }
            Cmd::AddRefresh {
                namespace,
                id,
                digest,
                ..
            }
            | Cmd::AddRefreshPruned {
                namespace,
                id,
                digest,
                ..
            } => {
                check_name("options.namespace", namespace, true)?;
                check_name("id", id, true)?;
                if digest.len() != 32 {
                    return Err(reject("refresh_token", "digest must be 32 bytes".into()));
                }
                Ok(())
            }
            Cmd::PutRule { namespace, rule } => {
                check_name("options.namespace", namespace, true)?;
                check_name("rule.id", &rule.id, true)?;
                check_name("rule.scope", &rule.scope, false)?;
                check_name("rule.resource.type", &rule.resource_type, true)?;
                check_name("rule.resource.name", &rule.resource_name, true)?;
                check_name("rule.resource.endpoint", &rule.resource_endpoint, true)?;
                if !(1..=2).contains(&rule.access) {
                    return Err(reject("rule.access", "must be GRANTED or DENIED".into()));
                }
                Ok(())
            }
        }
    }
}

fn corrupt(what: &str, e: codec::Error) -> StorageError {
    StorageError(format!("corrupt auth {what}: {e}"))
}

/// Key kinds under the AUTH prefix.
const ACCOUNT: u8 = b'a';
const NAME: u8 = b'n';
const RULE: u8 = b'r';
const REFRESH: u8 = b't';

/// `AUTH kind ns [id] [tail]`: the namespace and the id are length-prefixed.
fn key(kind: u8, ns: &str, id: Option<&str>, tail: &[u8]) -> Vec<u8> {
    let mut out = vec![keys::AUTH, kind];
    keys::push_str(&mut out, ns);
    if let Some(id) = id {
        keys::push_str(&mut out, id);
    }
    out.extend_from_slice(tail);
    out
}

fn account_key(ns: &str, id: &str) -> Vec<u8> {
    key(ACCOUNT, ns, Some(id), b"")
}

fn name_key(ns: &str, name: &str) -> Vec<u8> {
    key(NAME, ns, Some(name), b"")
}

fn rule_key(ns: &str, id: &str) -> Vec<u8> {
    key(RULE, ns, Some(id), b"")
}

fn refresh_key(ns: &str, id: &str, digest: &[u8]) -> Vec<u8> {
    key(REFRESH, ns, Some(id), digest)
}

fn scan_values<S: Read + ?Sized, T: serde::de::DeserializeOwned>(
    s: &S,
    prefix: &[u8],
    what: &str,
) -> Result<Vec<(Vec<u8>, T)>, StorageError> {
    let mut out = Vec::new();
    let mut err = None;
    s.scan(prefix, prefix_end(prefix).as_deref(), false, &mut |k, v| {
        match codec::decode::<T>(v) {
            Ok(t) => out.push((k.to_vec(), t)),
            Err(e) => err = Some(corrupt(what, e)),
        }
        err.is_none()
    })?;
    err.map_or(Ok(out), Err)
}

/// The account `id` of namespace `ns`.
pub fn account<S: Read + ?Sized>(
    s: &S,
    ns: &str,
    id: &str,
) -> Result<Option<Account>, StorageError> {
    match s.get(&account_key(ns, id))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(|e| corrupt("account", e))?)),
        None => Ok(None),
    }
}

/// The account logging in as `who` (its id, else its name) in namespace `ns`.
pub fn login<S: Read + ?Sized>(
    s: &S,
    ns: &str,
    who: &str,
) -> Result<Option<Account>, StorageError> {
    if let Some(a) = account(s, ns, who)? {
        return Ok(Some(a));
    }
    match s.get(&name_key(ns, who))? {
        Some(id) => account(s, ns, &String::from_utf8_lossy(&id)),
        None => Ok(None),
    }
}

/// Every account of namespace `ns`, by id.
pub fn accounts<S: Read + ?Sized>(s: &S, ns: &str) -> Result<Vec<Account>, StorageError> {
    Ok(scan_values(s, &key(ACCOUNT, ns, None, b""), "account")?
        .into_iter()
        .map(|(_, a)| a)
        .collect())
}

/// Every rule of namespace `ns`, by id.
pub fn rules<S: Read + ?Sized>(s: &S, ns: &str) -> Result<Vec<Rule>, StorageError> {
    Ok(scan_values(s, &key(RULE, ns, None, b""), "rule")?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The refresh token with `digest` of account `id`, if it exists.
/// The rule `id` of namespace `ns`.
pub fn rule<S: Read + ?Sized>(s: &S, ns: &str, id: &str) -> Result<Option<Rule>, StorageError> {
    match s.get(&rule_key(ns, id))? {
        Some(b) => Ok(Some(codec::decode(&b).map_err(|e| corrupt("rule", e))?)),
        None => Ok(None),
    }
}

pub fn refresh<S: Read + ?Sized>(
    s: &S,
    ns: &str,
    id: &str,
    digest: &[u8],
) -> Result<Option<Refresh>, StorageError> {
    match s.get(&refresh_key(ns, id, digest))? {
        Some(b) => Ok(Some(
            codec::decode(&b).map_err(|e| corrupt("refresh token", e))?,
        )),
        None => Ok(None),
    }
}

/// The signing keys, once the first is set.
pub fn signing_keys<S: Read + ?Sized>(s: &S) -> Result<Option<Keys>, StorageError> {
    match s.get(keys::META_AUTH_KEYS)? {
        Some(b) => Ok(Some(
            codec::decode(&b).map_err(|e| corrupt("signing keys", e))?,
        )),
        None => Ok(None),
    }
}

/// The revision that last changed a rule (0: none ever did).
pub fn rules_epoch<S: Read + ?Sized>(s: &S) -> Result<u64, StorageError> {
    Ok(s.get(keys::META_RULES_EPOCH)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

fn bump_rules_epoch<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, revision: u64) {
    ov.put(
        keys::META_RULES_EPOCH.to_vec(),
        revision.to_be_bytes().to_vec(),
    );
}

fn drop_refresh<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    ns: &str,
    id: &str,
) -> Result<(), StorageError> {
    drop_refresh_where(ov, ns, id, |_| true)
}

/// Drops the account's refresh tokens that `doomed` picks.
fn drop_refresh_where<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    ns: &str,
    id: &str,
    doomed: impl Fn(&Refresh) -> bool,
) -> Result<(), StorageError> {
    let prefix = key(REFRESH, ns, Some(id), b"");
    for (k, r) in scan_values::<_, Refresh>(ov, &prefix, "refresh token")? {
        if doomed(&r) {
            ov.delete(k);
        }
    }
    Ok(())
}

fn put_account<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, a: &Account) {
    ov.put(account_key(&a.issuer, &a.id), codec::encode(a));
    ov.put(name_key(&a.issuer, &a.name), a.id.as_bytes().to_vec());
}

fn create<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    a: &Account,
    now: u64,
) -> Result<Out, StorageError> {
    if account(ov, &a.issuer, &a.id)?.is_some() || ov.get(&name_key(&a.issuer, &a.name))?.is_some()
    {
        return Ok(Out::Exists);
    }
    let mut a = a.clone();
    a.created_ms = now;
    put_account(ov, &a);
    Ok(Out::Done)
}

fn install_key<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    pkcs8: &[u8],
    public: &[u8],
    now: u64,
    rotate: bool,
) -> Result<Out, StorageError> {
    let mut ks = match signing_keys(ov)? {
        Some(ks) if !rotate => return Ok(Out::Key { kid: ks.current }),
        Some(ks) => ks,
        None => Keys::default(),
    };
    if let Some(old) = ks.keys.get_mut(&ks.current) {
        old.retired_ms = now;
    }
    ks.keys
        .retain(|_, k| k.retired_ms == 0 || k.retired_ms + KEY_GRACE_MS > now);
    let kid = ks
        .keys
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        .max(ks.current)
        + 1;
    ks.keys.insert(
        kid,
        SigningKey {
            pkcs8: pkcs8.to_vec(),
            public: public.to_vec(),
            retired_ms: 0,
        },
    );
    ks.current = kid;
    ov.put(keys::META_AUTH_KEYS.to_vec(), codec::encode(&ks));
    Ok(Out::Key { kid })
}

pub(crate) fn apply<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    cmd: &Cmd,
    revision: u64,
    now: u64,
) -> Result<Outcome, StorageError> {
    let out = match cmd {
        Cmd::InitKey { pkcs8, public } => install_key(ov, pkcs8, public, now, false)?,
        Cmd::RotateKey { pkcs8, public } => install_key(ov, pkcs8, public, now, true)?,
        Cmd::CreateAccount(a) => create(ov, a, now)?,
        Cmd::Bootstrap(a) => {
            if accounts(ov, ADMIN_NAMESPACE)?.is_empty() {
                create(ov, a, now)?
            } else {
                Out::Exists
            }
        }
        Cmd::DeleteAccount { namespace, id } => match account(ov, namespace, id)? {
            Some(a) => {
                ov.delete(account_key(namespace, id));
                ov.delete(name_key(namespace, &a.name));
                drop_refresh(ov, namespace, id)?;
                Out::Done
            }
            None => Out::NotFound,
        },
        Cmd::ChangeSecret {
            namespace,
            id,
            if_hash,
            secret_hash,
        } => match account(ov, namespace, id)? {
            Some(a) if a.secret_hash != *if_hash => Out::Mismatch,
            Some(mut a) => {
                a.secret_hash = secret_hash.clone();
                put_account(ov, &a);
                drop_refresh(ov, namespace, id)?;
                Out::Done
            }
            None => Out::NotFound,
        },
        Cmd::AddRefresh {
            namespace,
            id,
            digest,
            expires_ms,
        }
        | Cmd::AddRefreshPruned {
            namespace,
            id,
            digest,
            expires_ms,
        } => {
            if account(ov, namespace, id)?.is_none() {
                Out::NotFound
            } else {
                if matches!(cmd, Cmd::AddRefreshPruned { .. }) {
                    drop_refresh_where(ov, namespace, id, |r| r.expires_ms <= now)?;
                }
                let r = Refresh {
                    expires_ms: *expires_ms,
                };
                ov.put(refresh_key(namespace, id, digest), codec::encode(&r));
                Out::Done
            }
        }
        Cmd::PutRule { namespace, rule } => {
            ov.put(rule_key(namespace, &rule.id), codec::encode(rule));
            bump_rules_epoch(ov, revision);
            Out::Done
        }
        Cmd::DeleteRule { namespace, id } => {
            let k = rule_key(namespace, id);
            if ov.get(&k)?.is_some() {
                ov.delete(k);
                bump_rules_epoch(ov, revision);
                Out::Done
            } else {
                Out::NotFound
            }
        }
    };
    Ok(Outcome::Auth(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStore;

    fn acct(ns: &str, id: &str, name: &str) -> Account {
        Account {
            id: id.into(),
            name: name.into(),
            kind: "user".into(),
            issuer: ns.into(),
            secret_hash: "$argon2id$fake".into(),
            ..Default::default()
        }
    }

    fn run(s: &mut MemStore, cmd: Cmd, rev: u64, now: u64) -> Out {
        cmd.validate().unwrap();
        let mut ov = Overlay::new(&*s);
        let out = apply(&mut ov, &cmd, rev, now).unwrap();
        let w = ov.into_writes();
        s.commit(w);
        match out {
            Outcome::Auth(o) => o,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn accounts_names_refresh_tokens_and_deletion() {
        let mut s = MemStore::default();
        assert_eq!(
            run(&mut s, Cmd::CreateAccount(acct("a", "1", "ann")), 1, 10),
            Out::Done
        );
        // Same id or same name in the namespace: taken. Another namespace: fine.
        assert_eq!(
            run(&mut s, Cmd::CreateAccount(acct("a", "1", "bob")), 2, 10),
            Out::Exists
        );
        assert_eq!(
            run(&mut s, Cmd::CreateAccount(acct("a", "2", "ann")), 3, 10),
            Out::Exists
        );
        assert_eq!(
            run(&mut s, Cmd::CreateAccount(acct("b", "1", "ann")), 4, 10),
            Out::Done
        );
        assert_eq!(login(&s, "a", "ann").unwrap().unwrap().id, "1");
        assert_eq!(login(&s, "a", "1").unwrap().unwrap().created_ms, 10);
        let add = |ns: &str, id: &str| Cmd::AddRefresh {
            namespace: ns.into(),
            id: id.into(),
            digest: vec![7; 32],
            expires_ms: 99,
        };
        assert_eq!(run(&mut s, add("a", "1"), 5, 11), Out::Done);
        assert_eq!(run(&mut s, add("a", "9"), 6, 11), Out::NotFound);
        assert!(refresh(&s, "a", "1", &[7; 32]).unwrap().is_some());
        // Logins and accounts leave the rules epoch alone (rule caches stay warm).
        assert_eq!(rules_epoch(&s).unwrap(), 0);
        let del = Cmd::DeleteAccount {
            namespace: "a".into(),
            id: "1".into(),
        };
        assert_eq!(run(&mut s, del.clone(), 7, 12), Out::Done);
        assert_eq!(run(&mut s, del, 8, 12), Out::NotFound);
        assert!(refresh(&s, "a", "1", &[7; 32]).unwrap().is_none());
        assert!(login(&s, "a", "ann").unwrap().is_none());
        assert_eq!(accounts(&s, "b").unwrap().len(), 1);
    }

    #[test]
    fn a_pruning_refresh_token_takes_the_accounts_expired_ones_away() {
        let mut s = MemStore::default();
        run(&mut s, Cmd::CreateAccount(acct("a", "1", "ann")), 1, 10);
        run(&mut s, Cmd::CreateAccount(acct("a", "2", "bob")), 2, 10);
        let add = |id: &str, d: u8, expires_ms| Cmd::AddRefresh {
            namespace: "a".into(),
            id: id.into(),
            digest: vec![d; 32],
            expires_ms,
        };
        assert_eq!(run(&mut s, add("1", 1, 100), 3, 20), Out::Done);
        assert_eq!(run(&mut s, add("1", 2, 500), 4, 20), Out::Done);
        assert_eq!(run(&mut s, add("2", 1, 100), 5, 20), Out::Done);
        // The old command keeps its meaning: nothing is dropped.
        assert_eq!(run(&mut s, add("1", 4, 900), 6, 150), Out::Done);
        assert!(refresh(&s, "a", "1", &[1; 32]).unwrap().is_some());
        // At 150 the first of ann's has expired: her next (pruning) login drops it, keeps the
        // live ones, and leaves bob's alone.
        let pruned = Cmd::AddRefreshPruned {
            namespace: "a".into(),
            id: "1".into(),
            digest: vec![3; 32],
            expires_ms: 900,
        };
        assert_eq!(run(&mut s, pruned, 7, 150), Out::Done);
        assert!(refresh(&s, "a", "1", &[1; 32]).unwrap().is_none());
        assert!(refresh(&s, "a", "1", &[2; 32]).unwrap().is_some());
        assert!(refresh(&s, "a", "1", &[3; 32]).unwrap().is_some());
        assert!(refresh(&s, "a", "2", &[1; 32]).unwrap().is_some());
    }

    #[test]
    fn bootstrap_creates_the_first_admin_only() {
        let mut s = MemStore::default();
        let b = |id: &str| Cmd::Bootstrap(acct(ADMIN_NAMESPACE, id, id));
        assert_eq!(run(&mut s, b("admin"), 1, 1), Out::Done);
        assert_eq!(run(&mut s, b("other"), 2, 1), Out::Exists);
        assert_eq!(accounts(&s, ADMIN_NAMESPACE).unwrap().len(), 1);
    }

    #[test]
    fn change_secret_is_conditional_and_drops_refresh_tokens() {
        let mut s = MemStore::default();
        run(&mut s, Cmd::CreateAccount(acct("a", "1", "ann")), 1, 1);
        run(
            &mut s,
            Cmd::AddRefresh {
                namespace: "a".into(),
                id: "1".into(),
                digest: vec![1; 32],
                expires_ms: 5,
            },
            2,
            1,
        );
        let change = |if_hash: &str| Cmd::ChangeSecret {
            namespace: "a".into(),
            id: "1".into(),
            if_hash: if_hash.into(),
            secret_hash: "$argon2id$new".into(),
        };
        assert_eq!(run(&mut s, change("stale"), 3, 1), Out::Mismatch);
        assert_eq!(run(&mut s, change("$argon2id$fake"), 4, 1), Out::Done);
        assert_eq!(
            account(&s, "a", "1").unwrap().unwrap().secret_hash,
            "$argon2id$new"
        );
        assert!(refresh(&s, "a", "1", &[1; 32]).unwrap().is_none());
    }

    #[test]
    fn keys_first_wins_rotation_keeps_recent_ones() {
        let mut s = MemStore::default();
        let k = |b: u8| (vec![b; 48], vec![b; 32]);
        let (p, q) = k(1);
        assert_eq!(
            run(
                &mut s,
                Cmd::InitKey {
                    pkcs8: p,
                    public: q
                },
                1,
                0
            ),
            Out::Key { kid: 1 }
        );
        let (p, q) = k(2);
        assert_eq!(
            run(
                &mut s,
                Cmd::InitKey {
                    pkcs8: p,
                    public: q
                },
                2,
                0
            ),
            Out::Key { kid: 1 }
        );
        let (p, q) = k(3);
        assert_eq!(
            run(
                &mut s,
                Cmd::RotateKey {
                    pkcs8: p,
                    public: q
                },
                3,
                100
            ),
            Out::Key { kid: 2 }
        );
        let ks = signing_keys(&s).unwrap().unwrap();
        assert_eq!(ks.current, 2);
        assert_eq!(ks.keys[&1].retired_ms, 100);
        assert_eq!(ks.keys[&1].public, vec![1; 32]);
        // Past the grace period the retired key goes at the next rotation.
        let (p, q) = k(4);
        let later = 100 + KEY_GRACE_MS + 1;
        assert_eq!(
            run(
                &mut s,
                Cmd::RotateKey {
                    pkcs8: p,
                    public: q
                },
                4,
                later
            ),
            Out::Key { kid: 3 }
        );
        let ks = signing_keys(&s).unwrap().unwrap();
        assert_eq!(ks.keys.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn rules_put_list_delete() {
        let mut s = MemStore::default();
        let rule = Rule {
            id: "r1".into(),
            scope: "*".into(),
            resource_type: "service".into(),
            resource_name: "store".into(),
            resource_endpoint: "Store.Read".into(),
            access: 1,
            priority: 1,
        };
        let put = Cmd::PutRule {
            namespace: "a".into(),
            rule: rule.clone(),
        };
        assert_eq!(run(&mut s, put, 1, 1), Out::Done);
        assert_eq!(rules_epoch(&s).unwrap(), 1);
        assert_eq!(rules(&s, "a").unwrap(), vec![rule]);
        assert!(rules(&s, "b").unwrap().is_empty());
        let del = Cmd::DeleteRule {
            namespace: "a".into(),
            id: "r1".into(),
        };
        assert_eq!(run(&mut s, del.clone(), 2, 1), Out::Done);
        assert_eq!(run(&mut s, del, 3, 1), Out::NotFound);
        assert_eq!(
            rules_epoch(&s).unwrap(),
            2,
            "a missing rule's delete changes nothing"
        );
        assert!(rules(&s, "a").unwrap().is_empty());
    }

    #[test]
    fn bad_commands_name_the_field() {
        let bad = Cmd::PutRule {
            namespace: "a".into(),
            rule: Rule {
                id: "r".into(),
                resource_type: "*".into(),
                resource_name: "*".into(),
                resource_endpoint: "*".into(),
                access: 0,
                ..Default::default()
            },
        };
        match bad.validate() {
            Err(Outcome::Rejected { field, .. }) => assert_eq!(field, "rule.access"),
            o => panic!("{o:?}"),
        }
        let mut a = acct("a", "", "x");
        a.id.clear();
        match Cmd::CreateAccount(a).validate() {
            Err(Outcome::Rejected { field, .. }) => assert_eq!(field, "id"),
            o => panic!("{o:?}"),
        }
    }
}
