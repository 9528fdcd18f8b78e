//! Per-key validation of etcd values into the store (sync rule 3): a bad
//! value is logged with its key and reason, counted, and the key keeps its
//! last good value; nothing else is held back.

use std::collections::{BTreeMap, BTreeSet};

use super::keyspace::{Key, Keyspace};
use crate::metrics::METRICS;
use crate::model::error::from_json;
use crate::model::instance::parse_instance;
use crate::model::settings::SettingsSpec;
use crate::model::{RouteSpec, Timeouts, UpstreamSpec};
use crate::store::{ApplyReport, Store};

/// The store plus the raw last-good value of every accepted key: what a
/// re-list is diffed against and what the last-known-good file holds.
pub struct EtcdState {
    pub store: Store,
    keys: Keyspace,
    known: BTreeMap<String, String>,
    gateways: BTreeSet<String>,
    /// Bootstrap file defaults, under `/settings` overrides.
    base_timeouts: Timeouts,
    /// Revision of the last applied change to routes, upstreams, settings
    /// or instances (not gateway heartbeats): what convergence is about.
    config_revision: i64,
}

fn reject(kind: &'static str, key: &str, reason: &dyn std::fmt::Display, store: &Store) {
    METRICS.config_rejected.with_label_values(&[kind]).inc();
    store.cell().status.count_rejected();
    tracing::warn!(key, kind, reason = %reason, "rejected config value; the key keeps its last good value");
}

impl EtcdState {
    pub fn new(store: Store, keys: Keyspace, base_timeouts: Timeouts) -> Self {
        Self {
            store,
            keys,
            known: BTreeMap::new(),
            gateways: BTreeSet::new(),
            base_timeouts,
            config_revision: 0,
        }
    }

    pub fn config_revision(&self) -> i64 {
        self.config_revision
    }

    /// The accepted raw values, for the last-known-good file.
    pub fn known(&self) -> &BTreeMap<String, String> {
        &self.known
    }

    /// Applies one put.
    pub fn put(&mut self, key: &str, value: &[u8], lease: i64, mod_revision: i64) {
        let Ok(text) = std::str::from_utf8(value) else {
            reject("value", key, &"value is not UTF-8", &self.store);
            return;
        };
        let class = self.keys.classify(key);
        let unleased = lease == 0 && matches!(class, Key::Instance { .. });
        if !unleased && self.known.get(key).map(|v| v.as_bytes()) == Some(value) {
            return;
        }
        let accepted = match class {
            Key::Route(id) => match from_json::<RouteSpec>(value).and_then(|spec| {
                if spec.id.as_deref().is_some_and(|x| x != id) {
                    return Err(crate::model::FieldError::new(
                        "id",
                        format!("must be absent or equal the key's id {id:?}"),
                    ));
                }
                spec.compile(id, "")
            }) {
                Ok(route) => {
                    self.store.set_route(id, Some(route));
                    true
                }
                Err(e) => {
                    reject("route", key, &e, &self.store);
                    false
                }
            },
            Key::Upstream(name) => {
                match from_json::<UpstreamSpec>(value).and_then(|s| s.compile("").map(|n| (s, n))) {
                    Ok(policy) => {
                        self.store.set_upstream(name, Some(policy));
                        true
                    }
                    Err(e) => {
                        reject("upstream", key, &e, &self.store);
                        false
                    }
                }
            }
            Key::Settings => match from_json::<SettingsSpec>(value)
                .and_then(|s| s.validate("").map(|k| (s, k)))
            {
                Ok((s, limit_key)) => {
                    let t = s
                        .timeout
                        .map_or(self.base_timeouts, |t| t.apply(self.base_timeouts));
                    self.store.set_default_timeouts(t);
                    self.store.set_default_limit(s.rate_limit.zip(limit_key));
                    true
                }
                Err(e) => {
                    reject("settings", key, &e, &self.store);
                    false
                }
            },
            Key::Instance { service, id } => {
                if lease == 0 {
                    METRICS.unleased_instances.inc();
                    tracing::warn!(
                        key,
                        "registry key has no lease and is ignored: nothing would remove it when the instance dies"
                    );
                    // A key that lost its lease no longer proves a live instance.
                    self.store.set_instance(service, id, None);
                    self.known.remove(key);
                    return;
                }
                match parse_instance(id, value) {
                    Ok(node) => {
                        self.store.set_instance(service, id, Some(node));
                        true
                    }
                    Err(e) => {
                        reject("instance", key, &e, &self.store);
                        false
                    }
                }
            }
            Key::Gateway(node) => {
                self.gateways.insert(node.to_string());
                return;
            }
            Key::Unknown => {
                tracing::debug!(key, "ignoring unknown key");
                return;
            }
        };
        if accepted {
            self.known.insert(key.to_string(), text.to_string());
            self.config_revision = self.config_revision.max(mod_revision);
        }
    }

    /// Applies one delete.
    pub fn delete(&mut self, key: &str, revision: i64) {
        let was_known = self.known.remove(key).is_some();
        match self.keys.classify(key) {
            Key::Route(id) => self.store.set_route(id, None),
            Key::Upstream(name) => self.store.set_upstream(name, None),
            Key::Settings => {
                self.store.set_default_timeouts(self.base_timeouts);
                self.store.set_default_limit(None);
            }
            Key::Instance { service, id } => self.store.set_instance(service, id, None),
            Key::Gateway(node) => {
                self.gateways.remove(node);
                return;
            }
            Key::Unknown => return,
        }
        if was_known {
            self.config_revision = self.config_revision.max(revision);
        }
    }

    /// Replaces everything with a fresh listing, applying only the
    /// difference: keys gone from etcd are deleted, the rest put (an
    /// unchanged value is a no-op in the store).
    pub fn relist(&mut self, kvs: &[(String, Vec<u8>, i64, i64)], revision: i64) {
        let listed: BTreeSet<&str> = kvs.iter().map(|(k, ..)| k.as_str()).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !listed.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            self.delete(&k, revision);
        }
        self.gateways.clear();
        for (k, v, lease, rev) in kvs {
            self.put(k, v, *lease, *rev);
        }
    }

    /// Publishes the applied state at `revision`.
    pub fn publish(&mut self, revision: i64) -> ApplyReport {
        self.store.set_revision(revision);
        let cell = self.store.cell();
        cell.status.set_gateways(self.gateways.len());
        // Cluster-scoped limits divide by the live gateways (at least us).
        cell.fleet.store(
            self.gateways.len().max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        let report = self.store.publish();
        if report.rebuilt {
            METRICS.rebuilds.inc();
        }
        METRICS.applied_revision.set(revision);
        for r in &report.rejected {
            METRICS
                .config_rejected
                .with_label_values(&["route_conflict"])
                .inc();
            tracing::warn!(route = %r.id, reason = %r.reason, "route not served");
        }
        report
    }
}
