//! `basic-auth {hide_credentials, cache_ttl_s}`: the caller is the consumer
//! whose username and argon2id password hash match `Authorization: Basic`.
//!
//! argon2 is slow on purpose (19 MiB and tens of milliseconds a check), so
//! checks run on the blocking pool, at most one per CPU at a time (a flood
//! of wrong passwords queues for at most a second, then gets 503, and
//! never starves the request threads); a password verified once is
//! remembered for `cache_ttl_s` (default 60) under an HMAC of username and
//! password, and only while the consumer's hash is unchanged (a changed
//! or deleted consumer stops working at once). An unknown username costs
//! the same check as a wrong password, so timing does not say which
//! usernames exist.

use base64::Engine;
use http::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;

use super::consumer::{hash_password, Password};
use super::ttl_cache::TtlCache;
use super::{config, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "yes")]
    hide_credentials: bool,
    #[serde(default = "default_ttl")]
    cache_ttl_s: u64,
}

fn yes() -> bool {
    true
}
fn default_ttl() -> u64 {
    60
}

/// Verified passwords remembered per plugin (route); past it, no more are
/// remembered until some expire.
const CACHE_ENTRIES: usize = 10_000;
/// How long a request waits for a free password check before a 503.
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// One password check per CPU at a time, gateway-wide.
static CHECKS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// What an unknown username is checked against, so it costs what a wrong
/// password does.
static DECOY: LazyLock<Option<Password>> = LazyLock::new(|| {
    let phc = hash_password(b"decoy").ok()?;
    Some(Password {
        username: "".into(),
        phc: phc.into(),
    })
});

#[derive(Debug)]
struct BasicAuth {
    hide: bool,
    /// HMAC(username, password) → the hash it was verified against.
    verified: Option<TtlCache<Arc<str>>>,
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    if spec.cache_ttl_s > 3600 {
        return Err(FieldError::new(
            field(at, "cache_ttl_s"),
            "at most 3600 (0 turns the cache off)",
        ));
    }
    Ok(Arc::new(BasicAuth {
        hide: spec.hide_credentials,
        verified: (spec.cache_ttl_s > 0)
            .then(|| TtlCache::new(CACHE_ENTRIES, Duration::from_secs(spec.cache_ttl_s))),
    }))
}

const CHALLENGE: &str = "Basic realm=\"tollgate\", charset=\"UTF-8\"";

/// `(username, password)` from `Basic <base64>`.
fn credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&raw[..colon]).ok()?.to_string();
    Some((user, raw[colon + 1..].to_vec()))
}

/// Runs argon2 off the request threads, one check per CPU at a time;
/// `None` (an unknown username) is checked against [`DECOY`] and fails.
/// `None` back: no check could start within [`QUEUE_WAIT`].
async fn check(stored: Option<Password>, presented: Vec<u8>) -> Option<bool> {
    let permit = tokio::time::timeout(QUEUE_WAIT, CHECKS.acquire())
        .await
        .ok()?
        .ok()?;
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(p) => p.verify(&presented),
        None => {
            if let Some(decoy) = &*DECOY {
                let _ = decoy.verify(&presented);
            }
            false
        }
    })
    .await
    .unwrap_or(false);
    drop(permit);
    Some(ok)
}

#[async_trait::async_trait]
impl Plugin for BasicAuth {
    fn edits_response(&self) -> bool {
        false
    }

    fn waits(&self) -> bool {
        true
    }

    async fn request_waiting(&self, req: &mut PluginRequest<'_>) -> Flow {
        let Some(header) = req.header.headers.get(AUTHORIZATION) else {
            return Flow::Respond(Reply::unauthorized("missing credentials", CHALLENGE));
        };
        let Some((user, password)) = credentials(header.as_bytes()) else {
            return Flow::Respond(Reply::unauthorized("malformed credentials", CHALLENGE));
        };
        let consumer = req.consumers.by_username(&user).cloned();
        let stored = consumer.as_ref().and_then(|c| c.password.clone());
        let cache_key = self
            .verified
            .as_ref()
            .map(|c| c.key_of(&[user.as_bytes(), &password]));
        let remembered = match (&self.verified, &cache_key, &stored) {
            (Some(cache), Some(k), Some(s)) => cache.get(k).is_some_and(|phc| phc == s.phc),
            _ => false,
        };
        if !remembered {
            match check(stored.clone(), password).await {
                None => {
                    let mut r = Reply::error(503, "too many password checks at once");
                    r.headers.push((
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    ));
                    return Flow::Respond(r);
                }
                Some(true) => {
                    if let (Some(cache), Some(k), Some(s)) = (&self.verified, cache_key, &stored) {
                        cache.put(k, s.phc.clone());
                    }
                }
                Some(false) => {
                    return Flow::Respond(Reply::unauthorized("invalid credentials", CHALLENGE))
                }
            }
        }
        if self.hide {
            req.header.remove_header(&AUTHORIZATION);
        }
        *req.consumer = consumer;
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse_and_bad_ones_do_not() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            credentials(format!("Basic {b64}").as_bytes()),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            credentials(format!("bAsIc  {b64} ").as_bytes()).map(|c| c.0),
            Some("alice".into())
        );
        assert!(credentials(b"Bearer abc").is_none());
        assert!(credentials(b"Basic !!!").is_none());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("alice");
        assert!(credentials(format!("Basic {no_colon}").as_bytes()).is_none());
        assert!(credentials(b"Basic").is_none());
    }
}
