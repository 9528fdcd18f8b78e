//! The proxy's client connections through a graceful shutdown, for either
//! engine: each is counted while open, so the drain waits for the last one,
//! and one accepted just before the listeners closed gets its request read.
//!
//! Both engines (and pingora-proxy's `HttpProxy`) close a connection that
//! is waiting for a request when the service stops: right for an idle
//! keep-alive connection, whose client may retry on another, but a new
//! connection whose request is still on its way (accepted a moment before
//! the listeners closed) was then closed unanswered, and its client saw
//! "connection closed" for a request it never got to send. That lost 1 of
//! ~2,000 requests of an upgrade under load. So a new connection is handed
//! to the engine only once its first bytes are there, and the stop waits up
//! to [`FIRST_REQUEST_GRACE`] for the connections still without them.

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::protocols::ALPN;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::conn_limit::ConnLimits;
use super::listeners::{Kind, ListenerKinds};
use super::shutdown::Shutdown;
use super::InFlight;
use crate::metrics::METRICS;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for a plaintext connection's first read: a whole first head, most
/// often.
const FIRST_READ: usize = 4 * 1024;

/// How long, once the listeners are closed, a connection accepted before
/// has to send the first bytes of its request. A client writes its request
/// right after connecting, so this is reached only by one that sends
/// nothing: a port probe or an abandoned connection.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Wraps an engine (`A`) on the proxy listeners.
pub struct Connections<A> {
    engine: Arc<A>,
    /// Open client connections (the drain waits for none).
    open: Arc<InFlight>,
    /// Connections not yet handed to the engine: accepted, request not
    /// begun.
    awaiting_request: Arc<InFlight>,
    /// Fired when the grace is over: connections still silent are closed.
    given_up: Shutdown,
    /// How long a new connection may stay silent (`proxy.client_keepalive_secs`).
    idle: Duration,
    /// `proxy.max_connections`, `proxy.max_connections_per_ip`.
    limits: Arc<ConnLimits>,
    /// What each listener speaks (plaintext, h2c, TLS).
    kinds: Arc<ListenerKinds>,
    /// Streams an HTTP/2 client may reset per second (`proxy.http2`).
    resets_per_second: u32,
}

impl<A> Connections<A> {
    pub fn new(
        engine: A,
        open: Arc<InFlight>,
        idle: Duration,
        limits: Arc<ConnLimits>,
        kinds: Arc<ListenerKinds>,
        resets_per_second: u32,
    ) -> Self {
        Self {
            engine: Arc::new(engine),
            open,
            awaiting_request: Arc::default(),
            given_up: Shutdown::new(1),
            idle,
            limits,
            kinds,
            resets_per_second,
        }
    }
}

/// An engine's loop over the requests of one HTTP/1.x connection.
pub trait Http1Loop: HttpServerApp + Sized + Send + Sync + 'static {
    /// Serves `stream`'s requests until it closes. By default pingora-core's
    /// loop, which boxes every request's future (`HttpServerApp` is an
    /// `async_trait`); an engine can keep them inline instead.
    fn serve_http1<'a>(
        self: &'a Arc<Self>,
        stream: Stream,
        shutdown: &'a ShutdownWatch,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        async move {
            ServerApp::process_new(self, stream, shutdown).await;
        }
    }
}

#[async_trait]
impl<A: Http1Loop> ServerApp for Connections<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.open.enter();
        let digest = stream.get_socket_digest();
        let local_port = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
        let peer = || {
            digest
                .as_ref()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        };
        let mut head = [0u8; 24];
        // With h2c on some listener, pingora-core reads 24 bytes (the
        // length of the HTTP/2 preface) of every plaintext connection
        // before anything else, with no timeout: read them here, under the
        // idle timeout and the shutdown grace, so they are already there.
        let kind = self.kinds.of(local_port);
        let peek = match kind {
            Kind::Tls(_) => 4,
            _ if self.kinds.any_h2c() => 24,
            _ => 4,
        };
        let _slot = match self.limits.admit(local_port, peer) {
            Ok(slot) => slot,
            Err(limit) => {
                tracing::debug!(limit, "connection refused by a connection limit");
                return None;
            }
        };
        let stream = {
            // Held through a TLS handshake too: a stop waits (up to the
            // grace) for a connection whose first request is still on its way.
            let _awaiting = self.awaiting_request.enter();
            // Reads the first bytes and puts them back for the engine (or
            // the TLS handshake); an error is a client that closed without
            // sending anything. Four: every request and ClientHello is
            // longer, and they tell an HTTP/2 preface apart. A plaintext
            // connection's are read whole, as many as arrived: pingora's
            // peek reads exactly `peek`, which on a listener without a read
            // buffer (`cmd::run`) is one read for them and another for the
            // rest of the head.
            let own_read = matches!(kind, Kind::Plain) && stream.as_any().is::<L4Stream>();
            let read_first = async {
                if own_read {
                    first_bytes(&mut stream, &mut head[..peek]).await.map(Some)
                } else {
                    stream.try_peek(&mut head[..peek]).await.map(|_| None)
                }
            };
            let first = tokio::select! {
                biased;
                first = read_first => first,
                () = self.given_up.wait() => return None,
                () = tokio::time::sleep(self.idle) => {
                    tracing::debug!("connection sent no request in time; closing it");
                    return None;
                }
            };
            match first {
                Err(e) => {
                    tracing::debug!(error = %e, "connection closed before a request");
                    return None;
                }
                Ok(Some(read)) => stream = put_back(stream, &read)?,
                Ok(None) => {}
            }
            match kind {
                Kind::Tls(acceptor) => tokio::select! {
                    tls = acceptor.handshake(stream) => tls?,
                    () = self.given_up.wait() => return None,
                },
                _ => stream,
            }
        };
        let http2 = match kind {
            Kind::Tls(_) => matches!(stream.selected_alpn_proto(), Some(ALPN::H2)),
            Kind::Plain if head.starts_with(b"PRI ") => {
                // An HTTP/2 preface on a listener without `h2c: true`.
                METRICS.protocol_refused.with_label_values(&["h2c"]).inc();
                tracing::debug!("HTTP/2 prior knowledge on a listener without h2c; closing");
                return None;
            }
            Kind::Plain => false,
            Kind::H2c => head == *H2_PREFACE,
        };
        if http2 {
            super::http2::serve(&self.engine, stream, shutdown, self.resets_per_second).await;
            return None;
        }
        self.engine.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        let deadline = Instant::now() + FIRST_REQUEST_GRACE;
        while self.awaiting_request.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let silent = self.awaiting_request.get();
        if silent > 0 {
            tracing::info!(
                connections = silent,
                "closing connections that sent no request"
            );
        }
        self.given_up.fire();
        self.engine.cleanup().await;
    }
}

/// Reads a connection's first bytes, at least `head.len()` of them (an
/// error if it closes before), into a buffer with room for a whole head,
/// and copies the first into `head`.
async fn first_bytes(stream: &mut Stream, head: &mut [u8]) -> std::io::Result<Vec<u8>> {
    let mut read = Vec::with_capacity(FIRST_READ);
    while read.len() < head.len() {
        if stream.read_buf(&mut read).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    head.copy_from_slice(&read[..head.len()]);
    Ok(read)
}

/// `stream` with `read` put back in front of its next read: for the
/// engine's first read (the head, with no further syscall) or pingora's
/// HTTP/2 preface check. `None` (closed) for a stream that is not a TCP
/// one, which [`first_bytes`] is not asked to read.
fn put_back(stream: Stream, read: &[u8]) -> Option<Stream> {
    match stream.into_any().downcast::<L4Stream>() {
        Ok(mut l4) => {
            l4.rewind(read);
            Some(l4)
        }
        Err(_) => {
            debug_assert!(false, "only TCP streams are read before the engine");
            None
        }
    }
}
