//! Header edits on Pingora's request and response headers without its
//! per-insert setters.
//!
//! `insert_header` parses the name again (an allocation for a non-standard
//! name such as `x-request-id`), copies it into a second, case-preserving
//! map (another allocation) and grows both maps, which Pingora sizes to
//! exactly the headers it parsed: ~7,000 instructions for the four headers
//! tollgate adds to a request and its response, ~8% of the request. Taking
//! the header apart, reserving once and inserting pre-parsed names costs a
//! fraction of that. Pingora keeps no case for a header rebuilt from its
//! parts, so names go out in canonical case (`Content-Type`; non-standard
//! names lower-case), as Envoy and HAProxy send them; HTTP header names are
//! case-insensitive (RFC 9110, 5.1).

use http::request::Parts as ReqParts;
use http::response::Parts as RespParts;
use pingora::http::{RequestHeader, ResponseHeader};

/// Runs `edit` on `req`'s parts with room for `extra` more headers. The
/// request-target keeps its exact bytes (a non-UTF-8 or absolute-form
/// target does not round-trip through the URI) unless `edit` changed the
/// URI.
pub fn edit_request<T>(
    req: &mut RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut ReqParts) -> T,
) -> T {
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let taken = std::mem::replace(req, empty);
    let raw = (!taken.raw_path_is_utf8() || taken.uri.scheme().is_some())
        .then(|| taken.raw_path().to_vec());
    let mut parts = ReqParts::from(taken);
    let uri_before = raw.is_some().then(|| parts.uri.clone());
    parts.headers.reserve(extra);
    let out = edit(&mut parts);
    let keep_raw = uri_before.is_some_and(|u| u == parts.uri);
    *req = RequestHeader::from(parts);
    if let (true, Some(raw)) = (keep_raw, raw) {
        // The bytes were a valid target when Pingora parsed them.
        let _ = req.set_raw_path(&raw);
    }
    out
}

/// A new request built from `from`'s parts (one copy of its headers, not
/// the two a `clone` makes with Pingora's case map), edited by `edit` with
/// room for `extra` more headers; the request-target is kept as in
/// [`edit_request`]. The core engine builds its upstream request this way.
pub fn request_from<T>(
    from: &RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut ReqParts) -> T,
) -> (RequestHeader, T) {
    let raw =
        (!from.raw_path_is_utf8() || from.uri.scheme().is_some()).then(|| from.raw_path().to_vec());
    let mut parts = from.as_owned_parts();
    let uri_before = raw.is_some().then(|| parts.uri.clone());
    parts.headers.reserve(extra);
    let out = edit(&mut parts);
    let keep_raw = uri_before.is_some_and(|u| u == parts.uri);
    let mut req = RequestHeader::from(parts);
    if let (true, Some(raw)) = (keep_raw, raw) {
        // The bytes were a valid target when Pingora parsed them.
        let _ = req.set_raw_path(&raw);
    }
    (req, out)
}

/// Runs `edit` on `resp`'s parts with room for `extra` more headers; a
/// custom reason phrase is kept.
pub fn edit_response<T>(
    resp: &mut ResponseHeader,
    extra: usize,
    edit: impl FnOnce(&mut RespParts) -> T,
) -> T {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let taken = std::mem::replace(resp, empty);
    let reason = taken
        .get_reason_phrase()
        .filter(|r| Some(*r) != taken.status.canonical_reason())
        .map(str::to_string);
    let mut parts = RespParts::from(taken);
    parts.headers.reserve(extra);
    let out = edit(&mut parts);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn wire_req(r: &RequestHeader) -> String {
        let mut buf = Vec::new();
        r.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn request_edits_keep_every_header_and_the_target() {
        let mut r = RequestHeader::build("GET", b"/a%20b?q=1", None).unwrap();
        r.append_header("Host", "example.com").unwrap();
        r.append_header("X-Custom", "1").unwrap();
        r.append_header("x-custom", "2").unwrap();
        edit_request(&mut r, 1, |p| {
            p.headers.insert(
                HeaderName::from_static("x-request-id"),
                HeaderValue::from_static("abc"),
            );
        });
        assert_eq!(r.raw_path(), b"/a%20b?q=1");
        assert_eq!(r.method, "GET");
        let wire = wire_req(&r);
        assert!(wire.contains("Host: example.com\r\n"), "{wire}");
        assert!(wire.contains("x-custom: 1\r\nx-custom: 2\r\n"), "{wire}");
        assert!(wire.contains("x-request-id: abc\r\n"), "{wire}");
    }

    #[test]
    fn a_non_utf8_target_keeps_its_bytes_unless_the_uri_is_replaced() {
        let raw = b"/caf\xe9?x=1";
        let mut r = RequestHeader::build("GET", raw, None).unwrap();
        edit_request(&mut r, 0, |_| ());
        assert_eq!(r.raw_path(), raw);
        edit_request(&mut r, 0, |p| p.uri = "/new".parse().unwrap());
        assert_eq!(r.raw_path(), b"/new");
    }

    #[test]
    fn a_request_built_from_another_keeps_its_headers_and_target() {
        let mut r = RequestHeader::build("GET", b"http://h.example/caf\xe9", None).unwrap();
        r.append_header("Host", "h.example").unwrap();
        r.append_header("x-a", "1").unwrap();
        let (copy, n) = request_from(&r, 1, |p| {
            p.headers.insert(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("2"),
            );
            p.headers.len()
        });
        assert_eq!(n, 3);
        assert_eq!(copy.raw_path(), r.raw_path());
        assert_eq!(copy.headers["x-a"], "1");
        assert_eq!(copy.headers["x-b"], "2");
        assert!(r.headers.get("x-b").is_none(), "the original is untouched");
    }

    #[test]
    fn response_edits_keep_status_headers_and_a_custom_reason() {
        let mut r = ResponseHeader::build(201, None).unwrap();
        r.append_header("Content-Length", "0").unwrap();
        r.set_reason_phrase(Some("Made")).unwrap();
        edit_response(&mut r, 1, |p| {
            p.headers.insert(
                HeaderName::from_static("x-request-id"),
                HeaderValue::from_static("abc"),
            );
        });
        assert_eq!(r.status, 201);
        assert_eq!(r.get_reason_phrase(), Some("Made"));
        assert_eq!(r.headers["content-length"], "0");
        assert_eq!(r.headers["x-request-id"], "abc");
    }
}
