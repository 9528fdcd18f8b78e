//! The core engine's HTTP/1.1 client to upstreams.
//!
//! pingora-core's client session parses the response into one header map
//! and hands out a clone, copies every body piece out of a 64 KiB buffer
//! it allocates per response, and works out the framing again from the
//! header map at each step: ~10,600 instructions of a ~48,000-instruction
//! proxied request (bench/README.md, "Per-core cost"). This one parses the
//! head once ([`head`]: framing and keep-alive settled in the same pass,
//! values left in the read buffer), hands out the body as slices of that
//! buffer, and decodes chunked bodies in place ([`chunked`]).
//!
//! Reuse is decided here, strictly: the response read to its end with
//! nothing after it, both sides allowing keep-alive, no upgrade, and the
//! request body sent whole.

mod chunked;
mod head;
mod transport;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::time::fast_timeout::fast_timeout;
use pingora::{Error, ErrorType::*, Result, RetryType};
use std::cell::RefCell;
use std::time::Duration;
use tokio::io::AsyncReadExt;

use crate::proxy::framing::chunk_size_line;
use crate::proxy::hop_by_hop::list_elements;
use crate::proxy::spares::{self, Spares};
use chunked::{Chunked, Step};
#[cfg(test)]
pub(crate) use head::parse as parse_head;
pub(crate) use head::Asked;
use head::Framing;
pub use head::Head;
pub use transport::Transport;

/// Room made for a read of the head or a small body.
const SMALL_READ: usize = 8 * 1024;
/// Room made for a read of a body bigger than that.
const BIG_READ: usize = 64 * 1024;
/// Read buffers a thread keeps for its next exchanges: one per exchange in
/// progress is what it uses.
const SPARE_BUFS: usize = 32;

thread_local! {
    /// Read buffers of exchanges that ended with the connection pooled,
    /// for the next ones: a buffer made per exchange (past jemalloc's
    /// small sizes) and its sharing record cost ~250 instructions to make
    /// and free, and their code a request's worth of cache lines.
    static SPARE: Spares<BytesMut> = const { RefCell::new(Vec::new()) };
}

/// A read buffer from the thread's spares, or an empty one.
fn spare_buf() -> BytesMut {
    spares::take(&SPARE).unwrap_or_default()
}

/// Keeps `buf` (empty, never grown for a big body: the spares stay small)
/// for a next exchange on this thread.
fn give_back(buf: BytesMut) {
    spares::give(&SPARE, buf, SPARE_BUFS);
}

/// The next piece of a response.
pub enum Piece {
    /// A head (an interim `1xx` or the final one); `true` when no body
    /// follows it.
    Head(Head, bool),
    /// A piece of the body (`None`: none, at its close-delimited end),
    /// raw bytes once upgraded; `true` when it ends the response.
    Body(Option<Bytes>, bool),
    /// The response had ended.
    Done,
}

/// An HTTP/1.1 exchange on one upstream connection (TCP or TLS).
pub struct UpstreamH1 {
    stream: Transport,
    /// Bytes read and not yet handed out.
    buf: BytesMut,
    /// Per read, not for the whole response.
    pub read_timeout: Option<Duration>,
    /// Per write.
    pub write_timeout: Option<Duration>,
    asked: Asked,
    out: BodyOut,
    read: Reading,
    /// A `101` answered an upgrade: both ways are byte streams.
    upgraded: bool,
    /// The upstream allows another request on this connection.
    keepalive: bool,
    /// Its own idle timeout, if it told (`Keep-Alive: timeout=N`).
    idle: Option<Duration>,
    /// The buffer grew past twice a small read (a big body or head): not
    /// kept for reuse.
    grown: bool,
}

/// The request body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyOut {
    /// This many bytes to go.
    Length(u64),
    Chunked,
    /// Upgraded: bytes as they come.
    Raw,
    /// Sent whole.
    Done,
}

/// Of `available` bytes, how many belong to a body (or chunk) with `left`
/// bytes to go, and how many it still has to go after them.
fn take(left: u64, available: usize) -> (usize, u64) {
    let n = usize::try_from(left).map_or(available, |left| left.min(available));
    (n, left - n as u64)
}

fn body_of_length(n: u64) -> BodyOut {
    if n > 0 {
        BodyOut::Length(n)
    } else {
        BodyOut::Done
    }
}

/// Where reading the response stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A head (again after an interim `1xx`).
    Head,
    /// This many body bytes to go.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes.
    UntilClose,
    Done,
}

impl UpstreamH1 {
    pub fn new(stream: Transport) -> Self {
        Self {
            stream,
            buf: spare_buf(),
            read_timeout: None,
            write_timeout: None,
            asked: Asked::default(),
            out: BodyOut::Done,
            read: Reading::Head,
            upgraded: false,
            keepalive: false,
            idle: None,
            grown: false,
        }
    }

    /// Sends the request head; its framing decides the body's (the engine
    /// settled it: one `Content-Length`, or `Transfer-Encoding: chunked`).
    pub async fn write_request_header(&mut self, req: &RequestHeader) -> Result<()> {
        let wire = http_req_header_to_wire(req).ok_or_else(|| {
            Error::explain(
                InvalidHTTPHeader,
                "request-line contains forbidden delimiter bytes or unsupported HTTP version",
            )
        })?;
        let tokens = |name| {
            req.headers
                .get_all(name)
                .iter()
                .flat_map(|v| list_elements(v.as_bytes()))
        };
        self.asked = Asked {
            head: req.method == http::Method::HEAD,
            upgrade: req.version == http::Version::HTTP_11
                && req.headers.contains_key(http::header::UPGRADE),
            close: tokens(http::header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"close")),
        };
        self.out = if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
            BodyOut::Chunked
        } else {
            body_of_length(crate::proxy::framing::declared_length(req).unwrap_or(0))
        };
        self.send(&[&wire], "writing the request header").await
    }

    /// Sends a request head written by the caller for a plain request (no
    /// upgrade, no `Connection` header): `head` for a `HEAD`, `body_len`
    /// bytes of body to follow.
    pub async fn write_plain_head(&mut self, wire: &[u8], head: bool, body_len: u64) -> Result<()> {
        self.asked = Asked {
            head,
            upgrade: false,
            close: false,
        };
        self.out = body_of_length(body_len);
        self.send(&[wire], "writing the request header").await
    }

    /// A piece of the request body (past a `Content-Length`, cut to it).
    pub async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        match self.out {
            BodyOut::Length(left) => {
                let (n, left) = take(left, data.len());
                self.send(&[&data[..n]], "writing the request body").await?;
                self.out = body_of_length(left);
                Ok(())
            }
            BodyOut::Chunked if !data.is_empty() => {
                let mut size = [0u8; 18];
                let chunk: [&[u8]; 3] = [chunk_size_line(data.len(), &mut size), data, b"\r\n"];
                self.send(&chunk, "writing the request body").await
            }
            BodyOut::Raw => self.send(&[data], "writing upgraded bytes").await,
            BodyOut::Chunked | BodyOut::Done => Ok(()),
        }
    }

    /// Ends the request body (the last chunk, for chunked).
    pub async fn finish_body(&mut self) -> Result<()> {
        if self.out == BodyOut::Chunked {
            self.send(&[b"0\r\n\r\n"], "ending the request body")
                .await?;
            self.out = BodyOut::Done;
        }
        Ok(())
    }

    /// After a `101`: the client's bytes go up as they come.
    pub fn maybe_upgrade_body_writer(&mut self) {
        if self.upgraded {
            self.out = BodyOut::Raw;
        }
    }

    /// The request asked for an upgrade.
    pub fn is_upgrade_req(&self) -> bool {
        self.asked.upgrade
    }

    /// The next piece of the response: its head (again after an interim
    /// `1xx`), a body piece, or the end.
    pub async fn read_response_piece(&mut self) -> Result<Piece> {
        match self.read {
            Reading::Head => {
                let head = self.read_head().await?;
                Ok(Piece::Head(head, self.read == Reading::Done))
            }
            Reading::Done => Ok(Piece::Done),
            _ => {
                let data = self.read_body().await?;
                Ok(Piece::Body(data, self.read == Reading::Done))
            }
        }
    }

    /// The connection and how long it may idle, when it can carry another
    /// request; `None` closes it.
    pub fn into_reusable(self) -> Option<(Transport, Option<Duration>)> {
        let reusable = self.keepalive
            && !self.upgraded
            && self.read == Reading::Done
            && self.out == BodyOut::Done
            && self.buf.is_empty();
        if !reusable {
            return None;
        }
        if !self.grown {
            give_back(self.buf);
        }
        Some((self.stream, self.idle))
    }

    async fn read_head(&mut self) -> Result<Head> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = head::parse(&mut self.buf, self.asked)? {
                    if head.interim() {
                        return Ok(head);
                    }
                    self.upgraded = head.upgraded;
                    self.keepalive = head.keepalive;
                    self.idle = head.idle;
                    self.read = match head.framing {
                        Framing::Empty => Reading::Done,
                        Framing::Length(n) => Reading::Length(n),
                        Framing::Chunked => Reading::Chunked(Chunked::Size),
                        Framing::UntilClose => Reading::UntilClose,
                    };
                    return Ok(head);
                }
            }
            let already = self.buf.len();
            if self.fill(SMALL_READ, "reading the response header").await? == 0 {
                let mut e = Error::explain(
                    ConnectionClosed,
                    format!(
                        "upstream closed while the response header was read ({already} bytes in)"
                    ),
                );
                // A pooled connection the upstream closed: safe to retry.
                e.retry = RetryType::ReusedOnly;
                return Err(e);
            }
        }
    }

    /// The next body piece (`None` at a close-delimited end).
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.read {
                Reading::Length(left) if !self.buf.is_empty() => {
                    let (n, left) = take(left, self.buf.len());
                    self.read = if left == 0 {
                        Reading::Done
                    } else {
                        Reading::Length(left)
                    };
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                Reading::Chunked(mut st) => {
                    let step = st.step(&mut self.buf).map_err(|e| {
                        Error::because(InvalidHTTPHeader, "malformed chunked response body", e)
                    })?;
                    self.read = Reading::Chunked(st);
                    match step {
                        Step::Data(data) => {
                            // The last chunk right behind: this piece ends it.
                            if st == Chunked::DataEnd && self.buf.starts_with(b"\r\n0\r\n\r\n") {
                                let _ = self.buf.split_to(7);
                                self.read = Reading::Done;
                            }
                            return Ok(Some(data));
                        }
                        Step::Done => {
                            self.read = Reading::Done;
                            return Ok(None);
                        }
                        Step::NeedMore => {}
                    }
                }
                Reading::UntilClose if !self.buf.is_empty() => {
                    return Ok(Some(self.buf.split().freeze()));
                }
                Reading::Done | Reading::Head => return Ok(None),
                Reading::Length(_) | Reading::UntilClose => {}
            }
            let room = match self.read {
                Reading::Length(n) if n <= SMALL_READ as u64 => SMALL_READ,
                _ => BIG_READ,
            };
            if self.fill(room, "reading the response body").await? == 0 {
                if self.read == Reading::UntilClose {
                    self.read = Reading::Done;
                    return Ok(None);
                }
                return Error::e_explain(
                    ConnectionClosed,
                    "upstream closed before the response body ended",
                );
            }
        }
    }

    /// Reads what the upstream sent into the buffer (room for `room`
    /// bytes made first); `0` when it closed.
    async fn fill(&mut self, room: usize, what: &'static str) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < room / 2 {
            self.buf.reserve(room);
            // Made room for a big body, or doubled for a big head: such a
            // buffer is not kept among the spares.
            self.grown |= room > SMALL_READ || self.buf.capacity() > 2 * SMALL_READ;
        }
        let read = self.stream.read_buf(&mut self.buf);
        // On a timer reused per thread (`timer`): this wait nearly always
        // happens, and a tokio timer made for it costs ~1,200 instructions.
        let read = match self.read_timeout {
            Some(t) => crate::proxy::deadline::within(t, read)
                .await
                .ok_or_else(|| Error::explain(ReadTimedout, what))?,
            None => read.await,
        };
        read.map_err(|e| {
            // An OS error (a reset) on a pooled connection is safe to retry;
            // a TLS error is not.
            let reset = e.raw_os_error().is_some();
            let mut e = Error::because(ReadError, what, e);
            if reset {
                e.retry = RetryType::ReusedOnly;
            }
            e
        })
    }

    /// Writes `pieces` and flushes them (one send), all under one write
    /// timeout.
    async fn send(&mut self, pieces: &[&[u8]], what: &'static str) -> Result<()> {
        let send = self.stream.send_all(pieces);
        // Pingora's timer, made only if the send has to wait (it nearly
        // never does): tokio's is made up front (~150 instructions).
        match self.write_timeout {
            Some(t) => fast_timeout(t, send)
                .await
                .map_err(|_| Error::explain(WriteTimedout, what))?,
            None => send.await,
        }
        .map_err(|e| Error::because(WriteError, what, e))
    }
}

#[cfg(test)]
mod spare_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// One exchange over a fresh connection whose upstream answers
    /// `response`: whether its read buffer went back to the spares.
    async fn kept(response: Vec<u8>) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 256];
            let _ = conn.read(&mut head).await.unwrap();
            conn.write_all(&response).await.unwrap();
            // Held open: the connection stays reusable.
            let _ = conn.read(&mut head).await;
        });
        let conn = Transport::connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        let mut up = UpstreamH1::new(conn);
        // Counted after the exchange took its buffer (a spare, if any).
        let before = spares::count(&SPARE);
        up.write_plain_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, 0)
            .await
            .unwrap();
        while !matches!(up.read_response_piece().await.unwrap(), Piece::Done) {}
        assert!(
            up.into_reusable().is_some(),
            "a whole response leaves it reusable"
        );
        upstream.abort();
        spares::count(&SPARE) > before
    }

    fn response(body: usize) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n").into_bytes();
        r.resize(r.len() + body, b'x');
        r
    }

    #[tokio::test]
    async fn a_small_exchanges_buffer_is_kept_a_grown_one_is_not() {
        assert!(kept(response(100)).await);
        // A body past a small read made the buffer room for a big one.
        assert!(!kept(response(256 * 1024)).await);
        // A head past twice a small read doubled it.
        let mut big_head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big_head.resize(big_head.len() + 20 * 1024, b'h');
        big_head.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        assert!(!kept(big_head).await);
        assert!(kept(response(0)).await);
    }
}
