//! A route: which requests it takes (hosts, paths, methods) and where they go.

use serde::{Deserialize, Serialize};

use super::cache::{CachePolicy, CacheSpec};
use super::error::{field, index, FieldError};
use super::pattern::PathPattern;
use super::policy::CanarySpec;
use super::rate_limit::{LimitKey, RateLimitSpec};
use super::timeout::TimeoutSpec;
use crate::plugins::PluginList;

/// A route as operators write it: in the bootstrap file's `routes:` list or
/// as the JSON value of `/tollgate/routes/<id>`. Unknown fields are
/// rejected so a typo (`upstrem`) never silently routes nowhere.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Required in the file; in etcd the key's last segment is the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `api.example.com`, `*.example.com`; empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    /// Empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    /// A registry service and/or an upstream policy name.
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Keep the client's Host header (default); false sends the node's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_host: Option<bool>,
    /// Served over TLS only: a plaintext request is redirected to https.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    /// How many times a failed connect is retried on another instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The largest request body this route takes (413 beyond it); absent
    /// means `proxy.max_body_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// This route's limit; absent means the settings' default, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Send a share of this route's traffic to another upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// An ordered list of one-key objects, `{"cors": {...}}` (see `plugins`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<serde_json::Value>,
    /// Cache the upstream's answers on each node (see `model::cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

pub use crate::plugins::request_size::{check_body_limit, MAX_BODY_LIMIT};

/// The HTTP methods a route may name; anything else is almost surely a typo.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Bitmask over [`METHODS`]; 0 means "any method".
pub type MethodMask = u16;

/// The mask bit of a request method, 0 for a method no route can name.
pub fn method_bit(method: &str) -> MethodMask {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(0, |i| 1 << i)
}

pub const MAX_RETRIES: u32 = 10;

/// A validated route, with its patterns parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub id: String,
    pub spec: RouteSpec,
    pub patterns: Vec<PathPattern>,
    /// Lower-cased hosts.
    pub hosts: Vec<String>,
    pub methods: MethodMask,
    /// The parsed `rate_limit.key`, when the route has its own limit.
    pub limit_key: Option<LimitKey>,
    /// The route's own plugins, compiled.
    pub plugins: PluginList,
    pub cache: Option<std::sync::Arc<CachePolicy>>,
}

impl Route {
    /// Every upstream the route may send to (its own, and its canary's).
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.spec.upstream.as_str())
            .chain(self.spec.canary.as_ref().map(|c| c.upstream.as_str()))
    }
}

fn validate_host(host: &str) -> Result<String, String> {
    let h = host.to_ascii_lowercase();
    let body = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !body.is_empty()
        && body.len() <= 253
        && body
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(h)
    } else {
        Err(format!(
            "host {host:?} must be a DNS name (letters, digits, '-', '.'), optionally starting with '*.'"
        ))
    }
}

/// Route ids become etcd key segments and metric labels: keep them tame.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("id must be 1 to 128 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "id {id:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl RouteSpec {
    /// Validates every field; `path` is where the route sits in its source
    /// (`routes[2]`, or empty for an etcd value).
    pub fn compile(self, id: &str, path: &str) -> Result<Route, FieldError> {
        validate_id(id).map_err(|m| FieldError::new(field(path, "id"), m))?;
        if self.paths.is_empty() {
            return Err(FieldError::new(
                field(path, "paths"),
                "at least one path is required",
            ));
        }
        let patterns = self
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PathPattern::parse(p)
                    .map_err(|m| FieldError::new(index(&field(path, "paths"), i), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                validate_host(h).map_err(|m| FieldError::new(index(&field(path, "hosts"), i), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut methods = 0;
        for (i, m) in self.methods.iter().enumerate() {
            let bit = method_bit(m);
            if bit == 0 {
                return Err(FieldError::new(
                    index(&field(path, "methods"), i),
                    format!("unknown method {m:?}; use one of {}", METHODS.join(", ")),
                ));
            }
            methods |= bit;
        }
        if self.upstream.trim().is_empty() {
            return Err(FieldError::new(
                field(path, "upstream"),
                "must name an upstream",
            ));
        }
        if let Some(prefix) = &self.strip_prefix {
            if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
                return Err(FieldError::new(
                    field(path, "strip_prefix"),
                    format!(
                        "{prefix:?} must start with '/', not end with '/', and not be just '/'"
                    ),
                ));
            }
        }
        if let Some(t) = &self.timeout {
            t.validate(&field(path, "timeout"))?;
        }
        if let Some(r) = self.retries {
            if r > MAX_RETRIES {
                return Err(FieldError::new(
                    field(path, "retries"),
                    format!("at most {MAX_RETRIES}, got {r}"),
                ));
            }
        }
        if let Some(c) = &self.canary {
            c.validate(&field(path, "canary"))?;
        }
        if let Some(m) = self.max_body_bytes {
            check_body_limit(&field(path, "max_body_bytes"), m)?;
        }
        let limit_key = self
            .rate_limit
            .as_ref()
            .map(|l| l.validate(&field(path, "rate_limit")))
            .transpose()?;
        let plugins = PluginList::compile(&self.plugins, &field(path, "plugins"))?;
        let cache = (self.cache.as_ref())
            .map(|c| c.compile(&field(path, "cache")).map(std::sync::Arc::new))
            .transpose()?;
        Ok(Route {
            cache,
            id: id.to_string(),
            spec: self,
            patterns,
            hosts,
            methods,
            limit_key,
            plugins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RouteSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_a_full_route() {
        let r = spec(r#"{"hosts":["API.example.com","*.example.com"],"paths":["/api/users/:id"],"methods":["GET","POST"],"upstream":"users","strip_prefix":"/api"}"#)
            .compile("users", "")
            .unwrap();
        assert_eq!(r.hosts, vec!["api.example.com", "*.example.com"]);
        assert_eq!(r.methods, method_bit("GET") | method_bit("POST"));
    }

    #[test]
    fn names_the_bad_field() {
        let cases = [
            (r#"{"paths":[],"upstream":"u"}"#, "routes[1].paths"),
            (
                r#"{"paths":["/a","nope"],"upstream":"u"}"#,
                "routes[1].paths[1]",
            ),
            (
                r#"{"paths":["/a"],"hosts":["bad host"],"upstream":"u"}"#,
                "routes[1].hosts[0]",
            ),
            (
                r#"{"paths":["/a"],"methods":["GTE"],"upstream":"u"}"#,
                "routes[1].methods[0]",
            ),
            (r#"{"paths":["/a"],"upstream":" "}"#, "routes[1].upstream"),
            (
                r#"{"paths":["/a"],"upstream":"u","strip_prefix":"api"}"#,
                "routes[1].strip_prefix",
            ),
            (
                r#"{"paths":["/a"],"upstream":"u","timeout":{"read_ms":0}}"#,
                "routes[1].timeout.read_ms",
            ),
            (
                r#"{"paths":["/a"],"upstream":"u","retries":99}"#,
                "routes[1].retries",
            ),
        ];
        for (json, want) in cases {
            let err = spec(json).compile("r", "routes[1]").unwrap_err();
            assert_eq!(err.path, want, "{json}: {err}");
        }
        let err = spec(r#"{"paths":["/a"],"upstream":"u"}"#)
            .compile("bad id!", "routes[1]")
            .unwrap_err();
        assert_eq!(err.path, "routes[1].id");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = super::super::error::from_json::<RouteSpec>(br#"{"paths":["/a"],"upstrem":"u"}"#)
            .unwrap_err();
        assert!(err.message.contains("unknown field `upstrem`"), "{err}");
    }
}
