//! Drops idle per-client buckets once a second, off the request path.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

pub struct Sweeper;

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let evicted = tokio::task::spawn_blocking(|| super::sweep_all(super::now_ns()))
                .await
                .unwrap_or(0);
            if evicted > 0 {
                tracing::debug!(evicted, "idle rate-limit buckets dropped");
            }
        }
    }
}
