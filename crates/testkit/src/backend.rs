//! A small hand-written HTTP/1.1 echo backend on tokio, with switchable
//! failure modes. Used by [`Backend`] in tests and by the `echo-backend` bin.
//!
//! Every answer carries `x-backend: <name>` and (unless `fixed_body`) a JSON
//! body `{"backend","method","path","headers","body_len"}` describing the
//! request it received, with Content-Length. Keep-alive and pipelining work;
//! request bodies may use Content-Length or chunked encoding.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rt::{block_on, rt};

/// How a backend answers; switch at run time with [`Backend::set_mode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the JSON echo body.
    Normal,
    /// The same JSON body with this status.
    Status(u16),
    /// Sleep this long, then answer as `Normal`.
    Stall(Duration),
    /// Send a 200 head with `Content-Length: 1000`, 10 body bytes, then close.
    CloseMidResponse,
    /// Close the listener (connects are refused) and drop open connections.
    /// Switching back to any other mode re-binds the same port.
    Refuse,
}

const MAX_HEAD: usize = 64 * 1024;
/// Spare room a read asks for.
const READ_CHUNK: usize = 16 * 1024;

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    hits: AtomicUsize,
    /// Connections accepted and not yet closed (by either side).
    open: AtomicUsize,
    fixed_body: bool,
    /// Bumped to make every open connection drop its socket.
    kill: watch::Sender<u64>,
}

impl Shared {
    fn new(name: &str, fixed_body: bool) -> Arc<Shared> {
        Arc::new(Shared {
            name: name.to_string(),
            mode: Mutex::new(Mode::Normal),
            hits: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            fixed_body,
            kill: watch::channel(0).0,
        })
    }

    fn mode(&self) -> Mode {
        self.mode.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops every open connection's socket, and returns once they are
    /// closed (a killed process serves nothing more: a connection task
    /// still scheduled would otherwise answer one more request on a
    /// connection a gateway kept alive). Bounded: 2 s at most.
    fn kill_connections(&self) {
        self.kill.send_modify(|v| *v += 1);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A running echo backend on 127.0.0.1; dropping it stops it.
pub struct Backend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    /// Start a backend named `name` on a free port of 127.0.0.1.
    pub fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Start on a given address (port 0 = any free port).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let std_listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("backend {name}: cannot bind {addr}: {e}"));
        let addr = std_listener.local_addr().unwrap();
        let shared = Shared::new(name, false);
        let task = spawn_accept(std_listener, shared.clone());
        Backend {
            shared,
            addr,
            accept: Mutex::new(Some(task)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Switch behaviour. Takes effect for requests read after this returns;
    /// `Refuse` has closed the listener and open connections when it returns,
    /// and leaving `Refuse` has re-bound the same port when it returns.
    pub fn set_mode(&self, m: Mode) {
        let mut accept = self.accept.lock().unwrap_or_else(|e| e.into_inner());
        let refuse = m == Mode::Refuse;
        if refuse {
            // Listener, then connections, then the mode: a request read
            // meanwhile is answered, so the only requests lost are those in
            // flight at the kill (as when a process dies), not every one
            // read while the listener was closing.
            if let Some(task) = accept.take() {
                task.abort();
                let _ = block_on(task);
            }
            self.shared.kill_connections();
        }
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = m;
        if !refuse && accept.is_none() {
            let deadline = Instant::now() + Duration::from_secs(10);
            let listener = loop {
                match std::net::TcpListener::bind(self.addr) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() > deadline => {
                        panic!("backend {}: cannot re-bind {}: {e}", self.name(), self.addr)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            *accept = Some(spawn_accept(listener, self.shared.clone()));
        }
    }

    /// Requests received and handled (counted once the whole request has been
    /// read, in every mode except `Refuse`; a stalled request counts at once).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Connections open to this backend now: a gateway's pooled keep-alive
    /// connections count until one side closes them.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.shared.kill_connections();
    }
}

fn spawn_accept(listener: std::net::TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    listener.set_nonblocking(true).expect("set_nonblocking");
    let _guard = rt().enter();
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    rt().spawn(accept_loop(listener, shared))
}

/// Serve the echo backend on `listener` until the process ends (used by the
/// `echo-backend` binary; runs on the caller's runtime). With `fixed_body`,
/// every answer is `200 ok\n` instead of the JSON echo.
pub async fn serve(listener: TcpListener, name: &str, fixed_body: bool) {
    accept_loop(listener, Shared::new(name, fixed_body)).await
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let mut kill = shared.kill.subscribe();
                shared.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = handle_conn(stream, shared.clone()) => {}
                        _ = kill.changed() => {}
                    }
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            // EMFILE and friends: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A connection with a read buffer; `buf` holds bytes read but not consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Read more bytes into `buf` (straight into its spare capacity: the
    /// benchmarks' origin, it must cost the load CPU little); Ok(false) on EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.buf).await?;
        Ok(n > 0)
    }

    async fn need(&mut self) -> io::Result<()> {
        if self.fill().await? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// Consume a line ending in CRLF (returned without it).
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                let line = self.buf[..p].to_vec();
                self.buf.drain(..p + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::ErrorKind::InvalidData.into());
            }
            self.need().await?;
        }
    }

    /// Consume and discard `n` body bytes.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let take = (self.buf.len() as u64).min(n) as usize;
            self.buf.drain(..take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.need().await?;
        }
    }

    /// Consume a chunked body, returning its decoded length.
    async fn skip_chunked(&mut self) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let line = self.read_line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| u64::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .ok_or(io::ErrorKind::InvalidData)?;
            if size == 0 {
                // trailers until the empty line
                while !self.read_line().await?.is_empty() {}
                return Ok(total);
            }
            self.skip(size).await?;
            total += size;
            if !self.read_line().await?.is_empty() {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request head, its fields borrowed from one copy of the head's bytes
/// (no copy of each field: bench/proxy.sh's origin shares the load CPU
/// with wrk). Names keep their case; lookups ignore it.
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    version: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Head<'a> {
    fn parse(raw: &'a [u8]) -> Option<Head<'a>> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut lines = text.split("\r\n");
        let mut parts = lines.next()?.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || method.is_empty() || !version.starts_with("HTTP/1.") {
            return None;
        }
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(':')?;
            if k.is_empty() || k.ends_with(' ') {
                return None;
            }
            headers.push((k, v.trim()));
        }
        Some(Head {
            method,
            target,
            version,
            headers,
        })
    }

    /// The first value of header `name`, matched in any case.
    fn header(&self, name: &str) -> Option<&'a str> {
        self.values(name).next()
    }

    /// Every value of header `name`, matched in any case, in order.
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.version == "HTTP/1.0" {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

async fn handle_conn(stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut c = Conn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
    };
    // The head being answered and the answer, kept across requests.
    let mut raw_head = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        // Request head.
        let mut scanned = 0;
        let head_len = loop {
            if let Some(p) = find(&c.buf[scanned..], b"\r\n\r\n") {
                break scanned + p + 4;
            }
            scanned = c.buf.len().saturating_sub(3);
            if c.buf.len() > MAX_HEAD {
                return simple_error(&mut c, 431).await;
            }
            if !c.fill().await? {
                return Ok(()); // EOF between requests
            }
        };
        raw_head.clear();
        raw_head.extend_from_slice(&c.buf[..head_len - 4]);
        c.buf.drain(..head_len);
        let head = Head::parse(&raw_head);
        let Some(head) = head else {
            return simple_error(&mut c, 400).await;
        };

        // Request body.
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            c.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body_len = if head.has_token("transfer-encoding", "chunked") {
            match c.skip_chunked().await {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return simple_error(&mut c, 400).await
                }
                Err(e) => return Err(e),
            }
        } else {
            match head.header("content-length").map(|v| v.parse::<u64>()) {
                None => 0,
                Some(Ok(n)) => {
                    c.skip(n).await?;
                    n
                }
                Some(Err(_)) => return simple_error(&mut c, 400).await,
            }
        };

        let mode = shared.mode();
        // A safety net: `set_mode(Refuse)` sets the mode only after the
        // connections are gone, so this drops a request only when
        // `kill_connections` gave up on one (its wait timed out).
        if mode == Mode::Refuse {
            return Ok(());
        }
        shared.hits.fetch_add(1, Ordering::SeqCst);
        let keep_alive = head.keep_alive();
        let status = match mode {
            Mode::Status(s) => s,
            Mode::Stall(d) => {
                tokio::time::sleep(d).await;
                200
            }
            Mode::CloseMidResponse => {
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\nx-backend: {}\r\n\r\n0123456789",
                    shared.name
                );
                c.stream.write_all(out.as_bytes()).await?;
                let _ = c.stream.shutdown().await;
                return Ok(());
            }
            _ => 200,
        };
        out.clear();
        response(&mut out, &shared, &head, body_len, status, keep_alive);
        c.stream.write_all(&out).await?;
        if !keep_alive {
            let _ = c.stream.shutdown().await;
            return Ok(());
        }
    }
}

/// Appends the answer to `head` to `out`. The benchmarks' `200 ok` (no test
/// header, `fixed_body`) is written without a format string's allocation;
/// a request's one allocation is its header list.
fn response(
    out: &mut Vec<u8>,
    shared: &Shared,
    head: &Head,
    body_len: u64,
    status: u16,
    keep_alive: bool,
) {
    // Test-chosen answers: `x-reply-header: name: value` adds a response
    // header, `x-reply-size: N` makes the body N bytes of 'x' (the first
    // such header counts).
    let size = head
        .header("x-reply-size")
        .and_then(|v| v.parse::<usize>().ok());
    let sized;
    let echo;
    let (ctype, body): (&str, &[u8]) = if let Some(n) = size {
        sized = vec![b'x'; n];
        ("application/octet-stream", &sized)
    } else if shared.fixed_body {
        ("text/plain", b"ok\n")
    } else {
        let mut hdrs = serde_json::Map::new();
        for (k, v) in &head.headers {
            hdrs.entry(k.to_ascii_lowercase())
                .and_modify(|prev| {
                    if let serde_json::Value::String(prev) = prev {
                        prev.push_str(", ");
                        prev.push_str(v);
                    }
                })
                .or_insert_with(|| (*v).into());
        }
        echo = serde_json::to_vec(&serde_json::json!({
            "backend": shared.name,
            "method": head.method,
            "path": head.target,
            "headers": hdrs,
            "body_len": body_len,
        }))
        .unwrap();
        ("application/json", &echo)
    };
    // Writes to a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    // 1xx, 204 and 304 never carry a body.
    let bodiless = status < 200 || status == 204 || status == 304;
    if !bodiless {
        let _ = write!(
            out,
            "content-type: {ctype}\r\ncontent-length: {}\r\n",
            body.len()
        );
    }
    let _ = write!(out, "x-backend: {}\r\n", shared.name);
    for extra in head.values("x-reply-header") {
        let _ = write!(out, "{extra}\r\n");
    }
    out.extend_from_slice(match (keep_alive, head.version == "HTTP/1.0") {
        (false, _) => b"connection: close\r\n\r\n",
        (true, true) => b"connection: keep-alive\r\n\r\n",
        (true, false) => b"\r\n",
    });
    if head.method != "HEAD" && !bodiless {
        out.extend_from_slice(body);
    }
}

async fn simple_error(c: &mut Conn, status: u16) -> io::Result<()> {
    let out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        reason(status)
    );
    c.stream.write_all(out.as_bytes()).await?;
    let _ = c.stream.shutdown().await;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
