//! Standalone mode: the bootstrap file is the source. It is polled, and a
//! valid edit replaces the routes and upstreams; an invalid one is logged
//! with the bad field and changes nothing.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::{load_file, ConfigModel};
use crate::store::Store;

/// What we compare to notice an edit: content changes usually move mtime
/// or size; a rename or symlink swap moves the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Applies a validated file to the store and publishes it.
pub fn apply(store: &mut Store, model: ConfigModel) {
    store.set_default_timeouts(model.timeouts);
    store.set_default_limit(model.default_limit);
    store.set_global_plugins(model.global_plugins);
    store.replace_consumers(model.consumers);
    store.replace_all(model.routes, model.upstreams);
    store.replace_certs(model.certs);
    let report = store.publish();
    let s = store.cell().status.view();
    tracing::info!(
        routes = s.routes,
        upstreams = s.upstreams,
        instances = s.instances,
        rebuilt = report.rebuilt,
        took_us = report.took.as_micros() as u64,
        "config applied"
    );
}

/// Polls the bootstrap file and applies valid edits.
pub struct FileSource {
    path: PathBuf,
    poll: Duration,
    store: Mutex<Option<Store>>,
    process: Vec<(&'static str, String)>,
}

impl FileSource {
    /// `store` already holds the file's config as it was at start-up.
    pub fn new(path: PathBuf, started_with: &ConfigModel, store: Store) -> Self {
        Self {
            path,
            poll: Duration::from_millis(started_with.bootstrap.reload.poll_ms),
            store: Mutex::new(Some(store)),
            process: process_settings(started_with),
        }
    }
}

#[async_trait]
impl BackgroundService for FileSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut store) = self.store.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        let mut last = fingerprint(&self.path);
        let mut ticker = tokio::time::interval(self.poll);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = fingerprint(&self.path);
            if now == last {
                continue;
            }
            last = now;
            match load_file(&self.path) {
                Ok(model) => {
                    let changed =
                        changed_process_settings(&self.process, &process_settings(&model));
                    if !changed.is_empty() {
                        tracing::warn!(
                            file = %self.path.display(),
                            changed = %changed.join(", "),
                            "these settings apply on restart (or upgrade); routes, upstreams, settings and proxy.timeout apply now"
                        );
                    }
                    apply(&mut store, model);
                }
                Err(e) => {
                    store.cell().status.count_rejected();
                    tracing::error!(
                        file = %self.path.display(),
                        error = %e,
                        "config edit rejected; the previous config keeps serving"
                    );
                }
            }
        }
    }
}

/// The bootstrap settings read once at start. An edit of one of them is
/// valid but waits for a restart (or `--upgrade`), and the log says which.
/// Everything else in the file (routes, upstreams, `settings`,
/// `proxy.timeout`) applies live.
fn process_settings(model: &ConfigModel) -> Vec<(&'static str, String)> {
    let b = &model.bootstrap;
    vec![
        ("listen", format!("{:?}", b.listen)),
        ("admin", format!("{:?}", b.admin)),
        ("threads", b.threads.to_string()),
        ("work_stealing", b.work_stealing.to_string()),
        ("state_dir", format!("{:?}", b.state_dir)),
        ("node_id", format!("{:?}", b.node_id)),
        ("etcd", format!("{:?}", b.etcd)),
        ("proxy.keepalive_pool", b.proxy.keepalive_pool.to_string()),
        (
            "proxy.shutdown_timeout_secs",
            b.proxy.shutdown_timeout_secs.to_string(),
        ),
        (
            "proxy.client_keepalive_secs",
            b.proxy.client_keepalive_secs.to_string(),
        ),
        (
            "proxy.client_timeout_secs",
            b.proxy.client_timeout_secs.to_string(),
        ),
        ("proxy.max_body_bytes", b.proxy.max_body_bytes.to_string()),
        ("proxy.path", format!("{:?}", b.proxy.path)),
        ("proxy.max_connections", b.proxy.max_connections.to_string()),
        (
            "proxy.max_connections_per_ip",
            format!("{:?}", b.proxy.max_connections_per_ip),
        ),
        ("proxy.engine", b.proxy.engine.as_str().to_string()),
        ("proxy.http2", format!("{:?}", b.proxy.http2)),
        (
            "proxy.underscore_headers",
            format!("{:?}", b.proxy.underscore_headers),
        ),
        ("log", format!("{:?}", b.log)),
        ("reload", format!("{:?}", b.reload)),
        ("access_log", format!("{:?}", b.access_log)),
        ("request_metrics", b.request_metrics.to_string()),
        ("trusted_proxies", format!("{:?}", b.trusted_proxies)),
    ]
}

/// The names of the process settings that differ between `a` and `b`.
fn changed_process_settings(
    a: &[(&'static str, String)],
    b: &[(&'static str, String)],
) -> Vec<&'static str> {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen: [\"127.0.0.1:8080\"]\nroutes: []\n";

    fn changed(edit: &str) -> Vec<&'static str> {
        let before = crate::config::parse(BASE).unwrap();
        let after = crate::config::parse(&format!("{BASE}{edit}")).unwrap();
        changed_process_settings(&process_settings(&before), &process_settings(&after))
    }

    #[test]
    fn live_edits_name_no_process_setting() {
        assert!(changed("").is_empty());
        assert!(changed("proxy: { timeout: { read_ms: 5000 } }\n").is_empty());
        assert!(changed("settings: { rate_limit: { rate: 10 } }\n").is_empty());
    }

    #[test]
    fn restart_only_edits_are_named() {
        assert_eq!(
            changed("trusted_proxies: [\"10.0.0.0/8\"]\n"),
            ["trusted_proxies"]
        );
        assert_eq!(
            changed("access_log: { enabled: false }\nthreads: 3\n"),
            ["threads", "access_log"]
        );
        assert_eq!(
            changed("proxy: { keepalive_pool: 8, timeout: { read_ms: 5000 } }\n"),
            ["proxy.keepalive_pool"]
        );
        assert_eq!(changed("log: { level: debug }\n"), ["log"]);
        assert_eq!(changed("proxy: { engine: pingora }\n"), ["proxy.engine"]);
    }
}
