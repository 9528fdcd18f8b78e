//! The deadline on a wait (an upstream's response, a client's next
//! request), on a timer reused per thread.
//!
//! `tokio::time::timeout` registers a timer in the runtime's wheel when
//! its future has to wait, and takes it out again when dropped: a lock
//! each way, ~1,200 instructions for every response, which nearly always
//! has to be waited for. A timer kept from an earlier wait and moved to a
//! later deadline is only an atomic update (tokio re-files it lazily when
//! its old slot comes up). Each proxy thread keeps a few spare timers,
//! like its idle upstream connections ([`crate::proxy::upstream_pool`]),
//! and on the same terms: a thread stays on its own runtime.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;
use tokio::time::{sleep_until, Instant, Sleep};

use super::spares::{self, Spares};

/// Spare timers a thread keeps: one per wait in progress at a time is
/// what it uses, so a few dozen cover a busy thread.
const SPARES: usize = 64;

thread_local! {
    static SPARE: Spares<Pin<Box<Sleep>>> = const { RefCell::new(Vec::new()) };
}

/// A timer taken from the spares, given back when the wait ends or is
/// dropped (a client that went away cancels the wait).
struct Lease(Option<Pin<Box<Sleep>>>);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(timer) = self.0.take() {
            spares::give(&SPARE, timer, SPARES);
        }
    }
}

/// `fut`, or `None` once `timeout` has passed first.
pub async fn within<F: Future>(timeout: Duration, fut: F) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let taken = spares::take(&SPARE);
    let mut lease = Lease(None);
    let timer = match taken {
        Some(mut timer) => {
            timer.as_mut().reset(deadline);
            lease.0.insert(timer)
        }
        None => lease.0.insert(Box::pin(sleep_until(deadline))),
    };
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spares() -> usize {
        spares::count(&SPARE)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_deadline_and_leaves_its_timer_for_the_next() {
        let never = std::future::pending::<()>();
        let start = Instant::now();
        assert_eq!(within(Duration::from_secs(5), never).await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(spares(), 1);

        // The reused timer, moved to a later deadline, still fires there.
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(20));
        assert_eq!(within(Duration::from_secs(7), slow).await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(7));

        // And to an earlier one than it had.
        let start = Instant::now();
        let fast = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            42
        };
        assert_eq!(within(Duration::from_secs(3), fast).await, Some(42));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let start = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(within(Duration::from_millis(500), never).await, None);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(spares(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_its_timer_back() {
        let before = spares();
        {
            let wait = within(Duration::from_secs(5), std::future::pending::<()>());
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
        assert_eq!(spares(), before + 1);
    }
}
