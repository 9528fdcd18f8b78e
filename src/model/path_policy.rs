//! How request paths are normalized before routing (`proxy.path`): the
//! route matched must be the route the upstream sees, whatever the upstream
//! does with escapes, backslashes and `;` parameters.

use serde::{Deserialize, Serialize};

/// What to do with one kind of ambiguous path byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ambiguous {
    /// 400: the safe default (Tomcat, Spring and IIS read them as `/`).
    Reject,
    /// Forward as sent: only for upstreams known to treat it as data.
    Keep,
    /// Read it as `/` before routing (the upstream sees `/`).
    Decode,
}

/// `proxy.path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathPolicy {
    /// `//` becomes `/` (nginx's `merge_slashes`).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// `%2F` (and `%2f`).
    #[serde(default = "reject")]
    pub escaped_slashes: Ambiguous,
    /// `\` and `%5C`.
    #[serde(default = "reject")]
    pub backslashes: Ambiguous,
}

fn yes() -> bool {
    true
}
fn reject() -> Ambiguous {
    Ambiguous::Reject
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: Ambiguous::Reject,
            backslashes: Ambiguous::Reject,
        }
    }
}
