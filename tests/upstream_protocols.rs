//! Upstreams beyond plain HTTP/1.1 (both engines: scripts/test.sh runs
//! this file again with TOLLGATE_PROXY_ENGINE=pingora): `https://` nodes
//! verified against the system roots or the policy's CA (and refused when
//! the certificate is expired or unknown, with the reason in the log, not
//! the client's body), `h2c://` nodes, and gRPC (`grpc://`) passed through
//! with every call kind, metadata and trailers, from an h2c or a TLS
//! client; the gateway's own errors for gRPC requests are gRPC statuses,
//! and `grpc-timeout` is the request's deadline. Real parts: nginx, a
//! grpcio server and client, curl.

mod common;

use common::etcd_gw::TempDir;
use common::h2_frames::{frame, head_block, RawH2, END_HEADERS, END_STREAM, HEADERS};
use common::tls::{curl, curl_https, make_cert, make_expired_cert};
use common::upstreams::{grpc_client, grpc_server, nginx};
use common::{bin, READY};
use testkit::{free_port, wait_for, Gateway};

fn gateway(body: &str, listeners: &[&str]) -> Gateway {
    let gw = Gateway::start_with_listeners(bin(), body, listeners);
    gw.wait_ready(READY);
    gw
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn https_upstreams_are_verified_and_a_bad_certificate_is_a_502_with_the_reason_logged() {
    let dir = TempDir::new("up-https");
    let good = make_cert(dir.path(), "up", &["up.test"]);
    let expired = make_expired_cert(dir.path(), "old", &["old.test"]);
    let tls_nginx = |c: &common::tls::TestCert, text: &str| {
        nginx(
            "ssl",
            &format!(
                "ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 \"{text}\"; }}",
                c.cert_file.display(),
                c.key_file.display()
            ),
        )
    };
    let up = tls_nginx(&good, "from-tls-upstream");
    let old = tls_nginx(&expired, "from-expired");
    let gw = gateway(
        &format!(
            "routes:\n\
             - {{ id: pinned, paths: [\"/pinned\"], upstream: pinned }}\n\
             - {{ id: system, paths: [\"/system\"], upstream: system }}\n\
             - {{ id: noverify, paths: [\"/noverify\"], upstream: noverify }}\n\
             - {{ id: wrongname, paths: [\"/wrongname\"], upstream: wrongname }}\n\
             - {{ id: expired, paths: [\"/expired\"], upstream: expired }}\n\
             upstreams:\n\
             \x20\x20pinned: {{ nodes: [\"https://127.0.0.1:{p}\"], tls: {{ ca_pem: {ca}, sni: up.test }} }}\n\
             \x20\x20system: {{ nodes: [\"https://127.0.0.1:{p}\"], tls: {{ sni: up.test }} }}\n\
             \x20\x20noverify: {{ nodes: [\"https://127.0.0.1:{p}\"], tls: {{ verify: false }} }}\n\
             \x20\x20wrongname: {{ nodes: [\"https://127.0.0.1:{p}\"], tls: {{ ca_pem: {ca}, sni: other.test }} }}\n\
             \x20\x20expired: {{ nodes: [\"https://127.0.0.1:{o}\"], tls: {{ ca_pem: {old_ca}, sni: old.test }} }}\n",
            p = up.port,
            o = old.port,
            ca = json_str(&good.cert_pem),
            old_ca = json_str(&expired.cert_pem),
        ),
        &[],
    );
    let r = curl(&[&gw.url("/pinned")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "from-tls-upstream"),
        "{r:?}"
    );
    let r = curl(&[&gw.url("/noverify")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "from-tls-upstream"),
        "{r:?}"
    );
    for path in ["/system", "/wrongname", "/expired"] {
        let r = curl(&[&gw.url(path)]);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert!(
            !r.body.to_lowercase().contains("certificate"),
            "{path}: reason leaked: {}",
            r.body
        );
    }
    // Each reason in the log (written just after the 502 is sent).
    for reason in [
        "UnknownIssuer",
        "certificate not valid for name",
        "certificate expired",
    ] {
        wait_for(&format!("{reason:?} in the log"), READY, || {
            gw.logs().contains(reason)
        });
    }
}

#[test]
fn an_h2c_upstream_serves_http1_and_http2_clients() {
    // nginx ends each HTTP/2 connection (GOAWAY) after 3 requests: the
    // gateway must take that in its stride, on a new connection.
    let up = nginx(
        "http2",
        "keepalive_requests 3; location / { return 200 \"from-h2c-upstream\"; }",
    );
    let gw = gateway(
        &format!(
            "routes: [{{ id: a, paths: [\"/*rest\"], upstream: h }}]\n\
             upstreams: {{ h: {{ nodes: [\"h2c://127.0.0.1:{}\"] }} }}\n",
            up.port
        ),
        &["h2c: true"],
    );
    let r = curl(&["--http1.1", &gw.url("/x")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "from-h2c-upstream"),
        "{r:?}"
    );
    let h2c = format!("http://{}/y", gw.listener(0));
    let r = curl(&["--http2-prior-knowledge", &h2c]);
    assert_eq!(
        (r.status, r.version.as_str(), r.body.as_str()),
        (200, "2", "from-h2c-upstream"),
        "{r:?}"
    );
    for i in 0..10 {
        let r = curl(&["--http1.1", &gw.url(&format!("/seq{i}"))]);
        assert_eq!(r.status, 200, "request {i} after GOAWAYs: {r:?}");
    }
    // Many concurrent streams over the pooled HTTP/2 connections.
    let out = std::process::Command::new("h2load")
        .args(["-n", "500", "-c", "2", "-m", "20", &h2c])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("500 succeeded, 0 failed"), "{text}");
}

/// A `HEAD` a plugin sends to an HTTP/2 upstream as a `GET` is answered
/// as a `HEAD`: the upstream's head (it saw a GET), and no body to an
/// HTTP/1.1 or an HTTP/2 client.
#[test]
fn a_head_sent_to_an_h2c_upstream_as_a_get_gets_the_head_alone() {
    let up = nginx(
        "http2",
        "location / { add_header X-Method $request_method always; return 200 \"body-of-get\"; }",
    );
    let gw = gateway(
        &format!(
            "settings:\n  plugins: [{{proxy-rewrite: {{method: GET}}}}]\n\
             routes: [{{ id: a, paths: [\"/*rest\"], upstream: h }}]\n\
             upstreams: {{ h: {{ nodes: [\"h2c://127.0.0.1:{}\"] }} }}\n",
            up.port
        ),
        &["h2c: true"],
    );
    let r = curl(&["--http1.1", "--head", &gw.url("/x")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.headers.contains("x-method: get"), "{r:?}");
    let mut c = RawH2::connect(gw.listener(0));
    let block = head_block("api.test", "/y");
    assert!(c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)));
    wait_for("the stream's end", READY, || {
        c.ended.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    assert_eq!(c.responses(), 1);
    assert_eq!(c.data_bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The gateway's connection to the upstream serves on.
    let r = curl(&["--http1.1", &gw.url("/z")]);
    assert_eq!((r.status, r.body.as_str()), (200, "body-of-get"), "{r:?}");
}

#[test]
fn grpc_calls_of_every_kind_pass_through_with_metadata_and_trailers() {
    let dir = TempDir::new("up-grpc");
    let server = grpc_server();
    let cert = make_cert(dir.path(), "grpc", &["grpc.test"]);
    let gw = gateway(
        &format!(
            "tls: {{ default_cert: {{ cert_file: {:?}, key_file: {:?} }} }}\n\
             routes: [{{ id: g, paths: [\"/test.Echo/*method\"], upstream: g }}]\n\
             upstreams: {{ g: {{ nodes: [\"grpc://127.0.0.1:{}\"] }} }}\n",
            cert.cert_file, cert.key_file, server.port
        ),
        &["h2c: true", "tls: true"],
    );
    let h2c = gw.listener(0).to_string();
    let tls = gw.listener(1).to_string();
    let ca = cert.cert_file.display().to_string();
    for out in [
        grpc_client(&["client", &h2c]),
        grpc_client(&["client", &tls, &ca, "grpc.test"]),
    ] {
        assert_eq!(out["unary"]["resp"], "echo:hi", "{out}");
        assert_eq!(out["unary"]["initial"]["x-initial"], "i1", "{out}");
        assert_eq!(out["unary"]["trailers"]["x-trailer"], "t1", "{out}");
        assert_eq!(
            out["server_stream"],
            serde_json::json!(["part0", "part1", "part2"])
        );
        assert_eq!(out["client_stream"], "a+b+c");
        assert_eq!(out["bidi"], serde_json::json!(["re:x", "re:y"]));
        // The upstream's own error, status, message and trailers intact.
        assert_eq!(out["fail"]["code"], "NOT_FOUND", "{out}");
        assert_eq!(out["fail"]["details"], "no such thing");
        assert_eq!(out["fail"]["trailers"]["x-why"], "because");
        assert_eq!(out["deadline"]["code"], "DEADLINE_EXCEEDED", "{out}");
        // No route at the gateway: a gRPC status, not JSON.
        assert_eq!(out["no_route"]["code"], "UNIMPLEMENTED", "{out}");
        assert_eq!(out["no_route"]["details"], "no route");
    }
}

#[test]
fn the_gateway_s_own_grpc_errors_are_grpc_statuses_and_grpc_timeout_is_the_deadline() {
    let server = grpc_server();
    let down = free_port();
    let gw = gateway(
        &format!(
            "routes:\n\
             - {{ id: g, paths: [\"/test.Echo/*method\"], upstream: g }}\n\
             - {{ id: down, paths: [\"/down.Svc/*method\"], upstream: down }}\n\
             - {{ id: limited, paths: [\"/limited.Svc/*method\"], upstream: g, rate_limit: {{ rate: 1, burst: 1 }} }}\n\
             upstreams:\n\
             \x20\x20g: {{ nodes: [\"grpc://127.0.0.1:{}\"] }}\n\
             \x20\x20down: {{ nodes: [\"grpc://127.0.0.1:{down}\"] }}\n",
            server.port
        ),
        &["h2c: true"],
    );
    let target = gw.listener(0).to_string();
    let out = grpc_client(&["call", &target, "/down.Svc/Call"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    grpc_client(&["call", &target, "/limited.Svc/Call"]);
    let out = grpc_client(&["call", &target, "/limited.Svc/Call"]);
    assert_eq!(out["code"], "RESOURCE_EXHAUSTED", "{out}");

    // grpc-timeout 300 ms on a call the server answers after 3 s: the
    // gateway ends it with DEADLINE_EXCEEDED (the client sets no deadline
    // of its own here, so only the gateway can have ended it).
    let frame = dir_file(&[0, 0, 0, 0, 1, b'3']);
    let url = format!("http://{target}/test.Echo/Slow");
    let data = format!("@{}", frame.1.display());
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        "grpc-timeout: 300m",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.headers.contains("grpc-status: 4"), "{}", r.headers);
    wait_for("the 504 in the access log", READY, || {
        gw.logs().contains("\"path\":\"/test.Echo/Slow\"")
    });
}

/// A file holding `bytes` (and the dir that keeps it).
fn dir_file(bytes: &[u8]) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("grpc-frame");
    let path = dir.path().join("frame");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn a_tls_listener_serves_curl_with_sni_for_an_https_upstream() {
    // End to end over TLS on both sides: client -TLS-> gateway -TLS-> nginx.
    let dir = TempDir::new("up-tls-both");
    let front = make_cert(dir.path(), "front", &["front.test"]);
    let back = make_cert(dir.path(), "back", &["back.test"]);
    let up = nginx(
        "ssl",
        &format!(
            "ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 \"$ssl_server_name\"; }}",
            back.cert_file.display(),
            back.key_file.display()
        ),
    );
    let gw = gateway(
        &format!(
            "tls: {{ default_cert: {{ cert_file: {:?}, key_file: {:?} }} }}\n\
             routes: [{{ id: a, paths: [\"/*rest\"], upstream: b }}]\n\
             upstreams: {{ b: {{ nodes: [\"https://127.0.0.1:{}\"], tls: {{ ca_pem: {}, sni: back.test }} }} }}\n",
            front.cert_file,
            front.key_file,
            up.port,
            json_str(&back.cert_pem)
        ),
        &["tls: true"],
    );
    let r = curl_https(
        gw.listener(0),
        "front.test",
        &front.cert_file,
        "/",
        &["--http2"],
    );
    // nginx saw the SNI the policy set.
    assert_eq!((r.status, r.body.as_str()), (200, "back.test"), "{r:?}");
}

#[test]
fn websocket_over_tls_is_relayed_and_logged() {
    let dir = TempDir::new("up-wss");
    let server = common::upstreams::ws_server();
    let cert = make_cert(dir.path(), "ws", &["ws.test"]);
    let gw = gateway(
        &format!(
            "tls: {{ default_cert: {{ cert_file: {:?}, key_file: {:?} }} }}\n\
             access_log: {{ enabled: true, path: \"-\" }}\n\
             routes: [{{ id: ws, paths: [\"/ws\"], upstream: w }}]\n\
             upstreams: {{ w: {{ nodes: [\"http://127.0.0.1:{}\"] }} }}\n",
            cert.cert_file, cert.key_file, server.port
        ),
        &["tls: true"],
    );
    let url = format!("wss://127.0.0.1:{}/ws", gw.listener(0).port());
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(common::upstreams::ws_script())
        .args([
            "client",
            &url,
            &cert.cert_file.display().to_string(),
            "ws.test",
            "one",
            "two",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"["echo:one", "echo:two"]"#
    );
    wait_for("the upgraded connection in the access log", READY, || {
        gw.logs().contains(
            "\"scheme\":\"https\",\"host\":\"127.0.0.1\",\"path\":\"/ws\",\"route\":\"ws\"",
        ) && gw.logs().contains("\"status\":101")
    });
}

#[test]
fn mtls_to_an_upstream_shows_the_policy_s_client_certificate() {
    let dir = TempDir::new("up-mtls");
    let server = make_cert(dir.path(), "server", &["server.test"]);
    let client = make_cert(dir.path(), "gateway-client", &["gateway.test"]);
    let up = nginx(
        "ssl",
        &format!(
            "ssl_certificate {}; ssl_certificate_key {}; ssl_client_certificate {}; ssl_verify_client on; \
             location / {{ return 200 \"$ssl_client_s_dn\"; }}",
            server.cert_file.display(),
            server.key_file.display(),
            client.cert_file.display()
        ),
    );
    let gw = gateway(
        &format!(
            "routes:\n\
             - {{ id: with, paths: [\"/with\"], upstream: with }}\n\
             - {{ id: without, paths: [\"/without\"], upstream: without }}\n\
             upstreams:\n\
             \x20\x20with: {{ nodes: [\"https://127.0.0.1:{p}\"], tls: {{ ca_pem: {ca}, sni: server.test, client_cert: {cc}, client_key: {ck} }} }}\n\
             \x20\x20without: {{ nodes: [\"https://127.0.0.1:{p}\"], tls: {{ ca_pem: {ca}, sni: server.test }} }}\n",
            p = up.port,
            ca = json_str(&server.cert_pem),
            cc = json_str(&client.cert_pem),
            ck = json_str(&client.key_pem),
        ),
        &[],
    );
    let r = curl(&[&gw.url("/with")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "CN=gateway-client"),
        "{r:?}"
    );
    // nginx refuses a client without a certificate.
    let r = curl(&[&gw.url("/without")]);
    assert_eq!(r.status, 400, "{r:?}");
}

/// A hand-made HTTP/2 upstream: its first connection answers the first
/// request's header and part of its body, then sends GOAWAY with
/// INTERNAL_ERROR and closes; every later connection answers "ok".
fn goaway_upstream() -> (u16, std::thread::JoinHandle<()>) {
    use common::h2_frames::{frame, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE, SETTINGS};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate().take(4) {
            let Ok(mut c) = conn else { return };
            let mut preface = [0u8; 24];
            if c.read_exact(&mut preface).is_err() || preface != PREFACE {
                continue;
            }
            let _ = c.write_all(&frame(SETTINGS, 0, 0, &[]));
            let mut head = [0u8; 9];
            while c.read_exact(&mut head).is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if c.read_exact(&mut payload).is_err() {
                    break;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                match head[3] {
                    SETTINGS if head[4] & 1 == 0 => {
                        let _ = c.write_all(&frame(SETTINGS, 1, 0, &[]));
                    }
                    HEADERS if n == 0 => {
                        let _ = c.write_all(&frame(HEADERS, END_HEADERS, stream, &[0x88]));
                        let _ = c.write_all(&frame(0, 0, stream, b"partial"));
                        let mut goaway = stream.to_be_bytes().to_vec();
                        goaway.extend_from_slice(&2u32.to_be_bytes()); // INTERNAL_ERROR
                        let _ = c.write_all(&frame(GOAWAY, 0, 0, &goaway));
                        break;
                    }
                    HEADERS => {
                        let _ = c.write_all(&frame(HEADERS, END_HEADERS, stream, &[0x88]));
                        let _ = c.write_all(&frame(0, END_STREAM, stream, b"ok"));
                    }
                    _ => {}
                }
            }
        }
    });
    (port, handle)
}

#[test]
fn an_h2_upstream_that_goes_away_mid_stream_fails_that_request_only() {
    let (port, _server) = goaway_upstream();
    let gw = gateway(
        &format!(
            "routes: [{{ id: a, paths: [\"/*rest\"], upstream: h }}]\n\
             upstreams: {{ h: {{ nodes: [\"h2c://127.0.0.1:{port}\"] }} }}\n"
        ),
        &[],
    );
    // The first answer is cut off: the client does not get a whole 200.
    let first = curl(&[&gw.url("/first")]);
    assert!(
        !(first.ok && first.status == 200 && first.body == "ok"),
        "{first:?}"
    );
    assert!(!first.body.contains("ok"), "{first:?}");
    eprintln!(
        "first request: status {} body {:?} error {:?}",
        first.status, first.body, first.stderr
    );
    // The next request goes over a new connection and is served.
    let next = curl(&[&gw.url("/next")]);
    assert_eq!((next.status, next.body.as_str()), (200, "ok"), "{next:?}");
}
