//! Graceful shutdown that ends when the last request is done, not after a
//! fixed grace period: on SIGTERM Pingora stops accepting, readiness turns
//! 503, and the process exits as soon as no request is in flight and no
//! client connection is open (or when `proxy.shutdown_timeout_secs` runs
//! out). Idle keep-alive connections are closed when the listeners close;
//! one accepted just before gets its request read first (`proxy::Connections`).
//!
//! On SIGQUIT (upgrade) Pingora first hands its listening sockets to the
//! new process and keeps accepting on them for a few seconds while the new
//! process picks them up; only then does it stop accepting. The drain is
//! counted from that moment (Pingora's `ShutdownStarted` phase), never from
//! the signal: exiting earlier drops the connections this process is still
//! accepting and, until the new process has taken the sockets, leaves
//! nobody accepting at all.

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

use crate::proxy::InFlight;

pub struct DrainOnSignal {
    pub in_flight: Arc<InFlight>,
    /// Open client connections of the proxy listeners.
    pub connections: Arc<InFlight>,
    pub draining: Arc<AtomicBool>,
    /// Pingora's execution phases (`Server::watch_execution_phase`), to
    /// start counting the drain once it has stopped accepting.
    pub phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

/// Blocks until Pingora has stopped accepting (or can no longer say).
fn wait_until_not_accepting(phases: Option<broadcast::Receiver<ExecutionPhase>>) {
    let Some(mut phases) = phases else { return };
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownStarted) | Err(broadcast::error::RecvError::Closed) => {
                return
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        }
    }
}

/// Time for Pingora to close its listeners once it stops accepting, and for
/// a connection accepted just before to reach the proxy app (from then on
/// it counts in `connections`), before idle counts can mean "drained".
const SETTLE: Duration = Duration::from_millis(500);

impl DrainOnSignal {
    fn exit_when_drained(&self) {
        let in_flight = self.in_flight.clone();
        let connections = self.connections.clone();
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner()).take();
        std::thread::spawn(move || {
            wait_until_not_accepting(phases);
            std::thread::sleep(SETTLE);
            let mut idle_checks = 0;
            loop {
                if in_flight.get() == 0 && connections.get() == 0 {
                    idle_checks += 1;
                    if idle_checks >= 3 {
                        tracing::info!(
                            "drained: no request in flight, no connection open, exiting"
                        );
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
                connections = self.connections.get(),
                "shutdown requested: draining"
            );
            self.exit_when_drained();
        }
        sig
    }
}
