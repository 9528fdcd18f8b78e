//! A TCP relay in front of a server (etcd), so a test can cut one client
//! off from it (a network partition of that client alone) and restore it.

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
    kill: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<free port> to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = block_on(TcpListener::bind("127.0.0.1:0")).expect("relay: bind");
        let addr = listener.local_addr().expect("relay: local addr");
        let cut = Arc::new(AtomicBool::new(false));
        let kill = watch::channel(0u64).0;
        let (c, k) = (cut.clone(), kill.clone());
        let accept = rt().spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let mut killed = k.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            kill,
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

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.kill.send_modify(|n| *n += 1);
    }
}
