//! Errors the gateway produces (JSON with the request id), connect retries,
//! upstreams that fail mid-response, and malformed client HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{assert_gateway_error, backend_of, send, start, upstream};
use testkit::{raw_request, Backend, Gateway, Mode};

/// A gateway with `/ok` on a healthy backend and `/t/*` on `nodes`, whose
/// route gets `extra` (e.g. `retries: 0`) appended.
fn gateway(healthy: &Backend, nodes: &[&Backend], extra: &str) -> Gateway {
    start(&format!(
        "routes:\n\
         - {{ id: ok, paths: [\"/ok\"], upstream: ok }}\n\
         - {{ id: t, paths: [\"/t/*rest\"], upstream: t{extra} }}\n\
         upstreams:\n{}{}",
        upstream("ok", &[healthy]),
        upstream("t", nodes),
    ))
}

#[test]
fn no_route_is_a_json_404_with_the_request_id() {
    let ok = Backend::start("ok");
    let gw = gateway(&ok, &[&ok], "");
    let id = assert_gateway_error(&send(&gw, "GET", "/nope", &[]), 404, "no route");
    assert!(common::is_generated_id(&id), "{id}");
    // The client's own id is the one reported.
    let r = send(&gw, "POST", "/nope/x", &[("x-request-id", "trace-404")]);
    assert_eq!(assert_gateway_error(&r, 404, "no route"), "trace-404");
    assert_eq!(ok.hits(), 0);
}

#[test]
fn every_node_refusing_is_a_502() {
    let ok = Backend::start("ok");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let gw = gateway(&ok, &[&a, &b], "");
    a.set_mode(Mode::Refuse);
    b.set_mode(Mode::Refuse);
    for i in 0..4 {
        let r = send(&gw, "GET", &format!("/t/{i}"), &[]);
        assert_gateway_error(&r, 502, "no reachable instance");
    }
    let r = send(&gw, "GET", "/t/x", &[("x-request-id", "trace-502")]);
    assert_eq!(
        assert_gateway_error(&r, 502, "no reachable instance"),
        "trace-502"
    );
    // The gateway itself is fine.
    assert_eq!(backend_of(&send(&gw, "GET", "/ok", &[])), "ok");
}

/// Timeouts under a second run on Pingora's fast timers, longer ones on
/// tokio's (src/cmd/run.rs): each case covers one of the two.
const TIMER_CASES_MS: [u64; 2] = [300, 1200];

#[test]
fn a_stalled_upstream_is_a_504_after_the_read_timeout() {
    for read_ms in TIMER_CASES_MS {
        let ok = Backend::start("ok");
        let slow = Backend::start("slow");
        let gw = gateway(&ok, &[&slow], &format!(", timeout: {{read_ms: {read_ms}}}"));
        // Fast enough: served.
        assert_eq!(backend_of(&send(&gw, "GET", "/t/fast", &[])), "slow");
        slow.set_mode(Mode::Stall(Duration::from_secs(4)));
        let t = Instant::now();
        let r = send(&gw, "GET", "/t/slow", &[]);
        let took = t.elapsed();
        assert_gateway_error(&r, 504, "timed out");
        let want = Duration::from_millis(read_ms);
        assert!(
            took >= want * 4 / 5 && took < want + Duration::from_millis(2200),
            "504 after {took:?}, read_ms is {read_ms}"
        );
        assert_eq!(
            slow.hits(),
            2,
            "the stalled request reached the backend once (read_ms {read_ms})"
        );
    }
}

#[test]
fn an_idle_upstream_connection_is_closed_after_idle_ms() {
    for idle_ms in TIMER_CASES_MS {
        let ok = Backend::start("ok");
        let pooled = Backend::start("pooled");
        let gw = gateway(
            &ok,
            &[&pooled],
            &format!(", timeout: {{idle_ms: {idle_ms}}}"),
        );
        assert_eq!(backend_of(&send(&gw, "GET", "/ok", &[])), "ok");
        assert_eq!(backend_of(&send(&gw, "GET", "/t/a", &[])), "pooled");
        let served = Instant::now();
        // Kept for reuse after the response, then closed once idle_ms passed
        // (closing it at once would fail the elapsed-time check below).
        testkit::wait_for(
            "the gateway to close its idle upstream connection",
            Duration::from_secs(10),
            || pooled.open_connections() == 0,
        );
        let idle = served.elapsed();
        assert!(
            idle >= Duration::from_millis(idle_ms) * 4 / 5,
            "closed after {idle:?}, idle_ms is {idle_ms}"
        );
        // The default idle timeout (60 s) keeps the other pool meanwhile.
        assert_eq!(ok.open_connections(), 1, "idle_ms {idle_ms}");
        // The next request opens a new connection and is served.
        assert_eq!(backend_of(&send(&gw, "GET", "/t/b", &[])), "pooled");
    }
}

#[test]
fn a_refused_connect_is_retried_on_the_other_node() {
    let ok = Backend::start("ok");
    let (down, up) = (Backend::start("down"), Backend::start("up"));
    let gw = gateway(&ok, &[&down, &up], "");
    down.set_mode(Mode::Refuse);
    for i in 0..20 {
        // POST too: nothing reached the refusing node, so any method is safe
        // to retry.
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = send(&gw, method, &format!("/t/{i}"), &[]);
        assert_eq!(backend_of(&r), "up", "{method} request {i}");
    }
    assert_eq!(up.hits(), 20);
    assert_eq!(down.hits(), 0);
}

#[test]
fn a_refused_connect_on_a_heavier_node_is_retried_elsewhere() {
    let ok = Backend::start("ok");
    let (down, up) = (Backend::start("down"), Backend::start("up"));
    let gw = start(&format!(
        "routes:\n- {{ id: t, paths: [\"/t/*rest\"], upstream: t }}\nupstreams:\n{}{}",
        upstream("ok", &[&ok]),
        common::weighted_upstream("t", &[(&down, 5), (&up, 1)]),
    ));
    down.set_mode(Mode::Refuse);
    // The balancer picks the dead node five times out of six; the one retry
    // must still land on the live one.
    for i in 0..24 {
        let r = send(&gw, "GET", &format!("/t/{i}"), &[]);
        assert_eq!(backend_of(&r), "up", "request {i}: {r:?}");
    }
    assert_eq!(up.hits(), 24);
}

/// A listener whose accept queue is full: the kernel drops further SYNs,
/// so a connect to it never completes (the `TcpStream`s keep it full).
fn unanswering_listener() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    socket2::Socket,
) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    // The queue holds one or two; each connect completes until it is full.
    while fill.len() < 8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => return (addr, fill, listener),
        }
    }
    panic!("the accept queue of a listen(0) socket never filled");
}

#[test]
fn a_connect_that_never_completes_is_a_504_after_connect_ms() {
    let ok = Backend::start("ok");
    let (addr, _fill, _listener) = unanswering_listener();
    let gw = start(&format!(
        "routes:\n\
         - {{ id: t, paths: [\"/t\"], upstream: t, retries: 0, timeout: {{connect_ms: 300}} }}\n\
         - {{ id: ok, paths: [\"/ok\"], upstream: ok }}\n\
         upstreams:\n  t: {{ nodes: [\"http://{addr}\"] }}\n{}",
        upstream("ok", &[&ok]),
    ));
    let t = Instant::now();
    let r = send(&gw, "GET", "/t", &[("x-request-id", "trace-504")]);
    let took = t.elapsed();
    assert_eq!(assert_gateway_error(&r, 504, "timed out"), "trace-504");
    // The gateway's timeout, not the kernel's (SYN retries for minutes).
    assert!(took < Duration::from_secs(5), "504 after {took:?}");
    assert_eq!(backend_of(&send(&gw, "GET", "/ok", &[])), "ok");
}

#[test]
fn retries_zero_surfaces_the_refused_connect() {
    let ok = Backend::start("ok");
    let (down, up) = (Backend::start("down"), Backend::start("up"));
    let gw = gateway(&ok, &[&down, &up], ", retries: 0");
    down.set_mode(Mode::Refuse);
    let (mut ok_count, mut bad) = (0, 0);
    for i in 0..10 {
        let r = send(&gw, "GET", &format!("/t/{i}"), &[]);
        if r.status == 200 {
            assert_eq!(backend_of(&r), "up");
            ok_count += 1;
        } else {
            assert_gateway_error(&r, 502, "no reachable instance");
            bad += 1;
        }
    }
    // Round robin over two equal nodes, one attempt each: the refused
    // connect reaches the client (no retry), and ejects the node (the
    // default failed-connect rule), so only that one request fails.
    assert_eq!((ok_count, bad), (9, 1));
    assert_eq!(up.hits(), 9);
}

#[test]
fn upstream_closing_mid_response_is_never_a_complete_200() {
    let ok = Backend::start("ok");
    let broken = Backend::start("broken");
    let gw = gateway(&ok, &[&broken], "");
    broken.set_mode(Mode::CloseMidResponse);
    for i in 0..3 {
        match gw.request("GET", &format!("/t/{i}"), &[], None) {
            // Observed: the 200 head (Content-Length: 1000) and 10 body bytes
            // reach the client, then the connection closes; the client sees
            // a transport error while reading the body.
            Err(e) => assert!(e.contains("reading body"), "{e}"),
            Ok(r) => panic!("a response passed as complete: {r:?}"),
        }
    }
    // On the wire: the upstream's head, its 10 bytes, then EOF (not a hang).
    let t = Instant::now();
    let raw = raw_request(
        gw.proxy_addr(),
        b"GET /t/raw HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(t.elapsed() < Duration::from_secs(4), "connection left open");
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{raw}"
    );
    assert!(body.len() < 1000, "full body delivered: {raw}");
    assert_eq!(broken.hits(), 4);

    // A healthy route, on a new connection, is unaffected.
    assert_eq!(backend_of(&send(&gw, "GET", "/ok", &[])), "ok");
    // And the broken one recovers with its backend.
    broken.set_mode(Mode::Normal);
    assert_eq!(backend_of(&send(&gw, "GET", "/t/again", &[])), "broken");
}

/// Sends `bytes` raw and returns (response text, whether the gateway closed
/// the connection before `raw_request`'s timeout).
fn raw(gw: &Gateway, bytes: &[u8]) -> (String, bool) {
    let timeout = Duration::from_secs(5);
    let t = Instant::now();
    let out = raw_request(gw.proxy_addr(), bytes, timeout);
    let closed = t.elapsed() < timeout - Duration::from_millis(500);
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn garbage_request_lines_get_a_400_and_a_close() {
    let ok = Backend::start("ok");
    let gw = gateway(&ok, &[&ok], "");
    for bytes in [
        &b"GARBAGE\r\n\r\n"[..],
        b"\x00\x01\x02 hello\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
    ] {
        // Observed (Pingora): a bodiless `400 Bad Request` with
        // `Connection: close`, then the connection is closed. It is Pingora's
        // own response, not the gateway's JSON (no request id).
        let (text, closed) = raw(&gw, bytes);
        assert!(
            text.starts_with("HTTP/1.1 400 "),
            "{:?}: {text:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(closed, "connection kept open after {text:?}");
        assert_eq!(backend_of(&send(&gw, "GET", "/ok", &[])), "ok");
    }
    assert_eq!(ok.hits(), 4, "nothing malformed reached the backend");
}

#[test]
fn oversized_headers_get_a_400_and_a_close() {
    let ok = Backend::start("ok");
    let gw = gateway(&ok, &[&ok], "");
    let mut req = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 2 << 20));
    req.extend_from_slice(b"\r\n\r\n");
    // Observed: Pingora caps the request head at about 1 MB and answers a
    // bigger one with a bodiless 400 and a close.
    let (text, closed) = raw(&gw, &req);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(closed, "connection kept open after {text:?}");
    assert_eq!(ok.hits(), 0, "the oversized request reached the backend");
    assert_eq!(backend_of(&send(&gw, "GET", "/ok", &[])), "ok");
}
