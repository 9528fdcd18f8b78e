//! The echo backend answers, keeps connections alive and switches modes.

use std::time::{Duration, Instant};

use testkit::{http_get, http_request, raw_request, wait_for, Backend, Mode};

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn echoes_request_as_json() {
    let b = Backend::start("b1");
    let r = http_request(
        "POST",
        &format!("{}/a/b?x=1", b.url()),
        &[("x-foo", "bar"), ("host", "api.example.com")],
        Some(b"hello"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("b1"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["backend"], "b1");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/a/b?x=1");
    assert_eq!(j["headers"]["x-foo"], "bar");
    assert_eq!(j["headers"]["host"], "api.example.com");
    assert_eq!(j["body_len"], 5);
    assert_eq!(b.hits(), 1);
    assert_eq!(http_get(&b.url()).json()["path"], "/");
    assert_eq!(b.hits(), 2);
}

#[test]
fn keep_alive_pipelining_and_chunked_bodies() {
    let b = Backend::start("ka");
    let req = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n\
GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let start = Instant::now();
    let out = text(raw_request(b.addr(), req, Duration::from_secs(5)));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "server did not close"
    );
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert!(out.contains("\"path\":\"/two\""), "{out}");
    assert!(out.contains("\"body_len\":5"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(b.hits(), 3);
}

#[test]
fn malformed_request_gets_400() {
    let b = Backend::start("bad");
    let out = text(raw_request(
        b.addr(),
        b"NONSENSE\r\n\r\n",
        Duration::from_secs(5),
    ));
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = text(raw_request(
        b.addr(),
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        Duration::from_secs(5),
    ));
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(b.hits(), 0);
}

#[test]
fn modes_switch_at_run_time() {
    let b = Backend::start("m");
    let url = format!("{}/x", b.url());

    b.set_mode(Mode::Status(503));
    let r = http_get(&url);
    assert_eq!((r.status, r.json()["backend"].as_str()), (503, Some("m")));

    b.set_mode(Mode::Status(204));
    let r = http_get(&url);
    assert_eq!((r.status, r.body.as_str()), (204, ""));

    b.set_mode(Mode::Stall(Duration::from_millis(300)));
    let start = Instant::now();
    assert_eq!(http_get(&url).status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));

    b.set_mode(Mode::CloseMidResponse);
    let e = http_request("GET", &url, &[], None).unwrap_err();
    assert!(!e.is_empty());
    let raw = text(raw_request(
        b.addr(),
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    ));
    assert!(raw.contains("content-length: 1000"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n0123456789"), "{raw}");

    let hits = b.hits();
    b.set_mode(Mode::Refuse);
    let e = http_request("GET", &url, &[], None).unwrap_err();
    assert!(e.to_lowercase().contains("refused"), "{e}");
    assert!(std::net::TcpStream::connect(b.addr()).is_err());
    assert_eq!(b.hits(), hits);

    b.set_mode(Mode::Normal);
    assert_eq!(http_get(&url).status, 200);
    assert_eq!(b.hits(), hits + 1);
}

#[test]
fn refuse_drops_open_keepalive_connections() {
    use std::io::{Read, Write};
    let b = Backend::start("r");
    let mut s = std::net::TcpStream::connect(b.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    assert!(s.read(&mut buf).unwrap() > 0);
    b.set_mode(Mode::Refuse);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server side is closed: EOF (or reset), not a timeout.
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    match s.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

#[test]
fn dropping_stops_the_backend() {
    let b = Backend::start("d");
    let addr = b.addr();
    drop(b);
    wait_for("port closed", Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    });
}

#[test]
fn echo_backend_binary_serves() {
    let port = testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_echo-backend"))
        .args(["--name", "bin", "--listen", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/p");
    wait_for("echo-backend up", Duration::from_secs(10), || {
        http_request("GET", &url, &[], None).is_ok()
    });
    let r = http_get(&url);
    assert_eq!(r.json()["backend"], "bin");
    assert_eq!(r.header("x-backend"), Some("bin"));
    child.kill().unwrap();
    child.wait().unwrap();

    let port = testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_echo-backend"))
        .args(["--name=fx", &format!("--listen={addr}"), "--fixed-body"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/");
    wait_for("echo-backend up", Duration::from_secs(10), || {
        http_request("GET", &url, &[], None).is_ok()
    });
    let r = http_get(&url);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    child.kill().unwrap();
    child.wait().unwrap();
}
