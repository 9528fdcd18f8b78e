//! The core engine's idle HTTP/1.1 upstream connections, kept per thread.
//!
//! pingora-core's pool puts each released connection behind an
//! `Arc<Mutex>` in a locked LRU and spawns a task per release to watch it
//! (a timer armed and a task woken for every request); taking one back
//! checks its peer address with a `getpeername` call. Under wrk that was
//! 8.8 % of the CPU per proxied request (bench/README.md, "Per-core cost").
//! Here each proxy thread keeps its own idle connections in a plain map: a
//! release is a push, a take is a pop and a read that does not block (no
//! syscall unless the socket has news), which tells a connection the
//! upstream closed or wrote to from a clean one. Those idle past their
//! `idle` timeout or closed by the upstream are closed within a second: by
//! the thread's one-second tick ([`super::timer_tick`]), and by the next
//! release on the thread a second after the last sweep (with work stealing
//! on, a tick task may not run on every thread).
//!
//! Bounded like nginx's `keepalive` (per worker): `proxy.keepalive_pool`
//! idle connections per process, shared out evenly between the proxy
//! threads; past it, the one whose idle timeout ends first is closed.

use super::upstream_h1::Transport;
use ahash::AHashMap;
use futures_util::FutureExt;
use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often a thread's idle connections are looked over.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle connections one thread keeps (all upstreams together).
static PER_THREAD: AtomicUsize = AtomicUsize::new(128);

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle {
        by_peer: AHashMap::default(),
        count: 0,
        swept: Instant::now(),
        // Read once per thread: `configure` runs before the proxy threads start.
        cap: PER_THREAD.load(Ordering::Relaxed),
    });
}

/// Sets the bound: `per_process` idle connections over `threads` threads
/// (for the threads that start after).
pub fn configure(per_process: usize, threads: usize) {
    PER_THREAD.store(per_process.div_ceil(threads.max(1)), Ordering::Relaxed);
}

/// The pool key of a plain `http://` node: its address, since nothing
/// else (no TLS, no ALPN) tells two of its connections apart; hashed apart
/// from the `Peer::reuse_hash` keys of the others.
pub fn plain_key(addr: SocketAddr) -> u64 {
    let mut h = ahash::AHasher::default();
    ("plain http/1.1", addr).hash(&mut h);
    h.finish()
}

/// An idle connection to the upstream `key` stands for ([`plain_key`], or
/// for a TLS or HTTP/2 node its `Peer::reuse_hash`: address, TLS and SNI
/// settings), the one kept longest-idle reused last.
pub fn take(key: u64) -> Option<Transport> {
    let now = Instant::now();
    IDLE.with_borrow_mut(|idle| {
        let conns = idle.by_peer.get_mut(&key)?;
        while let Some(mut conn) = conns.pop() {
            idle.count -= 1;
            if conn.until > now && still_clean(&mut conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Keeps `stream` (its response read whole) for reuse until `idle` passes.
pub fn put(key: u64, stream: Transport, idle: Option<Duration>) {
    let idle = idle.unwrap_or(Duration::from_secs(60));
    if idle.is_zero() {
        return;
    }
    let now = Instant::now();
    let until = now + idle;
    IDLE.with_borrow_mut(|pool| {
        if pool.cap == 0 {
            return;
        }
        if now >= pool.swept + SWEEP_EVERY {
            pool.sweep(now);
        }
        if pool.count >= pool.cap {
            pool.close_oldest();
        }
        pool.count += 1;
        pool.by_peer
            .entry(key)
            .or_default()
            .push(IdleConn { stream, until });
    });
}

/// Closes this thread's connections idle past their timeout or closed (or
/// written to) by the upstream. Run by the thread's tick every second.
pub fn sweep() {
    let now = Instant::now();
    IDLE.with_borrow_mut(|pool| pool.sweep(now));
}

/// Idle connections this thread holds.
#[cfg(test)]
fn held() -> usize {
    IDLE.with_borrow(|pool| pool.count)
}

/// This thread's bound (tests run in parallel: not the global one).
#[cfg(test)]
fn set_cap(cap: usize) {
    IDLE.with_borrow_mut(|pool| pool.cap = cap);
}

struct Idle {
    by_peer: AHashMap<u64, Vec<IdleConn>>,
    count: usize,
    /// When they were last looked over.
    swept: Instant,
    /// At most this many held.
    cap: usize,
}

struct IdleConn {
    stream: Transport,
    until: Instant,
}

impl Idle {
    fn sweep(&mut self, now: Instant) {
        let mut count = 0;
        self.by_peer.retain(|_, conns| {
            conns.retain_mut(|c| c.until > now && still_clean(&mut c.stream));
            count += conns.len();
            !conns.is_empty()
        });
        self.count = count;
        self.swept = now;
    }

    /// Closes the connection with the earliest deadline (the pool is full).
    fn close_oldest(&mut self) {
        let oldest = self
            .by_peer
            .iter()
            .filter_map(|(key, conns)| conns.first().map(|c| (c.until, *key)))
            .min();
        if let Some((_, key)) = oldest {
            if let Some(conns) = self.by_peer.get_mut(&key) {
                conns.remove(0);
                self.count -= 1;
                if conns.is_empty() {
                    self.by_peer.remove(&key);
                }
            }
        }
    }
}

/// An idle upstream connection has nothing to say: a read that would block
/// means it is still open and clean; end of stream, bytes (an upstream
/// that sent more than its response) or an error mean it is not reusable.
fn still_clean(stream: &mut Transport) -> bool {
    let mut byte = [0u8; 1];
    // Unconstrained: the cooperative budget must not turn a ready read
    // into "pending" (and so a closed connection into a clean one).
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection as the engine opens one to a plain node, and its peer.
    async fn pair() -> (Transport, TcpStream) {
        let (client, server) = tcp_pair().await;
        (Transport::Tcp(client), server)
    }

    /// A connection as pingora-core's connector opens one (a TLS node's).
    async fn pingora_pair() -> (Transport, TcpStream) {
        let (client, server) = tcp_pair().await;
        let client: pingora::protocols::l4::stream::Stream = client.into();
        (Transport::Pingora(Box::new(client)), server)
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Waits (a bounded number of turns) until the reactor has seen what
    /// the peer did to the socket.
    async fn settle() {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn the_process_bound_is_shared_out_between_threads() {
        configure(256, 3);
        assert_eq!(PER_THREAD.load(Ordering::Relaxed), 86);
        configure(0, 4);
        assert_eq!(PER_THREAD.load(Ordering::Relaxed), 0);
        configure(128, 1);
    }

    #[test]
    fn a_clean_connection_is_reused_and_a_closed_or_chatty_one_is_not() {
        clean_closed_chatty(false);
        clean_closed_chatty(true);
    }

    fn clean_closed_chatty(pingoras: bool) {
        std::thread::spawn(move || {
            rt().block_on(async move {
                let pair = || async move {
                    if pingoras {
                        pingora_pair().await
                    } else {
                        pair().await
                    }
                };
                set_cap(16);
                let (clean, _keep) = pair().await;
                let (closed, peer_closed) = pair().await;
                let (chatty, mut peer_chatty) = pair().await;
                put(1, clean, None);
                put(2, closed, None);
                put(3, chatty, None);
                drop(peer_closed);
                peer_chatty.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
                settle().await;
                assert!(take(2).is_none(), "closed by the upstream");
                assert!(take(3).is_none(), "bytes nobody asked for");
                assert!(take(1).is_some(), "clean");
                assert!(take(1).is_none(), "taken once");
                assert_eq!(held(), 0);
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn past_its_idle_timeout_or_the_bound_a_connection_is_closed() {
        std::thread::spawn(|| {
            rt().block_on(async {
                set_cap(2);
                let (a, _pa) = pair().await;
                let (b, _pb) = pair().await;
                let (c, _pc) = pair().await;
                put(1, a, Some(Duration::from_millis(1)));
                put(2, b, Some(Duration::from_secs(60)));
                // Full: the earliest deadline (a) makes room for c.
                put(2, c, Some(Duration::from_secs(60)));
                assert_eq!(held(), 2);
                assert!(take(1).is_none(), "evicted");
                let (d, _pd) = pair().await;
                put(3, d, Some(Duration::from_millis(1)));
                assert_eq!(held(), 2, "b was evicted for d");
                settle().await;
                sweep();
                assert_eq!(held(), 1, "d is past its idle timeout");
                assert!(take(2).is_some());
                // A release a second after the last sweep sweeps first.
                let (f, _pf) = pair().await;
                put(5, f, Some(Duration::from_millis(1)));
                settle().await;
                IDLE.with_borrow_mut(|pool| pool.swept -= SWEEP_EVERY);
                let (g, _pg) = pair().await;
                put(6, g, None);
                assert_eq!(held(), 1, "f, past its timeout, went at g's release");
                assert!(take(6).is_some());
                // No idle timeout of zero: such a connection is not kept.
                let (e, _pe) = pair().await;
                put(4, e, Some(Duration::ZERO));
                assert_eq!(held(), 0);
            });
        })
        .join()
        .unwrap();
    }
}
