//! The single config writer: keeps the last good value of every key,
//! applies changes from a source, and publishes snapshots.
//!
//! Publishing is incremental: only routes changed since the last publish
//! are removed from and re-inserted into a copy of the current router
//! (which shares every untouched trie node), so a change costs what it
//! changes, not the size of the table. Upstream and instance edits only
//! swap their leaf and never touch the router.

mod certs;
mod consumers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use crate::limiter::{self, RouteLimiter};
use crate::model::consumer::ConsumerEntry;
use crate::model::rate_limit::{LimitKey, RateLimitSpec};
use crate::model::{Node, Route, Timeouts, UpstreamSpec};
use crate::plugins::PluginList;
use crate::snapshot::{entry_for, shape_of, Rejected, RouteEntry, SnapshotCell, UpstreamTable};
use crate::tls::LoadedCert;
use certs::CertBook;
use consumers::ConsumerBook;

/// What one publish did, for logs and metrics.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Whether the router changed.
    pub rebuilt: bool,
    /// Routes valid on their own but conflicting with a route already served.
    pub rejected: Vec<Rejected>,
    pub took: std::time::Duration,
}

/// Desired state, by key, and what is actually served.
pub struct Store {
    cell: Arc<SnapshotCell>,
    table: UpstreamTable,
    /// What the source wants served, by route id. Shared with `served`
    /// (one parsed copy of each route, not two).
    desired: BTreeMap<String, Arc<Route>>,
    /// What the router holds, by route id (may lag `desired` for routes in conflict).
    served: BTreeMap<String, (Arc<Route>, Arc<RouteEntry>)>,
    /// Route ids changed since the last publish.
    changed: BTreeSet<String>,
    /// Routes waiting for a conflicting route to go away.
    blocked: BTreeSet<String>,
    /// How many desired routes name each upstream, to forget unused leaves.
    upstream_users: BTreeMap<String, usize>,
    policies: BTreeMap<String, UpstreamSpec>,
    revision: i64,
    /// The settings' limit for routes without their own.
    default_limit: Option<(RateLimitSpec, LimitKey)>,
    /// Each route's limiter, carried across edits while its limit holds.
    limiters: BTreeMap<String, Arc<RouteLimiter>>,
    /// TLS certificates by id and name.
    certs: CertBook,
    /// The settings' plugins, around every route's own.
    global_plugins: PluginList,
    consumers: ConsumerBook,
}

impl Store {
    pub fn new(cell: Arc<SnapshotCell>, defaults: Timeouts) -> Self {
        Self {
            table: UpstreamTable::publishing(defaults, cell.checked.clone(), cell.services.clone()),
            cell,
            desired: BTreeMap::new(),
            served: BTreeMap::new(),
            changed: BTreeSet::new(),
            blocked: BTreeSet::new(),
            upstream_users: BTreeMap::new(),
            policies: BTreeMap::new(),
            revision: 0,
            default_limit: None,
            limiters: BTreeMap::new(),
            certs: CertBook::default(),
            global_plugins: PluginList::default(),
            consumers: ConsumerBook::default(),
        }
    }

    pub fn cell(&self) -> &Arc<SnapshotCell> {
        &self.cell
    }

    fn count_user(&mut self, upstream: &str, delta: isize) {
        let n = self.upstream_users.entry(upstream.to_string()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.upstream_users.remove(upstream);
            self.table.forget_if_unused(upstream);
        }
    }

    /// Sets or removes one route.
    pub fn set_route(&mut self, id: &str, route: Option<Route>) {
        let old = match route {
            Some(r) => {
                if self.desired.get(id).is_some_and(|d| **d == r) {
                    return;
                }
                for name in r.upstream_names() {
                    *self.upstream_users.entry(name.to_string()).or_insert(0) += 1;
                }
                self.desired.insert(id.to_string(), Arc::new(r))
            }
            None => self.desired.remove(id),
        };
        if let Some(old) = old {
            for name in old.upstream_names() {
                self.count_user(name, -1);
            }
        }
        self.changed.insert(id.to_string());
    }

    /// Sets or removes one upstream policy (static nodes already resolved).
    pub fn set_upstream(&mut self, name: &str, policy: Option<(UpstreamSpec, Vec<Node>)>) {
        match &policy {
            Some((spec, _)) if self.policies.get(name) == Some(spec) => return,
            Some((spec, _)) => {
                self.policies.insert(name.to_string(), spec.clone());
            }
            None => {
                if self.policies.remove(name).is_none() {
                    return;
                }
            }
        }
        self.table.set_policy(name, policy);
        if !self.upstream_users.contains_key(name) {
            self.table.forget_if_unused(name);
        }
    }

    /// Sets or removes one registered instance; swaps only its leaf.
    pub fn set_instance(&mut self, service: &str, id: &str, node: Option<Node>) {
        let removed = node.is_none();
        self.table.set_instance(service, id, node);
        if removed && !self.upstream_users.contains_key(service) {
            self.table.forget_if_unused(service);
        }
    }

    /// The fleet's health verdict on one instance (`down`: unhealthy);
    /// takes effect at once, without a publish.
    pub fn set_fleet_verdict(&mut self, service: &str, id: &str, down: bool) {
        self.table.set_fleet_verdict(service, id, down);
    }

    /// Edits what the node knows of managed certificates (published at once).
    pub fn edit_acme(&mut self, edit: impl FnOnce(&mut crate::snapshot::acme::AcmeView)) {
        let mut view = (**self.cell.acme.load()).clone();
        edit(&mut view);
        self.cell.acme.store(Arc::new(view));
    }

    /// Sets or removes one TLS certificate (already loaded and checked).
    pub fn set_cert(&mut self, id: &str, cert: Option<Arc<LoadedCert>>) {
        self.certs.set(id, cert);
    }

    /// Replaces every certificate (a file source delivers them whole).
    pub fn replace_certs(&mut self, certs: Vec<Arc<LoadedCert>>) {
        let keep: BTreeSet<&str> = certs.iter().map(|c| &*c.id).collect();
        for id in self.certs.ids() {
            if !keep.contains(id.as_str()) {
                self.certs.set(&id, None);
            }
        }
        for c in certs {
            let id = c.id.clone();
            self.certs.set(&id, Some(c));
        }
    }

    pub fn route_ids(&self) -> Vec<String> {
        self.desired.keys().cloned().collect()
    }

    pub fn upstream_names(&self) -> Vec<String> {
        self.policies.keys().cloned().collect()
    }

    /// Replaces the whole desired state (a file source delivers it whole).
    pub fn replace_all(
        &mut self,
        routes: Vec<Route>,
        upstreams: BTreeMap<String, (UpstreamSpec, Vec<Node>)>,
    ) {
        let keep: BTreeSet<String> = routes.iter().map(|r| r.id.clone()).collect();
        for id in self.route_ids() {
            if !keep.contains(&id) {
                self.set_route(&id, None);
            }
        }
        for r in routes {
            let id = r.id.clone();
            self.set_route(&id, Some(r));
        }
        for name in self.upstream_names() {
            if !upstreams.contains_key(&name) {
                self.set_upstream(&name, None);
            }
        }
        for (name, policy) in upstreams {
            self.set_upstream(&name, Some(policy));
        }
    }

    /// Sets the default limit; every route without its own is re-placed
    /// with its new limiter (routes with their own keep theirs).
    pub fn set_default_limit(&mut self, limit: Option<(RateLimitSpec, LimitKey)>) {
        if self.default_limit == limit {
            return;
        }
        self.default_limit = limit;
        let ids: Vec<String> = self
            .desired
            .iter()
            .filter(|(_, r)| r.spec.rate_limit.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        self.changed.extend(ids);
    }

    /// Sets or removes one consumer.
    pub fn set_consumer(&mut self, name: &str, entry: Option<ConsumerEntry>) {
        self.consumers.set(&self.cell, name, entry);
    }

    /// Replaces every consumer (a file source delivers them whole).
    pub fn replace_consumers(&mut self, entries: Vec<ConsumerEntry>) {
        self.consumers.replace(&self.cell, entries);
    }

    /// Sets the settings' plugins; every route is re-placed with its new
    /// chain.
    pub fn set_global_plugins(&mut self, plugins: PluginList) {
        if self.global_plugins == plugins {
            return;
        }
        self.global_plugins = plugins;
        let ids: Vec<String> = self.desired.keys().cloned().collect();
        self.changed.extend(ids);
    }

    /// The limiter a route gets: its own limit or the default; the same
    /// limiter (and bucket levels) as before if the limit did not change.
    fn limiter_for(&mut self, id: &str, route: &Route) -> Option<Arc<RouteLimiter>> {
        let own = route.spec.rate_limit.clone().zip(route.limit_key.clone());
        let Some((spec, key)) = own.or_else(|| self.default_limit.clone()) else {
            self.limiters.remove(id);
            return None;
        };
        let previous = self.limiters.get(id);
        if let Some(l) = previous.filter(|l| l.spec == spec) {
            return Some(l.clone());
        }
        let l = Arc::new(RouteLimiter::new(
            spec,
            key,
            &self.cell.fleet,
            previous.map(|p| p.as_ref()),
            limiter::now_ns(),
        ));
        self.limiters.insert(id.to_string(), l.clone());
        Some(l)
    }

    /// Changes the proxy-wide default timeouts (a bootstrap file edit).
    pub fn set_default_timeouts(&mut self, t: Timeouts) {
        self.table.set_defaults(t);
    }

    /// Records the source revision the state now reflects.
    pub fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    /// Publishes what changed: a new snapshot if any route changed, fresh
    /// status counters either way.
    pub fn publish(&mut self) -> ApplyReport {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        if !self.changed.is_empty() {
            let mut snap = (*self.cell.load()).clone();
            let changed = std::mem::take(&mut self.changed);
            // A route edited where it stands (a timeout, an upstream, a
            // limit) keeps its place: its value is swapped in one path copy.
            let in_place: BTreeSet<&String> = changed
                .iter()
                .filter(|id| match (self.served.get(*id), self.desired.get(*id)) {
                    (Some((old, _)), Some(new)) => shape_of(old).same_place(&shape_of(new)),
                    _ => false,
                })
                .collect();
            // Take every other changed route out first, so two routes
            // swapping paths in one batch do not conflict with each other.
            let mut previous = BTreeMap::new();
            for id in changed.iter().filter(|id| !in_place.contains(id)) {
                if let Some((old, entry)) = self.served.remove(id) {
                    snap.router.remove(id, &shape_of(&old));
                    previous.insert(id.clone(), (old, entry));
                }
            }
            // Then the changed routes, and routes blocked earlier (their
            // blocker may be gone), in id order.
            let blocked = std::mem::take(&mut self.blocked);
            let todo: BTreeSet<&String> = changed.iter().chain(blocked.iter()).collect();
            for id in todo {
                let Some(route) = self.desired.get(id).cloned() else {
                    self.limiters.remove(id);
                    crate::metrics::forget_route(id);
                    continue;
                };
                if in_place.contains(id) {
                    let limiter = self.limiter_for(id, &route);
                    let entry = entry_for(&route, &mut self.table, limiter, &self.global_plugins);
                    snap.router.replace(id, entry.clone(), &shape_of(&route));
                    self.served.insert(id.clone(), (route, entry));
                    continue;
                }
                if let Some((old, entry)) = self.served.remove(id) {
                    snap.router.remove(id, &shape_of(&old));
                    previous.insert(id.clone(), (old, entry));
                }
                let limiter = self.limiter_for(id, &route);
                let entry = entry_for(&route, &mut self.table, limiter, &self.global_plugins);
                match snap
                    .router
                    .insert(&entry.id, entry.clone(), &shape_of(&route))
                {
                    Ok(()) => {
                        self.served.insert(id.clone(), (route, entry));
                    }
                    Err(conflict) => {
                        self.blocked.insert(id.clone());
                        // Reported once per write: a route still blocked
                        // from an earlier publish is only retried.
                        if changed.contains(id) {
                            report.rejected.push(Rejected {
                                id: id.clone(),
                                reason: conflict.to_string(),
                            });
                        }
                        // The key keeps its last good value: the version
                        // served before this edit goes back in, with the
                        // limiter (and bucket levels) it was serving with.
                        self.limiters.remove(id);
                        if let Some((old, entry)) = previous.remove(id) {
                            if let Some(l) = &entry.limiter {
                                self.limiters.insert(id.clone(), l.clone());
                            }
                            if snap
                                .router
                                .insert(&entry.id, entry.clone(), &shape_of(&old))
                                .is_ok()
                            {
                                self.served.insert(id.clone(), (old, entry));
                            }
                        }
                    }
                }
            }
            self.cell.store(snap);
            report.rebuilt = true;
            crate::metrics::METRICS.rebuilds.inc();
        }
        self.certs.publish(&self.cell);
        self.cell.status.set_certs(self.certs.len());
        self.consumers.publish(&self.cell);
        let (upstreams, instances) = self.table.counts();
        self.cell
            .status
            .record_apply(self.revision, self.served.len(), upstreams, instances);
        report.took = started.elapsed();
        crate::metrics::METRICS
            .last_apply_seconds
            .set(report.took.as_secs_f64());
        report
    }
}

#[cfg(test)]
mod tests;
