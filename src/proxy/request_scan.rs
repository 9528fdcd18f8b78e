//! What the gate asks of a request's header before routing it, found in
//! one pass over the header: a lookup in `http`'s map costs ~130
//! instructions whether or not the header is there, and a request has only
//! a handful of headers, most of them not the ones asked about (`Host`,
//! `Content-Length`, `Transfer-Encoding`, `Connection`, `X-Request-Id`).
//!
//! Taken before the plugins run: on a route with plugins, what is asked
//! after them (`X-Consumer-Name`, `Content-Length`, `Expect`) is looked
//! up again, since a plugin may have changed the header.

use http::header;
use http::{HeaderMap, HeaderValue};

use super::header_names::X_REQUEST_ID;
use crate::plugins::consumer::X_CONSUMER_NAME;

/// A count that stops at 2: "none, one, more" is all the checks need.
fn bump(n: &mut u8) {
    *n = (*n + 1).min(2);
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestScan {
    pub hosts: u8,
    pub lengths: u8,
    /// The first `Content-Length` is digits only (and not empty).
    pub length_is_digits: bool,
    /// The first `Content-Length`'s value, when it is a number.
    pub length: Option<u64>,
    pub codings: u8,
    /// The first `Transfer-Encoding` is `chunked` alone.
    pub chunked: bool,
    pub connection: bool,
    pub request_ids: u8,
    pub request_id: Option<HeaderValue>,
    /// The client sent an `X-Consumer-Name` of its own.
    pub consumer_claimed: bool,
    /// The first `Expect` is `100-continue` (in any HTTP version: the
    /// caller asks about 1.1).
    pub expects_continue: bool,
    /// Some header's name has an underscore.
    pub underscores: bool,
}

impl RequestScan {
    /// `underscores`: whether to look for names with an underscore (the
    /// client codec has already, for the requests it serves).
    pub fn of(headers: &HeaderMap, underscores: bool) -> Self {
        let mut s = Self::default();
        let mut expect_seen = false;
        for (name, value) in headers {
            if *name == header::HOST {
                bump(&mut s.hosts);
            } else if *name == header::CONTENT_LENGTH {
                if s.lengths == 0 {
                    let digits = value.as_bytes();
                    s.length_is_digits =
                        !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
                    s.length = super::framing::parse_length(value);
                }
                bump(&mut s.lengths);
            } else if *name == header::TRANSFER_ENCODING {
                if s.codings == 0 {
                    s.chunked = value
                        .as_bytes()
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"chunked");
                }
                bump(&mut s.codings);
            } else if *name == header::CONNECTION {
                s.connection = true;
            } else if *name == header::EXPECT {
                if !expect_seen {
                    s.expects_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
                }
                expect_seen = true;
            } else if *name == X_CONSUMER_NAME {
                s.consumer_claimed = true;
            } else if *name == X_REQUEST_ID {
                if s.request_ids == 0 {
                    s.request_id = Some(value.clone());
                }
                bump(&mut s.request_ids);
            } else if underscores {
                s.underscores |= name.as_str().contains('_');
            }
        }
        s
    }
}

/// The same answers by lookups, as the gate asked before the scan.
#[cfg(test)]
pub(super) fn looked_up(h: &HeaderMap) -> RequestScan {
    let count = |name| h.get_all(name).iter().count().min(2) as u8;
    let first = |name| h.get_all(name).iter().next();
    RequestScan {
        hosts: count(&header::HOST),
        lengths: count(&header::CONTENT_LENGTH),
        length_is_digits: first(&header::CONTENT_LENGTH).is_some_and(|v| {
            !v.as_bytes().is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit)
        }),
        length: first(&header::CONTENT_LENGTH).and_then(super::framing::parse_length),
        codings: count(&header::TRANSFER_ENCODING),
        chunked: first(&header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")),
        connection: h.contains_key(header::CONNECTION),
        request_ids: count(&X_REQUEST_ID),
        request_id: first(&X_REQUEST_ID).cloned(),
        consumer_claimed: h.contains_key(&X_CONSUMER_NAME),
        expects_continue: h
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        underscores: h.keys().any(|n| n.as_str().contains('_')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_answers_as_the_lookups_did() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("host", "a"), ("user-agent", "x"), ("accept", "*/*")],
            &[("host", "a"), ("Host", "b"), ("host", "c")],
            &[("content-length", "5"), ("content-length", "x")],
            &[("content-length", "x"), ("content-length", "5")],
            &[("content-length", "")],
            &[
                ("transfer-encoding", " Chunked "),
                ("x", "1"),
                ("transfer-encoding", "gzip"),
            ],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            &[
                ("connection", "close"),
                ("x-request-id", "a"),
                ("x-request-id", "b"),
            ],
            &[("x-request-id", "only"), ("X-Request-Id-2", "no")],
            &[
                ("content-length", "+7"),
                ("expect", "100-Continue"),
                ("x-consumer-name", "me"),
            ],
            &[
                ("content-length", "99999999999999999999"),
                ("expect", "x"),
                ("expect", "100-continue"),
            ],
        ];
        for case in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *case {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            assert_eq!(RequestScan::of(&h, true), looked_up(&h), "{case:?}");
        }
    }
}
