//! The certificates the store publishes: one persistent table, changed
//! in place by each put or delete and handed to the handshake at publish.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::METRICS;
use crate::snapshot::SnapshotCell;
use crate::tls::{CertTable, LoadedCert};

#[derive(Default)]
pub(super) struct CertBook {
    table: CertTable,
    changed: bool,
}

impl CertBook {
    pub fn set(&mut self, id: &str, cert: Option<Arc<LoadedCert>>) {
        match cert {
            Some(cert) => {
                warn_if_not_valid_now(&cert);
                METRICS
                    .tls_cert_not_after
                    .with_label_values(&[id])
                    .set(cert.not_after);
                for o in self.table.insert(cert) {
                    tracing::warn!(
                        sni = %o.sni,
                        serving = %o.serving,
                        also_claimed_by = ?o.others,
                        "certificates overlap: the lowest id serves the name"
                    );
                }
            }
            None => {
                if !self.table.remove(id) {
                    return;
                }
                let _ = METRICS.tls_cert_not_after.remove_label_values(&[id]);
            }
        }
        self.changed = true;
    }

    pub fn ids(&self) -> Vec<String> {
        self.table.iter().map(|c| c.id.to_string()).collect()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Hands the table to the handshake if it changed (an O(1) copy).
    pub fn publish(&mut self, cell: &SnapshotCell) {
        if std::mem::take(&mut self.changed) {
            cell.certs.store(Arc::new(self.table.clone()));
        }
    }
}

/// Expired or not yet valid certificates are served (the operator may be
/// mid-rotation; refusing would leave the name with nothing) but said so.
fn warn_if_not_valid_now(cert: &LoadedCert) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if cert.not_after < now {
        tracing::warn!(cert = %cert.id, not_after = cert.not_after, "certificate has expired; serving it until it is replaced");
    } else if cert.not_before > now {
        tracing::warn!(cert = %cert.id, not_before = cert.not_before, "certificate is not valid yet; serving it anyway");
    }
}
