//! Rate limits as operators write them, on a route or as the default in
//! settings.

use serde::{Deserialize, Serialize};

use super::error::{field, FieldError};

/// Whose requests share a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// One bucket for the whole route.
    Route,
    /// One per client address (the peer, or `X-Forwarded-For` from a
    /// trusted proxy).
    ClientIp,
    /// One per value of this request header (lower-cased name).
    Header(String),
    /// One per consumer an auth plugin found; callers without one, per
    /// client address.
    Consumer,
}

/// Whether the limit holds per node or for the whole fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    #[default]
    Node,
    /// Each node enforces rate ÷ live gateways (from `/gateways/` leases).
    Cluster,
}

/// `{"rate": 100, "burst": 200, "key": "route", "scope": "node"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Tokens per second.
    pub rate: f64,
    /// Bucket size: requests admitted at once after a quiet period.
    /// Defaults to one second's worth (`rate`, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `route`, `client_ip`, `consumer` or `header:<name>`.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default)]
    pub scope: LimitScope,
    /// Send `X-RateLimit-*` on admitted responses too (429s always carry them).
    #[serde(default = "default_true")]
    pub headers: bool,
    /// Most distinct keys tracked per route; beyond it new keys share one
    /// overflow bucket, so a flood of clients cannot grow memory.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_key() -> String {
    "route".into()
}
fn default_true() -> bool {
    true
}
fn default_max_keys() -> usize {
    100_000
}

pub const MAX_RATE: f64 = 1_000_000.0;

impl RateLimitSpec {
    /// Validates and returns the parsed key.
    pub fn validate(&self, path: &str) -> Result<LimitKey, FieldError> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(FieldError::new(
                field(path, "rate"),
                format!(
                    "must be a number above 0 and at most {MAX_RATE}, got {}",
                    self.rate
                ),
            ));
        }
        if self.burst == Some(0) {
            return Err(FieldError::new(field(path, "burst"), "must be at least 1"));
        }
        if self.max_keys == 0 || self.max_keys > 10_000_000 {
            return Err(FieldError::new(
                field(path, "max_keys"),
                "must be between 1 and 10000000",
            ));
        }
        match self.key.as_str() {
            "route" => Ok(LimitKey::Route),
            "client_ip" => Ok(LimitKey::ClientIp),
            "consumer" => Ok(LimitKey::Consumer),
            other => match other.strip_prefix("header:") {
                Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                    Ok(LimitKey::Header(h.to_ascii_lowercase()))
                }
                _ => Err(FieldError::new(
                    field(path, "key"),
                    format!("{other:?} must be \"route\", \"client_ip\", \"consumer\" or \"header:<name>\""),
                )),
            },
        }
    }

    /// The bucket size in force.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| (self.rate.ceil() as u32).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RateLimitSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keys_parse_and_bad_values_name_their_field() {
        assert_eq!(
            spec(r#"{"rate":5}"#).validate("r").unwrap(),
            LimitKey::Route
        );
        assert_eq!(spec(r#"{"rate":5}"#).burst(), 5);
        assert_eq!(spec(r#"{"rate":0.1}"#).burst(), 1);
        assert_eq!(
            spec(r#"{"rate":5,"key":"header:X-Api-Key"}"#)
                .validate("r")
                .unwrap(),
            LimitKey::Header("x-api-key".into())
        );
        for (json, at) in [
            (r#"{"rate":0}"#, "r.rate"),
            (r#"{"rate":-1}"#, "r.rate"),
            (r#"{"rate":5,"burst":0}"#, "r.burst"),
            (r#"{"rate":5,"key":"ip"}"#, "r.key"),
            (r#"{"rate":5,"key":"header:bad header"}"#, "r.key"),
            (r#"{"rate":5,"max_keys":0}"#, "r.max_keys"),
        ] {
            assert_eq!(spec(json).validate("r").unwrap_err().path, at, "{json}");
        }
    }
}
