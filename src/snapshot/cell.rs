//! The hand-off point between the single config writer and the many
//! request threads: the current snapshot plus sync status counters.

use crate::plugins::consumer::ConsumerTable;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{CheckedLeaves, RouteEntry, ServiceLeaves, Snapshot};
use crate::limiter::FleetSize;
use crate::tls::CertTable;

/// Where the config comes from and whether that source is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SourceState {
    Standalone = 0,
    Connected = 1,
    Disconnected = 2,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Standalone => "standalone",
            SourceState::Connected => "connected",
            SourceState::Disconnected => "disconnected",
        }
    }
}

/// Counters the admin endpoints report; written by the config writer only.
#[derive(Debug, Default)]
pub struct SyncStatus {
    ready: AtomicBool,
    stale: AtomicBool,
    source: AtomicU8,
    revision: AtomicI64,
    routes: AtomicUsize,
    upstreams: AtomicUsize,
    instances: AtomicUsize,
    rejected: AtomicU64,
    applied_unix_ms: AtomicU64,
    gateways: AtomicUsize,
    preserved_instances: AtomicUsize,
    preserving_services: AtomicUsize,
    certs: AtomicUsize,
}

/// A plain copy of [`SyncStatus`] for reporting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusView {
    pub ready: bool,
    pub stale: bool,
    pub etcd: &'static str,
    pub revision: i64,
    pub routes: usize,
    pub upstreams: usize,
    pub instances: usize,
    pub rejected: u64,
    pub applied_unix_ms: u64,
    /// Live gateway nodes registered in etcd (0 in standalone mode).
    pub gateways: usize,
    /// Instances kept through a mass lease expiry (self-preservation),
    /// and the services they belong to.
    pub preserved_instances: usize,
    pub preserving_services: usize,
    /// TLS certificates served (from etcd or the file).
    pub certs: usize,
}

impl SyncStatus {
    pub fn set_certs(&self, n: usize) {
        self.certs.store(n, Ordering::Relaxed);
    }

    pub fn set_source(&self, s: SourceState) {
        self.source.store(s as u8, Ordering::Relaxed);
    }

    pub fn source(&self) -> SourceState {
        match self.source.load(Ordering::Relaxed) {
            1 => SourceState::Connected,
            2 => SourceState::Disconnected,
            _ => SourceState::Standalone,
        }
    }

    /// Whether the served config may be behind its source.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Marks the served config as possibly behind its source (or not).
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
    }

    pub fn set_preserved(&self, instances: usize, services: usize) {
        self.preserved_instances.store(instances, Ordering::Relaxed);
        self.preserving_services.store(services, Ordering::Relaxed);
    }

    pub fn set_gateways(&self, n: usize) {
        self.gateways.store(n, Ordering::Relaxed);
    }

    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_apply(&self, revision: i64, routes: usize, upstreams: usize, instances: usize) {
        self.revision.store(revision, Ordering::Relaxed);
        self.routes.store(routes, Ordering::Relaxed);
        self.upstreams.store(upstreams, Ordering::Relaxed);
        self.instances.store(instances, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.applied_unix_ms.store(now, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
    }

    /// Whether any config has been applied yet.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn view(&self) -> StatusView {
        StatusView {
            ready: self.ready.load(Ordering::Acquire),
            stale: self.stale.load(Ordering::Relaxed),
            etcd: self.source().as_str(),
            revision: self.revision.load(Ordering::Relaxed),
            routes: self.routes.load(Ordering::Relaxed),
            upstreams: self.upstreams.load(Ordering::Relaxed),
            instances: self.instances.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            applied_unix_ms: self.applied_unix_ms.load(Ordering::Relaxed),
            gateways: self.gateways.load(Ordering::Relaxed),
            preserved_instances: self.preserved_instances.load(Ordering::Relaxed),
            preserving_services: self.preserving_services.load(Ordering::Relaxed),
            certs: self.certs.load(Ordering::Relaxed),
        }
    }
}

/// The current snapshot and its status. Readers do one `load_full` per
/// request; the writer swaps whole snapshots.
#[derive(Debug)]
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
    pub status: SyncStatus,
    /// Live gateway nodes, for cluster-scoped limits (1 until known).
    pub fleet: FleetSize,
    /// Upstreams with active health checks, for the checker.
    pub checked: CheckedLeaves,
    /// Every upstream, for the instance-state metrics.
    pub services: ServiceLeaves,
    /// The certificates by name, as the TLS handshake reads them.
    pub certs: Arc<ArcSwap<CertTable>>,
    /// The consumers, as the auth plugins read them.
    pub consumers: ArcSwap<ConsumerTable>,
    /// The limiters of consumers with a limit of their own, by name.
    pub consumer_limits: ArcSwap<ConsumerLimits>,
    /// The live gateway nodes by id, sorted: who shares health probes.
    pub members: Arc<ArcSwap<Vec<Arc<str>>>>,
    /// Managed certificates, HTTP-01 tokens, ordering attempts.
    pub acme: ArcSwap<super::acme::AcmeView>,
    /// The response cache, made on first use (most gateways cache nothing).
    cache: std::sync::OnceLock<&'static crate::cache::ResponseCache>,
    cache_max_bytes: std::sync::atomic::AtomicU64,
    purge_record_ttl_s: std::sync::atomic::AtomicU64,
}

/// Each rate-limited consumer's limiter.
pub type ConsumerLimits = ahash::AHashMap<Arc<str>, Arc<crate::limiter::RouteLimiter>>;

impl SnapshotCell {
    /// The response cache (`cache.max_bytes`, set before first use).
    pub fn cache(&self) -> &'static crate::cache::ResponseCache {
        self.cache.get_or_init(|| {
            crate::cache::ResponseCache::leak(self.cache_max_bytes.load(Ordering::Relaxed))
        })
    }

    /// The cache's bound (before the first request uses it) and how long
    /// purge records live (`cache` in the bootstrap file).
    pub fn set_cache_config(&self, max_bytes: u64, purge_record_ttl_s: u64) {
        self.cache_max_bytes.store(max_bytes, Ordering::Relaxed);
        self.purge_record_ttl_s
            .store(purge_record_ttl_s, Ordering::Relaxed);
    }

    pub fn purge_record_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.purge_record_ttl_s.load(Ordering::Relaxed))
    }

    /// The response cache if any route has used it yet.
    pub fn cache_if_used(&self) -> Option<&'static crate::cache::ResponseCache> {
        self.cache.get().copied()
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::default(),
            status: SyncStatus::default(),
            fleet: Arc::new(AtomicUsize::new(1)),
            checked: CheckedLeaves::default(),
            services: ServiceLeaves::default(),
            certs: Arc::default(),
            consumers: ArcSwap::default(),
            consumer_limits: ArcSwap::default(),
            members: Arc::default(),
            acme: ArcSwap::default(),
            cache: Default::default(),
            cache_max_bytes: std::sync::atomic::AtomicU64::new(crate::cache::DEFAULT_MAX_BYTES),
            purge_record_ttl_s: std::sync::atomic::AtomicU64::new(
                crate::cache::purge::RECORD_TTL_SECS as u64,
            ),
        })
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The route for a request: one lock-free load of the current snapshot
    /// and one reference-count increment for the route it finds.
    pub fn route_for(&self, host: &str, method: &str, path: &str) -> Option<Arc<RouteEntry>> {
        self.current.load().route(host, method, path).cloned()
    }

    pub fn store(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
    }
}
