//! This node's etcd session: one connection and one lease kept alive, that
//! everything the node owns in etcd hangs on (its gateway record, its
//! health verdicts, its election candidacies, its ACME challenge tokens).
//! When the node dies, the lease ends and all of it goes at once.
//!
//! The session is *live* only while the node can prove the lease is alive:
//! each keep-alive answer moves a local deadline to (when the request was
//! sent + the TTL etcd granted − a safety margin). etcd counts the TTL from
//! when it *received* the request, which is later, so the deadline passes
//! on this node before the lease can have expired on the server. A lost
//! keep-alive stream, an error or a passed deadline ends the session at
//! once (not at the next failed write): every role hanging on it is given
//! up before another node can have been given it. Only durations on the
//! local monotonic clock are used, so skewed wall clocks change nothing.

use etcd_client::{Client, ConnectOptions};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::source::etcd::backoff::Backoff;
use crate::source::etcd::endpoints::Rotation;

/// The lease's TTL: how long after a node stops answering its record,
/// verdicts and roles stay.
pub const LEASE_TTL_SECS: i64 = 10;

/// Kept off the deadline, for the two clocks' rates and a slow answer.
const SAFETY_MARGIN: Duration = Duration::from_millis(1500);

/// A live session: a connected client and the lease it keeps.
#[derive(Clone)]
pub struct Live {
    pub client: Client,
    pub lease: i64,
    /// Counts sessions: a new lease is a new epoch.
    pub epoch: u64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("lease", &self.lease)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// Where the session is: watchers learn of a loss at once.
pub type SessionWatch = watch::Receiver<Option<Live>>;

/// Keeps sessions going until `stop` is dropped or says so; on the way
/// out it revokes the lease, so everything the node owns goes at once.
pub async fn run(
    endpoints: Vec<String>,
    tx: watch::Sender<Option<Live>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut rotation = Rotation::new(endpoints);
    let mut epoch = 0;
    loop {
        epoch += 1;
        let ended = tokio::select! {
            r = session(rotation.current(), epoch, &tx, &mut backoff) => r,
            _ = stopped(&mut stop) => Ended::Stopping,
        };
        let gone = tx.send_replace(None);
        match ended {
            Ended::Stopping => {
                if let Some(live) = gone {
                    let mut c = live.client.clone();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(live.lease))
                            .await;
                }
                return;
            }
            Ended::Lost(why) => {
                tracing::warn!(error = %why, endpoint = rotation.current(), "etcd session lost: roles given up, verdicts and records will expire");
                if let Some(live) = gone {
                    // Best effort: if etcd is reachable the old lease's keys
                    // go now rather than at its TTL.
                    let mut c = live.client;
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            c.lease_revoke(live.lease),
                        )
                        .await;
                    });
                }
                rotation.advance();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

enum Ended {
    Stopping,
    Lost(String),
}

async fn session(
    endpoint: &str,
    epoch: u64,
    tx: &watch::Sender<Option<Live>>,
    backoff: &mut Backoff,
) -> Ended {
    match live_session(endpoint, epoch, tx, backoff).await {
        Ok(never) => match never {},
        Err(e) => Ended::Lost(format!("{e:#}")),
    }
}

async fn live_session(
    endpoint: &str,
    epoch: u64,
    tx: &watch::Sender<Option<Live>>,
    backoff: &mut Backoff,
) -> anyhow::Result<std::convert::Infallible> {
    // No per-request timeout: a campaign waits as long as the election
    // takes (its callers bound it); writes bound themselves ([`bounded`]).
    // A dead connection is found by gRPC keep-alive pings within ~4 s.
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let mut client = Client::connect([endpoint], Some(opts)).await?;
    let asked = Instant::now();
    let granted = client.lease_grant(LEASE_TTL_SECS, None).await?;
    let lease = granted.id();
    let mut deadline = deadline_after(asked, granted.ttl());
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    tx.send_replace(Some(Live {
        client: client.clone(),
        lease,
        epoch,
    }));
    backoff.reset();
    let every = Duration::from_millis((LEASE_TTL_SECS as u64 * 1000) / 4);
    loop {
        let sent = Instant::now();
        keeper.keep_alive().await?;
        // The answer must come before the deadline: a hung stream is a
        // lost lease as far as this node can tell.
        let ack = tokio::time::timeout_at(deadline, acks.message())
            .await
            .map_err(|_| {
                anyhow::anyhow!("lease {lease:x}: no keep-alive answer before its deadline")
            })??;
        match ack {
            Some(a) if a.ttl() > 0 => deadline = deadline_after(sent, a.ttl()),
            _ => anyhow::bail!("lease {lease:x} expired on the server"),
        }
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= deadline {
            anyhow::bail!("lease {lease:x}: deadline passed");
        }
    }
}

/// When this node must consider a lease gone: `ttl` after the request that
/// renewed it was sent, less the margin.
fn deadline_after(sent: Instant, ttl_secs: i64) -> Instant {
    sent + Duration::from_secs(ttl_secs.max(0) as u64).saturating_sub(SAFETY_MARGIN)
}

/// How long one write on the session may take before it counts as failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// `call` bounded by [`WRITE_TIMEOUT`].
pub async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(WRITE_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("etcd did not answer within {WRITE_TIMEOUT:?}"),
    }
}

/// Waits until the session is live and returns it.
pub async fn wait_live(rx: &mut SessionWatch) -> Option<Live> {
    loop {
        if let Some(live) = rx.borrow_and_update().clone() {
            return Some(live);
        }
        rx.changed().await.ok()?;
    }
}

/// Resolves when `epoch`'s session is no longer live.
pub async fn lost(rx: &mut SessionWatch, epoch: u64) {
    loop {
        if rx.borrow_and_update().as_ref().map(|l| l.epoch) != Some(epoch) {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_falls_before_the_servers_expiry() {
        let t = Instant::now();
        assert_eq!(deadline_after(t, 10), t + Duration::from_millis(8500));
        assert_eq!(deadline_after(t, 1), t, "never after the send");
        assert_eq!(deadline_after(t, -1), t);
    }
}
