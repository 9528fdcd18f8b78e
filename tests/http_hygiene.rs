//! Request framing and `Host` hygiene, as raw bytes on the wire (both
//! engines: scripts/test.sh runs this file again with
//! TOLLGATE_PROXY_ENGINE=pingora): what a proxy must not forward is
//! refused before any upstream is chosen, so the upstream sees nothing;
//! request bodies over the limit are refused with 413.

mod common;

use std::io::Write;

use common::raw_http::{connect, expect_closed, read_response};
use common::{start, upstream};
use testkit::{Backend, Gateway};

fn gateway(b: &Backend) -> Gateway {
    start(&format!(
        "proxy: {{ max_body_bytes: 1000 }}\n\
         routes:\n\
         - {{ id: any, paths: [\"/*rest\"], upstream: b }}\n\
         - {{ id: small, paths: [\"/small/*rest\"], upstream: b, max_body_bytes: 10 }}\n\
         upstreams:\n{}",
        upstream("b", &[b]),
    ))
}

/// Sends `raw` on a new connection; returns the status, head and body.
fn exchange(gw: &Gateway, raw: &[u8]) -> (u16, String, String) {
    let mut c = connect(gw.proxy_addr());
    c.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf);
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// `raw` is refused with `status` and `reason`, and never reaches `b`.
fn refused(gw: &Gateway, b: &Backend, raw: &str, status: u16, reason: &str) {
    let hits = b.hits();
    let (got, head, body) = exchange(gw, raw.as_bytes());
    assert_eq!(got, status, "{raw:?}: {head}{body}");
    assert!(body.contains(reason), "{raw:?}: {body}");
    assert!(body.contains("request_id"), "{body}");
    assert_eq!(b.hits(), hits, "{raw:?} reached the upstream");
}

#[test]
fn http_1_1_without_host_or_with_two_is_refused_before_the_upstream() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    refused(
        &gw,
        &b,
        "GET / HTTP/1.1\r\n\r\n",
        400,
        "missing Host header",
    );
    // An absolute-form target does not stand in for Host: nginx refuses it
    // too, and the upstream would have got no Host at all.
    refused(
        &gw,
        &b,
        "GET http://evil/ HTTP/1.1\r\n\r\n",
        400,
        "missing Host header",
    );
    // Two: Pingora's parser refuses it already (a bare 400), and so would
    // the check; either way nothing goes upstream.
    let hits = b.hits();
    let (status, head, _) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(status, 400, "{head}");
    assert_eq!(b.hits(), hits);
    // HTTP/1.0 may omit it.
    let (status, _, body) = exchange(&gw, b"GET /ok HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn ambiguous_body_framing_is_refused_not_forwarded() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let dup = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
    refused(&gw, &b, dup, 400, "Content-Length");
    let list = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello";
    refused(&gw, &b, list, 400, "Content-Length");
    let gzip = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    refused(&gw, &b, gzip, 501, "unsupported transfer coding");
    let two = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    refused(&gw, &b, two, 501, "unsupported transfer coding");
    // A plain chunked body still goes through, whole.
    let ok =
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (status, _, body) = exchange(&gw, ok.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"body_len\":5"), "{body}");
}

#[test]
fn a_body_over_the_limit_is_413_before_the_upstream_or_as_it_crosses_it() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    // Declared: refused at once, nothing read, nothing upstream; the
    // default limit (proxy.max_body_bytes) and a route's own.
    let huge = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000000000\r\n\r\n";
    refused(&gw, &b, huge, 413, "request body too large");
    let over = "POST /small/x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
    refused(&gw, &b, over, 413, "request body too large");
    // One that waits for 100 Continue is told 413 instead, and closed.
    let hits = b.hits();
    let mut c = connect(gw.proxy_addr());
    c.write_all(
        b"POST /small/x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut c, &mut buf);
    assert_eq!(status, 413, "{head}");
    expect_closed(&mut c, "after 413");
    assert_eq!(b.hits(), hits);
    // At the limit: served.
    let at = "POST /small/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhelloworld";
    let (status, _, body) = exchange(&gw, at.as_bytes());
    assert_eq!(status, 200, "{body}");

    // Chunked: 413 once the body grows past the limit, and the connection
    // closes; the upstream never gets a whole request.
    let mut c = connect(gw.proxy_addr());
    c.write_all(
        b"POST /small/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n",
    )
    .unwrap();
    c.write_all(b"8\r\n12345678\r\n0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut c, &mut buf);
    assert_eq!(status, 413, "{head}{}", String::from_utf8_lossy(&body));
    expect_closed(&mut c, "after a chunked 413");
    let (status, _, body) = exchange(&gw, b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status, 200, "the gateway serves on: {body}");
}

/// Reads `n` responses from `c` in order: (status, echoed path).
fn responses(c: &mut std::net::TcpStream, n: usize) -> Vec<(u16, String)> {
    let mut buf = Vec::new();
    (0..n)
        .map(|_| {
            let (status, head, body) = read_response(c, &mut buf);
            let body = String::from_utf8_lossy(&body).into_owned();
            let path = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|j| j["path"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{head}{body}"));
            (status, path)
        })
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let mut c = connect(gw.proxy_addr());
    // Three in one write, a POST with a body among them (not idempotent:
    // still served, in order, one at a time upstream).
    c.write_all(
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        responses(&mut c, 3),
        [
            (200, "/one".into()),
            (200, "/two".into()),
            (200, "/three".into())
        ]
    );
    assert_eq!(b.hits(), 3);
    // And the connection still serves.
    c.write_all(b"GET /four HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert_eq!(responses(&mut c, 1), [(200, "/four".into())]);
}

#[test]
fn a_request_arriving_while_the_one_before_is_upstream_waits_its_turn() {
    let b = Backend::start("slow");
    b.set_mode(testkit::Mode::Stall(std::time::Duration::from_millis(300)));
    let gw = gateway(&b);
    let mut c = connect(gw.proxy_addr());
    c.write_all(b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    // The first is upstream (its side effect happens): only now the next.
    let deadline = std::time::Instant::now() + common::raw_http::IO;
    while b.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the upstream"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    c.write_all(b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    // The upstream's answer to the first reaches the client (it was a 400
    // with the upstream's 200 thrown away), then the second's.
    assert_eq!(
        responses(&mut c, 2),
        [(200, "/slow".into()), (200, "/second".into())]
    );
}

#[test]
fn a_body_sent_after_100_continue_together_with_the_next_request_serves_both() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let mut c = connect(gw.proxy_addr());
    c.write_all(
        b"PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut c, &mut buf);
    assert_eq!(status, 100, "{head}");
    c.write_all(b"helloGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let (status, _, body) = read_response(&mut c, &mut buf);
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        got.push((
            status,
            j["path"].as_str().unwrap_or("").to_string(),
            j["body_len"].clone(),
        ));
    }
    assert_eq!(
        got,
        [
            (200, "/up".to_string(), serde_json::json!(5)),
            (200, "/next".to_string(), serde_json::json!(0))
        ]
    );
}

#[test]
fn paths_are_normalized_before_routing_so_the_upstream_sees_the_route_matched() {
    let b = Backend::start("b");
    let gw = start(&format!(
        "routes:\n\
         - {{ id: public, paths: [\"/public/*rest\"], upstream: b }}\n\
         upstreams:\n{}",
        upstream("b", &[&b]),
    ));
    // What Tomcat, Spring or IIS would resolve to /admin after routing.
    for (path, why) in [
        ("/public/..;/admin", "dot segments"),
        ("/public/%2e%2e;x/admin", "dot segments"),
        ("/public/%2e%2e%2fadmin", "escaped slash"),
        ("/public/..%2Fadmin", "escaped slash"),
        ("/public/..\\admin", "backslash"),
        ("/public/..%5cadmin", "backslash"),
        ("/public/a%00", "NUL"),
        ("/public/%zz", "percent-encoding"),
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        refused(&gw, &b, &raw, 400, why);
    }
    // Equivalent spellings reach the upstream normalized, query untouched.
    for (sent, seen) in [
        ("/public//a///b", "/public/a/b"),
        ("/%70ublic/%7Euser", "/public/~user"),
        ("/public/a%3fb?x=/../%2e", "/public/a%3Fb?x=/../%2e"),
    ] {
        let raw = format!("GET {sent} HTTP/1.1\r\nHost: h\r\n\r\n");
        let (status, _, body) = exchange(&gw, raw.as_bytes());
        assert_eq!(status, 200, "{sent}: {body}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["path"], seen, "{sent}: {body}");
    }
}

/// A connection from `local` (a loopback address) to the gateway.
fn connect_from(gw: &Gateway, local: [u8; 4]) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((local, 0)).into())
        .unwrap();
    s.connect(&gw.proxy_addr().into()).unwrap();
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(common::raw_http::IO)).unwrap();
    s
}

/// Whether the gateway closed `c` without a word (a refused connection).
fn closed_at_once(c: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 1];
    matches!(c.read(&mut b), Ok(0) | Err(_))
}

/// Whether a GET on `c` is answered 200 (false if the connection closes).
fn served(c: &mut std::net::TcpStream, path: &str) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
    c.write_all(req.as_bytes()).is_ok()
        && common::raw_http::try_read_response(c, &mut Vec::new()).is_ok_and(|r| r.0 == 200)
}

#[test]
fn connections_over_the_limits_are_closed_at_once_and_counted() {
    let b = Backend::start("b");
    let gw = start(&format!(
        "proxy: {{ max_connections: 4, max_connections_per_ip: 2 }}\n\
         routes:\n\
         - {{ id: any, paths: [\"/*rest\"], upstream: b }}\n\
         upstreams:\n{}",
        upstream("b", &[&b]),
    ));
    let refused = |reason: &str| {
        common::etcd_gw::metric(
            &gw,
            &format!("tollgate_connections_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    // Two from 127.0.0.1 are served; a third from it is closed at once.
    let mut a1 = connect_from(&gw, [127, 0, 0, 1]);
    let mut a2 = connect_from(&gw, [127, 0, 0, 1]);
    assert!(served(&mut a1, "/a1") && served(&mut a2, "/a2"));
    let mut a3 = connect_from(&gw, [127, 0, 0, 1]);
    assert!(
        closed_at_once(&mut a3),
        "a third connection from one address"
    );
    assert_eq!(refused("max_connections_per_ip"), 1.0);
    // Other addresses still get in, up to the total of 4.
    let mut b1 = connect_from(&gw, [127, 0, 0, 2]);
    let mut c1 = connect_from(&gw, [127, 0, 0, 3]);
    assert!(served(&mut b1, "/b1") && served(&mut c1, "/c1"));
    let mut d1 = connect_from(&gw, [127, 0, 0, 4]);
    assert!(closed_at_once(&mut d1), "a fifth connection");
    assert_eq!(refused("max_connections"), 1.0);
    // The open ones keep being served; a closed one frees its place.
    assert!(served(&mut a1, "/again"));
    drop(b1);
    let deadline = std::time::Instant::now() + common::raw_http::IO;
    loop {
        let mut d2 = connect_from(&gw, [127, 0, 0, 4]);
        if served(&mut d2, "/d2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed place never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_absolute_form_target_and_host_must_agree() {
    let (good, evil) = (Backend::start("good"), Backend::start("evil"));
    let gw = start(&format!(
        "routes:\n\
         - {{ id: good, hosts: [good.example], paths: [\"/*rest\"], upstream: good }}\n\
         - {{ id: evil, hosts: [evil.example], paths: [\"/*rest\"], upstream: evil }}\n\
         upstreams:\n{}{}",
        upstream("good", &[&good]),
        upstream("evil", &[&evil]),
    ));
    // Routed by one host, forwarded with the other: refused (Pingora's
    // parser already does), nothing upstream.
    let raw = "GET http://evil.example/x HTTP/1.1\r\nHost: good.example\r\n\r\n";
    let (status, head, _) = exchange(&gw, raw.as_bytes());
    assert_eq!(status, 400, "{head}");
    assert_eq!(good.hits() + evil.hits(), 0);
    // When they agree, the route of that host serves it, with that Host.
    let raw = "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let (status, head, body) = exchange(&gw, raw.as_bytes());
    assert_eq!(status, 200, "{head}{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (j["backend"].as_str(), j["headers"]["host"].as_str()),
        (Some("evil"), Some("evil.example")),
        "{body}"
    );
}

/// A header named with an underscore reaches a CGI-style backend as the
/// one spelled with dashes (`X_Consumer_Name` as `X-Consumer-Name`), past
/// the gateway's own handling of that name: dropped by default, a 400
/// with `reject`, passed on with `allow`; for a head the core engine's
/// codec serves and for one with a body (pingora-core's session).
#[test]
fn header_names_with_an_underscore_are_dropped_refused_or_allowed_as_configured() {
    let b = Backend::start("b");
    let heads = [
        "GET /u HTTP/1.1\r\nHost: x\r\nX_Consumer_Name: admin\r\nX-Forwarded_For: 10.9.9.9\r\n\
         X-Keep: 1\r\n\r\n",
        "POST /u HTTP/1.1\r\nHost: x\r\nx_consumer_name: admin\r\nX-Forwarded_For: 10.9.9.9\r\n\
         X-Keep: 1\r\nContent-Length: 2\r\n\r\nhi",
    ];
    for (setting, policy) in [
        ("", "drop"),
        ("underscore_headers: drop", "drop"),
        ("underscore_headers: reject", "reject"),
        ("underscore_headers: allow", "allow"),
    ] {
        let gw = start(&format!(
            "proxy: {{ {setting} }}\n\
             routes:\n\
             - {{ id: any, paths: [\"/*rest\"], upstream: b }}\n\
             upstreams:\n{}",
            upstream("b", &[&b]),
        ));
        for raw in heads {
            if policy == "reject" {
                refused(&gw, &b, raw, 400, "header name with an underscore");
                continue;
            }
            let (status, head, body) = exchange(&gw, raw.as_bytes());
            assert_eq!(status, 200, "{policy} {raw:?}: {head}{body}");
            let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
            let h = &seen["headers"];
            assert_eq!(h["x-keep"], "1", "{policy}: {body}");
            let passed = ["x_consumer_name", "x-forwarded_for"].map(|n| h.get(n).is_some());
            assert_eq!(passed, [policy == "allow"; 2], "{policy} {raw:?}: {body}");
            // The gateway's own handling is untouched either way.
            assert!(h.get("x-consumer-name").is_none(), "{policy}: {body}");
            assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{policy}: {body}");
        }
    }
}

/// A connection's first bytes are read by the connection layer and put
/// back for the engine: however they arrive, the first request is whole.
#[test]
fn a_first_request_is_served_however_its_bytes_arrive() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    // One byte a write, with TCP_NODELAY: the first read gets less than
    // the four bytes that tell HTTP/1.1 from an HTTP/2 preface.
    let mut c = connect(gw.proxy_addr());
    c.set_nodelay(true).unwrap();
    for byte in b"GET /trickle HTTP/1.1\r\nHost: h\r\n\r\n" {
        c.write_all(&[*byte]).unwrap();
        c.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(responses(&mut c, 1), [(200, "/trickle".into())]);
    // A first head bigger than the first read (4 KiB), then a second
    // request in the same write.
    let mut c = connect(gw.proxy_addr());
    let big = "v".repeat(12 * 1024);
    let mut raw = format!("GET /big HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").into_bytes();
    raw.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    c.write_all(&raw).unwrap();
    assert_eq!(
        responses(&mut c, 2),
        [(200, "/big".into()), (200, "/after".into())]
    );
    assert_eq!(b.hits(), 3);
}
