//! Registry self-preservation: what to do when etcd expires many of a
//! service's leases at once. After an etcd outage longer than the lease TTL,
//! clients that gave their lease up (the Go client closes its keep-alive
//! channel and most services never re-register) lose every key together
//! about one TTL after etcd is back, although the processes are up. A
//! gateway that dropped them would answer 503 for healthy services; one
//! that kept them blindly would route to dead hosts. Preserved instances
//! keep serving while an active probe says they answer.

use serde::{Deserialize, Serialize};

use super::error::{field, FieldError};

/// Bootstrap `etcd.self_preservation`, or an upstream's
/// `self_preservation` (which replaces it for that service).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelfPreservationSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Preservation starts when more than this share of a service's
    /// instances lost their lease by expiry within the window.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// ...and at least this many did: one instance of a one-instance
    /// service whose lease expires is a crash, not a mass expiry.
    #[serde(default = "two")]
    pub min_expired: u32,
    /// The window, in lease TTLs.
    #[serde(default = "two")]
    pub window_ttls: u32,
    /// For this many lease TTLs after the gateway (re)connects to etcd,
    /// every expiry is preserved, whatever the share: an outage just ended
    /// and clients may have given their leases up.
    #[serde(default = "two")]
    pub reconnect_grace_ttls: u32,
    /// How often a preserved instance is probed.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// Consecutive failed probes that drop a preserved instance.
    #[serde(default = "two")]
    pub probe_failures: u32,
    /// A preserved instance that has not registered again is dropped after
    /// this long, even while it answers: long enough to ride out an
    /// incident, short enough that a forgotten one does not live forever.
    #[serde(default = "default_max_unconfirmed_s")]
    pub max_unconfirmed_s: u64,
}

fn yes() -> bool {
    true
}
fn two() -> u32 {
    2
}
fn default_threshold() -> f64 {
    0.5
}
fn default_probe_interval_ms() -> u64 {
    1000
}
fn default_probe_timeout_ms() -> u64 {
    1000
}
fn default_max_unconfirmed_s() -> u64 {
    900
}

impl Default for SelfPreservationSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: default_threshold(),
            min_expired: two(),
            window_ttls: two(),
            reconnect_grace_ttls: two(),
            probe_interval_ms: default_probe_interval_ms(),
            probe_timeout_ms: default_probe_timeout_ms(),
            probe_failures: two(),
            max_unconfirmed_s: default_max_unconfirmed_s(),
        }
    }
}

impl SelfPreservationSpec {
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        if !(0.0..1.0).contains(&self.threshold) {
            return Err(FieldError::new(
                field(path, "threshold"),
                format!("must be at least 0 and below 1, got {}", self.threshold),
            ));
        }
        for (name, v, max) in [
            ("min_expired", self.min_expired, 1_000_000),
            ("window_ttls", self.window_ttls, 100),
            ("reconnect_grace_ttls", self.reconnect_grace_ttls, 100),
            ("probe_failures", self.probe_failures, 100),
        ] {
            if v == 0 || v > max {
                return Err(FieldError::new(
                    field(path, name),
                    format!("must be 1-{max}, got {v}"),
                ));
            }
        }
        if !(50..=60_000).contains(&self.probe_interval_ms) {
            return Err(FieldError::new(
                field(path, "probe_interval_ms"),
                format!("must be 50-60000, got {}", self.probe_interval_ms),
            ));
        }
        if !(1..=60_000).contains(&self.probe_timeout_ms) {
            return Err(FieldError::new(
                field(path, "probe_timeout_ms"),
                format!("must be 1-60000, got {}", self.probe_timeout_ms),
            ));
        }
        if !(1..=86_400 * 7).contains(&self.max_unconfirmed_s) {
            return Err(FieldError::new(
                field(path, "max_unconfirmed_s"),
                format!("must be 1-604800, got {}", self.max_unconfirmed_s),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        SelfPreservationSpec::default().validate("x").unwrap();
        let bad = |json: &str| {
            let s: SelfPreservationSpec = serde_json::from_str(json).unwrap();
            s.validate("etcd.self_preservation")
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"threshold": 1.0}"#).contains("etcd.self_preservation.threshold"));
        assert!(bad(r#"{"window_ttls": 0}"#).contains("window_ttls"));
        assert!(bad(r#"{"probe_interval_ms": 10}"#).contains("probe_interval_ms"));
        assert!(bad(r#"{"max_unconfirmed_s": 0}"#).contains("max_unconfirmed_s"));
        let typo = serde_json::from_str::<SelfPreservationSpec>(r#"{"enabeld": false}"#);
        assert!(typo
            .unwrap_err()
            .to_string()
            .contains("unknown field `enabeld`"));
    }
}
