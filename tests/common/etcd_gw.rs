//! Helpers for the etcd-mode integration tests (`tests/etcd_*.rs`): a
//! gateway pointed at a real etcd, route and registry values, polling on
//! what a user sees (status codes, which backend answered, `/status`,
//! `/metrics`), an owned temp dir, and a child process for
//! `tollgate register`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::process::{exit_code, kill_and_reap, send_signal, tail_file, wait_child};
use testkit::{http_request, EtcdClient, Gateway, Resp};

use super::bin;

/// Where routes live (default prefix).
pub const ROUTES: &str = "/tollgate/routes/";
/// Where the registry lives (default registry prefix).
pub const SERVICES: &str = "/services/";
/// Where gateways register themselves.
pub const GATEWAYS: &str = "/tollgate/gateways/";

/// SIGSTOP / SIGCONT (Linux numbers; testkit does not re-export them).
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

/// The bootstrap body for etcd mode (the testkit header adds listeners and
/// the state dir).
pub fn body(node_id: &str, endpoints: &[String]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "node_id: \"{node_id}\"\netcd: {{ endpoints: [{}] }}\n",
        eps.join(", ")
    )
}

/// A gateway on etcd, ready and with `/status` etcd == "connected".
pub fn start_gw(node_id: &str, endpoints: &[String]) -> Gateway {
    let gw = Gateway::start(bin(), &body(node_id, endpoints));
    wait_connected(&gw, Duration::from_secs(15));
    gw
}

/// Like [`start_gw`] with a caller-owned state dir; does not wait for etcd.
pub fn start_gw_in(node_id: &str, endpoints: &[String], state_dir: &Path) -> Gateway {
    Gateway::start_with_state_dir(bin(), &body(node_id, endpoints), state_dir)
}

/// A relay in front of `etcd` the test can cut: a partition of the one
/// client given its URL.
pub fn etcd_relay(etcd: &testkit::Etcd) -> testkit::Relay {
    let target = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    testkit::Relay::start(target)
}

/// A route value: `{"paths": [...], "upstream": "..."}`.
pub fn route(paths: &[&str], upstream: &str) -> String {
    serde_json::json!({ "paths": paths, "upstream": upstream }).to_string()
}

/// Puts `/tollgate/routes/<id>`; returns the revision.
pub fn put_route(c: &EtcdClient, id: &str, paths: &[&str], upstream: &str) -> i64 {
    c.put(&format!("{ROUTES}{id}"), &route(paths, upstream))
}

/// Puts upstream `b` (one node, `node_url`) and route `id` on `path` to
/// it with `plugins`: the etcd set-up of a plugin test.
pub fn put_plugin_route(c: &EtcdClient, node_url: &str, id: &str, path: &str, plugins: Value) {
    c.put(
        "/tollgate/upstreams/b",
        &serde_json::json!({ "nodes": [node_url] }).to_string(),
    );
    c.put(
        &format!("{ROUTES}{id}"),
        &serde_json::json!({"paths": [path], "upstream": "b", "plugins": plugins}).to_string(),
    );
}

/// The lease a key is attached to (None if the key does not exist).
pub fn lease_of(c: &EtcdClient, key: &str) -> Option<i64> {
    c.run(&format!("get {key}"), |mut cl| {
        let key = key.to_string();
        async move {
            let r = cl.get(key, None).await?;
            Ok(r.kvs().first().map(|kv| kv.lease()))
        }
    })
}

/// One request through the proxy; None on a transport error.
pub fn try_get(gw: &Gateway, path: &str) -> Option<Resp> {
    gw.request("GET", path, &[], None).ok()
}

/// Who answered: `Ok(backend)` for a 200 from a backend (checked against
/// the echo body), `Err(description)` for anything else.
pub fn answer(gw: &Gateway, path: &str) -> Result<String, String> {
    match gw.request("GET", path, &[], None) {
        Err(e) => Err(format!("transport error: {e}")),
        Ok(r) if r.status == 200 => match r.header("x-backend") {
            Some(b) => {
                let j: Value = serde_json::from_str(&r.body)
                    .map_err(|e| format!("200 but not echo JSON ({e}): {r:?}"))?;
                if j["backend"].as_str() != Some(b) || j["path"].as_str() != Some(path) {
                    return Err(format!("echo body disagrees: {r:?}"));
                }
                Ok(b.to_string())
            }
            None => Err(format!("200 without x-backend: {r:?}")),
        },
        Ok(r) => Err(format!("status {}: {}", r.status, r.body.trim())),
    }
}

/// Poll `f` every 20ms until it returns Ok; panic with the last error (and
/// `what`) after `timeout`.
pub fn wait_ok<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!(
                "timed out waiting for {what} after {:.2?}; last: {last}",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `path` is answered 200 by `backend`.
pub fn wait_served_by(gw: &Gateway, path: &str, backend: &str, timeout: Duration) {
    wait_ok(
        &format!("GET {path} served by {backend}"),
        timeout,
        || match answer(gw, path) {
            Ok(b) if b == backend => Ok(()),
            Ok(b) => Err(format!("served by {b}")),
            Err(e) => Err(e),
        },
    )
}

/// Wait until `path` answers `status` from the gateway itself (no backend).
pub fn wait_gateway_status(gw: &Gateway, path: &str, status: u16, timeout: Duration) -> Resp {
    wait_ok(
        &format!("GET {path} == {status}"),
        timeout,
        || match try_get(gw, path) {
            Some(r) if r.status == status && r.header("x-backend").is_none() => Ok(r),
            Some(r) => Err(format!(
                "{} {:?} {}",
                r.status,
                r.header("x-backend"),
                r.body
            )),
            None => Err("transport error".into()),
        },
    )
}

/// Asserts `r` is a JSON error of the gateway's own naming `contains`.
pub fn assert_gw_error(r: &Resp, status: u16, contains: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(r.header("x-backend").is_none(), "a backend answered: {r:?}");
    let j = r.json();
    let e = j["error"].as_str().unwrap_or_default();
    assert!(
        e.contains(contains),
        "error {e:?} lacks {contains:?}: {r:?}"
    );
    assert!(
        j["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{r:?}"
    );
}

/// `GET /status`, None on transport errors.
pub fn try_status(gw: &Gateway) -> Option<Value> {
    let r = http_request("GET", &gw.admin_url("/status"), &[], None).ok()?;
    (r.status == 200).then(|| r.json())
}

/// Wait until `/status` satisfies `pred`; returns it.
pub fn wait_status(
    gw: &Gateway,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_ok(&format!("/status: {what}"), timeout, || {
        match try_status(gw) {
            Some(s) if pred(&s) => Ok(s),
            Some(s) => Err(s.to_string()),
            None => Err("no /status".into()),
        }
    })
}

pub fn wait_connected(gw: &Gateway, timeout: Duration) -> Value {
    wait_status(gw, "etcd connected", timeout, |s| {
        s["etcd"] == "connected" && s["ready"] == true
    })
}

/// Wait until `/status` revision >= `rev` (a stream that saw no event
/// catches up on its next progress notification, every ~2s).
pub fn wait_revision(gw: &Gateway, rev: i64, timeout: Duration) -> Value {
    wait_status(gw, &format!("revision >= {rev}"), timeout, |s| {
        s["revision"].as_i64().is_some_and(|r| r >= rev)
    })
}

/// `GET /readyz` as (status, JSON).
pub fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = http_request("GET", &gw.admin_url("/readyz"), &[], None)
        .unwrap_or_else(|e| panic!("/readyz: {e}"));
    let j = r.json();
    (r.status, j)
}

/// The `/metrics` text.
pub fn metrics(gw: &Gateway) -> String {
    let r = http_request("GET", &gw.admin_url("/metrics"), &[], None)
        .unwrap_or_else(|e| panic!("/metrics: {e}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// The value of one series, named exactly as exposed (with its labels,
/// e.g. `tollgate_config_rejected_total{kind="route"}`); 0 if absent.
pub fn metric(gw: &Gateway, series: &str) -> f64 {
    metric_in(&metrics(gw), series)
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long-running `tollgate <args>` child (e.g. `register`) with its
/// output in a log file; SIGKILLed on drop, printing its log if panicking.
pub struct Proc {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
    exit: Option<i32>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let dir = TempDir::new("proc");
        let log = dir.path().join("out.log");
        let f = File::create(&log).expect("log file");
        let child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        Proc {
            child,
            log,
            _dir: dir,
            exit: None,
        }
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit code once exited within `timeout` (128+N for signal N).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout).map(exit_code);
        }
        self.exit
    }

    pub fn running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} -----\n{}\n-----",
                self.log.display(),
                tail_file(&self.log, 60)
            );
        }
    }
}

/// Requests in a loop from a background thread until stopped: counts
/// every answer that is not a 200 from a backend.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Traffic {
    pub fn start(url: String) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut n, mut failures) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                n += 1;
                match http_request("GET", &url, &[], None) {
                    Ok(r) if r.status == 200 && r.header("x-backend").is_some() => {}
                    Ok(r) => failures.push(format!("#{n}: {} {}", r.status, r.body.trim())),
                    Err(e) => failures.push(format!("#{n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (n, failures)
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns (requests sent, failures).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("finished once")
            .join()
            .expect("traffic thread")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
