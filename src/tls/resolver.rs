//! rustls asks which certificate to present; the answer is read from the
//! published certificate table without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::table::CertTable;
use crate::metrics::METRICS;

/// Exact SNI, then wildcard, then the default certificate; none of them →
/// no certificate, and rustls ends the handshake with an alert.
pub struct SniResolver {
    certs: Arc<ArcSwap<CertTable>>,
    default: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("default", &self.default.is_some())
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    pub fn new(certs: Arc<ArcSwap<CertTable>>, default: Option<Arc<CertifiedKey>>) -> Self {
        Self { certs, default }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let table = self.certs.load();
            // rustls hands over the name as sent; DNS names are case-blind.
            let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                table.lookup(&name.to_ascii_lowercase()).cloned()
            } else {
                table.lookup(name).cloned()
            };
            if let Some(c) = found {
                return Some(c.key.clone());
            }
        }
        let default = self.default.clone();
        if default.is_none() {
            METRICS.tls_no_certificate.inc();
        }
        default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}
