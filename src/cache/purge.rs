//! Purge records: `<prefix>/purges/<id>` → `{"route": "...", "key":
//! "/exact/target" | "prefix": "/static/" | "tag": "user-42"}`, written
//! with a lease (the admin API's `POST /admin/v1/purge`, `tollgate purge`)
//! and applied by every node from its watch.

use serde::{Deserialize, Serialize};

use super::freshness::MAX_TAG_LEN;
use super::Stored;
use crate::model::route::validate_id;

/// How long a purge record lives in etcd: a node cut off from etcd for
/// longer cannot know which purges it missed, and drops its whole cache.
pub const RECORD_TTL_SECS: i64 = 600;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeSpec {
    pub route: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// What one purge drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Entries of the route with exactly this target (path and query).
    Key { route: String, target: String },
    /// Entries of the route whose target starts with this.
    Prefix { route: String, prefix: String },
    /// Entries of the route whose answer carried this tag.
    Tag { route: String, tag: String },
}

impl PurgeSpec {
    /// Checks the record: a route id, and exactly one of key, prefix, tag.
    pub fn compile(self) -> Result<Purge, String> {
        validate_id(&self.route).map_err(|e| format!("route: {e}"))?;
        let route = self.route;
        match (self.key, self.prefix, self.tag) {
            (Some(target), None, None) => {
                check_target("key", &target)?;
                Ok(Purge::Key { route, target })
            }
            (None, Some(prefix), None) => {
                check_target("prefix", &prefix)?;
                Ok(Purge::Prefix { route, prefix })
            }
            (None, None, Some(tag)) => {
                let ok = !tag.is_empty()
                    && tag.len() <= MAX_TAG_LEN
                    && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',');
                if !ok {
                    return Err(format!(
                        "tag: 1 to {MAX_TAG_LEN} visible ASCII characters, no comma or space"
                    ));
                }
                Ok(Purge::Tag { route, tag })
            }
            _ => Err("exactly one of key, prefix or tag".into()),
        }
    }
}

fn check_target(name: &str, t: &str) -> Result<(), String> {
    if !t.starts_with('/') || t.len() > 8192 || t.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(format!(
            "{name}: a request target starting with '/' (no spaces or control characters)"
        ));
    }
    Ok(())
}

impl Purge {
    pub fn route(&self) -> &str {
        match self {
            Purge::Key { route, .. } | Purge::Prefix { route, .. } | Purge::Tag { route, .. } => {
                route
            }
        }
    }

    pub fn matches(&self, s: &Stored) -> bool {
        if *s.route != *self.route() {
            return false;
        }
        match self {
            Purge::Key { target, .. } => *s.target == **target,
            Purge::Prefix { prefix, .. } => s.target.starts_with(prefix.as_str()),
            Purge::Tag { tag, .. } => s.tags.iter().any(|t| **t == **tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Purge, String> {
        serde_json::from_str::<PurgeSpec>(json)
            .map_err(|e| e.to_string())?
            .compile()
    }

    #[test]
    fn one_of_key_prefix_or_tag() {
        assert!(spec(r#"{"route":"r","key":"/a?b=1"}"#).is_ok());
        assert!(spec(r#"{"route":"r","prefix":"/static/"}"#).is_ok());
        assert!(spec(r#"{"route":"r","tag":"user-42"}"#).is_ok());
        for bad in [
            r#"{"route":"r"}"#,
            r#"{"route":"r","key":"/a","tag":"t"}"#,
            r#"{"route":"r","key":"a"}"#,
            r#"{"route":"r","tag":"a b"}"#,
            r#"{"route":"r","tag":"a,b"}"#,
            r#"{"route":"r","tag":""}"#,
            r#"{"route":"../x","tag":"t"}"#,
            r#"{"route":"r","tag":"t","extra":1}"#,
        ] {
            assert!(spec(bad).is_err(), "{bad}");
        }
    }
}
