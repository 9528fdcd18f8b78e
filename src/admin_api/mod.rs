//! The admin REST API (`admin_api: {listen, keys}`, off unless set): routes,
//! upstreams, consumers, certificates and the settings in etcd, checked
//! on write by the validator the gateways use (`source::document`), with
//! `ETag`/`If-Match` on etcd mod_revisions, API keys with roles, an audit
//! line per write, and the fleet's applied revisions.

pub mod auth;
pub mod etcd;
pub mod fleet;
mod openapi;
pub mod purge;
mod resources;
pub mod secrets;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;

use crate::field_error::{field, FieldError};
use crate::source::document::Kind;
use crate::tls::KeyRing;
use auth::{ApiKeySpec, Caller, Keys, Role};
use etcd::Etcd;

/// `admin_api:` in the bootstrap file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminApiConfig {
    /// `"127.0.0.1:9181"`, or `{addr, tls: true}` for HTTPS with the
    /// gateway's certificates (`tls:` and the certificate table).
    pub listen: crate::config::Listener,
    pub keys: Vec<ApiKeySpec>,
}

/// The largest body a write may send.
pub const MAX_BODY: usize = 1024 * 1024;

/// Where the API keeps what: the config prefix and the registry's.
#[derive(Debug, Clone)]
pub struct Keyspace {
    pub prefix: String,
    pub registry: String,
}

impl Keyspace {
    fn key(&self, kind: Kind, id: &str) -> String {
        match kind {
            Kind::Settings => format!("{}/settings", self.prefix),
            _ => format!("{}/{}/{id}", self.prefix, kind.folder()),
        }
    }

    fn folder(&self, kind: Kind) -> String {
        format!("{}/{}/", self.prefix, kind.folder())
    }
}

pub struct AdminApi {
    keys: Keys,
    etcd: Etcd,
    space: Keyspace,
    key_ring: Arc<KeyRing>,
    /// How long purge records live (`cache.purge_record_ttl_s`).
    purge_ttl_s: i64,
}

impl AdminApi {
    /// Checks the config (at `admin_api`) and prepares the API; etcd is
    /// dialled on the first request.
    pub fn new(
        cfg: &AdminApiConfig,
        endpoints: Vec<String>,
        space: Keyspace,
        key_ring: Arc<KeyRing>,
    ) -> Result<Self, FieldError> {
        Ok(Self {
            keys: Keys::new(&cfg.keys, &field("admin_api", "keys"))?,
            etcd: Etcd::new(endpoints),
            space: Keyspace {
                prefix: space.prefix.trim_end_matches('/').to_string(),
                registry: space.registry.trim_end_matches('/').to_string(),
            },
            key_ring,
            purge_ttl_s: crate::cache::purge::RECORD_TTL_SECS,
        })
    }

    /// How long purge records live (`cache.purge_record_ttl_s`).
    pub fn with_purge_ttl(mut self, secs: u64) -> Self {
        self.purge_ttl_s = i64::try_from(secs).unwrap_or(crate::cache::purge::RECORD_TTL_SECS);
        self
    }
}

/// An answer: status, JSON body, extra headers.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn ok(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// `{"error": ..., "fields": [...]}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::ok(status, json!({ "error": message.into(), "fields": [] }))
    }

    /// A 400 naming every bad field found.
    pub fn invalid(errors: &[FieldError]) -> Self {
        let first = errors.first().map_or_else(String::new, |e| e.to_string());
        let more = match errors.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        let fields: Vec<Value> = errors
            .iter()
            .map(|e| json!({ "path": e.path, "message": e.message }))
            .collect();
        Self::ok(
            400,
            json!({ "error": format!("invalid value: {first}{more}"), "fields": fields }),
        )
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Vec<u8>> {
        let mut body = serde_json::to_vec_pretty(&self.body).unwrap_or_default();
        body.push(b'\n');
        let mut b = Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("cache-control", "no-store");
        for (n, v) in &self.headers {
            b = b.header(*n, v.as_str());
        }
        b.body(body).unwrap_or_default()
    }
}

/// A request as the handlers see it.
pub struct Call<'a> {
    pub method: http::Method,
    pub query: Vec<(String, String)>,
    pub if_match: Option<Result<i64, ()>>,
    pub body: Option<Value>,
    pub caller: &'a Caller,
    pub client: Option<IpAddr>,
}

impl Call<'_> {
    pub fn flag(&self, name: &str) -> bool {
        self.query
            .iter()
            .any(|(k, v)| k == name && (v.is_empty() || v == "true" || v == "1"))
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the body, refusing more than [`MAX_BODY`]; JSON, or YAML by
/// `Content-Type`.
async fn read_body(session: &mut ServerSession) -> Result<Option<Value>, Answer> {
    let mut raw = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if raw.len() + chunk.len() > MAX_BODY {
                    return Err(Answer::error(413, format!("body over {MAX_BODY} bytes")));
                }
                raw.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(Answer::error(400, format!("cannot read the body: {e}"))),
        }
    }
    if raw.is_empty() {
        return Ok(None);
    }
    let yaml = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"));
    let parsed = if yaml {
        serde_yaml_ng::from_slice::<Value>(&raw).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(&raw).map_err(|e| e.to_string())
    };
    parsed.map(Some).map_err(|e| {
        Answer::error(
            400,
            format!(
                "body is not valid {}: {e}",
                if yaml { "YAML" } else { "JSON" }
            ),
        )
    })
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

impl AdminApi {
    async fn answer(&self, session: &mut ServerSession) -> Answer {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let key = req.headers.get("x-api-key").map(|v| v.as_bytes().to_vec());
        let caller = match self.keys.check(key.as_deref()) {
            Ok(c) => c,
            Err(_) => {
                crate::metrics::METRICS.admin_auth_failures.inc();
                let wait = self.keys.failed(client);
                tokio::time::sleep(wait).await;
                let why = if key.is_none() {
                    "missing X-API-Key"
                } else {
                    "unknown API key"
                };
                return Answer::error(401, why);
            }
        };
        let writes = !matches!(method, http::Method::GET | http::Method::HEAD);
        if writes && caller.role == Role::Viewer {
            return Answer::error(403, format!("key {:?} may only read", caller.name));
        }
        let if_match = req.headers.get(http::header::IF_MATCH).map(|v| {
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or(())
        });
        let query = query_pairs(req.uri.query());
        let body = if matches!(
            method,
            http::Method::PUT | http::Method::PATCH | http::Method::POST
        ) {
            match read_body(session).await {
                Ok(b) => b,
                Err(a) => return a,
            }
        } else {
            None
        };
        let call = Call {
            method,
            query,
            if_match,
            body,
            caller,
            client,
        };
        let Some(rest) = path.strip_prefix("/admin/v1/") else {
            return Answer::error(404, "not found: the API lives under /admin/v1/");
        };
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            ["openapi.json"] => Answer::ok(200, openapi::document()),
            ["gateways"] => resources::gateways(self, &call).await,
            ["purge"] => purge::post(self, &call).await,
            ["settings"] => resources::one(self, &call, Kind::Settings, "").await,
            [folder] => match Kind::from_folder(folder) {
                Some(kind) if kind != Kind::Settings => resources::list(self, &call, kind).await,
                _ => Answer::error(404, format!("no resource kind {folder:?}")),
            },
            [folder, id] => match Kind::from_folder(folder) {
                Some(kind) if kind != Kind::Settings => resources::one(self, &call, kind, id).await,
                _ => Answer::error(404, format!("no resource kind {folder:?}")),
            },
            [folder, _, ..] if Kind::from_folder(folder).is_some() => {
                Answer::error(400, "an id may not contain '/'")
            }
            _ => Answer::error(404, "not found"),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.answer(session).await.into_response()
    }
}
