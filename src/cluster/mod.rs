//! The fleet acting as one, with etcd as the only coordinator: each node's
//! session (one kept-alive lease everything it owns hangs on), its gateway
//! record, shared health verdicts, the election helper leader-only jobs
//! run through, and managed (ACME) certificates ordered under it.
//!
//! Reads the snapshot and writes to etcd; what it writes comes back to
//! every node (itself included) through the etcd source, like any change.

pub mod acme;
pub mod election;
pub mod health;
pub mod membership;
pub mod session;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use crate::balance::sharing::Verdicts;
use crate::snapshot::SnapshotCell;
use crate::source::etcd::{Applied, Keyspace};
use crate::tls::KeyRing;

/// The receiving ends the cluster tasks take over at start.
struct Inputs {
    applied: watch::Receiver<Applied>,
    verdicts: watch::Receiver<Verdicts>,
    session_live: watch::Sender<bool>,
}

/// The node's cluster tasks, run as a Pingora background service.
pub struct ClusterService {
    endpoints: Vec<String>,
    keys: Keyspace,
    node_id: String,
    cell: Arc<SnapshotCell>,
    key_ring: Arc<KeyRing>,
    acme: acme::Defaults,
    inputs: Mutex<Option<Inputs>>,
}

impl ClusterService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoints: Vec<String>,
        keys: Keyspace,
        node_id: String,
        cell: Arc<SnapshotCell>,
        key_ring: Arc<KeyRing>,
        acme: acme::Defaults,
        applied: watch::Receiver<Applied>,
        verdicts: watch::Receiver<Verdicts>,
        session_live: watch::Sender<bool>,
    ) -> Self {
        Self {
            endpoints,
            keys,
            node_id,
            cell,
            key_ring,
            acme,
            inputs: Mutex::new(Some(Inputs {
                applied,
                verdicts,
                session_live,
            })),
        }
    }
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(inputs) = self.inputs.lock().ok().and_then(|mut i| i.take()) else {
            return;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (session_tx, sessions) = watch::channel(None);
        let session = tokio::spawn(session::run(self.endpoints.clone(), session_tx, stop_rx));
        let mut tasks = vec![
            tokio::spawn(membership::run(
                sessions.clone(),
                self.keys.gateway_key(&self.node_id),
                self.node_id.clone(),
                inputs.applied,
            )),
            tokio::spawn(health::run(
                sessions.clone(),
                self.keys.clone(),
                self.node_id.clone(),
                inputs.verdicts,
            )),
            tokio::spawn(acme::manager::run(acme::manager::Manager {
                sessions: sessions.clone(),
                keys: self.keys.clone(),
                node_id: self.node_id.clone(),
                cell: self.cell.clone(),
                key_ring: self.key_ring.clone(),
                defaults: self.acme.clone(),
            })),
        ];
        // The checker's view of the session: alive or not.
        let live_tx = inputs.session_live;
        let mut watching = sessions.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let live = watching.borrow_and_update().is_some();
                live_tx.send_if_modified(|v| std::mem::replace(v, live) != live);
                if watching.changed().await.is_err() {
                    return;
                }
            }
        }));
        let _ = shutdown.changed().await;
        for t in &tasks {
            t.abort();
        }
        // Revokes the lease: the record, verdicts and roles go at once.
        let _ = stop_tx.send(true);
        let mut session = session;
        if tokio::time::timeout(Duration::from_secs(2), &mut session)
            .await
            .is_err()
        {
            session.abort();
        }
    }
}

/// The roles this node holds now (`tollgate_cluster_roles` above 0): what
/// `/status` shows as `roles`.
pub fn roles() -> std::collections::BTreeMap<String, i64> {
    use prometheus::core::Collector;
    let mut out = std::collections::BTreeMap::new();
    for family in crate::metrics::METRICS.cluster_roles.collect() {
        for m in family.get_metric() {
            let value = m.get_gauge().get_value() as i64;
            let role = m.get_label().first().map(|l| l.value().to_string());
            if let (Some(role), true) = (role, value > 0) {
                out.insert(role, value);
            }
        }
    }
    out
}

/// Managed certificates as `/status` shows them on every node.
pub fn acme_status(view: &crate::snapshot::acme::AcmeView) -> serde_json::Value {
    let certs: serde_json::Map<String, serde_json::Value> = view
        .managed
        .iter()
        .map(|(id, cert)| {
            let attempt = view.attempts.get(id);
            let v = serde_json::json!({
                "snis": cert.snis,
                "issued": cert.issued.is_some(),
                "not_after_unix_s": cert.issued.map(|i| i.1),
                "renew_at_unix_s": cert.issued.map(|_| cert.renew_at()),
                "failures": attempt.map_or(0, |a| a.failures),
                "last_error": attempt.and_then(|a| a.last_error.clone()),
                "next_attempt_unix_ms": attempt.map(|a| a.next_attempt_unix_ms).filter(|t| *t > 0),
                "last_attempt_node": attempt.map(|a| a.node.clone()),
            });
            (id.clone(), v)
        })
        .collect();
    certs.into()
}
