//! Global settings (`/tollgate/settings`): defaults for routes that set
//! nothing of their own.

use serde::{Deserialize, Serialize};

use super::timeout::TimeoutSpec;
use super::FieldError;

/// Unknown fields are rejected like everywhere else.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSpec {
    /// Default upstream timeouts, over the bootstrap file's `proxy.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
}

impl SettingsSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(t) = &self.timeout {
            t.validate("timeout")?;
        }
        Ok(())
    }
}
