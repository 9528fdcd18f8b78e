//! `tollgate register`: the registration sidecar for services without an
//! etcd client. Holds `/services/<service>/<id>` on a lease, re-registers
//! after a lost lease or an etcd restart, withdraws while the optional
//! health URL fails, and revokes the lease on SIGTERM/SIGINT so a deploy
//! drains at once instead of waiting out the TTL.

use anyhow::Context;
use etcd_client::{Client, ConnectOptions, PutOptions};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

use crate::model::upstream::parse_node_url;
use crate::source::etcd::backoff::Backoff;
use crate::source::etcd::endpoints::Rotation;

/// What to register and how.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The service name (the route's `upstream`).
    #[arg(long)]
    pub service: String,
    /// This instance's address, `http://host:port`.
    #[arg(long)]
    pub addr: String,
    /// Instance id; defaults to `<hostname>-<port>`.
    #[arg(long)]
    pub id: Option<String>,
    /// Lease TTL in seconds: how long a crashed instance keeps traffic.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// Withdraw while GET on this URL does not answer 2xx.
    #[arg(long)]
    pub health_url: Option<String>,
    /// How often the health URL is checked, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// The etcd prefix instances register under; must match the gateways'
    /// `etcd.registry_prefix`.
    #[arg(long, default_value = "/services")]
    pub registry_prefix: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// Registers until SIGTERM/SIGINT.
pub fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let authority = parse_node_url(&args.addr)
        .map_err(|e| anyhow::anyhow!("--addr: {e}"))?
        .authority;
    if args.ttl < 2 {
        anyhow::bail!("--ttl must be at least 2 seconds");
    }
    if args.service.is_empty() || args.service.contains('/') {
        anyhow::bail!("--service must be non-empty and contain no '/'");
    }
    let port = authority.rsplit(':').next().unwrap_or("80").to_string();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{port}", hostname()));
    if id.contains('/') {
        anyhow::bail!("--id must contain no '/'");
    }
    let key = format!(
        "{}/{}/{id}",
        args.registry_prefix.trim_end_matches('/'),
        args.service
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut lease_slot: Option<(Client, i64)> = None;
        // Leases of earlier sessions that may still hold the key.
        let mut abandoned: Vec<i64> = Vec::new();
        let mut rotation = Rotation::new(args.etcd.clone());
        loop {
            let signalled = tokio::select! {
                r = session(&args, rotation.current(), &key, &mut lease_slot, &mut abandoned, &mut backoff) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, key, endpoint = rotation.current(), "registration lost; retrying");
                    }
                    false
                }
                _ = term.recv() => true,
                _ = int.recv() => true,
            };
            if !signalled {
                rotation.advance();
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Signalled, in a session or between two: a lease that may
            // still hold the key is revoked, so the key goes now.
            // So is any lease an earlier session left behind: the key may
            // still be under one of them (a session that failed before its
            // put), and it must not be left to expire.
            if let Some((mut client, lease)) = lease_slot.take() {
                for old in abandoned.drain(..).filter(|old| *old != lease) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(old)).await;
                }
                let revoke = client.lease_revoke(lease);
                match tokio::time::timeout(Duration::from_secs(3), revoke).await {
                    Ok(Ok(_)) => tracing::info!(key, "deregistered"),
                    _ => tracing::warn!(key, "could not revoke the lease; it expires by itself"),
                }
            }
            return Ok(());
        }
    })
}

/// One lease's life. Leaves the live lease in `slot` for revocation.
async fn session(
    args: &RegisterArgs,
    endpoint: &str,
    key: &str,
    slot: &mut Option<(Client, i64)>,
    abandoned: &mut Vec<i64>,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    // The lease of the last session, if it may still live (etcd came back
    // with it restored): revoked once the key is under the new lease, so
    // it does not linger until it expires. Not before: revoking it first
    // would delete the key and take the instance out of rotation.
    if let Some((_, old)) = slot.take() {
        abandoned.push(old);
    }
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    let mut client = tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {endpoint} timed out"))??;
    let lease = client.lease_grant(args.ttl, None).await?.id();
    *slot = Some((client.clone(), lease));
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let mut registered = false;
    let mut keepalive = tokio::time::interval(Duration::from_millis((args.ttl as u64 * 1000) / 3));
    let mut health = tokio::time::interval(Duration::from_millis(args.health_interval_ms.max(50)));
    loop {
        let want = match &args.health_url {
            Some(url) => crate::http_probe::url_ok(url, Duration::from_secs(2)).await,
            None => true,
        };
        if want && !registered {
            client
                .put(
                    key,
                    args.addr.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
            registered = true;
            backoff.reset();
            tracing::info!(key, addr = %args.addr, lease, "registered");
            for old in abandoned.drain(..).filter(|old| *old != lease) {
                match tokio::time::timeout(Duration::from_secs(3), client.lease_revoke(old)).await {
                    Ok(Ok(_)) => tracing::info!(key, lease = old, "revoked the abandoned lease"),
                    // Already expired (the usual case after a long outage).
                    _ => tracing::debug!(key, lease = old, "abandoned lease not revoked"),
                }
            }
        } else if !want && registered {
            client.delete(key, None).await?;
            registered = false;
            tracing::warn!(key, "health check failing: withdrawn");
        }
        tokio::select! {
            _ = keepalive.tick() => {
                keeper.keep_alive().await?;
                match acks.message().await? {
                    Some(ack) if ack.ttl() > 0 => {}
                    _ => anyhow::bail!("lease {lease} expired"),
                }
            }
            _ = health.tick(), if args.health_url.is_some() => {}
        }
    }
}
