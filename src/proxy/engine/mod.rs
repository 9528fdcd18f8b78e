//! `proxy.engine: core`: tollgate's own request loop on pingora-core.
//!
//! pingora-proxy's `ProxyHttp` gives every request a boxed session with
//! cache and module state, runs its downstream and upstream halves as two
//! futures joined by task channels, and calls a dozen filter phases. The
//! passthrough bench measured a straight pingora-core loop at 1.29–1.38x
//! its requests/s (bench/README.md). This engine is that loop with
//! everything the gateway does: each decision is the shared
//! [`Gate`](super::Gate)'s, so both engines behave the same; what is here
//! is only the moving of bytes.
//!
//! - `mod.rs`: one connection's requests (read, shutdown, panics, reuse):
//!   a plain request (no body, no upgrade, HTTP/1.1) on the engine's own
//!   client codec ([`ClientH1`], `src/proxy/client_h1`), any other on
//!   pingora-core's HTTP/1 session, in turn on the same connection.
//! - `attempts.rs`: one request's attempts (peer, connect, retry, errors).
//! - `exchange.rs`: one attempt on HTTP/1.1, full duplex (body up while the
//!   response comes down, `101` upgrades relayed both ways).
//! - `exchange_h2.rs`: one attempt on an HTTP/2 upstream (gRPC), trailers.
//! - `refresh.rs`: a stale cache entry refreshed after its stale answer.

mod attempts;
mod exchange;
mod exchange_h2;
mod refresh;
mod target;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::{ReusableHttpStream, ServerSession};
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::client_h1::{self, ClientH1, Next};
use super::connections::Http1Loop;
use super::ctx::RequestCtx;
use super::gate::{panic_message, Gate};
use super::shutdown::Shutdown;
use super::upstream_h1::{Transport, UpstreamH1};
use super::{linger, timer_tick, upstream_pool};
use target::Target;

/// An HTTP/1.1 exchange on `stream`, with the route's timeouts.
fn h1(stream: Transport, t: &crate::model::timeout::Timeouts) -> Upstream {
    let mut h1 = UpstreamH1::new(stream);
    h1.read_timeout = Some(t.read);
    h1.write_timeout = Some(t.write);
    Upstream::H1(h1)
}

/// The core engine: a pingora-core `HttpServerApp` for the proxy listeners.
pub struct CoreEngine {
    gate: Gate,
    /// Upstream connections and their pools: HTTP/1.1 (plain or TLS) kept
    /// alive, HTTP/2 (`h2c`, `grpc`, `grpcs` nodes) multiplexed.
    connector: Connector,
    shutdown: Shutdown,
    /// Attempts per request at most, whatever the policies say (Pingora's
    /// `max_retries`, which bounds `ProxyHttp` the same way).
    max_attempts: u32,
    /// h2c on or off, HTTP/2 idle timeout (`proxy::http2_settings`).
    server_options: HttpServerOptions,
    /// HTTP/2 connection bounds (`proxy.http2`).
    h2: Option<H2Options>,
}

impl CoreEngine {
    pub fn new(mut gate: Gate, conf: &ServerConf) -> Self {
        gate.background_refresh = true;
        upstream_pool::configure(conf.upstream_keepalive_pool_size, conf.threads);
        Self {
            gate,
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
            shutdown: Shutdown::new(conf.threads),
            max_attempts: u32::try_from(conf.max_retries).unwrap_or(u32::MAX).max(1),
            server_options: HttpServerOptions::default(),
            h2: None,
        }
    }

    /// HTTP/2 on TLS (ALPN) and h2c listeners, with these bounds.
    pub fn with_http2(mut self, (options, h2): (HttpServerOptions, H2Options)) -> Self {
        self.server_options = options;
        self.h2 = Some(h2);
        self
    }

    /// A connection to `peer`: an idle one of this thread's if it has one
    /// (`true`: reused), else a new one ([`CoreEngine::open`]). HTTP/1.1
    /// is spoken by [`UpstreamH1`], with the peer's timeouts.
    async fn connect(&self, target: &mut Target) -> pingora::Result<(Upstream, bool)> {
        if let Some(stream) = target
            .h1_only
            .then(|| upstream_pool::take(target.key))
            .flatten()
        {
            return Ok((h1(stream, &target.timeouts), true));
        }
        self.open(target).await
    }

    /// A new connection: the engine's own TCP socket to a plain node, else
    /// pingora-core's connector (TLS, ALPN, or HTTP/2's shared one).
    /// Boxed as a `dyn` future: connecting (~9 KiB) would size every
    /// request's future, and its code, inlined, would sit among the
    /// request path's hot code for what a pooled connection never runs.
    fn open<'a>(
        &'a self,
        target: &'a mut Target,
    ) -> BoxFuture<'a, pingora::Result<(Upstream, bool)>> {
        Box::pin(async move {
            let t = target.timeouts;
            if let Some(addr) = target.plain() {
                let stream = Transport::connect(addr, t.connect).await?;
                return Ok((h1(stream, &t), false));
            }
            match self.connector.get_http_session(target.peer()).await? {
                (HttpSession::H1(session), reused) => {
                    Ok((h1(Transport::Pingora(session.into_inner()), &t), reused))
                }
                (HttpSession::H2(h2), reused) => Ok((Upstream::H2(Box::new(h2)), reused)),
                (HttpSession::Custom(()), _) => Err(Error::explain(
                    ErrorType::InternalError,
                    "custom upstream protocol",
                )),
            }
        })
    }

    /// Gives back a connection whose exchange ended cleanly, for reuse.
    async fn release(&self, up: Upstream, target: &mut Target) {
        match up {
            Upstream::H1(h1) => {
                if let Some((stream, idle)) = h1.into_reusable() {
                    // Short of the upstream's own idle timeout, when it says
                    // one: it would close the connection under the next
                    // request. (A second early: its clock is not ours.)
                    let idle = idle.map(|t| t.saturating_sub(Duration::from_secs(1)));
                    let ours = target.timeouts.idle;
                    let idle = Some(idle.map_or(ours, |theirs| ours.min(theirs)));
                    upstream_pool::put(target.key, stream, idle);
                }
            }
            Upstream::H2(h2) => {
                let peer = target.peer();
                self.connector
                    .release_http_session(HttpSession::H2(*h2), peer, peer.options.idle_timeout)
                    .await
            }
        }
    }

    /// After the request header is read: route, then proxy. `true` when the
    /// client connection may carry another request.
    async fn serve(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> bool {
        if self.gate.route_request(session, ctx).await {
            // Answered here (400/404/429/503); the body is drained for reuse.
            return true;
        }
        self.proxy(session, ctx).await
    }

    /// A request that could not be read. Malformed HTTP (a bad request line,
    /// oversized headers) is answered 400 as Pingora does; anything else is
    /// a connection that broke. Either way the connection is closed.
    async fn unreadable(session: &mut ServerSession, mut e: Box<Error>) {
        e.as_down();
        if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
            tracing::debug!(error = %e, "malformed request");
            if let Err(e) = session.respond_error(400).await {
                tracing::debug!(error = %e, "could not answer a malformed request");
            }
        } else {
            tracing::debug!(error = %e, "reading a request failed");
        }
        session.shutdown().await;
    }

    /// One request of a connection, read by pingora-core's session: `Some`
    /// with the connection when it can carry another. `stop` is the
    /// connection's wait for shutdown, made once per connection:
    /// registering a waiter cost ~700 instructions, which a wait made per
    /// request paid for every request.
    async fn serve_one(
        self: &Arc<Self>,
        mut session: ServerSession,
        stop: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Option<ReusableH1> {
        timer_tick::ensure_started();
        // Biased: a request already buffered is served, not dropped, when
        // shutdown and the request arrive together.
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            () = stop => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None, // closed between requests
            Err(e) => {
                Self::unreadable(&mut session, e).await;
                return None;
            }
        }
        if !self.serve_read(&mut session).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let keepalive = session.get_keepalive();
        let reuses = session.get_keepalive_reuses_remaining();
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusableH1 {
                stream,
                settings,
                keepalive,
                reuses,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "client connection not reusable");
                None
            }
        }
    }

    /// A request whose header is read, served: `true` when the connection
    /// may carry another (its session then finishes the response).
    async fn serve_read(self: &Arc<Self>, session: &mut ServerSession) -> bool {
        if self.gate.draining() {
            // Draining: this is the connection's last request. (The flag,
            // not the `ShutdownWatch`: reading that takes its lock.)
            client_h1::set_keepalive(session, None);
        }
        if session.req_header().method == http::Method::CONNECT {
            // As pingora-proxy by default: tunnels change the message
            // framing, and tollgate does not proxy them.
            // Boxed (`dyn`), as the gateway's other answers (`error_response`).
            async {
                let _ = session.respond_error(405).await;
                session.shutdown().await;
            }
            .boxed()
            .await;
            return false;
        }

        let mut ctx = self.gate.new_ctx();
        let reuse = match AssertUnwindSafe(self.serve(session, &mut ctx))
            .catch_unwind()
            .await
        {
            Ok(reuse) => reuse,
            Err(p) => {
                // Answered 500 (if nothing was sent yet); the connection closes.
                self.gate
                    .answer_panic(session, &mut ctx, panic_message(&*p))
                    .boxed()
                    .await;
                false
            }
        };
        self.refresh_after(session, &mut ctx);
        self.gate.log_request(session, &ctx);
        if !reuse {
            linger::before_close(session).boxed().await;
        }
        reuse
    }

    /// The requests of an HTTP/1 connection after the first bytes came:
    /// plain ones served by [`ClientH1`], any other by pingora-core's
    /// session, each from where the other left the connection.
    async fn serve_connection(
        self: &Arc<Self>,
        mut conn: Box<ClientH1>,
        mut stop: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) {
        loop {
            timer_tick::ensure_started();
            // Biased, as in `serve_one`.
            let next = tokio::select! {
                biased;
                next = conn.read_head() => next,
                () = stop.as_mut() => return,
            };
            match next {
                Ok(Next::Plain) => {
                    let mut session = conn.into_session();
                    let reuse = self.serve_read(&mut session).await;
                    let Some(mut back) = ClientH1::from_session(session) else {
                        return;
                    };
                    if !reuse {
                        back.shut().await;
                        return;
                    }
                    if !back.end().await {
                        return;
                    }
                    conn = back;
                }
                Ok(Next::Other) => {
                    let (keepalive, reuses) = (conn.keepalive(), conn.reuses_remaining());
                    let (stream, read) = conn.into_parts();
                    let mut session = ServerSession::new_http1(stream);
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(reuses);
                    if !read.is_empty() {
                        session.set_pipelined_prefix(read);
                    }
                    // Boxed (`dyn`): pingora-core's session, for what the
                    // codec does not take, is not among the hot code.
                    let served = self.serve_one(session, stop.as_mut()).boxed().await;
                    let Some(reused) = served else {
                        return;
                    };
                    conn = reused.into_client();
                }
                Ok(Next::Closed) => return,
                Err(e) => {
                    // As pingora-core: a head cut off is a connection that broke.
                    tracing::debug!(error = %e, "reading a request failed");
                    conn.shut().await;
                    return;
                }
            }
        }
    }
}

/// A connection pingora-core's session gave back for another request, and
/// what it keeps for it.
struct ReusableH1 {
    stream: ReusableHttpStream,
    settings: HttpPersistentSettings,
    keepalive: Option<u64>,
    reuses: Option<u32>,
}

impl ReusableH1 {
    /// For pingora-core's own loop (`process_new_http`).
    fn into_reused(self) -> ReusedHttpStream {
        ReusedHttpStream::from_reusable_stream(self.stream, self.settings)
    }

    /// For [`ClientH1`]: the keep-alive and the count of requests left
    /// carried over as pingora-core carries them to its next session.
    fn into_client(self) -> Box<ClientH1> {
        let (stream, read) = self.stream.into_parts();
        let mut conn = ClientH1::new(stream);
        conn.set_keepalive(self.keepalive);
        conn.set_reuses_remaining(self.reuses.map(|n| n.saturating_sub(1)));
        if let Some(read) = read {
            conn.give_back(read);
        }
        conn
    }
}

/// A connection to an upstream.
pub(super) enum Upstream {
    H1(UpstreamH1),
    /// Multiplexed, shared through pingora-core's connector (boxed: it is
    /// the rare one, and large).
    H2(Box<Http2Session>),
}

/// A peer only ever spoken to in HTTP/1.1 (what pingora-core's connector
/// decides the same way): its idle connections are this engine's to keep.
impl Http1Loop for CoreEngine {
    /// pingora-core's HTTP/1 loop (`apps/mod.rs`), with each request's
    /// future inline in the connection's: boxed per request (as
    /// `process_new_http` is), its ~10 KiB state was allocated and copied
    /// for every request.
    async fn serve_http1(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let mut conn = ClientH1::new(stream);
        // Pingora's default, which the gate replaces with
        // `proxy.client_keepalive_secs` once a request is routed.
        conn.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        conn.set_reuses_remaining(self.server_options.keepalive_request_limit);
        let stop = self.shutdown.wait();
        tokio::pin!(stop);
        self.serve_connection(conn, stop).await;
    }
}

#[async_trait]
impl HttpServerApp for CoreEngine {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let stop = self.shutdown.wait();
        tokio::pin!(stop);
        self.serve_one(session, stop)
            .await
            .map(ReusableH1::into_reused)
    }

    async fn http_cleanup(&self) {
        self.shutdown.fire();
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.h2.clone()
    }
}
