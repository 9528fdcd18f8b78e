//! Each gateway registers itself under `<prefix>/gateways/<node-id>` with a
//! lease, so an operator sees which nodes are alive, which config revision
//! each has applied, and whether it serves a stale config (its watch lost
//! etcd while this record's connection still reaches it) or holds changes
//! for an apply under way. The record is rewritten only when one of those
//! changes: its own writes are gateway keys, which change none of them, so
//! a node never wakes itself (rule 7).

use etcd_client::{Client, ConnectOptions, PutOptions};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::endpoints::Rotation;

pub const LEASE_TTL_SECS: i64 = 10;

/// Least time between two writes of the record.
const RECORD_EVERY: Duration = Duration::from_millis(500);

/// What the node has applied, as its record tells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub config_revision: i64,
    /// Serving the last config it had while its watch cannot reach etcd.
    pub stale: bool,
    /// Holding config changes until an apply finishes.
    pub holding: bool,
}

/// What the gateway's record says.
#[derive(Debug, Clone, serde::Serialize)]
struct Record<'a> {
    node_id: &'a str,
    version: &'a str,
    config_revision: i64,
    stale: bool,
    holding: bool,
    started_unix_ms: u64,
}

/// Keeps this node's record alive; when the revision sender is dropped
/// (shutdown) it revokes the lease, so the record goes at once, and returns.
pub async fn run(
    endpoints: Vec<String>,
    key: String,
    node_id: String,
    mut applied: watch::Receiver<Applied>,
) {
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut rotation = Rotation::new(endpoints);
    loop {
        let result = session(
            rotation.current(),
            &key,
            &node_id,
            started_unix_ms,
            &mut applied,
            &mut backoff,
        )
        .await;
        match result {
            // The gateway is shutting down and the record was withdrawn.
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, key, endpoint = rotation.current(), "gateway registration lost; retrying");
                rotation.advance();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            // Shutting down while not registered: nothing to withdraw.
            Err(_) = applied.changed() => return,
        }
    }
}

async fn session(
    endpoint: &str,
    key: &str,
    node_id: &str,
    started_unix_ms: u64,
    applied: &mut watch::Receiver<Applied>,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    let mut client = Client::connect([endpoint], Some(opts)).await?;
    let lease = client.lease_grant(LEASE_TTL_SECS, None).await?.id();
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let put = |now: Applied| {
        let value = serde_json::to_string(&Record {
            node_id,
            version: env!("CARGO_PKG_VERSION"),
            config_revision: now.config_revision,
            stale: now.stale,
            holding: now.holding,
            started_unix_ms,
        })
        .unwrap_or_default();
        let mut c = client.clone();
        let key = key.to_string();
        async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
        }
    };
    let now = *applied.borrow_and_update();
    put(now).await?;
    backoff.reset();
    let mut last_put = Some(Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL_SECS / 3) as u64));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await?;
                match acks.message().await? {
                    Some(ack) if ack.ttl() > 0 => {}
                    _ => anyhow::bail!("lease {lease} expired"),
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    // The gateway is shutting down: withdraw at once.
                    let _ = client.lease_revoke(lease).await;
                    return Ok(());
                }
                // At most one record write per RECORD_EVERY: under a stream
                // of config changes the record lags by under a second
                // instead of doubling the etcd write load.
                let wait = last_put.map_or(Duration::ZERO, |t: Instant| RECORD_EVERY.saturating_sub(t.elapsed()));
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let now = *applied.borrow_and_update();
                put(now).await?;
                last_put = Some(Instant::now());
            }
        }
    }
}
