//! Keeps this node's shared health verdicts in etcd: for each instance it
//! probes and finds unhealthy, `<prefix>/health/<service>/<instance>` on
//! the node's session lease; nothing for a healthy one. Written only on a
//! change. A verdict lives exactly as long as its prober: when the node
//! dies or is cut off, its lease expires, its verdicts vanish and the
//! instances go to other nodes (whose ownership follows the same gateway
//! records, on the same lease), which start from the verdict that just
//! went. A verdict this node stops wanting is withdrawn only if it is
//! still its own (compared by lease), so a node that took an instance over
//! and rewrote it keeps it; one the owner finds healthy is deleted
//! whoever wrote it; one the owner wants that the fleet lost is written
//! again.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;

use super::session::{self, Live, SessionWatch};
use crate::balance::sharing::{InstanceKey, Verdicts};
use crate::metrics::METRICS;
use crate::source::etcd::Keyspace;

/// A verdict as stored: who said so and since when (for people; the
/// key's presence is the verdict).
#[derive(serde::Serialize)]
struct Verdict<'a> {
    healthy: bool,
    node: &'a str,
    since_unix_ms: u64,
}

/// Writes the verdicts `wanted` names, on every live session, until the
/// checker goes.
pub async fn run(
    mut sessions: SessionWatch,
    keys: Keyspace,
    node_id: String,
    mut wanted: watch::Receiver<Verdicts>,
) {
    loop {
        let Some(live) = session::wait_live(&mut sessions).await else {
            return;
        };
        // A new lease holds nothing yet.
        let mut published: BTreeSet<InstanceKey> = BTreeSet::new();
        loop {
            let want = wanted.borrow_and_update().clone();
            let synced = tokio::time::timeout(
                session::WRITE_TIMEOUT,
                sync(&live, &keys, &node_id, &want, &mut published),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("etcd did not answer in time")));
            let retry = async {
                match synced {
                    Ok(()) => std::future::pending().await,
                    Err(e) => {
                        tracing::debug!(error = %e, "health verdicts not written; retrying");
                        tokio::time::sleep(Duration::from_millis(300)).await
                    }
                }
            };
            tokio::select! {
                _ = session::lost(&mut sessions, live.epoch) => break,
                changed = wanted.changed() => if changed.is_err() { return },
                _ = retry => {}
            }
        }
    }
}

async fn sync(
    live: &Live,
    keys: &Keyspace,
    node_id: &str,
    want: &Verdicts,
    published: &mut BTreeSet<InstanceKey>,
) -> anyhow::Result<()> {
    let mut client = live.client.clone();
    for healthy in &want.clear {
        // The owner found it healthy: the verdict goes, whoever wrote it.
        client
            .delete(keys.health_key(&healthy.0, &healthy.1), None)
            .await?;
        published.remove(healthy);
        METRICS
            .health_verdict_writes
            .with_label_values(&["healthy"])
            .inc();
        tracing::info!(service = %healthy.0, instance = %healthy.1, "shared health verdict cleared");
    }
    let want_down = &want.down;
    for gone in published.difference(want_down).cloned().collect::<Vec<_>>() {
        let key = keys.health_key(&gone.0, &gone.1);
        // Only if still ours: another node may have taken the instance over.
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, live.lease)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        client.txn(txn).await?;
        published.remove(&gone);
        METRICS
            .health_verdict_writes
            .with_label_values(&["healthy"])
            .inc();
        tracing::info!(service = %gone.0, instance = %gone.1, "shared health verdict withdrawn");
    }
    let to_write: Vec<InstanceKey> = (want_down.iter())
        .filter(|k| !published.contains(*k) || want.missing.contains(*k))
        .cloned()
        .collect();
    for new in to_write {
        let value = serde_json::to_string(&Verdict {
            healthy: false,
            node: node_id,
            since_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
        .unwrap_or_default();
        client
            .put(
                keys.health_key(&new.0, &new.1),
                value,
                Some(PutOptions::new().with_lease(live.lease)),
            )
            .await?;
        METRICS
            .health_verdict_writes
            .with_label_values(&["unhealthy"])
            .inc();
        tracing::warn!(service = %new.0, instance = %new.1, "shared health verdict: unhealthy");
        published.insert(new);
    }
    Ok(())
}
