//! The request as it goes upstream: what tollgate adds, rewrites and (for
//! the core engine) strips, decided once per attempt by the shared
//! [`Gate`] and applied in one rebuild of the header.

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;
use std::time::Instant;

use super::ctx::RequestCtx;
use super::forwarding::forwarded_for;
use super::gate::{Gate, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};
use super::header_edit;

/// What [`Gate::upstream_edits`] decided for one attempt.
pub struct UpstreamEdits {
    sanitize: Sanitize,
    uri: Option<http::Uri>,
    /// The TCP peer, appended to `X-Forwarded-For`.
    client: Option<IpAddr>,
    host: Option<HeaderValue>,
    id: Option<HeaderValue>,
    /// `X-Forwarded-Proto`: how the client reached the gateway.
    scheme: &'static str,
}

impl UpstreamEdits {
    /// Headers the edits may add (room reserved once).
    pub const ADDED: usize = 4;

    /// Makes the edits on a request's parts.
    pub fn apply(self, req: &mut http::request::Parts) -> Result<()> {
        let h = &mut req.headers;
        if let Sanitize::HopByHop {
            downstream_is_http11,
        } = self.sanitize
        {
            // A request pingora-proxy would refuse is the client's fault.
            super::hop_by_hop::sanitize(h, downstream_is_http11).map_err(|e| e.into_down())?;
        }
        if let Some(uri) = self.uri {
            req.uri = uri;
        }
        if let Some(ip) = self.client {
            let xff = forwarded_for(h.get_all(&X_FORWARDED_FOR), ip);
            h.insert(X_FORWARDED_FOR.clone(), xff);
        }
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.scheme),
        );
        h.remove(http::header::EXPECT);
        // A kept client id is already the one forwarded header; otherwise
        // (generated, or the client sent several) ours replaces them all.
        if let Some(id) = self.id {
            h.insert(X_REQUEST_ID.clone(), id);
        }
        if let Some(host) = self.host {
            h.insert(http::header::HOST, host);
        }
        Ok(())
    }
}

/// How the upstream request is built beyond tollgate's own headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sanitize {
    /// pingora-proxy already stripped hop-by-hop headers (ProxyHttp).
    Done,
    /// Strip hop-by-hop headers here, in the same rebuild (core engine);
    /// `true` when the client spoke HTTP/1.1 (WebSocket upgrades need it).
    HopByHop { downstream_is_http11: bool },
}

impl Gate {
    /// Tollgate's edits of the request going upstream, decided once per
    /// attempt: path rewrite (`strip_prefix`), `X-Forwarded-For`/`-Proto`,
    /// `X-Request-Id`, `Host` for `preserve_host: false`, no `Expect` (the
    /// client got its `100 Continue` from us, see [`Gate::route_request`]),
    /// and with [`Sanitize::HopByHop`] pingora-proxy's hop-by-hop stripping.
    /// [`UpstreamEdits::apply`] makes them in one rebuild of the header.
    pub fn upstream_edits(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
        sanitize: Sanitize,
    ) -> Result<UpstreamEdits> {
        ctx.upstream_sent = Some(Instant::now());
        let mut edits = UpstreamEdits {
            sanitize,
            uri: None,
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            host: None,
            id: (!ctx.id_already_sent).then(|| ctx.request_id.clone()),
            scheme: ctx.protocol.scheme(),
        };
        let req = session.req_header();
        if req.uri.scheme().is_some() {
            // An HTTP/2 request names its host in `:authority`, not `Host`:
            // the HTTP/1.1 upstream gets `Host` and an origin-form target.
            if !req.headers.contains_key(http::header::HOST) {
                edits.host =
                    (req.uri.authority()).and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            }
            edits.uri = req
                .uri
                .path_and_query()
                .and_then(|p| p.as_str().parse().ok());
        }
        let Some(route) = ctx.route() else {
            return Ok(edits);
        };
        if let Some(path) = route.rewrite_path(req.uri.path()) {
            let uri = match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            edits.uri =
                Some(uri.parse::<http::Uri>().map_err(|e| {
                    Error::because(ErrorType::InvalidHTTPHeader, "rewriting path", e)
                })?);
        }
        if let (false, Some(a)) = (route.preserve_host, &ctx.attempt) {
            edits.host =
                Some(HeaderValue::from_str(&a.node().authority).map_err(|e| {
                    Error::because(ErrorType::InvalidHTTPHeader, "upstream host", e)
                })?);
        }
        Ok(edits)
    }

    /// [`Gate::upstream_edits`] applied to the header pingora-proxy built.
    pub fn edit_upstream_request(
        &self,
        session: &ServerSession,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
        sanitize: Sanitize,
    ) -> Result<()> {
        let edits = self.upstream_edits(session, ctx, sanitize)?;
        header_edit::edit_request(upstream, UpstreamEdits::ADDED, |req| edits.apply(req))
    }
}
