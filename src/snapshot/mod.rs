//! The compiled, immutable routing state the proxy reads: a router, the
//! routes it points at, and their upstream leaves. Building one is a pure
//! function of the validated model ([`build`]); publishing is one swap
//! ([`SnapshotCell`]).

pub mod acme;
mod build;
mod cell;
mod instance_states;
mod upstream;

use std::sync::Arc;

pub use build::{build, entry_for, shape_of, Rejected};
pub use cell::{SnapshotCell, SourceState, StatusView, SyncStatus};
pub use instance_states::{InstanceStates, StateCounts};
pub use upstream::{
    CheckedLeaves, InstanceSet, Outcome, RetryBudget, ServiceLeaves, UpstreamLeaf, UpstreamTable,
    CONNECT_EJECTION,
};

use crate::limiter::RouteLimiter;
use crate::log_gate::FailureLog;
use crate::metrics::RouteMetrics;
use crate::model::policy::CanarySpec;
use crate::model::{TimeoutSpec, Timeouts};
use crate::plugins::Chain;
use crate::router::Router;

/// One route as served.
#[derive(Debug)]
pub struct RouteEntry {
    pub id: Arc<str>,
    pub upstream: Arc<UpstreamLeaf>,
    pub strip_prefix: Option<Box<str>>,
    pub preserve_host: bool,
    /// Plaintext requests are redirected to the TLS listener.
    pub https_only: bool,
    timeout: Option<TimeoutSpec>,
    /// The route's `retries` (short form of the retry policy), if set.
    pub retries: Option<u32>,
    /// The route's request body limit, if it sets one.
    pub max_body_bytes: Option<u64>,
    pub canary: Option<Canary>,
    pub limiter: Option<Arc<RouteLimiter>>,
    pub metrics: RouteMetrics,
    /// Rate-limits the route's "request failed" warnings.
    pub failure_log: FailureLog,
    /// The settings' plugins around the route's own; `None` when neither
    /// has any.
    pub plugins: Option<Arc<Chain>>,
    /// How this route's answers are cached, if they are.
    pub cache: Option<Arc<crate::model::cache::CachePolicy>>,
}

/// A share of a route's traffic sent to another upstream.
#[derive(Debug)]
pub struct Canary {
    pub upstream: Arc<UpstreamLeaf>,
    /// Requests per 10,000 that go to the canary.
    per_10k: u64,
    header: Option<(http::HeaderName, String)>,
    counter: std::sync::atomic::AtomicU64,
}

impl Canary {
    pub fn new(spec: &CanarySpec, upstream: Arc<UpstreamLeaf>) -> Self {
        Self {
            upstream,
            per_10k: (spec.weight * 100.0).round() as u64,
            header: spec.header.as_ref().and_then(|h| {
                http::HeaderName::from_bytes(h.name.as_bytes())
                    .ok()
                    .map(|n| (n, h.value.clone()))
            }),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether this request goes to the canary: forced by the header, else
    /// an exact share by counter (deterministic, lock-free).
    pub fn takes(&self, headers: &http::HeaderMap) -> bool {
        if let Some((name, value)) = &self.header {
            if headers
                .get(name)
                .is_some_and(|v| v.as_bytes() == value.as_bytes())
            {
                return true;
            }
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Spread the canary's share evenly: Bresenham over 10,000 slots.
        (n % 10_000 + 1) * self.per_10k / 10_000 != (n % 10_000) * self.per_10k / 10_000
    }
}

impl RouteEntry {
    /// The upstream this request goes to.
    pub fn upstream_for(&self, headers: &http::HeaderMap) -> &Arc<UpstreamLeaf> {
        match &self.canary {
            Some(c) if c.takes(headers) => &c.upstream,
            _ => &self.upstream,
        }
    }

    /// The route's timeouts over the upstream's.
    pub fn timeouts(&self, upstream: Timeouts) -> Timeouts {
        self.timeout.map_or(upstream, |t| t.apply(upstream))
    }

    /// The upstream path for `path`: `strip_prefix` removed at a segment
    /// boundary, `/` when nothing is left. `None` when nothing changes.
    pub fn rewrite_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        let prefix = self.strip_prefix.as_deref()?;
        let rest = path.strip_prefix(prefix)?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }
}

/// Everything a request needs, immutable once published. Cloning shares
/// the whole trie; edits copy only the nodes they touch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub router: Router<Arc<RouteEntry>>,
}

impl Snapshot {
    /// The route for a request, if any.
    pub fn route(&self, host: &str, method: &str, path: &str) -> Option<&Arc<RouteEntry>> {
        self.router.lookup(host, method, path)
    }

    /// How many routes are served.
    pub fn len(&self) -> usize {
        self.router.len()
    }

    pub fn is_empty(&self) -> bool {
        self.router.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_takes_its_exact_share_and_the_header_forces_it() {
        let mut table = UpstreamTable::new(Timeouts::default());
        let spec: CanarySpec = serde_json::from_str(
            r#"{"upstream":"v2","weight":10,"header":{"name":"X-Canary","value":"always"}}"#,
        )
        .unwrap();
        let c = Canary::new(&spec, table.leaf("v2"));
        let plain = http::HeaderMap::new();
        let first_100 = (0..100).filter(|_| c.takes(&plain)).count();
        assert_eq!(first_100, 10, "spread evenly, not bunched");
        let rest = (100..10_000).filter(|_| c.takes(&plain)).count();
        assert_eq!(first_100 + rest, 1000);
        let mut forced = http::HeaderMap::new();
        forced.insert("x-canary", "always".parse().unwrap());
        assert!((0..50).all(|_| c.takes(&forced)));
    }
}
