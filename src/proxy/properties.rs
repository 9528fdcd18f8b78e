//! Property tests of what tollgate itself owns on the request path, over
//! arbitrary input: path normalization, request framing, hop-by-hop
//! handling, `X-Forwarded-For` and the route matcher. Each holds an
//! invariant besides "no panic".

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use proptest::prelude::*;

use super::request_scan::{self, RequestScan};
use super::{forwarding, framing, hop_by_hop, path_norm};
use crate::model::path_policy::{Ambiguous, PathPolicy};

/// Bytes that matter to paths, often: escapes, slashes, dots, `;`.
fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop_oneof![
        Just(b'/'),
        Just(b'.'),
        Just(b'%'),
        Just(b';'),
        Just(b'\\'),
        Just(b'2'),
        Just(b'e'),
        Just(b'f'),
        Just(b'F'),
        Just(b'5'),
        Just(b'c'),
        Just(b'0'),
        any::<u8>(),
        b'a'..=b'z',
    ];
    proptest::collection::vec(interesting, 0..40).prop_map(|mut v| {
        v.insert(0, b'/');
        v
    })
}

fn policy() -> impl Strategy<Value = PathPolicy> {
    let amb = prop_oneof![
        Just(Ambiguous::Reject),
        Just(Ambiguous::Keep),
        Just(Ambiguous::Decode)
    ];
    (any::<bool>(), amb.clone(), amb).prop_map(|(merge_slashes, escaped_slashes, backslashes)| {
        PathPolicy {
            merge_slashes,
            escaped_slashes,
            backslashes,
        }
    })
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        Just(http::header::CONNECTION),
        Just(http::header::UPGRADE),
        Just(http::header::TRANSFER_ENCODING),
        Just(http::header::CONTENT_LENGTH),
        Just(http::header::HOST),
        Just(http::header::TE),
        Just(HeaderName::from_static("keep-alive")),
        Just(HeaderName::from_static("x-forwarded-for")),
        "[a-z][a-z0-9-]{0,12}".prop_map(|s| HeaderName::from_bytes(s.as_bytes()).unwrap()),
    ]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        Just("close".to_string()),
        Just("keep-alive, upgrade".to_string()),
        Just("websocket".to_string()),
        Just("chunked".to_string()),
        Just("5".to_string()),
        "[ -~]{0,24}",
    ]
    .prop_map(|s| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalizing_twice_is_normalizing_once(path in path_bytes(), policy in policy()) {
        if let Ok(once) = path_norm::normalize(&path, &policy) {
            let once = once.into_owned();
            let twice = path_norm::normalize(&once, &policy);
            prop_assert_eq!(twice.as_deref().ok(), Some(&once[..]));
            // What goes upstream: no control bytes, no dot segment, and
            // under the default policy no slash the upstream could decode.
            prop_assert!(!once.iter().any(|b| b.is_ascii_control()) || path.iter().any(|b| b.is_ascii_control()));
            let dot = |s: &[u8]| {
                let core = s.split(|b| *b == b';').next().unwrap_or(s);
                core == b"." || core == b".."
            };
            prop_assert!(!once.split(|b| *b == b'/').any(dot), "dot segment kept");
            if policy.escaped_slashes == Ambiguous::Reject {
                prop_assert!(!once.windows(3).any(|w| w.eq_ignore_ascii_case(b"%2f")));
            }
            if policy.backslashes == Ambiguous::Reject {
                prop_assert!(!once.contains(&b'\\'));
            }
            if policy.merge_slashes {
                prop_assert!(!once.windows(2).any(|w| w == b"//"));
            }
        }
    }

    #[test]
    fn framing_and_hop_by_hop_never_panic_and_strip_what_they_must(
        headers in proptest::collection::vec((header_name(), header_value()), 0..8),
        http11 in any::<bool>(),
    ) {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        if !http11 {
            req.set_version(http::Version::HTTP_10);
        }
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            req.append_header(k.clone(), v.clone()).unwrap();
            map.append(k.clone(), v.clone());
        }
        let scan = RequestScan::of(&req.headers, true);
        prop_assert_eq!(&scan, &request_scan::looked_up(&req.headers));
        let _ = framing::check(req.version, &scan);
        let _ = framing::declared_length(&req);
        let checked = hop_by_hop::check(&map).is_ok();
        let mut sanitized = map.clone();
        if hop_by_hop::sanitize(&mut sanitized, http11).is_ok() {
            prop_assert!(checked, "sanitize took what check refused");
            for h in [http::header::TE, http::header::TRANSFER_ENCODING, HeaderName::from_static("keep-alive")] {
                prop_assert!(!sanitized.contains_key(&h), "{} forwarded", h);
            }
            // Only a WebSocket upgrade keeps Connection, and then exactly `Upgrade`.
            if let Some(c) = sanitized.get(http::header::CONNECTION) {
                prop_assert_eq!(c, "Upgrade");
            }
        }
    }

    #[test]
    fn x_forwarded_for_is_the_chain_then_the_client_and_never_breaks_a_line(
        hops in proptest::collection::vec("[ -~]{0,20}", 0..4),
        ip in any::<IpAddr>(),
    ) {
        let values: Vec<HeaderValue> = hops.iter().filter_map(|h| HeaderValue::from_str(h).ok()).collect();
        let out = forwarding::forwarded_for(values.iter(), ip);
        let text = out.to_str().unwrap();
        prop_assert!(!text.contains(['\r', '\n']));
        prop_assert!(text.ends_with(&ip.to_string()), "{} for {}", text, ip);
    }

    #[test]
    fn the_router_answers_any_path_without_panicking(
        path in "/[a-z/:*.%]{0,30}",
        host in "[a-z.*]{0,12}",
    ) {
        use crate::model::pattern::PathPattern;
        use crate::router::{RouteShape, Router};
        let mut r: Router<u32> = Router::default();
        for (i, p) in ["/users/:id", "/static/*rest", "/users/new", "/"].iter().enumerate() {
            let patterns = [PathPattern::parse(p).unwrap()];
            let shape = RouteShape { patterns: &patterns, hosts: &[], methods: 0, priority: 0 };
            r.add(i as u32, &shape).unwrap();
        }
        let hit = r.lookup(&host, "GET", &path).copied();
        if path == "/users/new" {
            prop_assert_eq!(hit, Some(2));
        }
        if path.starts_with("/static/") {
            prop_assert_eq!(hit, Some(1));
        }
    }
}
