//! Active health checks: once per upstream (not per route), each instance
//! is probed at the policy's interval. The checker walks the current
//! instance sets on every tick, so it follows instances as they register
//! and leave and stops probing the ones that went.
//!
//! In a fleet ([`Sharing`]) each node probes only the instances it owns
//! (rendezvous hashing over the live gateways) and hands its unhealthy
//! verdicts to the cluster's writer, which keeps them in etcd; every node
//! then serves by the fleet's verdicts. Cut off from etcd, a node probes
//! every instance itself and serves by its own.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::set_shared_verdicts;
use super::sharing::{owner, Sharing, Verdicts};
use crate::metrics::METRICS;
use crate::snapshot::CheckedLeaves;

const TICK: Duration = Duration::from_millis(50);
/// How often to look for newly checked upstreams while none is: an idle
/// gateway should not wake 20 times a second for nothing, and a new
/// check's first probe may start this much later.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub struct ActiveChecker {
    leaves: CheckedLeaves,
    sharing: Option<Sharing>,
}

impl ActiveChecker {
    pub fn new(leaves: CheckedLeaves) -> Self {
        Self {
            leaves,
            sharing: None,
        }
    }

    /// Shares probes with the fleet (etcd mode).
    pub fn sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = Some(sharing);
        self
    }
}

#[async_trait]
impl BackgroundService for ActiveChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // (upstream, instance id, address) → when it is next due.
        let mut due: HashMap<(Arc<str>, String, std::net::SocketAddr), Instant> = HashMap::new();
        let mut next_tick = TICK;
        // A probe whose verdict flipped wakes the loop at once, so a shared
        // verdict goes to etcd now rather than at the next tick.
        let flipped = Arc::new(tokio::sync::Notify::new());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next_tick) => {}
                _ = flipped.notified() => {}
                _ = shutdown.changed() => return,
            }
            let leaves = self.leaves.load();
            next_tick = if leaves.is_empty() { IDLE_TICK } else { TICK };
            let now = Instant::now();
            let shared = self.sharing.as_ref().is_some_and(Sharing::is_shared);
            set_shared_verdicts(shared);
            let members = self.sharing.as_ref().map(|s| s.members.load_full());
            let me = self.sharing.as_ref().map(|s| &s.node_id);
            let mut seen = std::collections::HashSet::new();
            let mut verdicts = Verdicts::default();
            for leaf in leaves.iter() {
                let set = leaf.instances();
                let Some(spec) = set.active.clone() else {
                    continue;
                };
                for (node, health) in set.nodes.iter().zip(&set.health) {
                    if shared {
                        let members = members.as_deref().map_or(&[][..], Vec::as_slice);
                        if owner(members, &leaf.name, &node.id) != me {
                            continue;
                        }
                    }
                    let key = (leaf.name.clone(), node.id.clone(), node.addr);
                    seen.insert(key.clone());
                    let next = due.entry(key).or_insert_with(|| {
                        // Taking over: from the verdict in force (or one
                        // that just went with its prober).
                        health.adopt(health.verdict_to_adopt(crate::limiter::now_ns()));
                        now
                    });
                    if shared {
                        let id = (leaf.name.clone(), Arc::from(node.id.as_str()));
                        match (health.local_ok(), health.fleet_down()) {
                            (false, fleet_down) => {
                                if !fleet_down {
                                    verdicts.missing.insert(id.clone());
                                }
                                verdicts.down.insert(id);
                            }
                            (true, true) => {
                                verdicts.clear.insert(id);
                            }
                            (true, false) => {}
                        }
                    }
                    if *next > now {
                        continue;
                    }
                    *next = now + Duration::from_millis(spec.interval_ms);
                    let (health, spec, leaf, node, flipped) = (
                        health.clone(),
                        spec.clone(),
                        leaf.clone(),
                        node.clone(),
                        flipped.clone(),
                    );
                    tokio::spawn(async move {
                        let timeout = Duration::from_millis(spec.timeout_ms);
                        let ok = crate::http_probe::get_ok(
                            node.addr,
                            &node.authority,
                            &spec.path,
                            timeout,
                        )
                        .await;
                        if let Some(up) = health.record_check(ok, spec.healthy, spec.unhealthy) {
                            flipped.notify_one();
                            let state = if up { "healthy" } else { "unhealthy" };
                            METRICS
                                .health_transitions
                                .with_label_values(&[&leaf.name, state])
                                .inc();
                            tracing::warn!(upstream = %leaf.name, instance = %node.id, addr = %node.addr, state, "active health check verdict changed");
                        }
                    });
                }
            }
            // Instances that left (or another node probes now) are forgotten.
            due.retain(|k, _| seen.contains(k));
            let (shared_n, local_n) = if shared {
                (due.len(), 0)
            } else {
                (0, due.len())
            };
            METRICS
                .cluster_roles
                .with_label_values(&["health-prober"])
                .set(shared_n as i64);
            METRICS
                .cluster_roles
                .with_label_values(&["health-prober-local"])
                .set(local_n as i64);
            if let Some(s) = &self.sharing {
                s.verdicts.send_if_modified(|v| {
                    let changed = *v != verdicts;
                    if changed {
                        *v = std::mem::take(&mut verdicts);
                    }
                    changed
                });
            }
        }
    }
}
