//! etcd as the config source: list + watch of the config prefix and the
//! service registry, per-key validation, fail-static with a last-known-good
//! file, and this node's own registration. The rules it follows are in
//! design.md ("Syncing with etcd").

pub mod backoff;
mod batch_hold;
mod coordination;
pub mod endpoints;
mod fleet;
mod keyspace;
mod leases;
mod list;
mod preserve;
mod preserve_probe;
mod progress;
mod purges;
mod state;
mod watch;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::backoff::Backoff;
use self::endpoints::Rotation;
pub use self::keyspace::{Key, Keyspace};
use self::preserve::Probed;
use self::state::EtcdState;
use self::watch::{follow, OnApplied};
use super::lkg::{self, LastKnownGood};
use crate::config::EtcdConfig;
use crate::metrics::METRICS;
use crate::model::Timeouts;
use crate::snapshot::SourceState;
use crate::store::Store;
use crate::tls::KeyRing;

/// Probe answers of preserved instances queued for the watch loop, at most.
const PROBE_ANSWERS: usize = 1024;

/// Minimum time between two last-known-good writes; a burst of changes is
/// persisted once.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// A big config waits longer between writes: at least this many times as
/// long as the last write took, so saving never takes more than ~0.2% of a
/// core. 10,000 routes + 10,000 instances take ~8 ms to save: under a
/// steady stream of changes every second, that was ~0.8% of the core the
/// proxy runs on, and 3 MB/s written to disk.
const PERSIST_BUDGET: u32 = 500;
/// ...but never longer than this (a slow disk's fsync counts too).
const PERSIST_AT_MOST_EVERY: Duration = Duration::from_secs(30);

/// Least time from one last-known-good save to the next, given how long
/// the last one took.
fn persist_gap(last_save: Duration) -> Duration {
    (last_save * PERSIST_BUDGET).clamp(PERSIST_EVERY, PERSIST_AT_MOST_EVERY)
}

/// What the node has applied, as its gateway record tells it
/// (`cluster::membership` writes it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub config_revision: i64,
    /// Serving the last config it had while its watch cannot reach etcd.
    pub stale: bool,
    /// Holding config changes until an apply finishes.
    pub holding: bool,
}

/// The etcd source, run as a Pingora background service.
pub struct EtcdSource {
    cfg: EtcdConfig,
    keys: Keyspace,
    state_dir: PathBuf,
    state: Mutex<Option<EtcdState>>,
    /// Tells the node's gateway record what it serves; dropped when the
    /// source stops.
    applied: Mutex<Option<tokio::sync::watch::Sender<Applied>>>,
}

impl EtcdSource {
    pub fn new(
        cfg: EtcdConfig,
        state_dir: PathBuf,
        store: Store,
        base: Timeouts,
        key_ring: Arc<KeyRing>,
        applied: tokio::sync::watch::Sender<Applied>,
    ) -> Self {
        let keys = Keyspace::new(&cfg.prefix, &cfg.registry_prefix);
        Self {
            state: Mutex::new(Some(EtcdState::new(
                store,
                keys.clone(),
                base,
                cfg.self_preservation.clone(),
                key_ring,
            ))),
            cfg,
            keys,
            state_dir,
            applied: Mutex::new(Some(applied)),
        }
    }

    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(self.cfg.dial_timeout_ms))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true)
    }

    /// Serves the last-known-good file while etcd cannot be reached.
    fn load_last_known_good(&self, state: &mut EtcdState) {
        match lkg::load(&self.state_dir) {
            Ok(Some(saved)) => {
                state.begin_relist();
                for (k, v) in &saved.kvs {
                    // Leases are unknown offline; a saved instance was leased.
                    state.put(k, v.as_bytes(), -1, saved.revision);
                }
                state.finish_relist(saved.revision);
                state.publish(saved.revision);
                state.store.cell().status.set_stale(true);
                tracing::warn!(
                    revision = saved.revision,
                    keys = saved.kvs.len(),
                    "etcd unreachable at start-up: serving the last-known-good config (stale)"
                );
            }
            Ok(None) => {
                tracing::warn!("etcd unreachable at start-up and no last-known-good config yet")
            }
            Err(e) => tracing::error!(error = %e, "cannot use the last-known-good config"),
        }
    }

    /// One connection's life: list, follow, re-list when told to. Returns
    /// only on an error (the caller reconnects).
    async fn session(
        &self,
        endpoint: &str,
        state: &mut EtcdState,
        persist: &mut Persister,
        backoff: &mut Backoff,
        probes: &mut tokio::sync::mpsc::Receiver<Probed>,
    ) -> anyhow::Result<()> {
        let dial = Duration::from_millis(self.cfg.dial_timeout_ms);
        let mut client = tokio::time::timeout(
            dial,
            Client::connect([endpoint], Some(self.connect_options())),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {endpoint} timed out"))??;
        // Which etcd this is decides whether progress answers are held
        // (`progress`); not knowing is treated as an affected version.
        let version = match tokio::time::timeout(dial, client.status()).await {
            Ok(Ok(s)) => s.version().to_string(),
            _ => String::new(),
        };
        let hold = progress::may_overtake(&version).then_some(progress::HOLD);
        let prefixes = [self.keys.config_range(), self.keys.registry_range()];
        // "connected" is said once the first listing came back: a dial that
        // succeeds against a down etcd (gRPC connects lazily) proves nothing.
        let mut first = true;
        // Asks etcd how long each registry lease has left, for as long as
        // this connection lives.
        let _checker = AbortOnDrop(tokio::spawn(leases::check(
            state.leases.clone(),
            client.clone(),
        )));
        loop {
            let started = Instant::now();
            let timeout = dial.max(Duration::from_secs(5));
            state.begin_relist();
            let (listed, keys) =
                list::list(&mut client, &prefixes, timeout, |key, value, lease, rev| {
                    state.put(key, value, lease, rev)
                })
                .await?;
            state.finish_relist(listed.revision);
            // What was learnt of lease times before may be stale now.
            state.leases.recheck_all();
            if std::mem::take(&mut state.after_outage) {
                state.preserve.reconnected(Instant::now());
            }
            let report = state.publish(listed.revision);
            let status = &state.store.cell().status;
            status.set_source(SourceState::Connected);
            status.set_stale(false);
            METRICS.etcd_connected.set(1);
            backoff.reset();
            persist.applied(state, listed.revision);
            persist.cluster_id = listed.cluster_id;
            tracing::info!(
                revision = listed.revision,
                endpoint,
                version = %version,
                hold_progress_ms = hold.map_or(0, |h| h.as_millis() as u64),
                keys,
                rebuilt = report.rebuilt,
                took_ms = started.elapsed().as_millis() as u64,
                "{}",
                if std::mem::take(&mut first) { "etcd connected" } else { "etcd re-listed" }
            );
            let relist = follow(
                &mut client,
                [
                    ("config", prefixes[0].clone()),
                    ("registry", prefixes[1].clone()),
                ],
                listed,
                hold,
                state,
                persist,
                probes,
            )
            .await?;
            METRICS.relists.with_label_values(&[relist.reason()]).inc();
            tracing::warn!(reason = %relist, "re-listing etcd");
        }
    }
}

/// Aborts a background task when its owner goes (a session ends, the
/// source stops).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the last-known-good file off the watch loop, at most once per
/// [`PERSIST_EVERY`] (less often for a big config, see [`persist_gap`]),
/// and tells the announcer the config revision.
struct Persister {
    state_dir: PathBuf,
    cluster_id: u64,
    last_write: Option<Instant>,
    pending: Option<i64>,
    /// The config revision last saved: progress-only publishes (every 2 s)
    /// change nothing worth rewriting the file for.
    saved_config_revision: i64,
    /// Set while a save runs: saves never overlap (two writers of one temp
    /// file could rename a torn file into place).
    saving: Arc<AtomicBool>,
    /// How long the last save took, in µs.
    last_save_us: Arc<AtomicU64>,
    announce: tokio::sync::watch::Sender<Applied>,
}

impl Persister {
    /// Tells the announcer what this node now serves (a no-op when unchanged).
    fn announce(&self, state: &EtcdState) {
        let now = Applied {
            config_revision: state.announced_revision(),
            stale: state.store.cell().status.view().stale,
            holding: state.holding(),
        };
        self.announce
            .send_if_modified(|r| std::mem::replace(r, now) != now);
    }

    fn flush(&mut self, state: &EtcdState) {
        let Some(revision) = self.pending else {
            return;
        };
        if state.is_listing() {
            // Half old, half new (a re-list broke off): the file keeps the
            // last whole state; the next finished listing saves again.
            return;
        }
        if self.saving.swap(true, Ordering::AcqRel) {
            // The previous save is still running: try again at the next due time.
            self.last_write = Some(Instant::now());
            return;
        }
        self.pending = None;
        self.saved_config_revision = state.config_revision();
        self.last_write = Some(Instant::now());
        let lkg = LastKnownGood {
            revision,
            cluster_id: self.cluster_id,
            saved_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kvs: state.known().clone(),
        };
        let dir = self.state_dir.clone();
        let saving = self.saving.clone();
        let took = self.last_save_us.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            if let Err(e) = lkg::save(&dir, &lkg) {
                tracing::error!(error = %e, dir = %dir.display(), "cannot write the last-known-good config");
            }
            took.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            saving.store(false, Ordering::Release);
        });
    }

    fn due(&self) -> Option<Instant> {
        self.pending?;
        Some(self.last_write.map_or_else(Instant::now, |t| {
            t + persist_gap(Duration::from_micros(
                self.last_save_us.load(Ordering::Relaxed),
            ))
        }))
    }
}

impl OnApplied for Persister {
    fn due(&self) -> Option<Instant> {
        Persister::due(self)
    }

    fn run_due(&mut self, state: &EtcdState) {
        self.flush(state);
    }

    fn applied(&mut self, state: &EtcdState, revision: i64) {
        self.announce(state);
        if state.config_revision() == self.saved_config_revision && self.last_write.is_some() {
            return;
        }
        self.pending = Some(revision);
        if self.due().is_some_and(|t| t <= Instant::now()) {
            self.flush(state);
        }
    }
}

#[async_trait]
impl BackgroundService for EtcdSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut state) = self.state.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        let Some(announce_tx) = self.applied.lock().ok().and_then(|mut a| a.take()) else {
            return;
        };
        let mut persist = Persister {
            state_dir: self.state_dir.clone(),
            cluster_id: 0,
            last_write: None,
            pending: None,
            saved_config_revision: 0,
            saving: Arc::new(AtomicBool::new(false)),
            last_save_us: Arc::default(),
            announce: announce_tx,
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut synced_once = false;
        let mut rotation = Rotation::new(self.cfg.endpoints.clone());
        // Bounded: answers wait only while the watch loop is away (etcd
        // down), and then only the latest few matter.
        let (probe_tx, mut probes) = tokio::sync::mpsc::channel(PROBE_ANSWERS);
        let _prober = AbortOnDrop(tokio::spawn(preserve_probe::run(
            state.preserve.targets(),
            probe_tx,
        )));
        loop {
            let result = tokio::select! {
                r = self.session(rotation.current(), &mut state, &mut persist, &mut backoff, &mut probes) => r,
                _ = shutdown.changed() => break,
            };
            if let Err(e) = result {
                state.after_outage = true;
                let status = &state.store.cell().status;
                if status.source() == SourceState::Connected {
                    synced_once = true;
                }
                status.set_source(SourceState::Disconnected);
                status.set_stale(true);
                METRICS.etcd_connected.set(0);
                if !synced_once && !status.view().ready {
                    self.load_last_known_good(&mut state);
                }
                persist.announce(&state);
                persist.flush(&state);
                let delay = backoff.next_delay();
                let endpoint = rotation.current().to_string();
                rotation.advance();
                tracing::warn!(error = %e, endpoint, next = rotation.current(), retry_in_ms = delay.as_millis() as u64, "etcd unavailable; serving the last applied config");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        persist.flush(&state);
        // Dropping the sender tells the node's record writer the source
        // stopped (the cluster session revokes the lease on shutdown).
        drop(persist);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_save_spaces_the_next_ones_out_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(persist_gap(Duration::ZERO), PERSIST_EVERY);
        assert_eq!(
            persist_gap(ms(1)),
            PERSIST_EVERY,
            "small configs: every second"
        );
        assert_eq!(
            persist_gap(ms(8)),
            ms(4_000),
            "10,000 routes: ~0.2% of a core"
        );
        assert_eq!(persist_gap(ms(500)), PERSIST_AT_MOST_EVERY);
    }
}
