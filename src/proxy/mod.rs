//! The Pingora `ProxyHttp` implementation: one snapshot load per request,
//! route match, rate limit, instance pick, header rewrites, retries,
//! passive health feedback, JSON errors, metrics and access log.

pub mod access_log;
mod ctx;
mod error_response;
mod forwarding;
mod header_edit;
mod request_id;
mod retry;
mod timer_tick;

use async_trait::async_trait;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::stable_hash;
use crate::limiter::{self, Client, Decision};
use crate::metrics::{method_index, Observation, UNROUTED};
use crate::model::policy::{HashKey, RetryOn};
use crate::snapshot::{RouteEntry, SnapshotCell};
use access_log::AccessLog;
use ctx::Attempt;
pub use ctx::{InFlight, RequestCtx};
use forwarding::{client_ip, cookie, forwarded_for, has_dot_segment, host_of};
pub use request_id::RequestIds;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// The gateway's proxy logic.
pub struct Gateway {
    cell: Arc<SnapshotCell>,
    ids: RequestIds,
    in_flight: Arc<InFlight>,
    trusted_proxies: Vec<IpNet>,
    access_log: Option<AccessLog>,
    /// Test-only: a request carrying this header panics in the request
    /// filter (from `TOLLGATE_TEST_PANIC_HEADER`; unset in production).
    panic_header: Option<http::HeaderName>,
    request_metrics: bool,
}

struct RateLimited {
    limit: u32,
    retry_after_secs: u64,
}

impl Gateway {
    pub fn new(
        cell: Arc<SnapshotCell>,
        in_flight: Arc<InFlight>,
        trusted_proxies: Vec<IpNet>,
        access_log: Option<AccessLog>,
        request_metrics: bool,
    ) -> Self {
        let panic_header = std::env::var("TOLLGATE_TEST_PANIC_HEADER")
            .ok()
            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
        Self {
            cell,
            ids: RequestIds::default(),
            in_flight,
            trusted_proxies,
            access_log,
            panic_header,
            request_metrics,
        }
    }

    fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let xff = session.req_header().headers.get_all(&X_FORWARDED_FOR);
        client_ip(peer, xff.iter(), &self.trusted_proxies)
    }

    /// Takes a token: `Ok` with the (limit, remaining) to advertise, if the
    /// route advertises them; `Err` when the request must be refused.
    fn rate_limit(
        &self,
        session: &Session,
        route: &RouteEntry,
    ) -> Result<Option<(u32, u32)>, RateLimited> {
        let Some(limiter) = route.limiter.as_ref() else {
            return Ok(None);
        };
        let ip = if limiter.keys_by_client_ip() {
            self.client_ip(session)
        } else {
            None
        };
        let header = limiter
            .header_name()
            .and_then(|h| session.req_header().headers.get(h))
            .map(|v| v.as_bytes());
        let verdict = limiter.check(&Client { ip, header }, limiter::now_ns());
        match verdict.decision {
            Decision::Allow { remaining } => {
                Ok(verdict.headers.then_some((verdict.limit, remaining)))
            }
            Decision::Deny { retry_after_ns } => Err(RateLimited {
                limit: verdict.limit,
                retry_after_secs: retry_after_ns.div_ceil(1_000_000_000).max(1),
            }),
        }
    }

    /// The consistent-hash key's hash, when the upstream hashes.
    fn hash_of(&self, session: &Session, key: &HashKey) -> Option<u64> {
        let req = session.req_header();
        match key {
            HashKey::Header(h) => req
                .headers
                .get(h.as_str())
                .map(|v| stable_hash(v.as_bytes())),
            HashKey::Cookie(c) => cookie(req, c).map(stable_hash),
            HashKey::ClientIp => self.client_ip(session).map(|ip| match ip {
                IpAddr::V4(v4) => stable_hash(&v4.octets()),
                IpAddr::V6(v6) => stable_hash(&v6.octets()),
            }),
            HashKey::Path => Some(stable_hash(req.uri.path().as_bytes())),
        }
    }

    /// Routes the request: `Ok(true)` when a response was already sent.
    async fn route_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let mut sent = req.headers.get_all(&X_REQUEST_ID).iter();
        match request_id::from_client(sent.next()) {
            Some(id) => {
                ctx.request_id = id;
                ctx.id_already_sent = sent.next().is_none();
            }
            None => ctx.ensure_request_id(&self.ids),
        }
        if let Some(h) = &self.panic_header {
            if req.headers.contains_key(h) {
                panic!("test panic requested by header {h}");
            }
        }
        let path = req.uri.path();
        if has_dot_segment(path) {
            // The upstream would resolve `..` after we matched the raw path:
            // a `/public/*rest` route must never reach `/admin`.
            error_response::respond(session, 400, "path has dot segments", ctx.request_id()).await;
            return Ok(true);
        }
        let Some(route) = self.cell.route_for(host_of(req), req.method.as_str(), path) else {
            // Before the first config is applied, "no route" would be a lie.
            let (status, message) = if self.cell.status.is_ready() {
                (404, "no route")
            } else {
                (503, "gateway has no config yet")
            };
            error_response::respond(session, status, message, ctx.request_id()).await;
            return Ok(true);
        };
        // The context holds the one reference this request takes.
        let route: &RouteEntry = ctx.route.insert(route);
        match self.rate_limit(session, route) {
            Ok(advertised) => ctx.rate_limit = advertised,
            Err(limited) => {
                route.metrics.rate_limited();
                let headers = [
                    ("retry-after", limited.retry_after_secs.to_string()),
                    ("x-ratelimit-limit", limited.limit.to_string()),
                    ("x-ratelimit-remaining", "0".to_string()),
                ];
                let id = request_id::as_str(&ctx.request_id);
                error_response::respond_with(session, 429, "rate limited", id, &headers).await;
                return Ok(true);
            }
        }
        ctx.leaf = Some(route.upstream_for(&session.req_header().headers).clone());
        Ok(false)
    }

    fn choose_peer(&self, session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(leaf)) = (ctx.route.as_deref(), ctx.leaf.as_deref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let set = leaf.instances();
        if ctx.attempts == 0 {
            // Each request earns its upstream a share of a retry.
            leaf.budget.deposit(retry::budget_share(&set));
        }
        // A retry moves away from the instance that just failed.
        let avoid = ctx.attempt.as_ref().map(|a| a.node().addr);
        let key_hash = set.hash_key().and_then(|k| self.hash_of(session, k));
        let Some(picked) = leaf.pick(&set, key_hash, avoid) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {} has no live instance", leaf.name),
            ));
        };
        if picked.panic {
            tracing::debug!(upstream = %leaf.name, "too few healthy instances: failing open across all");
        }
        let t = route.timeouts(set.timeouts);
        let attempt = Attempt::new(set, picked.index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "picked instance vanished"))?;
        let mut peer = HttpPeer::new(attempt.node().addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        ctx.attempts += 1;
        ctx.attempt = Some(attempt);
        Ok(Box::new(peer))
    }

    fn log_access(&self, session: &Session, ctx: &RequestCtx, status: u16, total: Duration) {
        let Some(log) = &self.access_log else { return };
        if !log.wants() {
            return;
        }
        let req = session.req_header();
        log.send(&access_log::Line {
            time: std::time::SystemTime::now() - total,
            request_id: ctx.request_id(),
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            method: req.method.as_str(),
            host: host_of(req),
            path: req.uri.path(),
            route: ctx.route().map_or("", |r| &r.id),
            upstream: ctx.attempt.as_ref().map(|a| a.node().addr),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration: total,
            upstream_duration: ctx.upstream_took,
        });
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// Which retry condition an error while proxying is. A failure on the
/// client's side (it hung up, sent a broken body) is none: it says nothing
/// about the instance, and counted as one it ejected healthy instances.
fn retry_cause(e: &Error) -> Option<RetryOn> {
    if *e.esource() == ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::HTTPStatus(502) => Some(RetryOn::Status502),
        ErrorType::HTTPStatus(503) => Some(RetryOn::Status503),
        ErrorType::HTTPStatus(504) | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Some(RetryOn::Status504)
        }
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            Some(RetryOn::Reset)
        }
        _ => None,
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        timer_tick::ensure_started();
        RequestCtx::new(&self.in_flight)
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // None: Pingora's default is a disabled compression module that
        // still costs every request an allocation and four filter calls.
        // Tollgate passes bodies through as the upstream encoded them.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        match AssertUnwindSafe(self.route_request(session, ctx))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(p) => {
                // One bad request must not take the others down: answer it
                // 500 with its id and keep serving.
                ctx.ensure_request_id(&self.ids);
                tracing::error!(
                    request_id = ctx.request_id(),
                    panic = panic_message(&*p),
                    "panic while handling a request"
                );
                error_response::respond(session, 500, "internal error", ctx.request_id()).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.choose_peer(session, ctx))) {
            Ok(r) => r,
            Err(p) => {
                tracing::error!(
                    request_id = ctx.request_id(),
                    panic = panic_message(&*p),
                    "panic while choosing an upstream"
                );
                Err(Error::explain(
                    ErrorType::InternalError,
                    "panic while choosing an upstream",
                ))
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.upstream_sent = Some(Instant::now());
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let rewritten = match route.rewrite_path(session.req_header().uri.path()) {
            Some(path) => {
                let uri = match session.req_header().uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                Some(uri.parse::<http::Uri>().map_err(|e| {
                    Error::because(ErrorType::InvalidHTTPHeader, "rewriting path", e)
                })?)
            }
            None => None,
        };
        let xff = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|client| forwarded_for(upstream.headers.get_all(&X_FORWARDED_FOR), client.ip()));
        let host = match (route.preserve_host, &ctx.attempt) {
            (false, Some(a)) => {
                Some(HeaderValue::from_str(&a.node().authority).map_err(|e| {
                    Error::because(ErrorType::InvalidHTTPHeader, "upstream host", e)
                })?)
            }
            _ => None,
        };
        let id = (!ctx.id_already_sent).then(|| ctx.request_id.clone());
        header_edit::edit_request(upstream, 4, |req| {
            if let Some(uri) = rewritten {
                req.uri = uri;
            }
            let h = &mut req.headers;
            if let Some(xff) = xff {
                h.insert(X_FORWARDED_FOR.clone(), xff);
            }
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
            // A kept client id is already the one forwarded header; otherwise
            // (generated, or the client sent several) ours replaces them all.
            if let Some(id) = id {
                h.insert(X_REQUEST_ID.clone(), id);
            }
            if let Some(host) = host {
                h.insert(http::header::HOST, host);
            }
        });
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.observe(status < 500);
        let cause = match status {
            502 => Some(RetryOn::Status502),
            503 => Some(RetryOn::Status503),
            504 => Some(RetryOn::Status504),
            _ => None,
        };
        // Retry on the answer's status before anything reached the client.
        if let Some(cause) = cause {
            if retry::should_retry(session, ctx, cause, true) {
                ctx.retry_decided = true;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    format!("upstream answered {status}; retrying elsewhere"),
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(sent) = ctx.upstream_sent {
            ctx.upstream_took.get_or_insert_with(|| sent.elapsed());
        }
        let id = ctx.request_id.clone();
        let limits = ctx.rate_limit;
        header_edit::edit_response(upstream_response, 3, |resp| {
            let h = &mut resp.headers;
            h.insert(X_REQUEST_ID.clone(), id);
            if let Some((limit, remaining)) = limits {
                h.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
                h.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
            }
        });
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        let total = ctx.started.elapsed();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let obs = Observation {
            method: method_index(&session.req_header().method),
            status,
            total,
            upstream: ctx.upstream_took,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
        };
        if self.request_metrics {
            match ctx.route() {
                Some(r) => r.metrics.observe(&obs),
                None => UNROUTED.observe(&obs),
            }
        }
        self.log_access(session, ctx, status, total);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // fail_to_proxy logs every failure once, with its request id.
        true
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.observe(false);
        // Nothing reached the upstream: safe to retry any method elsewhere.
        if retry::should_retry(session, ctx, RetryOn::ConnectFailure, false) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.retry_decided) {
            e.set_retry(true);
            return e;
        }
        let cause = retry_cause(&e);
        if cause.is_some() {
            ctx.observe(false);
        }
        // Once the client has the response header (and maybe part of the
        // body), another attempt's response would be spliced into it.
        if session.response_written().is_some() {
            e.set_retry(false);
            return e;
        }
        let retry = match cause {
            Some(c) if retry::should_retry(session, ctx, c, true) => true,
            // A pooled connection the upstream had already closed: the
            // request never reached it, so an idempotent one is safe to resend
            // (within the route's attempts: `retries: 0` means none).
            _ => {
                let idempotent =
                    session.req_header().method.is_idempotent() && retry::attempts_left(ctx);
                let mut probe = e.retry;
                probe.decide_reuse(client_reused);
                idempotent && probe.retry() && !session.as_ref().retry_buffer_truncated()
            }
        };
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (code, message) = error_response::classify(e);
        ctx.ensure_request_id(&self.ids);
        // Once the upstream's response has started, all we can do is close.
        if code > 0 && session.response_written().is_none() {
            error_response::respond(session, code, message, ctx.request_id()).await;
        }
        tracing::warn!(
            request_id = ctx.request_id(),
            route = ctx.route().map_or("", |r| &*r.id),
            status = code,
            error = %e,
            "request failed"
        );
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
