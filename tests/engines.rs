//! Behaviours both proxy engines (`proxy.engine: core | pingora`) must
//! have, each checked against both: protocol upgrades relayed both ways
//! (and an idle one not held against its instance), `Expect: 100-continue`
//! answered without a stall or the loss of the connection, an upstream's
//! early answer to a big upload relayed, an upload streamed whole to an
//! upstream that answers while reading it, hop-by-hop headers not
//! forwarded, a retried body replayed only while it fits, and the engine
//! setting validated. Connection lifecycles (reuse, idle and slow clients,
//! shutdown) are in `engine_connections.rs`; the rest of the suite runs
//! against either engine with `TOLLGATE_PROXY_ENGINE`.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engines::{gateway, gateway_with, ENGINES};
use common::keepalive::Conn;
use common::raw_http::{
    connect, expect_closed, one_shot_backend, read_framed, read_response, read_until, IO,
};
use common::{bin, TempFile, READY};
use testkit::{run_cmd, Backend, Gateway, Mode};

#[test]
fn a_websocket_upgrade_is_relayed_both_ways_until_a_side_closes() {
    for engine in ENGINES {
        // The backend greets first, then echoes until the client closes.
        let (url, backend) = one_shot_backend(|mut s, _, _| {
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello",
            )
            .unwrap();
            let mut tmp = [0u8; 1024];
            loop {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(&tmp[..n]);
                        s.write_all(&out).unwrap();
                    }
                }
            }
        });
        let gw = gateway(engine, &[url]);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + IO;
        let end = read_until(&mut c, &mut buf, b"\r\n\r\n", deadline);
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{engine}: {head}");
        buf.drain(..end);
        // Upstream to client, then client to upstream and back, twice.
        let at = read_until(&mut c, &mut buf, b"hello", deadline);
        buf.drain(..at);
        for msg in ["ping", "second message"] {
            c.write_all(msg.as_bytes()).unwrap();
            let want = format!("echo:{msg}");
            let at = read_until(&mut c, &mut buf, want.as_bytes(), deadline);
            buf.drain(..at);
        }
        // The client closes its side: the upstream sees it, and the
        // gateway closes the client connection.
        c.shutdown(Shutdown::Write).unwrap();
        let seen = backend.join().expect("backend");
        assert!(seen.contains("upgrade: websocket"), "{engine}: {seen}");
        assert!(seen.contains("sec-websocket-key:"), "{engine}: {seen}");
        expect_closed(&mut c, &format!("{engine}: the client connection"));
    }
}

#[test]
fn an_idle_websocket_timing_out_counts_against_no_instance() {
    for engine in ENGINES {
        // Switches protocols, then says nothing until the gateway hangs up.
        let (url, backend) = one_shot_backend(|mut s, _, _| {
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )
            .unwrap();
            let mut tmp = [0u8; 1024];
            while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
        });
        // A second instance, so that ejecting the first is allowed (at most
        // half are); the first is picked first (smooth weighted round robin).
        let other = Backend::start("other");
        let body = format!(
            "routes:\n  - {{ id: all, paths: [\"/*rest\"], upstream: up }}\n\
             upstreams:\n  up: {{ nodes: [{{ addr: \"{url}\", weight: 1000 }}, {{ addr: \"{}\", weight: 1 }}], \
             timeout: {{ read_ms: 300 }}, \
             health_check: {{ passive: {{ consecutive_failures: 1, ejection_ms: 60000 }} }} }}\n",
            other.url()
        );
        let gw = Gateway::start_with_env(bin(), &body, &[("TOLLGATE_PROXY_ENGINE", engine)]);
        gw.wait_ready(READY);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let end = read_until(&mut c, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{engine}: {head}");
        // Idle past the upstream read timeout: the gateway ends the tunnel.
        expect_closed(&mut c, &format!("{engine}: the idle tunnel"));
        backend.join().expect("backend");
        let metrics = testkit::http_get(&gw.admin_url("/metrics")).body;
        let ejected = metrics
            .lines()
            .find(|l| l.starts_with("tollgate_instances{service=\"up\",state=\"ejected\"}"));
        assert_eq!(
            ejected,
            Some("tollgate_instances{service=\"up\",state=\"ejected\"} 0"),
            "{engine}: an idle WebSocket ejected its instance"
        );
    }
}

#[test]
fn expect_100_continue_is_answered_by_the_gateway_without_a_stall() {
    for engine in ENGINES {
        // Like many small servers, this backend never sends 100 Continue.
        let (url, backend) = one_shot_backend(|mut s, mut rest, head| {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while rest.len() < len {
                let mut tmp = [0u8; 1024];
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0);
                rest.extend_from_slice(&tmp[..n]);
            }
            let body = format!("got {} expect={}", rest.len(), head.contains("expect:"));
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(out.as_bytes()).unwrap();
        });
        let gw = gateway(engine, &[url]);
        let mut c = connect(gw.proxy_addr());
        let started = Instant::now();
        c.write_all(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        // The client sends nothing more until the go-ahead: a gateway that
        // waits for the body (or for the upstream's 100) never gives it.
        let mut buf = Vec::new();
        let end = read_until(
            &mut c,
            &mut buf,
            b"\r\n\r\n",
            started + Duration::from_secs(3),
        );
        let interim = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{engine}: {interim}");
        buf.drain(..end);
        c.write_all(b"hello").unwrap();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        // The upstream got the body, and no Expect to answer itself.
        assert_eq!(
            String::from_utf8_lossy(&body),
            "got 5 expect=false",
            "{engine}"
        );
        backend.join().expect("backend");
    }
}

#[test]
fn a_100_continue_costs_the_client_connection_nothing() {
    for engine in ENGINES {
        let b = Backend::start("echo");
        let gw = gateway(engine, &[b.url()]);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let end = read_until(&mut c, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        let interim = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(interim.starts_with("HTTP/1.1 100"), "{engine}: {interim}");
        buf.drain(..end);
        c.write_all(b"hello").unwrap();
        let (status, head, _) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{engine}: {head}"
        );
        // The same connection carries the next request.
        c.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        assert!(String::from_utf8_lossy(&body).contains("/b"), "{engine}");
    }
}

#[test]
fn an_upstream_answering_early_during_a_big_upload_is_relayed() {
    // After refusing at once (right after the head), a server either
    // discards the body, as nginx's lingering close does, or just closes
    // (unread bytes make that a reset).
    for (engine, drains) in ENGINES.iter().flat_map(|e| [(*e, true), (*e, false)]) {
        let (url, backend) = one_shot_backend(move |mut s, _, _| {
            let body = "{\"error\":\"too large\"}";
            let out = format!(
                "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(out.as_bytes()).unwrap();
            let mut tmp = [0u8; 64 * 1024];
            while drains && matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
        });
        let gw = gateway(engine, &[url]);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 52428800\r\n\r\n",
        )
        .unwrap();
        // Part of the 50 MiB, then wait for the answer: a proxy that must
        // send the whole body before it reads the response never answers.
        // 4 MiB, more than the sockets buffer: a gateway that closes without
        // reading the rest (no lingering close) resets the connection while
        // the client still writes, and the answer is lost.
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..256 {
            c.write_all(&chunk)
                .unwrap_or_else(|e| panic!("{engine} (drains: {drains}): writing the body: {e}"));
        }
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 413, "{engine} (drains: {drains}): {head}");
        assert_eq!(body, b"{\"error\":\"too large\"}", "{engine}");
        drop(c);
        backend.join().expect("backend");
    }
}

#[test]
fn an_upload_reaches_an_upstream_that_streams_its_answer_while_reading_it_whole() {
    const TOTAL: usize = 16 << 20;
    for engine in ENGINES {
        // Answers at once and reports progress while it reads the body more
        // slowly than the client sends it (the gateway's writes then wait
        // on flow control while the upstream's answer is readable); ends
        // with the count it got.
        let (url, backend) = one_shot_backend(|mut s, rest, _| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            let mut got = rest.len();
            let mut tmp = [0u8; 64 * 1024];
            let mut next_report = 256 * 1024;
            while got < TOTAL {
                match s.read(&mut tmp) {
                    Ok(n) if n > 0 => got += n,
                    _ => break,
                }
                if got >= next_report {
                    next_report += 256 * 1024;
                    let _ = s.write_all(b"1\r\n.\r\n");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let end = format!("got {got}");
            let _ = s.write_all(format!("{:x}\r\n{end}\r\n0\r\n\r\n", end.len()).as_bytes());
        });
        let gw = gateway(engine, &[url]);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut upload = c.try_clone().unwrap();
        let uploader = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            (0..TOTAL / chunk.len()).all(|_| upload.write_all(&chunk).is_ok())
        });
        let mut buf = Vec::new();
        let (status, head, body) = read_framed(&mut c, &mut buf, false);
        assert_eq!(status, 200, "{engine}: {head}");
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.ends_with(&format!("got {TOTAL}")),
            "{engine}: the upstream got {:?} of {TOTAL}",
            body.trim_start_matches('.')
        );
        assert!(uploader.join().unwrap(), "{engine}: the upload was cut");
        backend.join().expect("backend");
    }
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    for engine in ENGINES {
        let b = Backend::start("echo");
        let gw = gateway(engine, &[b.url()]);
        let mut c = connect(gw.proxy_addr());
        c.write_all(
            b"GET /hop HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Secret: s\r\n\
              TE: trailers\r\nX-Kept: k\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("echo JSON");
        let h = &echo["headers"];
        for gone in [
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "connection",
        ] {
            assert!(h.get(gone).is_none(), "{engine}: {gone} was forwarded: {h}");
        }
        assert_eq!(h["x-kept"], "k", "{engine}: {h}");
        // The client's connection is kept.
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{engine}: {head}"
        );
        c.write_all(b"GET /again HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .unwrap();
        let (status, _, _) = read_response(&mut c, &mut buf);
        assert_eq!(status, 200, "{engine}: second request on the connection");
    }
}

#[test]
fn the_engine_setting_is_validated_naming_it() {
    let good = "listen: [\"127.0.0.1:1\"]\nproxy: { engine: core }\nroutes: []\n";
    let bad = "listen: [\"127.0.0.1:1\"]\nproxy: { engine: bogus }\nroutes: []\n";
    let f = TempFile::new(good);
    let (code, out, err) = run_cmd(bin(), &["check", "-c", f.arg()]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let f = TempFile::new(bad);
    let (code, out, err) = run_cmd(bin(), &["check", "-c", f.arg()]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("proxy.engine"), "{err}");
    assert!(err.contains("bogus"), "{err}");

    // `run` refuses it too, as it refuses an unknown override, whichever
    // engine the file asks for.
    for (file, env) in [(bad, "core"), (good, "bogus"), (bad, "pingora")] {
        let f = TempFile::new(file);
        let out = Command::new(bin())
            .args(["run", "-c", f.arg()])
            .env("TOLLGATE_PROXY_ENGINE", env)
            .stdin(Stdio::null())
            .output()
            .expect("run tollgate");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{file} / {env}: {text}");
        let named = if env == "bogus" {
            "TOLLGATE_PROXY_ENGINE"
        } else {
            "proxy.engine"
        };
        assert!(text.contains(named), "{file} / {env}: {text}");
    }
}

#[test]
fn a_retried_body_is_replayed_only_while_it_fits_the_64_kib_buffer() {
    for engine in ENGINES {
        let (refuses, serves) = (Backend::start("refuses"), Backend::start("serves"));
        refuses.set_mode(Mode::Status(503));
        let gw = gateway_with(
            engine,
            &[refuses.url(), serves.url()],
            ", retry: { attempts: 1, on: [\"503\"], idempotent_only: false, budget: 1.0 }",
        );
        let mut conn = Conn::new(gw.proxy_addr());
        // Round robin alternates: within two requests one lands on the
        // refusing node first.
        let mut post = |len: usize| {
            for _ in 0..4 {
                let before = refuses.hits();
                let body = vec![b'y'; len];
                let r = conn
                    .request("POST", "/upload", &[], Some(&body), false)
                    .unwrap_or_else(|e| panic!("{engine}: POST {len}: {e}"));
                if refuses.hits() > before {
                    return r;
                }
            }
            panic!("{engine}: no POST landed on the refusing node");
        };
        let fits = post(60 * 1024);
        assert_eq!(fits.status, 200, "{engine}: {fits:?}");
        assert_eq!(fits.header("x-backend"), Some("serves"), "{engine}");
        assert_eq!(
            fits.json()["body_len"],
            60 * 1024,
            "{engine}: replayed whole"
        );
        let too_big = post(100 * 1024);
        assert_eq!(too_big.status, 503, "{engine}: {too_big:?}");
        assert_eq!(
            too_big.header("x-backend"),
            Some("refuses"),
            "{engine}: not retried"
        );
    }
}
