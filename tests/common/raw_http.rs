//! Raw HTTP/1.1 over `TcpStream` for tests that need exact control of the
//! bytes on both sides of the gateway: hand-written backends (scripted
//! answers, upgrades, early answers) and a client that reads any framing.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::free_port;

/// How long a single read or write may take.
pub const IO: Duration = Duration::from_secs(10);

/// A listener for a hand-written backend, on a free port.
pub fn listener() -> (TcpListener, String) {
    loop {
        let port = free_port();
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return (l, format!("http://127.0.0.1:{port}"));
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO)).unwrap();
    s.set_write_timeout(Some(IO)).unwrap();
    s
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads into `buf` until it contains `needle` (by `deadline`); returns the
/// offset just past it.
pub fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8], deadline: Instant) -> usize {
    loop {
        if let Some(p) = find(buf, needle) {
            return p + needle.len();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {:?} in time; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        s.set_read_timeout(Some(left)).unwrap();
        let mut tmp = [0u8; 16 * 1024];
        match s.read(&mut tmp) {
            Ok(0) => panic!(
                "closed before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            ),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => panic!(
                "reading for {:?}: {e}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            ),
        }
    }
}

/// One response: (status, head, body) with a Content-Length body; `buf`
/// may hold bytes already read.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    try_read_response(s, buf).unwrap_or_else(|e| panic!("{e}"))
}

/// [`read_response`], with the connection closing or failing (or a head
/// without a status) as an error instead of a panic: for a caller that
/// expects some connections to be refused.
pub fn try_read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, String, Vec<u8>), String> {
    s.set_read_timeout(Some(IO)).map_err(|e| e.to_string())?;
    let mut fill = |buf: &mut Vec<u8>, what: &str| {
        let mut tmp = [0u8; 16 * 1024];
        match s.read(&mut tmp) {
            Ok(0) => Err(format!(
                "closed before {what}; got {:?}",
                String::from_utf8_lossy(buf)
            )),
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Err(e) => Err(format!("reading {what}: {e}")),
        }
    };
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        fill(buf, "the response head")?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        fill(buf, "the body")?;
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Ok((status, head, body))
}

/// A backend that accepts one connection, reads the request head and
/// hands the connection (and any bytes past the head) to `then`; the
/// thread returns the head, lower-cased.
pub fn one_shot_backend(
    then: impl FnOnce(TcpStream, Vec<u8>, &str) + Send + 'static,
) -> (String, JoinHandle<String>) {
    let (l, url) = listener();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("backend accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let end = read_until(&mut s, &mut buf, b"\r\n\r\n", Instant::now() + IO);
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let rest = buf[end..].to_vec();
        then(s, rest, &head);
        head
    });
    (url, t)
}

/// A request as a scripted backend read it.
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one request (head and a Content-Length or chunked body); `None`
/// when the peer closed between requests.
pub fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 16 * 1024];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let mut first = head.split(' ');
    let method = first.next()?.to_ascii_uppercase();
    let path = first.next()?.to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_string)
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        decode_chunked(s, buf)
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        fill(s, buf, len);
        buf.drain(..len).collect()
    };
    Some(Seen { method, path, body })
}

/// Reads until `buf` holds at least `n` bytes.
pub fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        let mut tmp = [0u8; 16 * 1024];
        let got = s.read(&mut tmp).expect("reading a body");
        assert!(got > 0, "closed mid-body");
        buf.extend_from_slice(&tmp[..got]);
    }
}

/// Consumes a chunked body from `buf` (reading more as needed).
pub fn decode_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            let have = buf.len();
            fill(s, buf, have + 1);
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // No trailers are sent in these tests: the last CRLF.
            fill(s, buf, 2);
            buf.drain(..2);
            return body;
        }
        fill(s, buf, size + 2);
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// A response read off a client connection, framed as HTTP/1.1 says: no
/// body for HEAD, 1xx, 204 and 304; chunked or Content-Length otherwise.
pub fn read_framed(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, String, Vec<u8>) {
    let end = read_until(s, buf, b"\r\n\r\n", Instant::now() + IO);
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_string)
    };
    if head_request || status == 204 || status == 304 {
        return (status, head, Vec::new());
    }
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        decode_chunked(s, buf)
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unframed response: {head}"));
        fill(s, buf, len);
        buf.drain(..len).collect()
    };
    (status, head, body)
}

/// Serves scripted answers by path on every connection; counts them.
pub fn scripted_backend() -> (String, Arc<AtomicUsize>) {
    let (l, url) = listener();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut s, &mut buf) {
                    let out: Vec<u8> = match (req.method.as_str(), req.path.as_str()) {
                        (_, "/chunked") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                            5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                            .to_vec(),
                        (_, "/close") => {
                            // HTTP/1.0 style: the body ends when the connection does.
                            let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstreamed until close",
                            );
                            return;
                        }
                        (_, "/nocontent") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                        (_, "/headonly") => {
                            // The head, then gone before a byte of its body.
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
                            return;
                        }
                        // What an upstream must not get away with, or must
                        // not be misread for (tests/upstream_responses.rs).
                        (_, "/overlong") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\
                            helloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"
                            .to_vec(),
                        (_, "/conflict") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\
                            Content-Length: 6\r\n\r\nhello!"
                            .to_vec(),
                        (_, "/trailers") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                            4;name=v\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"
                            .to_vec(),
                        (_, "/badchunk") => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
                                .to_vec()
                        }
                        (_, "/folded") => b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\
                            Content-Length: 2\r\n\r\nok"
                            .to_vec(),
                        (_, "/hugehead") => format!(
                            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                            "a".repeat(70 * 1024)
                        )
                        .into_bytes(),
                        (_, "/shortidle") => {
                            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok"
                                .to_vec()
                        }
                        (_, "/notmod") => {
                            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n".to_vec()
                        }
                        ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec(),
                        _ => {
                            let body = format!(
                                "{}:{}",
                                req.body.len(),
                                String::from_utf8_lossy(&req.body)
                            );
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .into_bytes()
                        }
                    };
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, conns)
}

/// Reads until the gateway closes `c` (within the read deadline, `IO`),
/// expecting nothing more on it; `what` names the connection in a failure.
pub fn expect_closed(c: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    c.set_read_timeout(Some(IO)).unwrap();
    c.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("{what}: not closed by the gateway: {e}"));
    assert!(
        rest.is_empty(),
        "{what}: unexpected bytes {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// A backend answering each request head with `answer(head)`, over
/// keep-alive connections (whatever the method: a `HEAD` gets what it
/// is given); each request line goes to the channel.
pub fn backend_answering(
    answer: fn(&str) -> &'static [u8],
) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let (l, url) = listener();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut out = s.try_clone().expect("clone");
                let mut lines = std::io::BufReader::new(s);
                let mut head = String::new();
                loop {
                    head.clear();
                    while lines.read_line(&mut head).unwrap_or(0) > 0 && !head.ends_with("\r\n\r\n")
                    {
                    }
                    if head.is_empty() {
                        return;
                    }
                    let _ = tx.send(head.lines().next().unwrap_or_default().to_string());
                    if out.write_all(answer(&head)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}
