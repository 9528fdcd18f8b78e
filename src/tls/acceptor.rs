//! The TLS side of a listener: the rustls server config every TLS
//! listener shares, and the handshake (bounded in time) that turns an
//! accepted TCP connection into a TLS stream for the engine.

use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use rustls::server::{ServerConfig, ServerSessionMemoryCache};

use super::resolver::SniResolver;
use crate::metrics::METRICS;

/// The lowest TLS version a client may use (`tls.min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// What every TLS listener shares, from bootstrap `tls:`.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub min_version: TlsVersion,
    /// Offered protocols, preferred first.
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
}

/// TLS 1.2 session ids remembered for resumption (TLS 1.3 uses tickets).
const SESSION_CACHE: usize = 4096;

/// Why a TLS server config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    #[error("tls.min_version: {0}")]
    Versions(rustls::Error),
    #[error("session tickets: {0}")]
    Ticketer(rustls::Error),
}

/// Accepts TLS on the listeners that say `tls: true`.
pub struct TlsAcceptor {
    acceptor: Acceptor,
    timeout: Duration,
}

impl TlsAcceptor {
    pub fn new(conf: &ListenerTls, resolver: Arc<SniResolver>) -> Result<Self, AcceptorError> {
        // ring: the provider Pingora's `rustls` feature builds (aws-lc-rs,
        // which adds post-quantum key exchange, is a C build of minutes on
        // these machines; README, Choices).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match conf.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(AcceptorError::Versions)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = conf.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Resumption: stateless tickets (ChaCha20-Poly1305, a fresh random
        // key every 6 hours, the previous one still accepted) for TLS 1.3
        // and 1.2 clients that take them, a bounded id cache for the rest.
        // Keys are per process: a ticket resumes on the node that issued it.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(AcceptorError::Ticketer)?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        // No 0-RTT: early data can be replayed, and a gateway cannot know
        // which requests are safe to replay.
        config.max_early_data_size = 0;
        Ok(Self {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            timeout: conf.handshake_timeout,
        })
    }

    /// The handshake on an accepted connection; `None` (counted, logged at
    /// debug) when it fails or does not finish within the timeout.
    pub async fn handshake(&self, stream: Stream) -> Option<Stream> {
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("a TLS listener's connection is not a TCP stream");
            return None;
        };
        match tokio::time::timeout(self.timeout, self.acceptor.tls_handshake(*l4)).await {
            Ok(Ok(tls)) => {
                METRICS.tls_handshakes.with_label_values(&["ok"]).inc();
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                METRICS.tls_handshakes.with_label_values(&["failed"]).inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                METRICS.tls_handshakes.with_label_values(&["timeout"]).inc();
                tracing::debug!("TLS handshake not finished in time; closing");
                None
            }
        }
    }
}
