//! Per-key validation of etcd values into the store (sync rule 3): a bad
//! value is logged with its key and reason, counted, and the key keeps its
//! last good value; nothing else is held back.

use std::sync::Arc;

use imbl::OrdMap;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::batch_hold::{BatchHold, Held};
use super::coordination::{self, Coordination};
use super::fleet::Fleet;
use super::keyspace::{Key, Keyspace};
use super::leases::{Ending, LeaseBook};
use super::preserve::{Decision, Preservation, Probed};
use super::purges::Purges;
use crate::metrics::METRICS;
use crate::model::instance::{health_path, parse_instance};
use crate::model::preservation::SelfPreservationSpec;
use crate::model::Timeouts;
use crate::source::document::{self, Document, Kind};
use crate::store::{ApplyReport, Store};
use crate::tls::KeyRing;

/// An accepted raw value, the re-list that last saw its key, and its
/// lease (registry keys; 0 for the rest).
#[derive(Debug, Clone)]
struct Known {
    value: Arc<str>,
    listed: u32,
    lease: i64,
}

/// The raw last-good value of every accepted key, serialised as a map of
/// key to value. A persistent map: the last-known-good writer takes a copy
/// in O(1) (a deep clone was ~3 MiB at 20,000 keys, every save).
#[derive(Debug, Clone, Default)]
pub struct KnownValues(OrdMap<Arc<str>, Known>);

impl Serialize for KnownValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(&**k, &*v.value)?;
        }
        map.end()
    }
}

/// The store plus the raw last-good value of every accepted key: what a
/// re-list is diffed against and what the last-known-good file holds.
pub struct EtcdState {
    pub store: Store,
    keys: Keyspace,
    known: KnownValues,
    /// Counts re-lists; a key listed by the current one carries its number.
    generation: u32,
    /// A re-list has begun and not finished: `known` is part old, part new.
    listing: bool,
    /// The live gateways, and which of them share health probes.
    fleet: Fleet,
    /// Bootstrap file defaults, under `/settings` overrides.
    base_timeouts: Timeouts,
    /// Revision of the last applied change to routes, upstreams, settings
    /// or instances (not gateway heartbeats): what convergence is about.
    config_revision: i64,
    /// Registry leases' remaining time: expiry or revoke.
    pub leases: LeaseBook,
    /// Instances kept through a mass lease expiry.
    pub preserve: Preservation,
    /// The last session ended in an error: the next listing ends an outage.
    pub after_outage: bool,
    /// Decrypts stored private keys (`tls.key_encryption_keys`).
    key_ring: Arc<KeyRing>,
    /// Config changes held while a multi-transaction apply writes.
    hold: BatchHold,
    /// Cache purge records applied.
    pub purges: Purges,
    /// Shared health verdicts and ACME state seen.
    coordination: Coordination,
}

/// Counts a refused value or route under `kind`, in the metric and in
/// `/status` `rejected`.
fn count_rejected(kind: &'static str, store: &Store) {
    METRICS.config_rejected.with_label_values(&[kind]).inc();
    store.cell().status.count_rejected();
}

fn reject(kind: &'static str, key: &str, reason: &dyn std::fmt::Display, store: &Store) {
    count_rejected(kind, store);
    tracing::warn!(key, kind, reason = %reason, "rejected config value; the key keeps its last good value");
}

impl EtcdState {
    pub fn new(
        store: Store,
        keys: Keyspace,
        base_timeouts: Timeouts,
        preservation: SelfPreservationSpec,
        key_ring: Arc<KeyRing>,
    ) -> Self {
        Self {
            key_ring,
            hold: BatchHold::default(),
            purges: Purges::default(),
            coordination: Coordination::default(),
            leases: LeaseBook::default(),
            preserve: Preservation::new(preservation),
            after_outage: false,
            store,
            keys,
            known: KnownValues::default(),
            generation: 0,
            listing: false,
            fleet: Fleet::default(),
            base_timeouts,
            config_revision: 0,
        }
    }

    pub fn config_revision(&self) -> i64 {
        self.config_revision
    }

    /// The accepted raw values, for the last-known-good file.
    pub fn known(&self) -> &KnownValues {
        &self.known
    }

    /// Whether a re-list is under way (its state is not worth saving).
    pub fn is_listing(&self) -> bool {
        self.listing
    }

    /// Applies one put.
    pub fn put(&mut self, key: &str, value: &[u8], lease: i64, mod_revision: i64) {
        if self.listing {
            // Listed, so not gone, even if this value is rejected below
            // (the key keeps its last good value).
            if let Some(k) = self.known.0.get_mut(key) {
                k.listed = self.generation;
            }
        }
        let Ok(text) = std::str::from_utf8(value) else {
            reject("value", key, &"value is not UTF-8", &self.store);
            return;
        };
        let class = self.keys.classify(key);
        if self.hold.holding() && class.is_config() {
            let held = Held::Put {
                key: key.to_string(),
                value: value.to_vec(),
                lease,
                rev: mod_revision,
            };
            if let Some(replay) = self.hold.push(held) {
                self.replay(replay);
            }
            return;
        }
        let is_instance = matches!(class, Key::Instance { .. });
        let unleased = lease == 0 && is_instance;
        let lease = if is_instance { lease } else { 0 };
        if let Some(k) = self
            .known
            .0
            .get_mut(key)
            .filter(|k| k.value.as_bytes() == value)
        {
            if !unleased && k.lease == lease {
                return;
            }
            if !unleased {
                // The same registration under a new lease (re-registered).
                self.leases.detach(k.lease);
                self.leases.attach(lease);
                k.lease = lease;
                return;
            }
        }
        // What the last-known-good file keeps, when not the value as it came.
        let mut kept_as: Option<String> = None;
        let accepted = match class {
            Key::Route(id) => self.accept(Kind::Route, id, key, value, &mut kept_as),
            Key::Upstream(name) => self.accept(Kind::Upstream, name, key, value, &mut kept_as),
            Key::Cert(id) => self.accept(Kind::Cert, id, key, value, &mut kept_as),
            Key::Consumer(name) => self.accept(Kind::Consumer, name, key, value, &mut kept_as),
            Key::Settings => self.accept(Kind::Settings, "", key, value, &mut kept_as),
            Key::Instance { service, id } => {
                if lease == 0 {
                    METRICS.unleased_instances.inc();
                    tracing::warn!(
                        key,
                        "registry key has no lease and is ignored: nothing would remove it when the instance dies"
                    );
                    // A key that lost its lease no longer proves a live instance.
                    self.store.set_instance(service, id, None);
                    if let Some(gone) = self.known.0.remove(key) {
                        self.leases.detach(gone.lease);
                        self.preserve.unregistered(service);
                    }
                    return;
                }
                match parse_instance(id, value) {
                    Ok(node) => {
                        match self.known.0.get(key) {
                            Some(k) => self.leases.detach(k.lease),
                            None => {
                                for (svc, other) in self.preserve.registered(service, &node) {
                                    self.store.set_instance(&svc, &other, None);
                                }
                            }
                        }
                        self.leases.attach(lease);
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
                self.fleet.put(node, text);
                return;
            }
            Key::Health { .. }
            | Key::AcmeChallenge(_)
            | Key::AcmeAttempt(_)
            | Key::AcmeRenew(_) => {
                self.coordination
                    .put(&class, key, text, self.generation, &mut self.store);
                return;
            }
            Key::Coordination => return,
            Key::Batch(apply) => {
                self.hold.marker_put(apply, mod_revision, self.listing);
                return;
            }
            Key::Purge(id) => {
                match self.purges.put(id, value, self.store.cell()) {
                    // Applied: `apply --wait` and the fleet view see it.
                    Ok(()) => self.config_revision = self.config_revision.max(mod_revision),
                    Err(e) => reject("purge", key, &e, &self.store),
                }
                return;
            }
            Key::Unknown => {
                tracing::debug!(key, "ignoring unknown key");
                return;
            }
        };
        if accepted {
            let known = Known {
                value: kept_as.as_deref().unwrap_or(text).into(),
                listed: self.generation,
                lease,
            };
            self.known.0.insert(key.into(), known);
            self.config_revision = self.config_revision.max(mod_revision);
        }
    }

    /// Checks a config value (one validator with the admin API) and hands
    /// it to the store; a bad one is rejected, the key's last good value
    /// stays. `kept_as`: what last-known-good keeps instead of the value.
    fn accept(
        &mut self,
        kind: Kind,
        id: &str,
        key: &str,
        value: &[u8],
        kept_as: &mut Option<String>,
    ) -> bool {
        let doc = match document::check(kind, id, value, &self.key_ring) {
            Ok(doc) => doc,
            Err(e) => {
                reject(kind.name(), key, &e, &self.store);
                return false;
            }
        };
        match doc {
            Document::Route(route) => self.store.set_route(id, Some(route)),
            Document::Upstream(spec, nodes) => {
                self.preserve.set_policy(
                    id,
                    spec.self_preservation.clone(),
                    (spec.health_check.as_ref())
                        .and_then(|h| h.active.as_ref())
                        .map(|a| a.path.clone()),
                );
                self.store.set_upstream(id, Some((spec, nodes)));
            }
            Document::Cert(doc, kept) => {
                self.store.set_cert(id, doc.loaded.map(Arc::new));
                coordination::set_managed(&mut self.store, id, doc.managed);
                *kept_as = kept;
            }
            Document::Consumer(c) => self.store.set_consumer(id, Some(c)),
            Document::Settings(s, valid) => {
                let t = s
                    .timeout
                    .map_or(self.base_timeouts, |t| t.apply(self.base_timeouts));
                self.store.set_default_timeouts(t);
                self.store
                    .set_default_limit(s.rate_limit.zip(valid.limit_key));
                self.store.set_global_plugins(valid.plugins);
            }
        }
        true
    }

    /// Applies one delete.
    pub fn delete(&mut self, key: &str, revision: i64) {
        self.remove(key, revision, false);
    }

    /// A key deleted by a watch event, or found gone by a re-list
    /// (`relisted`: it went while this gateway was not watching, so how
    /// cannot be told, and an instance of it is never preserved).
    fn remove(&mut self, key: &str, revision: i64, relisted: bool) {
        let class = self.keys.classify(key);
        if self.hold.holding() && class.is_config() && !relisted {
            let held = Held::Delete {
                key: key.to_string(),
                rev: revision,
            };
            if let Some(replay) = self.hold.push(held) {
                self.replay(replay);
            }
            return;
        }
        let gone = self.known.0.remove(key);
        let was_known = gone.is_some();
        match class {
            Key::Route(id) => self.store.set_route(id, None),
            Key::Upstream(name) => {
                self.preserve.set_policy(name, None, None);
                self.store.set_upstream(name, None)
            }
            Key::Cert(id) => {
                self.store.set_cert(id, None);
                coordination::set_managed(&mut self.store, id, None);
            }
            Key::Consumer(name) => self.store.set_consumer(name, None),
            Key::Settings => {
                self.store.set_default_timeouts(self.base_timeouts);
                self.store.set_default_limit(None);
                self.store.set_global_plugins(Default::default());
            }
            Key::Instance { service, id } => {
                let kept = gone.is_some_and(|k| self.instance_gone(service, id, &k, relisted));
                if !kept {
                    self.store.set_instance(service, id, None);
                }
            }
            Key::Gateway(node) => {
                self.fleet.remove(node);
                return;
            }
            Key::Health { .. }
            | Key::AcmeChallenge(_)
            | Key::AcmeAttempt(_)
            | Key::AcmeRenew(_) => {
                self.coordination.remove(&class, key, &mut self.store);
                return;
            }
            Key::Coordination => return,
            Key::Batch(apply) => {
                if let Some(replay) = self.hold.marker_gone(apply) {
                    self.replay(replay);
                }
                return;
            }
            Key::Purge(id) => {
                self.purges.delete(id);
                return;
            }
            Key::Unknown => return,
        }
        if was_known {
            self.config_revision = self.config_revision.max(revision);
        }
    }

    /// Applies config events held for an apply, in the order they came.
    fn replay(&mut self, events: Vec<Held>) {
        for e in events {
            match e {
                Held::Put {
                    key,
                    value,
                    lease,
                    rev,
                } => self.put(&key, &value, lease, rev),
                Held::Delete { key, rev } => self.delete(&key, rev),
            }
        }
    }

    /// The config revision to tell the fleet: while holding for an apply,
    /// none past its start (registry events may move the real one on, and
    /// `apply --wait` must not take that for the apply being served).
    pub fn announced_revision(&self) -> i64 {
        self.hold.applied(self.config_revision)
    }

    /// Whether config changes are held for an apply under way.
    pub fn holding(&self) -> bool {
        self.hold.holding()
    }

    /// When held config changes must be published whatever the apply does.
    pub fn hold_deadline(&self) -> Option<std::time::Instant> {
        self.hold.deadline()
    }

    /// Ends a hold past its deadline (the changes are then published).
    pub fn release_overdue(&mut self) {
        if let Some(replay) = self.hold.overdue(std::time::Instant::now()) {
            self.replay(replay);
        }
    }

    /// A registered instance's key is gone: whether it is kept (preserved,
    /// and the instances expired with it put back in the store).
    fn instance_gone(&mut self, service: &str, id: &str, k: &Known, relisted: bool) -> bool {
        let now = std::time::Instant::now();
        let ending = if relisted {
            Ending::Unknown
        } else {
            self.leases.classify(k.lease, now)
        };
        self.leases.detach(k.lease);
        self.preserve.unregistered(service);
        let Ending::Expired { ttl } = ending else {
            return false;
        };
        let Ok(node) = parse_instance(id, k.value.as_bytes()) else {
            return false;
        };
        let path = health_path(&k.value);
        match self.preserve.expired(service, node, path, ttl, now) {
            Decision::Drop => false,
            Decision::Preserve { restore } => {
                for node in restore {
                    let id = node.id.clone();
                    self.store.set_instance(service, &id, Some(node));
                }
                true
            }
        }
    }

    /// A probe of a preserved instance answered; also lets go of the ones
    /// kept too long. Whether the store changed (then publish).
    pub fn probed(&mut self, p: &Probed) -> bool {
        let now = std::time::Instant::now();
        let mut dropped = self.preserve.sweep(now);
        dropped.extend(self.preserve.probed(p));
        for (service, id) in &dropped {
            self.store.set_instance(service, id, None);
        }
        !dropped.is_empty()
    }

    /// Starts replacing everything with a fresh listing, applying only the
    /// difference: each listed key is [`put`](Self::put) as its page
    /// arrives (an unchanged value is a no-op in the store), so a large
    /// listing is never held whole; [`finish_relist`](Self::finish_relist)
    /// then deletes the keys the listing did not contain.
    pub fn begin_relist(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.listing = true;
        self.fleet.clear();
        self.hold.relist_begins();
        self.purges.relist_begins();
    }

    /// Ends a re-list at `revision`: keys gone from etcd are deleted.
    pub fn finish_relist(&mut self, revision: i64) {
        let generation = self.generation;
        let gone: Vec<Arc<str>> = (self.known.0.iter())
            .filter(|(_, k)| k.listed != generation)
            .map(|(key, _)| key.clone())
            .collect();
        for k in gone {
            self.remove(&k, revision, true);
        }
        for k in self.coordination.unlisted(generation) {
            self.remove(&k, revision, true);
        }
        self.listing = false;
        self.hold.relist_ends(revision);
        self.purges.relist_ends(self.store.cell());
    }

    /// Publishes the applied state at `revision`.
    pub fn publish(&mut self, revision: i64) -> ApplyReport {
        let revision = self.hold.applied(revision);
        self.store.set_revision(revision);
        for (service, id) in self.preserve.sweep(std::time::Instant::now()) {
            self.store.set_instance(&service, &id, None);
        }
        self.preserve.flush();
        let cell = self.store.cell();
        self.fleet.publish(cell);
        let (preserved, services) = self.preserve.counts();
        cell.status.set_preserved(preserved, services);
        let report = self.store.publish();
        METRICS.applied_revision.set(revision);
        for r in &report.rejected {
            count_rejected("route_conflict", &self.store);
            tracing::warn!(route = %r.id, reason = %r.reason, "route not served");
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotCell;

    fn state() -> EtcdState {
        let store = Store::new(SnapshotCell::new(), Timeouts::default());
        EtcdState::new(
            store,
            Keyspace::new("/t", "/s"),
            Timeouts::default(),
            SelfPreservationSpec::default(),
            Arc::new(KeyRing::new(&[]).unwrap()),
        )
    }

    fn relist(s: &mut EtcdState, kvs: &[(&str, &str)], revision: i64) {
        s.begin_relist();
        assert!(s.is_listing());
        for (k, v) in kvs {
            s.put(k, v.as_bytes(), 1, revision);
        }
        s.finish_relist(revision);
        assert!(!s.is_listing());
    }

    /// What the last-known-good file would hold.
    fn saved(s: &EtcdState) -> Vec<(String, String)> {
        let json = serde_json::to_string(s.known()).unwrap();
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        map.into_iter().collect()
    }

    #[test]
    fn a_relist_deletes_what_is_gone_and_keeps_a_rejected_key_s_last_good_value() {
        let mut s = state();
        let a = r#"{"paths":["/a"],"upstream":"u"}"#;
        let b = r#"{"paths":["/b"],"upstream":"u"}"#;
        relist(
            &mut s,
            &[
                ("/t/routes/a", a),
                ("/t/routes/b", b),
                ("/s/u/i1", "http://127.0.0.1:1"),
            ],
            5,
        );
        s.publish(5);
        assert_eq!(s.store.cell().status.view().routes, 2);
        // b now has a bad value, i1 is gone.
        relist(&mut s, &[("/t/routes/a", a), ("/t/routes/b", "{bad")], 9);
        s.publish(9);
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(saved(&s), [kv("/t/routes/a", a), kv("/t/routes/b", b)]);
        assert_eq!(s.store.cell().status.view().routes, 2);
        assert_eq!(s.store.cell().status.view().instances, 0);
        assert_eq!(
            s.config_revision(),
            9,
            "the delete moved the config revision"
        );
        // A relist that never finished is not what the next one diffs against.
        s.begin_relist();
        s.put("/t/routes/c", a.as_bytes(), 0, 10);
        relist(&mut s, &[("/t/routes/a", a)], 11);
        s.publish(11);
        assert_eq!(s.store.cell().status.view().routes, 1);
        assert_eq!(saved(&s), [kv("/t/routes/a", a)]);
    }
}
