//! The single config writer: keeps the last good value of every key,
//! applies changes from a source, and publishes snapshots. Route edits
//! rebuild the router; upstream and instance edits only swap their leaf.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::model::{Node, Route, Timeouts, UpstreamSpec};
use crate::snapshot::{build, Rejected, SnapshotCell, UpstreamTable};

/// What one apply did, for logs and metrics.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub rebuilt: bool,
    /// Routes valid on their own but conflicting with an earlier route.
    pub rejected: Vec<Rejected>,
    pub took: std::time::Duration,
}

/// Desired state, by key, and the table of live upstream leaves.
pub struct Store {
    cell: Arc<SnapshotCell>,
    table: UpstreamTable,
    /// id → (order of first acceptance, route). Earlier routes win conflicts.
    routes: BTreeMap<String, (u64, Route)>,
    policies: BTreeMap<String, UpstreamSpec>,
    next_order: u64,
    revision: i64,
    routes_dirty: bool,
}

impl Store {
    pub fn new(cell: Arc<SnapshotCell>, defaults: Timeouts) -> Self {
        Self {
            cell,
            table: UpstreamTable::new(defaults),
            routes: BTreeMap::new(),
            policies: BTreeMap::new(),
            next_order: 0,
            revision: 0,
            routes_dirty: true,
        }
    }

    pub fn cell(&self) -> &Arc<SnapshotCell> {
        &self.cell
    }

    /// Sets or removes one route.
    pub fn set_route(&mut self, id: &str, route: Option<Route>) {
        match route {
            Some(r) => {
                let order = match self.routes.get(id) {
                    Some((_, old)) if *old == r => return,
                    Some((o, _)) => *o,
                    None => {
                        self.next_order += 1;
                        self.next_order
                    }
                };
                self.routes.insert(id.to_string(), (order, r));
            }
            None => {
                if self.routes.remove(id).is_none() {
                    return;
                }
            }
        }
        self.routes_dirty = true;
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
    }

    /// Sets or removes one registered instance; swaps only its leaf.
    pub fn set_instance(&mut self, service: &str, id: &str, node: Option<Node>) {
        self.table.set_instance(service, id, node);
    }

    /// Every (service, instance id) currently registered.
    pub fn instance_ids(&self) -> Vec<(String, String)> {
        self.table.registered_ids()
    }

    pub fn route_ids(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }

    pub fn upstream_names(&self) -> Vec<String> {
        self.policies.keys().cloned().collect()
    }

    /// Replaces the whole desired state (a file source delivers it whole);
    /// file order is precedence order.
    pub fn replace_all(
        &mut self,
        routes: Vec<Route>,
        upstreams: BTreeMap<String, (UpstreamSpec, Vec<Node>)>,
    ) {
        let mut next: BTreeMap<String, (u64, Route)> = BTreeMap::new();
        for (i, r) in routes.into_iter().enumerate() {
            next.insert(r.id.clone(), (i as u64, r));
        }
        if next != self.routes {
            self.routes = next;
            self.next_order = self.routes.len() as u64;
            self.routes_dirty = true;
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

    /// Changes the proxy-wide default timeouts (a bootstrap file edit).
    pub fn set_default_timeouts(&mut self, t: Timeouts) {
        self.table.set_defaults(t);
    }

    /// Records the source revision the state now reflects.
    pub fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    /// Publishes what changed: a new snapshot if routes changed, fresh
    /// status counters either way.
    pub fn publish(&mut self) -> ApplyReport {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        if self.routes_dirty {
            let mut ordered: Vec<&(u64, Route)> = self.routes.values().collect();
            ordered.sort_by_key(|(o, r)| (*o, r.id.as_str()));
            let refs: Vec<&Route> = ordered.into_iter().map(|(_, r)| r).collect();
            let (snap, rejected) = build(&refs, &mut self.table);
            self.cell.store(snap);
            report.rejected = rejected;
            report.rebuilt = true;
            self.routes_dirty = false;
        }
        let (upstreams, instances) = self.table.counts();
        let routes = self.cell.load().routes.len();
        self.cell
            .status
            .record_apply(self.revision, routes, upstreams, instances);
        report.took = started.elapsed();
        report
    }
}
