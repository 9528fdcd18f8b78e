//! What the core engine does to a request header on its way upstream that
//! pingora-proxy does for `ProxyHttp` (`proxy_common.rs`, 0.9.1, with its
//! default `HttpUpstreamRequestPolicy`): hop-by-hop headers and the ones
//! the client's `Connection` header names are not forwarded, a WebSocket
//! upgrade is forwarded in normalized form and any other upgrade not at
//! all, `Host` and an absolute-form target agree, and a body without
//! `Content-Length` goes chunked. pingora-proxy keeps these `pub(crate)`,
//! so they are ported here; the header edits work on the `HeaderMap` that
//! `header_edit` already takes apart, so they cost no extra rebuild.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::authority::{
    raw_target_authority, validate_request_authority, RawTargetAuthority,
};
use pingora::{Error, ErrorType::InvalidHTTPHeader, OrErr, Result};

use super::header_names::is;

/// Connection-header tokens processed at most (Envoy's defence; a request
/// naming more is refused rather than parsed at length).
const MAX_CONNECTION_NOMINATIONS: usize = 10;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The hop-by-hop headers RFC 9110 7.6.1 and common practice name,
/// pre-parsed: removing by a `&str` parses the name again each time.
fn hop_by_hop() -> [&'static HeaderName; 10] {
    [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::CONNECTION,
        &header::UPGRADE,
        &HTTP2_SETTINGS,
    ]
}

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop().contains(&name)
}

/// [`hop_by_hop`]'s names as text.
#[cfg(test)]
const HOP_BY_HOP_NAMES: [&str; 10] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "connection",
    "upgrade",
    "http2-settings",
];

/// [`is_hop_by_hop`] for a name as a peer spelled it (any case), for the
/// heads written from the peers' own bytes: told apart by length, so
/// most names are not read at all.
#[inline]
pub fn is_hop_by_hop_spelled(name: &[u8]) -> bool {
    let known = match name.len() {
        2 => "te",
        7 => return is(name, "upgrade") || is(name, "trailer"),
        10 => return is(name, "connection") || is(name, "keep-alive"),
        14 => "http2-settings",
        16 => "proxy-connection",
        17 => "transfer-encoding",
        18 => "proxy-authenticate",
        19 => "proxy-authorization",
        _ => return false,
    };
    name.eq_ignore_ascii_case(known.as_bytes())
}

/// Whether a response field describes the upstream's connection rather
/// than the message, and so is not relayed (but on a `101`, whose
/// `Connection` and `Upgrade` are the switch itself): the hop-by-hop
/// names but `Transfer-Encoding`, which declares the body's framing the
/// client is sent.
#[inline]
pub fn is_connections_own(name: &[u8]) -> bool {
    is_hop_by_hop_spelled(name) && !is(name, "transfer-encoding")
}

/// Whether a response field named by the upstream's `Connection` may be
/// left out: any but the framing fields, whose removal would have the
/// client read the body differently from how it was read.
pub fn may_drop_nominated(name: &[u8]) -> bool {
    !is(name, "content-length") && !is(name, "transfer-encoding")
}

/// Strips from a response header map what is the upstream connection's
/// ([`is_connections_own`]) and the fields its `Connection` names, as the
/// core engine's upstream client leaves them out when it parses: for
/// responses read by pingora-proxy. A `101` keeps them.
pub fn strip_response(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    // One pass over the names for the hop-by-hop ones present (each name
    // comes once), rather than a lookup of every hop-by-hop name.
    let mut present: [Option<&'static HeaderName>; 10] = [None; 10];
    let mut n = 0;
    for key in resp.headers.keys() {
        if let Some(h) = hop_by_hop().into_iter().find(|h| *h == key) {
            if *h != header::TRANSFER_ENCODING {
                present[n] = Some(h);
                n += 1;
            }
        }
    }
    if present[..n].contains(&Some(&header::CONNECTION)) {
        // Allocates only when `Connection` names a field (rare).
        let named: Vec<HeaderName> = resp
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| list_elements(v.as_bytes()))
            .filter(|t| may_drop_nominated(t) && !is_hop_by_hop_spelled(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in &named {
            resp.remove_header(name);
        }
    }
    for name in present[..n].iter().flatten() {
        resp.remove_header(*name);
    }
}

/// A `tchar` (RFC 9110 5.6.2): what a `Connection` token may be made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The elements of a comma-separated header list (RFC 9110 §5.6.1),
/// trimmed; empty elements (`a, ,b`) are skipped, as the list syntax allows.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The headers the client's `Connection` header names, or an error for a
/// request that names too many, a malformed token, a pseudo-header or one
/// of the headers a proxy must not drop (`Host`, `X-Forwarded-*`).
fn nominated(
    headers: &HeaderMap,
) -> Result<([Option<HeaderName>; MAX_CONNECTION_NOMINATIONS], usize)> {
    let mut names: [Option<HeaderName>; MAX_CONNECTION_NOMINATIONS] = Default::default();
    let mut len = 0;
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| list_elements(v.as_bytes()));
    for (n, token) in tokens.enumerate() {
        if n + 1 >= MAX_CONNECTION_NOMINATIONS {
            return Error::e_explain(InvalidHTTPHeader, "too many Connection header nominations");
        }
        if token.starts_with(b":") || !token.iter().all(|&b| is_tchar(b)) {
            return Error::e_explain(
                InvalidHTTPHeader,
                "invalid token nominated by the Connection header",
            );
        }
        if is_keep_alive(token) {
            // What nearly every `Connection` says: a hop-by-hop header,
            // stripped anyway; no name to parse.
            continue;
        }
        let name = HeaderName::from_bytes(token).or_err(
            InvalidHTTPHeader,
            "invalid token nominated by the Connection header",
        )?;
        if matches!(
            name.as_str(),
            "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        ) {
            return Error::e_explain(
                InvalidHTTPHeader,
                "protected header cannot be nominated by the Connection header",
            );
        }
        names[len] = Some(name);
        len += 1;
    }
    Ok((names, len))
}

/// Whether `headers` carry any hop-by-hop header. Most requests carry none
/// (no `Connection` either, so nothing is nominated): one pass over the
/// names, no lookups; [`sanitize`] then has nothing to do.
pub fn any(headers: &HeaderMap) -> bool {
    headers.keys().any(is_hop_by_hop)
}

/// Whether [`sanitize`] only leaves the hop-by-hop headers out: no
/// `Upgrade` (a WebSocket upgrade is rewritten), and `Connection` names
/// nothing but `keep-alive`, itself hop-by-hop. What browsers send on
/// every HTTP/1.1 request.
pub fn only_drops(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .all(|v| list_elements(v.as_bytes()).all(is_keep_alive))
}

/// [`only_drops`] for one hop-by-hop field as the client spelled it:
/// stripping only leaves it out, unless it is an `Upgrade` or a
/// `Connection` naming anything but `keep-alive`.
pub fn only_dropped(name: &[u8], value: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(b"upgrade") {
        return false;
    }
    !name.eq_ignore_ascii_case(b"connection") || list_elements(value).all(is_keep_alive)
}

fn is_keep_alive(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"keep-alive")
}

/// Refuses, before any upstream is chosen or connected, a request whose
/// `Connection` header [`sanitize`] would refuse: a bad request must not
/// cost an upstream connection.
pub fn check(headers: &HeaderMap) -> Result<()> {
    if headers.contains_key(header::CONNECTION) {
        nominated(headers)?;
    }
    Ok(())
}

/// Strips what must not be forwarded (see the module doc). A WebSocket
/// upgrade from an HTTP/1.1 client keeps exactly `Connection: Upgrade` and
/// `Upgrade: websocket`; any other upgrade is not forwarded.
pub fn sanitize(headers: &mut HeaderMap, downstream_is_http11: bool) -> Result<()> {
    if !any(headers) {
        return Ok(());
    }
    let (names, len) = nominated(headers)?;
    let websocket = downstream_is_http11
        && headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    for name in names.into_iter().take(len).flatten() {
        headers.remove(&name);
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    Ok(())
}

/// After tollgate's edits: the target's authority follows `Host` (an
/// absolute-form target is rewritten to the host that was chosen), `Host`
/// is present whenever the request had an authority, the result is one
/// unambiguous authority, and a body without `Content-Length` is chunked.
pub fn finalize(req: &mut RequestHeader, downstream_had_host: bool, has_body: bool) -> Result<()> {
    // An origin-form target (`/path`, the usual case) has no authority to
    // reconcile: Pingora validated the client's `Host` on the way in, and
    // tollgate's edits only ever replace it with one instance address.
    let origin_form = req.uri.authority().is_none() && req.raw_path().first() == Some(&b'/');
    if !origin_form {
        reconcile_authority(req)?;
        let target_has_authority = raw_target_authority(req.raw_path()).authority().is_some();
        if downstream_had_host || req.uri.authority().is_some() || target_has_authority {
            set_host_from_authority(req)?;
        }
        validate_request_authority(req)?;
    }
    if has_body
        && !req.headers.contains_key(header::CONTENT_LENGTH)
        && !req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// `Host` from the URI or absolute-form authority; a single matching `Host`
/// is kept, without an authority an existing one is kept (or an empty one
/// added, as HTTP/1.1 requires).
fn set_host_from_authority(req: &mut RequestHeader) -> Result<()> {
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| raw_target_authority(req.raw_path()).authority());
    let Some(authority) = authority else {
        if req.headers.contains_key(header::HOST) {
            return Ok(());
        }
        return req.insert_header(header::HOST, "");
    };
    if authority.contains(&b'@') {
        return Error::e_explain(InvalidHTTPHeader, "userinfo in request authority");
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    if hosts.next().is_some_and(|h| h.as_bytes() == authority) && hosts.next().is_none() {
        return Ok(());
    }
    let host = HeaderValue::from_bytes(authority)
        .or_err(InvalidHTTPHeader, "invalid authority for Host header")?;
    req.insert_header(header::HOST, host)
}

/// Applies the chosen `Host` to the URI authority or absolute-form target;
/// an origin-form target (the usual case) is left alone.
fn reconcile_authority(req: &mut RequestHeader) -> Result<()> {
    let Some(host) = req.headers.get(header::HOST) else {
        return Ok(());
    };
    if host.as_bytes().contains(&b'@') {
        return Error::e_explain(InvalidHTTPHeader, "userinfo in Host header");
    }
    if let Some(authority) = req.uri.authority() {
        if !req.raw_path_is_utf8() {
            return Error::e_explain(
                InvalidHTTPHeader,
                "non-UTF-8 path cannot be reconciled with URI authority",
            );
        }
        if host.as_bytes() == authority.as_str().as_bytes() {
            return Ok(());
        }
        let authority = parse_authority(host)?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = Some(authority);
        parts.path_and_query = req.uri.path_and_query().cloned();
        let uri = http::Uri::from_parts(parts).map_err(|e| {
            Error::because(
                InvalidHTTPHeader,
                "failed to apply Host to URI authority",
                e,
            )
        })?;
        req.set_uri(uri);
        return Ok(());
    }
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None | RawTargetAuthority::AmbiguousAuthority => Ok(()),
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } => {
            if host.as_bytes() == authority {
                return Ok(());
            }
            parse_authority(host)?;
            let mut target =
                Vec::with_capacity(scheme.len() + 3 + host.len() + path_and_query.len());
            target.extend_from_slice(scheme);
            target.extend_from_slice(b"://");
            target.extend_from_slice(host.as_bytes());
            target.extend_from_slice(path_and_query);
            req.set_raw_path(&target)
        }
    }
}

fn parse_authority(host: &HeaderValue) -> Result<http::uri::Authority> {
    http::uri::Authority::try_from(host.as_bytes())
        .map_err(|e| Error::because(InvalidHTTPHeader, "invalid Host for authority", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_spelled_names_are_the_hop_by_hop_ones() {
        let names: Vec<_> = hop_by_hop().iter().map(|h| h.as_str()).collect();
        assert_eq!(names, HOP_BY_HOP_NAMES);
        for name in HOP_BY_HOP_NAMES {
            assert!(is_hop_by_hop_spelled(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop_spelled(name.to_uppercase().as_bytes()),
                "{name}"
            );
            let own = is_connections_own(name.as_bytes());
            assert_eq!(own, name != "transfer-encoding", "{name}");
        }
        for name in ["Keep-Alive", "TE", "Proxy-Authorization", "HTTP2-Settings"] {
            assert!(is_hop_by_hop_spelled(name.as_bytes()), "{name}");
        }
        for name in [
            "Host",
            "Keep-Alives",
            "T",
            "X-Upgrade",
            "",
            "ta",
            "upgradE-",
            "Connexion",
            "Content-Length",
            "proxy-authorizatio",
        ] {
            assert!(!is_hop_by_hop_spelled(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_responses_connection_fields_are_not_relayed_but_on_a_101() {
        let response = |status: u16| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            for (k, v) in [
                ("Connection", "keep-alive, X-Internal, Content-Length"),
                ("Keep-Alive", "timeout=5"),
                ("Upgrade", "h2,h2c"),
                ("X-Internal", "secret"),
                ("Proxy-Authenticate", "Basic"),
                ("Content-Length", "2"),
                ("Transfer-Encoding", "chunked"),
                ("X-Kept", "1"),
            ] {
                r.append_header(k, v).unwrap();
            }
            r
        };
        let mut ok = response(200);
        strip_response(&mut ok);
        let mut left: Vec<&str> = ok.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        // The framing fields stay, even when nominated.
        assert_eq!(left, ["content-length", "transfer-encoding", "x-kept"]);
        let mut wire = Vec::new();
        ok.header_to_h1_wire(&mut wire);
        assert!(!String::from_utf8_lossy(&wire).contains("X-Internal"));

        let mut switching = response(101);
        strip_response(&mut switching);
        assert_eq!(switching.headers.len(), 8);

        // However many it names, as the core engine's parse does.
        let mut many = ResponseHeader::build(200, None).unwrap();
        let names: Vec<String> = (0..12).map(|i| format!("x-n{i}")).collect();
        many.append_header("Connection", names.join(", ")).unwrap();
        for name in &names {
            many.append_header(name.clone(), "1").unwrap();
        }
        many.append_header("X-Kept", "1").unwrap();
        strip_response(&mut many);
        let left: Vec<&str> = many.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_are_stripped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        sanitize(&mut h, true).unwrap();
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn only_a_keep_alive_connection_leaves_stripping_to_dropping() {
        // The same answer field by field, as the client spelled them.
        let fieldwise = |fields: &[(&str, &str)]| {
            fields
                .iter()
                .all(|(n, v)| only_dropped(n.to_uppercase().as_bytes(), v.as_bytes()))
        };
        let browser = [("connection", "keep-alive"), ("keep-alive", "300")];
        assert!(only_drops(&headers(&browser)) && fieldwise(&browser));
        let te = [("te", "trailers")];
        assert!(only_drops(&headers(&te)) && fieldwise(&te));
        for other in [
            &[("connection", "keep-alive, X-Secret")][..],
            &[("connection", "close")],
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            &[("upgrade", "h2c")],
        ] {
            assert!(!only_drops(&headers(other)), "{other:?}");
            assert!(!fieldwise(other), "{other:?}");
        }
    }

    #[test]
    fn websocket_upgrades_are_normalized_and_others_dropped() {
        let mut ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", "k"),
        ]);
        sanitize(&mut ws, true).unwrap();
        assert_eq!(ws["connection"], "Upgrade");
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["sec-websocket-key"], "k");

        let mut h2c = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        sanitize(&mut h2c, true).unwrap();
        assert!(h2c.is_empty(), "{h2c:?}");

        // HTTP/1.0 has no upgrades.
        let mut old = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        sanitize(&mut old, false).unwrap();
        assert!(old.is_empty(), "{old:?}");
    }

    #[test]
    fn protected_malformed_or_too_many_nominations_are_refused() {
        for bad in [
            "x-forwarded-for",
            "Host",
            ":authority",
            "\"x-a\"",
            "a, b, c, d, e, f, g, h, i, j",
        ] {
            let mut h = headers(&[("connection", bad)]);
            assert!(sanitize(&mut h, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn absolute_form_targets_follow_the_chosen_host() {
        let mut req = RequestHeader::build("GET", b"http://client.example/a?b", None).unwrap();
        req.insert_header("host", "client.example").unwrap();
        req.insert_header("host", "10.0.0.1:8080").unwrap();
        finalize(&mut req, true, false).unwrap();
        assert_eq!(req.raw_path(), b"http://10.0.0.1:8080/a?b");
        assert_eq!(req.headers["host"], "10.0.0.1:8080");

        let mut origin = RequestHeader::build("POST", b"/x", None).unwrap();
        origin.insert_header("host", "a.example").unwrap();
        finalize(&mut origin, true, true).unwrap();
        assert_eq!(origin.raw_path(), b"/x");
        assert_eq!(origin.headers["transfer-encoding"], "chunked");
    }
}
