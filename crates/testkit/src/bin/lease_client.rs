//! `lease-client --etcd URL --key KEY --value VALUE [--ttl SECS]`: registers
//! the way most services do with an embedded etcd client (the Go
//! `clientv3` pattern): grant a lease, put the key with it, keep it alive
//! every TTL/3, revoke it on SIGTERM. Like the Go client, it gives the
//! lease up when its keep-alives go unanswered for a whole TTL, and, like
//! the services written that way, it never registers again: the process
//! stays up (and its instance healthy) with no key in etcd. For
//! bench/registry.sh: what an etcd outage longer than the TTL does to them.

use std::process::exit;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, PutOptions};
use tokio::signal::unix::{signal, SignalKind};

fn usage(msg: &str) -> ! {
    eprintln!(
        "lease-client: {msg}\nusage: lease-client --etcd URL --key KEY --value VALUE [--ttl SECS]"
    );
    exit(2)
}

fn opts() -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(Duration::from_secs(1))
}

/// One keep-alive round trip on a fresh connection (the Go client
/// reconnects under its keep-alive stream the same way).
async fn keep_alive(etcd: &str, lease: i64) -> anyhow::Result<i64> {
    let mut c = Client::connect([etcd], Some(opts())).await?;
    let (mut keeper, mut acks) = c.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    match acks.message().await? {
        Some(ack) => Ok(ack.ttl()),
        None => anyhow::bail!("keep-alive stream closed"),
    }
}

fn main() {
    let (mut etcd, mut key, mut value, mut ttl) = (None, None, None, 10i64);
    let mut flags = testkit::cli::Flags::from_env();
    while let Some((flag, inline)) = flags.next_flag() {
        let mut v = || {
            flags
                .value(&inline)
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--etcd" => etcd = Some(v()),
            "--key" => key = Some(v()),
            "--value" => value = Some(v()),
            "--ttl" => {
                ttl = v()
                    .parse()
                    .ok()
                    .filter(|t| *t > 0)
                    .unwrap_or_else(|| usage("--ttl must be a positive integer"))
            }
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let etcd = etcd.unwrap_or_else(|| usage("--etcd is required"));
    let key = key.unwrap_or_else(|| usage("--key is required"));
    let value = value.unwrap_or_else(|| usage("--value is required"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: anyhow::Result<()> = rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut c = Client::connect([&etcd], Some(opts())).await?;
        let lease = c.lease_grant(ttl, None).await?.id();
        c.put(key.as_str(), value.as_str(), Some(PutOptions::new().with_lease(lease)))
            .await?;
        eprintln!("lease-client: registered {key} on lease {lease:x} (ttl {ttl}s)");
        let period = Duration::from_millis(ttl as u64 * 1000 / 3);
        let mut last_ack = Instant::now();
        let mut given_up = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = term.recv() => break,
            }
            if given_up {
                continue;
            }
            match tokio::time::timeout(period, keep_alive(&etcd, lease)).await {
                Ok(Ok(left)) if left > 0 => last_ack = Instant::now(),
                Ok(Ok(_)) => {
                    eprintln!("lease-client: lease {lease:x} expired; not registering again");
                    given_up = true;
                }
                _ if last_ack.elapsed() >= Duration::from_secs(ttl as u64) => {
                    eprintln!("lease-client: no keep-alive answer for a TTL: lease given up, not registering again");
                    given_up = true;
                }
                _ => {}
            }
        }
        if !given_up {
            let revoke = c.lease_revoke(lease);
            let _ = tokio::time::timeout(Duration::from_secs(2), revoke).await;
            eprintln!("lease-client: revoked {lease:x}");
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("lease-client: {e}");
        exit(1);
    }
}
