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
use http::header::HeaderValue;
use pingora::http::RequestHeader;

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

/// The [`RequestHeader`] of a plain head (`head`: its bytes), built as
/// pingora-core builds it: the client's header case kept, values shared
/// with the read buffer. `None` if a part is not what `http` takes; the
/// head then goes to pingora-core, which refuses it its own way.
pub fn build(head: &Bytes, spans: &Spans) -> Option<RequestHeader> {
    let part = |(at, len): Span| head.slice(at..at + len);
    let method = std::str::from_utf8(&head[spans.method.0..][..spans.method.1]).ok()?;
    if method == "CONNECT" {
        return None;
    }
    let target = &head[spans.target.0..][..spans.target.1];
    let mut req = RequestHeader::build(method, target, Some(spans.count)).ok()?;
    req.set_version(http::Version::HTTP_11);
    for &(name, value) in &spans.fields[..spans.count] {
        let value = HeaderValue::from_maybe_shared(part(value)).ok()?;
        req.append_header(part(name), value).ok()?;
    }
    Some(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(raw: &str) -> Option<RequestHeader> {
        let mut spans = Spans::default();
        match parse(raw.as_bytes(), &mut spans) {
            Parsed::Plain => {
                assert_eq!(spans.len, raw.len());
                build(&Bytes::copy_from_slice(raw.as_bytes()), &spans)
            }
            _ => None,
        }
    }

    #[test]
    fn a_plain_get_is_built_as_pingora_builds_it() {
        let req = plain(
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: v\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n",
        )
        .expect("plain");
        assert_eq!(req.method, http::Method::GET);
        assert_eq!(req.raw_path(), b"/a?b=1");
        assert_eq!(req.version, http::Version::HTTP_11);
        assert_eq!(req.headers.get("host").unwrap(), "x");
        let dups: Vec<_> = req.headers.get_all("x-dup").iter().collect();
        assert_eq!(dups, ["1", "2"]);
        let case: Vec<_> = req
            .case_header_iter()
            .map(|(n, _)| n.as_slice().to_vec())
            .collect();
        assert_eq!(case[1], b"X-Mixed-Case");
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
