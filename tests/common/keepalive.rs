//! A small keep-alive HTTP/1.1 client over `TcpStream`, for tests that
//! must know every request's fate exactly (what the client sent and what
//! came back, on which connection) or control the connection itself: its
//! local address, its Host header, when it is reused.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use testkit::Resp;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive HTTP/1.1 connection that reconnects when the server
/// closes it, optionally from a chosen local address (std cannot bind a
/// client socket, socket2 can). Like ureq and other pooling clients, an
/// idempotent request that meets a reused connection the server had
/// already closed (nothing of a response came back) is sent once more on a
/// fresh connection; any other transport error is the caller's.
pub struct Conn {
    addr: SocketAddr,
    /// The Host header; the address unless [`Conn::with_host`].
    host: String,
    from: Option<IpAddr>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Requests re-sent after a stale reused connection.
    pub stale_retries: usize,
}

/// Why an exchange failed, and whether any of the response had arrived.
struct Failed {
    error: String,
    answered: bool,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            host: addr.to_string(),
            from: None,
            stream: None,
            buf: Vec::new(),
            stale_retries: 0,
        }
    }

    /// A connection from the local address `from` (e.g. 127.0.0.2).
    pub fn bound_to(addr: SocketAddr, from: IpAddr) -> Conn {
        Conn {
            from: Some(from),
            ..Conn::new(addr)
        }
    }

    /// The same, sending `Host: host`.
    pub fn with_host(self, host: &str) -> Conn {
        Conn {
            host: host.to_string(),
            ..self
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let s: TcpStream = match self.from {
            None => TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?,
            Some(ip) => {
                use socket2::{Domain, Protocol, Socket, Type};
                let sock = Socket::new(
                    Domain::for_address(self.addr),
                    Type::STREAM,
                    Some(Protocol::TCP),
                )?;
                sock.bind(&SocketAddr::new(ip, 0).into())?;
                sock.connect_timeout(&self.addr.into(), IO_TIMEOUT)?;
                sock.into()
            }
        };
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    }

    /// Opens the connection now (so a load run does not time the dial).
    pub fn open(&mut self) {
        if self.stream.is_none() {
            let s = self
                .connect()
                .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr));
            self.stream = Some(s);
            self.buf.clear();
        }
    }

    /// The local address of the open connection.
    pub fn local_ip(&mut self) -> IpAddr {
        self.open();
        self.stream.as_ref().unwrap().local_addr().unwrap().ip()
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        self.request("GET", path, headers, None, false)
    }

    /// One request; `close` asks the server to close the connection after
    /// answering (so the next request opens a new one).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        close: bool,
    ) -> Result<Resp, String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host).into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if let Some(b) = body {
            req.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
        }
        if close {
            req.extend_from_slice(b"connection: close\r\n");
        }
        req.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            req.extend_from_slice(b);
        }
        // RFC 9110, 9.2.2.
        let idempotent = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        let mut resent = false;
        loop {
            let reused = self.stream.is_some();
            if !reused {
                let s = self
                    .connect()
                    .map_err(|e| format!("{method} {path}: connect {}: {e}", self.addr))?;
                self.stream = Some(s);
                self.buf.clear();
            }
            match self.exchange(&req, method == "HEAD") {
                Ok((resp, keep)) => {
                    if !keep {
                        self.stream = None;
                    }
                    return Ok(resp);
                }
                Err(f) => {
                    self.stream = None;
                    if reused && !f.answered && idempotent && !resent {
                        resent = true;
                        self.stale_retries += 1;
                        continue;
                    }
                    return Err(format!(
                        "{method} {path}: {} ({} connection{})",
                        f.error,
                        if reused { "reused" } else { "new" },
                        if f.answered {
                            ", after part of a response"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
    }

    /// Writes `req` and reads one response: (response, keep alive?).
    fn exchange(&mut self, req: &[u8], head_only: bool) -> Result<(Resp, bool), Failed> {
        let Conn { stream, buf, .. } = self;
        let s = stream.as_mut().expect("open connection");
        let unanswered = |error: String| Failed {
            error,
            answered: false,
        };
        let answered = |error: String| Failed {
            error,
            answered: true,
        };
        s.write_all(req)
            .map_err(|e| unanswered(format!("write: {e}")))?;
        let head_end = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i + 4;
            }
            let got_some = !buf.is_empty();
            fill(s, buf).map_err(|e| Failed {
                error: e,
                answered: got_some,
            })?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = testkit::status_code(status_line)
            .ok_or_else(|| answered(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let mut keep =
            status_line.starts_with("HTTP/1.1") && value("connection").as_deref() != Some("close");
        let mut body = Vec::new();
        let bodiless = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        if bodiless {
        } else if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    fill(s, buf).map_err(answered)?;
                };
                let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|e| answered(format!("bad chunk size {line:?}: {e}")))?;
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    fill(s, buf).map_err(answered)?;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = value("content-length") {
            let n: usize = n
                .parse()
                .map_err(|e| answered(format!("bad content-length: {e}")))?;
            while buf.len() < n {
                fill(s, buf).map_err(|e| {
                    answered(format!(
                        "{e} after {} of {n} body bytes (status {status})",
                        buf.len()
                    ))
                })?;
            }
            body.extend(buf.drain(..n));
        } else {
            // Delimited by the end of the connection.
            keep = false;
            while fill(s, buf).is_ok() {}
            body.append(buf);
        }
        Ok((
            Resp {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            keep,
        ))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk) {
        Ok(0) => Err("connection closed".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}
