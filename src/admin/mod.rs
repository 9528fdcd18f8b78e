//! The admin listener (loopback by default): liveness, readiness, status,
//! metrics, and (only when `admin.profiling` is on) CPU profiles. It only
//! reads the snapshot cell; it never changes routing.

pub mod profile;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::snapshot::SnapshotCell;

/// Facts about this process that `/status` reports besides the sync state.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_id: String,
    pub version: &'static str,
}

/// The admin HTTP app.
pub struct AdminApp {
    cell: Arc<SnapshotCell>,
    node: NodeInfo,
    /// Set once shutdown begins: readiness fails so load balancers move on.
    draining: Arc<AtomicBool>,
    /// `/debug/pprof/*` answered (`admin.profiling`); 404 otherwise.
    profiling: bool,
}

impl AdminApp {
    pub fn new(cell: Arc<SnapshotCell>, node: NodeInfo, draining: Arc<AtomicBool>) -> Self {
        Self {
            cell,
            node,
            draining,
            profiling: false,
        }
    }

    /// Serve `/debug/pprof/profile` and `/debug/pprof/flamegraph`.
    pub fn with_profiling(mut self, on: bool) -> Self {
        self.profiling = on;
        self
    }

    fn status_json(&self) -> serde_json::Value {
        let s = self.cell.status.view();
        let mut v = serde_json::to_value(&s).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("node_id".into(), self.node.node_id.clone().into());
            o.insert("version".into(), self.node.version.into());
            o.insert(
                "draining".into(),
                self.draining.load(Ordering::Relaxed).into(),
            );
            o.insert("roles".into(), serde_json::json!(crate::cluster::roles()));
            let verdicts = if crate::balance::health::shared_verdicts() {
                "shared"
            } else {
                "local"
            };
            o.insert("health_verdicts".into(), verdicts.into());
            o.insert(
                "managed_certs".into(),
                crate::cluster::acme_status(&self.cell.acme.load()),
            );
        }
        v
    }

    fn readiness(&self) -> (u16, serde_json::Value) {
        let s = self.cell.status.view();
        let draining = self.draining.load(Ordering::Relaxed);
        // Stale config still serves (fail static): ready, but say so.
        let ready = s.ready && !draining;
        let state = if draining {
            "draining"
        } else if !s.ready {
            "starting"
        } else if s.stale {
            "stale"
        } else {
            "ready"
        };
        let body = serde_json::json!({ "ready": ready, "state": state, "revision": s.revision });
        (if ready { 200 } else { 503 }, body)
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

fn json(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (code, body) = self.readiness();
                json(code, &body)
            }
            "/status" => json(200, &self.status_json()),
            "/metrics" => {
                if let Some(cache) = self.cell.cache_if_used() {
                    cache.report();
                }
                respond(
                    200,
                    "text/plain; version=0.0.4",
                    crate::metrics::render(self.cell.status.view().applied_unix_ms),
                )
            }
            p if self.profiling && profile::Format::for_path(p).is_some() => {
                let format = profile::Format::for_path(p).unwrap_or(profile::Format::Svg);
                let query = session.req_header().uri.query().map(str::to_string);
                profile::serve(format, query.as_deref()).await
            }
            _ => json(
                404,
                &serde_json::json!({ "error": "not found", "path": path }),
            ),
        }
    }
}
