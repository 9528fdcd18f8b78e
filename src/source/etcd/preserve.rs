//! Registry self-preservation (see `model::preservation`): the decision to
//! keep an instance whose lease expired, and when to let it go. Owned by
//! the watch loop's [`super::state::EtcdState`], so every change to the
//! store still comes from one writer; the probing itself runs in
//! [`probe`](super::preserve_probe).
//!
//! A service is preserved when an expiry comes within the reconnect grace
//! (an outage just ended) or when more than `threshold` of its instances,
//! and at least `min_expired`, expired within `window_ttls` lease TTLs. Then the instances that expired
//! in the window (dropped a moment ago, before the share was crossed) are
//! put back, and later expiries of that service are kept too, as long as
//! any of it is preserved. A revoke is never preserved: the caller passes
//! only deletes its [`LeaseBook`](super::leases::LeaseBook) reads as expiries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::metrics::METRICS;
use crate::model::preservation::SelfPreservationSpec;
use crate::model::Node;

/// One preserved instance, as the prober sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: Arc<str>,
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub authority: String,
    /// `health_path` of the registration, else the upstream's active
    /// check path; `None`: a TCP connect is the probe.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// What the prober saw.
#[derive(Debug, Clone)]
pub struct Probed {
    pub service: Arc<str>,
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub ok: bool,
}

/// The targets the prober works through; swapped whole on change.
pub type Targets = Arc<ArcSwap<Vec<Target>>>;

#[derive(Debug)]
struct Kept {
    node: Node,
    health_path: Option<String>,
    since: Instant,
    failures: u32,
}

#[derive(Debug, Default)]
struct Service {
    /// Registered (leased) instances right now.
    live: usize,
    /// Expiries within the window, oldest first: when, what they were, and
    /// when they leave the window.
    recent: VecDeque<(Instant, Node, Option<String>, Instant)>,
    kept: BTreeMap<String, Kept>,
}

/// What to do with an expired instance.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Remove it, as usual.
    Drop,
    /// Keep it, and put these back (expired earlier in the window).
    Preserve { restore: Vec<Node> },
}

/// A preserved instance to remove from the store: (service, id).
pub type Dropped = (String, String);

/// How often [`Preservation::sweep`] does its work.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Preservation {
    defaults: SelfPreservationSpec,
    /// Per service: its upstream's `self_preservation` and active check path.
    policies: HashMap<String, (Option<SelfPreservationSpec>, Option<String>)>,
    services: HashMap<String, Service>,
    reconnected_at: Option<Instant>,
    targets: Targets,
    /// The preserved set changed since the targets were last published.
    dirty: bool,
    last_sweep: Option<Instant>,
}

impl Preservation {
    pub fn new(defaults: SelfPreservationSpec) -> Self {
        Self {
            defaults,
            policies: HashMap::new(),
            services: HashMap::new(),
            reconnected_at: None,
            targets: Targets::default(),
            dirty: false,
            last_sweep: None,
        }
    }

    /// The prober's list, shared.
    pub fn targets(&self) -> Targets {
        self.targets.clone()
    }

    fn spec(&self, service: &str) -> &SelfPreservationSpec {
        self.policies
            .get(service)
            .and_then(|(s, _)| s.as_ref())
            .unwrap_or(&self.defaults)
    }

    /// An upstream policy for `service` was set or removed.
    pub fn set_policy(
        &mut self,
        service: &str,
        spec: Option<SelfPreservationSpec>,
        active_path: Option<String>,
    ) {
        if spec.is_none() && active_path.is_none() {
            self.policies.remove(service);
        } else {
            self.policies
                .insert(service.to_string(), (spec, active_path));
        }
    }

    /// The gateway is back on etcd after an outage.
    pub fn reconnected(&mut self, now: Instant) {
        self.reconnected_at = Some(now);
    }

    /// A new instance key was registered. Returns the preserved instances
    /// it replaces, to remove from the store: one of the same id, or of the
    /// same address in *any* service (a probe cannot tell which service
    /// answers: an address reused by another service's instance must not
    /// keep receiving this one's traffic). The same id in the same service
    /// is not returned: the registration overwrites it.
    pub fn registered(&mut self, service: &str, node: &Node) -> Vec<Dropped> {
        let s = self.services.entry(service.to_string()).or_default();
        s.live += 1;
        // Back before the window's share was crossed: not one to restore.
        s.recent
            .retain(|(_, n, ..)| n.id != node.id && n.addr != node.addr);
        let mut replaced = Vec::new();
        for (name, s) in self.services.iter().filter(|(_, s)| !s.kept.is_empty()) {
            for (id, k) in &s.kept {
                if k.node.addr == node.addr || (name == service && *id == node.id) {
                    replaced.push((name.clone(), id.clone()));
                }
            }
        }
        let mut out = Vec::new();
        for (name, id) in replaced {
            if self.drop_kept(&name, &id, "re_registered").is_some()
                && !(name == service && id == node.id)
            {
                out.push((name, id));
            }
        }
        out
    }

    /// A registered instance key is gone (any way).
    pub fn unregistered(&mut self, service: &str) {
        if let Some(s) = self.services.get_mut(service) {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// An instance's lease expired (as far as can be told): keep it or not.
    pub fn expired(
        &mut self,
        service: &str,
        node: Node,
        health_path: Option<String>,
        ttl: Duration,
        now: Instant,
    ) -> Decision {
        let spec = self.spec(service).clone();
        if !spec.enabled {
            return Decision::Drop;
        }
        let in_grace = self
            .reconnected_at
            .is_some_and(|t| now.duration_since(t) < ttl.saturating_mul(spec.reconnect_grace_ttls));
        let s = self.services.entry(service.to_string()).or_default();
        let window = ttl.saturating_mul(spec.window_ttls);
        s.recent.retain(|(.., until)| *until >= now);
        s.recent.push_back((
            now,
            node,
            health_path,
            now.checked_add(window).unwrap_or(now),
        ));
        let expired = s.recent.len();
        let share = expired as f64 / (s.live + expired) as f64;
        let already = !s.kept.is_empty();
        let mass = share > spec.threshold && expired >= spec.min_expired as usize;
        if !(in_grace || already || mass) {
            return Decision::Drop;
        }
        let mut restore = Vec::new();
        let count = s.recent.len();
        for (i, (_, node, health_path, _)) in s.recent.drain(..).enumerate() {
            if i + 1 < count {
                restore.push(node.clone());
            }
            s.kept.insert(
                node.id.clone(),
                Kept {
                    node,
                    health_path,
                    since: now,
                    failures: 0,
                },
            );
        }
        if !already {
            let why = if in_grace {
                "expired right after the gateway reconnected to etcd"
            } else {
                "a large share expired together"
            };
            tracing::warn!(
                service,
                instances = s.kept.len(),
                live = s.live,
                why,
                "service in self-preservation: instances whose leases expired are kept while they answer probes"
            );
        }
        self.changed(service);
        Decision::Preserve { restore }
    }

    /// A probe answer. Returns the instance to drop, if it failed enough.
    pub fn probed(&mut self, p: &Probed) -> Option<Dropped> {
        let s = self.services.get_mut(&*p.service)?;
        let k = s.kept.get_mut(&*p.id).filter(|k| k.node.addr == p.addr)?;
        if p.ok {
            k.failures = 0;
            return None;
        }
        k.failures += 1;
        let needed = self
            .policies
            .get(&*p.service)
            .and_then(|(s, _)| s.as_ref())
            .unwrap_or(&self.defaults)
            .probe_failures;
        if k.failures < needed {
            return None;
        }
        self.drop_kept(&p.service, &p.id, "probe_failed")
    }

    /// At most once a second: lets go of preserved instances kept longer
    /// than `max_unconfirmed_s`, forgets expiries past their window and
    /// services with nothing left to track. Returns the instances to
    /// remove from the store.
    pub fn sweep(&mut self, now: Instant) -> Vec<Dropped> {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let mut over = Vec::new();
        for (service, s) in &mut self.services {
            s.recent.retain(|(.., until)| *until >= now);
            if s.kept.is_empty() {
                continue;
            }
            let max = Duration::from_secs(
                (self.policies.get(service))
                    .and_then(|(p, _)| p.as_ref())
                    .unwrap_or(&self.defaults)
                    .max_unconfirmed_s,
            );
            for (id, k) in &s.kept {
                if now.duration_since(k.since) >= max {
                    over.push((service.clone(), id.clone()));
                }
            }
        }
        let dropped = over
            .into_iter()
            .filter_map(|(service, id)| self.drop_kept(&service, &id, "unconfirmed_too_long"))
            .collect();
        self.services
            .retain(|_, s| s.live > 0 || !s.kept.is_empty() || !s.recent.is_empty());
        dropped
    }

    fn drop_kept(&mut self, service: &str, id: &str, reason: &str) -> Option<Dropped> {
        let s = self.services.get_mut(service)?;
        let k = s.kept.remove(id)?;
        METRICS
            .preserved_dropped
            .with_label_values(&[service, reason])
            .inc();
        tracing::info!(service, instance = id, addr = %k.node.addr, reason, "preserved instance dropped");
        self.changed(service);
        Some((service.to_string(), id.to_string()))
    }

    /// `service`'s preserved set changed: its gauge, the log line when it
    /// leaves preservation, and the prober's targets (at the next flush).
    fn changed(&mut self, service: &str) {
        let kept = self.services.get(service).map_or(0, |s| s.kept.len());
        METRICS
            .preserved_instances
            .with_label_values(&[service])
            .set(kept as i64);
        if kept == 0 {
            tracing::info!(service, "service left self-preservation");
        }
        self.dirty = true;
    }

    /// Publishes the prober's targets if the preserved set changed: once
    /// per applied batch, not once per expiry (a mass expiry of K instances
    /// would otherwise rebuild the list K times).
    pub fn flush(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let mut targets = Vec::new();
        for (name, s) in self.services.iter().filter(|(_, s)| !s.kept.is_empty()) {
            let spec = self.spec(name);
            let active = self.policies.get(name).and_then(|(_, p)| p.clone());
            for (id, k) in &s.kept {
                targets.push(Target {
                    service: name.as_str().into(),
                    id: id.as_str().into(),
                    addr: k.node.addr,
                    authority: k.node.authority.clone(),
                    path: k.health_path.clone().or_else(|| active.clone()),
                    interval: Duration::from_millis(spec.probe_interval_ms),
                    timeout: Duration::from_millis(spec.probe_timeout_ms),
                });
            }
        }
        self.targets.store(Arc::new(targets));
    }

    /// Preserved instances and the services they belong to, for `/status`.
    pub fn counts(&self) -> (usize, usize) {
        let mut n = (0, 0);
        for s in self.services.values() {
            if !s.kept.is_empty() {
                n.0 += s.kept.len();
                n.1 += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn node(i: u16) -> Node {
        Node {
            id: format!("i{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
            authority: format!("127.0.0.1:{}", 9000 + i),
            weight: 1,
            draining: false,
            scheme: Default::default(),
        }
    }

    fn service_of(p: &mut Preservation, n: u16) {
        for i in 0..n {
            p.registered("api", &node(i));
        }
    }

    /// Instances i0 and i1 of api, both preserved (they expired right after
    /// a reconnect at `t`).
    fn both_preserved(t: Instant) -> Preservation {
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 2);
        p.reconnected(t);
        expire(&mut p, 0, t);
        expire(&mut p, 1, t);
        assert_eq!(p.counts(), (2, 1));
        p
    }

    /// Expires instance `i` (it was registered) at `at`.
    fn expire(p: &mut Preservation, i: u16, at: Instant) -> Decision {
        p.unregistered("api");
        p.expired("api", node(i), None, TTL, at)
    }

    #[test]
    fn one_of_ten_expiring_is_dropped_and_a_mass_expiry_is_kept_whole() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 10);
        assert_eq!(expire(&mut p, 0, t), Decision::Drop);
        assert_eq!(p.counts(), (0, 0));

        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 10);
        for i in 0..5 {
            assert_eq!(expire(&mut p, i, t), Decision::Drop, "{i}: 50% is not more");
        }
        // The sixth crosses the threshold: the five before come back.
        let Decision::Preserve { restore } = expire(&mut p, 5, t) else {
            panic!("not preserved")
        };
        assert_eq!(restore.len(), 5);
        for i in 6..10 {
            assert!(matches!(expire(&mut p, i, t), Decision::Preserve { .. }));
        }
        assert_eq!(p.counts(), (10, 1));
        assert!(
            p.targets().load().is_empty(),
            "published at the flush, once"
        );
        p.flush();
        assert_eq!(p.targets().load().len(), 10);
    }

    #[test]
    fn expiries_spread_beyond_the_window_are_not_a_mass_expiry() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 4);
        for i in 0..4 {
            let at = t + TTL * 3 * u32::from(i);
            assert_eq!(expire(&mut p, i, at), Decision::Drop, "{i}");
        }
    }

    #[test]
    fn after_a_reconnect_every_expiry_is_kept_within_the_grace() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 10);
        p.reconnected(t);
        assert!(matches!(
            expire(&mut p, 0, t + TTL),
            Decision::Preserve { .. }
        ));
        let mut q = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut q, 10);
        q.reconnected(t);
        assert_eq!(expire(&mut q, 0, t + TTL * 2), Decision::Drop, "grace over");
    }

    #[test]
    fn the_one_instance_of_a_service_expiring_is_a_crash_not_a_mass_expiry() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 1);
        assert_eq!(expire(&mut p, 0, t), Decision::Drop);
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 2);
        assert_eq!(
            expire(&mut p, 0, t),
            Decision::Drop,
            "1 of 2 is not more than half"
        );
        assert!(matches!(expire(&mut p, 1, t), Decision::Preserve { .. }));
    }

    #[test]
    fn disabled_per_service_drops_everything() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec::default());
        let off = SelfPreservationSpec {
            enabled: false,
            ..Default::default()
        };
        p.set_policy("api", Some(off), None);
        service_of(&mut p, 2);
        p.reconnected(t);
        assert_eq!(expire(&mut p, 0, t), Decision::Drop);
        assert_eq!(expire(&mut p, 1, t), Decision::Drop);
    }

    #[test]
    fn probes_drop_a_failing_instance_and_re_registration_confirms_one() {
        let mut p = both_preserved(Instant::now());
        let probed = |i: u16, ok| Probed {
            service: "api".into(),
            id: format!("i{i}").into(),
            addr: node(i).addr,
            ok,
        };
        assert_eq!(
            p.probed(&probed(0, false)),
            None,
            "one failure is not enough"
        );
        assert_eq!(p.probed(&probed(0, true)), None);
        assert_eq!(p.probed(&probed(0, false)), None, "the streak starts again");
        assert_eq!(
            p.probed(&probed(0, false)),
            Some(("api".to_string(), "i0".to_string()))
        );
        // i1 registers again under a new id on the same address.
        let mut again = node(1);
        again.id = "i1-new".into();
        assert_eq!(
            p.registered("api", &again),
            [("api".to_string(), "i1".to_string())]
        );
        assert_eq!(p.counts(), (0, 0));
        p.flush();
        assert!(p.targets().load().is_empty());
    }

    #[test]
    fn an_address_registered_by_another_service_is_no_longer_preserved() {
        let mut p = both_preserved(Instant::now());
        let mut billing = node(0);
        billing.id = "b0".into();
        assert_eq!(
            p.registered("billing", &billing),
            [("api".to_string(), "i0".to_string())],
            "the address now belongs to billing"
        );
        assert_eq!(p.counts(), (1, 1));
    }

    #[test]
    fn one_that_registered_again_before_the_share_was_crossed_is_not_restored() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec::default());
        service_of(&mut p, 4);
        assert_eq!(expire(&mut p, 0, t), Decision::Drop);
        // i0 is back (its own registration) before the others expire.
        p.registered("api", &node(0));
        assert_eq!(expire(&mut p, 1, t), Decision::Drop);
        assert_eq!(
            expire(&mut p, 2, t),
            Decision::Drop,
            "2 of 4 is not more than half"
        );
        let Decision::Preserve { restore } = expire(&mut p, 3, t) else {
            panic!("3 of 4 expired")
        };
        let ids: Vec<&str> = restore.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            ["i1", "i2"],
            "i0 is registered: its old value must not come back"
        );
    }

    #[test]
    fn a_preserved_instance_is_let_go_after_max_unconfirmed() {
        let t = Instant::now();
        let mut p = Preservation::new(SelfPreservationSpec {
            max_unconfirmed_s: 60,
            ..Default::default()
        });
        service_of(&mut p, 1);
        p.reconnected(t);
        expire(&mut p, 0, t);
        assert!(p.sweep(t + Duration::from_secs(59)).is_empty());
        assert!(
            p.sweep(t + Duration::from_millis(59_500)).is_empty(),
            "once a second"
        );
        assert_eq!(p.sweep(t + Duration::from_secs(60)).len(), 1);
        assert_eq!(p.counts(), (0, 0));
        assert!(p.services.is_empty(), "nothing left to track for api");
    }
}
