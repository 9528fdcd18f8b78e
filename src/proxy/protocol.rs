//! Which protocol a request came on: for `X-Forwarded-Proto`, redirects to
//! HTTPS, the access log and the per-protocol request counter.

use pingora::protocols::http::ServerSession;
use prometheus::IntCounter;
use std::sync::LazyLock;

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.x over plaintext.
    #[default]
    Http1,
    /// HTTP/1.x over TLS.
    Https1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over plaintext, prior knowledge.
    H2c,
}

impl Protocol {
    pub fn of(session: &ServerSession) -> Self {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        match (session.is_http2(), tls) {
            (false, false) => Protocol::Http1,
            (false, true) => Protocol::Https1,
            (true, true) => Protocol::H2,
            (true, false) => Protocol::H2c,
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https1 | Protocol::H2)
    }

    /// `http` or `https`: `X-Forwarded-Proto`, the access log's `scheme`.
    pub fn scheme(self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// The access log's and the metric's `protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 | Protocol::Https1 => "http/1.1",
            Protocol::H2 => "h2",
            Protocol::H2c => "h2c",
        }
    }

    /// Counts one request (handles resolved once, not per request).
    pub fn count(self) {
        static BY: LazyLock<[IntCounter; 4]> = LazyLock::new(|| {
            [
                Protocol::Http1,
                Protocol::Https1,
                Protocol::H2,
                Protocol::H2c,
            ]
            .map(|p| {
                METRICS
                    .requests_by_protocol
                    .with_label_values(&[p.as_str(), p.scheme()])
            })
        });
        BY[self as usize].inc();
    }
}
