//! Global settings (`/tollgate/settings`): defaults for routes that set
//! nothing of their own.

use serde::{Deserialize, Serialize};

use super::rate_limit::{LimitKey, RateLimitSpec};
use super::timeout::TimeoutSpec;
use super::FieldError;

/// Unknown fields are rejected like everywhere else.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSpec {
    /// Default upstream timeouts, over the bootstrap file's `proxy.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    /// The limit of every route that sets none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

impl SettingsSpec {
    /// Validates; returns the default limit's parsed key.
    pub fn validate(&self, path: &str) -> Result<Option<LimitKey>, FieldError> {
        if let Some(t) = &self.timeout {
            t.validate(&super::error::field(path, "timeout"))?;
        }
        self.rate_limit
            .as_ref()
            .map(|l| l.validate(&super::error::field(path, "rate_limit")))
            .transpose()
    }
}
