//! Where an attempt goes, as the core engine needs it for each request:
//! the instance's pool key and the route's timeouts.
//!
//! pingora's `HttpPeer` is a large struct; building one per request, hashing
//! it for its pool key, moving and dropping it cost ~1,000 instructions of a
//! proxied keep-alive GET (bench/README.md, "Per-core cost"). A plain
//! `http://` node's connections differ in nothing but the address, so its
//! pool key is the address's, and a peer is made only when a connection
//! has to be opened. Any other node (TLS, HTTP/2) keys its pool by the
//! peer's own `reuse_hash` (SNI, verification, client certificate, ALPN),
//! so its peer is made up front.

use pingora::upstreams::peer::{HttpPeer, Peer};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::timeout::Timeouts;
use crate::model::upstream::NodeScheme;
use crate::proxy::ctx::Attempt;
use crate::proxy::{upstream_peer, upstream_pool};
use crate::snapshot::InstanceSet;

pub(super) struct Target {
    pub timeouts: Timeouts,
    /// The idle connections it may reuse (`upstream_pool`).
    pub key: u64,
    /// HTTP/1.1 only: a pooled connection serves it.
    pub h1_only: bool,
    /// A plain `http://` node: connected by the engine itself.
    plain: bool,
    addr: SocketAddr,
    set: Arc<InstanceSet>,
    index: usize,
    /// Boxed: a peer is 672 bytes, which every request's target (a plain
    /// node's has none) was copied with as it moved.
    peer: Option<Box<HttpPeer>>,
}

impl Target {
    pub fn of(attempt: &Attempt, timeouts: Timeouts) -> Self {
        let node = attempt.node();
        let plain = node.scheme == NodeScheme::Http;
        let (key, h1_only, peer) = if plain {
            (upstream_pool::plain_key(node.addr), true, None)
        } else {
            let peer = upstream_peer::for_instance(&attempt.set, attempt.index, &timeouts);
            (peer.reuse_hash(), h1_only(&peer), Some(Box::new(peer)))
        };
        Self {
            timeouts,
            key,
            h1_only,
            plain,
            addr: node.addr,
            set: attempt.set.clone(),
            index: attempt.index,
            peer,
        }
    }

    /// A plain `http://` node's address: its connections are the engine's
    /// own TCP sockets (`upstream_h1::Transport`), no pingora peer made.
    pub fn plain(&self) -> Option<SocketAddr> {
        self.plain.then_some(self.addr)
    }

    /// The pingora peer, made on first need.
    pub fn peer(&mut self) -> &HttpPeer {
        let (set, index, t) = (&self.set, self.index, &self.timeouts);
        self.peer
            .get_or_insert_with(|| Box::new(upstream_peer::for_instance(set, index, t)))
    }
}

/// The instance's address, for error context.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// Whether the peer speaks only HTTP/1.1 (no ALPN choice of HTTP/2).
pub(super) fn h1_only(peer: &HttpPeer) -> bool {
    peer.options.alpn.get_max_http_version() == 1
}
