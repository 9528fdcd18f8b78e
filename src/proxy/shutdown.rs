//! A one-time stop notice many waiters select on: the core engine's idle
//! keep-alive connections (closed at once on graceful shutdown, as
//! pingora-proxy's `HttpProxy` does, instead of being left to the client or
//! the keep-alive timeout) and [`super::Connections`]' silent new ones.
//!
//! One `Notify` per worker thread (rounded up to a power of two): waiting
//! registers with the current thread's shard, so connections on different
//! threads never touch the same waiter list; shutdown wakes every shard.

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use tokio::sync::Notify;

/// Shards beyond this share (bounded padding on very large hosts).
const MAX_SHARDS: usize = 256;

/// Keeps each shard's waiter list on its own cache line.
#[repr(align(128))]
struct Shard(Notify);

pub struct Shutdown {
    shards: Box<[Shard]>,
    fired: AtomicBool,
}

impl Shutdown {
    pub fn new(threads: usize) -> Self {
        let n = threads
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SHARDS)
            .min(MAX_SHARDS);
        Self {
            shards: (0..n).map(|_| Shard(Notify::new())).collect(),
            fired: AtomicBool::new(false),
        }
    }

    fn local(&self) -> &Notify {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static ID: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let id = ID.with(|id| *id);
        // The shard count is a power of two.
        &self.shards[id & (self.shards.len() - 1)].0
    }

    /// Whether the service has stopped.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once [`Shutdown::fire`] has run. The waiter registers before
    /// the flag is read, so a shutdown in between is not missed.
    pub async fn wait(&self) {
        let notified = self.local().notified();
        tokio::pin!(notified);
        poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() || self.fired() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Wakes every connection waiting for a request.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            shard.0.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_wake_on_fire_and_later_waits_return_at_once() {
        let s = Arc::new(Shutdown::new(3));
        assert_eq!(s.shards.len(), 4);
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.fire();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(1), s.wait())
            .await
            .expect("already fired");
    }
}
