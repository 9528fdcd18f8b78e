//! A one-second tick on every proxy thread's runtime, so arming an upstream
//! timeout never has to wake that runtime's driver through its eventfd.
//!
//! Upstream timeouts of a second or more run on tokio's timer wheel
//! (`src/cmd/run.rs`). Tokio remembers, when its thread parks, the earliest
//! deadline it will wake for; a timer armed with an earlier deadline than
//! that makes it write to its eventfd (a syscall, and an extra turn of the
//! event loop), parked or not. Between requests the only timers left are the
//! pooled connections' idle timeouts (60 s by default), so every read
//! timeout (30 s) armed next was earlier: one `write` per request. With this
//! tick pending, the earliest deadline is always under a second away, and
//! no timeout of a second or more is earlier. Measured under wrk: 0.9 -> 0
//! `write` calls per request (`perf stat -e syscalls:sys_enter_write`).
//!
//! Each tick also sweeps the thread's idle upstream connections
//! ([`super::upstream_pool`]).

use std::cell::Cell;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static STARTED: Cell<bool> = const { Cell::new(false) };
}

/// Starts this thread's tick on first use; after that, one thread-local
/// read. Outside a tokio runtime (unit tests) it does nothing.
#[inline]
pub fn ensure_started() {
    if STARTED.get() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    STARTED.set(true);
    rt.spawn(async {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            super::upstream_pool::sweep();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_it_does_nothing() {
        std::thread::spawn(|| {
            ensure_started();
            assert!(!STARTED.get());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn one_tick_per_thread_however_many_requests() {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..3 {
                    ensure_started();
                }
                assert!(STARTED.get());
                assert_eq!(
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks(),
                    1
                );
            });
        })
        .join()
        .unwrap();
    }
}
