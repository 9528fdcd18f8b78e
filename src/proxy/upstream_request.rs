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
use super::gate::{Gate, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use super::request_id::X_REQUEST_ID;
use super::{header_edit, hop_by_hop};

/// What [`Gate::upstream_edits`] decided for one attempt.
#[derive(Clone)]
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
            hop_by_hop::sanitize(h, downstream_is_http11).map_err(|e| e.into_down())?;
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

/// The head [`UpstreamEdits::direct_head`] writes: its bytes, and the
/// body that follows (`Content-Length`, 0 for none).
pub struct DirectHead {
    pub wire: Vec<u8>,
    pub body_len: u64,
}

impl UpstreamEdits {
    /// The upstream request head written straight from the client's header
    /// in one pass: the request [`UpstreamEdits::apply`] and
    /// `hop_by_hop::finalize` would build, without building a second header
    /// map and then serializing it (~4,500 instructions a request). Only for
    /// the plain case, where framing has nothing to do and stripping only
    /// leaves hop-by-hop headers out (`hop_by_hop::only_drops`: a browser's
    /// `Connection: keep-alive`): an origin-form target, a body only with
    /// `Content-Length`; `None` otherwise, and the caller builds the header.
    /// Header names keep the client's case; ours are written as the built
    /// header writes them.
    pub fn direct_head(&self, down: &RequestHeader, has_body: bool) -> Option<Result<DirectHead>> {
        let origin_form = down.uri.scheme().is_none() && down.raw_path().first() == Some(&b'/');
        let body_len = has_body
            .then(|| super::framing::declared_length(down))
            .flatten();
        // Hop-by-hop headers are left out as the loop meets them, when
        // that is all stripping does.
        let strip = hop_by_hop::any(&down.headers);
        if !origin_form
            || !down.has_case()
            || !matches!(self.sanitize, Sanitize::HopByHop { .. })
            || (has_body && body_len.is_none())
            || (strip && !hop_by_hop::only_drops(&down.headers))
        {
            return None;
        }
        let target = match &self.uri {
            Some(uri) => uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(),
            None => down.raw_path(),
        };
        if target
            .iter()
            .any(|&b| matches!(b, b'\0' | b'\r' | b'\n' | b' '))
        {
            return Some(Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "request target with a forbidden byte",
            ));
        }
        let xff = self
            .client
            .map(|ip| forwarded_for(down.headers.get_all(&X_FORWARDED_FOR), ip));
        let mut wire = Vec::with_capacity(256);
        wire.extend_from_slice(down.method.as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(target);
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        let mut line = |name: &[u8], value: &[u8]| {
            wire.extend_from_slice(name);
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value);
            wire.extend_from_slice(b"\r\n");
        };
        for ((name, value), (case, _)) in down.headers.iter().zip(down.case_header_iter()) {
            let ours = *name == X_FORWARDED_PROTO
                || *name == http::header::EXPECT
                || (xff.is_some() && *name == X_FORWARDED_FOR)
                || (self.id.is_some() && *name == X_REQUEST_ID)
                || (self.host.is_some() && *name == http::header::HOST)
                || (strip && hop_by_hop::is_hop_by_hop(name));
            if !ours {
                line(case.as_slice(), value.as_bytes());
            }
        }
        if let Some(host) = &self.host {
            line(b"Host", host.as_bytes());
        }
        if let Some(xff) = &xff {
            line(X_FORWARDED_FOR.as_str().as_bytes(), xff.as_bytes());
        }
        line(
            X_FORWARDED_PROTO.as_str().as_bytes(),
            self.scheme.as_bytes(),
        );
        if let Some(id) = &self.id {
            line(X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        Some(Ok(DirectHead {
            wire,
            body_len: body_len.unwrap_or(0),
        }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::hop_by_hop;

    /// A client's request header as Pingora parses it (names keep case).
    fn down(method: &str, target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, target, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn edits() -> UpstreamEdits {
        UpstreamEdits {
            sanitize: Sanitize::HopByHop {
                downstream_is_http11: true,
            },
            uri: None,
            client: Some("10.0.0.7".parse().unwrap()),
            host: None,
            id: Some(HeaderValue::from_static("id-1")),
            scheme: "http",
        }
    }

    /// Method, target and the header lines (names lower-cased, sorted) of
    /// a request head on the wire.
    fn parsed(wire: &[u8]) -> (String, String, Vec<(String, String)>) {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(wire).unwrap().is_complete(), "{wire:?}");
        let mut lines: Vec<_> = req
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        lines.sort();
        let method = req.method.unwrap().to_string();
        (method, req.path.unwrap().to_string(), lines)
    }

    /// The same request the built way: the header rebuilt with the edits,
    /// finalized, serialized.
    fn built(down: &RequestHeader, edits: UpstreamEdits, has_body: bool) -> Vec<u8> {
        let had_host = down.headers.contains_key(http::header::HOST);
        let (mut req, edited) = header_edit::request_from(down, UpstreamEdits::ADDED, |p| {
            p.version = http::Version::HTTP_11;
            edits.apply(p)
        });
        edited.unwrap();
        hop_by_hop::finalize(&mut req, had_host, has_body).unwrap();
        let wire = pingora::protocols::http::v1::client::http_req_header_to_wire(&req).unwrap();
        wire.to_vec()
    }

    #[test]
    fn the_direct_head_is_the_request_the_built_way_sends() {
        let mut rewritten = edits();
        rewritten.uri = Some("/v2/items?q=1".parse().unwrap());
        rewritten.host = Some(HeaderValue::from_static("backend:8080"));
        let mut keep_id = edits();
        keep_id.id = None;
        let cases = [
            (
                down("GET", b"/a", &[("Host", "x"), ("Accept", "*/*")]),
                edits(),
                false,
            ),
            (
                down(
                    "GET",
                    b"/a%20b?c=d",
                    &[
                        ("Host", "x"),
                        ("X-Forwarded-For", "1.2.3.4"),
                        ("x-forwarded-for", "5.6.7.8"),
                        ("X-Forwarded-Proto", "https"),
                        ("X-Request-Id", "client-id"),
                        ("Expect", "100-continue"),
                        ("X-Custom", "1"),
                        ("x-custom", "2"),
                    ],
                ),
                keep_id,
                false,
            ),
            (
                down(
                    "GET",
                    b"/api/items?q=1",
                    &[("Host", "x"), ("X-Request-Id", "spoofed")],
                ),
                rewritten,
                false,
            ),
            (
                down("POST", b"/up", &[("Host", "x"), ("Content-Length", "5")]),
                edits(),
                true,
            ),
            // A browser's hop-by-hop headers, left out as they are met.
            (
                down(
                    "GET",
                    b"/page",
                    &[
                        ("Host", "x"),
                        ("Connection", "keep-alive"),
                        ("Keep-Alive", "timeout=5"),
                        ("TE", "trailers"),
                        ("Proxy-Authorization", "Basic eDp5"),
                        ("Proxy-Connection", "keep-alive"),
                        ("Accept", "text/html"),
                    ],
                ),
                edits(),
                false,
            ),
        ];
        for (req, edits, has_body) in cases {
            let direct = edits
                .direct_head(&req, has_body)
                .expect("a plain request")
                .unwrap();
            let want = built(&req, edits, has_body);
            assert_eq!(
                parsed(&direct.wire),
                parsed(&want),
                "{}\n---\n{}",
                String::from_utf8_lossy(&direct.wire),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(direct.body_len, if has_body { 5 } else { 0 });
            let wire = String::from_utf8_lossy(&direct.wire).to_ascii_lowercase();
            for gone in ["connection", "keep-alive", "te:", "proxy-"] {
                assert!(!wire.contains(gone), "{gone}: {wire}");
            }
        }
    }

    #[test]
    fn the_direct_head_keeps_the_clients_header_case_and_exact_target() {
        let req = down("GET", b"/caf\xe9?x=%41", &[("HoSt", "x"), ("X-MiXed", "v")]);
        let head = edits().direct_head(&req, false).unwrap().unwrap();
        let text = String::from_utf8_lossy(&head.wire);
        assert!(
            head.wire.starts_with(b"GET /caf\xe9?x=%41 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nHoSt: x\r\n") && text.contains("\r\nX-MiXed: v\r\n"),
            "{text}"
        );
    }

    #[test]
    fn requests_the_direct_head_cannot_write_are_left_to_the_built_way() {
        let plain = [("Host", "x")];
        for (req, has_body) in [
            (
                down("GET", b"/", &[("Host", "x"), ("Connection", "X-Secret")]),
                false,
            ),
            (
                down("GET", b"/", &[("Host", "x"), ("Connection", "close")]),
                false,
            ),
            (
                down(
                    "GET",
                    b"/",
                    &[("Host", "x"), ("Connection", "keep-alive, TE, x-a")],
                ),
                false,
            ),
            (
                down("GET", b"/", &[("Host", "x"), ("Upgrade", "websocket")]),
                false,
            ),
            (down("GET", b"http://x/", &plain), false),
            // A body without Content-Length goes chunked: the built way.
            (down("POST", b"/", &plain), true),
        ] {
            assert!(edits().direct_head(&req, has_body).is_none(), "{req:?}");
        }
        let mut done = edits();
        done.sanitize = Sanitize::Done;
        assert!(done
            .direct_head(&down("GET", b"/", &plain), false)
            .is_none());
    }
}
