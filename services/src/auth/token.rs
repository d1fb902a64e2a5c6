//! Access tokens: JWTs signed with the cluster's Ed25519 key, which every node holds (it is
//! in the replicated state), so any node verifies any node's tokens without a round trip.
//! Refresh tokens: opaque random strings; the state keeps only their SHA-256 digest.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use micro_state::views::auth::{Account, Keys};
use serde::{Deserialize, Serialize};

/// What an access token says about its account (Micro v3's claims).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account id.
    pub sub: String,
    /// The account's namespace.
    pub iss: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub name: String,
}

impl Claims {
    pub fn for_account(a: &Account, now_s: u64, lifetime_s: u64) -> Claims {
        Claims {
            sub: a.id.clone(),
            iss: a.issuer.clone(),
            iat: now_s,
            exp: now_s + lifetime_s,
            kind: a.kind.clone(),
            scopes: a.scopes.clone(),
            metadata: a.metadata.clone(),
            name: a.name.clone(),
        }
    }

    /// An administrator of every namespace: Micro v3's rule (issuer `micro`, and a user with
    /// scope `admin` or a service with scope `service`).
    pub fn is_cluster_admin(&self) -> bool {
        self.iss == micro_state::views::auth::ADMIN_NAMESPACE
            && ((self.kind == "user" && self.scopes.iter().any(|s| s == "admin"))
                || (self.kind == "service" && self.scopes.iter().any(|s| s == "service")))
    }
}

/// A fresh Ed25519 key pair: (PKCS#8 document, raw public key).
pub fn new_key_pair() -> Result<(Vec<u8>, Vec<u8>), String> {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate a signing key".to_string())?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| "generated an unusable signing key".to_string())?;
    Ok((doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}

/// Signs `claims` with the current key of `keys`.
pub fn sign(keys: &Keys, claims: &Claims) -> Result<String, String> {
    let key = keys
        .keys
        .get(&keys.current)
        .ok_or("the cluster has no signing key yet")?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(keys.current.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&key.pkcs8))
        .map_err(|e| format!("cannot sign a token: {e}"))
}

/// Why a token was refused (said to the caller: it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the token is malformed")]
    Malformed,
    #[error(
        "the token is signed with an unknown key (wrong cluster, or a key retired too long ago)"
    )]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired; get a new one (micro login, or the refresh token)")]
    Expired,
}

/// Verifies tokens against the cluster's keys, remembering what it verified.
pub struct Verifier {
    keys: Mutex<HashMap<u32, DecodingKey>>,
    seen: Mutex<HashMap<String, Arc<Claims>>>,
}

/// How many verified tokens are remembered (then the memory starts over).
const SEEN_LIMIT: usize = 10_000;

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            keys: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The claims of `token` at `now_s`; `keys` is asked for the cluster's keys when the
    /// token names a key this verifier has not loaded.
    pub fn verify(
        &self,
        token: &str,
        now_s: u64,
        keys: impl FnOnce() -> Option<Keys>,
    ) -> Result<Arc<Claims>, Invalid> {
        if let Some(c) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            return if c.exp <= now_s {
                Err(Invalid::Expired)
            } else {
                Ok(c.clone())
            };
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        // Only what we sign is accepted: no `none`, no HMAC with a public key as secret.
        if header.alg != Algorithm::EdDSA {
            return Err(Invalid::BadSignature);
        }
        let kid: u32 = header
            .kid
            .as_deref()
            .and_then(|k| k.parse().ok())
            .ok_or(Invalid::UnknownKey)?;
        let key = {
            let mut known = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if !known.contains_key(&kid) {
                if let Some(ks) = keys() {
                    known.clear();
                    for (id, k) in ks.keys {
                        known.insert(id, DecodingKey::from_ed_der(&k.public));
                    }
                }
            }
            known.get(&kid).cloned().ok_or(Invalid::UnknownKey)?
        };
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 0;
        v.validate_exp = false; // checked below against `now_s`, the same clock as the cache
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => Invalid::BadSignature,
                _ => Invalid::Malformed,
            }
        })?;
        let claims = Arc::new(data.claims);
        if claims.exp <= now_s {
            return Err(Invalid::Expired);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= SEEN_LIMIT {
            seen.retain(|_, c| c.exp > now_s);
            if seen.len() >= SEEN_LIMIT {
                seen.clear();
            }
        }
        seen.insert(token.to_string(), claims.clone());
        Ok(claims)
    }
}

/// Refresh token format: `mrt1.` + base64url(namespace) `.` base64url(id) `.` base64url(32
/// random bytes). Namespace and id say where its digest is kept.
const REFRESH_PREFIX: &str = "mrt1.";

/// A new refresh token for account `id` of `ns`, and the digest the state keeps.
pub fn new_refresh(ns: &str, id: &str) -> Result<(String, Vec<u8>), String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
    let token = format!(
        "{REFRESH_PREFIX}{}.{}.{}",
        B64.encode(ns),
        B64.encode(id),
        B64.encode(secret)
    );
    Ok((token, digest(&secret)))
}

fn digest(secret: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret)
        .as_ref()
        .to_vec()
}

/// (namespace, id, digest) of a refresh token.
pub fn parse_refresh(token: &str) -> Option<(String, String, Vec<u8>)> {
    let rest = token.strip_prefix(REFRESH_PREFIX)?;
    let mut parts = rest.split('.');
    let ns = String::from_utf8(B64.decode(parts.next()?).ok()?).ok()?;
    let id = String::from_utf8(B64.decode(parts.next()?).ok()?).ok()?;
    let secret = B64.decode(parts.next()?).ok()?;
    if parts.next().is_some() || secret.len() != 32 {
        return None;
    }
    Some((ns, id, digest(&secret)))
}

/// An argon2id PHC string of `secret` (salted; slow on purpose: run it off the runtime).
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the secret: {e}"))
}

/// Whether `secret` matches the PHC string `hash`.
pub fn check_secret(secret: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random secret for a generated account: 32 bytes, base64url.
pub fn new_secret() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(B64.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_state::views::auth::SigningKey;

    fn keys() -> Keys {
        let (pkcs8, public) = new_key_pair().unwrap();
        Keys {
            current: 1,
            keys: [(
                1,
                SigningKey {
                    pkcs8,
                    public,
                    retired_ms: 0,
                },
            )]
            .into(),
        }
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "admin".into(),
            iss: "micro".into(),
            exp,
            iat: 0,
            kind: "user".into(),
            scopes: vec!["admin".into()],
            metadata: BTreeMap::new(),
            name: "admin".into(),
        }
    }

    #[test]
    fn signs_and_verifies_and_refuses_what_it_must() {
        let ks = keys();
        let t = sign(&ks, &claims(100)).unwrap();
        let v = Verifier::new();
        let c = v.verify(&t, 50, || Some(ks.clone())).unwrap();
        assert!(c.is_cluster_admin());
        // Cached, and still expires.
        assert_eq!(v.verify(&t, 100, || None), Err(Invalid::Expired));
        // Another cluster's key with the same kid.
        let other = keys();
        let forged = sign(&other, &claims(100)).unwrap();
        assert_eq!(
            v.verify(&forged, 50, || Some(ks.clone())),
            Err(Invalid::BadSignature)
        );
        // Tampered claims.
        let mut parts: Vec<&str> = t.split('.').collect();
        let body = B64.encode(serde_json::to_vec(&claims(999)).unwrap());
        parts[1] = &body;
        assert_eq!(
            v.verify(&parts.join("."), 50, || Some(ks.clone())),
            Err(Invalid::BadSignature)
        );
        // alg: none, and HS256 "signed" with the public key.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none","typ":"JWT","kid":"1"}"#),
            B64.encode(serde_json::to_vec(&claims(999)).unwrap())
        );
        assert_eq!(
            v.verify(&none, 50, || Some(ks.clone())),
            Err(Invalid::Malformed)
        );
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims(999),
            &EncodingKey::from_secret(&ks.keys[&1].public),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs, 50, || Some(ks.clone())),
            Err(Invalid::BadSignature)
        );
        assert_eq!(
            v.verify("garbage", 50, || Some(ks.clone())),
            Err(Invalid::Malformed)
        );
        let mut unknown = Header::new(Algorithm::EdDSA);
        unknown.kid = Some("7".into());
        let t7 = jsonwebtoken::encode(
            &unknown,
            &claims(99),
            &EncodingKey::from_ed_der(&ks.keys[&1].pkcs8),
        )
        .unwrap();
        assert_eq!(
            v.verify(&t7, 50, || Some(ks.clone())),
            Err(Invalid::UnknownKey)
        );
    }

    #[test]
    fn refresh_tokens_round_trip_and_reject_junk() {
        let (t, d) = new_refresh("team-a", "ann").unwrap();
        assert_eq!(parse_refresh(&t), Some(("team-a".into(), "ann".into(), d)));
        assert_eq!(parse_refresh("mrt1.a.b"), None);
        assert_eq!(parse_refresh(&format!("{t}.x")), None);
        assert_eq!(parse_refresh("nope"), None);
    }

    #[test]
    fn secrets_hash_and_check() {
        let h = hash_secret("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(check_secret("s3cret", &h));
        assert!(!check_secret("wrong", &h));
        assert!(!check_secret("s3cret", "not a hash"));
    }

    proptest::proptest! {
        /// The token parser never panics on hostile input.
        #[test]
        fn hostile_tokens_never_panic(s in ".{0,300}", parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5)) {
            let ks = keys();
            let v = Verifier::new();
            let _ = v.verify(&s, 1, || Some(ks.clone()));
            let _ = v.verify(&parts.join("."), 1, || Some(ks.clone()));
            let _ = parse_refresh(&s);
            let _ = parse_refresh(&format!("mrt1.{}", parts.join(".")));
        }
    }
}
