//! The client side: how `https://` and `grpcs://` nodes are connected to,
//! built once per upstream policy change (never per request) from the
//! policy's checked `tls`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use crate::model::upstream_tls::UpstreamTlsDer;

/// An upstream's TLS settings as pingora's connector takes them.
pub struct UpstreamTls {
    pub verify: bool,
    /// Overrides the node URL's host as SNI and verified name.
    pub sni: Option<String>,
    /// Replaces the system roots.
    pub ca: Option<Arc<CaType>>,
    pub client: Option<Arc<CertKey>>,
    /// Keeps connections made under different settings in different pools
    /// (pingora's pool key covers the client certificate, not the CAs).
    pub pool_key: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("sni", &self.sni)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// From a policy's checked `tls` (its DER parsed already).
    pub fn new(der: &UpstreamTlsDer) -> Self {
        let mut h = ahash::AHasher::default();
        der.verify.hash(&mut h);
        der.sni.hash(&mut h);
        der.ca.hash(&mut h);
        let ca = (!der.ca.is_empty()).then(|| {
            let certs: Vec<WrappedX509> = der
                .ca
                .iter()
                .map(|d| WrappedX509::new(d.clone(), parse_x509))
                .collect();
            Arc::<CaType>::from(certs.into_boxed_slice())
        });
        let client = der
            .client
            .as_ref()
            .map(|(chain, key)| Arc::new(CertKey::new(chain.clone(), key.clone())));
        Self {
            verify: der.verify,
            sni: der.sni.clone(),
            ca,
            client,
            pool_key: h.finish(),
        }
    }
}
