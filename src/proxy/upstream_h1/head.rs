//! An upstream's response head, parsed once into the header the client
//! session writes, with its framing and keep-alive settled on the way
//! (RFC 9112 §6.3, §9.3): no second header map, no copy of the values
//! (they are slices of the read buffer).
//!
//! Strict where a lenient reading would let one response run into the
//! next on a pooled connection: conflicting or malformed `Content-Length`
//! is an error; `Transfer-Encoding` wins over `Content-Length` (which is
//! dropped, RFC 9112 §6.3); a coding other than a final `chunked` is read
//! until the upstream closes. An obsolete line folding is replaced by
//! spaces (RFC 9112 §5.2), not forwarded.

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{StatusCode, Version};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType::InvalidHTTPHeader, OrErr, Result};
use std::mem::MaybeUninit;
use std::time::Duration;

use crate::proxy::header_names;
use crate::proxy::hop_by_hop::{self, list_elements};
use crate::proxy::spares::{self, Spares};

/// Most header lines in a response (as Pingora).
const MAX_HEADERS: usize = 256;
/// The largest response head (Envoy's default is 60 KiB); a bigger one is
/// an error (a 502), as nginx answers one past its `proxy_buffer_size`.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the body after a final response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// None (`HEAD`, `204`, `304`, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes (no length, a coding other than a final
    /// `chunked`, or a `101` upgrade's byte stream).
    UntilClose,
}

/// What the request said that decides how its response is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    pub head: bool,
    /// An HTTP/1.1 request with `Upgrade`.
    pub upgrade: bool,
    /// `Connection: close` was sent.
    pub close: bool,
}

/// A part of the head as (offset, length).
type Span = (usize, usize);

/// Field tables a thread keeps for its next heads (one per response in
/// progress is what it uses): a table made and freed per response was the
/// last allocation a proxied request made.
const SPARE_TABLES: usize = 32;
/// A table grown past this many fields is not kept.
const KEPT_FIELDS: usize = 64;

thread_local! {
    static SPARE_FIELDS: Spares<Vec<(Span, Span)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A parsed response head: its fields stay in the head's bytes, in the
/// upstream's order and spelling, until something asks for them as a
/// header map ([`Head::header`]). A response nothing edits goes to the
/// client from those bytes ([`Head::fields`]) and never has a map.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The head, status line to blank line.
    bytes: Bytes,
    /// A reason phrase other than the status's canonical one.
    reason: Option<Span>,
    /// Each relayed field's name and value: not the upstream connection's
    /// own (hop-by-hop, or named by its `Connection`), nor a
    /// `Content-Length` that `Transfer-Encoding` overrides.
    fields: Vec<(Span, Span)>,
    /// A `Content-Length` or `Transfer-Encoding` field was sent.
    framing_fields: bool,
    /// A value was folded over lines (obs-fold): only the map unfolds it.
    folded: bool,
    pub framing: Framing,
    /// A `101` to an upgrade request: both ways are byte streams now.
    pub upgraded: bool,
    /// The upstream lets the connection carry another request.
    pub keepalive: bool,
    /// How long it keeps an idle connection (`Keep-Alive: timeout=N`).
    pub idle: Option<Duration>,
}

impl Drop for Head {
    fn drop(&mut self) {
        let mut fields = std::mem::take(&mut self.fields);
        if fields.capacity() <= KEPT_FIELDS {
            fields.clear();
            spares::give(&SPARE_FIELDS, fields, SPARE_TABLES);
        }
    }
}

impl Head {
    /// A `1xx` other than `101`: another head follows.
    pub fn interim(&self) -> bool {
        self.status.is_informational() && !self.upgraded && self.status != 101
    }

    /// The reason phrase the client is sent: the upstream's, or else the
    /// status's canonical one.
    pub fn reason(&self) -> Option<&[u8]> {
        match self.reason {
            Some((at, n)) => Some(&self.bytes[at..at + n]),
            None => self.status.canonical_reason().map(str::as_bytes),
        }
    }

    /// The fields relayed, as the upstream sent them, in its order;
    /// `None` when one was folded over lines and must be unfolded first.
    pub fn fields(&self) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
        (!self.folded).then(|| {
            self.fields
                .iter()
                .map(|&((n, nl), (v, vl))| (&self.bytes[n..n + nl], &self.bytes[v..v + vl]))
        })
    }

    /// The upstream sent `Content-Length` or `Transfer-Encoding`.
    pub fn has_framing_fields(&self) -> bool {
        self.framing_fields
    }

    /// The head as a header map, for what reads or edits it: the values
    /// are slices of the head (no copy), a folded one unfolded.
    pub fn header(&self) -> Result<Box<ResponseHeader>> {
        let mut headers = http::HeaderMap::with_capacity(self.fields.len() + 4);
        for &((n, nl), (v, vl)) in &self.fields {
            let name = header_names::parse(&self.bytes[n..n + nl])
                .or_err(InvalidHTTPHeader, "invalid response header name")?;
            headers.append(name, value_of(self.bytes.slice(v..v + vl))?);
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = self.status;
        parts.version = self.version;
        parts.headers = headers;
        let mut header = Box::new(ResponseHeader::from(parts));
        if let Some((at, n)) = self.reason {
            let reason = std::str::from_utf8(&self.bytes[at..at + n])
                .or_err(InvalidHTTPHeader, "invalid response reason phrase")?;
            header.set_reason_phrase(Some(reason))?;
        }
        Ok(header)
    }
}

/// The head at the front of `buf`, split off it (`None`: not all there
/// yet, `buf` untouched); `Err` when it is malformed or too big.
pub fn parse(buf: &mut BytesMut, asked: Asked) -> Result<Option<Head>> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut strict = httparse::Response::new(&mut []);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let mut parsed = config.parse_response_with_uninit_headers(&mut strict, buf, &mut slots);
    // A value folded over lines (obs-fold) fails that parse and is read
    // by a second one: the common head is not searched for line breaks.
    let mut folded_slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut lenient = httparse::Response::new(&mut []);
    let folded = parsed.is_err();
    if folded {
        config.allow_obsolete_multiline_headers_in_responses(true);
        parsed = config.parse_response_with_uninit_headers(&mut lenient, buf, &mut folded_slots);
    }
    let resp = if folded { &lenient } else { &strict };
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => {
            return Error::e_explain(
                InvalidHTTPHeader,
                format!("response header larger than {MAX_HEAD} bytes"),
            )
        }
        Err(e) => {
            return Err(Error::because(
                InvalidHTTPHeader,
                "malformed response header",
                e,
            ))
        }
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Error::explain(InvalidHTTPHeader, "invalid response status"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    // A slice of the head, or the empty reason httparse may give as its own.
    let reason = resp
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(|r| {
            let within = (r.as_ptr() as usize)
                .checked_sub(base)
                .filter(|at| at + r.len() <= len);
            within.map_or((0, 0), |at| (at, r.len()))
        });
    // A 101's Connection and Upgrade are the switch; any other head's
    // hop-by-hop fields are the upstream connection's and stay here.
    let relays_hop = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut fields = spares::take(&SPARE_FIELDS).unwrap_or_default();
    fields.reserve(resp.headers.len());
    let mut te_chunked: Option<bool> = None;
    let mut length: Option<u64> = None;
    let mut lengths_ok = true;
    let mut conn = ConnectionTokens::default();
    let mut idle = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // Told apart by length first: most names are none of these.
        if header_names::is(name, "content-length") {
            lengths_ok &= merge_length(&mut length, h.value);
        } else if header_names::is(name, "transfer-encoding") {
            // The last one names the final coding.
            te_chunked = Some(last_token(h.value).eq_ignore_ascii_case(b"chunked"));
        } else if hop_by_hop::is_hop_by_hop_spelled(name) {
            if header_names::is(name, "connection") {
                conn.add(h.value);
            } else if header_names::is(name, "keep-alive") {
                idle = keep_alive_timeout(h.value).or(idle);
            }
            if !relays_hop {
                continue;
            }
        }
        fields.push((span(name), span(h.value)));
    }
    let framing_fields = length.is_some() || !lengths_ok || te_chunked.is_some();
    if conn.nominates && !relays_hop {
        // What the upstream's `Connection` names is its connection's too
        // (RFC 9110 §7.6.1); rare, so searched only when named.
        let named = |name: &[u8]| {
            resp.headers
                .iter()
                .filter(|h| header_names::is(h.name.as_bytes(), "connection"))
                .flat_map(|h| list_elements(h.value))
                .any(|t| t.eq_ignore_ascii_case(name))
        };
        fields.retain(|&((n, nl), _)| {
            let name = &buf[n..n + nl];
            !(hop_by_hop::may_drop_nominated(name) && named(name))
        });
    }

    if te_chunked.is_some() {
        // `Transfer-Encoding` overrides `Content-Length`, which is not
        // relayed (RFC 9112 §6.3), whether or not a body follows.
        fields.retain(|&((n, nl), _)| !header_names::is(&buf[n..n + nl], "content-length"));
    }

    let upgraded = status == 101 && asked.upgrade && version == Version::HTTP_11;
    let framing = if upgraded {
        Framing::UntilClose
    } else if status.is_informational() || asked.head || matches!(status.as_u16(), 204 | 304) {
        Framing::Empty
    } else if let Some(chunked) = te_chunked {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if !lengths_ok {
        return Error::e_explain(InvalidHTTPHeader, "invalid or conflicting Content-Length");
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let keepalive = !upgraded
        && framing != Framing::UntilClose
        && !asked.close
        && (version != Version::HTTP_10 || te_chunked.is_none())
        && !conn.close
        && (conn.keep_alive || version == Version::HTTP_11);
    let bytes = buf.split_to(len).freeze();
    Ok(Some(Head {
        status,
        version,
        bytes,
        reason,
        fields,
        framing_fields,
        folded,
        framing,
        upgraded,
        keepalive,
        idle,
    }))
}

/// A header value, a slice of the head (no copy); a folded value
/// (obs-fold) has its line breaks replaced by spaces.
fn value_of(v: Bytes) -> Result<HeaderValue> {
    let value = if v.iter().any(|&b| b == b'\r' || b == b'\n') {
        let unfolded: Vec<u8> = v
            .iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
            .collect();
        HeaderValue::from_bytes(&unfolded)
    } else {
        HeaderValue::from_maybe_shared(v)
    };
    value.or_err(InvalidHTTPHeader, "invalid response header value")
}

/// Folds one `Content-Length` line into `length`: `false` when it is not
/// digits, or disagrees with the others (identical repeats, on several
/// lines or comma-separated, are one length, RFC 9110 §8.6).
fn merge_length(length: &mut Option<u64>, v: &[u8]) -> bool {
    for item in v.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match *length {
            Some(l) if l != n => return false,
            _ => *length = Some(n),
        }
    }
    true
}

/// The last comma-separated token of a list.
fn last_token(v: &[u8]) -> &[u8] {
    v.rsplit(|&b| b == b',').next().unwrap_or(v).trim_ascii()
}

/// `close` and `keep-alive` in the `Connection` header lines, and
/// whether they name a field.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    nominates: bool,
}

impl ConnectionTokens {
    fn add(&mut self, v: &[u8]) {
        for t in list_elements(v) {
            let close = t.eq_ignore_ascii_case(b"close");
            let keep_alive = t.eq_ignore_ascii_case(b"keep-alive");
            self.close |= close;
            self.keep_alive |= keep_alive;
            self.nominates |= !close && !keep_alive && !hop_by_hop::is_hop_by_hop_spelled(t);
        }
    }
}

/// `timeout=N` of a `Keep-Alive` header.
fn keep_alive_timeout(v: &[u8]) -> Option<Duration> {
    list_elements(v).find_map(|param| {
        let (k, n) = std::str::from_utf8(param).ok()?.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("timeout"))
            .then(|| n.trim().parse().ok().map(Duration::from_secs))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str, asked: Asked) -> Result<Option<Head>> {
        parse(&mut BytesMut::from(wire.as_bytes()), asked)
    }

    fn ok(wire: &str) -> Head {
        head(wire, Asked::default()).unwrap().unwrap()
    }

    #[test]
    fn a_heads_field_table_is_reused_by_the_next_empty_unless_it_grew_big() {
        let spare = || spares::count(&SPARE_FIELDS);
        let before = spare();
        drop(ok("HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"));
        assert_eq!(spare(), before + 1);
        // The next head takes it, and sees only its own fields.
        let h = ok("HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n");
        assert_eq!(spare(), before);
        let fields: Vec<_> = h.fields().unwrap().collect();
        assert_eq!(fields, [(&b"X-B"[..], &b"2"[..])]);
        drop(h);
        // A head of many fields grew its table past what is kept.
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let h = ok(&format!(
            "HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n"
        ));
        assert_eq!(h.fields().unwrap().count(), 101);
        let before = spare();
        drop(h);
        assert_eq!(spare(), before);
    }

    #[test]
    fn a_plain_response_keeps_status_reason_headers_and_length() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Made\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"[..],
        );
        let h = parse(&mut buf, Asked::default()).unwrap().unwrap();
        assert_eq!(&buf[..], b"hello", "the head is split off, the body stays");
        let header = h.header().unwrap();
        assert_eq!(header.status, 201);
        assert_eq!(header.get_reason_phrase(), Some("Made"));
        assert_eq!(h.reason(), Some(&b"Made"[..]));
        assert_eq!(h.framing, Framing::Length(5));
        let xa: Vec<_> = header.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert!(h.keepalive);
        let wire = b"HTTP/1.1 200 OK\r\nContent-Le";
        let mut partial = BytesMut::from(&wire[..]);
        assert!(parse(&mut partial, Asked::default()).unwrap().is_none());
        assert_eq!(&partial[..], wire, "a partial head stays in the buffer");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |wire: &str, asked| head(wire, asked).unwrap().unwrap().framing;
        let get = Asked::default();
        let head_req = Asked { head: true, ..get };
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_req),
            Framing::Empty
        );
        assert_eq!(f("HTTP/1.1 204 No\r\n\r\n", get), Framing::Empty);
        assert_eq!(
            f("HTTP/1.1 304 NM\r\nContent-Length: 9\r\n\r\n", get),
            Framing::Empty
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", get), Framing::UntilClose);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", get),
            Framing::Empty
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\ncontent-length: 7\r\n\r\n",
                get
            ),
            Framing::Length(7)
        );
        // Transfer-Encoding wins, and Content-Length is not forwarded.
        let h = ok("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.header().unwrap().headers.contains_key("content-length"));
        let names: Vec<_> = h.fields().unwrap().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Transfer-Encoding"[..]]);
        assert!(h.has_framing_fields());
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                get
            ),
            Framing::UntilClose
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                get
            ),
            Framing::Chunked
        );
    }

    #[test]
    fn a_response_that_could_desync_the_connection_is_an_error() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 1\r\n\rX\r\n\r\n",
        ] {
            assert!(head(bad, Asked::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_head_is_bounded_whether_it_came_whole_or_not() {
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(head(&big, Asked::default()).is_err(), "complete");
        assert!(
            head(&big[..MAX_HEAD + 10], Asked::default()).is_err(),
            "partial"
        );
        let fits = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - 100)
        );
        assert!(head(&fits, Asked::default()).unwrap().is_some());
    }

    #[test]
    fn keep_alive_follows_version_connection_and_framing() {
        let ka = |wire: &str, asked| head(wire, asked).unwrap().unwrap().keepalive;
        let get = Asked::default();
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", get));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 1\r\n\r\n",
            get
        ));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n",
            get
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", get));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            get
        ));
        assert!(!ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            get
        ));
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n", get), "close-delimited");
        let close = Asked { close: true, ..get };
        assert!(!ka("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", close));
        let h =
            ok("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(h.idle, Some(Duration::from_secs(5)));
    }

    #[test]
    fn upgrades_and_interim_answers() {
        let up = Asked {
            upgrade: true,
            ..Asked::default()
        };
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            up,
        )
        .unwrap()
        .unwrap();
        assert!(h.upgraded && !h.keepalive && !h.interim());
        assert_eq!(h.framing, Framing::UntilClose);
        // A 101 to a request that asked for none is no upgrade.
        let h = ok("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(!h.upgraded && !h.interim());
        let h = ok("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert!(h.interim());
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn a_folded_value_is_unfolded_and_values_are_not_copied() {
        let h = ok("HTTP/1.1 200 OK\r\nX-F: a\r\n b\r\nContent-Length: 0\r\n\r\n");
        let header = h.header().unwrap();
        let v = header.headers["x-f"].as_bytes();
        assert!(!v.contains(&b'\r') && !v.contains(&b'\n'), "{v:?}");
        assert!(v.starts_with(b"a") && v.ends_with(b"b"));
        assert!(h.fields().is_none(), "a folded head needs the map");
    }

    #[test]
    fn fields_are_the_upstreams_in_its_order_and_spelling() {
        let h = ok(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-MiXed: v\r\nset-cookie: b=2\r\n\
                    Content-Length: 0\r\n\r\n",
        );
        let fields: Vec<_> = h.fields().unwrap().collect();
        assert_eq!(
            fields,
            [
                (&b"Set-Cookie"[..], &b"a=1"[..]),
                (b"X-MiXed", b"v"),
                (b"set-cookie", b"b=2"),
                (b"Content-Length", b"0"),
            ]
        );
        assert!(h.has_framing_fields());
        assert_eq!(h.reason(), Some(&b"OK"[..]));
        // A reason other than the canonical one, an empty one, none known.
        assert_eq!(ok("HTTP/1.1 200 Fine\r\n\r\n").reason(), Some(&b"Fine"[..]));
        assert_eq!(ok("HTTP/1.1 200 \r\n\r\n").reason(), Some(&b""[..]));
        assert_eq!(ok("HTTP/1.1 299 \r\n\r\n").reason(), Some(&b""[..]));
        // Lines ended by a bare line feed are not folded ones.
        let h = ok("HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 0\n\n");
        assert_eq!(h.fields().unwrap().count(), 2);
        let h = ok("HTTP/1.0 200 OK\r\n\r\n");
        assert!(!h.has_framing_fields());
        assert_eq!(h.version, Version::HTTP_10);
    }

    #[test]
    fn the_upstream_connections_own_fields_are_not_relayed_but_on_a_101() {
        let names = |h: &Head| -> Vec<String> {
            let from_bytes: Vec<String> = h
                .fields()
                .unwrap()
                .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
                .collect();
            let header = h.header().unwrap();
            let from_map: Vec<&str> = header.headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(from_bytes, from_map, "both ways leave out the same");
            from_bytes
        };
        let h = ok(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal, content-length\r\n\
                    Keep-Alive: timeout=7\r\nUpgrade: h2,h2c\r\nX-Internal: secret\r\n\
                    Proxy-Authenticate: Basic\r\nTrailer: X-Sum\r\nX-Kept: 1\r\n\
                    Content-Length: 2\r\n\r\n",
        );
        // Framing fields stay, even named by `Connection`.
        assert_eq!(names(&h), ["x-kept", "content-length"]);
        // What they said still counts for the upstream connection.
        assert!(h.keepalive);
        assert_eq!(h.idle, Some(Duration::from_secs(7)));
        assert_eq!(h.framing, Framing::Length(2));
        // A second `Connection` line names a field too; a `close` is not one.
        let h = ok(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: close\r\nConnection: x-a\r\n\
                    Transfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(names(&h), ["transfer-encoding"]);
        assert!(!h.keepalive);
        // A 101's `Connection` and `Upgrade` are the switch.
        let up = Asked {
            upgrade: true,
            ..Asked::default()
        };
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            up,
        )
        .unwrap()
        .unwrap();
        assert_eq!(names(&h), ["connection", "upgrade"]);
    }

    #[test]
    fn every_field_the_parse_takes_the_header_map_takes() {
        // What goes to the client from the upstream's bytes is what the
        // map would have taken: no name or value byte passes one and not
        // the other.
        let mut taken = Vec::new();
        for b in 0..=255u8 {
            for (name, value) in [
                (vec![b'x', b], vec![b'v']),
                (b"x".to_vec(), vec![b'v', b, b'v']),
            ] {
                let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
                wire.extend_from_slice(&name);
                wire.extend_from_slice(b": ");
                wire.extend_from_slice(&value);
                wire.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
                if let Ok(Some(h)) = parse(&mut BytesMut::from(&wire[..]), Asked::default()) {
                    if h.fields().is_some() {
                        assert!(h.header().is_ok(), "byte {b:#x} in {name:?}: {value:?}");
                        taken.push(b);
                    }
                }
            }
        }
        // Tokens, tabs, obs-text: the parse took them, so they were checked.
        for b in [b'!', b'a', b'_', b'\t', 0x80, 0xff] {
            assert!(taken.contains(&b), "byte {b:#x} never taken");
        }
        // And a control byte, in neither place.
        assert!(!taken.contains(&0x01));
    }
}
