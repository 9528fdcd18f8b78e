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
    store.replace_all(model.routes, model.upstreams);
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
    process: String,
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
                    if process_settings(&model) != self.process {
                        tracing::warn!(
                            file = %self.path.display(),
                            "listen, admin, threads or etcd changed: they apply on restart; routes and upstreams apply now"
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

/// Settings fixed for the life of the process.
fn process_settings(model: &ConfigModel) -> String {
    let b = &model.bootstrap;
    format!(
        "{:?} {} {} {}",
        b.listen,
        b.admin.listen,
        b.threads,
        b.etcd.is_some()
    )
}
