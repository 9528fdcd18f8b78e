//! A route's response cache, as operators write it (`cache: {...}` in the
//! route), and compiled: what is keyed, for how long, how stale it may be.

use http::HeaderName;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::error::{field, index, FieldError};

/// The largest body a route may cache (each entry is held in memory whole).
pub const MAX_CACHED_BODY: u64 = 64 << 20;
/// Longest freshness or stale window a route may configure (a year).
const MAX_SECONDS: u32 = 31_536_000;
/// Request headers a route may key on at most.
const MAX_VARY: usize = 8;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Freshness when the upstream's answer does not say (`Cache-Control:
    /// max-age`/`s-maxage`, `Expires` win).
    #[serde(default = "default_ttl")]
    pub ttl_s: u32,
    /// `GET` and/or `HEAD` (a `HEAD` is answered from a `GET`'s entry).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// What tells entries apart: `path` (always), `host`, `query`, `consumer`.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Request headers whose values are part of the key; an answer that
    /// varies on any other (`Vary`) is not cached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary_headers: Vec<String>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    #[serde(default)]
    pub stale_while_revalidate_s: u32,
    #[serde(default)]
    pub stale_if_error_s: u32,
    /// Cache answers that set cookies (the `Set-Cookie` itself is never
    /// stored or replayed to another client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_set_cookie: bool,
    /// How long concurrent misses for one key wait for the one request
    /// that went upstream, before going themselves.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout_ms: u64,
}

fn default_ttl() -> u32 {
    60
}
fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
fn default_key() -> Vec<String> {
    vec!["host".into(), "path".into(), "query".into()]
}
fn default_max_body() -> u64 {
    1 << 20
}
fn default_lock_timeout() -> u64 {
    5_000
}

/// A route's cache, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub get: bool,
    pub head: bool,
    pub key_host: bool,
    pub key_query: bool,
    pub key_consumer: bool,
    pub vary: Vec<HeaderName>,
    pub max_body: usize,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub set_cookie: bool,
    pub lock_timeout: Duration,
}

impl CacheSpec {
    pub fn compile(&self, at: &str) -> Result<CachePolicy, FieldError> {
        let secs = |name: &str, v: u32, min: u32| {
            if v < min || v > MAX_SECONDS {
                return Err(FieldError::new(
                    field(at, name),
                    format!("{min} to {MAX_SECONDS} seconds"),
                ));
            }
            Ok(Duration::from_secs(v.into()))
        };
        let ttl = secs("ttl_s", self.ttl_s, 1)?;
        let stale_while_revalidate =
            secs("stale_while_revalidate_s", self.stale_while_revalidate_s, 0)?;
        let stale_if_error = secs("stale_if_error_s", self.stale_if_error_s, 0)?;
        let (mut get, mut head) = (false, false);
        for (i, m) in self.methods.iter().enumerate() {
            match m.as_str() {
                "GET" => get = true,
                "HEAD" => head = true,
                other => {
                    return Err(FieldError::new(
                        index(&field(at, "methods"), i),
                        format!("{other:?}: only GET and HEAD answers are cached"),
                    ))
                }
            }
        }
        if !get {
            return Err(FieldError::new(
                field(at, "methods"),
                "must include GET (a HEAD is answered from a GET's entry)",
            ));
        }
        let (mut path, mut key_host, mut key_query, mut key_consumer) =
            (false, false, false, false);
        for (i, k) in self.key.iter().enumerate() {
            match k.as_str() {
                "path" => path = true,
                "host" => key_host = true,
                "query" => key_query = true,
                "consumer" => key_consumer = true,
                other => {
                    return Err(FieldError::new(
                        index(&field(at, "key"), i),
                        format!("{other:?}: one of path, host, query, consumer"),
                    ))
                }
            }
        }
        if !path {
            return Err(FieldError::new(field(at, "key"), "must include path"));
        }
        if self.vary_headers.len() > MAX_VARY {
            return Err(FieldError::new(
                field(at, "vary_headers"),
                format!("at most {MAX_VARY}"),
            ));
        }
        let vary = (self.vary_headers.iter().enumerate())
            .map(|(i, h)| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    FieldError::new(
                        index(&field(at, "vary_headers"), i),
                        format!("{h:?} is not a header name"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_CACHED_BODY {
            return Err(FieldError::new(
                field(at, "max_body_bytes"),
                format!("1 to {MAX_CACHED_BODY}"),
            ));
        }
        if self.lock_timeout_ms > 60_000 {
            return Err(FieldError::new(
                field(at, "lock_timeout_ms"),
                "at most 60000",
            ));
        }
        Ok(CachePolicy {
            ttl,
            get,
            head,
            key_host,
            key_query,
            key_consumer,
            vary,
            max_body: self.max_body_bytes as usize,
            stale_while_revalidate,
            stale_if_error,
            set_cookie: self.cache_set_cookie,
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<CachePolicy, FieldError> {
        serde_json::from_str::<CacheSpec>(json)
            .unwrap()
            .compile("cache")
    }

    #[test]
    fn defaults_and_bad_fields() {
        let p = compile("{}").unwrap();
        assert!(p.get && p.head && p.key_host && p.key_query && !p.key_consumer);
        assert_eq!(p.ttl, Duration::from_secs(60));
        for (json, at) in [
            (r#"{"ttl_s":0}"#, "cache.ttl_s"),
            (r#"{"methods":["POST"]}"#, "cache.methods[0]"),
            (r#"{"methods":["HEAD"]}"#, "cache.methods"),
            (r#"{"key":["host"]}"#, "cache.key"),
            (r#"{"key":["path","cookie"]}"#, "cache.key[1]"),
            (
                r#"{"vary_headers":["bad header"]}"#,
                "cache.vary_headers[0]",
            ),
            (r#"{"max_body_bytes":0}"#, "cache.max_body_bytes"),
            (r#"{"lock_timeout_ms":600000}"#, "cache.lock_timeout_ms"),
        ] {
            assert_eq!(compile(json).unwrap_err().path, at, "{json}");
        }
    }
}
