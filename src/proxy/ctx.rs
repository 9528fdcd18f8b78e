//! Per-request state shared across Pingora's phases, and the counters
//! whose guards it holds.

use super::protocol::Protocol;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::plugins::consumer::Consumer;
use crate::snapshot::{InstanceSet, Outcome, RouteEntry, UpstreamLeaf};

/// Counts requests in flight, so a graceful shutdown knows when it drained.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

/// Decrements [`InFlight`] when the request's context is dropped, however
/// the request ended.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One attempt on one instance; holds the instance's in-flight count (for
/// least-request balancing) until the attempt is over.
pub struct Attempt {
    pub set: Arc<InstanceSet>,
    pub index: usize,
}

impl Attempt {
    pub fn new(set: Arc<InstanceSet>, index: usize) -> Option<Self> {
        set.health
            .get(index)?
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(Self { set, index })
    }

    pub fn node(&self) -> &crate::model::Node {
        &self.set.nodes[self.index]
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(h) = self.set.health.get(self.index) {
            h.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub struct RequestCtx {
    pub _in_flight: InFlightGuard,
    /// Empty until the request filter runs (or a failure needs one).
    pub request_id: super::request_id::RequestId,
    /// The id is the client's, sent on a single header line, so the
    /// upstream request already carries it exactly once.
    pub id_already_sent: bool,
    pub route: Option<Arc<RouteEntry>>,
    /// The upstream this request goes to (the route's, or its canary's).
    pub leaf: Option<Arc<UpstreamLeaf>>,
    pub attempt: Option<Attempt>,
    pub attempts: u32,
    /// Set when a retry was already decided (e.g. on a 503 answer).
    pub retry_decided: bool,
    /// (limit, remaining) for `X-RateLimit-*` on the response.
    pub rate_limit: Option<(u32, u32)>,
    /// When the request began: taken only when something reads it (request
    /// metrics, the access log); untimed, a request skips four clock reads.
    pub started: Option<Instant>,
    /// When the request went upstream, and how long the response header
    /// took (both only for a timed request, as `started`).
    pub upstream_sent: Option<Instant>,
    pub upstream_took: Option<Duration>,
    /// The method a plugin rewrote the request to, for the upstream only:
    /// the client's own method frames the client's response (a `HEAD`
    /// turned `GET` must not be sent the body), answers errors and is
    /// logged.
    pub upstream_method: Option<http::Method>,
    /// The largest request body this request may send (its route's, else
    /// `proxy.max_body_bytes`).
    pub max_body: u64,
    /// What the client spoke (HTTP/1.1 or 2, TLS or not).
    pub protocol: Protocol,
    /// How many of the route's plugins passed the request on: their
    /// response phases run on whatever answer the request gets.
    pub plugins_entered: usize,
    /// Who the caller is, when an auth plugin found out.
    pub consumer: Option<Arc<Consumer>>,
    /// On a route with `cache`: how the cache answered, and the fill.
    pub cache: Option<Box<super::caching::CacheCtx>>,
}

impl RequestCtx {
    /// The method the upstream is sent, for the client's `method`: what
    /// decides whether a retry may repeat it.
    pub fn method_upstream<'a>(&'a self, method: &'a http::Method) -> &'a http::Method {
        self.upstream_method.as_ref().unwrap_or(method)
    }

    /// Whether the upstream's body is not the client's: a `HEAD` (the
    /// client's `method`) a plugin sent upstream as another method gets the
    /// head alone, which an HTTP/2 stream's writer does not see to itself.
    pub fn withholds_body(&self, method: &http::Method) -> bool {
        self.upstream_method.is_some() && *method == http::Method::HEAD
    }

    /// `timed`: whether anything will read the request's times.
    pub fn new(in_flight: &Arc<InFlight>, timed: bool) -> Self {
        Self {
            _in_flight: in_flight.enter(),
            request_id: Default::default(),
            id_already_sent: false,
            route: None,
            leaf: None,
            attempt: None,
            attempts: 0,
            retry_decided: false,
            rate_limit: None,
            started: timed.then(Instant::now),
            upstream_sent: None,
            upstream_method: None,
            upstream_took: None,
            max_body: u64::MAX,
            protocol: Protocol::default(),
            plugins_entered: 0,
            consumer: None,
            cache: None,
        }
    }

    pub fn request_id(&self) -> &str {
        self.request_id.as_str()
    }

    /// The request's id, generating one if it has none yet.
    pub fn ensure_request_id(&mut self, ids: &super::RequestIds) {
        if self.request_id.is_none() {
            self.request_id = ids.next();
        }
    }

    pub fn route(&self) -> Option<&RouteEntry> {
        self.route.as_deref()
    }

    /// Runs the response phases of the plugins the request went through.
    pub fn plugin_responses(
        &self,
        req: &pingora::http::RequestHeader,
        resp: &mut pingora::http::ResponseHeader,
    ) {
        if let Some(chain) = self.route().and_then(|r| r.plugins.as_deref()) {
            chain.response(self.plugins_entered, req, resp);
        }
    }

    /// Feeds the current attempt's outcome to passive health.
    pub fn observe(&self, outcome: Outcome) {
        if let (Some(leaf), Some(a)) = (&self.leaf, &self.attempt) {
            leaf.observe(&a.set, a.index, outcome);
        }
    }
}
