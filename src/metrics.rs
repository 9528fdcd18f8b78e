//! Prometheus metrics, registered once per process. Labels are bounded:
//! route ids, upstream names, kinds and status classes, never raw paths
//! or client addresses.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use crate::model::route::METHODS;

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
    /// Cached routes' requests by how the cache answered (hit, miss, stale, bypass).
    pub cache_requests: IntCounterVec,
    /// Entries pushed out of the cache by newer ones.
    pub cache_evictions: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    /// Misses answered by another request's fill (coalesced).
    pub cache_coalesced: IntCounter,
    /// Purges applied, and whole-cache flushes.
    pub cache_purges: IntCounterVec,
    /// 1 while config changes wait for an apply's batch marker to go.
    pub batch_held: IntGauge,
    /// Holds for an apply's batch ended, by how (released, expired, timeout, overflow, relist).
    pub batch_holds: IntCounterVec,
    /// Requests refused with 429, by route.
    pub ratelimit_rejected: IntCounterVec,
    /// Requests of new clients that found the per-route client table full.
    pub ratelimit_overflow: IntCounter,
    /// Idle per-client buckets dropped by the sweeper.
    pub ratelimit_evictions: IntCounter,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub retries: IntCounterVec,
    pub last_apply_seconds: Gauge,
    pub snapshot_age_seconds: Gauge,
    pub access_log_dropped: IntCounter,
    /// Picks made in panic mode (too few healthy instances: health ignored).
    pub panic_picks: IntCounter,
    pub ejections: IntCounterVec,
    /// Active health check verdict changes, by upstream and result.
    pub health_transitions: IntCounterVec,
    /// Roles this node holds in the fleet (value: how much of it, e.g.
    /// instances probed), by role.
    pub cluster_roles: IntGaugeVec,
    /// Shared health verdicts written to etcd, by verdict.
    pub health_verdict_writes: IntCounterVec,
    /// Managed (ACME) certificates: failed attempts in a row, by cert.
    pub acme_failures: IntGaugeVec,
    /// ACME orders this node ran, by result.
    pub acme_orders: IntCounterVec,
    /// Instances kept through a mass lease expiry, by service.
    pub preserved_instances: IntGaugeVec,
    /// Preserved instances let go, by service and why.
    pub preserved_dropped: IntCounterVec,
    /// Registry leases asked how long they have left.
    pub lease_checks: IntCounter,
    /// Registry leases whose remaining time is known.
    pub leases_known: IntGauge,
    /// Client connections closed at once by a connection limit, by which.
    pub connections_refused: IntCounterVec,
    /// Requests by authenticated consumer.
    pub consumer_requests: IntCounterVec,
    /// Admin API requests refused for a missing or unknown key.
    pub admin_auth_failures: IntCounter,
    /// HTTP/2 connections closed by the gateway with GOAWAY, by reason.
    pub http2_goaway: IntCounterVec,
    /// Requests by protocol (http/1.1, h2, h2c) and scheme.
    pub requests_by_protocol: IntCounterVec,
    /// TLS handshakes, by result (ok, failed, timeout).
    pub tls_handshakes: IntCounterVec,
    /// Handshakes with no certificate to present (no SNI match, no default).
    pub tls_no_certificate: IntCounter,
    /// Each served certificate's expiry (Unix seconds), by certificate id.
    pub tls_cert_not_after: IntGaugeVec,
    /// Connections closed at once for speaking HTTP/2 to a listener that
    /// does not take it, by listener kind.
    pub protocol_refused: IntCounterVec,
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

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
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
        cache_requests: counter_vec(
            &r,
            "tollgate_cache_requests_total",
            "Requests to cached routes by how the cache answered: hit, miss, stale, bypass",
            &["result"],
        ),
        cache_evictions: counter(
            &r,
            "tollgate_cache_evictions_total",
            "Cache entries pushed out by newer ones (cache.max_bytes)",
        ),
        cache_bytes: gauge(&r, "tollgate_cache_bytes", "Bytes held by the response cache"),
        cache_entries: gauge(&r, "tollgate_cache_entries", "Entries in the response cache"),
        cache_coalesced: counter(
            &r,
            "tollgate_cache_coalesced_total",
            "Cache misses answered by another request's upstream fetch of the same key",
        ),
        cache_purges: counter_vec(
            &r,
            "tollgate_cache_purges_total",
            "Purges applied from etcd (purge), and whole-cache flushes after missing some (flush)",
            &["kind"],
        ),
        batch_held: gauge(
            &r,
            "tollgate_config_batch_held",
            "1 while config changes are held until a multi-transaction apply finishes",
        ),
        batch_holds: counter_vec(
            &r,
            "tollgate_config_batch_holds_total",
            "Holds for a multi-transaction apply, by how they ended (released, timeout, overflow, relist)",
            &["end"],
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
        rebuilds: counter(&r, "tollgate_router_rebuilds_total", "Snapshot publishes that changed the routing table (each an in-place edit)"),
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
        requests: counter_vec(
            &r,
            "tollgate_requests_total",
            "Requests by route, method and status class (route \"\" = no route matched)",
            &["route", "method", "status"],
        ),
        request_duration: histogram_vec(
            &r,
            "tollgate_request_duration_seconds",
            "Whole-request latency as the gateway saw it, by route",
            &["route"],
        ),
        upstream_duration: histogram_vec(
            &r,
            "tollgate_upstream_duration_seconds",
            "Time from sending the request upstream to the response header, by route",
            &["route"],
        ),
        bytes_in: counter_vec(&r, "tollgate_request_bytes_total", "Request body bytes read from clients", &["route"]),
        bytes_out: counter_vec(&r, "tollgate_response_bytes_total", "Response body bytes sent to clients", &["route"]),
        retries: counter_vec(&r, "tollgate_retries_total", "Upstream attempts retried, by route", &["route"]),
        last_apply_seconds: float_gauge(
            &r,
            "tollgate_last_apply_duration_seconds",
            "How long the last config apply (validate + publish) took",
        ),
        snapshot_age_seconds: float_gauge(
            &r,
            "tollgate_snapshot_age_seconds",
            "Seconds since the served config was last applied",
        ),
        access_log_dropped: counter(
            &r,
            "tollgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        ),
        panic_picks: counter(
            &r,
            "tollgate_upstream_panic_picks_total",
            "Instance picks made in panic mode: too few healthy instances, so health was ignored",
        ),
        ejections: counter_vec(
            &r,
            "tollgate_ejections_total",
            "Instances ejected by passive health checks, by upstream",
            &["upstream"],
        ),
        health_transitions: counter_vec(
            &r,
            "tollgate_health_check_transitions_total",
            "Active health check verdict changes, by upstream and new state",
            &["upstream", "state"],
        ),
        cluster_roles: gauge_vec(
            &r,
            "tollgate_cluster_roles",
            "Roles this node holds in the fleet, by role (health-prober: instances it probes for the fleet; health-prober-local: instances it probes alone, cut off from etcd; acme/<cert>: ordering that certificate)",
            &["role"],
        ),
        health_verdict_writes: counter_vec(
            &r,
            "tollgate_health_verdict_writes_total",
            "Shared health verdicts this node wrote to etcd, by verdict (unhealthy, healthy: withdrawn)",
            &["verdict"],
        ),
        acme_failures: gauge_vec(
            &r,
            "tollgate_acme_failures",
            "Managed certificates: failed ACME attempts in a row (0 after a success), by cert; alert on > 0",
            &["cert"],
        ),
        acme_orders: counter_vec(
            &r,
            "tollgate_acme_orders_total",
            "ACME orders this node ran, by result (issued, failed)",
            &["result"],
        ),
        preserved_instances: gauge_vec(
            &r,
            "tollgate_registry_preserved_instances",
            "Instances whose lease expired in a mass expiry and that are kept while they answer probes (self-preservation), by service",
            &["service"],
        ),
        preserved_dropped: counter_vec(
            &r,
            "tollgate_registry_preserved_dropped_total",
            "Preserved instances let go, by service and reason (probe_failed, unconfirmed_too_long, re_registered)",
            &["service", "reason"],
        ),
        lease_checks: counter(
            &r,
            "tollgate_registry_lease_checks_total",
            "Registry leases asked how long they have left (LeaseTimeToLive), to tell an expiry from a revoke",
        ),
        leases_known: gauge(
            &r,
            "tollgate_registry_leases_known",
            "Registry leases whose remaining time is known: a delete of one of these can be told an expiry or a revoke",
        ),
        connections_refused: counter_vec(
            &r,
            "tollgate_connections_refused_total",
            "Client connections closed on accept by a limit (max_connections, max_connections_per_ip)",
            &["reason"],
        ),
        requests_by_protocol: counter_vec(
            &r,
            "tollgate_requests_by_protocol_total",
            "Client requests by protocol (http/1.1, h2, h2c) and scheme (http, https)",
            &["protocol", "scheme"],
        ),
        tls_handshakes: counter_vec(
            &r,
            "tollgate_tls_handshakes_total",
            "TLS handshakes on the proxy listeners, by result (ok, failed, timeout)",
            &["result"],
        ),
        tls_no_certificate: counter(
            &r,
            "tollgate_tls_no_certificate_total",
            "TLS handshakes refused with an alert: no certificate matches the SNI and there is no default",
        ),
        tls_cert_not_after: gauge_vec(
            &r,
            "tollgate_tls_cert_not_after_seconds",
            "When each served certificate expires (Unix seconds), by certificate id",
            &["cert"],
        ),
        protocol_refused: counter_vec(
            &r,
            "tollgate_protocol_refused_total",
            "Connections closed at once: an HTTP/2 preface on a listener without h2c",
            &["protocol"],
        ),
        consumer_requests: counter_vec(
            &r,
            "tollgate_consumer_requests_total",
            "Requests by the consumer an auth plugin identified",
            &["consumer"],
        ),
        admin_auth_failures: counter(
            &r,
            "tollgate_admin_auth_failures_total",
            "Admin API requests refused for a missing or unknown X-API-Key",
        ),
        http2_goaway: counter_vec(
            &r,
            "tollgate_http2_goaway_total",
            "HTTP/2 client connections the gateway closed with GOAWAY for abuse or a protocol error, by reason (reset_rate, enhance_your_calm: Rapid Reset before accept or a CONTINUATION flood, protocol_error, compression_error, ...)",
            &["reason"],
        ),
        registry: {
            let info = IntGaugeVec::new(Opts::new("tollgate_build_info", "Build information"), &["version"])
                .expect("static metric definition");
            info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            r.register(Box::new(info)).expect("metric registered once");
            r
        },
    }
});

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// A route's metric handles. Resolved on the route's first request (a
/// route that gets no traffic costs no series and no memory: 10,000 idle
/// routes would otherwise be 400,000 series), then read lock-free; request
/// counters are created on first use per (method, class).
pub struct RouteMetrics {
    route: Box<str>,
    handles: OnceLock<Box<Handles>>,
}

struct Handles {
    requests: [[OnceLock<IntCounter>; CLASSES.len()]; METHODS.len() + 1],
    duration: Histogram,
    upstream: Histogram,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    retries: IntCounter,
    rate_limited: IntCounter,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish()
    }
}

/// What one finished request reports.
pub struct Observation {
    /// A [`method_index`] slot.
    pub method: usize,
    pub status: u16,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// The method's label slot: its index in [`METHODS`], or `METHODS.len()`
/// for `OTHER` (bounded cardinality). A match on the parsed method, not a
/// string search: this runs on every request.
pub fn method_index(m: &http::Method) -> usize {
    use http::Method;
    let i = match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => return METHODS.len(),
    };
    debug_assert_eq!(METHODS[i], m.as_str());
    i
}

/// The label for a [`method_index`] slot.
fn method_name(i: usize) -> &'static str {
    METHODS.get(i).copied().unwrap_or("OTHER")
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.into(),
            handles: OnceLock::new(),
        }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let m = &*METRICS;
            let route = &*self.route;
            Box::new(Handles {
                requests: Default::default(),
                duration: m.request_duration.with_label_values(&[route]),
                upstream: m.upstream_duration.with_label_values(&[route]),
                bytes_in: m.bytes_in.with_label_values(&[route]),
                bytes_out: m.bytes_out.with_label_values(&[route]),
                retries: m.retries.with_label_values(&[route]),
                rate_limited: m.ratelimit_rejected.with_label_values(&[route]),
            })
        })
    }

    /// One retry of a request on this route.
    pub fn retried(&self) {
        self.handles().retries.inc();
    }

    /// One request refused by this route's rate limit.
    pub fn rate_limited(&self) {
        self.handles().rate_limited.inc();
    }

    pub fn observe(&self, o: &Observation) {
        let h = self.handles();
        let mi = o.method.min(METHODS.len());
        let ci = class_index(o.status);
        h.requests[mi][ci]
            .get_or_init(|| {
                METRICS
                    .requests
                    .with_label_values(&[&self.route, method_name(mi), CLASSES[ci]])
            })
            .inc();
        h.duration.observe(o.total.as_secs_f64());
        if let Some(u) = o.upstream {
            h.upstream.observe(u.as_secs_f64());
        }
        h.bytes_in.inc_by(o.bytes_in as u64);
        h.bytes_out.inc_by(o.bytes_out as u64);
    }
}

/// Requests that matched no route.
pub static UNROUTED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new(""));

/// Drops a deleted route's series so churned ids do not pile up.
pub fn forget_route(route: &str) {
    let m = &*METRICS;
    for method in METHODS.iter().chain(std::iter::once(&"OTHER")) {
        for class in CLASSES {
            let _ = m.requests.remove_label_values(&[route, method, class]);
        }
    }
    let _ = m.request_duration.remove_label_values(&[route]);
    let _ = m.upstream_duration.remove_label_values(&[route]);
    let _ = m.bytes_in.remove_label_values(&[route]);
    let _ = m.bytes_out.remove_label_values(&[route]);
    let _ = m.retries.remove_label_values(&[route]);
    let _ = m.ratelimit_rejected.remove_label_values(&[route]);
}

/// Adds a collector computed at scrape time (e.g. instance states) to
/// the process registry; a second registration of the same family is
/// ignored (tests build several gateways in one process).
pub fn register(collector: Box<dyn prometheus::core::Collector>) {
    let _ = METRICS.registry.register(collector);
}

/// Creates the zero-valued series of counters whose labels are known up
/// front, so dashboards and `increase()` see them before the first event.
pub fn init() {
    let m = &*METRICS;
    for kind in [
        "route",
        "upstream",
        "settings",
        "instance",
        "value",
        "route_conflict",
    ] {
        m.config_rejected.with_label_values(&[kind]);
    }
    for reason in ["compacted", "revision_backwards", "new_cluster"] {
        m.relists.with_label_values(&[reason]);
    }
    for prefix in ["config", "registry"] {
        m.watch_events.with_label_values(&[prefix]);
    }
}

/// Text exposition of every metric; `applied_unix_ms` feeds the snapshot age.
pub fn render(applied_unix_ms: u64) -> Vec<u8> {
    if applied_unix_ms > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        METRICS
            .snapshot_age_seconds
            .set(now.saturating_sub(applied_unix_ms) as f64 / 1000.0);
    }
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_method_has_its_own_label_and_the_rest_share_other() {
        for (i, name) in METHODS.iter().enumerate() {
            let m = http::Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(method_index(&m), i);
            assert_eq!(method_name(method_index(&m)), *name);
        }
        let odd = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_name(method_index(&odd)), "OTHER");
    }
}
