//! Active health checks: once per upstream (not per route), each instance
//! is probed at the policy's interval. The checker walks the current
//! instance sets on every tick, so it follows instances as they register
//! and leave and stops probing the ones that went.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::METRICS;
use crate::snapshot::CheckedLeaves;

const TICK: Duration = Duration::from_millis(50);
/// How often to look for newly checked upstreams while none is: an idle
/// gateway should not wake 20 times a second for nothing, and a new
/// check's first probe may start this much later.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub struct ActiveChecker {
    leaves: CheckedLeaves,
}

impl ActiveChecker {
    pub fn new(leaves: CheckedLeaves) -> Self {
        Self { leaves }
    }
}

#[async_trait]
impl BackgroundService for ActiveChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // (upstream, instance id, address) → when it is next due.
        let mut due: HashMap<(Arc<str>, String, std::net::SocketAddr), Instant> = HashMap::new();
        let mut next_tick = TICK;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next_tick) => {}
                _ = shutdown.changed() => return,
            }
            let leaves = self.leaves.load();
            next_tick = if leaves.is_empty() { IDLE_TICK } else { TICK };
            let now = Instant::now();
            let mut seen = std::collections::HashSet::new();
            for leaf in leaves.iter() {
                let set = leaf.instances();
                let Some(spec) = set.active.clone() else {
                    continue;
                };
                for (node, health) in set.nodes.iter().zip(&set.health) {
                    let key = (leaf.name.clone(), node.id.clone(), node.addr);
                    seen.insert(key.clone());
                    let next = due.entry(key).or_insert(now);
                    if *next > now {
                        continue;
                    }
                    *next = now + Duration::from_millis(spec.interval_ms);
                    let (health, spec, leaf, node) =
                        (health.clone(), spec.clone(), leaf.clone(), node.clone());
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
            // Instances that left are forgotten.
            due.retain(|k, _| seen.contains(k));
        }
    }
}
