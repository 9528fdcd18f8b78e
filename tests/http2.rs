//! HTTP/2 at the edge (both engines: scripts/test.sh runs this file again
//! with TOLLGATE_PROXY_ENGINE=pingora): over TLS by ALPN and in cleartext
//! (h2c, prior knowledge) on listeners that ask for it, with the same
//! routing as HTTP/1.1, the protocol in the access log and metrics; and
//! the abuse HTTP/2 invites (Rapid Reset, CONTINUATION floods, oversized
//! header lists) costs the abuser its connection, not other clients their
//! service. Real clients: curl, h2load; hand-made frames for the abuse.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd_gw::{metric, TempDir};
use common::h2_frames::{
    frame, get_block, head_block, RawH2, CANCEL, CONTINUATION, END_HEADERS, END_STREAM, HEADERS,
    RST_STREAM,
};
use common::raw_http::backend_answering;
use common::tls::{curl, curl_https, make_cert, TestCert};
use common::{bin, upstream, READY};
use testkit::{wait_for, Backend, Gateway, Mode};

/// Connections the gateway closed with a GOAWAY, whatever the reason.
fn goaways(gw: &Gateway) -> f64 {
    [
        "reset_rate",
        "enhance_your_calm",
        "protocol_error",
        "compression_error",
        "malformed_requests",
        "other",
    ]
    .iter()
    .map(|r| {
        metric(
            gw,
            &format!("tollgate_http2_goaway_total{{reason=\"{r}\"}}"),
        )
    })
    .sum()
}

/// Listeners: 0 = TLS, 1 = h2c (plus the plain HTTP/1.1 proxy listener);
/// `secure` is an `https_only` route.
fn gateway(b: &Backend, cert: &TestCert, extra: &str) -> Gateway {
    let gw = Gateway::start_with_listeners(
        bin(),
        &format!(
            "tls: {{ default_cert: {{ cert_file: {:?}, key_file: {:?} }} }}\n\
             access_log: {{ enabled: true, path: \"-\" }}\n\
             {extra}\
             routes:\n\
             - {{ id: secure, paths: [\"/secure/*rest\"], upstream: b, https_only: true }}\n\
             - {{ id: any, paths: [\"/*rest\"], upstream: b }}\n\
             upstreams:\n{}",
            cert.cert_file,
            cert.key_file,
            upstream("b", &[b]),
        ),
        &["tls: true", "h2c: true"],
    );
    gw.wait_ready(READY);
    gw
}

#[test]
fn http2_over_tls_and_h2c_serve_routes_like_http1_and_log_the_protocol() {
    let b = Backend::start("b");
    let dir = TempDir::new("h2-basic");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(&b, &cert, "");

    let r = curl_https(
        gw.listener(0),
        "api.test",
        &cert.cert_file,
        "/h2?x=1",
        &["--http2"],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    // The HTTP/1.1 upstream gets a Host and an origin-form target.
    assert!(r.body.contains("\"path\":\"/h2?x=1\""), "{}", r.body);
    assert!(r.body.contains("\"host\":\"api.test:"), "{}", r.body);
    assert!(
        r.body.contains("\"x-forwarded-proto\":\"https\""),
        "{}",
        r.body
    );

    // A body goes up whole over HTTP/2.
    let payload = dir.path().join("payload");
    std::fs::write(&payload, vec![b'x'; 300_000]).unwrap();
    let data = format!("@{}", payload.display());
    let r = curl_https(
        gw.listener(0),
        "api.test",
        &cert.cert_file,
        "/upload",
        &["--http2", "--data-binary", &data],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"body_len\":300000"), "{}", r.body);

    let h2c = format!("http://{}/h2c", gw.listener(1));
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "x_consumer_name: admin",
        "-H",
        "x-keep: 1",
        &h2c,
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    assert!(
        r.body.contains("\"x-forwarded-proto\":\"http\""),
        "{}",
        r.body
    );
    // A name with an underscore is dropped over HTTP/2 too (the default).
    assert!(r.body.contains("\"x-keep\":\"1\""), "{}", r.body);
    assert!(!r.body.contains("x_consumer_name"), "{}", r.body);
    // HTTP/1.1 still works on the h2c listener.
    let r = curl(&["--http1.1", &h2c]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");

    // HTTP/1.1 over TLS when the client offers only it.
    let r = curl_https(
        gw.listener(0),
        "api.test",
        &cert.cert_file,
        "/h1",
        &["--http1.1"],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");

    wait_for("the access log lines", READY, || {
        let logs = gw.logs();
        logs.contains("\"protocol\":\"h2\",\"scheme\":\"https\"")
            && logs.contains("\"protocol\":\"h2c\",\"scheme\":\"http\"")
            && logs.contains("\"protocol\":\"http/1.1\",\"scheme\":\"https\"")
    });
    assert!(
        metric(
            &gw,
            "tollgate_requests_by_protocol_total{protocol=\"h2\",scheme=\"https\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &gw,
            "tollgate_requests_by_protocol_total{protocol=\"h2c\",scheme=\"http\"}"
        ) >= 1.0
    );
}

/// A `HEAD` a plugin sends upstream as a `GET` is answered over HTTP/2 as
/// a `HEAD`: the response's head, and no DATA (the upstream's body is not
/// the client's).
#[test]
fn a_head_sent_upstream_as_a_get_gets_no_body_over_http2() {
    let (url, seen) = backend_answering(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    let gw = Gateway::start_with_listeners(
        bin(),
        &format!(
            "settings:\n  plugins: [{{proxy-rewrite: {{method: GET}}}}]\n\
             routes:\n- {{ id: any, paths: [\"/*rest\"], upstream: b }}\n\
             upstreams:\n  b: {{ nodes: [\"{url}\"] }}\n"
        ),
        &["h2c: true"],
    );
    gw.wait_ready(READY);
    let mut c = RawH2::connect(gw.listener(0));
    let block = head_block("api.test", "/page");
    assert!(c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)));
    wait_for("the stream's end", READY, || {
        c.ended.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(10)).unwrap(),
        "GET /page HTTP/1.1"
    );
    assert_eq!(c.responses(), 1);
    assert_eq!(c.data_bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn prior_knowledge_on_a_listener_without_h2c_is_refused() {
    let b = Backend::start("b");
    let dir = TempDir::new("h2-refused");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(&b, &cert, "");
    let r = curl(&["--http2-prior-knowledge", &gw.url("/")]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_eq!(b.hits(), 0);
    assert_eq!(
        metric(&gw, "tollgate_protocol_refused_total{protocol=\"h2c\"}"),
        1.0
    );
    // HTTP/1.1 on it is unaffected.
    assert_eq!(curl(&[&gw.url("/")]).status, 200);
}

#[test]
fn https_only_routes_send_plaintext_requests_to_the_tls_port() {
    let b = Backend::start("b");
    let dir = TempDir::new("h2-https-only");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(&b, &cert, "");
    let port = gw.listener(0).port();

    let r = curl(&["-H", "Host: api.test", &gw.url("/secure/a?b=1")]);
    assert_eq!(r.status, 301, "{r:?}");
    assert!(
        r.headers
            .contains(&format!("location: https://api.test:{port}/secure/a?b=1")),
        "{}",
        r.headers
    );
    let r = curl(&[
        "-X",
        "POST",
        "-d",
        "x",
        "-H",
        "Host: api.test",
        &gw.url("/secure/a"),
    ]);
    assert_eq!(r.status, 308, "{r:?}");
    // Over h2c it is plaintext too.
    let h2c = format!("http://{}/secure/a", gw.listener(1));
    assert_eq!(curl(&["--http2-prior-knowledge", &h2c]).status, 301);
    // A Host that is not a plain name is not echoed into a Location.
    let r = curl(&["-H", "Host: evil.test/x", &gw.url("/secure/a")]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.headers.contains("location"), "{}", r.headers);
    assert_eq!(b.hits(), 0, "nothing plaintext reached the upstream");

    // Over TLS the route is served.
    let r = curl_https(
        gw.listener(0),
        "api.test",
        &cert.cert_file,
        "/secure/a",
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn h2load_over_tls_and_h2c_gets_every_answer() {
    let b = Backend::start("b");
    let dir = TempDir::new("h2-h2load");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(&b, &cert, "");
    for url in [
        format!("https://{}/load", gw.listener(0)),
        format!("http://{}/load", gw.listener(1)),
    ] {
        let out = Command::new("h2load")
            .args(["-n", "2000", "-c", "4", "-m", "10", &url])
            .output()
            .expect("h2load runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored"),
            "{url}: {text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{url}: {text}");
    }
}

#[test]
fn rapid_reset_costs_the_abuser_its_connection_and_others_are_served() {
    let b = Backend::start("b");
    let dir = TempDir::new("h2-rapid-reset");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(&b, &cert, "");
    let mut c = RawH2::connect(gw.listener(1));
    let block = get_block("api.test", "/reset");
    let mut sent = 0u32;
    let started = Instant::now();
    'flood: for batch in 0..200u32 {
        let mut bytes = Vec::new();
        for i in 0..50u32 {
            let id = 2 * (batch * 50 + i) + 1;
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if !c.send(&bytes) {
            break 'flood;
        }
        sent += 50;
    }
    wait_for("the abusive connection to be closed", READY, || {
        c.is_closed()
    });
    eprintln!(
        "rapid reset: {sent} streams sent in {:?}, GOAWAY {:?}, {} reached the upstream",
        started.elapsed(),
        c.goaway_code(),
        b.hits()
    );
    // ENHANCE_YOUR_CALM (0xb), and far fewer streams reached the upstream
    // than were opened.
    assert_eq!(c.goaway_code(), Some(0xb));
    wait_for("the closed connection to be counted", READY, || {
        goaways(&gw) == 1.0
    });
    assert!(
        b.hits() < 1000,
        "{} of {sent} streams reached the upstream",
        b.hits()
    );
    let r = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/after", gw.listener(1)),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// Rapid Reset at the pace of the gateway: every stream is taken up (its
/// request reaches the upstream) before the client cancels it, which the
/// codec's bound on resets before accept never sees.
#[test]
fn resets_after_accept_past_the_per_second_cap_close_the_connection() {
    let b = Backend::start("b");
    b.set_mode(Mode::Stall(Duration::from_secs(3)));
    let dir = TempDir::new("h2-reset-rate");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(
        &b,
        &cert,
        "proxy: { http2: { max_resets_per_second: 20 } }\n",
    );
    let mut c = RawH2::connect(gw.listener(1));
    let block = get_block("api.test", "/slow");
    // Opens streams `first`, `first + 2`, … (`n` of them), waits until
    // each request is at the upstream, then cancels them all at once.
    let open_then_reset = |c: &mut RawH2, first: u32, n: u32| {
        let ids: Vec<u32> = (0..n).map(|i| first + 2 * i).collect();
        let hits = b.hits();
        let opened: Vec<u8> = ids
            .iter()
            .flat_map(|&id| frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
            .collect();
        assert!(c.send(&opened));
        wait_for("the requests at the upstream", READY, || {
            b.hits() >= hits + n as usize
        });
        let resets: Vec<u8> = ids
            .iter()
            .flat_map(|&id| frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()))
            .collect();
        c.send(&resets)
    };

    // Under the cap: a client that cancels some requests keeps its
    // connection, and its next request is answered on it.
    assert!(open_then_reset(&mut c, 1, 10));
    b.set_mode(Mode::Normal);
    assert!(c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 21, &block)));
    wait_for("the answer on the same connection", READY, || {
        c.responses() >= 1
    });
    assert_eq!(c.goaway_code(), None);

    // Past it: GOAWAY ENHANCE_YOUR_CALM, counted, and the connection closes.
    b.set_mode(Mode::Stall(Duration::from_secs(3)));
    open_then_reset(&mut c, 23, 25);
    wait_for("the abusive connection to be closed", READY, || {
        c.is_closed()
    });
    assert_eq!(c.goaway_code(), Some(0xb));
    wait_for("the closed connection to be counted", READY, || {
        metric(&gw, "tollgate_http2_goaway_total{reason=\"reset_rate\"}") == 1.0
    });
    b.set_mode(Mode::Normal);
    let r = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/after", gw.listener(1)),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_continuation_flood_or_an_oversized_header_list_is_cut_off() {
    let b = Backend::start("b");
    let dir = TempDir::new("h2-continuation");
    let cert = make_cert(dir.path(), "api", &["api.test"]);
    let gw = gateway(
        &b,
        &cert,
        "proxy: { http2: { max_header_list_bytes: 16384 } }\n",
    );
    let mut c = RawH2::connect(gw.listener(1));
    assert!(c.send(&frame(
        HEADERS,
        END_STREAM,
        1,
        &get_block("api.test", "/flood")
    )));
    // Each CONTINUATION carries one 16 KiB literal header (never ending).
    let mut block = vec![0x00, 0x01, b'x', 0x7f];
    let mut n = 16_000 - 127;
    // HPACK integer: 7-bit prefix full, then base-128 continuation bytes.
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    block.extend(std::iter::repeat_n(b'a', 16_000));
    let mut sent = 0usize;
    for _ in 0..640 {
        if !c.send(&frame(CONTINUATION, 0, 1, &block)) {
            break;
        }
        sent += block.len();
    }
    wait_for("the flooding connection to be closed", READY, || {
        c.is_closed()
    });
    eprintln!(
        "continuation flood: {sent} bytes accepted, GOAWAY {:?}",
        c.goaway_code()
    );
    assert!(c.goaway_code().is_some(), "closed without GOAWAY");
    wait_for("the closed connection to be counted", READY, || {
        goaways(&gw) == 1.0
    });
    assert!(sent < 10_000_000, "all {sent} bytes taken");
    assert_eq!(b.hits(), 0);

    // A header list over the limit in one piece: refused, not forwarded.
    let big = format!("x-big: {}", "a".repeat(20_000));
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &big,
        &format!("http://{}/big", gw.listener(1)),
    ]);
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(b.hits(), 0);
    // And the gateway serves the next client.
    let r = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/ok", gw.listener(1)),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
}
