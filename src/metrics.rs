//! Prometheus metrics, registered once per process. Labels are bounded:
//! route ids, upstream names, kinds and status classes, never raw paths
//! or client addresses.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::LazyLock;

pub struct Metrics {
    pub registry: Registry,
    /// Config values refused by validation, by kind (route, upstream, ...).
    pub config_rejected: IntCounterVec,
    /// Registry keys written without a lease (never removed by expiry).
    pub unleased_instances: IntCounter,
    pub watch_events: IntCounterVec,
    pub etcd_connected: IntGauge,
    pub applied_revision: IntGauge,
    pub relists: IntCounterVec,
    pub rebuilds: IntCounter,
    /// Requests refused with 429, by route.
    pub ratelimit_rejected: IntCounterVec,
    /// Requests of new clients that found the per-route client table full.
    pub ratelimit_overflow: IntCounter,
    /// Idle per-client buckets dropped by the sweeper.
    pub ratelimit_evictions: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    Metrics {
        config_rejected: counter_vec(
            &r,
            "tollgate_config_rejected_total",
            "Config values rejected by validation; the key keeps its last good value",
            &["kind"],
        ),
        unleased_instances: counter(
            &r,
            "tollgate_registry_unleased_total",
            "Registry keys ignored because they carry no lease",
        ),
        watch_events: counter_vec(
            &r,
            "tollgate_etcd_watch_events_total",
            "etcd watch events received, by prefix",
            &["prefix"],
        ),
        etcd_connected: gauge(
            &r,
            "tollgate_etcd_connected",
            "1 while the etcd watch is established",
        ),
        applied_revision: gauge(
            &r,
            "tollgate_applied_revision",
            "The etcd revision the served config reflects",
        ),
        relists: counter_vec(
            &r,
            "tollgate_etcd_relists_total",
            "Full re-lists of etcd, by reason",
            &["reason"],
        ),
        rebuilds: counter(&r, "tollgate_router_rebuilds_total", "Router rebuilds"),
        ratelimit_rejected: counter_vec(
            &r,
            "tollgate_ratelimit_rejected_total",
            "Requests refused by a rate limit (429), by route",
            &["route"],
        ),
        ratelimit_overflow: counter(
            &r,
            "tollgate_ratelimit_overflow_total",
            "Rate-limit decisions for new clients made on the shared overflow bucket (client table full)",
        ),
        ratelimit_evictions: counter(
            &r,
            "tollgate_ratelimit_evictions_total",
            "Idle per-client rate-limit buckets evicted",
        ),
        registry: r,
    }
});

/// Text exposition of every metric.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    buf
}
