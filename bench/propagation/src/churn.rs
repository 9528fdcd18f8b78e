//! The etcd churn writer: route updates at a steady rate in the background,
//! under the watched prefix or under one the gateway does not watch.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testkit::rt::{block_on, rt};
use testkit::EtcdClient;

use crate::keyspace::table_route;

/// Background writer of `per_sec` route updates per second to routes
/// `r0..r<routes>`; each update changes the route's JSON (its read timeout).
pub struct Churn {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    max_rev: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    /// `first` numbers the first update: every update writes a value no
    /// earlier one wrote (an unchanged value would be a no-op). Keys go
    /// under `prefix` (`ROUTES`, or `UNWATCHED` for the control window).
    pub fn start(
        c: &EtcdClient,
        prefix: &'static str,
        routes: usize,
        per_sec: u64,
        first: u64,
    ) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let max_rev = Arc::new(AtomicI64::new(0));
        let (c, s, d, m) = (c.clone(), stop.clone(), done.clone(), max_rev.clone());
        let task = rt().spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = first as usize;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                // A stride co-prime with most table sizes spreads the edits.
                let j = (n * 7919) % routes;
                let key = format!("{prefix}r{j}");
                let value = table_route(j, Some(10_000 + n as u64));
                let (c, d, m) = (c.clone(), d.clone(), m.clone());
                tasks.spawn(async move {
                    let rev = c
                        .run_async("churn put", |mut cl| {
                            let (k, v) = (key.clone(), value.clone());
                            async move {
                                let r = cl.put(k, v, None).await?;
                                Ok(r.header().map_or(0, |h| h.revision()))
                            }
                        })
                        .await;
                    m.fetch_max(rev, Ordering::Relaxed);
                    d.fetch_add(1, Ordering::Relaxed);
                });
                while tasks.try_join_next().is_some() {}
                n += 1;
            }
            while tasks.join_next().await.is_some() {}
        });
        Churn {
            stop,
            done,
            max_rev,
            task,
        }
    }

    /// Stops writing; (updates acknowledged, highest revision written).
    pub fn stop(self) -> (u64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = block_on(self.task);
        (
            self.done.load(Ordering::Relaxed),
            self.max_rev.load(Ordering::Relaxed),
        )
    }
}
