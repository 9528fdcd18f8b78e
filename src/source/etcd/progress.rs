//! When a watch progress answer may count as applied.
//!
//! etcd before 3.4.24 and 3.5.0–3.5.7 (Debian ships 3.4.23) answers a
//! progress request out of band with the events (etcd #15220): the answer
//! can overtake events the server has already queued for the stream. Taken
//! at once, its revision would be reported in `/status` (sync rule 7) a few
//! milliseconds before those events are applied, and a client that waits
//! for the revision and then sends a request could find the old route.
//! On those versions an answer is held for [`HOLD`]: the events it may
//! have overtaken arrive meanwhile and move the revision themselves; what
//! is left of the answer counts once the hold is over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a progress answer is held on an etcd that may send it ahead of
/// queued events. Those events are already on their way when the answer
/// is sent, so they arrive within milliseconds; the margin is for a loaded
/// host. The reported revision of a stream that no change touched lags by
/// this much on those versions.
pub const HOLD: Duration = Duration::from_millis(100);

/// Whether the etcd server of `version` (`"3.4.23"`) may send a progress
/// answer ahead of queued events. Unknown or unparsable versions are
/// treated as affected: holding costs only a little latency.
pub fn may_overtake(version: &str) -> bool {
    let mut parts = version.trim().split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    match (major, minor) {
        (3, 4) => patch < 24,
        (3, 5) => patch < 8,
        (3, m) => m < 4,
        (m, _) => m < 3,
    }
}

/// Progress answers not yet counted, oldest first.
#[derive(Debug, Default)]
pub struct Held(VecDeque<(i64, Instant)>);

impl Held {
    /// Holds an answer at `revision` until `due`.
    pub fn hold(&mut self, revision: i64, due: Instant) {
        self.0.push_back((revision, due));
    }

    /// Counts the answers whose hold is over: `applied` moves up to them.
    pub fn release(&mut self, applied: &mut i64, now: Instant) {
        while let Some(&(revision, due)) = self.0.front() {
            if due > now {
                break;
            }
            *applied = (*applied).max(revision);
            self.0.pop_front();
        }
    }

    /// Drops the answers that events have already overtaken.
    pub fn forget_up_to(&mut self, applied: i64) {
        self.0.retain(|&(revision, _)| revision > applied);
    }

    /// When the next held answer counts.
    pub fn next_due(&self) -> Option<Instant> {
        self.0.front().map(|&(_, due)| due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_the_out_of_band_answer_are_recognised() {
        for v in [
            "3.4.23", "3.4.0", "3.5.7", "3.3.25", "2.3.8", "", "garbage", "3.4",
        ] {
            assert!(may_overtake(v), "{v}");
        }
        for v in [
            "3.4.24",
            "3.4.34",
            "3.5.8",
            "3.5.17",
            "3.6.0",
            "3.6.1-rc.0",
            "4.0.0",
        ] {
            assert!(!may_overtake(v), "{v}");
        }
    }

    #[test]
    fn a_held_answer_counts_only_once_its_hold_is_over() {
        let t0 = Instant::now();
        let mut held = Held::default();
        let mut applied = 10;
        held.hold(15, t0 + HOLD);
        held.release(&mut applied, t0);
        assert_eq!(applied, 10, "not yet");
        assert_eq!(held.next_due(), Some(t0 + HOLD));
        held.release(&mut applied, t0 + HOLD);
        assert_eq!(applied, 15);
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn answers_are_released_in_order_and_events_overtaking_them_drop_them() {
        let t0 = Instant::now();
        let mut held = Held::default();
        held.hold(12, t0 + HOLD);
        held.hold(20, t0 + HOLD * 2);
        // The events the first answer overtook arrive: 13 applied.
        let mut applied = 13;
        held.forget_up_to(applied);
        assert_eq!(held.next_due(), Some(t0 + HOLD * 2));
        held.release(&mut applied, t0 + HOLD);
        assert_eq!(applied, 13, "the second answer is still held");
        held.release(&mut applied, t0 + HOLD * 2);
        assert_eq!(applied, 20);
    }

    #[test]
    fn a_release_never_moves_the_revision_back() {
        let t0 = Instant::now();
        let mut held = Held::default();
        held.hold(5, t0);
        let mut applied = 9;
        held.release(&mut applied, t0);
        assert_eq!(applied, 9);
    }
}
