//! Who may use the admin API: API keys from the bootstrap file, stored as
//! their SHA-256, each with a role. A key is found by the hash of what the
//! caller sends (no comparison a guesser can time). Failed attempts are
//! counted and slowed down per client address.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::field_error::{field, index, FieldError};
use crate::plugins::consumer::{sha256, unhex};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and write.
    Admin,
    /// Read only.
    Viewer,
}

/// `{name, sha256, role}` in `admin_api.keys` (`tollgate hash-secret`
/// prints the hash).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub name: String,
    pub sha256: String,
    pub role: Role,
}

/// A caller the API knows.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Why a caller is turned away.
pub enum Refusal {
    /// No key, or one the API does not know (401).
    Unknown,
}

/// Failures remembered per client: how many, since when.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Each failure in the window adds this much wait to the next refusal.
const FAILURE_STEP: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(3);
/// Clients tracked at most (a scan of addresses cannot grow it forever).
const MAX_CLIENTS: usize = 10_000;

pub struct Keys {
    by_hash: HashMap<[u8; 32], Caller>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Keys {
    /// Checks `admin_api.keys` (at `at`).
    pub fn new(specs: &[ApiKeySpec], at: &str) -> Result<Self, FieldError> {
        if specs.is_empty() {
            return Err(FieldError::new(
                at,
                "at least one key: the admin API is never open to anyone",
            ));
        }
        let mut by_hash = HashMap::new();
        for (i, k) in specs.iter().enumerate() {
            let at = index(at, i);
            if k.name.is_empty() {
                return Err(FieldError::new(field(&at, "name"), "must not be empty"));
            }
            let hash = unhex(&k.sha256).ok_or_else(|| {
                FieldError::new(
                    field(&at, "sha256"),
                    "the key's SHA-256 in 64 hex digits (tollgate hash-secret prints it), not the key",
                )
            })?;
            let caller = Caller {
                name: k.name.clone(),
                role: k.role,
            };
            if by_hash.insert(hash, caller).is_some() {
                return Err(FieldError::new(
                    field(&at, "sha256"),
                    "two keys are the same",
                ));
            }
        }
        Ok(Self {
            by_hash,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The caller presenting `key`.
    pub fn check(&self, key: Option<&[u8]>) -> Result<&Caller, Refusal> {
        key.and_then(|k| self.by_hash.get(&sha256(k)))
            .ok_or(Refusal::Unknown)
    }

    /// Counts a failure by `client`; returns how long to wait before
    /// answering it (more the more it failed lately).
    pub fn failed(&self, client: Option<IpAddr>) -> Duration {
        let Some(ip) = client else {
            return FAILURE_STEP;
        };
        let Ok(mut map) = self.failures.lock() else {
            return FAILURE_STEP;
        };
        let now = Instant::now();
        if map.len() >= MAX_CLIENTS {
            map.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        (FAILURE_STEP * entry.0).min(MAX_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_and_failures_slow_down() {
        let hex = crate::plugins::consumer::sha256_hex(b"k");
        let keys = Keys::new(
            &[ApiKeySpec {
                name: "ops".into(),
                sha256: hex,
                role: Role::Viewer,
            }],
            "admin_api.keys",
        )
        .unwrap();
        assert_eq!(
            keys.check(Some(b"k")).ok().map(|c| c.role),
            Some(Role::Viewer)
        );
        assert!(keys.check(Some(b"K")).is_err());
        assert!(keys.check(None).is_err());
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(keys.failed(ip) < keys.failed(ip));
        let e = Keys::new(
            &[ApiKeySpec {
                name: "ops".into(),
                sha256: "k".into(),
                role: Role::Admin,
            }],
            "admin_api.keys",
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "admin_api.keys[0].sha256");
        assert!(Keys::new(&[], "admin_api.keys").is_err());
    }
}
