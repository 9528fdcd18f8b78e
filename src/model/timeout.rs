//! Upstream timeouts, settable globally, per upstream and per route.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::error::{field, FieldError};

/// Timeouts in milliseconds; an absent field inherits from the next level
/// out (route → upstream → bootstrap default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

/// Fully resolved timeouts, as handed to the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an idle upstream connection stays in the keepalive pool.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

const MAX_MS: u64 = 24 * 3600 * 1000;

impl TimeoutSpec {
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        for (name, v) in [
            ("connect_ms", self.connect_ms),
            ("read_ms", self.read_ms),
            ("write_ms", self.write_ms),
            ("idle_ms", self.idle_ms),
        ] {
            if let Some(v) = v {
                if v == 0 || v > MAX_MS {
                    return Err(FieldError::new(
                        field(path, name),
                        format!("must be between 1 and {MAX_MS} ms, got {v}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Overrides `base` with the fields this spec sets.
    pub fn apply(&self, base: Timeouts) -> Timeouts {
        let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
        Timeouts {
            connect: ms(self.connect_ms, base.connect),
            read: ms(self.read_ms, base.read),
            write: ms(self.write_ms, base.write),
            idle: ms(self.idle_ms, base.idle),
        }
    }
}
