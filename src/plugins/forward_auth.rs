//! `forward-auth {uri, request_headers, upstream_headers, timeout_ms,
//! timeout_status, unreachable_status, cache}`: an auth service decides.
//!
//! The gateway sends `GET <uri>` with the request's method, host, path
//! and scheme in `X-Forwarded-Method/-Host/-Uri/-Proto`, the client's
//! `X-Forwarded-For`, and the client headers named in `request_headers`
//! (default `Authorization` and `Cookie`). A 2xx lets the request through
//! with the answer's `upstream_headers` copied onto it (a client's own
//! values of those names are always removed first, so they cannot be
//! forged); any other answer goes back to the client as it came (status,
//! headers, up to 64 KiB of body). An auth service that does not answer
//! within `timeout_ms` (default 3000) gets `timeout_status` (504); one that
//! cannot be reached, `unreachable_status` (503).
//!
//! `cache: {ttl_ms, key_headers}` remembers decisions for `ttl_ms` under
//! the method, host, path and the named headers' values (so a decision is
//! never reused for another path or another credential).

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use serde::Deserialize;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::ttl_cache::TtlCache;
use super::{config, header_name, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, index, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    uri: String,
    #[serde(default = "default_request_headers")]
    request_headers: Vec<String>,
    #[serde(default)]
    upstream_headers: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_timeout_status")]
    timeout_status: u16,
    #[serde(default = "default_unreachable_status")]
    unreachable_status: u16,
    #[serde(default)]
    cache: Option<CacheSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSpec {
    ttl_ms: u64,
    #[serde(default = "default_request_headers")]
    key_headers: Vec<String>,
}

fn default_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_timeout() -> u64 {
    3000
}
fn default_timeout_status() -> u16 {
    504
}
fn default_unreachable_status() -> u16 {
    503
}

/// The most of an auth service's refusal passed on to the client.
const MAX_BODY: usize = 64 * 1024;
/// Decisions remembered per plugin (route) at most.
const CACHE_ENTRIES: usize = 10_000;

/// Headers that describe one hop's framing, never copied either way.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
];

/// Where the auth service is: an address, or a name looked up per request.
#[derive(Debug)]
enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

struct ForwardAuth {
    target: Target,
    tls: bool,
    /// `host[:port]`, for the `Host` header and TLS SNI.
    authority: String,
    path: String,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    timeout: Duration,
    timeout_status: u16,
    unreachable_status: u16,
    cache: Option<(TtlCache<Decision>, Vec<HeaderName>)>,
    connector: Connector,
}

impl std::fmt::Debug for ForwardAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("target", &self.target)
            .field("path", &self.path)
            .finish()
    }
}

/// What the auth service said.
#[derive(Debug, Clone)]
enum Decision {
    /// Through, with these headers for the upstream.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Its answer, for the client.
    Deny(Reply),
}

fn headers(names: &[String], at: &str) -> Result<Vec<HeaderName>, FieldError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let at = index(at, i);
            let h = header_name(n, &at)?;
            if HOP.contains(&h.as_str()) || h == http::header::HOST {
                return Err(FieldError::new(
                    at,
                    format!("{n:?} is not passed between hops"),
                ));
            }
            Ok(h)
        })
        .collect()
}

fn failure_status(code: u16, at: &str) -> Result<u16, FieldError> {
    if (500..=599).contains(&code) {
        Ok(code)
    } else {
        Err(FieldError::new(at, "must be a 5xx status"))
    }
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    let at_uri = field(at, "uri");
    let url = url::Url::parse(&spec.uri)
        .map_err(|e| FieldError::new(&at_uri, format!("not a URL: {e}")))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(FieldError::new(
                at_uri,
                format!("{other}: use http or https"),
            ))
        }
    };
    let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
        return Err(FieldError::new(at_uri, "needs a host"));
    };
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(FieldError::new(
            at_uri,
            "no credentials or fragment in the URL",
        ));
    }
    let target = match host {
        url::Host::Ipv4(ip) => Target::Addr(SocketAddr::new(ip.into(), port)),
        url::Host::Ipv6(ip) => Target::Addr(SocketAddr::new(ip.into(), port)),
        url::Host::Domain(d) => Target::Name(d.to_string(), port),
    };
    if !(1..=60_000).contains(&spec.timeout_ms) {
        return Err(FieldError::new(field(at, "timeout_ms"), "1 to 60000"));
    }
    let cache = match &spec.cache {
        None => None,
        Some(c) => {
            let at_cache = field(at, "cache");
            if !(1..=600_000).contains(&c.ttl_ms) {
                return Err(FieldError::new(field(&at_cache, "ttl_ms"), "1 to 600000"));
            }
            let keys = headers(&c.key_headers, &field(&at_cache, "key_headers"))?;
            let ttl = Duration::from_millis(c.ttl_ms);
            Some((TtlCache::new(CACHE_ENTRIES, ttl), keys))
        }
    };
    Ok(Arc::new(ForwardAuth {
        target,
        tls,
        authority: url[url::Position::BeforeHost..url::Position::AfterPort].to_string(),
        path: url[url::Position::BeforePath..url::Position::AfterQuery].to_string(),
        request_headers: headers(&spec.request_headers, &field(at, "request_headers"))?,
        upstream_headers: headers(&spec.upstream_headers, &field(at, "upstream_headers"))?,
        timeout: Duration::from_millis(spec.timeout_ms),
        timeout_status: failure_status(spec.timeout_status, &field(at, "timeout_status"))?,
        unreachable_status: failure_status(
            spec.unreachable_status,
            &field(at, "unreachable_status"),
        )?,
        cache,
        connector: Connector::new(None),
    }))
}

/// Why there is no decision.
enum Failure {
    TimedOut,
    Unreachable,
}

impl ForwardAuth {
    /// The request to the auth service for the client's request `req`.
    fn ask(&self, req: &PluginRequest<'_>) -> Option<RequestHeader> {
        let h = &*req.header;
        let mut ask = RequestHeader::build("GET", self.path.as_bytes(), Some(8)).ok()?;
        ask.insert_header(http::header::HOST, &self.authority)
            .ok()?;
        ask.insert_header("x-forwarded-method", h.method.as_str())
            .ok()?;
        ask.insert_header("x-forwarded-host", req.host()).ok()?;
        let target = h.uri.path_and_query().map_or("/", |p| p.as_str());
        ask.insert_header("x-forwarded-uri", target).ok()?;
        let proto = if req.tls { "https" } else { "http" };
        ask.insert_header("x-forwarded-proto", proto).ok()?;
        if let Some(ip) = req.client_ip {
            ask.insert_header("x-forwarded-for", ip.to_string()).ok()?;
        }
        for name in &self.request_headers {
            for v in h.headers.get_all(name) {
                ask.append_header(name.clone(), v.clone()).ok()?;
            }
        }
        ask.insert_header(http::header::CONTENT_LENGTH, "0").ok()?;
        Some(ask)
    }

    async fn peer(&self) -> Option<HttpPeer> {
        let addr = match &self.target {
            Target::Addr(a) => *a,
            Target::Name(host, port) => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .ok()?
                .next()?,
        };
        let sni = self
            .authority
            .rsplit_once(':')
            .map_or(&*self.authority, |(h, _)| h);
        let mut peer = HttpPeer::new(addr, self.tls, sni.to_string());
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Some(peer)
    }

    /// One exchange; `Err(true)` when a pooled connection failed before
    /// any answer (worth one more try on a new one).
    async fn exchange(&self, peer: &HttpPeer, ask: RequestHeader) -> Result<Decision, bool> {
        let (mut s, reused) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(|_| false)?;
        let sent = async {
            s.write_request_header(Box::new(ask)).await?;
            s.finish_request_body().await?;
            s.read_response_header().await
        }
        .await;
        if sent.is_err() {
            return Err(reused);
        }
        let Some(resp) = s.response_header().cloned() else {
            return Err(false);
        };
        let mut body = BytesMut::new();
        while let Some(chunk) = s.read_response_body().await.map_err(|_| false)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(false);
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(s, peer, Some(Duration::from_secs(60)))
            .await;
        if resp.status.is_success() {
            let copied = self
                .upstream_headers
                .iter()
                .flat_map(|n| {
                    resp.headers
                        .get_all(n)
                        .iter()
                        .map(move |v| (n.clone(), v.clone()))
                })
                .collect();
            return Ok(Decision::Allow(copied));
        }
        let headers = resp
            .headers
            .iter()
            // Framing and the request id are the gateway's.
            .filter(|(n, _)| !HOP.contains(&n.as_str()) && n.as_str() != "x-request-id")
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Ok(Decision::Deny(Reply {
            status: resp.status.as_u16(),
            message: None,
            headers,
            body: Some(Bytes::from(body)),
        }))
    }

    async fn decide(&self, req: &PluginRequest<'_>) -> Result<Decision, Failure> {
        let ask = self.ask(req).ok_or(Failure::Unreachable)?;
        let asked = async {
            let peer = self.peer().await.ok_or(Failure::Unreachable)?;
            match self.exchange(&peer, ask.clone()).await {
                Err(true) => self.exchange(&peer, ask).await,
                other => other,
            }
            .map_err(|_| Failure::Unreachable)
        };
        match tokio::time::timeout(self.timeout, asked).await {
            Ok(decided) => decided,
            Err(_) => Err(Failure::TimedOut),
        }
    }
}

#[async_trait::async_trait]
impl Plugin for ForwardAuth {
    fn edits_response(&self) -> bool {
        false
    }

    fn waits(&self) -> bool {
        true
    }

    fn needs_client_ip(&self) -> bool {
        true
    }

    async fn request_waiting(&self, req: &mut PluginRequest<'_>) -> Flow {
        // What the auth service may set upstream, a client may not.
        for name in &self.upstream_headers {
            req.header.remove_header(name);
        }
        let cache_key = self.cache.as_ref().map(|(cache, names)| {
            let h = &*req.header;
            let mut parts: Vec<&[u8]> = vec![
                h.method.as_str().as_bytes(),
                req.host().as_bytes(),
                h.uri
                    .path_and_query()
                    .map_or(b"/", |p| p.as_str().as_bytes()),
            ];
            for n in names {
                for v in h.headers.get_all(n) {
                    parts.push(n.as_str().as_bytes());
                    parts.push(v.as_bytes());
                }
            }
            cache.key_of(&parts)
        });
        let cached = match (&self.cache, &cache_key) {
            (Some((cache, _)), Some(k)) => cache.get(k),
            _ => None,
        };
        let decision = match cached {
            Some(d) => d,
            None => match self.decide(req).await {
                Ok(d) => {
                    if let (Some((cache, _)), Some(k)) = (&self.cache, cache_key) {
                        cache.put(k, d.clone());
                    }
                    d
                }
                Err(Failure::TimedOut) => {
                    tracing::warn!(path = %self.path, "forward-auth: the auth service did not answer in time");
                    return Flow::Respond(Reply::error(
                        self.timeout_status,
                        "auth service timed out",
                    ));
                }
                Err(Failure::Unreachable) => {
                    tracing::warn!(path = %self.path, "forward-auth: the auth service is unreachable or answered badly");
                    return Flow::Respond(Reply::error(
                        self.unreachable_status,
                        "auth service unavailable",
                    ));
                }
            },
        };
        match decision {
            Decision::Allow(copied) => {
                for (n, v) in copied {
                    let _ = req.header.append_header(n, v);
                }
                Flow::Continue
            }
            Decision::Deny(reply) => Flow::Respond(reply),
        }
    }
}
