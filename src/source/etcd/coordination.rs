//! Keys the fleet coordinates through rather than config: shared health
//! verdicts and ACME state (tokens, attempts, renewal requests). They are
//! applied at once (never held by an apply under way), are not saved as
//! last-known-good (each is leased or only meaningful while etcd is
//! reachable) and, like config, a re-list removes the ones it no longer
//! finds.

use std::collections::HashMap;

use super::keyspace::Key;
use crate::metrics::METRICS;
use crate::model::acme::{AcmeAttempt, ManagedCert};
use crate::store::Store;

/// The coordination keys seen, with the listing that last saw each.
#[derive(Default)]
pub struct Coordination {
    seen: HashMap<String, u32>,
}

impl Coordination {
    /// Applies a put of `key` (classified as `class`); false if `class` is
    /// not a coordination key.
    pub fn put(
        &mut self,
        class: &Key<'_>,
        key: &str,
        text: &str,
        generation: u32,
        store: &mut Store,
    ) -> bool {
        match *class {
            Key::Health { service, id } => store.set_fleet_verdict(service, id, true),
            Key::AcmeChallenge(token) => store.edit_acme(|a| {
                a.challenges
                    .insert(token.to_string(), text.trim().to_string());
            }),
            Key::AcmeAttempt(cert) => match serde_json::from_str::<AcmeAttempt>(text) {
                Ok(attempt) => {
                    // Only for a certificate the fleet manages (a record
                    // left by a deleted one must not hold an alert up).
                    if store.cell().acme.load().managed.contains_key(cert) {
                        METRICS
                            .acme_failures
                            .with_label_values(&[cert])
                            .set(i64::from(attempt.failures));
                    }
                    store.edit_acme(|a| {
                        a.attempts.insert(cert.to_string(), attempt);
                    })
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "unreadable ACME attempt record; ignored")
                }
            },
            Key::AcmeRenew(cert) => store.edit_acme(|a| {
                a.renew.insert(cert.to_string());
            }),
            _ => return false,
        }
        self.seen.insert(key.to_string(), generation);
        true
    }

    /// Applies a delete; false if `class` is not a coordination key.
    pub fn remove(&mut self, class: &Key<'_>, key: &str, store: &mut Store) -> bool {
        match *class {
            Key::Health { service, id } => store.set_fleet_verdict(service, id, false),
            Key::AcmeChallenge(token) => store.edit_acme(|a| {
                a.challenges.remove(token);
            }),
            Key::AcmeAttempt(cert) => {
                let _ = crate::metrics::METRICS
                    .acme_failures
                    .remove_label_values(&[cert]);
                store.edit_acme(|a| {
                    a.attempts.remove(cert);
                })
            }
            Key::AcmeRenew(cert) => store.edit_acme(|a| {
                a.renew.remove(cert);
            }),
            _ => return false,
        }
        self.seen.remove(key);
        true
    }

    /// The keys a listing of `generation` did not see: gone from etcd.
    pub fn unlisted(&self, generation: u32) -> Vec<String> {
        (self.seen.iter())
            .filter(|(_, g)| **g != generation)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Sets or clears what the fleet orders for certificate `id`.
pub fn set_managed(store: &mut Store, id: &str, managed: Option<ManagedCert>) {
    store.edit_acme(|a| match managed {
        Some(m) => {
            a.managed.insert(id.to_string(), m);
            // Its attempt record may have been listed first.
            if let Some(attempt) = a.attempts.get(id) {
                (METRICS.acme_failures.with_label_values(&[id])).set(i64::from(attempt.failures));
            }
        }
        None => {
            if a.managed.remove(id).is_some() {
                // An alert on a certificate nobody manages would never clear.
                let _ = METRICS.acme_failures.remove_label_values(&[id]);
            }
        }
    });
}
