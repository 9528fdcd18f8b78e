//! Small helpers shared by the integration tests: the binary, config
//! snippets, and assertions on the echo backend's and the gateway's JSON.
#![allow(dead_code)]

pub mod acme;
pub mod engines;
pub mod etcd_gw;
pub mod h2_frames;
pub mod keepalive;
pub mod raw_http;
pub mod tls;
pub mod upstreams;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use testkit::{Backend, Gateway, Resp};

pub const READY: Duration = Duration::from_secs(10);

/// The `tollgate` binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tollgate"))
}

/// Starts the gateway with `body` (routes, upstreams, ...) and waits until
/// it reports ready.
pub fn start(body: &str) -> Gateway {
    let gw = Gateway::start(bin(), body);
    gw.wait_ready(READY);
    gw
}

/// A gateway on `engine` (`core` or `pingora`, through the environment
/// override) with `top` settings and one route `/*rest` to `nodes` (with
/// `upstream_extra` settings, `, retry: {...}`); checks the engine is the
/// one running.
pub fn engine_gateway(engine: &str, nodes: &[String], upstream_extra: &str, top: &str) -> Gateway {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let body = format!(
        "{top}routes:\n  - {{ id: all, paths: [\"/*rest\"], upstream: up }}\n\
         upstreams:\n  up: {{ nodes: [{}]{upstream_extra} }}\n",
        nodes.join(", ")
    );
    let gw = Gateway::start_with_env(bin(), &body, &[("TOLLGATE_PROXY_ENGINE", engine)]);
    gw.wait_ready(READY);
    let logs = gw.logs();
    assert!(
        logs.contains(&format!("engine=\"{engine}\""))
            || logs.contains(&format!("engine={engine}")),
        "the gateway does not run the {engine} engine:\n{logs}"
    );
    gw
}

/// `name: { nodes: ["http://…", …] }`, one line of an `upstreams:` map.
pub fn upstream(name: &str, nodes: &[&Backend]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|b| format!("\"{}\"", b.url())).collect();
    format!("  {name}: {{ nodes: [{}] }}\n", nodes.join(", "))
}

/// Like [`upstream`] with `{addr, weight}` nodes.
pub fn weighted_upstream(name: &str, nodes: &[(&Backend, i64)]) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(b, w)| format!("{{addr: \"{}\", weight: {w}}}", b.url()))
        .collect();
    format!("  {name}: {{ nodes: [{}] }}\n", nodes.join(", "))
}

/// A request through the gateway; panics on transport errors.
pub fn send(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    gw.request(method, path, headers, None)
        .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"))
}

/// The echo backend's description of the request it received; asserts the
/// response is a 200 from a backend.
pub fn echo(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "expected a backend 200, got: {r:?}");
    let j = r.json();
    assert_eq!(
        r.header("x-backend"),
        j["backend"].as_str(),
        "x-backend header and echo body disagree: {r:?}"
    );
    j
}

/// Which backend answered a 200 through the gateway.
pub fn backend_of(r: &Resp) -> String {
    echo(r)["backend"].as_str().unwrap_or_default().to_string()
}

/// A generated request id: 32 lower-case hex digits.
pub fn is_generated_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Asserts `r` is an error the gateway produced itself: `status`, a JSON
/// body `{"error": …, "request_id": …}` whose error mentions `contains`,
/// and whose request id is the `X-Request-Id` response header. Returns the
/// request id.
pub fn assert_gateway_error(r: &Resp, status: u16, contains: &str) -> String {
    assert_eq!(r.status, status, "unexpected response: {r:?}");
    assert!(
        r.header("x-backend").is_none(),
        "a backend answered, not the gateway: {r:?}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let j = r.json();
    let error = j["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {j}"));
    assert!(
        error.contains(contains),
        "error {error:?} lacks {contains:?}"
    );
    let id = j["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id: {j}"));
    assert!(!id.is_empty(), "{j}");
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "request_id in the body differs from the X-Request-Id header: {r:?}"
    );
    id.to_string()
}

/// A file in the system temp dir, removed on drop (the root package has
/// no tempfile dependency).
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-test-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
