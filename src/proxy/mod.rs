//! The Pingora `ProxyHttp` implementation: one snapshot load per request,
//! route match, instance pick, header rewrites, JSON errors.

pub mod access_log;
mod error_response;
mod request_id;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::limiter::{self, Client, Decision};
use crate::metrics::{method_label, Observation, UNROUTED};
use crate::router::request_host;
use crate::snapshot::{InstanceSet, RouteEntry, SnapshotCell, UpstreamLeaf};
use access_log::AccessLog;
pub use request_id::RequestIds;
use std::time::{Duration, Instant};

/// Counts requests in flight, so a graceful shutdown knows when it drained.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
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

/// Per-request state shared across Pingora's phases.
pub struct RequestCtx {
    _in_flight: InFlightGuard,
    request_id: String,
    route: Option<Arc<RouteEntry>>,
    /// The instance set and node picked for the current attempt.
    picked: Option<(Arc<InstanceSet>, usize)>,
    attempts: u32,
    /// (limit, remaining) for `X-RateLimit-*` on the response.
    rate_limit: Option<(u32, u32)>,
    started: Instant,
    /// When the request went upstream, and how long the response header took.
    upstream_sent: Option<Instant>,
    upstream_took: Option<Duration>,
}

impl RequestCtx {
    fn route(&self) -> Option<&RouteEntry> {
        self.route.as_deref()
    }
}

/// The gateway's proxy logic.
pub struct Gateway {
    cell: Arc<SnapshotCell>,
    ids: RequestIds,
    in_flight: Arc<InFlight>,
    trusted_proxies: Vec<IpNet>,
    access_log: Option<AccessLog>,
}

impl Gateway {
    pub fn new(
        cell: Arc<SnapshotCell>,
        in_flight: Arc<InFlight>,
        trusted_proxies: Vec<IpNet>,
        access_log: Option<AccessLog>,
    ) -> Self {
        Self {
            cell,
            ids: RequestIds::default(),
            in_flight,
            trusted_proxies,
            access_log,
        }
    }

    fn log_access(&self, session: &Session, ctx: &RequestCtx, status: u16, total: Duration) {
        let Some(log) = &self.access_log else { return };
        if !log.wants() {
            return;
        }
        let req = session.req_header();
        let upstream = ctx
            .picked
            .as_ref()
            .and_then(|(set, i)| set.nodes.get(*i))
            .map_or_else(String::new, |n| n.addr.to_string());
        log.send(access_log::Record {
            time: access_log::rfc3339(std::time::SystemTime::now() - total),
            request_id: ctx.request_id.clone(),
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map_or_else(String::new, |a| a.ip().to_string()),
            method: req.method.to_string(),
            host: host_of(req).to_string(),
            path: req.uri.path().to_string(),
            route: ctx.route().map_or_else(String::new, |r| r.id.to_string()),
            upstream,
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration_ms: total.as_secs_f64() * 1000.0,
            upstream_ms: ctx.upstream_took.map(|d| d.as_secs_f64() * 1000.0),
        });
    }

    /// The client's address: the peer, or, when the peer is a trusted
    /// proxy, the rightmost untrusted hop of `X-Forwarded-For`.
    fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        client_ip(
            peer,
            session
                .req_header()
                .headers
                .get_all("x-forwarded-for")
                .iter(),
            &self.trusted_proxies,
        )
    }

    /// Takes a token; `Some(response)` when the request must be refused.
    fn rate_limit(
        &self,
        session: &Session,
        route: &RouteEntry,
        ctx: &mut RequestCtx,
    ) -> Option<RateLimited> {
        let limiter = route.limiter.as_ref()?;
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
                if verdict.headers {
                    ctx.rate_limit = Some((verdict.limit, remaining));
                }
                None
            }
            Decision::Deny { retry_after_ns } => Some(RateLimited {
                limit: verdict.limit,
                retry_after_secs: retry_after_ns.div_ceil(1_000_000_000).max(1),
            }),
        }
    }
}

struct RateLimited {
    limit: u32,
    retry_after_secs: u64,
}

/// See [`Gateway::client_ip`].
fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a http::HeaderValue>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    for line in forwarded.rev() {
        let Ok(line) = line.to_str() else { break };
        for hop in line.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(&ip) {
                        return Some(client);
                    }
                }
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}

fn host_of(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())
        .map_or("", request_host)
}

/// Whether any segment of `path` is `.` or `..`, literally or
/// percent-encoded (`%2e`), which an upstream would resolve after routing.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let s = seg.as_bytes();
        if s.is_empty() || s.len() > 6 {
            return false;
        }
        let mut dots = 0;
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'.' {
                i += 1;
            } else if s.len() >= i + 3
                && s[i] == b'%'
                && s[i + 1] == b'2'
                && (s[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots <= 2
    })
}

/// Appends the client to `X-Forwarded-For`, keeping what proxies before us
/// recorded, across every `X-Forwarded-For` line the client sent.
fn forwarded_for<'a>(
    existing: impl IntoIterator<Item = &'a http::HeaderValue>,
    client: &str,
) -> String {
    let mut chain: Vec<&str> = existing
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    chain.push(client);
    chain.join(", ")
}

/// The node for this attempt: the balancer's pick, except that a retry
/// goes to a serving node other than the one that just `failed` whenever
/// there is one (a heavier failed node may come up several picks in a row).
fn pick_node(leaf: &UpstreamLeaf, set: &InstanceSet, failed: Option<SocketAddr>) -> Option<usize> {
    let pick = leaf.pick(set)?;
    let Some(bad) = failed else {
        return Some(pick);
    };
    if set.nodes[pick].addr != bad {
        return Some(pick);
    }
    let n = set.nodes.len();
    (1..n)
        .map(|k| (pick + k) % n)
        .find(|&i| !set.nodes[i].draining && set.nodes[i].addr != bad)
        .or(Some(pick))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        self.in_flight.0.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            _in_flight: InFlightGuard(self.in_flight.clone()),
            request_id: String::new(),
            route: None,
            picked: None,
            attempts: 0,
            rate_limit: None,
            started: Instant::now(),
            upstream_sent: None,
            upstream_took: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id =
            request_id::from_client(req.headers.get("x-request-id").map(|v| v.as_bytes()))
                .unwrap_or_else(|| self.ids.next());
        let path = req.uri.path();
        if has_dot_segment(path) {
            // The upstream would resolve `..` after we matched the raw path:
            // a `/public/*rest` route must never reach `/admin`.
            error_response::respond(session, 400, "path has dot segments", &ctx.request_id).await;
            return Ok(true);
        }
        match self.cell.route_for(host_of(req), req.method.as_str(), path) {
            Some(route) => {
                ctx.route = Some(route.clone());
                if let Some(limited) = self.rate_limit(session, &route, ctx) {
                    route.metrics.rate_limited.inc();
                    let headers = [
                        ("retry-after", limited.retry_after_secs.to_string()),
                        ("x-ratelimit-limit", limited.limit.to_string()),
                        ("x-ratelimit-remaining", "0".to_string()),
                    ];
                    error_response::respond_with(
                        session,
                        429,
                        "rate limited",
                        &ctx.request_id,
                        &headers,
                    )
                    .await;
                    return Ok(true);
                }
                Ok(false)
            }
            None => {
                // Before the first config is applied, "no route" would be a lie.
                let (status, message) = if self.cell.status.is_ready() {
                    (404, "no route")
                } else {
                    (503, "gateway has no config yet")
                };
                error_response::respond(session, status, message, &ctx.request_id).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        let set = route.upstream.instances();
        // The node that just failed, looked up in the set it was picked
        // from: the set may have changed since.
        let failed = ctx
            .picked
            .as_ref()
            .and_then(|(prev, i)| prev.nodes.get(*i).map(|n| n.addr));
        let Some(i) = pick_node(&route.upstream, &set, failed) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {} has no live instance", route.upstream.name),
            ));
        };
        let node = &set.nodes[i];
        let t = route.timeouts(set.timeouts);
        let mut peer = HttpPeer::new(node.addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        ctx.attempts += 1;
        ctx.picked = Some((set, i));
        Ok(Box::new(peer))
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
        if let Some(path) = route.rewrite_path(session.req_header().uri.path()) {
            let uri = match session.req_header().uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            let uri = uri
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewriting path", e))?;
            upstream.set_uri(uri);
        }
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let xff = forwarded_for(
                upstream.headers.get_all("x-forwarded-for"),
                &client.ip().to_string(),
            );
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if !route.preserve_host {
            if let Some((set, i)) = &ctx.picked {
                if let Some(node) = set.nodes.get(*i) {
                    upstream.insert_header("host", node.authority.as_str())?;
                }
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
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some((limit, remaining)) = ctx.rate_limit {
            upstream_response.insert_header("x-ratelimit-limit", limit.to_string())?;
            upstream_response.insert_header("x-ratelimit-remaining", remaining.to_string())?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        let total = ctx.started.elapsed();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let obs = Observation {
            method: method_label(session.req_header().method.as_str()),
            status,
            total,
            upstream: ctx.upstream_took,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
        };
        match ctx.route() {
            Some(r) => r.metrics.observe(&obs),
            None => UNROUTED.observe(&obs),
        }
        self.log_access(session, ctx, status, total);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        // fail_to_proxy logs every failure once, with its request id.
        true
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream: safe to retry any method elsewhere.
        if let Some(route) = ctx.route() {
            if ctx.attempts <= route.retries {
                route.metrics.retries.inc();
                e.set_retry(true);
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (code, message) = error_response::classify(e);
        if ctx.request_id.is_empty() {
            ctx.request_id = self.ids.next();
        }
        // Once the upstream's response has started, all we can do is close.
        if code > 0 && session.response_written().is_none() {
            error_response::respond(session, code, message, &ctx.request_id).await;
        }
        tracing::warn!(
            request_id = %ctx.request_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends() {
        let v = http::HeaderValue::from_static("1.2.3.4");
        assert_eq!(forwarded_for(Some(&v), "5.6.7.8"), "1.2.3.4, 5.6.7.8");
        assert_eq!(forwarded_for(None, "5.6.7.8"), "5.6.7.8");
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &str| vec![http::HeaderValue::from_str(v).unwrap()];
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // An untrusted peer's claim is ignored.
        assert_eq!(
            client_ip(stranger, xff("1.1.1.1").iter(), &trusted),
            Some(stranger)
        );
        // Through a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            client_ip(peer, xff("6.6.6.6, 1.1.1.1, 10.0.0.7").iter(), &trusted),
            Some("1.1.1.1".parse().unwrap())
        );
        // Garbage stops the walk at the last address we could trust.
        assert_eq!(
            client_ip(peer, xff("nonsense").iter(), &trusted),
            Some(peer)
        );
        assert_eq!(client_ip(peer, Vec::new().iter(), &trusted), Some(peer));
    }

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for bad in ["/a/../b", "/..", "/a/.", "/%2e%2e/x", "/a/.%2E/b", "/%2E/"] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in ["/", "/a/b", "/a/...", "/a/.hidden", "/v1.2/x", "/a%2eb"] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    #[test]
    fn forwarded_for_keeps_every_line_the_client_sent() {
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", " ".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        assert_eq!(
            forwarded_for(h.get_all("x-forwarded-for"), "5.6.7.8"),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 5.6.7.8"
        );
    }

    fn node(port: u16, weight: u32) -> crate::model::Node {
        crate::model::Node {
            id: format!("n{port}"),
            addr: ([127, 0, 0, 1], port).into(),
            authority: format!("127.0.0.1:{port}"),
            weight,
            draining: false,
        }
    }

    #[test]
    fn a_retry_never_goes_back_to_the_failed_node_while_another_serves() {
        let mut table = crate::snapshot::UpstreamTable::new(crate::model::Timeouts::default());
        let nodes = vec![node(1, 5), node(2, 1)];
        table.set_policy("u", Some((Default::default(), nodes)));
        let leaf = table.leaf("u");
        let set = leaf.instances();
        let bad = set.nodes[0].addr;
        for _ in 0..50 {
            let i = pick_node(&leaf, &set, Some(bad)).unwrap();
            assert_ne!(set.nodes[i].addr, bad);
        }
        // First attempts follow the weights.
        let firsts: Vec<usize> = (0..6)
            .map(|_| pick_node(&leaf, &set, None).unwrap())
            .collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 5, "{firsts:?}");
        // With a single node there is nowhere else to go.
        table.set_policy("one", Some((Default::default(), vec![node(3, 1)])));
        let one = table.leaf("one");
        let set = one.instances();
        assert_eq!(pick_node(&one, &set, Some(set.nodes[0].addr)), Some(0));
    }
}
