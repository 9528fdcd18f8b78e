//! Upstream leaves: each upstream's live instance set behind its own
//! `ArcSwap`, so registration churn swaps one leaf and never the router.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::balance::Schedule;
use crate::model::{Node, Timeouts, UpstreamSpec};

/// The nodes an upstream sends to right now, with their schedule.
#[derive(Debug, Default)]
pub struct InstanceSet {
    /// Static nodes first, then registered instances by id.
    pub nodes: Vec<Node>,
    schedule: Schedule,
    pub timeouts: Timeouts,
    /// Whether anything (policy or registration) defines this upstream.
    pub defined: bool,
}

impl InstanceSet {
    fn new(nodes: Vec<Node>, timeouts: Timeouts, defined: bool) -> Self {
        let weights: Vec<u32> = nodes
            .iter()
            .map(|n| if n.draining { 0 } else { n.weight })
            .collect();
        Self {
            schedule: Schedule::build(&weights),
            nodes,
            timeouts,
            defined,
        }
    }

    /// Nodes that take new requests.
    pub fn serving(&self) -> usize {
        self.nodes.iter().filter(|n| !n.draining).count()
    }
}

/// One upstream as the proxy sees it; shared by every route naming it and
/// carried across snapshot rebuilds.
#[derive(Debug)]
pub struct UpstreamLeaf {
    pub name: Arc<str>,
    set: ArcSwap<InstanceSet>,
    cursor: AtomicUsize,
}

impl UpstreamLeaf {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            set: ArcSwap::from_pointee(InstanceSet::default()),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The current instance set (one atomic load).
    pub fn instances(&self) -> Arc<InstanceSet> {
        self.set.load_full()
    }

    /// Picks the next node by weighted round-robin: its index in `set.nodes`.
    pub fn pick(&self, set: &InstanceSet) -> Option<usize> {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        set.schedule.pick(n).map(|i| i as usize)
    }
}

#[derive(Debug, Default)]
struct Inputs {
    policy: Option<(UpstreamSpec, Vec<Node>)>,
    registered: BTreeMap<String, Node>,
}

/// Owns every upstream leaf and what it is made of (policy + registrations).
/// Only the single config writer touches it.
#[derive(Debug)]
pub struct UpstreamTable {
    leaves: BTreeMap<String, (Arc<UpstreamLeaf>, Inputs)>,
    defaults: Timeouts,
}

impl UpstreamTable {
    pub fn new(defaults: Timeouts) -> Self {
        Self {
            leaves: BTreeMap::new(),
            defaults,
        }
    }

    /// The leaf for `name`, created empty if nothing defines it yet (a route
    /// may name a service before its first instance registers).
    pub fn leaf(&mut self, name: &str) -> Arc<UpstreamLeaf> {
        self.entry(name).0.clone()
    }

    fn entry(&mut self, name: &str) -> &mut (Arc<UpstreamLeaf>, Inputs) {
        self.leaves
            .entry(name.to_string())
            .or_insert_with(|| (Arc::new(UpstreamLeaf::new(name)), Inputs::default()))
    }

    /// Changes the proxy-wide default timeouts and republishes every leaf.
    pub fn set_defaults(&mut self, defaults: Timeouts) {
        if defaults != self.defaults {
            self.defaults = defaults;
            let names: Vec<String> = self.leaves.keys().cloned().collect();
            for name in names {
                self.publish(&name);
            }
        }
    }

    /// Sets or clears an upstream policy (with its resolved static nodes).
    pub fn set_policy(&mut self, name: &str, policy: Option<(UpstreamSpec, Vec<Node>)>) {
        self.entry(name).1.policy = policy;
        self.publish(name);
    }

    /// Adds, replaces or removes one registered instance of a service.
    pub fn set_instance(&mut self, service: &str, id: &str, node: Option<Node>) {
        let inputs = &mut self.entry(service).1;
        let changed = match node {
            Some(n) => inputs.registered.insert(id.to_string(), n.clone()) != Some(n),
            None => inputs.registered.remove(id).is_some(),
        };
        if changed {
            self.publish(service);
        }
    }

    /// Every registered (service, instance id), for diffing after a re-list.
    pub fn registered_ids(&self) -> Vec<(String, String)> {
        self.leaves
            .iter()
            .flat_map(|(s, (_, i))| i.registered.keys().map(move |id| (s.clone(), id.clone())))
            .collect()
    }

    /// Names of upstreams that have a policy.
    pub fn policy_names(&self) -> Vec<String> {
        self.leaves
            .iter()
            .filter(|(_, (_, i))| i.policy.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn publish(&mut self, name: &str) {
        let defaults = self.defaults;
        let (leaf, inputs) = self.entry(name);
        let mut nodes: Vec<Node> = inputs
            .policy
            .as_ref()
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        nodes.extend(inputs.registered.values().cloned());
        let timeouts = inputs
            .policy
            .as_ref()
            .and_then(|(s, _)| s.timeout)
            .map_or(defaults, |t| t.apply(defaults));
        let defined = inputs.policy.is_some() || !inputs.registered.is_empty();
        let set = InstanceSet::new(nodes, timeouts, defined);
        let serving = set.serving();
        crate::metrics::set_instances(name, serving, set.nodes.len() - serving);
        leaf.set.store(Arc::new(set));
    }

    /// Forgets `name`'s leaf if nothing defines it; the caller knows no
    /// route names it.
    pub fn forget_if_unused(&mut self, name: &str) {
        if self
            .leaves
            .get(name)
            .is_some_and(|(_, i)| i.policy.is_none() && i.registered.is_empty())
        {
            self.leaves.remove(name);
            crate::metrics::forget_service(name);
            crate::metrics::forget_service(name);
        }
    }

    /// (upstreams defined, instances serving).
    pub fn counts(&self) -> (usize, usize) {
        self.leaves
            .values()
            .map(|(leaf, _)| leaf.instances())
            .filter(|s| s.defined)
            .fold((0, 0), |(u, i), s| (u + 1, i + s.serving()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, port: u16) -> Node {
        Node {
            id: id.into(),
            addr: ([127, 0, 0, 1], port).into(),
            authority: format!("127.0.0.1:{port}"),
            weight: 1,
            draining: false,
        }
    }

    #[test]
    fn instance_churn_swaps_the_same_leaf() {
        let mut t = UpstreamTable::new(Timeouts::default());
        let leaf = t.leaf("users");
        assert!(!leaf.instances().defined);
        t.set_instance("users", "a", Some(node("a", 1)));
        t.set_instance("users", "b", Some(node("b", 2)));
        let set = leaf.instances();
        assert_eq!(set.nodes.len(), 2);
        let picks: Vec<usize> = (0..4).map(|_| leaf.pick(&set).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        t.set_instance("users", "a", None);
        assert_eq!(leaf.instances().nodes[0].id, "b");
        assert!(Arc::ptr_eq(&leaf, &t.leaf("users")));
        assert_eq!(t.counts(), (1, 1));
    }

    #[test]
    fn draining_nodes_get_no_new_requests() {
        let mut t = UpstreamTable::new(Timeouts::default());
        let mut d = node("d", 1);
        d.draining = true;
        t.set_instance("s", "d", Some(d));
        let leaf = t.leaf("s");
        let set = leaf.instances();
        assert_eq!(leaf.pick(&set), None);
        t.set_instance("s", "e", Some(node("e", 2)));
        let set = leaf.instances();
        assert_eq!(set.nodes[leaf.pick(&set).unwrap()].id, "e");
    }
}
