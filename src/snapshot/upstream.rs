//! Upstream leaves: each upstream's live instance set behind its own
//! `ArcSwap`, so registration churn swaps one leaf and never the router.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::instance_states::StateCounts;
use crate::balance::{Candidates, NodeHealth, Passive, PickInput, Picked, Strategy};
use crate::model::policy::{ActiveCheckSpec, HashKey, PassiveCheckSpec, RetrySpec};
use crate::model::{Node, Timeouts, UpstreamSpec};
use crate::tls::upstream::UpstreamTls;

/// The nodes an upstream sends to right now, how to choose among them and
/// the policies that govern them.
#[derive(Debug)]
pub struct InstanceSet {
    /// Static nodes first, then registered instances by id.
    pub nodes: Vec<Node>,
    /// Per-node health, parallel to `nodes`, carried over by node id.
    pub health: Vec<Arc<NodeHealth>>,
    strategy: Strategy,
    pub timeouts: Timeouts,
    /// The upstream's retry policy, if it sets one.
    pub retry: Option<RetrySpec>,
    pub passive: Option<PassiveCheckSpec>,
    pub active: Option<ActiveCheckSpec>,
    pub panic_threshold: f64,
    /// The policy's `tls` for `https://`/`grpcs://` nodes (None: verify
    /// against the system roots, SNI = the node's host).
    pub tls: Option<Arc<UpstreamTls>>,
    /// Whether anything (policy or registration) defines this upstream.
    pub defined: bool,
    /// Nodes that take new requests; counted once here because `/status`
    /// sums it over every upstream after each applied change.
    serving: usize,
}

impl Candidates for InstanceSet {
    fn count(&self) -> usize {
        self.nodes.len().min(self.health.len())
    }
    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }
    fn weight(&self, i: usize) -> u32 {
        self.nodes[i].weight
    }
    fn draining(&self, i: usize) -> bool {
        self.nodes[i].draining
    }
    fn health(&self, i: usize) -> &NodeHealth {
        &self.health[i]
    }
}

impl Default for InstanceSet {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            health: Vec::new(),
            strategy: Strategy::default(),
            timeouts: Timeouts::default(),
            retry: None,
            passive: None,
            active: None,
            panic_threshold: 0.5,
            tls: None,
            defined: false,
            serving: 0,
        }
    }
}

impl InstanceSet {
    fn new(
        nodes: Vec<Node>,
        previous: &InstanceSet,
        policy: Option<&UpstreamSpec>,
        tls: Option<Arc<UpstreamTls>>,
        timeouts: Timeouts,
        defined: bool,
    ) -> Self {
        // By (id, addr), not a scan per node: one registration in a service
        // of 2,000 instances would otherwise cost 4 million comparisons.
        let carried: ahash::AHashMap<(&str, SocketAddr), &Arc<NodeHealth>> = previous
            .nodes
            .iter()
            .zip(&previous.health)
            .map(|(p, h)| ((p.id.as_str(), p.addr), h))
            .collect();
        let health = nodes
            .iter()
            .map(|n| {
                carried
                    .get(&(n.id.as_str(), n.addr))
                    .map_or_else(Default::default, |h| Arc::clone(h))
            })
            .collect();
        let shape: Vec<(&str, u32, bool)> = nodes
            .iter()
            .map(|n| (n.id.as_str(), n.weight, !n.draining))
            .collect();
        let lb = policy.map(|p| p.lb.clone()).unwrap_or_default();
        let hash_key = lb.hash_key("").ok().flatten();
        let hc = policy
            .and_then(|p| p.health_check.clone())
            .unwrap_or_default();
        Self {
            serving: nodes.iter().filter(|n| !n.draining).count(),
            strategy: Strategy::build(&lb, hash_key, &shape),
            health,
            nodes,
            timeouts,
            retry: policy.and_then(|p| p.retry.clone()),
            passive: hc.passive,
            active: hc.active,
            panic_threshold: if policy.and_then(|p| p.health_check.as_ref()).is_some() {
                hc.panic_threshold
            } else {
                0.5
            },
            tls,
            defined,
        }
    }

    /// Nodes that take new requests.
    pub fn serving(&self) -> usize {
        self.serving
    }

    /// Instances by state right now (for `tollgate_instances`).
    pub fn state_counts(&self, now_ns: u64) -> StateCounts {
        let mut c = StateCounts::default();
        for (node, health) in self.nodes.iter().zip(&self.health) {
            if node.draining {
                c.draining += 1;
            } else if !health.active_ok() {
                c.unhealthy += 1;
            } else if health.is_ejected(now_ns) {
                c.ejected += 1;
            } else {
                c.live += 1;
            }
        }
        c
    }

    /// Where the consistent-hash key comes from, if the upstream uses one.
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.strategy.hash_key()
    }
}

/// Retries may add at most a share of an upstream's traffic: every request
/// deposits that share of a token, every retry spends one (with a small
/// reserve so a quiet upstream can still retry).
#[derive(Debug)]
pub struct RetryBudget {
    milli_tokens: AtomicI64,
}

const BUDGET_RESERVE: i64 = 10_000;
const BUDGET_CAP: i64 = 100_000;

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            milli_tokens: AtomicI64::new(BUDGET_RESERVE),
        }
    }
}

impl RetryBudget {
    pub fn deposit(&self, share: f64) {
        let add = (share * 1000.0) as i64;
        if self.milli_tokens.fetch_add(add, Ordering::Relaxed) + add > BUDGET_CAP {
            self.milli_tokens.store(BUDGET_CAP, Ordering::Relaxed);
        }
    }

    pub fn try_spend(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

/// What one attempt on an instance came to, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A 5xx, a reset or a timeout once connected.
    Failed,
    /// The connect itself failed: refused, reset or timed out.
    ConnectFailed,
}

impl Outcome {
    /// An upstream's answer: a 5xx is a failure.
    pub fn of_status(status: u16) -> Self {
        if status < 500 {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// The passive rule of an upstream that sets none: one failed connect
/// ejects the instance for 5 s (longer each time, up to 50 s), never more
/// than half the instances. A connect that fails says the instance is not
/// there; a 5xx or a slow answer may be the request's fault, so those
/// count only under an explicit `passive` policy.
pub const CONNECT_EJECTION: PassiveCheckSpec = PassiveCheckSpec {
    consecutive_failures: 1,
    ejection_ms: 5_000,
    max_ejected_share: 0.5,
};

/// One upstream as the proxy sees it; shared by every route naming it and
/// carried across snapshot rebuilds.
#[derive(Debug)]
pub struct UpstreamLeaf {
    pub name: Arc<str>,
    set: ArcSwap<InstanceSet>,
    cursor: AtomicUsize,
    pub budget: RetryBudget,
}

impl UpstreamLeaf {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            set: ArcSwap::from_pointee(InstanceSet::default()),
            cursor: AtomicUsize::new(0),
            budget: RetryBudget::default(),
        }
    }

    /// The current instance set (one atomic load).
    pub fn instances(&self) -> Arc<InstanceSet> {
        self.set.load_full()
    }

    /// Picks an instance of `set`: its index in `set.nodes`.
    pub fn pick(
        &self,
        set: &InstanceSet,
        key_hash: Option<u64>,
        avoid: Option<SocketAddr>,
    ) -> Option<Picked> {
        let input = PickInput {
            cursor: self.cursor.fetch_add(1, Ordering::Relaxed),
            key_hash,
            avoid,
            clock: crate::limiter::now_ns,
        };
        let picked = set.strategy.pick(set, input, set.panic_threshold);
        if picked.is_some_and(|p| p.panic) {
            crate::metrics::METRICS.panic_picks.inc();
        }
        picked
    }

    /// Feeds a request outcome on node `index` of `set` to passive health.
    /// Without a `passive` policy only a failed connect counts, under
    /// [`CONNECT_EJECTION`]: a dead instance leaves the rotation at its
    /// first refused or timed-out connect instead of when its lease runs out.
    pub fn observe(&self, set: &InstanceSet, index: usize, outcome: Outcome) {
        let spec = match (&set.passive, outcome) {
            (Some(spec), _) => spec,
            (None, Outcome::ConnectFailed) => &CONNECT_EJECTION,
            (None, _) => return,
        };
        let Some(h) = set.health.get(index) else {
            return;
        };
        if outcome == Outcome::Ok {
            h.record_success();
            return;
        }
        let now = crate::limiter::now_ns();
        let may_eject = crate::balance::ejected_share(&set.health, now)
            + 1.0 / set.health.len() as f64
            <= spec.max_ejected_share + f64::EPSILON;
        if let Passive::Ejected { for_ms } = h.record_failure(spec, now, may_eject) {
            crate::metrics::METRICS
                .ejections
                .with_label_values(&[&self.name])
                .inc();
            tracing::warn!(upstream = %self.name, instance = %set.nodes[index].id, for_ms, "instance ejected after consecutive failures");
        }
    }
}

#[derive(Debug, Default)]
struct Inputs {
    policy: Option<(UpstreamSpec, Vec<Node>)>,
    /// The policy's `tls`, built once when the policy is set.
    tls: Option<Arc<UpstreamTls>>,
    registered: BTreeMap<String, Node>,
}

/// Owns every upstream leaf and what it is made of (policy + registrations).
/// Only the single config writer touches it.
#[derive(Debug)]
pub struct UpstreamTable {
    leaves: BTreeMap<String, (Arc<UpstreamLeaf>, Inputs)>,
    defaults: Timeouts,
    /// Leaves with active health checks, for the checker.
    checked: CheckedLeaves,
    /// Every leaf, for the instance-state metrics.
    services: ServiceLeaves,
    /// [`UpstreamTable::counts`], kept as sets change: `/status` reads it
    /// after every applied change, and 10,000 leaves are too many to walk.
    totals: (usize, usize),
    /// The fleet's unhealthy verdicts: service → instance ids. Kept apart
    /// from the leaves: a verdict may come before its instance registers.
    fleet_down: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// What one instance set adds to [`UpstreamTable::counts`].
fn counted(set: &InstanceSet) -> (usize, usize) {
    if set.defined {
        (1, set.serving())
    } else {
        (0, 0)
    }
}

/// The leaves the active health checker probes; swapped whole on change.
pub type CheckedLeaves = Arc<ArcSwap<Vec<Arc<UpstreamLeaf>>>>;

/// Every upstream's leaf by name, readable from any thread: the `/metrics`
/// scrape counts instance states from it. Persistent, so adding one of
/// 10,000 services copies a path, not the map.
pub type ServiceLeaves = Arc<ArcSwap<imbl::OrdMap<Arc<str>, Arc<UpstreamLeaf>>>>;

/// Publishes an edited copy of the service map (only the table's single
/// writer calls this, so load-edit-store cannot lose an update).
fn edit_services(
    services: &ServiceLeaves,
    edit: impl FnOnce(&mut imbl::OrdMap<Arc<str>, Arc<UpstreamLeaf>>),
) {
    let mut all = (**services.load()).clone();
    edit(&mut all);
    services.store(Arc::new(all));
}

impl UpstreamTable {
    pub fn new(defaults: Timeouts) -> Self {
        Self::publishing(defaults, CheckedLeaves::default(), ServiceLeaves::default())
    }

    /// A table that publishes its actively checked leaves into `checked`
    /// and all its leaves into `services`.
    pub fn publishing(defaults: Timeouts, checked: CheckedLeaves, services: ServiceLeaves) -> Self {
        Self {
            leaves: BTreeMap::new(),
            defaults,
            checked,
            services,
            totals: (0, 0),
            fleet_down: BTreeMap::new(),
        }
    }

    /// Applies the fleet's verdict on one instance (`down`: unhealthy) to
    /// its current health at once; sets built later carry it too.
    pub fn set_fleet_verdict(&mut self, service: &str, id: &str, down: bool) {
        let ids = self.fleet_down.entry(service.to_string()).or_default();
        if down {
            ids.insert(id.to_string());
        } else {
            ids.remove(id);
            if ids.is_empty() {
                self.fleet_down.remove(service);
            }
        }
        if let Some((leaf, _)) = self.leaves.get(service) {
            let set = leaf.instances();
            for (node, health) in set.nodes.iter().zip(&set.health) {
                if node.id == id {
                    health.set_fleet_down(down);
                }
            }
        }
    }

    /// The leaf for `name`, created empty if nothing defines it yet (a route
    /// may name a service before its first instance registers).
    pub fn leaf(&mut self, name: &str) -> Arc<UpstreamLeaf> {
        self.entry(name).0.clone()
    }

    fn entry(&mut self, name: &str) -> &mut (Arc<UpstreamLeaf>, Inputs) {
        let services = &self.services;
        self.leaves.entry(name.to_string()).or_insert_with(|| {
            // Listed at once: a named service with no instance yet is a
            // service with 0 live instances, and alerts should see it.
            let leaf = Arc::new(UpstreamLeaf::new(name));
            edit_services(services, |all| {
                all.insert(leaf.name.clone(), leaf.clone());
            });
            (leaf, Inputs::default())
        })
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
        let inputs = &mut self.entry(name).1;
        // Checked when the policy was accepted; a file that changed since
        // leaves the upstream on the system roots, and says so.
        inputs.tls = (policy.as_ref())
            .and_then(|(spec, _)| spec.tls.as_ref())
            .and_then(|t| match t.compile("tls") {
                Ok(der) => Some(Arc::new(UpstreamTls::new(&der))),
                Err(e) => {
                    tracing::warn!(upstream = name, error = %e, "upstream tls settings unusable");
                    None
                }
            });
        inputs.policy = policy;
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
        let down = self.fleet_down.get(name).cloned();
        let (leaf, inputs) = self.entry(name);
        let policy = inputs.policy.as_ref().map(|(s, _)| s);
        let mut nodes: Vec<Node> = inputs
            .policy
            .as_ref()
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        nodes.extend(inputs.registered.values().cloned());
        let timeouts = policy
            .and_then(|s| s.timeout)
            .map_or(defaults, |t| t.apply(defaults));
        let defined = inputs.policy.is_some() || !inputs.registered.is_empty();
        let tls = inputs.tls.clone();
        let set = InstanceSet::new(nodes, &leaf.set.load(), policy, tls, timeouts, defined);
        for (node, health) in set.nodes.iter().zip(&set.health) {
            health.set_fleet_down(down.as_ref().is_some_and(|ids| ids.contains(&node.id)));
        }
        let (old, new) = (counted(&leaf.set.load()), counted(&set));
        leaf.set.store(Arc::new(set));
        let leaf = leaf.clone();
        self.totals = (self.totals.0 + new.0 - old.0, self.totals.1 + new.1 - old.1);
        self.update_checked(leaf);
    }

    /// Keeps the list of leaves that have active health checks current.
    fn update_checked(&mut self, leaf: Arc<UpstreamLeaf>) {
        let wants = leaf.instances().active.is_some();
        self.set_checked(leaf, wants);
    }

    /// Lists or unlists `leaf` for the active checker (a no-op when it is
    /// already so).
    fn set_checked(&mut self, leaf: Arc<UpstreamLeaf>, wants: bool) {
        let list = self.checked.load();
        let has = list.iter().any(|l| Arc::ptr_eq(l, &leaf));
        if wants != has {
            let mut next: Vec<Arc<UpstreamLeaf>> = list
                .iter()
                .filter(|l| !Arc::ptr_eq(l, &leaf))
                .cloned()
                .collect();
            if wants {
                next.push(leaf);
            }
            self.checked.store(Arc::new(next));
        }
    }

    /// Forgets `name`'s leaf if nothing defines it; the caller knows no
    /// route names it.
    pub fn forget_if_unused(&mut self, name: &str) {
        if self
            .leaves
            .get(name)
            .is_some_and(|(_, i)| i.policy.is_none() && i.registered.is_empty())
        {
            if let Some((leaf, _)) = self.leaves.remove(name) {
                let (u, i) = counted(&leaf.set.load());
                self.totals = (self.totals.0 - u, self.totals.1 - i);
                self.set_checked(leaf, false);
            }
            edit_services(&self.services, |all| {
                all.remove(name);
            });
        }
    }

    /// (upstreams defined, instances serving).
    pub fn counts(&self) -> (usize, usize) {
        self.totals
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
            scheme: Default::default(),
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
        let picks: Vec<usize> = (0..4)
            .map(|_| leaf.pick(&set, None, None).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        t.set_instance("users", "a", None);
        assert_eq!(leaf.instances().nodes[0].id, "b");
        assert!(Arc::ptr_eq(&leaf, &t.leaf("users")));
        assert_eq!(t.counts(), (1, 1));
    }

    /// `counts` as a walk of every leaf: what the kept totals must equal.
    fn walked(t: &UpstreamTable) -> (usize, usize) {
        t.leaves
            .values()
            .map(|(leaf, _)| counted(&leaf.instances()))
            .fold((0, 0), |(u, i), (du, di)| (u + du, i + di))
    }

    #[test]
    fn counts_follow_registrations_draining_and_forgotten_services() {
        let mut t = UpstreamTable::new(Timeouts::default());
        let mut draining = node("d", 9);
        draining.draining = true;
        let steps: Vec<(&str, &str, Option<Node>)> = vec![
            ("a", "1", Some(node("1", 1))),
            ("a", "2", Some(node("2", 2))),
            ("b", "1", Some(node("1", 3))),
            ("b", "d", Some(draining.clone())),
            ("a", "2", Some(draining)),
            ("a", "1", None),
            ("a", "2", None),
            ("b", "1", None),
        ];
        for (service, id, n) in steps {
            t.set_instance(service, id, n);
            assert_eq!(t.counts(), walked(&t), "after {service}/{id}");
        }
        assert_eq!(t.counts(), (1, 0), "b has only a draining instance");
        // A policy with static nodes defines an upstream too.
        t.set_policy("c", Some((UpstreamSpec::default(), vec![node("s", 5)])));
        assert_eq!(t.counts(), (2, 1));
        t.set_policy("c", None);
        assert_eq!(t.counts(), walked(&t));
        t.forget_if_unused("c");
        t.forget_if_unused("a");
        t.set_instance("b", "d", None);
        t.forget_if_unused("b");
        assert_eq!(t.counts(), (0, 0));
        assert_eq!(walked(&t), (0, 0));
    }

    #[test]
    fn health_stays_with_its_instance_across_registration_churn() {
        let mut t = UpstreamTable::new(Timeouts::default());
        for i in 0..50 {
            t.set_instance(
                "s",
                &format!("i{i}"),
                Some(node(&format!("i{i}"), 1000 + i)),
            );
        }
        let leaf = t.leaf("s");
        let before = leaf.instances();
        let i7 = before.nodes.iter().position(|n| n.id == "i7").unwrap();
        let health = before.health[i7].clone();
        // Another instance comes and one goes: i7 keeps its health.
        t.set_instance("s", "new", Some(node("new", 2000)));
        t.set_instance("s", "i3", None);
        let after = leaf.instances();
        let i7 = after.nodes.iter().position(|n| n.id == "i7").unwrap();
        assert!(Arc::ptr_eq(&after.health[i7], &health));
        // Re-pointed to another address, it is a new instance: fresh health.
        t.set_instance("s", "i7", Some(node("i7", 3000)));
        let moved = leaf.instances();
        let i7 = moved.nodes.iter().position(|n| n.id == "i7").unwrap();
        assert!(!Arc::ptr_eq(&moved.health[i7], &health));
    }

    #[test]
    fn draining_nodes_get_no_new_requests() {
        let mut t = UpstreamTable::new(Timeouts::default());
        let mut d = node("d", 1);
        d.draining = true;
        t.set_instance("s", "d", Some(d));
        let leaf = t.leaf("s");
        let set = leaf.instances();
        assert_eq!(leaf.pick(&set, None, None), None);
        // `/status` counts instances that take requests: not this one.
        assert_eq!(t.counts(), (1, 0));
        t.set_instance("s", "e", Some(node("e", 2)));
        let set = leaf.instances();
        assert_eq!(
            set.nodes[leaf.pick(&set, None, None).unwrap().index].id,
            "e"
        );
        assert_eq!(t.counts(), (1, 1));
    }
}
