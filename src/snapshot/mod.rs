//! The compiled, immutable routing state the proxy reads: a router, the
//! routes it points at, and their upstream leaves. Building one is a pure
//! function of the validated model ([`build`]); publishing is one swap
//! ([`SnapshotCell`]).

mod build;
mod cell;
mod upstream;

use std::sync::Arc;

pub use build::{build, entry_for, shape_of, Rejected};
pub use cell::{SnapshotCell, SourceState, StatusView, SyncStatus};
pub use upstream::{InstanceSet, UpstreamLeaf, UpstreamTable};

use crate::limiter::RouteLimiter;
use crate::metrics::RouteMetrics;
use crate::model::{TimeoutSpec, Timeouts};
use crate::router::Router;

/// One route as served.
#[derive(Debug)]
pub struct RouteEntry {
    pub id: Arc<str>,
    pub upstream: Arc<UpstreamLeaf>,
    pub strip_prefix: Option<Box<str>>,
    pub preserve_host: bool,
    timeout: Option<TimeoutSpec>,
    pub retries: u32,
    pub limiter: Option<Arc<RouteLimiter>>,
    pub metrics: RouteMetrics,
}

impl RouteEntry {
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
