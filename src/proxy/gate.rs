//! The gateway's per-request decisions, shared by both engines: the
//! ProxyHttp [`Gateway`](super::Gateway) calls these from its phases and
//! the core [`engine`](super::engine) from its own loop, so routing, limits,
//! balancing, header rewrites, errors, metrics and the access log cannot
//! drift apart between them. Everything here takes pingora-core's
//! [`ServerSession`] (pingora-proxy's `Session` derefs to it).

use futures_util::FutureExt;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::access_log::AccessLog;
use super::acme_challenge;
use super::client_h1;
use super::ctx::{InFlight, RequestCtx};
use super::error_response::{self, Body};
use super::forwarding::{client_ip, host_of};
use super::framing;
use super::header_names::{X_FORWARDED_FOR, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING};
use super::hop_by_hop;
use super::path_norm;
use super::request_id::{self, RequestIds};
use super::request_scan::RequestScan;
use crate::limiter::{self, Client, Decision};
use crate::log_gate::{FailureLog, LogGate};
use crate::model::header_policy::UnderscoreHeaders;
use crate::model::path_policy::PathPolicy;

/// Failure lines of requests no route took (an engine-level failure).
static UNROUTED_FAILURES: FailureLog = FailureLog::new();
use super::protocol::Protocol;
use crate::plugins::consumer::{Consumer, ConsumerTable, X_CONSUMER_NAME};
use crate::plugins::https_redirect;
use crate::plugins::PluginRequest;
use crate::snapshot::{RouteEntry, SnapshotCell};

/// The state every request reads: the snapshot, id generator, in-flight
/// counter, trusted proxies, access log and metric switches.
pub struct Gate {
    cell: Arc<SnapshotCell>,
    pub(super) ids: RequestIds,
    in_flight: Arc<InFlight>,
    trusted_proxies: Vec<IpNet>,
    pub(super) access_log: Option<AccessLog>,
    /// Test-only: a request carrying this header panics while it is routed
    /// (from `TOLLGATE_TEST_PANIC_HEADER`, read only by builds with the
    /// `test-hooks` feature; never in a release build).
    panic_header: Option<HeaderName>,
    pub(super) request_metrics: bool,
    /// Set when a shutdown or upgrade signal arrives.
    draining: Arc<AtomicBool>,
    client: ClientLimits,
    /// The engine refreshes stale cache entries off the request (the core
    /// engine); otherwise the request that finds one stale refreshes it.
    pub(super) background_refresh: bool,
}

/// How long the gateway waits for a client (`proxy.client_*`), and how
/// much body it takes from one.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Idle between requests, in seconds (`proxy.client_keepalive_secs`).
    pub keepalive_secs: u64,
    /// A body read or a response write (`proxy.client_timeout_secs`).
    pub io: Duration,
    /// A request body's largest size unless its route sets one
    /// (`proxy.max_body_bytes`).
    pub max_body_bytes: u64,
    /// How a request's path is normalized before routing (`proxy.path`).
    pub path: PathPolicy,
    /// A header named with an underscore (`proxy.underscore_headers`).
    pub underscore_headers: UnderscoreHeaders,
    /// The first TLS listener's port: where `https_only` routes redirect.
    pub https_port: Option<u16>,
}

struct RateLimited {
    limit: u32,
    retry_after_secs: u64,
}

impl Gate {
    pub fn new(
        cell: Arc<SnapshotCell>,
        in_flight: Arc<InFlight>,
        trusted_proxies: Vec<IpNet>,
        access_log: Option<AccessLog>,
        request_metrics: bool,
        draining: Arc<AtomicBool>,
        client: ClientLimits,
    ) -> Self {
        // Only in builds with the `test-hooks` feature (scripts/test.sh).
        #[cfg(feature = "test-hooks")]
        let panic_header = std::env::var("TOLLGATE_TEST_PANIC_HEADER")
            .ok()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        #[cfg(not(feature = "test-hooks"))]
        let panic_header = None;
        Self {
            cell,
            ids: RequestIds,
            in_flight,
            trusted_proxies,
            access_log,
            panic_header,
            request_metrics,
            draining,
            client,
            background_refresh: false,
        }
    }

    /// Whether the process is going away (shutdown or upgrade): responses
    /// then say `Connection: close`, so clients move to new connections
    /// (during an upgrade, ones the new process accepts) before the idle
    /// ones are closed under them.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether a request's times are read (request metrics, the access
    /// log): else its clock reads are skipped.
    fn timed(&self) -> bool {
        self.request_metrics || self.access_log.is_some()
    }

    /// A fresh context; counts the request as in flight until it is dropped.
    pub fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.in_flight, self.timed())
    }

    pub(super) fn client_ip(&self, session: &ServerSession) -> Option<IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let xff = session.req_header().headers.get_all(&X_FORWARDED_FOR);
        client_ip(peer, xff.iter(), &self.trusted_proxies)
    }

    /// Takes a token from the route's limiter, then from the consumer's
    /// own: `Ok` with the (limit, remaining) to advertise, if the limiter
    /// advertises them; `Err` when the request must be refused.
    fn rate_limit(
        &self,
        session: &ServerSession,
        route: &RouteEntry,
        consumer: Option<&Consumer>,
    ) -> Result<Option<(u32, u32)>, RateLimited> {
        // Read only when a limit applies: a clock read is not free.
        let now = std::cell::OnceCell::new();
        let now = || *now.get_or_init(limiter::now_ns);
        let mut advertised = None;
        if let Some(limiter) = route.limiter.as_ref() {
            let by_ip =
                limiter.keys_by_client_ip() || (limiter.keys_by_consumer() && consumer.is_none());
            let client = Client {
                ip: if by_ip { self.client_ip(session) } else { None },
                header: limiter
                    .header_name()
                    .and_then(|h| session.req_header().headers.get(h))
                    .map(|v| v.as_bytes()),
                consumer: consumer.map(|c| &*c.name),
            };
            advertised = taken(limiter.check(&client, now()))?;
        }
        if let Some(c) = consumer.filter(|c| c.rate_limited) {
            if let Some(limiter) = self.cell.consumer_limits.load().get(&c.name) {
                let client = Client {
                    ip: None,
                    header: None,
                    consumer: None,
                };
                let own = taken(limiter.check(&client, now()))?;
                advertised = advertised.or(own);
            }
        }
        Ok(advertised)
    }

    /// Routes the request: `true` when a response was already sent (400 dot
    /// segments, 404/503 no route, 429). On `false` the context holds the
    /// route and upstream, and a client that asked for `100 Continue` has
    /// been told to send its body, as nginx does once it reads a body.
    pub async fn route_request(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> bool {
        if client_h1::keepalive(session) == Some(0) {
            // Pingora reads an HTTP/1.1 request as "keep alive forever".
            client_h1::set_keepalive(session, Some(self.client.keepalive_secs));
        }
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): bytes of the next request
        // that arrive with or after this one are kept for it, and requests
        // are answered in order, one at a time upstream. Without it Pingora
        // closed the connection after the first of two pipelined requests,
        // and answered 400 to a request whose upstream had already run it
        // when the next request arrived before its response.
        session.set_pipelining_enabled(true);
        // Pingora waits 60 s for a body read and forever for a write.
        session.set_read_timeout(Some(self.client.io));
        session.set_write_timeout(Some(self.client.io));
        ctx.protocol = Protocol::of(session);
        ctx.protocol.count();
        let req = session.req_header();
        let codec_found = client_h1::underscores(session);
        let scan = RequestScan::of(&req.headers, codec_found.is_none());
        match request_id::from_client(scan.request_id.as_ref()) {
            Some(id) => {
                ctx.request_id = id;
                ctx.id_already_sent = scan.request_ids == 1;
            }
            None => ctx.ensure_request_id(&self.ids),
        }
        if let Some(h) = &self.panic_header {
            if req.headers.contains_key(h) {
                panic!("test panic requested by header {h}");
            }
        }
        if codec_found.unwrap_or(scan.underscores)
            && !self.underscore_headers_handled(session, ctx).await
        {
            return true;
        }
        // The route matched must be the route the upstream sees: a
        // `/public/*rest` route must never reach `/admin` through `..`,
        // escapes or backslashes the upstream would resolve after routing.
        if let Err(why) = self.normalize_path(session) {
            error_response::respond(session, 400, why, ctx.request_id()).await;
            return true;
        }
        let req = session.req_header();
        let path = req.uri.path();
        if let Err((status, message)) = framing::check(req.version, &scan) {
            error_response::respond(session, status, message, ctx.request_id()).await;
            return true;
        }
        if scan.connection && hop_by_hop::check(&req.headers).is_err() {
            // Refused before an upstream is chosen: a bad request must not
            // cost an upstream connection (pingora-proxy refused it only
            // once connected).
            let message = "invalid Connection header";
            error_response::respond(session, 400, message, ctx.request_id()).await;
            return true;
        }
        if path.starts_with(acme_challenge::PREFIX)
            && acme_challenge::respond(&self.cell, session, ctx.request_id())
                .boxed()
                .await
        {
            return true;
        }
        let req = session.req_header();
        let path = req.uri.path();
        let Some(route) = self.cell.route_for(host_of(req), req.method.as_str(), path) else {
            // Before the first config is applied, "no route" would be a lie.
            let (status, message) = if self.cell.status.is_ready() {
                (404, "no route")
            } else {
                (503, "gateway has no config yet")
            };
            error_response::respond(session, status, message, ctx.request_id()).await;
            return true;
        };
        ctx.max_body = route.max_body_bytes.unwrap_or(self.client.max_body_bytes);
        // The context holds the one reference this request takes.
        let route: &RouteEntry = ctx.route.insert(route);
        if route.https_only && !ctx.protocol.is_tls() {
            // Boxed (`dyn`), as the gateway's other answers (`error_response`).
            self.to_https(session, ctx).boxed().await;
            return true;
        }
        if let Some(chain) = route.plugins.as_deref() {
            // The onion's way in: each plugin in order, any may answer.
            let client_ip = if chain.needs_client_ip() {
                self.client_ip(session)
            } else {
                None
            };
            // A chain that waits (an auth service, a password check)
            // holds its own reference rather than a short-lived guard.
            let (guard, full);
            let consumers: &ConsumerTable = if chain.waits() {
                full = self.cell.consumers.load_full();
                &full
            } else {
                guard = self.cell.consumers.load();
                &guard
            };
            let method = session.req_header().method.clone();
            let mut req = PluginRequest {
                header: session.req_header_mut(),
                client_ip,
                host_of,
                tls: ctx.protocol.is_tls(),
                https_port: self.client.https_port,
                max_body: &mut ctx.max_body,
                consumers,
                consumer: &mut ctx.consumer,
            };
            let outcome = chain.request(&mut req).await;
            if session.req_header().method != method {
                // A rewritten method is the upstream's; the client's frames
                // its response (see `RequestCtx::upstream_method`).
                let req = session.req_header_mut();
                ctx.upstream_method = Some(req.method.clone());
                req.set_method(method);
            }
            match outcome {
                Ok(passed) => ctx.plugins_entered = passed,
                Err((outside, reply)) => {
                    ctx.plugins_entered = outside;
                    if reply.status >= 400 {
                        // The client may not have sent all of its body.
                        client_h1::set_keepalive(session, None);
                    }
                    let body = match (reply.body, reply.message) {
                        (Some(raw), _) => Body::Raw(raw),
                        (None, Some(m)) => Body::Error(m),
                        (None, None) => Body::Empty,
                    };
                    self.answer(session, ctx, reply.status, body, &reply.headers)
                        .boxed()
                        .await;
                    return true;
                }
            }
        }
        // What the scan found holds unless a plugin could have changed
        // the header since.
        let scanned = route.plugins.is_none().then_some(&scan);
        // Who the caller is, for the upstream: only ever what an auth
        // plugin found, never what the client claims.
        let claimed = scanned.map_or_else(
            || session.req_header().headers.contains_key(&X_CONSUMER_NAME),
            |s| s.consumer_claimed,
        );
        if claimed || ctx.consumer.is_some() {
            let req = session.req_header_mut();
            req.remove_header(&X_CONSUMER_NAME);
            if let Some(c) = &ctx.consumer {
                let _ = req.insert_header(X_CONSUMER_NAME.clone(), c.header.clone());
            }
        }
        let declared = scanned.map_or_else(
            || framing::declared_length(session.req_header()),
            |s| s.length,
        );
        if declared.is_some_and(|n| n > ctx.max_body) {
            // Refused before an upstream is chosen, and before a client
            // that waits for `100 Continue` sends any of it.
            client_h1::set_keepalive(session, None);
            self.answer(
                session,
                ctx,
                413,
                Body::Error("request body too large"),
                &[],
            )
            .await;
            return true;
        }
        match self.rate_limit(session, route, ctx.consumer.as_deref()) {
            Ok(advertised) => ctx.rate_limit = advertised,
            Err(limited) => {
                route.metrics.rate_limited();
                let headers = [
                    (
                        http::header::RETRY_AFTER,
                        HeaderValue::from(limited.retry_after_secs),
                    ),
                    (X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limited.limit)),
                    (X_RATELIMIT_REMAINING.clone(), HeaderValue::from_static("0")),
                ];
                self.answer(session, ctx, 429, Body::Error("rate limited"), &headers)
                    .await;
                return true;
            }
        }
        ctx.leaf = Some(route.upstream_for(&session.req_header().headers).clone());
        if route.cache.is_some() && self.cache_lookup(session, ctx, self.cell.cache()).await {
            return true;
        }
        let expects = match scanned {
            Some(s) => {
                error_response::continue_owed(session.req_header().version, s.expects_continue)
            }
            None => error_response::expects_continue(session.req_header()),
        };
        if expects {
            error_response::send_100_continue(session).await;
        }
        false
    }

    /// The gateway's own answer to a routed request (a plugin's, 413, 429,
    /// a failure), seen on its way out by the plugins the request passed.
    async fn answer(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        status: u16,
        body: Body<'_>,
        extra: &[(HeaderName, HeaderValue)],
    ) {
        let id = ctx.request_id();
        error_response::respond_edited(session, status, body, id, |req, resp| {
            // A plugin's header replaces the gateway's of that name
            // (an auth service's Cache-Control); repeats are kept.
            let mut replaced: Vec<&HeaderName> = Vec::new();
            for (name, value) in extra {
                if !replaced.contains(&name) {
                    resp.remove_header(name);
                    replaced.push(name);
                }
                let _ = resp.append_header(name.clone(), value.clone());
            }
            ctx.plugin_responses(req, resp);
        })
        .await;
    }

    /// A plaintext request to an `https_only` route: a redirect to the TLS
    /// listener, or 403 when this node has none.
    async fn to_https(&self, session: &mut ServerSession, ctx: &RequestCtx) {
        let id = ctx.request_id();
        // The client may not have sent all of its body; do not read it.
        client_h1::set_keepalive(session, None);
        let Some(port) = self.client.https_port else {
            let message = "this route is served over https only";
            error_response::respond(session, 403, message, id).await;
            return;
        };
        let req = session.req_header();
        match https_redirect::redirect(req, host_of(req), port) {
            Ok((status, location)) => {
                let headers = [("location", location)];
                error_response::respond_with(session, status, "use https", id, &headers).await;
            }
            Err(why) => error_response::respond(session, 400, why, id).await,
        }
    }

    /// Normalizes the request's path in place (see `path_norm`); the
    /// target is rewritten only when the path changes.
    fn normalize_path(&self, session: &mut ServerSession) -> std::result::Result<(), &'static str> {
        let target = session.req_header().raw_path();
        let (start, end) = path_norm::path_span(target);
        let normalized = match path_norm::normalize(&target[start..end], &self.client.path)? {
            std::borrow::Cow::Borrowed(_) => return Ok(()),
            std::borrow::Cow::Owned(p) => p,
        };
        let mut rewritten = Vec::with_capacity(target.len() + normalized.len());
        rewritten.extend_from_slice(&target[..start]);
        rewritten.extend_from_slice(&normalized);
        rewritten.extend_from_slice(&target[end..]);
        session
            .req_header_mut()
            .set_raw_path(&rewritten)
            .map_err(|_| "invalid request target")
    }

    /// A body read so far, checked against the request's limit: past it the
    /// request ends in 413 (a chunked body has no length to refuse it by
    /// up front). A client-side error: no retry, no instance blamed.
    pub fn check_body_size(&self, ctx: &RequestCtx, read: usize) -> Result<()> {
        if read as u64 > ctx.max_body {
            let mut e = Error::explain(ErrorType::HTTPStatus(413), "request body too large");
            e.as_down();
            return Err(e);
        }
        Ok(())
    }

    /// A request with a header named with an underscore, as
    /// `proxy.underscore_headers` says: `false` when it was answered (400).
    async fn underscore_headers_handled(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
    ) -> bool {
        match self.client.underscore_headers {
            UnderscoreHeaders::Allow => true,
            UnderscoreHeaders::Reject => {
                let message = "header name with an underscore";
                error_response::respond(session, 400, message, ctx.request_id()).await;
                false
            }
            UnderscoreHeaders::Drop => {
                let req = session.req_header_mut();
                let named: Vec<HeaderName> = req
                    .headers
                    .keys()
                    .filter(|n| n.as_str().contains('_'))
                    .cloned()
                    .collect();
                for name in &named {
                    req.remove_header(name);
                }
                // Said at most once a second: a plugin reading such a
                // header (`key-auth` on `api_key`) then fails every request.
                static DROPS: LogGate = LogGate::new();
                if let Some(held) = DROPS.admit(crate::limiter::now_ns()) {
                    tracing::info!(
                        request_id = ctx.request_id(),
                        headers = ?named,
                        held_back = held,
                        "request headers named with an underscore dropped (proxy.underscore_headers: allow passes them)"
                    );
                }
                true
            }
        }
    }

    /// Answers a request that could not be proxied: the JSON error, unless
    /// the client already has a response header (then all that is left is
    /// to close), and one warning with the request id. Returns the status
    /// (0: the client went away).
    pub async fn answer_failure(
        &self,
        session: &mut ServerSession,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> u16 {
        let (code, message) = error_response::classify(e);
        ctx.ensure_request_id(&self.ids);
        // Neither engine reuses a connection after a failure: say so.
        client_h1::set_keepalive(session, None);
        if self.answer_stale(session, ctx).await {
            tracing::debug!(request_id = ctx.request_id(), error = %e, "upstream failed; answered from the stale cache entry");
            return error_response::final_response(session).map_or(0, |r| r.status.as_u16());
        }
        if code > 0 && error_response::final_response(session).is_none() {
            self.answer(session, ctx, code, Body::Error(message), &[])
                .await;
        }
        let log = ctx.route().map_or(&UNROUTED_FAILURES, |r| &r.failure_log);
        if let Some(held) = log.gate(code).admit(crate::limiter::now_ns()) {
            tracing::warn!(
                request_id = ctx.request_id(),
                route = ctx.route().map_or("", |r| &*r.id),
                status = code,
                error = %e,
                similar_held_back = held,
                "request failed"
            );
        }
        code
    }

    /// A panic while handling one request: one bad request must not take
    /// the others down. Logged with the request id and answered 500 (if
    /// nothing was sent yet).
    pub async fn answer_panic(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        panic: &str,
    ) {
        ctx.ensure_request_id(&self.ids);
        tracing::error!(
            request_id = ctx.request_id(),
            panic,
            "panic while handling a request"
        );
        if error_response::final_response(session).is_none() {
            error_response::respond(session, 500, "internal error", ctx.request_id()).await;
        }
    }
}

/// A panic payload's message, for the log.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// A limiter's verdict as the gate acts on it.
fn taken(verdict: limiter::Verdict) -> Result<Option<(u32, u32)>, RateLimited> {
    match verdict.decision {
        Decision::Allow { remaining } => Ok(verdict.headers.then_some((verdict.limit, remaining))),
        Decision::Deny { retry_after_ns } => Err(RateLimited {
            limit: verdict.limit,
            retry_after_secs: retry_after_ns.div_ceil(1_000_000_000).max(1),
        }),
    }
}
