//! What the gateway knows of each registry lease's remaining time, to tell
//! a lease that expired from one that was revoked. A watch delete event
//! looks the same for both (etcd revokes an expired lease the way a client
//! does), and by then the lease is gone. So each lease is asked about while
//! it lives (`LeaseTimeToLive`): a lease with `ttl` seconds left at time
//! `t` cannot expire before `t + ttl` (keep-alives only push that out).
//! A delete seen before that floor was a revoke, a deliberate
//! deregistration; one seen after it may be an expiry.
//!
//! Every lease is asked again shortly before its floor ([`MARGIN`]), so a
//! kept-alive lease always has a floor at least that far ahead and any
//! revoke lands before it: with the usual keep-alive every TTL/3, one
//! question per lease every ~TTL/2 (10 s leases: every ~4.5 s). Questions
//! are capped at [`MAX_PER_SEC`]; past ~2,000 leases of 10 s the floors
//! lag and a revoke may be read as an expiry (then self-preservation's
//! probe, not the classification, takes a stopped instance out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::Client;
use futures_util::StreamExt;

/// A lease is asked again this long before its floor.
pub const MARGIN: Duration = Duration::from_secs(2);
/// Least time between two questions about one lease.
const MIN_GAP: Duration = Duration::from_millis(500);
/// Questions per second, at most.
pub const MAX_PER_SEC: usize = 500;
/// Questions in flight at once.
const IN_FLIGHT: usize = 16;
/// One question's longest wait.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// How a lease's key came to be deleted, as far as can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Before the lease could have run out: a revoke (or a delete).
    Revoked,
    /// At or after the lease's floor: it may have expired. Carries the
    /// lease's granted TTL.
    Expired { ttl: Duration },
    /// Never asked about (registered and gone within a moment, or etcd
    /// was never reachable since): not taken for an expiry.
    Unknown,
}

#[derive(Debug)]
struct Lease {
    /// Registry keys under this lease.
    keys: u32,
    /// The lease cannot expire before this.
    floor: Option<Instant>,
    granted: Duration,
    next_check: Instant,
}

/// The leases of registry keys, shared by the watch loop (which attaches,
/// detaches and classifies) and the checker task (which asks etcd).
#[derive(Debug, Clone, Default)]
pub struct LeaseBook(Arc<Mutex<HashMap<i64, Lease>>>);

impl LeaseBook {
    fn book(&self) -> MutexGuard<'_, HashMap<i64, Lease>> {
        // A panic elsewhere while holding it leaves plain data: go on.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A registry key now carries `lease`.
    pub fn attach(&self, lease: i64) {
        self.book()
            .entry(lease)
            .or_insert_with(|| Lease {
                keys: 0,
                floor: None,
                granted: Duration::ZERO,
                next_check: Instant::now(),
            })
            .keys += 1;
    }

    /// A registry key no longer carries `lease`.
    pub fn detach(&self, lease: i64) {
        let mut book = self.book();
        if let Some(l) = book.get_mut(&lease) {
            l.keys = l.keys.saturating_sub(1);
            if l.keys == 0 {
                book.remove(&lease);
            }
        }
    }

    /// How a key under `lease`, deleted now, most likely went.
    pub fn classify(&self, lease: i64, now: Instant) -> Ending {
        match self.book().get(&lease) {
            Some(Lease {
                floor: Some(floor),
                granted,
                ..
            }) => {
                if now < *floor {
                    Ending::Revoked
                } else {
                    Ending::Expired { ttl: *granted }
                }
            }
            _ => Ending::Unknown,
        }
    }

    /// After a (re)connect or a re-list every floor may be stale (keep-alives
    /// or revokes happened unseen): forget them and ask about all now. Until
    /// a lease is answered again its delete is `Unknown`, never an expiry.
    pub fn recheck_all(&self) {
        let now = Instant::now();
        for l in self.book().values_mut() {
            l.floor = None;
            l.next_check = now;
        }
    }

    /// Leases whose remaining time is known (have a floor).
    pub fn known(&self) -> usize {
        self.book().values().filter(|l| l.floor.is_some()).count()
    }

    /// Up to `max` leases due for a question, and when the next one is due.
    fn due(&self, now: Instant, max: usize) -> (Vec<i64>, Option<Instant>) {
        let book = self.book();
        let due: Vec<i64> = (book.iter())
            .filter(|(_, l)| l.next_check <= now)
            .map(|(id, _)| *id)
            .take(max)
            .collect();
        let next = book.values().map(|l| l.next_check).min();
        (due, next)
    }

    /// Marks `leases` as being asked (so the next round does not ask again).
    fn asking(&self, leases: &[i64], now: Instant) {
        let mut book = self.book();
        for id in leases {
            if let Some(l) = book.get_mut(id) {
                l.next_check = now + Duration::from_secs(1);
            }
        }
    }

    /// Records an answer asked for at `asked`: `ttl` seconds left of
    /// `granted` (`ttl` < 0: the lease is gone).
    fn answered(&self, lease: i64, asked: Instant, ttl: i64, granted: i64) {
        let mut book = self.book();
        let Some(l) = book.get_mut(&lease) else {
            return;
        };
        if ttl < 0 {
            // Gone: its delete event is on the way. The floor stays.
            l.next_check = asked + Duration::from_secs(3600);
            return;
        }
        // etcd rounds the seconds left down, and the question left at
        // `asked`: the floor is never later than the real expiry.
        let floor = asked
            .checked_add(Duration::from_secs(ttl as u64))
            .unwrap_or(asked);
        l.floor = Some(l.floor.map_or(floor, |f| f.max(floor)));
        l.granted = Duration::from_secs(granted.max(0) as u64);
        l.next_check = floor
            .checked_sub(MARGIN)
            .unwrap_or(asked)
            .max(asked + MIN_GAP);
    }
}

/// Asks etcd about due leases until the connection fails (the caller's
/// session ends and aborts it).
pub async fn check(book: LeaseBook, client: Client) {
    let mut window_start = Instant::now();
    let mut asked_in_window = 0usize;
    loop {
        let now = Instant::now();
        if now.duration_since(window_start) >= Duration::from_secs(1) {
            window_start = now;
            asked_in_window = 0;
        }
        let room = MAX_PER_SEC.saturating_sub(asked_in_window);
        let (due, next) = book.due(now, room);
        if due.is_empty() {
            let wake = if room == 0 {
                window_start + Duration::from_secs(1)
            } else {
                // New leases are due at once: look again soon.
                next.map_or(now + Duration::from_millis(250), |t| {
                    t.min(now + Duration::from_millis(250))
                })
            };
            tokio::time::sleep_until(wake.max(now + Duration::from_millis(20)).into()).await;
            continue;
        }
        asked_in_window += due.len();
        book.asking(&due, now);
        // Each answer is recorded as it comes; a question that hangs (a slow
        // leader) is given up after ASK_TIMEOUT, not waited for by the rest.
        let mut answers = futures_util::stream::iter(due)
            .map(|id| {
                let mut leases = client.lease_client();
                async move {
                    let asked = Instant::now();
                    let answer =
                        tokio::time::timeout(ASK_TIMEOUT, leases.time_to_live(id, None)).await;
                    (id, asked, answer)
                }
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some((id, asked, answer)) = answers.next().await {
            match answer {
                Ok(Ok(r)) => {
                    crate::metrics::METRICS.lease_checks.inc();
                    book.answered(id, asked, r.ttl(), r.granted_ttl());
                }
                Ok(Err(e)) => tracing::debug!(lease = id, error = %e, "lease time-to-live failed"),
                Err(_) => tracing::debug!(lease = id, "lease time-to-live timed out"),
            }
        }
        crate::metrics::METRICS
            .leases_known
            .set(book.known() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_before_the_floor_is_a_revoke_and_after_it_may_be_an_expiry() {
        let book = LeaseBook::default();
        let t0 = Instant::now();
        assert_eq!(book.classify(7, t0), Ending::Unknown);
        book.attach(7);
        assert_eq!(book.classify(7, t0), Ending::Unknown, "never asked");
        book.answered(7, t0, 9, 10);
        assert_eq!(
            book.classify(7, t0 + Duration::from_secs(8)),
            Ending::Revoked
        );
        assert_eq!(
            book.classify(7, t0 + Duration::from_secs(9)),
            Ending::Expired {
                ttl: Duration::from_secs(10)
            }
        );
        // An older answer never pulls the floor back.
        book.answered(7, t0, 3, 10);
        assert_eq!(
            book.classify(7, t0 + Duration::from_secs(8)),
            Ending::Revoked
        );
    }

    #[test]
    fn a_lease_is_asked_again_before_its_floor_and_forgotten_with_its_last_key() {
        let book = LeaseBook::default();
        let t0 = Instant::now();
        book.attach(1);
        book.attach(1);
        let (due, _) = book.due(t0 + MIN_GAP, 10);
        assert_eq!(due, [1], "a new lease is due at once");
        book.asking(&due, t0);
        book.answered(1, t0, 10, 10);
        let (due, next) = book.due(t0 + Duration::from_secs(1), 10);
        assert!(due.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(10) - MARGIN));
        book.recheck_all();
        assert_eq!(book.due(Instant::now(), 10).0, [1]);
        assert_eq!(
            book.classify(1, t0),
            Ending::Unknown,
            "a stale floor is forgotten"
        );
        assert_eq!(book.known(), 0);
        book.answered(1, t0, 10, 10);
        assert_eq!(book.known(), 1);
        book.detach(1);
        assert_ne!(book.classify(1, t0), Ending::Unknown, "one key left");
        book.detach(1);
        assert_eq!(book.classify(1, t0), Ending::Unknown, "forgotten");
    }
}
