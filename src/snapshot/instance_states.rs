//! `tollgate_instances{service,state}`, counted when Prometheus scrapes.
//!
//! Ejections end on a clock, not on an event, so a gauge set when the
//! instance set changes would go stale; instead the collector walks every
//! upstream's current instance set at scrape time.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::ServiceLeaves;

const NAME: &str = "tollgate_instances";
const HELP: &str = "Instances by service and state: live (taking traffic), draining \
                    (deregistering), unhealthy (failed active checks), ejected (failed \
                    requests, for a while)";

/// How many of an upstream's instances are in each state; every instance
/// is in exactly one (draining, then unhealthy, then ejected win).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateCounts {
    pub live: usize,
    pub draining: usize,
    pub unhealthy: usize,
    pub ejected: usize,
}

impl StateCounts {
    fn by_label(self) -> [(&'static str, usize); 4] {
        [
            ("live", self.live),
            ("draining", self.draining),
            ("unhealthy", self.unhealthy),
            ("ejected", self.ejected),
        ]
    }
}

/// The collector; register it once per process with
/// [`crate::metrics::register`].
pub struct InstanceStates {
    services: ServiceLeaves,
    desc: Desc,
}

impl InstanceStates {
    pub fn new(services: ServiceLeaves) -> Self {
        let desc = Desc::new(
            NAME.into(),
            HELP.into(),
            vec!["service".into(), "state".into()],
            Default::default(),
        )
        .expect("static metric description");
        Self { services, desc }
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

impl Collector for InstanceStates {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = crate::limiter::now_ns();
        let services = self.services.load();
        let mut metrics = Vec::with_capacity(services.len() * 4);
        for (service, leaf) in services.iter() {
            for (state, n) in leaf.instances().state_counts(now).by_label() {
                let mut g = Gauge::default();
                g.set_value(n as f64);
                let mut m = Metric::default();
                m.set_label(vec![label("service", service), label("state", state)]);
                m.set_gauge(g);
                metrics.push(m);
            }
        }
        let mut family = MetricFamily::default();
        family.set_name(NAME.into());
        family.set_help(HELP.into());
        family.set_field_type(MetricType::GAUGE);
        family.set_metric(metrics);
        vec![family]
    }
}
