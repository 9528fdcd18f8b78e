//! The core engine's HTTP/1.1 server side for plain requests.
//!
//! pingora-core's HTTP/1 session is made anew for every request of a
//! connection (its digest boxed, a 4 KiB read buffer allocated, the head
//! parsed into offsets and then into a boxed header), keeps a clone of the
//! response header it wrote, and works out the framing again at each
//! write: ~14,600 of a ~34,300-instruction proxied keep-alive GET
//! (bench/README.md, "Per-core cost"). This codec keeps one state per
//! connection, with its read buffer, its digest and its parse arrays,
//! and is the session for a request whose head is *plain* ([`head`]: no
//! body, no upgrade, HTTP/1.1): the GETs and HEADs that are most of an
//! edge's traffic. Any other head is handed to pingora-core's session
//! with the bytes already read, so bodies, upgrades, HTTP/1.0 and every
//! malformed head keep the behaviour they had.
//!
//! The gate and the engine take a pingora `ServerSession`; a plain request
//! is served through its `Custom` variant, whose trait this type
//! implements ([`session`]). The calls every proxied request makes, and
//! keep-alive, which pingora-core's wrapper ignores for that variant, go
//! through [`direct`], which reaches this type without the trait's boxed
//! futures.
//!
//! Reuse follows pingora-core's rules: keep-alive on for HTTP/1.1 unless
//! switched off (an error answer, a drain, a close-delimited body, a
//! client that closed), the per-connection request limit counted down,
//! and bytes of a next request that arrive early kept for it (pipelining).

mod direct;
mod head;
mod response;
mod session;

pub use direct::{
    finish_body, keepalive, read_body_or_idle, serves, set_keepalive, write_raw_response_header,
    write_response_body, write_response_header,
};
pub use response::RawHead;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as SessionCustom;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::{Error, ErrorType, Result};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::deadline;
use response::BodyOut;

/// Bytes of a head read before it is handed to pingora-core unparsed
/// (which reads heads up to ~1 MiB): plain heads are small.
const HEAD_LIMIT: usize = 16 * 1024;
/// Room made for reads of heads, when less than [`MIN_ROOM`] is left: the
/// buffer is shared with the heads taken from it, so growing it means a
/// new one, which then serves the next dozens of heads.
const READ_ROOM: usize = 4 * 1024;
const MIN_ROOM: usize = 1024;
/// pingora-core's wait for a read while keep-alive is off.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the connection waits for a next request (pingora-core's
/// `KeepaliveStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keepalive {
    Off,
    Forever,
    For(Duration),
}

impl Keepalive {
    fn of(secs: Option<u64>) -> Self {
        match secs {
            None => Self::Off,
            Some(0) => Self::Forever,
            Some(s) => Self::For(Duration::from_secs(s)),
        }
    }

    fn secs(self) -> Option<u64> {
        match self {
            Self::Off => None,
            Self::Forever => Some(0),
            Self::For(d) => Some(d.as_secs()),
        }
    }
}

/// One client connection's HTTP/1.1 state, and the session of its plain
/// requests.
pub struct ClientH1 {
    stream: Stream,
    digest: Digest,
    /// Bytes read and not yet taken: the start of the next head.
    buf: BytesMut,
    spans: Box<head::Spans>,
    /// The current request: its head's bytes and header.
    raw_head: Bytes,
    req: Box<RequestHeader>,
    /// `req` has pingora's map of the client's header case (made when
    /// something first edits it; until then the case is in `raw_head`).
    cased: bool,
    /// A name in `req`'s head has an underscore.
    underscores: bool,
    /// The last response head (kept for its capacity).
    wire: Vec<u8>,
    /// `wire` is not written yet: a final head waits for its body's first
    /// bytes, to go out with them in one write.
    head_pending: bool,
    /// The upstream request head the engine writes (kept for its
    /// capacity: a browser's head outgrows a first guess).
    upstream_head: Vec<u8>,
    keepalive: Keepalive,
    reuses_remaining: Option<u32>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    /// The last response header written (an interim one until the final).
    response: Option<Box<ResponseHeader>>,
    /// A status-only header kept from an earlier response written from an
    /// upstream's bytes, for the next one: not allocated per response.
    status_only: Option<Box<ResponseHeader>>,
    body: BodyOut,
    body_bytes_sent: usize,
    /// The client closed its side.
    half_closed: bool,
    /// A byte of the next request arrived while this one was served.
    next_started: bool,
}

/// What a connection's next bytes are.
pub enum Next {
    /// A plain request, read: serve it through [`ClientH1::into_session`].
    Plain,
    /// A request for pingora-core's session: [`ClientH1::into_parts`].
    Other,
    /// The client closed, or kept the connection idle past its keep-alive.
    Closed,
}

impl ClientH1 {
    pub fn new(stream: Stream) -> Box<Self> {
        let digest = Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        };
        Box::new(Self {
            stream,
            digest,
            buf: BytesMut::new(),
            spans: Box::default(),
            raw_head: Bytes::new(),
            req: Box::new(
                RequestHeader::build_no_case("GET", b"/", Some(0))
                    .unwrap_or_else(|_| unreachable!("a constant request line is valid")),
            ),
            cased: false,
            underscores: false,
            wire: Vec::with_capacity(256),
            head_pending: false,
            upstream_head: Vec::new(),
            keepalive: Keepalive::Off,
            reuses_remaining: None,
            read_timeout: Some(READ_TIMEOUT),
            write_timeout: None,
            drain_timeout: None,
            response: None,
            status_only: None,
            body: BodyOut::Unset,
            body_bytes_sent: 0,
            half_closed: false,
            next_started: false,
        })
    }

    /// As pingora-core's `set_keepalive`: `None` closes the connection after
    /// this request, `Some(0)` keeps it open without a limit, `Some(s)` for
    /// `s` seconds of idleness.
    pub fn set_keepalive(&mut self, secs: Option<u64>) {
        self.keepalive = Keepalive::of(secs);
    }

    pub fn keepalive(&self) -> Option<u64> {
        self.keepalive.secs()
    }

    /// Requests the connection may still carry after this one (`None`: no
    /// limit); counted down as pingora-core counts it.
    pub fn set_reuses_remaining(&mut self, reuses: Option<u32>) {
        self.reuses_remaining = reuses;
    }

    pub fn reuses_remaining(&self) -> Option<u32> {
        self.reuses_remaining
    }

    /// Whether the connection may carry another request after this one.
    fn will_keepalive(&self) -> bool {
        self.keepalive != Keepalive::Off && self.reuses_remaining != Some(0)
    }

    /// Reads the next request's head (bytes already read first). Errors
    /// are a connection that broke in the middle of a head.
    pub async fn read_head(&mut self) -> Result<Next> {
        if let Some(sent) = self.response.take().filter(|r| r.headers.is_empty()) {
            self.status_only = Some(sent);
        }
        self.body = BodyOut::Unset;
        self.body_bytes_sent = 0;
        self.next_started = false;
        // pingora-core's session defaults, which the gate then sets.
        self.read_timeout = Some(READ_TIMEOUT);
        self.write_timeout = None;
        loop {
            if !self.buf.is_empty() {
                match head::parse(&self.buf, &mut self.spans) {
                    head::Parsed::Plain => return Ok(self.take_plain()),
                    head::Parsed::Other => return Ok(Next::Other),
                    head::Parsed::Partial if self.buf.len() >= HEAD_LIMIT => {
                        return Ok(Next::Other)
                    }
                    head::Parsed::Partial => {}
                }
            }
            if !self.read_more().await? {
                return Ok(Next::Closed);
            }
        }
    }

    /// The plain head parsed into `spans`, taken off the buffer and built.
    fn take_plain(&mut self) -> Next {
        // The head's bytes become the header values' storage; pipelined
        // bytes after them stay in `buf`.
        let raw = self.buf.split_to(self.spans.len).freeze();
        // The last request's header, refilled.
        let last = std::mem::replace(&mut *self.req, head::empty());
        match head::build(&raw, &self.spans, last) {
            Some((req, underscores)) => {
                // Into the box the connection keeps.
                *self.req = req;
                self.underscores = underscores;
                self.raw_head = raw;
                self.cased = false;
                // An HTTP/1.1 client keeps the connection (pingora-core's
                // `respect_keepalive`); the gate sets how long.
                self.keepalive = Keepalive::Forever;
                Next::Plain
            }
            None => {
                // Given back for pingora-core to read (and refuse).
                let mut whole = BytesMut::from(raw.as_ref());
                whole.extend_from_slice(&self.buf);
                self.buf = whole;
                Next::Other
            }
        }
    }

    /// The request header, to be edited: first given pingora's map of the
    /// client's header case, which the upstream head of an edited header
    /// is written with (the client's bytes no longer say what is sent).
    fn req_to_edit(&mut self) -> &mut RequestHeader {
        if !self.cased {
            self.cased = true;
            let cased = head::build_cased(&self.raw_head, &self.spans);
            debug_assert!(cased.is_some(), "a head `build` takes, pingora builds too");
            if let Some(req) = cased {
                *self.req = req;
            }
        }
        &mut self.req
    }

    /// The request's fields as the client sent them, while its header is
    /// unedited (`None` after an edit).
    fn fields_as_sent(&self) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
        (!self.cased).then(|| self.spans.as_sent(&self.raw_head))
    }

    /// One read towards a head: `false` when the connection is done (the
    /// client closed before a head began, or idled past keep-alive), as
    /// pingora-core's `read_request` decides it.
    async fn read_more(&mut self) -> Result<bool> {
        let started = !self.buf.is_empty();
        if self.buf.capacity() - self.buf.len() < MIN_ROOM {
            self.buf.reserve(READ_ROOM);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let read = match (self.keepalive, self.read_timeout) {
            (Keepalive::For(idle), _) => match deadline::within(idle, read).await {
                Some(read) => read,
                None => return Ok(false),
            },
            (Keepalive::Forever, _) | (Keepalive::Off, None) => read.await,
            (Keepalive::Off, Some(t)) => match deadline::within(t, read).await {
                Some(read) => read,
                None => return Error::e_explain(ErrorType::ReadTimedout, "reading a request head"),
            },
        };
        match read {
            Ok(0) if started => Error::e_explain(
                ErrorType::ConnectionClosed,
                "client closed in the middle of a request head",
            ),
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if started => {
                Error::e_because(ErrorType::ReadError, "reading a request head", e)
            }
            Err(_) => Ok(false),
        }
    }

    /// Bytes of the next request that pingora-core's session read.
    pub fn give_back(&mut self, read: BytesMut) {
        self.buf = read;
    }

    /// The connection for pingora-core's session: its stream and the bytes
    /// read of the next request.
    pub fn into_parts(self: Box<Self>) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }

    /// This request's session, to hand to the gate.
    pub fn into_session(self: Box<Self>) -> ServerSession {
        ServerSession::new_custom(self)
    }

    /// The connection back from a session made by [`Self::into_session`].
    pub fn from_session(session: ServerSession) -> Option<Box<Self>> {
        match session {
            // SAFETY: see `cast`.
            ServerSession::Custom(c) => Some(unsafe { Box::from_raw(cast(Box::into_raw(c))) }),
            _ => None,
        }
    }

    /// There is no body: this waits on the idle connection, as
    /// pingora-core's session does. The client closing is an error (the
    /// request is abandoned); a byte of its next request is kept for it
    /// (pipelining), and the wait goes on without reading further.
    pub async fn idle(&mut self) -> Result<Option<Bytes>> {
        let gone = || {
            let when = if self.response.is_none() {
                "before the response header was sent"
            } else {
                "before the response body was complete"
            };
            Error::explain(ErrorType::ConnectionClosed, format!("client closed {when}"))
        };
        if self.half_closed {
            return Err(gone());
        }
        if self.next_started {
            return std::future::pending().await;
        }
        let mut probe = [0u8; 1];
        let read =
            self.stream.read(&mut probe).await.map_err(|e| {
                Error::because(ErrorType::ReadError, "waiting on an idle client", e)
            })?;
        if read == 0 {
            self.half_closed = true;
            self.keepalive = Keepalive::Off;
            return Err(gone());
        }
        self.buf.extend_from_slice(&probe[..read]);
        self.next_started = true;
        std::future::pending().await
    }

    /// Closes the client's connection (write side first, as pingora-core's
    /// `shutdown` does).
    pub async fn shut(&mut self) {
        // A head still waiting for its body (the upstream failed before
        // the first byte of it) goes out first, as it would have from
        // pingora's write buffer: the client sees the response cut short.
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// Ends the request: the response's framing finished and flushed.
    /// `true` when the connection may carry another request (the count
    /// of requests left taken down by one); otherwise it is shut.
    pub async fn end(&mut self) -> bool {
        if let Err(e) = self.end_body().await {
            tracing::debug!(error = %e, "client connection not reusable");
            return false;
        }
        if !self.will_keepalive() {
            self.shut().await;
            return false;
        }
        if let Some(n) = self.reuses_remaining.as_mut() {
            *n = n.saturating_sub(1);
        }
        true
    }
}

/// The codec of a session's client, when it is one ([`ClientH1`] serves
/// this request).
pub fn of(session: &mut ServerSession) -> Option<&mut ClientH1> {
    match session {
        // SAFETY: see `cast`.
        ServerSession::Custom(c) => Some(unsafe { &mut *cast(&mut **c) }),
        _ => None,
    }
}

/// [`of`], read-only.
fn of_ref(session: &ServerSession) -> Option<&ClientH1> {
    match session {
        // SAFETY: see `cast`; the pointer is only read through.
        ServerSession::Custom(c) => {
            Some(unsafe { &*cast((&**c as *const dyn SessionCustom).cast_mut()) })
        }
        _ => None,
    }
}

/// Whether a header of the request the codec serves is named with an
/// underscore (found as its header was built); `None` when the codec does
/// not serve it.
pub fn underscores(session: &ServerSession) -> Option<bool> {
    of_ref(session).map(|c| c.underscores)
}

/// [`ClientH1::fields_as_sent`] of the codec serving a session's request:
/// the names in the client's case, for the upstream head written from them.
pub fn fields_as_sent(session: &ServerSession) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
    of_ref(session)?.fields_as_sent()
}

/// An empty buffer for the upstream request head: the one the codec
/// serving the session keeps ([`keep_head_buffer`]), or a new one.
pub fn head_buffer(session: &mut ServerSession) -> Vec<u8> {
    match of(session) {
        Some(c) => {
            let mut head = std::mem::take(&mut c.upstream_head);
            head.clear();
            head
        }
        None => Vec::new(),
    }
}

/// Gives the buffer of [`head_buffer`] back for the connection's next
/// request.
pub fn keep_head_buffer(session: &mut ServerSession, head: Vec<u8>) {
    if let Some(c) = of(session) {
        c.upstream_head = head;
    }
}

/// A `Custom` session's codec.
///
/// SAFETY: every `ServerSession::Custom` in this process holds a
/// `ClientH1`: tollgate makes them only in [`ClientH1::into_session`], and
/// pingora-core makes them only for a custom protocol
/// (`HttpServerApp::process_custom_session`), which tollgate does not
/// implement. The pointer's data part is then a `ClientH1`.
fn cast(c: *mut dyn SessionCustom) -> *mut ClientH1 {
    c as *mut ClientH1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_reads_as_pingora_reads_it() {
        for secs in [None, Some(0), Some(5)] {
            assert_eq!(Keepalive::of(secs).secs(), secs);
        }
    }
}
