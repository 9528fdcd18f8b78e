//! The pingora peer for a node: its address, and for `https://`/`grpcs://`
//! TLS with SNI and verification, for `h2c://`/`grpc://`/`grpcs://` HTTP/2.

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::model::timeout::Timeouts;
use crate::model::upstream::NodeScheme;
use crate::model::Node;
use crate::snapshot::InstanceSet;
use crate::tls::upstream::UpstreamTls;

/// The peer of an instance of a set, with the route's timeouts: what
/// both engines connect with (the core engine only when it opens one).
pub fn for_instance(set: &InstanceSet, index: usize, t: &Timeouts) -> HttpPeer {
    with_timeouts(&set.nodes[index], set.tls.as_deref(), t)
}

/// [`peer_for`] with the route's timeouts.
pub fn with_timeouts(node: &Node, tls: Option<&UpstreamTls>, t: &Timeouts) -> HttpPeer {
    let mut peer = peer_for(node, tls);
    peer.options.connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.read);
    peer.options.write_timeout = Some(t.write);
    peer.options.idle_timeout = Some(t.idle);
    peer
}

/// `tls` is the upstream policy's (None: system roots, verification on,
/// SNI = the node URL's host).
pub fn peer_for(node: &Node, tls: Option<&UpstreamTls>) -> HttpPeer {
    if node.scheme == NodeScheme::Http {
        return HttpPeer::new(node.addr, false, String::new());
    }
    let host = || {
        let host = node
            .authority
            .rsplit_once(':')
            .map_or(&*node.authority, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    };
    let sni = match tls.and_then(|t| t.sni.clone()) {
        Some(sni) => sni,
        None if node.scheme.is_tls() => host(),
        None => String::new(),
    };
    let mut peer = HttpPeer::new(node.addr, node.scheme.is_tls(), sni);
    peer.options.alpn = match node.scheme {
        // HTTP/2 only: a gRPC node that cannot speak it must fail, not
        // get HTTP/1.1.
        NodeScheme::H2c | NodeScheme::H2s => ALPN::H2,
        NodeScheme::Http | NodeScheme::Https => ALPN::H1,
    };
    let verify = tls.is_none_or(|t| t.verify);
    peer.options.verify_cert = verify;
    peer.options.verify_hostname = verify;
    if let Some(t) = tls {
        peer.options.ca = t.ca.clone();
        peer.client_cert_key = t.client.clone();
        peer.group_key = t.pool_key;
    }
    peer
}
