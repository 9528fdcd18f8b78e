//! Request framing and `Host` hygiene, checked before a route is chosen,
//! on both engines: what a proxy must not forward (RFC 9112 §3.2, §6;
//! RFC 9110 §8.6). Each refusal is what nginx answers for the same bytes.
//!
//! - An HTTP/1.1 request without `Host`, or with two, is 400: an upstream
//!   would otherwise get a request with no `Host` at all (an absolute-form
//!   target included), or pick one of two.
//! - More than one `Content-Length` value (two lines, or `5, 5`) is 400,
//!   as nginx answers, rather than forwarded for the upstream to pick from.
//! - `Transfer-Encoding` with `Content-Length`, or from an HTTP/1.0
//!   client, is 400; any coding but a lone `chunked` is 501: a gzip coding
//!   would reach the upstream as plain chunked, silently changed.

use http::header;
use http::Version;
use pingora::http::RequestHeader;

use super::request_scan::RequestScan;

/// A refusal: the status and the reason the client is told.
pub type Refusal = (u16, &'static str);

/// Refuses what must not be forwarded (see the module doc), from what
/// the one pass over the header found.
pub fn check(version: Version, scan: &RequestScan) -> Result<(), Refusal> {
    if version == Version::HTTP_11 {
        match scan.hosts {
            0 => return Err((400, "missing Host header")),
            1 => {}
            _ => return Err((400, "more than one Host header")),
        }
    }
    if scan.lengths > 1 || (scan.lengths == 1 && !scan.length_is_digits) {
        return Err((400, "invalid or duplicate Content-Length"));
    }
    if scan.codings > 0 {
        if scan.lengths > 0 {
            return Err((400, "both Content-Length and Transfer-Encoding"));
        }
        if version < Version::HTTP_11 {
            return Err((400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        if scan.codings > 1 || !scan.chunked {
            return Err((501, "unsupported transfer coding"));
        }
    }
    Ok(())
}

/// The body length the request declares, if it has a valid one.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    parse_length(req.headers.get(header::CONTENT_LENGTH)?)
}

/// A `Content-Length` value as a number (`None`: not one). Whether it is
/// digits only is [`check`]'s question, not this one's.
pub fn parse_length(value: &http::HeaderValue) -> Option<u64> {
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}

/// `n` in hex and CRLF, a chunk's size line (RFC 9112 §7.1), written into
/// `buf`: the one writer for the request bodies sent upstream and the
/// response bodies sent to clients.
pub fn chunk_size_line(mut n: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 16;
    loop {
        at -= 1;
        buf[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[at..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes_are_written_in_hex() {
        for n in [0usize, 1, 15, 16, 255, 4096, 65535, usize::MAX] {
            let mut buf = [0; 18];
            assert_eq!(
                super::chunk_size_line(n, &mut buf),
                format!("{n:x}\r\n").as_bytes()
            );
        }
    }

    use super::*;

    fn check(req: &RequestHeader) -> Result<(), Refusal> {
        super::check(req.version, &RequestScan::of(&req.headers, false))
    }

    fn req(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn host_must_be_there_once_in_http_1_1() {
        let h11 = Version::HTTP_11;
        assert_eq!(check(&req(h11, &[])), Err((400, "missing Host header")));
        assert_eq!(
            check(&req(h11, &[("host", "a"), ("host", "b")])),
            Err((400, "more than one Host header"))
        );
        assert_eq!(check(&req(h11, &[("host", "a")])), Ok(()));
        assert_eq!(
            check(&req(Version::HTTP_10, &[])),
            Ok(()),
            "optional in 1.0"
        );
    }

    #[test]
    fn one_content_length_of_digits_only() {
        let h = |cl: &[&str]| {
            let mut v = vec![("host", "h")];
            v.extend(cl.iter().map(|c| ("content-length", *c)));
            check(&req(Version::HTTP_11, &v))
        };
        assert_eq!(h(&["5"]), Ok(()));
        for bad in [&["5", "5"][..], &["5, 5"], &["+5"], &["-1"], &["5 "], &[""]] {
            assert_eq!(
                h(bad),
                Err((400, "invalid or duplicate Content-Length")),
                "{bad:?}"
            );
        }
        assert_eq!(
            declared_length(&req(Version::HTTP_11, &[("content-length", "42")])),
            Some(42)
        );
    }

    #[test]
    fn only_a_lone_chunked_coding_is_forwarded() {
        let te = |v: &[&str], extra: &[(&'static str, &'static str)], version| {
            let mut h = vec![("host", "h")];
            h.extend(v.iter().map(|c| ("transfer-encoding", *c)));
            h.extend_from_slice(extra);
            check(&req(version, &h))
        };
        let h11 = Version::HTTP_11;
        assert_eq!(te(&["chunked"], &[], h11), Ok(()));
        assert_eq!(te(&[" Chunked "], &[], h11), Ok(()));
        for bad in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["identity"],
            &["chunked, chunked"],
        ] {
            assert_eq!(
                te(bad, &[], h11),
                Err((501, "unsupported transfer coding")),
                "{bad:?}"
            );
        }
        assert_eq!(
            te(&["chunked"], &[("content-length", "5")], h11),
            Err((400, "both Content-Length and Transfer-Encoding"))
        );
        assert_eq!(
            te(&["chunked"], &[], Version::HTTP_10),
            Err((400, "Transfer-Encoding in an HTTP/1.0 request"))
        );
    }
}
