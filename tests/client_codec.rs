//! The core engine's own HTTP/1.1 codec for plain requests
//! (src/proxy/client_h1), and its hand-over to pingora-core's session for
//! every other request, checked on the wire against both engines: one
//! connection carrying both kinds in turn, the response head a client gets
//! (its `Date`, its `Connection`, the upstream's header case, no body after
//! `HEAD`), heads the codec does not take (too many fields, too large, odd
//! spellings of the framing fields) served as before, a body that looks
//! like a request never becoming one, and the fields each way: the
//! client's to the upstream and the upstream's to the client, as sent,
//! with the gateway's own in place of theirs, edited or not.

mod common;

use std::io::Write;
use std::time::Instant;

use common::engines::{gateway, gateway_full, ENGINES};
use common::raw_http::{
    backend_answering, connect, expect_closed, listener, read_response, read_until, IO,
};
use serde_json::Value;
use testkit::{Backend, Mode};

/// The echo backend's JSON of a response body.
fn echoed(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The lines of `head` that are fields named any of `names` (any case),
/// as sent and in their order.
fn lines_of<'a>(head: &'a str, names: &[&str]) -> Vec<&'a str> {
    head.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
        })
        .collect()
}

/// [`lines_of`] one name, lower-cased (for what both engines must agree
/// on, whatever case each writes).
fn lowered(head: &str, name: &str) -> Vec<String> {
    lines_of(head, &[name])
        .into_iter()
        .map(str::to_ascii_lowercase)
        .collect()
}

#[test]
fn plain_and_other_requests_take_turns_on_one_connection() {
    for engine in ENGINES {
        let b = Backend::start("b");
        let gw = gateway(engine, &[b.url()]);
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        let ask = |c: &mut std::net::TcpStream, buf: &mut Vec<u8>, req: &[u8]| {
            c.write_all(req).unwrap();
            read_response(c, buf)
        };

        // Plain: the codec's. Date set, as pingora-core sets it; the kept
        // connection said by HTTP/1.1 alone (pingora-core spells it out).
        let (status, head, body) = ask(&mut c, &mut buf, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(echoed(&body)["path"], "/a", "{engine}");
        assert!(header(&head, "date").is_some(), "{engine}: {head}");
        assert_eq!(
            header(&head, "connection"),
            (engine == "pingora").then_some("keep-alive"),
            "{engine}: {head}"
        );

        // HEAD: the length of the GET, no body: the next response follows
        // the head at once.
        c.write_all(b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /b2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let end = read_until(&mut c, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        let head: String = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        assert!(head.starts_with("HTTP/1.1 200"), "{engine}: {head}");
        assert!(
            header(&head, "content-length").is_some_and(|l| l != "0"),
            "{engine}: {head}"
        );
        let (status, _, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: the response after HEAD's");
        assert_eq!(echoed(&body)["path"], "/b2", "{engine}");

        // A body: pingora-core's session, on the same connection.
        let (status, head, body) = ask(
            &mut c,
            &mut buf,
            b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(echoed(&body)["path"], "/c", "{engine}");
        assert_eq!(echoed(&body)["body_len"], 3, "{engine}");

        // HTTP/1.0 with keep-alive asked for: pingora-core's too.
        let (status, head, body) = ask(
            &mut c,
            &mut buf,
            b"GET /d HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(echoed(&body)["path"], "/d", "{engine}");

        // And plain again, `Connection: keep-alive` spelled out.
        let (status, _, body) = ask(
            &mut c,
            &mut buf,
            b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n",
        );
        assert_eq!(status, 200, "{engine}");
        assert_eq!(echoed(&body)["path"], "/e", "{engine}");

        // `Connection: close` is answered with it, and the connection ends.
        let (status, head, _) = ask(
            &mut c,
            &mut buf,
            b"GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(
            header(&head, "connection"),
            Some("close"),
            "{engine}: {head}"
        );
        expect_closed(&mut c, &format!("{engine}: after Connection: close"));
        assert_eq!(
            b.hits(),
            7,
            "{engine}: each request reached the backend once"
        );
    }
}

#[test]
fn heads_the_codec_does_not_take_are_served_as_before() {
    for engine in ENGINES {
        let b = Backend::start("b");
        let gw = gateway(engine, &[b.url()]);
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();

        // More fields than a plain head has (64), and each reaches the backend.
        let many: String = (0..100).map(|i| format!("X-F{i}: {i}\r\n")).collect();
        c.write_all(format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
            .unwrap();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(echoed(&body)["headers"]["x-f99"], "99", "{engine}");

        // A head larger than the codec reads (16 KiB), sent in two writes.
        let big = "v".repeat(20 * 1024);
        c.write_all(format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {big}").as_bytes())
            .unwrap();
        c.write_all(b"\r\n\r\n").unwrap();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(echoed(&body)["path"], "/big", "{engine}");

        // A head that arrives a few bytes at a time is still one request
        // (the pauses only spread the pieces over several reads).
        for piece in [&b"GET /sl"[..], b"ow HTTP/1.1\r\nHo", b"st: x\r\n", b"\r\n"] {
            c.write_all(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (status, _, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}");
        assert_eq!(echoed(&body)["path"], "/slow", "{engine}");
    }
}

/// Smuggling through the codec's choice: a framing field in any spelling
/// sends the request to pingora-core's session, so its body is read as a
/// body. Were the chunked request taken as plain (bodyless), the request
/// inside its body would reach the backend as a request of its own.
#[test]
fn a_body_in_any_spelling_of_its_framing_is_never_a_request() {
    for engine in ENGINES {
        let b = Backend::start("b");
        let gw = gateway(engine, &[b.url()]);
        let inner = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        for te in [
            "Transfer-Encoding",
            "transfer-ENCODING",
            "TRANSFER-ENCODING",
        ] {
            let mut c = connect(gw.proxy_addr());
            let req = format!(
                "POST /outer HTTP/1.1\r\nHost: x\r\n{te}: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n\
                 GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
                inner.len()
            );
            c.write_all(req.as_bytes()).unwrap();
            let mut buf = Vec::new();
            let (status, head, body) = read_response(&mut c, &mut buf);
            assert_eq!(status, 200, "{engine} {te}: {head}");
            assert_eq!(echoed(&body)["path"], "/outer", "{engine} {te}");
            assert_eq!(echoed(&body)["body_len"], inner.len(), "{engine} {te}");
            let (status, _, body) = read_response(&mut c, &mut buf);
            assert_eq!(status, 200, "{engine} {te}");
            assert_eq!(echoed(&body)["path"], "/next", "{engine} {te}");
        }
        let mut c = connect(gw.proxy_addr());
        let req = format!(
            "POST /outer HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: {}\r\n\r\n{inner}",
            inner.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let (status, _, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}");
        assert_eq!(echoed(&body)["body_len"], inner.len(), "{engine}");
        assert_eq!(b.hits(), 7, "{engine}: no request of its own from a body");
    }
}

/// A client that closes in the middle of a head on a kept-alive
/// connection costs nothing but that connection.
#[test]
fn a_head_cut_off_closes_only_its_connection() {
    for engine in ENGINES {
        let b = Backend::start("b");
        let gw = gateway(engine, &[b.url()]);
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        c.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /cut HTTP/1.1\r\nHo")
            .unwrap();
        let (status, _, _) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        expect_closed(&mut c, &format!("{engine}: a head cut off"));
        let mut d = connect(gw.proxy_addr());
        d.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, _, body) = read_response(&mut d, &mut Vec::new());
        assert_eq!(status, 200, "{engine}");
        assert_eq!(echoed(&body)["path"], "/after", "{engine}");
        assert_eq!(b.hits(), 2, "{engine}: the cut head never reached it");
    }
}

/// The gate's decisions to close a connection reach the codec, whose
/// session pingora-core's wrapper does not pass `set_keepalive` to: a
/// failure answer on a plain GET says `Connection: close` and closes.
#[test]
fn a_failure_answer_on_a_plain_request_closes_the_connection() {
    for engine in ENGINES {
        let b = Backend::start("refusing");
        b.set_mode(Mode::Refuse);
        let gw = gateway(engine, &[b.url()]);
        let mut c = connect(gw.proxy_addr());
        c.write_all(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, head, _) = read_response(&mut c, &mut Vec::new());
        assert_eq!(status, 502, "{engine}: {head}");
        assert_eq!(
            header(&head, "connection"),
            Some("close"),
            "{engine}: {head}"
        );
        expect_closed(&mut c, &format!("{engine}: after a 502"));
    }
}

/// A plain head may carry hop-by-hop fields (`Connection: keep-alive`
/// with `Keep-Alive`, `TE`, `Proxy-*`): none goes upstream, the client's
/// other fields do, in their order, with tollgate's own in place of the
/// client's. The core engine writes such a head (a browser's) straight
/// from the client's, in its case; pingora-proxy rebuilds it, which writes
/// names lower-case.
#[test]
fn a_plain_requests_fields_go_upstream_as_sent_without_the_hop_by_hop_ones() {
    fields_go_upstream_as_sent("");
}

/// The same when a plugin edits the request header (the codec then gives
/// the header its map of the client's case, which the edited header is
/// written with).
#[test]
fn an_edited_requests_fields_go_upstream_as_sent_with_the_edit() {
    fields_go_upstream_as_sent(
        "settings:\n  plugins: [{proxy-rewrite: {headers: {set: {X-Added: yes}, remove: [x-gone]}}}]\n",
    );
}

/// A plain head with hop-by-hop fields, mixed case and duplicates, through
/// a gateway with `top` settings: what the upstream reads.
fn fields_go_upstream_as_sent(top: &str) {
    let edited = !top.is_empty();
    for engine in ENGINES {
        let (l, url) = listener();
        let backend = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("backend accept");
            let mut buf = Vec::new();
            let end = read_until(&mut s, &mut buf, b"\r\n\r\n", Instant::now() + IO);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&buf[..end]).into_owned()
        });
        let gw = gateway_full(engine, &[url], "", top);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            b"GET /fields?q=1 HTTP/1.1\r\nX-B: 1\r\nHost: x\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
              Proxy-Authorization: Basic eDp5\r\nx-b: 2\r\nX-MiXed: v\r\n\
              X-Forwarded-Proto: https\r\nX-Gone: 1\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let (status, head, _) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        let up = backend.join().expect("backend");
        assert!(
            up.starts_with("GET /fields?q=1 HTTP/1.1\r\n"),
            "{engine}: {up}"
        );
        let named = |name: &str| lines_of(&up, &[name]);
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "proxy-authorization",
        ] {
            assert!(
                named(gone).is_empty(),
                "{engine}: {gone} went upstream: {up}"
            );
        }
        let kept = |name: &str| lowered(&up, name);
        assert_eq!(kept("x-b"), ["x-b: 1", "x-b: 2"], "{engine}: {up}");
        assert_eq!(kept("x-mixed"), ["x-mixed: v"], "{engine}: {up}");
        assert_eq!(kept("host"), ["host: x"], "{engine}: {up}");
        if engine == "core" {
            assert_eq!(named("x-b"), ["X-B: 1", "x-b: 2"], "{engine}: {up}");
            assert_eq!(named("x-mixed"), ["X-MiXed: v"], "{engine}: {up}");
        }
        if engine == "core" && !edited {
            // Unedited, the client's fields go up in the order it sent
            // them (an edited header's map groups a name's lines).
            let theirs = lines_of(&up, &["x-b", "host", "x-mixed", "x-gone"]);
            assert_eq!(
                theirs,
                ["X-B: 1", "Host: x", "x-b: 2", "X-MiXed: v", "X-Gone: 1"],
                "{engine}: {up}"
            );
        }
        assert!(
            named("x-gone").len() == usize::from(!edited),
            "{engine}: {up}"
        );
        if edited {
            assert_eq!(kept("x-added"), ["x-added: yes"], "{engine}: {up}");
        }
        // Ours, not the client's.
        assert_eq!(
            named("x-forwarded-proto"),
            ["x-forwarded-proto: http"],
            "{engine}: {up}"
        );
        // The client's hop kept, the peer appended, in one line.
        assert_eq!(
            kept("x-forwarded-for"),
            ["x-forwarded-for: 192.0.2.7, 127.0.0.1"],
            "{engine}: {up}"
        );
        assert_eq!(named("x-request-id").len(), 1, "{engine}: {up}");
    }
}

/// An upstream's response head reaches the client with the upstream's
/// fields, each name as it spelled it and in its order (core engine), its
/// connection's own fields dropped (hop-by-hop, named by its `Connection`),
/// the status line HTTP/1.1 though it spoke HTTP/1.0, and tollgate's own
/// in place of any it sent:
/// written straight from the upstream's bytes when nothing edits the
/// response.
#[test]
fn an_upstreams_response_head_reaches_the_client_as_sent() {
    response_head_as_sent("");
}

/// The same when a plugin edits the response (its header map is built and
/// written).
#[test]
fn an_edited_response_head_reaches_the_client_with_the_edit() {
    response_head_as_sent(
        "settings:\n  plugins: [{response-rewrite: {headers: {set: {X-Added: yes}, remove: [x-gone]}}}]\n",
    );
}

/// The head a client reads from an upstream answering with hop-by-hop
/// fields, mixed case, duplicates and a spoofed `X-Request-Id`, through a
/// gateway with `top` settings.
fn response_head_as_sent(top: &str) {
    let edited = !top.is_empty();
    for engine in ENGINES {
        let (l, url) = listener();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("backend accept");
            let mut buf = Vec::new();
            read_until(&mut s, &mut buf, b"\r\n\r\n", Instant::now() + IO);
            s.write_all(
                b"HTTP/1.0 201 Made\r\nX-B: 1\r\nServer: origin\r\nx-b: 2\r\nX-MiXed: v\r\n\
                  X-Request-Id: spoofed\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n\
                  Connection: keep-alive, X-Internal\r\nKeep-Alive: timeout=1\r\n\
                  X-Internal: secret\r\nUpgrade: h2,h2c\r\n\
                  Proxy-Connection: keep-alive\r\nX-Gone: 1\r\nContent-Length: 2\r\n\r\nok",
            )
            .unwrap();
            // Held open: the connection goes back to the pool.
            let _ = read_until(&mut s, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        });
        let gw = gateway_full(engine, &[url], "", top);
        let mut c = connect(gw.proxy_addr());
        c.write_all(b"GET /answer HTTP/1.1\r\nHost: x\r\nX-Request-Id: client-id-1\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 201, "{engine}: {head}");
        assert_eq!(body, b"ok", "{engine}: {head}");
        let named = |name: &str| lines_of(&head, &[name]);
        let kept = |name: &str| lowered(&head, name);
        assert_eq!(kept("x-b"), ["x-b: 1", "x-b: 2"], "{engine}: {head}");
        assert_eq!(kept("server"), ["server: origin"], "{engine}: {head}");
        // The gateway's request id, not the upstream's.
        assert_eq!(
            kept("x-request-id"),
            ["x-request-id: client-id-1"],
            "{engine}: {head}"
        );
        assert_eq!(
            named("x-gone").len(),
            usize::from(!edited),
            "{engine}: {head}"
        );
        if edited {
            assert_eq!(kept("x-added"), ["x-added: yes"], "{engine}: {head}");
        }
        // The client's connection is the gateway's: HTTP/1.1 whatever
        // the upstream spoke, and none of the upstream connection's fields
        // (hop-by-hop, or named by its `Connection`): kept, which HTTP/1.1
        // says by itself (pingora-core spells it out).
        assert!(
            head.starts_with("HTTP/1.1 201 Made\r\n"),
            "{engine}: {head}"
        );
        let kept_alive: &[&str] = if engine == "pingora" {
            &["connection: keep-alive"]
        } else {
            &[]
        };
        assert_eq!(kept("connection"), kept_alive, "{engine}: {head}");
        for gone in ["keep-alive", "proxy-connection", "x-internal", "upgrade"] {
            assert!(named(gone).is_empty(), "{engine}: {gone}: {head}");
        }
        let date = named("date");
        assert!(
            date.len() == 1 && !date[0].contains("2001"),
            "{engine}: {head}"
        );
        if engine == "core" && !edited {
            // As the upstream sent them: its spelling, its order.
            let theirs = lines_of(&head, &["x-b", "server", "x-mixed", "x-gone"]);
            assert_eq!(
                theirs,
                [
                    "X-B: 1",
                    "Server: origin",
                    "x-b: 2",
                    "X-MiXed: v",
                    "X-Gone: 1"
                ],
                "{engine}: {head}"
            );
        }
    }
}

/// A plugin's method rewrite is the upstream's alone: a `HEAD` sent
/// upstream as a `GET` is answered to the client as a `HEAD` (the head,
/// no body), and the next request on the connection is read as one.
#[test]
fn a_head_sent_upstream_as_a_get_is_answered_as_a_head() {
    for engine in ENGINES {
        let (url, seen) =
            backend_answering(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let gw = gateway_full(
            engine,
            &[url],
            "",
            "settings:\n  plugins: [{proxy-rewrite: {method: GET}}]\n",
        );
        let mut c = connect(gw.proxy_addr());
        c.write_all(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let end = read_until(&mut c, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{engine}: {head}");
        assert_eq!(
            header(&head, "content-length"),
            Some("5"),
            "{engine}: {head}"
        );
        buf.drain(..end);
        let upstream = seen.recv_timeout(IO).expect("the upstream's request");
        assert_eq!(upstream, "GET /a HTTP/1.1", "{engine}");
        // No body followed the head: the next response starts right here.
        c.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert!(head.starts_with("HTTP/1.1 200"), "{engine}: {head}");
        assert_eq!(status, 200, "{engine}: {head}");
        assert_eq!(body, b"hello", "{engine}: {head}");
        assert_eq!(seen.recv_timeout(IO).unwrap(), "GET /b HTTP/1.1");
    }
}

/// Answers without a body (to a `HEAD`, a `204`, a `304`) written from the
/// upstream's bytes: the head only, with the gateway's rate-limit fields in
/// place of the upstream's spoofed ones, and the connection carries on.
#[test]
fn heads_without_a_body_reach_the_client_as_heads_with_our_rate_limit() {
    for engine in ENGINES {
        let (url, _) = backend_answering(|head| {
            if head.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\nX-RateLimit-Limit: 999\r\nContent-Length: 5\r\n\r\n"
            } else if head.contains("/none") {
                b"HTTP/1.1 204 No Content\r\nX-RateLimit-Remaining: 999\r\n\r\n"
            } else {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-RateLimit-Limit: 999\r\n\r\n"
            }
        });
        let gw = gateway_full(
            engine,
            &[url],
            "",
            "settings: { rate_limit: { rate: 1000, burst: 50 } }\n",
        );
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        for (request, status) in [
            ("HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET /none HTTP/1.1\r\nHost: x\r\n\r\n", 204),
            (
                "GET /cached HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\n",
                304,
            ),
        ] {
            c.write_all(request.as_bytes()).unwrap();
            let end = read_until(&mut c, &mut buf, b"\r\n\r\n", Instant::now() + IO);
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            let wanted = format!("HTTP/1.1 {status} ");
            assert!(head.starts_with(&wanted), "{engine}: {request}: {head}");
            assert_eq!(
                lowered(&head, "x-ratelimit-limit"),
                ["x-ratelimit-limit: 50"],
                "{engine}: {head}"
            );
            let remaining = lowered(&head, "x-ratelimit-remaining");
            assert!(
                remaining.len() == 1 && !remaining[0].ends_with("999"),
                "{engine}: {head}"
            );
            if status == 200 {
                assert_eq!(header(&head, "content-length"), Some("5"), "{engine}");
            }
            if status == 304 {
                assert_eq!(header(&head, "etag"), Some("\"v1\""), "{engine}");
            }
        }
        // Nothing followed the heads: the next answer starts right here.
        c.write_all(b"HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let end = read_until(&mut c, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 "), "{engine}: {head}");
    }
}
