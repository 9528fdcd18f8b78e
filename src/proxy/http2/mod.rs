//! A client's HTTP/2 connection, for either engine: the stream loop of
//! pingora-core's `HttpServerApp` with what it lacks for an edge — a cap
//! on the resets a client sends per second (Rapid Reset against a server
//! that takes every stream up at once), and a count of the connections
//! closed for abuse, by reason.
//!
//! The rest is pingora-core's loop (`accept_downstream_sessions`, which
//! is crate-private): graceful GOAWAY on shutdown while draining the
//! streams already begun, the idle timeout between streams, the budget of
//! malformed requests per connection.

mod reset_meter;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use crate::metrics::METRICS;
use reset_meter::{ResetFlood, ResetMeter};

/// Malformed requests (each already refused) after which the client's
/// connection is closed: pingora-core's own budget.
const MAX_MALFORMED_REQUESTS: usize = 32;

/// Serves one HTTP/2 client connection (TLS with ALPN `h2`, or h2c) until
/// it closes: each stream is a request for `engine`.
pub async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    engine: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    resets_per_second: u32,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let flood = Arc::new(ResetFlood::default());
    let stream: Stream = Box::new(ResetMeter::new(stream, resets_per_second, flood.clone()));
    let mut conn = match server::handshake(stream, engine.h2_options()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let idle_timeout = engine.server_options().and_then(|o| o.h2_idle_timeout);
    let mut watch = shutdown.clone();
    let mut draining = false;
    let mut malformed = 0usize;
    let active = Arc::new(Active::default());
    loop {
        let accepted = if draining {
            HttpSession::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                biased;
                _ = watch.changed() => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                () = flood.raised() => {
                    METRICS.http2_goaway.with_label_values(&["reset_rate"]).inc();
                    tracing::info!(
                        resets_per_second,
                        "HTTP/2 client resets streams faster than allowed; closing its connection"
                    );
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    // Drives the codec until the GOAWAY is written and the
                    // connection closes; no stream is taken up any more.
                    draining = true;
                    continue;
                }
                accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                () = active.idle_for(idle_timeout.unwrap_or_default()), if idle_timeout.is_some() => return,
            }
        };
        match accepted {
            Err(e) => {
                count_goaway(&e);
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                // Already answered (a forbidden byte in the target, say).
                malformed += 1;
                if malformed == MAX_MALFORMED_REQUESTS && !draining {
                    METRICS
                        .http2_goaway
                        .with_label_values(&["malformed_requests"])
                        .inc();
                    tracing::info!(
                        malformed,
                        "HTTP/2 client sent too many malformed requests; closing its connection"
                    );
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    draining = true;
                }
            }
            Ok(Some(H2Accept::Session(session))) => {
                if flood.is_raised() || malformed >= MAX_MALFORMED_REQUESTS {
                    // Accepted with the GOAWAY already queued: not served.
                    continue;
                }
                let guard = active.start();
                let engine = engine.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    engine
                        .process_new_http(ServerSession::new_http2(session), &shutdown)
                        .await;
                });
            }
        }
    }
}

/// A connection the codec closed with a GOAWAY of its own (Rapid Reset
/// before accept, a CONTINUATION flood, a protocol error) is counted by
/// the reason it gave.
fn count_goaway(e: &pingora::Error) {
    let Some(h2) = e.root_cause().downcast_ref::<h2::Error>() else {
        return;
    };
    if !(h2.is_go_away() && h2.is_library()) {
        return;
    }
    let reason = match h2.reason() {
        Some(h2::Reason::ENHANCE_YOUR_CALM) => "enhance_your_calm",
        Some(h2::Reason::PROTOCOL_ERROR) => "protocol_error",
        Some(h2::Reason::COMPRESSION_ERROR) => "compression_error",
        Some(h2::Reason::FRAME_SIZE_ERROR) => "frame_size_error",
        Some(h2::Reason::FLOW_CONTROL_ERROR) => "flow_control_error",
        _ => "other",
    };
    METRICS.http2_goaway.with_label_values(&[reason]).inc();
}

/// Streams being served on the connection: the idle timeout runs only
/// while there are none.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> ActiveGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Resolves after `timeout` with no stream in flight.
    async fn idle_for(&self, timeout: Duration) {
        while self.count.load(Ordering::Relaxed) != 0 {
            self.idle.notified().await;
        }
        if !timeout.is_zero() {
            tokio::time::sleep(timeout).await;
        }
    }
}
