//! What an upstream's response cannot do to the gateway, on both engines:
//! bytes past a response's end never reach another request (a poisoned
//! pooled connection), conflicting lengths are a 502, a malformed chunked
//! body ends the response unfinished rather than misread, chunk
//! extensions and trailers are not body, a folded header reaches the
//! client on one line (RFC 9112 §5.2). And what only the core engine's own
//! upstream client does: a response head over 64 KiB is a 502 (Pingora's
//! allows 1 MiB), and the upstream's `Keep-Alive: timeout` bounds pooling.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;

use common::engine_gateway;
use common::raw_http::{connect, read_framed, scripted_backend, IO};

use common::engines::ENGINES;

/// `GET path` on `c`: status, head, body.
fn get(c: &mut std::net::TcpStream, buf: &mut Vec<u8>, path: &str) -> (u16, String, Vec<u8>) {
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    read_framed(c, buf, false)
}

#[test]
fn bytes_past_a_response_end_never_reach_another_request() {
    for engine in ENGINES {
        let (url, _) = scripted_backend();
        let gw = engine_gateway(engine, &[url], "", "");
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        for round in 0..3 {
            let (s, h, b) = get(&mut c, &mut buf, "/overlong");
            assert_eq!((s, b.as_slice()), (200, &b"hello"[..]), "{engine}: {h}");
            // The next requests, on this client connection and a new one,
            // get their own answers, never the upstream's extra response.
            let (s, h, b) = get(&mut c, &mut buf, "/next");
            assert_eq!(
                (s, b.as_slice()),
                (200, &b"0:"[..]),
                "{engine} {round}: {h}"
            );
            let mut other = connect(gw.proxy_addr());
            let (s, h, b) = get(&mut other, &mut Vec::new(), "/other");
            assert_eq!(
                (s, b.as_slice()),
                (200, &b"0:"[..]),
                "{engine} {round}: {h}"
            );
        }
    }
}

#[test]
fn conflicting_content_lengths_from_an_upstream_are_a_502() {
    for engine in ENGINES {
        let (url, _) = scripted_backend();
        let gw = engine_gateway(engine, &[url], "", "");
        let mut c = connect(gw.proxy_addr());
        let (s, h, b) = get(&mut c, &mut Vec::new(), "/conflict");
        assert_eq!(s, 502, "{engine}: {h}");
        assert!(!String::from_utf8_lossy(&b).contains("hello"), "{engine}");
    }
}

#[test]
fn chunk_extensions_and_trailers_are_not_body() {
    for engine in ENGINES {
        let (url, conns) = scripted_backend();
        let gw = engine_gateway(engine, &[url], "", "");
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        let (s, h, b) = get(&mut c, &mut buf, "/trailers");
        assert_eq!((s, b.as_slice()), (200, &b"wikipedia"[..]), "{engine}: {h}");
        // Read to its end, the upstream connection is reused.
        let (s, _, b) = get(&mut c, &mut buf, "/next");
        assert_eq!((s, b.as_slice()), (200, &b"0:"[..]), "{engine}");
        assert_eq!(conns.load(Ordering::SeqCst), 1, "{engine}");
    }
}

/// `GET path` through `engine` on a new connection to the scripted
/// backend, read until the gateway closes it: what the client got.
fn until_closed(engine: &str, path: &str) -> String {
    let (url, _) = scripted_backend();
    let gw = engine_gateway(engine, &[url], "", "");
    let mut c = connect(gw.proxy_addr());
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    c.set_read_timeout(Some(IO)).unwrap();
    let mut got = Vec::new();
    let read = std::io::Read::read_to_end(&mut c, &mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        read.is_ok(),
        "{engine}: the connection is closed: {read:?} {text}"
    );
    text
}

#[test]
fn a_malformed_chunked_body_ends_the_response_unfinished() {
    for engine in ENGINES {
        // The header (and the good chunk) may have gone out; the response
        // must then end without its last chunk, the connection closed.
        let text = until_closed(engine, "/badchunk");
        assert!(
            text.starts_with("HTTP/1.1 502")
                || (text.starts_with("HTTP/1.1 200") && !text.contains("\r\n0\r\n\r\n")),
            "{engine}: a malformed body must not look complete: {text}"
        );
    }
}

#[test]
fn an_upstream_gone_after_the_head_leaves_the_client_a_cut_response() {
    for engine in ENGINES {
        // The head went out before the upstream failed (the core engine
        // holds it for the body's first bytes, and must still send it):
        // the client sees the 200 and then the connection closed short of
        // the length it promised, not an empty reply.
        let text = until_closed(engine, "/headonly");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "{engine}: {text:?}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 10"),
            "{engine}: {text:?}"
        );
        assert!(body.len() < 10, "{engine}: {text:?}");
    }
}

#[test]
fn a_folded_upstream_header_reaches_the_client_on_one_line() {
    for engine in ENGINES {
        let (url, _) = scripted_backend();
        let gw = engine_gateway(engine, &[url], "", "");
        let (s, h, b) = get(&mut connect(gw.proxy_addr()), &mut Vec::new(), "/folded");
        assert_eq!((s, b.as_slice()), (200, &b"ok"[..]), "{engine}: {h}");
        let folded = h
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-folded:"))
            .unwrap_or_else(|| panic!("{engine}: no x-folded header: {h}"));
        assert!(folded.trim_end().ends_with('b'), "{engine}: unfolded: {h}");
    }
}

#[test]
fn the_core_engine_refuses_a_response_head_over_64_kib() {
    let (url, _) = scripted_backend();
    let gw = engine_gateway("core", &[url], "", "");
    let (s, h, _) = get(&mut connect(gw.proxy_addr()), &mut Vec::new(), "/hugehead");
    assert_eq!(s, 502, "a 70 KiB response head: {h}");
    // The next response on a fresh upstream connection is whole.
    let (s, h, b) = get(&mut connect(gw.proxy_addr()), &mut Vec::new(), "/folded");
    assert_eq!((s, b.as_slice()), (200, &b"ok"[..]), "{h}");
}

#[test]
fn the_core_engine_pools_a_connection_no_longer_than_the_upstream_keeps_it() {
    let (url, conns) = scripted_backend();
    let gw = engine_gateway("core", &[url], "", "");
    let mut c = connect(gw.proxy_addr());
    let mut buf = Vec::new();
    // `Keep-Alive: timeout=1`: a second is too close to call, so the
    // connection is not pooled; each request opens its own.
    for n in 1..=3 {
        let (s, _, b) = get(&mut c, &mut buf, "/shortidle");
        assert_eq!((s, b.as_slice()), (200, &b"ok"[..]));
        assert_eq!(conns.load(Ordering::SeqCst), n);
    }
}
