//! Plugins: what a route (or every route, from the settings) does to a
//! request on its way in and to the response on its way out, as an onion:
//! request phases run in list order, response phases in reverse, and a
//! plugin that answers early (401, 403, a 204 preflight, a redirect) is
//! still seen on the way out by every plugin outside it.
//!
//! A plugin is one file here: a config type (serde, unknown fields refused)
//! compiled once into a [`Plugin`] when its route is validated, and one
//! line in [`REGISTRY`]. Nothing is parsed on the request path and nothing
//! locks; a route without plugins has no chain at all.
//!
//! Adding one: write `my_plugin.rs` with `pub fn compile(config: &Value,
//! at: &str) -> Result<Arc<dyn Plugin>, FieldError>` and add
//! `("my-plugin", my_plugin::compile)` to [`REGISTRY`].

mod basic_auth;
pub mod consumer;
mod cors;
mod forward_auth;
mod header_ops;
pub mod https_redirect;
mod ip_restriction;
mod jwt_auth;
pub mod jwt_crypto;
mod key_auth;
mod proxy_rewrite;
mod query_param;
mod redirect;
pub mod request_size;
mod response_rewrite;
mod ttl_cache;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::field_error::{deserialize_at, field, index, FieldError};
use consumer::{Consumer, ConsumerTable};

/// A plugin's compiler: its config (at `at`, for error paths) → the plugin.
pub type Compile = fn(&Value, &str) -> Result<Arc<dyn Plugin>, FieldError>;

/// Every plugin by name (the names are part of the contract).
pub const REGISTRY: &[(&str, Compile)] = &[
    ("ip-restriction", ip_restriction::compile),
    ("key-auth", key_auth::compile),
    ("basic-auth", basic_auth::compile),
    ("jwt-auth", jwt_auth::compile),
    ("forward-auth", forward_auth::compile),
    ("cors", cors::compile),
    ("request-size", request_size::compile),
    ("redirect", redirect::compile),
    ("proxy-rewrite", proxy_rewrite::compile),
    ("response-rewrite", response_rewrite::compile),
];

/// One compiled plugin. Both phases default to doing nothing.
#[async_trait::async_trait]
pub trait Plugin: Send + Sync + fmt::Debug {
    /// On the way in, before the rate limit and the upstream.
    fn request(&self, _req: &mut PluginRequest<'_>) -> Flow {
        Flow::Continue
    }

    /// Whether the request phase must wait (an auth service, a password
    /// hash off the request threads): then [`Plugin::request_waiting`]
    /// runs instead of [`Plugin::request`].
    fn waits(&self) -> bool {
        false
    }

    /// The request phase of a plugin that [`waits`](Plugin::waits).
    async fn request_waiting(&self, req: &mut PluginRequest<'_>) -> Flow {
        self.request(req)
    }

    /// On the way out: the upstream's response, the gateway's error, or the
    /// early answer of a plugin inside this one. `req` is the request as
    /// the plugins inside left it.
    fn response(&self, _req: &RequestHeader, _resp: &mut ResponseHeader) {}

    /// Whether [`Plugin::response`] may change the response. A chain with
    /// no such plugin lets the upstream's head go to the client from its
    /// bytes, without a header map; a plugin that does not say runs.
    fn edits_response(&self) -> bool {
        true
    }

    /// Whether [`Plugin::request`] reads [`PluginRequest::client_ip`] (found
    /// only for chains that need it: it walks `X-Forwarded-For`).
    fn needs_client_ip(&self) -> bool {
        false
    }
}

/// What a request phase sees and may change.
pub struct PluginRequest<'a> {
    pub header: &'a mut RequestHeader,
    /// The client as the trusted-proxy rules define it (`None` unless some
    /// plugin of the chain asked for it, or when it cannot be told).
    pub client_ip: Option<IpAddr>,
    /// How the gateway reads the request's host (no port): see [`Self::host`].
    pub host_of: fn(&RequestHeader) -> &str,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The first TLS listener's port, for redirects to https.
    pub https_port: Option<u16>,
    /// The request body limit (413 above it, declared or streamed).
    pub max_body: &'a mut u64,
    /// Every consumer, for the auth plugins.
    pub consumers: &'a ConsumerTable,
    /// Who the caller is, once an auth plugin has said so.
    pub consumer: &'a mut Option<Arc<Consumer>>,
}

impl PluginRequest<'_> {
    /// The host the request was routed by.
    pub fn host(&self) -> &str {
        (self.host_of)(self.header)
    }
}

/// A request phase's verdict.
pub enum Flow {
    Continue,
    /// End the request here with this answer.
    Respond(Reply),
}

/// An answer a plugin gives instead of the upstream.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The JSON error's message; `None` for an empty body (204, 3xx).
    pub message: Option<&'static str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A body of the plugin's own instead of the message (an auth
    /// service's answer), its type among `headers`.
    pub body: Option<bytes::Bytes>,
}

impl Reply {
    pub fn error(status: u16, message: &'static str) -> Self {
        Self {
            status,
            message: Some(message),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A 401 that tells the client how to authenticate.
    pub fn unauthorized(message: &'static str, challenge: &'static str) -> Self {
        let mut r = Self::error(401, message);
        r.headers.push((
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        ));
        r
    }
}

/// The plugins of one source (a route, or the settings), compiled. Equal
/// when their configs are equal, so an unchanged route is not republished.
#[derive(Clone, Default)]
pub struct PluginList {
    configs: Vec<Value>,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl PartialEq for PluginList {
    fn eq(&self, other: &Self) -> bool {
        self.configs == other.configs
    }
}

impl fmt::Debug for PluginList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.plugins).finish()
    }
}

impl PluginList {
    /// Compiles `configs` (each a one-key object: `{"cors": {...}}`) at
    /// `at` (`routes[2].plugins`), naming the bad entry's field.
    pub fn compile(configs: &[Value], at: &str) -> Result<Self, FieldError> {
        let mut plugins = Vec::with_capacity(configs.len());
        for (i, entry) in configs.iter().enumerate() {
            let entry_at = index(at, i);
            let one = match entry.as_object() {
                Some(o) if o.len() == 1 => o,
                _ => {
                    return Err(FieldError::new(
                        entry_at,
                        "each plugin is an object with one key, its name: {\"cors\": {...}}",
                    ))
                }
            };
            let Some((name, config)) = one.iter().next() else {
                continue;
            };
            let Some((_, compile)) = REGISTRY.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
                return Err(FieldError::new(
                    entry_at,
                    format!("unknown plugin {name:?}; known: {}", known.join(", ")),
                ));
            };
            plugins.push(compile(config, &field(&entry_at, name))?);
        }
        Ok(Self {
            configs: configs.to_vec(),
            plugins,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// A route's whole onion: the settings' plugins around the route's own.
#[derive(Debug)]
pub struct Chain {
    plugins: Box<[Arc<dyn Plugin>]>,
    needs_client_ip: bool,
    waits: bool,
    edits_response: bool,
}

impl Chain {
    /// `None` when neither has a plugin: such a route pays nothing.
    pub fn join(global: &PluginList, route: &PluginList) -> Option<Arc<Chain>> {
        if global.is_empty() && route.is_empty() {
            return None;
        }
        let plugins: Box<[Arc<dyn Plugin>]> = global
            .plugins
            .iter()
            .chain(&route.plugins)
            .cloned()
            .collect();
        let needs_client_ip = plugins.iter().any(|p| p.needs_client_ip());
        let waits = plugins.iter().any(|p| p.waits());
        let edits_response = plugins.iter().any(|p| p.edits_response());
        Some(Arc::new(Chain {
            plugins,
            needs_client_ip,
            waits,
            edits_response,
        }))
    }

    pub fn needs_client_ip(&self) -> bool {
        self.needs_client_ip
    }

    /// Whether some plugin's response phase may edit the response.
    pub fn edits_response(&self) -> bool {
        self.edits_response
    }

    /// Whether some plugin's request phase waits.
    pub fn waits(&self) -> bool {
        self.waits
    }

    /// Runs the request phases in order. `Ok(n)`: all `n` passed;
    /// `Err((i, reply))`: plugin `i` answered, and the `i` before it are
    /// the ones to see the answer on its way out. Only plugins that wait
    /// cost a future of their own.
    pub async fn request(&self, req: &mut PluginRequest<'_>) -> Result<usize, (usize, Reply)> {
        for (i, p) in self.plugins.iter().enumerate() {
            let flow = if p.waits() {
                p.request_waiting(req).await
            } else {
                p.request(req)
            };
            if let Flow::Respond(reply) = flow {
                return Err((i, reply));
            }
        }
        Ok(self.plugins.len())
    }

    /// Runs the response phases of the first `entered` plugins, innermost
    /// first.
    pub fn response(&self, entered: usize, req: &RequestHeader, resp: &mut ResponseHeader) {
        let entered = entered.min(self.plugins.len());
        for p in self.plugins[..entered].iter().rev() {
            p.response(req, resp);
        }
    }
}

/// Deserializes a plugin's config, errors under `at`.
pub(crate) fn config<T: serde::de::DeserializeOwned>(v: &Value, at: &str) -> Result<T, FieldError> {
    deserialize_at(v).map_err(|e| e.under(at))
}

/// A header name from a config, or the error naming where it is.
pub(crate) fn header_name(name: &str, at: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| FieldError::new(at, format!("{name:?} is not a valid header name")))
}

/// A header value from a config (no CR, LF or NUL), or the error.
pub(crate) fn header_value(value: &str, at: &str) -> Result<HeaderValue, FieldError> {
    HeaderValue::from_str(value)
        .map_err(|_| FieldError::new(at, format!("{value:?} is not a valid header value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str) -> Result<PluginList, FieldError> {
        let v: Vec<Value> = serde_json::from_str(json).unwrap();
        PluginList::compile(&v, "routes[0].plugins")
    }

    #[test]
    fn each_entry_is_one_known_plugin_and_errors_name_the_field() {
        assert_eq!(list("[]").unwrap().plugins.len(), 0);
        let e =
            list(r#"[{"cors": {"origins": ["https://a.example"]}}, {"nope": {}}]"#).unwrap_err();
        assert_eq!(e.path, "routes[0].plugins[1]");
        assert!(e.message.contains("unknown plugin \"nope\""), "{e}");
        let e = list(r#"[{"cors": {}, "ip-restriction": {}}]"#).unwrap_err();
        assert_eq!(e.path, "routes[0].plugins[0]");
        let e = list(r#"[{"request-size": {"max_bytes": 10, "maxbytes": 1}}]"#).unwrap_err();
        assert_eq!(e.path, "routes[0].plugins[0].request-size.maxbytes");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn lists_are_equal_by_config_and_an_empty_chain_is_none() {
        let a = list(r#"[{"request-size": {"max_bytes": 10}}]"#).unwrap();
        let b = list(r#"[{"request-size": {"max_bytes": 10}}]"#).unwrap();
        let c = list(r#"[{"request-size": {"max_bytes": 11}}]"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(Chain::join(&PluginList::default(), &PluginList::default()).is_none());
        let chain = Chain::join(&a, &c).unwrap();
        assert_eq!(chain.plugins.len(), 2);
    }
}
