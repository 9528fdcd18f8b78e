//! What each proxy listener speaks, found from a connection's local port:
//! plaintext HTTP/1.1, plaintext with HTTP/2 prior knowledge (`h2c`), or
//! TLS (HTTP/1.1 or HTTP/2 by ALPN).

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::H2Options;

use crate::config::Listener;
use crate::tls::TlsAcceptor;

#[derive(Clone, Copy)]
pub enum Kind<'a> {
    Plain,
    H2c,
    Tls(&'a TlsAcceptor),
}

/// The proxy listeners by port.
#[derive(Default)]
pub struct ListenerKinds {
    tls: Vec<u16>,
    h2c: Vec<u16>,
    acceptor: Option<Arc<TlsAcceptor>>,
    /// The first TLS listener's port: where `https_only` redirects go.
    https_port: Option<u16>,
}

impl ListenerKinds {
    /// `acceptor` is required when a listener says `tls: true`.
    pub fn new(listeners: &[Listener], acceptor: Option<Arc<TlsAcceptor>>) -> Self {
        let ports = |f: fn(&Listener) -> bool| -> Vec<u16> {
            listeners
                .iter()
                .filter(|l| f(l))
                .filter_map(Listener::port)
                .collect()
        };
        let tls = ports(|l| l.tls);
        Self {
            https_port: tls.first().copied(),
            tls,
            h2c: ports(|l| l.h2c),
            acceptor,
        }
    }

    pub fn of(&self, local_port: Option<u16>) -> Kind<'_> {
        let Some(port) = local_port else {
            return Kind::Plain;
        };
        if self.tls.contains(&port) {
            if let Some(a) = &self.acceptor {
                return Kind::Tls(a);
            }
        }
        if self.h2c.contains(&port) {
            return Kind::H2c;
        }
        Kind::Plain
    }

    /// Whether some listener takes HTTP/2 prior knowledge.
    pub fn any_h2c(&self) -> bool {
        !self.h2c.is_empty()
    }

    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }
}

/// The HTTP/2 server settings both engines give pingora-core, from
/// `proxy.http2`; h2c on when some listener takes it.
pub fn http2_settings(
    conf: &crate::config::Http2Config,
    kinds: &ListenerKinds,
    idle: std::time::Duration,
) -> (HttpServerOptions, H2Options) {
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(conf.max_concurrent_streams)
        .max_header_list_size(conf.max_header_list_bytes)
        .max_pending_accept_reset_streams(conf.max_pending_resets);
    let mut options = HttpServerOptions::default();
    options.h2c = kinds.any_h2c();
    options.h2_idle_timeout = Some(idle);
    (options, h2)
}
