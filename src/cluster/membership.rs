//! Each gateway registers itself under `<prefix>/gateways/<node-id>` on its
//! session's lease, so an operator sees which nodes are alive, which config
//! revision each has applied, and whether it serves a stale config (its
//! watch lost etcd while this record's connection still reaches it) or
//! holds changes for an apply under way. The same records are the fleet the
//! nodes share health probes among. The record is rewritten only when one
//! of those changes: its own writes are gateway keys, which change none of
//! them, so a node never wakes itself (rule 7).

use etcd_client::PutOptions;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::session::{self, SessionWatch};
pub use crate::source::etcd::Applied;

/// Least time between two writes of the record.
const RECORD_EVERY: Duration = Duration::from_millis(500);
/// How often the node checks its record is still there and its own.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the gateway's record says.
#[derive(Debug, Clone, serde::Serialize)]
struct Record<'a> {
    node_id: &'a str,
    version: &'a str,
    config_revision: i64,
    stale: bool,
    holding: bool,
    started_unix_ms: u64,
    /// This node probes its share of instances for the fleet (nodes of
    /// older versions do not say so, and are given none).
    shares_health: bool,
}

/// Keeps this node's record written on each live session; returns when the
/// applied-revision sender is dropped (the source stopped).
pub async fn run(
    mut sessions: SessionWatch,
    key: String,
    node_id: String,
    mut applied: watch::Receiver<Applied>,
) {
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    loop {
        let Some(live) = session::wait_live(&mut sessions).await else {
            return;
        };
        let client = live.client.clone();
        let put = |now: Applied| {
            let value = serde_json::to_string(&Record {
                node_id: &node_id,
                version: env!("CARGO_PKG_VERSION"),
                config_revision: now.config_revision,
                stale: now.stale,
                holding: now.holding,
                started_unix_ms,
                shares_health: true,
            })
            .unwrap_or_default();
            let key = key.clone();
            let mut c = client.clone();
            async move {
                session::bounded(c.put(key, value, Some(PutOptions::new().with_lease(live.lease))))
                    .await
            }
        };
        let mut written = false;
        let mut last_put: Option<Instant> = None;
        loop {
            if !written {
                let now = *applied.borrow_and_update();
                match put(now).await {
                    Ok(_) => {
                        tracing::debug!(
                            key,
                            config_revision = now.config_revision,
                            lease = live.lease,
                            "gateway record written"
                        );
                        written = true;
                        last_put = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, key, "gateway record not written; retrying")
                    }
                }
            }
            // Written: looked at every few seconds, and written again if it
            // went (deleted by hand) or is another node's (a duplicate
            // node_id: said loudly, since the fleet then sees one node).
            let retry = async {
                if written {
                    tokio::time::sleep(CHECK_EVERY).await;
                    match session::bounded(client.clone().get(key.as_str(), None)).await {
                        Ok(r) => match r.kvs().first() {
                            None => {
                                tracing::warn!(key, "gateway record gone; writing it again");
                                false
                            }
                            Some(kv) if kv.lease() != live.lease => {
                                tracing::error!(key, node_id, "another process writes this node's gateway record: node_id must be unique in the fleet");
                                false
                            }
                            Some(_) => true,
                        },
                        Err(_) => true,
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    false
                }
            };
            tokio::select! {
                _ = session::lost(&mut sessions, live.epoch) => break,
                still = retry => written = still,
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // At most one record write per RECORD_EVERY: under a
                    // stream of config changes the record lags by under a
                    // second instead of doubling the etcd write load.
                    let wait = last_put.map_or(Duration::ZERO, |t| RECORD_EVERY.saturating_sub(t.elapsed()));
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    written = false;
                }
            }
        }
    }
}
