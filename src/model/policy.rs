//! Upstream resilience policies: load balancing, retries, health checks.

use serde::{Deserialize, Serialize};

use super::error::{field, FieldError};

/// How an instance is chosen.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum LbSpec {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests (divided by weight).
    LeastRequest,
    /// A hash ring: one key stays on one instance while it lives.
    ConsistentHash {
        /// `header:<name>`, `cookie:<name>`, `client_ip` or `path`.
        key: String,
    },
}

/// Where the consistent-hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    ClientIp,
    Path,
}

/// Failures a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    #[serde(rename = "502")]
    Status502,
    #[serde(rename = "503")]
    Status503,
    #[serde(rename = "504")]
    Status504,
}

/// `{"attempts": 2, "on": ["connect_failure", "502"], "idempotent_only": true, "budget": 0.2}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first attempt.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_on")]
    pub on: Vec<RetryOn>,
    /// Requests with non-idempotent methods are not retried once their
    /// body may have reached the upstream (connect failures always are).
    #[serde(default = "default_true")]
    pub idempotent_only: bool,
    /// Retries may add at most this share of the upstream's traffic.
    #[serde(default = "default_budget")]
    pub budget: f64,
}

fn default_attempts() -> u32 {
    1
}
fn default_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure]
}
fn default_true() -> bool {
    true
}
/// The retry budget of an upstream that sets no retry policy.
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;

fn default_budget() -> f64 {
    DEFAULT_RETRY_BUDGET
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            on: default_on(),
            idempotent_only: true,
            budget: default_budget(),
        }
    }
}

/// Active probing of each instance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheckSpec {
    pub path: String,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring an instance back.
    #[serde(default = "default_healthy")]
    pub healthy: u32,
    /// Consecutive failures that take it out.
    #[serde(default = "default_unhealthy")]
    pub unhealthy: u32,
}

fn default_interval_ms() -> u64 {
    2000
}
fn default_check_timeout_ms() -> u64 {
    1000
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    2
}

/// Ejection after failures seen on real traffic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheckSpec {
    /// Consecutive failures (5xx, connect errors, timeouts) that eject.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// First ejection time; each repeat doubles it (up to 10×).
    #[serde(default = "default_ejection_ms")]
    pub ejection_ms: u64,
    /// Never eject more than this share of the instances.
    #[serde(default = "default_max_ejected")]
    pub max_ejected_share: f64,
}

fn default_consecutive() -> u32 {
    5
}
fn default_ejection_ms() -> u64 {
    30_000
}
fn default_max_ejected() -> f64 {
    0.5
}

impl Default for PassiveCheckSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            ejection_ms: default_ejection_ms(),
            max_ejected_share: default_max_ejected(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheckSpec>,
    /// Below this share of healthy instances, health is ignored and all
    /// instances take traffic (panic mode: fail open, not closed).
    #[serde(default = "default_panic")]
    pub panic_threshold: f64,
}

fn default_panic() -> f64 {
    0.5
}

fn share(path: &str, name: &str, v: f64) -> Result<(), FieldError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(
            field(path, name),
            format!("must be between 0 and 1, got {v}"),
        ))
    }
}

impl LbSpec {
    pub fn hash_key(&self, path: &str) -> Result<Option<HashKey>, FieldError> {
        let LbSpec::ConsistentHash { key } = self else {
            return Ok(None);
        };
        let parsed = match key.as_str() {
            "client_ip" => HashKey::ClientIp,
            "path" => HashKey::Path,
            k => match k.split_once(':') {
                Some(("header", h)) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                    HashKey::Header(h.to_ascii_lowercase())
                }
                Some(("cookie", c)) if !c.is_empty() && !c.contains([';', '=', ' ']) => {
                    HashKey::Cookie(c.to_string())
                }
                _ => {
                    return Err(FieldError::new(
                        field(path, "key"),
                        format!("{k:?} must be header:<name>, cookie:<name>, client_ip or path"),
                    ))
                }
            },
        };
        Ok(Some(parsed))
    }
}

impl RetrySpec {
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        if self.attempts > 10 {
            return Err(FieldError::new(field(path, "attempts"), "at most 10"));
        }
        share(path, "budget", self.budget)
    }
}

impl HealthCheckSpec {
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        share(path, "panic_threshold", self.panic_threshold)?;
        if let Some(a) = &self.active {
            let at = field(path, "active");
            if !a.path.starts_with('/') {
                return Err(FieldError::new(field(&at, "path"), "must start with '/'"));
            }
            if a.interval_ms < 50
                || a.timeout_ms == 0
                || a.timeout_ms > a.interval_ms.max(1000) * 10
            {
                return Err(FieldError::new(
                    field(&at, "interval_ms"),
                    "interval_ms must be at least 50 and timeout_ms positive",
                ));
            }
            if a.healthy == 0 || a.unhealthy == 0 {
                return Err(FieldError::new(
                    at,
                    "healthy and unhealthy thresholds must be at least 1",
                ));
            }
        }
        if let Some(p) = &self.passive {
            let at = field(path, "passive");
            if p.consecutive_failures == 0 {
                return Err(FieldError::new(
                    field(&at, "consecutive_failures"),
                    "must be at least 1",
                ));
            }
            if p.ejection_ms == 0 {
                return Err(FieldError::new(
                    field(&at, "ejection_ms"),
                    "must be at least 1",
                ));
            }
            share(&at, "max_ejected_share", p.max_ejected_share)?;
        }
        Ok(())
    }
}

/// A route's canary: a share of its traffic to another upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    pub upstream: String,
    /// Percent of requests, 0 to 100.
    pub weight: f64,
    /// A request with this header (name: value) always goes to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<CanaryHeader>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryHeader {
    pub name: String,
    pub value: String,
}

impl CanarySpec {
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        if self.upstream.trim().is_empty() {
            return Err(FieldError::new(
                field(path, "upstream"),
                "must name an upstream",
            ));
        }
        if !(0.0..=100.0).contains(&self.weight) {
            return Err(FieldError::new(
                field(path, "weight"),
                "must be a percentage between 0 and 100",
            ));
        }
        if let Some(h) = &self.header {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(FieldError::new(
                    field(&field(path, "header"), "name"),
                    "not a valid header name",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_with_defaults() {
        let lb: LbSpec =
            serde_json::from_str(r#"{"type":"consistent_hash","key":"header:X-User"}"#).unwrap();
        assert_eq!(
            lb.hash_key("lb").unwrap(),
            Some(HashKey::Header("x-user".into()))
        );
        let lb: LbSpec = serde_json::from_str(r#"{"type":"least_request"}"#).unwrap();
        assert_eq!(lb, LbSpec::LeastRequest);
        let r: RetrySpec =
            serde_json::from_str(r#"{"on":["connect_failure","502","reset"]}"#).unwrap();
        assert_eq!(
            r.on,
            vec![RetryOn::ConnectFailure, RetryOn::Status502, RetryOn::Reset]
        );
        assert!(r.idempotent_only);
        let h: HealthCheckSpec =
            serde_json::from_str(r#"{"active":{"path":"/healthz"},"passive":{}}"#).unwrap();
        assert_eq!(h.active.as_ref().unwrap().interval_ms, 2000);
        assert_eq!(h.passive.as_ref().unwrap().consecutive_failures, 5);
        h.validate("hc").unwrap();
    }

    #[test]
    fn bad_policies_name_their_field() {
        let lb: LbSpec = serde_json::from_str(r#"{"type":"consistent_hash","key":"ip"}"#).unwrap();
        assert_eq!(lb.hash_key("lb").unwrap_err().path, "lb.key");
        assert!(serde_json::from_str::<LbSpec>(r#"{"type":"random"}"#).is_err());
        assert!(serde_json::from_str::<RetrySpec>(r#"{"on":["500"]}"#).is_err());
        let r: RetrySpec = serde_json::from_str(r#"{"budget":2}"#).unwrap();
        assert_eq!(r.validate("retry").unwrap_err().path, "retry.budget");
        let h: HealthCheckSpec = serde_json::from_str(r#"{"active":{"path":"healthz"}}"#).unwrap();
        assert_eq!(h.validate("hc").unwrap_err().path, "hc.active.path");
        let c: CanarySpec = serde_json::from_str(r#"{"upstream":"v2","weight":120}"#).unwrap();
        assert_eq!(c.validate("canary").unwrap_err().path, "canary.weight");
    }
}
