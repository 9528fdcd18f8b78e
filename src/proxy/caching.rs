//! The response cache on the request path, shared by both engines: the
//! lookup after routing, limits and auth (a hit is answered there), the
//! fill as the upstream's answer streams to the client, `X-Cache` and
//! `Age` on what the client sees, and stale answers for upstream errors.
//!
//! Keyed parts are the route's `cache.key` and `vary_headers`. Headers an
//! upstream may reflect into its answer without their being keyed
//! ([`UNKEYED`]) are removed from requests on cached routes, so no client
//! can poison an entry others are served (X-Forwarded-Host in a link, an
//! X-Original-URL routing override).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use prometheus::IntCounter;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use super::client_h1;
use super::ctx::RequestCtx;
use super::forwarding::host_of;
use super::gate::Gate;
use crate::cache::{Fill, KeyParts, Lookup, ResponseCache, Stored};
use crate::metrics::METRICS;
use crate::model::cache::CachePolicy;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Request headers removed on cached routes: unkeyed, and known to be
/// reflected or obeyed by upstream frameworks.
pub const UNKEYED: [&str; 11] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removed from a fill's upstream request: the fill must get the whole
/// answer, not a 304 or a range.
const CONDITIONAL: [HeaderName; 6] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// How the cache answered, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl CacheResult {
    fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Bypass => "BYPASS",
        }
    }

    /// Its counter, looked up once (a labelled lookup per hit costs a
    /// lock and a hash).
    fn counter(self) -> &'static IntCounter {
        static COUNTERS: LazyLock<[IntCounter; 4]> = LazyLock::new(|| {
            ["hit", "miss", "stale", "bypass"]
                .map(|l| METRICS.cache_requests.with_label_values(&[l]))
        });
        &COUNTERS[self as usize]
    }
}

/// A cached route's request.
pub struct CacheCtx {
    policy: Arc<CachePolicy>,
    pub result: CacheResult,
    fill: Option<Box<Fill>>,
    /// What answers instead of an upstream error (`stale_if_error`).
    stale: Option<Arc<Stored>>,
    /// The request carried `Authorization`.
    authorized: bool,
    /// Answered stale: the fill is for a refresh off the request.
    refresh_after: bool,
}

/// A stale entry's refresh, run by the engine after the client has its
/// answer: the fill and what it needs to judge the upstream's answer.
pub struct Refresh {
    fill: Box<Fill>,
    policy: Arc<CachePolicy>,
    authorized: bool,
    route: Arc<str>,
    target: String,
}

impl Refresh {
    /// The upstream answer's header: whether to read its body for the cache.
    pub fn header(&mut self, resp: &ResponseHeader) -> bool {
        let Refresh {
            fill,
            policy,
            authorized,
            route,
            target,
        } = self;
        fill.header(policy, *authorized, resp, route, target)
            .is_ok()
    }

    /// A piece of its body; `false` once the fill gave up.
    pub fn body(&mut self, data: &Bytes) -> bool {
        self.fill.body(data, &self.policy)
    }

    /// The body ended whole: store it.
    pub fn finish(self) {
        self.fill.finish();
    }
}

impl Gate {
    /// Looks the request up in the cache (routes with `cache` only): `true`
    /// when it was answered from there.
    pub(super) async fn cache_lookup(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        cache: &'static ResponseCache,
    ) -> bool {
        let Some(route) = ctx.route.clone() else {
            return false;
        };
        let Some(policy) = route.cache.clone() else {
            return false;
        };
        let req = session.req_header_mut();
        for h in UNKEYED {
            req.remove_header(h);
        }
        let req = session.req_header();
        let method = &req.method;
        // A method a plugin rewrote is not cached: the stored answer would
        // be to one method and served for another.
        let cacheable_method = ctx.upstream_method.is_none()
            && ((*method == http::Method::GET && policy.get)
                || (*method == http::Method::HEAD && policy.head));
        let shares_consumer = ctx.consumer.is_some() && !policy.key_consumer;
        // `Authorization` limits what a shared cache may keep, unless the
        // entry is the authenticated consumer's own.
        let own_entry = policy.key_consumer && ctx.consumer.is_some();
        let authorized = req.headers.contains_key(header::AUTHORIZATION) && !own_entry;
        let mut c = CacheCtx {
            policy: policy.clone(),
            result: CacheResult::Bypass,
            fill: None,
            stale: None,
            authorized,
            refresh_after: false,
        };
        // A WebSocket handshake must reach the upstream, never a stored 200.
        let upgrade = session.is_upgrade_req();
        if !cacheable_method
            || shares_consumer
            || upgrade
            || req.headers.contains_key(header::RANGE)
        {
            ctx.cache = Some(Box::new(c));
            return false;
        }
        let key = cache.key(&KeyParts {
            route: &route.id,
            policy: &policy,
            req,
            host: host_of(req),
            consumer: ctx.consumer.as_deref().map(|c| &*c.name),
        });
        // A HEAD miss goes upstream as a HEAD and fills nothing. Nor does a
        // request with `Authorization` (not the consumer's own entry): its
        // answer says nothing about everyone's, and one that may not be
        // stored must not make the key pass upstream for everyone.
        let found = if *method == http::Method::HEAD || authorized {
            match cache.peek(key) {
                Some(s) => Lookup::Fresh(s),
                None => Lookup::Upstream(None),
            }
        } else {
            cache.lookup(key, policy.lock_timeout).await
        };
        c.result = CacheResult::Miss;
        match found {
            Lookup::Fresh(s) => {
                c.result = CacheResult::Hit;
                ctx.cache = Some(Box::new(c));
                self.serve_stored(session, ctx, &s).await;
                return true;
            }
            Lookup::Stale(s) => {
                c.result = CacheResult::Stale;
                ctx.cache = Some(Box::new(c));
                self.serve_stored(session, ctx, &s).await;
                return true;
            }
            Lookup::Fill(fill) => {
                c.stale = fill.stale().cloned();
                c.fill = Some(fill);
                let req = session.req_header_mut();
                for h in &CONDITIONAL {
                    req.remove_header(h);
                }
                let revalidating = (c.stale.as_ref())
                    .filter(|s| Instant::now() < s.stale_while_revalidate_until)
                    .cloned();
                if let Some(stale) = revalidating.filter(|_| self.background_refresh) {
                    // Answered stale now; the engine refreshes it after.
                    c.result = CacheResult::Stale;
                    c.refresh_after = true;
                    ctx.cache = Some(Box::new(c));
                    self.serve_stored(session, ctx, &stale).await;
                    return true;
                }
            }
            Lookup::Upstream(stale) => c.stale = stale,
        }
        ctx.cache = Some(Box::new(c));
        false
    }

    /// Answers from a stored entry (`X-Cache` from the context).
    async fn serve_stored(&self, session: &mut ServerSession, ctx: &mut RequestCtx, s: &Stored) {
        let mut header = s.header.clone();
        let _ = header.insert_header(header::CONTENT_LENGTH, s.body.len());
        let _ = header.insert_header(header::AGE, s.age(Instant::now()));
        self.edit_response(session.req_header(), &mut header, ctx, false);
        if self.draining() {
            client_h1::set_keepalive(session, None);
        }
        let head = session.req_header().method == http::Method::HEAD;
        let written = async {
            client_h1::write_response_header(session, Box::new(header)).await?;
            if !head && !s.body.is_empty() {
                client_h1::write_response_body(session, s.body.clone(), true).await?;
            }
            client_h1::finish_body(session).await
        };
        if let Err(e) = written.await {
            tracing::debug!(error = %e, "client went away while served from the cache");
            client_h1::set_keepalive(session, None);
        }
    }

    /// `X-Cache` on an answer to a cached route, and the count.
    pub(super) fn mark_cache(&self, ctx: &RequestCtx, resp: &mut ResponseHeader) {
        if let Some(c) = &ctx.cache {
            let _ =
                resp.insert_header(X_CACHE.clone(), HeaderValue::from_static(c.result.as_str()));
            c.result.counter().inc();
        }
    }

    /// The upstream's answer header: whether its fill goes on.
    pub fn cache_response_header(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) {
        let (Some(route), Some(c)) = (ctx.route.as_ref(), ctx.cache.as_mut()) else {
            return;
        };
        let Some(fill) = c.fill.as_mut() else { return };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if fill
            .header(&c.policy, c.authorized, resp, &route.id, target)
            .is_err()
        {
            c.fill = None;
        }
    }

    /// A piece of the upstream's answer body (`end`: the last).
    pub fn cache_response_body(&self, ctx: &mut RequestCtx, data: &Bytes, end: bool) {
        let Some(c) = ctx.cache.as_mut() else { return };
        let Some(fill) = c.fill.as_mut() else { return };
        if !fill.body(data, &c.policy) {
            c.fill = None;
            return;
        }
        if end {
            if let Some(fill) = c.fill.take() {
                fill.finish();
            }
        }
    }

    /// The refresh to run once the client has its stale answer, if any.
    pub fn take_refresh(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Option<Refresh> {
        let route = ctx.route.as_ref()?.id.clone();
        let c = ctx.cache.as_mut().filter(|c| c.refresh_after)?;
        c.refresh_after = false;
        Some(Refresh {
            fill: c.fill.take()?,
            policy: c.policy.clone(),
            authorized: c.authorized,
            route,
            target: req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        })
    }

    /// Whether an upstream answer of `status` is replaced by the stale
    /// entry (`stale_if_error`): a 5xx while one is in its window.
    pub fn stale_for_status(&self, ctx: &RequestCtx, status: u16) -> bool {
        status >= 500 && self.usable_stale(ctx).is_some()
    }

    fn usable_stale(&self, ctx: &RequestCtx) -> Option<Arc<Stored>> {
        let s = ctx.cache.as_ref()?.stale.as_ref()?;
        (Instant::now() < s.stale_if_error_until).then(|| s.clone())
    }

    /// Answers a failed request from the stale entry, if there is one in
    /// its `stale_if_error` window and nothing was sent yet.
    pub(super) async fn answer_stale(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> bool {
        if super::error_response::final_response(session).is_some() {
            return false;
        }
        let Some(stale) = self.usable_stale(ctx) else {
            return false;
        };
        if let Some(c) = ctx.cache.as_mut() {
            c.result = CacheResult::Stale;
            c.fill = None;
        }
        self.serve_stored(session, ctx, &stale).await;
        true
    }
}
