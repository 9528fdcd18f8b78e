//! A minimal blocking HTTP/1.1 keep-alive client for tight polling: one
//! reused TCP connection, one small request, just enough response parsing
//! (status, `x-backend`, Content-Length / chunked framing). Any transport
//! or framing error drops the connection; the next call reconnects.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_HEAD: usize = 64 * 1024;

/// What a poll needs from a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// The echo backend's `x-backend` header, if any.
    pub backend: Option<String>,
}

pub struct KeepAlive {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections opened so far (1 = the connection was always reused).
    pub connects: u64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: "propagation.bench".into(),
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            connects: 0,
        }
    }

    /// `GET path`; Err on transport errors (the connection is then dropped).
    pub fn get(&mut self, path: &str) -> io::Result<Reply> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            self.stream = Some(s);
            self.buf.clear();
            self.connects += 1;
        }
        let r = self.exchange(path);
        if r.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        r
    }

    /// Reads more bytes into `buf`; Err on EOF.
    fn fill(&mut self) -> io::Result<()> {
        let s = self.stream.as_mut().expect("connected");
        let mut tmp = [0u8; 16 * 1024];
        let n = loop {
            match s.read(&mut tmp) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                let line = self.buf[..p].to_vec();
                self.buf.drain(..p + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            self.fill()?;
        }
    }

    fn skip(&mut self, mut n: usize) -> io::Result<()> {
        loop {
            let take = self.buf.len().min(n);
            self.buf.drain(..take);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill()?;
        }
    }

    fn exchange(&mut self, path: &str) -> io::Result<Reply> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: propagation-bench\r\n\r\n",
            self.host
        );
        self.stream
            .as_mut()
            .expect("connected")
            .write_all(req.as_bytes())?;
        let head_len = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("response head too large"));
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_len - 4]).into_owned();
        self.buf.drain(..head_len);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = testkit::status_code(status_line)
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let (mut length, mut chunked, mut close, mut backend) = (None, false, false, None);
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(v.parse::<usize>().map_err(|_| bad("bad content-length"))?)
                }
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "x-backend" => backend = Some(v.to_string()),
                _ => {}
            }
        }
        let bodiless = status < 200 || status == 204 || status == 304;
        if bodiless {
        } else if chunked {
            loop {
                let line = self.read_line()?;
                let size = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| bad("bad chunk size"))?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                self.skip(size)?;
                if !self.read_line()?.is_empty() {
                    return Err(bad("bad chunk end"));
                }
            }
        } else if let Some(n) = length {
            self.skip(n)?;
        } else {
            // Delimited by close: read to EOF.
            while self.fill().is_ok() {}
            close = true;
        }
        if close {
            self.stream = None;
            self.buf.clear();
        }
        Ok(Reply { status, backend })
    }
}
