//! Which request heads the client codec serves itself, and their
//! [`RequestHeader`].
//!
//! A head is *plain* when nothing in it needs pingora-core's HTTP/1
//! session: HTTP/1.1, an origin-form target, one `Host` without userinfo,
//! no body (neither `Content-Length` nor `Transfer-Encoding`), no
//! `Upgrade`, no `Expect`, no `Connection` but `keep-alive`, at most
//! [`MAX_FIELDS`] fields. Everything else (bodies, upgrades, HTTP/1.0,
//! absolute-form and `CONNECT` targets, malformed heads) is handed to
//! pingora-core with the bytes already read, so its parser, its 400s and
//! its framing rules stay the one authority for them. A plain head is
//! read with httparse's strict defaults, as pingora-core reads it: what
//! passes here passes there, field for field.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Uri};
use pingora::http::RequestHeader;

use crate::proxy::header_names;

/// Fields a plain head may have; more goes to pingora-core (whose limit is
/// 256). The parse arrays live on the stack, so this is kept small.
pub const MAX_FIELDS: usize = 64;

/// A part of the head as (offset, length).
type Span = (usize, usize);

/// Where a plain head's parts are, found before its bytes are frozen (the
/// values become slices of them).
pub struct Spans {
    /// The head's length, blank line included.
    pub len: usize,
    method: Span,
    target: Span,
    fields: [(Span, Span); MAX_FIELDS],
    count: usize,
}

impl Default for Spans {
    fn default() -> Self {
        Self {
            len: 0,
            method: (0, 0),
            target: (0, 0),
            fields: [((0, 0), (0, 0)); MAX_FIELDS],
            count: 0,
        }
    }
}

/// What the bytes read so far start with.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A plain head, its parts in the [`Spans`] given.
    Plain,
    /// A head pingora-core must read (or bytes it must refuse).
    Other,
    /// Not a whole head yet.
    Partial,
}

/// Reads the head at the start of `buf`, a plain one's parts into `spans`.
pub fn parse(buf: &[u8], spans: &mut Spans) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Malformed, or more fields than a plain head has.
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if !target.starts_with('/') {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    spans.len = len;
    spans.method = span(method.as_bytes());
    spans.target = span(target.as_bytes());
    spans.count = req.headers.len();
    let mut hosts = 0;
    for (f, slot) in req.headers.iter().zip(spans.fields.iter_mut()) {
        if !plain_field(f.name.as_bytes(), f.value, &mut hosts) {
            return Parsed::Other;
        }
        *slot = (span(f.name.as_bytes()), span(f.value));
    }
    if hosts != 1 {
        return Parsed::Other;
    }
    Parsed::Plain
}

/// Whether a field leaves the head plain (see the module doc).
fn plain_field(name: &[u8], value: &[u8], hosts: &mut u32) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 if is(b"host") => {
            *hosts += 1;
            !value.contains(&b'@')
        }
        6 if is(b"expect") => false,
        7 if is(b"upgrade") => false,
        10 if is(b"connection") => value.trim_ascii().eq_ignore_ascii_case(b"keep-alive"),
        14 if is(b"content-length") => false,
        17 if is(b"transfer-encoding") => false,
        _ => true,
    }
}

/// The [`RequestHeader`] of a plain head (`head`: its bytes): the target
/// and values shared with the read buffer, without pingora's map of the
/// client's header case. That map (a second header map, filled field by
/// field) cost ~300 instructions a field; the client's case is kept in the
/// head's bytes instead, which the upstream head is written from
/// ([`Spans::as_sent`]), and the map is made ([`build_cased`]) only when
/// something edits the header. `None` if a part is not what `http` takes;
/// the head then goes to pingora-core, which refuses it its own way. With
/// it, whether a name has an underscore (`proxy.underscore_headers`): only
/// names that are not common ones can, and only those are searched.
/// `last` is the header refilled: the connection's last request's, so its
/// map's room is not made again for every request.
pub fn build(head: &Bytes, spans: &Spans, last: RequestHeader) -> Option<(RequestHeader, bool)> {
    let part = |(at, len): Span| head.slice(at..at + len);
    let method = Method::from_bytes(spans.method(head)).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    // As pingora-http's own parse of an origin-form target (a fragment is
    // dropped); only UTF-8 targets are plain.
    let target = PathAndQuery::from_maybe_shared(part(spans.target)).ok()?;
    let mut parts = http::request::Parts::from(last);
    parts.method = method;
    parts.uri = Uri::from(target);
    parts.version = http::Version::HTTP_11;
    parts.extensions.clear();
    let mut headers = std::mem::take(&mut parts.headers);
    // A map grown past a plain head's fields (a plugin's additions) is not kept.
    if headers.capacity() > 2 * MAX_FIELDS {
        headers = http::HeaderMap::new();
    }
    headers.clear();
    headers.try_reserve(spans.count).ok()?;
    let mut underscores = false;
    for &(name, value) in spans.fields() {
        let name = &head[name.0..][..name.1];
        let name = match header_names::common(name) {
            Some(known) => known,
            None => {
                underscores |= name.contains(&b'_');
                HeaderName::from_bytes(name).ok()?
            }
        };
        let value = HeaderValue::from_maybe_shared(part(value)).ok()?;
        headers.try_append(name, value).ok()?;
    }
    parts.headers = headers;
    Some((RequestHeader::from(parts), underscores))
}

/// A request header with nothing in it, for [`build`] to fill.
pub fn empty() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

/// The header [`build`] makes, as pingora-core builds it: with the map of
/// the client's header case, which pingora's writers and an edited
/// header's upstream head need.
pub fn build_cased(head: &Bytes, spans: &Spans) -> Option<RequestHeader> {
    let part = |(at, len): Span| head.slice(at..at + len);
    let method = std::str::from_utf8(spans.method(head)).ok()?;
    let mut req = RequestHeader::build(method, spans.target(head), Some(spans.count)).ok()?;
    req.set_version(http::Version::HTTP_11);
    for &(name, value) in spans.fields() {
        let value = HeaderValue::from_maybe_shared(part(value)).ok()?;
        req.append_header(part(name), value).ok()?;
    }
    Some(req)
}

impl Spans {
    fn fields(&self) -> &[(Span, Span)] {
        &self.fields[..self.count]
    }

    /// The method's bytes in `head`.
    fn method<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.method.0..][..self.method.1]
    }

    /// The request-target's bytes in `head`.
    fn target<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.target.0..][..self.target.1]
    }

    /// The head's fields as the client sent them (`head`: its bytes): in
    /// its order, each name in its case.
    pub fn as_sent<'a>(&'a self, head: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.fields()
            .iter()
            .map(move |&(n, v)| (&head[n.0..][..n.1], &head[v.0..][..v.1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Option<(Bytes, Box<Spans>)> {
        let mut spans = Box::<Spans>::default();
        match parse(raw.as_bytes(), &mut spans) {
            Parsed::Plain => {
                assert_eq!(spans.len, raw.len());
                Some((Bytes::copy_from_slice(raw.as_bytes()), spans))
            }
            _ => None,
        }
    }

    fn plain(raw: &str) -> Option<RequestHeader> {
        parsed(raw).and_then(|(head, spans)| build(&head, &spans, empty()).map(|(req, _)| req))
    }

    #[test]
    fn a_header_refilled_keeps_nothing_of_the_last_request() {
        let first =
            plain("POST /a?q=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nCookie: c\r\n\r\n")
                .expect("plain");
        let mut last = first;
        last.insert_header("x-added-by-a-plugin", "p").unwrap();
        last.extensions_mut().insert(7u32);
        let (head, spans) = parsed("GET /b HTTP/1.1\r\nHost: y\r\nAccept: */*\r\n\r\n").unwrap();
        let (req, _) = build(&head, &spans, last).expect("built");
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.uri, "/b");
        let fields: Vec<_> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(fields, [("host", &b"y"[..]), ("accept", b"*/*")]);
        assert!(req.extensions.get::<u32>().is_none());
        // As a header built from nothing.
        let fresh = plain("GET /b HTTP/1.1\r\nHost: y\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(req.headers, fresh.headers);
        assert_eq!(req.raw_path(), fresh.raw_path());
        // A map a plugin grew past a plain head's fields is not kept.
        let mut grown = req;
        for i in 0..4 * MAX_FIELDS {
            grown.append_header(format!("x-{i}"), "v").unwrap();
        }
        assert!(grown.headers.capacity() > 2 * MAX_FIELDS);
        let (req, _) = build(&head, &spans, grown).expect("built");
        assert!(
            req.headers.capacity() <= 2 * MAX_FIELDS,
            "{}",
            req.headers.capacity()
        );
        assert_eq!(req.headers, fresh.headers);
    }

    #[test]
    fn a_name_with_an_underscore_is_found_as_the_header_is_built() {
        let underscores = |raw: &str| {
            let (head, spans) = parsed(raw).expect("plain");
            build(&head, &spans, empty()).expect("built").1
        };
        assert!(!underscores(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Keep: 1\r\nAccept: */*\r\n\r\n"
        ));
        assert!(underscores(
            "GET / HTTP/1.1\r\nHost: x\r\nX_Consumer_Name: a\r\n\r\n"
        ));
        // A common name but for its underscore is not a common one.
        assert!(underscores(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded_For: 1.2.3.4\r\n\r\n"
        ));
        assert!(underscores(
            "GET / HTTP/1.1\r\nhost: x\r\nuser_agent: a\r\n\r\n"
        ));
    }

    #[test]
    fn a_plain_get_is_built_as_pingora_builds_it() {
        let raw =
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: v\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n";
        let req = plain(raw).expect("plain");
        assert_eq!(req.method, http::Method::GET);
        assert_eq!(req.raw_path(), b"/a?b=1");
        assert_eq!(req.version, http::Version::HTTP_11);
        assert_eq!(req.headers.get("host").unwrap(), "x");
        let dups: Vec<_> = req.headers.get_all("x-dup").iter().collect();
        assert_eq!(dups, ["1", "2"]);
        // The case is in the head's bytes, not in a map.
        assert!(!req.has_case());
        let (head, spans) = parsed(raw).unwrap();
        let sent: Vec<_> = spans.as_sent(&head).collect();
        assert_eq!(
            sent,
            [
                (&b"Host"[..], &b"x"[..]),
                (b"X-Mixed-Case", b"v"),
                (b"x-dup", b"1"),
                (b"X-Dup", b"2")
            ]
        );
        let cased = build_cased(&head, &spans).expect("cased");
        let case: Vec<_> = cased
            .case_header_iter()
            .map(|(n, _)| n.as_slice().to_vec())
            .collect();
        assert_eq!(case[1], b"X-Mixed-Case");
    }

    #[test]
    fn the_header_without_case_is_the_one_pingora_builds() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "HEAD /a/b?c=d&e HTTP/1.1\r\nhost: x\r\nAccept: */*\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a?q#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /%7Ea/{b}|c?x=[1] HTTP/1.1\r\nHost: x\r\n\r\n",
            "DELETE /x HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n",
            "PURGE /x HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /caf\u{e9}?q=\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (head, spans) = parsed(raw).expect(raw);
            let (ours, _) = build(&head, &spans, empty()).expect(raw);
            let theirs = build_cased(&head, &spans).expect(raw);
            assert_eq!(ours.method, theirs.method, "{raw:?}");
            assert_eq!(ours.uri, theirs.uri, "{raw:?}");
            assert_eq!(ours.raw_path(), theirs.raw_path(), "{raw:?}");
            assert_eq!(ours.version, theirs.version, "{raw:?}");
            assert_eq!(ours.headers, theirs.headers, "{raw:?}");
            assert!(theirs.has_case());
        }
    }

    #[test]
    fn a_target_that_is_not_utf8_is_left_to_pingora_core() {
        // pingora-core keeps such a target's bytes apart from its URI.
        let raw = b"GET /caf\xe9 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(raw, &mut Spans::default()), Parsed::Other);
        let utf8 = "GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(plain(utf8).unwrap().raw_path(), "/caf\u{e9}".as_bytes());
    }

    #[test]
    fn anything_else_goes_to_pingora() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        ] {
            assert!(plain(raw).is_none(), "{raw:?}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(plain(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).is_none());
        assert!(plain("GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n").is_some());
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &mut Spans::default()),
            Parsed::Partial
        );
    }
}
