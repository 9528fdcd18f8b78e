//! A TCP relay in front of a server (etcd, a gateway), so a test can cut
//! one client off from it (a network partition of that client alone),
//! make it a black hole (connections accepted, nothing relayed: a peer
//! that hangs) and restore it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rt::{block_on, rt};

pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    kill: watch::Sender<u64>,
    frozen: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    /// Relays `listen` (e.g. a port another server was told to use) to
    /// `target`.
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> Relay {
        let listener = block_on(TcpListener::bind(listen)).expect("relay: bind");
        let addr = listener.local_addr().expect("relay: local addr");
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let kill = watch::channel(0u64).0;
        let frozen = watch::channel(false).0;
        let target = Arc::new(std::sync::Mutex::new(target));
        let (c, s, k, t, f) = (
            cut.clone(),
            stalled.clone(),
            kill.clone(),
            target.clone(),
            frozen.clone(),
        );
        let accept = rt().spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let mut killed = k.subscribe();
                if s.load(Ordering::SeqCst) {
                    // Held open, never answered, until restored or dropped.
                    tokio::spawn(async move {
                        let _ = killed.changed().await;
                        drop(down);
                    });
                    continue;
                }
                let target = *t.lock().unwrap_or_else(|e| e.into_inner());
                let mut freeze = f.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(target).await else {
                        return;
                    };
                    let frozen = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => false,
                        _ = killed.changed() => false,
                        _ = freeze.wait_for(|f| *f) => true,
                    };
                    if frozen {
                        // A black hole: the client's connection stays open
                        // and silent (no reset, no close) until restored.
                        drop(up);
                        let _ = killed.changed().await;
                        drop(down);
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            stalled,
            target,
            kill,
            frozen,
            accept,
        }
    }

    /// `http://127.0.0.1:<port>`, to give a client as its endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every relayed connection and refuses new ones until restored.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.kill.send_modify(|n| *n += 1);
    }

    /// New connections are accepted and held without an answer (a peer
    /// that hangs) until [`Relay::restore`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// A partition that drops packets rather than refusing: every relayed
    /// connection goes silent (open, no reset) and new ones are held
    /// unanswered, until [`Relay::restore`].
    pub fn freeze(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.frozen.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.frozen.send_replace(false);
        if self.stalled.swap(false, Ordering::SeqCst) {
            self.kill.send_modify(|n| *n += 1);
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.kill.send_modify(|n| *n += 1);
    }
}
