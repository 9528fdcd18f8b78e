//! Consumers: the callers an API knows, with the credentials the auth
//! plugins check (`/tollgate/consumers/<name>`, or `consumers:` in a
//! standalone file). Secrets are stored hashed: a leaked etcd backup or
//! last-known-good file does not hand out working keys.

mod jwt_key;
mod password;

use ahash::AHashMap;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::field_error::{field, FieldError};
pub use jwt_key::{algorithm as jwt_algorithm, JwtKey, JwtSpec};
pub use password::{hash as hash_password, BasicAuthSpec, Password};

/// Who the caller is, for the upstream: set from what an auth plugin
/// found, and never passed on from the client.
pub static X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");

/// A consumer as operators write it. Unknown fields are refused, so a
/// plaintext `key` where `key_sha256` is expected is an error naming it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Required in a file; in etcd the key's last segment is the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_auth: Option<KeyAuthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// The consumer's own limit, on every route it uses (checked by the
    /// model, which knows rate limits: see `model::consumer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `{"key_sha256": "<64 hex digits>"}`: `tollgate hash-secret` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthSpec {
    pub key_sha256: String,
}

/// A consumer, checked. Equal when its name and spec are.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub name: Arc<str>,
    /// What the upstream gets in `X-Consumer-Name`.
    pub header: HeaderValue,
    pub key_sha256: Option<[u8; 32]>,
    pub password: Option<Password>,
    pub jwt: Option<JwtKey>,
    /// Whether it has a limit of its own (kept beside the table).
    pub rate_limited: bool,
    spec: ConsumerSpec,
}

impl PartialEq for Consumer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.spec == other.spec
    }
}

/// SHA-256 of a secret, as consumers store it.
pub fn sha256(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// [`sha256`] in 64 lowercase hex digits, as configs hold it.
pub fn sha256_hex(secret: &[u8]) -> String {
    sha256(secret).iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits (either case) as the 32 bytes of a SHA-256.
pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

impl ConsumerSpec {
    /// Checks the consumer called `name`, fields under `at`.
    pub fn compile(&self, name: &str, at: &str) -> Result<Consumer, FieldError> {
        let ok_name = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
        if !ok_name {
            return Err(FieldError::new(
                field(at, "name"),
                format!("{name:?}: 1 to 128 of letters, digits, '-', '_', '.', '@'"),
            ));
        }
        let key_sha256 = match &self.key_auth {
            None => None,
            Some(k) => Some(unhex(&k.key_sha256).ok_or_else(|| {
                FieldError::new(
                    field(&field(at, "key_auth"), "key_sha256"),
                    "must be the key's SHA-256 in 64 hex digits (tollgate hash-secret prints it), not the key",
                )
            })?),
        };
        Ok(Consumer {
            name: name.into(),
            header: HeaderValue::from_str(name)
                .map_err(|_| FieldError::new(field(at, "name"), "not a header value"))?,
            key_sha256,
            password: match &self.basic_auth {
                Some(b) => Some(b.compile(&field(at, "basic_auth"))?),
                None => None,
            },
            jwt: match &self.jwt {
                Some(j) => Some(j.compile(&field(at, "jwt"))?),
                None => None,
            },
            rate_limited: self.rate_limit.is_some(),
            spec: self.clone(),
        })
    }
}

/// Two consumers with one credential: what (`key`, `username`, `iss`),
/// the one holding it, and the other.
pub type Clash = (&'static str, Arc<str>, Arc<str>);

/// Every consumer by each credential, as the request path reads it
/// (published whole; one lock-free load per authenticated request).
#[derive(Debug, Default)]
pub struct ConsumerTable {
    by_key: AHashMap<[u8; 32], Arc<Consumer>>,
    by_username: AHashMap<Arc<str>, Arc<Consumer>>,
    by_iss: AHashMap<Arc<str>, Arc<Consumer>>,
}

/// Files `c` under `k` unless another consumer holds it.
fn hold<K: std::hash::Hash + Eq>(
    map: &mut AHashMap<K, Arc<Consumer>>,
    k: K,
    c: &Arc<Consumer>,
    what: &'static str,
    clashes: &mut Vec<Clash>,
) {
    match map.get(&k) {
        Some(held) => clashes.push((what, held.name.clone(), c.name.clone())),
        None => {
            map.insert(k, c.clone());
        }
    }
}

impl ConsumerTable {
    /// Builds the table; two consumers with one credential: the first by
    /// name holds it (and the clash is returned, for a warning).
    pub fn build<'a>(consumers: impl Iterator<Item = &'a Arc<Consumer>>) -> (Self, Vec<Clash>) {
        let mut t = Self::default();
        let mut clashes = Vec::new();
        for c in consumers {
            if let Some(k) = c.key_sha256 {
                hold(&mut t.by_key, k, c, "key", &mut clashes);
            }
            if let Some(p) = &c.password {
                hold(
                    &mut t.by_username,
                    p.username.clone(),
                    c,
                    "username",
                    &mut clashes,
                );
            }
            if let Some(j) = &c.jwt {
                hold(&mut t.by_iss, j.iss.clone(), c, "iss", &mut clashes);
            }
        }
        (t, clashes)
    }

    /// The consumer whose key is `presented`.
    pub fn by_key(&self, presented: &[u8]) -> Option<&Arc<Consumer>> {
        self.by_key.get(&sha256(presented))
    }

    /// The consumer with this basic-auth username.
    pub fn by_username(&self, username: &str) -> Option<&Arc<Consumer>> {
        self.by_username.get(username)
    }

    /// The consumer whose JWTs name this issuer.
    pub fn by_iss(&self, iss: &str) -> Option<&Arc<Consumer>> {
        self.by_iss.get(iss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ConsumerSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keys_are_stored_hashed_and_a_plaintext_key_is_refused_by_name() {
        let hash = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // "secret"
        let c = spec(&format!(r#"{{"key_auth": {{"key_sha256": "{hash}"}}}}"#))
            .compile("alice", "")
            .unwrap();
        let (t, clashes) = ConsumerTable::build([Arc::new(c)].iter());
        assert!(clashes.is_empty());
        assert_eq!(&*t.by_key(b"secret").unwrap().name, "alice");
        assert!(t.by_key(b"secreT").is_none());
        let e = spec(r#"{"key_auth": {"key_sha256": "secret"}}"#)
            .compile("a", "consumers[0]")
            .unwrap_err();
        assert_eq!(e.path, "consumers[0].key_auth.key_sha256");
        let e =
            crate::field_error::from_json::<ConsumerSpec>(br#"{"key_auth": {"key": "secret"}}"#)
                .unwrap_err();
        assert_eq!(e.path, "key_auth.key");
        assert!(e.message.contains("unknown field `key`"), "{e}");
        assert!(spec("{}").compile("bad name", "").is_err());
    }
}
