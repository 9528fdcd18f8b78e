//! Graceful shutdown that ends when the last request is done, not after a
//! fixed grace period: on SIGTERM Pingora stops accepting, readiness turns
//! 503, and the process exits as soon as no request is in flight (or when
//! `proxy.shutdown_timeout_secs` runs out).

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

use crate::proxy::InFlight;

pub struct DrainOnSignal {
    pub in_flight: Arc<InFlight>,
    pub draining: Arc<AtomicBool>,
}

/// Time for Pingora to close its listeners after the signal, before an
/// idle in-flight count can mean "drained".
const SETTLE: Duration = Duration::from_millis(200);

impl DrainOnSignal {
    fn exit_when_drained(&self) {
        let in_flight = self.in_flight.clone();
        std::thread::spawn(move || {
            std::thread::sleep(SETTLE);
            let mut idle_checks = 0;
            loop {
                if in_flight.get() == 0 {
                    idle_checks += 1;
                    if idle_checks >= 3 {
                        tracing::info!("drained: no request in flight, exiting");
                        std::process::exit(0);
                    }
                } else {
                    idle_checks = 0;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; shutdown will not be graceful");
            return std::future::pending().await;
        };
        let sig = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        };
        self.draining.store(true, Ordering::Relaxed);
        if !matches!(sig, ShutdownSignal::FastShutdown) {
            tracing::info!(
                in_flight = self.in_flight.get(),
                "shutdown requested: draining"
            );
            self.exit_when_drained();
        }
        sig
    }
}
