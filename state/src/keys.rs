//! The key layout of the shared keyspace. The first byte names the view; integers are
//! big-endian so byte order is numeric order. Strings are length-prefixed (u16) where another
//! component follows them, so `("a", "bc")` and `("ab", "c")` never collide.

/// Node-local bookkeeping of the state machine (clock, applied log id, membership).
pub const META: u8 = 0x00;
/// Store records: `STORE db table key`.
pub const STORE: u8 = 0x01;
/// The one expiry index of every view: `EXPIRY due_ms(u64) owner_key`, value empty, where
/// `owner_key` is the full key of what expires (its first byte names the owning view).
/// (Schema 1 wrote `EXPIRY due_ms db table key` for store records only; apply migrates it.)
pub const EXPIRY: u8 = 0x02;
/// Record counts per table: `TABLES db table`, value u64 count.
pub const TABLES: u8 = 0x03;

/// Events: `EVENT topic(len-prefixed) seq(u64)`.
pub const EVENT: u8 = 0x04;
/// Topic metadata: `TOPIC topic`.
pub const TOPIC: u8 = 0x05;
/// Consumer groups: `GROUP topic(len-prefixed) group`.
pub const GROUP: u8 = 0x06;

/// Leases: `LEASE id(u64)`.
pub const LEASE: u8 = 0x07;
/// Keys attached to a lease: `LEASE_KEYS id(u64) owner_key`, value empty.
pub const LEASE_KEYS: u8 = 0x08;
/// The change feed: `HISTORY revision(u64) n(u32)`, one per change of the revision.
pub const HISTORY: u8 = 0x09;

/// Registry services: `REGISTRY domain name version` (each length-prefixed).
pub const REGISTRY: u8 = 0x0A;
/// A registry node as a lease owner (never stored itself): `REG_NODE domain name version id`.
pub const REG_NODE: u8 = 0x0B;

/// Config leaves: `CONFIG namespace(len-prefixed) seg 0 seg 0 ...`.
pub const CONFIG: u8 = 0x0C;

/// Lock waiters: `LOCK name(len-prefixed) token(u64)`.
pub const LOCK: u8 = 0x0D;
/// Lock state: `LOCK_META name`.
pub const LOCK_META: u8 = 0x0E;

/// Auth (accounts, names, rules, refresh tokens): `AUTH kind ns(len-prefixed) ...`, see
/// `views::auth`.
pub const AUTH: u8 = 0x0F;

/// The namespace of a lease granted for one (`views::lease`): `LEASE_NS id(u64)`, value the
/// namespace's name; absent: `micro`.
pub const LEASE_NS: u8 = 0x10;

/// Runtime services: `RUNTIME ns(len-prefixed) name` (`views::runtime`).
pub const RUNTIME: u8 = 0x11;

/// The keyspace schema (u64; absent = 1). Apply migrates older schemas at the first entry.
pub const META_SCHEMA: &[u8] = &[META, b'v'];
/// The first revision still in the change feed (u64; absent = 1).
pub const META_COMPACT: &[u8] = &[META, b'k'];
/// The term of the last applied entry (u64): a new term renews every lease.
pub const META_TERM: &[u8] = &[META, b't'];

/// The cluster's key for config secrets (32 bytes), set once.
pub const META_CONFIG_KEY: &[u8] = &[META, b'x'];

/// The cluster's token-signing keys (`views::auth::Keys`).
pub const META_AUTH_KEYS: &[u8] = &[META, b'j'];
/// The revision of the last rule change (u64): front ends drop cached rules when it moves.
pub const META_RULES_EPOCH: &[u8] = &[META, b'e'];

/// The state machine clock (u64 ms, big-endian).
pub const META_CLOCK: &[u8] = &[META, b'c'];
/// The store revision counter (u64, big-endian): one per applied command.
pub const META_REVISION: &[u8] = &[META, b'r'];
/// The last log id covered by a snapshot this node installed (written by micro-cluster with
/// the installed state), so startup can tell an installed snapshot from a lost log tail.
pub const META_INSTALLED: &[u8] = &[META, b's'];
/// The cluster id (UTF-8).
pub const META_CLUSTER_ID: &[u8] = &[META, b'i'];
/// The applied log id (written by micro-cluster with every applied batch).
pub const META_APPLIED: &[u8] = &[META, b'a'];
/// The membership in force (written by micro-cluster).
pub const META_MEMBERSHIP: &[u8] = &[META, b'm'];

pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    // Names are validated to fit MAX_KEY_BYTES (< u16::MAX) before they get here.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `db table` as it appears after the view byte.
pub fn table_path(db: &str, table: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + db.len() + table.len());
    push_str(&mut out, db);
    push_str(&mut out, table);
    out
}

/// Key of a store record.
pub fn store_key(db: &str, table: &str, key: &str) -> Vec<u8> {
    let mut out = vec![STORE];
    out.extend_from_slice(&table_path(db, table));
    out.extend_from_slice(key.as_bytes());
    out
}

/// Prefix of all records of a table whose key starts with `prefix`.
pub fn store_prefix(db: &str, table: &str, prefix: &str) -> Vec<u8> {
    store_key(db, table, prefix)
}

/// Key of an expiry index entry: `owner_key` is due at `due_ms`.
pub fn expiry_key(due_ms: u64, owner_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + owner_key.len());
    out.push(EXPIRY);
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(owner_key);
    out
}

/// Splits an expiry index key into (due_ms, owner key).
pub fn parse_expiry_key(key: &[u8]) -> Option<(u64, &[u8])> {
    if key.len() < 10 || key[0] != EXPIRY {
        return None;
    }
    let ms = u64::from_be_bytes(key[1..9].try_into().ok()?);
    Some((ms, &key[9..]))
}

/// Splits a schema-1 expiry key (`EXPIRY due_ms db table key`, store records only) into
/// (due_ms, store key).
pub fn parse_expiry_key_v1(key: &[u8]) -> Option<(u64, Vec<u8>)> {
    if key.len() < 9 || key[0] != EXPIRY {
        return None;
    }
    let ms = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let mut sk = vec![STORE];
    sk.extend_from_slice(&key[9..]);
    Some((ms, sk))
}

/// Key of a lease.
pub fn lease_key(id: u64) -> Vec<u8> {
    let mut out = vec![LEASE];
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Key of a lease's namespace.
pub fn lease_ns_key(id: u64) -> Vec<u8> {
    let mut out = vec![LEASE_NS];
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Key marking `owner_key` as attached to lease `id`; with an empty owner, the prefix of all.
pub fn lease_keys_key(id: u64, owner_key: &[u8]) -> Vec<u8> {
    let mut out = vec![LEASE_KEYS];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(owner_key);
    out
}

/// Key of the `n`th change of `revision` in the change feed.
pub fn history_key(revision: u64, n: u32) -> Vec<u8> {
    let mut out = vec![HISTORY];
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out
}

/// The revision of a change feed key made by [`history_key`].
pub fn parse_history_key(key: &[u8]) -> Option<u64> {
    match key {
        [HISTORY, rest @ ..] if rest.len() == 12 => {
            Some(u64::from_be_bytes(rest[..8].try_into().ok()?))
        }
        _ => None,
    }
}

/// The first key of `revision` in the change feed (every change of it sorts at or after).
pub fn history_start(revision: u64) -> Vec<u8> {
    let mut out = vec![HISTORY];
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// Splits a store key into (db, table, key); `None` if it is not one.
pub fn parse_store_key(sk: &[u8]) -> Option<(String, String, String)> {
    if sk.first() != Some(&STORE) {
        return None;
    }
    let (db, rest) = take_str(&sk[1..])?;
    let (table, key) = take_str(rest)?;
    Some((db, table, String::from_utf8(key.to_vec()).ok()?))
}

/// Key of a table's record count.
pub fn tables_key(db: &str, table: &str) -> Vec<u8> {
    let mut out = vec![TABLES];
    push_str(&mut out, db);
    out.extend_from_slice(table.as_bytes());
    out
}

/// Prefix of the table counts of `db` (all databases when `None`).
pub fn tables_prefix(db: Option<&str>) -> Vec<u8> {
    let mut out = vec![TABLES];
    if let Some(db) = db {
        push_str(&mut out, db);
    }
    out
}

/// Key of a registry service version.
pub fn registry_key(domain: &str, name: &str, version: &str) -> Vec<u8> {
    let mut out = vec![REGISTRY];
    push_str(&mut out, domain);
    push_str(&mut out, name);
    push_str(&mut out, version);
    out
}

/// Prefix of every version of `name` in `domain` (every service of the domain when `name` is
/// `None`, every domain when `domain` is `None` too).
pub fn registry_prefix(domain: Option<&str>, name: Option<&str>) -> Vec<u8> {
    let mut out = vec![REGISTRY];
    if let Some(d) = domain {
        push_str(&mut out, d);
        if let Some(n) = name {
            push_str(&mut out, n);
        }
    }
    out
}

/// Splits a registry key into (domain, name, version).
pub fn parse_registry_key(k: &[u8]) -> Option<(String, String, String)> {
    if k.first() != Some(&REGISTRY) {
        return None;
    }
    let (domain, rest) = take_str(&k[1..])?;
    let (name, rest) = take_str(rest)?;
    let (version, rest) = take_str(rest)?;
    rest.is_empty().then_some((domain, name, version))
}

/// The lease-owner key of a registry node.
pub fn reg_node_key(domain: &str, name: &str, version: &str, node: &str) -> Vec<u8> {
    let mut out = vec![REG_NODE];
    push_str(&mut out, domain);
    push_str(&mut out, name);
    push_str(&mut out, version);
    out.extend_from_slice(node.as_bytes());
    out
}

/// Splits a registry node owner key into (domain, name, version, node id).
pub fn parse_reg_node_key(k: &[u8]) -> Option<(String, String, String, String)> {
    if k.first() != Some(&REG_NODE) {
        return None;
    }
    let (domain, rest) = take_str(&k[1..])?;
    let (name, rest) = take_str(rest)?;
    let (version, rest) = take_str(rest)?;
    Some((
        domain,
        name,
        version,
        String::from_utf8(rest.to_vec()).ok()?,
    ))
}

/// The prefix of every config leaf of a namespace.
pub fn config_prefix(ns: &str) -> Vec<u8> {
    let mut out = vec![CONFIG];
    push_str(&mut out, ns);
    out
}

/// A lock waiter's key (with `None`, the prefix of every waiter of the lock).
pub fn lock_key(name: &str, token: Option<u64>) -> Vec<u8> {
    let mut out = vec![LOCK];
    push_str(&mut out, name);
    if let Some(t) = token {
        out.extend_from_slice(&t.to_be_bytes());
    }
    out
}

/// Splits a lock waiter key into (name, token).
pub fn parse_lock_key(k: &[u8]) -> Option<(String, u64)> {
    if k.first() != Some(&LOCK) {
        return None;
    }
    let (name, rest) = take_str(&k[1..])?;
    Some((name, u64::from_be_bytes(rest.try_into().ok()?)))
}

/// A lock's state key.
pub fn lock_meta_key(name: &str) -> Vec<u8> {
    let mut out = vec![LOCK_META];
    out.extend_from_slice(name.as_bytes());
    out
}

/// Reads a length-prefixed string at the start of `bytes`, returning it and the rest.
pub fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    if bytes.len() < 2 {
        return None;
    }
    let n = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    let s = bytes.get(2..2 + n)?;
    Some((String::from_utf8(s.to_vec()).ok()?, &bytes[2 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_key_round_trips() {
        let sk = store_key("db", "t", "k");
        let ek = expiry_key(42, &sk);
        assert_eq!(parse_expiry_key(&ek), Some((42, sk.as_slice())));
        assert_eq!(
            parse_store_key(&sk),
            Some(("db".into(), "t".into(), "k".into()))
        );
    }

    #[test]
    fn table_paths_do_not_collide() {
        assert_ne!(store_key("a", "bc", ""), store_key("ab", "c", ""));
    }
}
