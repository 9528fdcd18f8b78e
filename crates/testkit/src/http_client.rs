//! Blocking HTTP client for tests: 4xx/5xx are ordinary responses, no proxy,
//! no redirects followed, no connection pooling (each request gets a fresh
//! connection, so a restarted server never meets a stale pooled socket).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ureq::http;

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header names are lowercase; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    /// Body as text (invalid UTF-8 is replaced, see `String::from_utf8_lossy`).
    pub body: String,
}

impl Resp {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body parsed as JSON; panics with status and body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {:?}",
                self.status, self.body
            )
        })
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .allow_non_standard_methods(true)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent()
    })
}

/// GET `url`; panics (with the URL) only on transport errors.
pub fn http_get(url: &str) -> Resp {
    http_request("GET", url, &[], None).unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
}

/// Send one request. `Err` only on transport errors (refused, reset, timeout,
/// truncated body...); any HTTP status is `Ok`.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut builder = http::Request::builder()
        .method(
            http::Method::from_bytes(method.as_bytes())
                .map_err(|e| format!("bad method {method:?}: {e}"))?,
        )
        .uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent().run(builder.body(b).map_err(|e| format!("bad request: {e}"))?),
        None => agent().run(builder.body(()).map_err(|e| format!("bad request: {e}"))?),
    };
    let mut resp = result.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .map_err(|e| format!("{method} {url}: reading body (status {status}): {e}"))?;
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Raw TCP: connect, write `bytes`, then read until EOF, error or `timeout`
/// (total, including connect) and return whatever came back. Never panics on
/// network errors: a refused connection simply yields an empty vec. For
/// malformed-request and keep-alive tests.
/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`), for
/// the clients that read responses off a raw socket.
pub fn status_code(status_line: &str) -> Option<u16> {
    status_line.split(' ').nth(1)?.parse().ok()
}

pub fn raw_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return out;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(timeout));
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return out;
        }
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return out,
        }
    }
}
