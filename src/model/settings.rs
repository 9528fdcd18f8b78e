//! Global settings (`/tollgate/settings`): defaults for routes that set
//! nothing of their own.

use serde::{Deserialize, Serialize};

use super::rate_limit::{LimitKey, RateLimitSpec};
use super::timeout::TimeoutSpec;
use super::FieldError;
use crate::plugins::PluginList;

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
    /// Plugins around every route's own (the outer layers of the onion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<serde_json::Value>,
}

/// Settings checked: the default limit's parsed key and the plugins compiled.
#[derive(Debug, Default)]
pub struct ValidSettings {
    pub limit_key: Option<LimitKey>,
    pub plugins: PluginList,
}

impl SettingsSpec {
    /// Validates every field.
    pub fn validate(&self, path: &str) -> Result<ValidSettings, FieldError> {
        if let Some(t) = &self.timeout {
            t.validate(&super::error::field(path, "timeout"))?;
        }
        let limit_key = self
            .rate_limit
            .as_ref()
            .map(|l| l.validate(&super::error::field(path, "rate_limit")))
            .transpose()?;
        let plugins = PluginList::compile(&self.plugins, &super::error::field(path, "plugins"))?;
        Ok(ValidSettings { limit_key, plugins })
    }
}
