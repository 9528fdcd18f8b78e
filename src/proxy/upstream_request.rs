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
use super::forwarding::{forwarded_for, write_forwarded_for};
use super::gate::Gate;
use super::header_names::{
    spelled, write_line as line, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::request_id::RequestId;
use super::{header_edit, header_names, hop_by_hop};

/// What [`Gate::upstream_edits`] decided for one attempt.
#[derive(Clone)]
pub struct UpstreamEdits {
    sanitize: Sanitize,
    uri: Option<http::Uri>,
    /// A plugin's rewrite of the method (`RequestCtx::upstream_method`).
    method: Option<http::Method>,
    /// The TCP peer, appended to `X-Forwarded-For`.
    client: Option<IpAddr>,
    host: Option<HeaderValue>,
    id: Option<RequestId>,
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
        if let Some(method) = self.method {
            req.method = method;
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
            h.insert(X_REQUEST_ID.clone(), id.to_header());
        }
        if let Some(host) = self.host {
            h.insert(http::header::HOST, host);
        }
        Ok(())
    }
}

impl UpstreamEdits {
    /// The method the upstream is sent for the client's request `down`
    /// (what `RequestCtx::method_upstream` answers for the whole request).
    fn method_of<'a>(&'a self, down: &'a RequestHeader) -> &'a http::Method {
        self.method.as_ref().unwrap_or(&down.method)
    }

    /// The upstream request head written straight from the client's header
    /// in one pass: the request [`UpstreamEdits::apply`] and
    /// `hop_by_hop::finalize` would build, without building a second header
    /// map and then serializing it (~4,500 instructions a request). Only for
    /// the plain case, where framing has nothing to do and stripping only
    /// leaves hop-by-hop headers out (`hop_by_hop::only_drops`: a browser's
    /// `Connection: keep-alive`): an origin-form target, a body only with
    /// `Content-Length`; `None` otherwise, and the caller builds the header.
    ///
    /// Header names keep the client's case: `as_sent` is the unedited
    /// header's fields as the client's bytes have them (the core engine's
    /// codec), in its order; without it, the header's own map of the case.
    /// Ours are written as the built header writes them.
    ///
    /// The head is written at the end of `wire`; the result is the length
    /// of the body that follows (`Content-Length`, 0 for none).
    pub fn direct_head<'a>(
        &self,
        down: &RequestHeader,
        as_sent: Option<impl Iterator<Item = (&'a [u8], &'a [u8])>>,
        has_body: bool,
        wire: &mut Vec<u8>,
    ) -> Option<Result<u64>> {
        let origin_form = down.uri.scheme().is_none() && down.raw_path().first() == Some(&b'/');
        let body_len = has_body
            .then(|| super::framing::declared_length(down))
            .flatten();
        // The map's pass has hop-by-hop fields to leave out, which must be
        // all that stripping does; from the client's bytes, each is judged
        // as the pass meets it (a field that needs more ends the pass).
        let strip = as_sent.is_none() && hop_by_hop::any(&down.headers);
        if !origin_form
            || (as_sent.is_none() && !down.has_case())
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
        let start = wire.len();
        wire.reserve(512);
        wire.extend_from_slice(self.method_of(down).as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(target);
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        // The client's fields that ours replace (lengths first: most names
        // are told apart without reading them).
        let is = header_names::is;
        let mut client_xff = false;
        let mut replaced = |name: &[u8]| {
            if is(name, spelled::X_FORWARDED_FOR) {
                client_xff = true;
                return self.client.is_some();
            }
            is(name, spelled::X_FORWARDED_PROTO)
                || is(name, "expect")
                || (self.id.is_some() && is(name, spelled::X_REQUEST_ID))
                || (self.host.is_some() && is(name, "host"))
        };
        match as_sent {
            Some(fields) => {
                for (name, value) in fields {
                    if hop_by_hop::is_hop_by_hop_spelled(name) {
                        if !hop_by_hop::only_dropped(name, value) {
                            wire.truncate(start);
                            return None;
                        }
                    } else if !replaced(name) {
                        line(wire, name, value);
                    }
                }
            }
            None => {
                for ((_, value), (case, _)) in down.headers.iter().zip(down.case_header_iter()) {
                    let name = case.as_slice();
                    let dropped = strip && hop_by_hop::is_hop_by_hop_spelled(name);
                    if !dropped && !replaced(name) {
                        line(wire, name, value.as_bytes());
                    }
                }
            }
        }
        if let Some(host) = &self.host {
            line(wire, b"Host", host.as_bytes());
        }
        if let Some(ip) = self.client {
            // Written in place; the client's lines are looked up only when
            // it sent any (a first hop sends none).
            let earlier = client_xff.then(|| down.headers.get_all(&X_FORWARDED_FOR));
            let earlier = earlier.into_iter().flatten().map(HeaderValue::as_bytes);
            wire.extend_from_slice(spelled::X_FORWARDED_FOR.as_bytes());
            wire.extend_from_slice(b": ");
            write_forwarded_for(wire, earlier, ip);
            wire.extend_from_slice(b"\r\n");
        }
        line(
            wire,
            spelled::X_FORWARDED_PROTO.as_bytes(),
            self.scheme.as_bytes(),
        );
        if let Some(id) = &self.id {
            line(wire, spelled::X_REQUEST_ID.as_bytes(), id.as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        Some(Ok(body_len.unwrap_or(0)))
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
        if ctx.started.is_some() {
            ctx.upstream_sent = Some(Instant::now());
        }
        let mut edits = UpstreamEdits {
            sanitize,
            uri: None,
            method: ctx.upstream_method.clone(),
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
            method: None,
            client: Some("10.0.0.7".parse().unwrap()),
            host: None,
            id: Some(RequestId::Client(HeaderValue::from_static("id-1"))),
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

    /// What [`UpstreamEdits::direct_head`] wrote after an earlier head
    /// (as the connection's buffer holds one), and the body's length.
    struct DirectHead {
        wire: Vec<u8>,
        body_len: u64,
    }

    fn direct<'a>(
        edits: &UpstreamEdits,
        req: &RequestHeader,
        as_sent: Option<impl Iterator<Item = (&'a [u8], &'a [u8])>>,
        has_body: bool,
    ) -> Option<Result<DirectHead>> {
        let earlier = b"GET /earlier HTTP/1.1\r\n\r\n";
        let mut wire = earlier.to_vec();
        let Some(written) = edits.direct_head(req, as_sent, has_body, &mut wire) else {
            assert_eq!(
                wire, earlier,
                "nothing written when it is left to the built way"
            );
            return None;
        };
        let body_len = match written {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        assert!(wire.starts_with(earlier), "written at the end");
        let wire = wire[earlier.len()..].to_vec();
        Some(Ok(DirectHead { wire, body_len }))
    }

    /// No fields as sent: the header's own case map names them.
    const CASE_MAP: Option<std::iter::Empty<(&[u8], &[u8])>> = None;

    /// The fields as the codec hands them over: the client's bytes.
    fn sent<'a>(fields: &'a [(&str, &str)]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    /// The header as the codec builds it: no case map.
    fn no_case(req: &RequestHeader) -> RequestHeader {
        RequestHeader::from(req.as_owned_parts())
    }

    #[test]
    fn the_direct_head_keeps_the_client_order_of_its_fields() {
        let fields = [("Host", "x"), ("A", "1"), ("B", "2"), ("a", "3")];
        let req = no_case(&down("GET", b"/", &fields));
        let head = direct(&edits(), &req, Some(sent(&fields)), false)
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&head.wire);
        assert!(
            text.starts_with("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\na: 3\r\n"),
            "{text}"
        );
    }

    #[test]
    fn the_direct_head_is_the_request_the_built_way_sends() {
        let mut rewritten = edits();
        rewritten.uri = Some("/v2/items?q=1".parse().unwrap());
        rewritten.host = Some(HeaderValue::from_static("backend:8080"));
        rewritten.method = Some(http::Method::GET);
        let mut keep_id = edits();
        keep_id.id = None;
        type Request<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)]);
        let cases: [(Request, UpstreamEdits, bool); 5] = [
            (
                ("GET", b"/a", &[("Host", "x"), ("Accept", "*/*")]),
                edits(),
                false,
            ),
            (
                (
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
            // A HEAD a plugin sends upstream as a GET.
            (
                (
                    "HEAD",
                    b"/api/items?q=1",
                    &[("Host", "x"), ("X-Request-Id", "spoofed")],
                ),
                rewritten,
                false,
            ),
            (
                ("POST", b"/up", &[("Host", "x"), ("Content-Length", "5")]),
                edits(),
                true,
            ),
            // A browser's hop-by-hop headers, left out as they are met.
            (
                (
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
        for ((method, target, fields), edits, has_body) in cases {
            let req = down(method, target, fields);
            let want = built(&req, edits.clone(), has_body);
            // From the header's case map, and from the client's bytes
            // (the codec's header has no case map).
            let from_map = direct(&edits, &req, CASE_MAP, has_body);
            let from_bytes = direct(&edits, &no_case(&req), Some(sent(fields)), has_body);
            for direct in [from_map, from_bytes] {
                let direct = direct.expect("a plain request").unwrap();
                assert_eq!(
                    parsed(&direct.wire),
                    parsed(&want),
                    "{}\n---\n{}",
                    String::from_utf8_lossy(&direct.wire),
                    String::from_utf8_lossy(&want)
                );
                assert_eq!(direct.body_len, if has_body { 5 } else { 0 });
                let sent_as = edits.method.as_ref().map_or(method, |m| m.as_str());
                assert_eq!(parsed(&direct.wire).0, sent_as);
                let wire = String::from_utf8_lossy(&direct.wire).to_ascii_lowercase();
                for gone in ["connection", "keep-alive", "te:", "proxy-"] {
                    assert!(!wire.contains(gone), "{gone}: {wire}");
                }
            }
        }
    }

    #[test]
    fn the_direct_head_keeps_the_clients_header_case_and_exact_target() {
        let req = down("GET", b"/caf\xe9?x=%41", &[("HoSt", "x"), ("X-MiXed", "v")]);
        let head = direct(&edits(), &req, CASE_MAP, false).unwrap().unwrap();
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
            assert!(
                direct(&edits(), &req, CASE_MAP, has_body).is_none(),
                "{req:?}"
            );
            if req.raw_path().first() != Some(&b'/') {
                // The codec serves only origin-form targets.
                continue;
            }
            let sent = req
                .case_header_iter()
                .map(|(n, v)| (n.as_slice(), v.as_bytes()));
            assert!(
                (direct(&edits(), &no_case(&req), Some(sent), has_body)).is_none(),
                "{req:?}"
            );
        }
        let mut done = edits();
        done.sanitize = Sanitize::Done;
        assert!(direct(&done, &down("GET", b"/", &plain), CASE_MAP, false).is_none());
        // Neither the client's bytes nor a case map: the built way.
        let bare = no_case(&down("GET", b"/", &plain));
        assert!(direct(&edits(), &bare, CASE_MAP, false).is_none());
    }
}
