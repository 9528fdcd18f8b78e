//! The Pingora `ProxyHttp` implementation: one snapshot load per request,
//! route match, instance pick, header rewrites, JSON errors.

mod error_response;
mod request_id;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::router::request_host;
use crate::snapshot::{InstanceSet, RouteEntry, Snapshot, SnapshotCell};
pub use request_id::RequestIds;

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
    snapshot: Option<Arc<Snapshot>>,
    route: usize,
    /// The instance set and node picked for the current attempt.
    picked: Option<(Arc<InstanceSet>, usize)>,
    attempts: u32,
}

impl RequestCtx {
    fn route(&self) -> Option<&RouteEntry> {
        self.snapshot.as_ref()?.routes.get(self.route)
    }
}

/// The gateway's proxy logic.
pub struct Gateway {
    cell: Arc<SnapshotCell>,
    ids: RequestIds,
    in_flight: Arc<InFlight>,
}

impl Gateway {
    pub fn new(cell: Arc<SnapshotCell>, in_flight: Arc<InFlight>) -> Self {
        Self {
            cell,
            ids: RequestIds::default(),
            in_flight,
        }
    }
}

fn host_of(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())
        .map_or("", request_host)
}

/// Appends the client to `X-Forwarded-For`, keeping what proxies before us
/// recorded.
fn forwarded_for(existing: Option<&http::HeaderValue>, client: &str) -> String {
    match existing.and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client}"),
        _ => client.to_string(),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        self.in_flight.0.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            _in_flight: InFlightGuard(self.in_flight.clone()),
            request_id: String::new(),
            snapshot: None,
            route: 0,
            picked: None,
            attempts: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id =
            request_id::from_client(req.headers.get("x-request-id").map(|v| v.as_bytes()))
                .unwrap_or_else(|| self.ids.next());
        let snapshot = self.cell.load();
        match snapshot
            .router
            .lookup(host_of(req), req.method.as_str(), req.uri.path())
        {
            Some(i) => {
                ctx.route = i as usize;
                ctx.snapshot = Some(snapshot);
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
        let failed = ctx
            .picked
            .as_ref()
            .map(|(_, i)| set.nodes.get(*i).map(|n| n.addr));
        // On a retry, prefer an instance other than the one that just failed.
        let mut pick = route.upstream.pick(&set);
        for _ in 0..set.nodes.len().min(4) {
            match (pick, failed) {
                (Some(i), Some(Some(bad))) if set.nodes[i].addr == bad && set.serving() > 1 => {
                    pick = route.upstream.pick(&set);
                }
                _ => break,
            }
        }
        let Some(i) = pick else {
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
                upstream.headers.get("x-forwarded-for"),
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
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
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
        let retries = ctx.route().map_or(0, |r| r.retries);
        if ctx.attempts <= retries {
            e.set_retry(true);
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
}
