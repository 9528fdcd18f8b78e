//! Holding config changes while a multi-transaction apply writes, so that a
//! gateway never serves half of one. `tollgate apply` keeps a leased marker
//! under `<prefix>/batches/<apply>` while it writes more than one
//! transaction; from the marker's put to its delete (the apply's end, or its
//! lease expiring when the apply died) config events are queued instead of
//! applied, then replayed in order and published at once. Registry events
//! are never held: an instance's death must still take effect at once.
//!
//! Bounded both ways: a hold ends after [`HOLD_AT_MOST`] or
//! [`MAX_HELD_EVENTS`] events whatever the markers say (then the node serves
//! what etcd has, as it would without a marker), and a re-list ends it (the
//! listing is the whole truth; a marker listed holds only what follows).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::metrics::METRICS;

/// Longest a node holds config changes for one run of applies.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(60);
/// Most config events held; a bigger apply is served as it lands.
pub const MAX_HELD_EVENTS: usize = 200_000;

/// A config event waiting for the apply to finish.
#[derive(Debug)]
pub enum Held {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
        rev: i64,
    },
    Delete {
        key: String,
        rev: i64,
    },
}

#[derive(Debug, Default)]
pub struct BatchHold {
    /// Applies under way (marker ids).
    markers: BTreeSet<String>,
    /// When this node began holding, if it is.
    since: Option<Instant>,
    /// The hold ended by a bound while markers remain: do not hold again
    /// until they are all gone.
    gave_up: bool,
    /// The last revision applied before the hold: what is reported applied.
    before: i64,
    queue: Vec<Held>,
}

impl BatchHold {
    pub fn holding(&self) -> bool {
        self.since.is_some()
    }

    /// A marker appeared at `revision` (during a listing: only noted).
    pub fn marker_put(&mut self, id: &str, revision: i64, listing: bool) {
        self.markers.insert(id.to_string());
        if !listing {
            self.begin(revision - 1, id);
        }
    }

    fn begin(&mut self, before: i64, id: &str) {
        if self.since.is_some() || self.gave_up {
            return;
        }
        self.since = Some(Instant::now());
        self.before = before;
        METRICS.batch_held.set(1);
        tracing::info!(
            apply = id,
            revision = before,
            "holding config changes until the apply finishes"
        );
    }

    /// A marker went: when it was the last, the held events to replay.
    pub fn marker_gone(&mut self, id: &str) -> Option<Vec<Held>> {
        self.markers.remove(id);
        if !self.markers.is_empty() {
            return None;
        }
        self.gave_up = false;
        self.end("released")
    }

    /// Queues a config event; past [`MAX_HELD_EVENTS`] the hold ends and
    /// everything held (this one included) is handed back to replay.
    pub fn push(&mut self, event: Held) -> Option<Vec<Held>> {
        self.queue.push(event);
        if self.queue.len() < MAX_HELD_EVENTS {
            return None;
        }
        self.gave_up = true;
        self.end("overflow")
    }

    /// When the hold must end whatever the markers say.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + HOLD_AT_MOST)
    }

    /// Ends a hold past its deadline; the events to replay.
    pub fn overdue(&mut self, now: Instant) -> Option<Vec<Held>> {
        if self.deadline().is_none_or(|d| now < d) {
            return None;
        }
        self.gave_up = true;
        self.end("timeout")
    }

    /// A re-list begins: it will bring everything held, and the markers
    /// still there.
    pub fn relist_begins(&mut self) {
        self.markers.clear();
        self.gave_up = false;
        let _ = self.end("relist");
    }

    /// A re-list ended at `revision`: a marker it found holds what follows.
    pub fn relist_ends(&mut self, revision: i64) {
        if let Some(id) = self.markers.iter().next().cloned() {
            self.begin(revision, &id);
        }
    }

    /// The revision to report applied: while holding, none past the hold.
    pub fn applied(&self, revision: i64) -> i64 {
        if self.holding() {
            revision.min(self.before)
        } else {
            revision
        }
    }

    fn end(&mut self, how: &'static str) -> Option<Vec<Held>> {
        let since = self.since.take()?;
        let queue = std::mem::take(&mut self.queue);
        METRICS.batch_held.set(0);
        METRICS.batch_holds.with_label_values(&[how]).inc();
        let held_ms = since.elapsed().as_millis() as u64;
        if how == "released" {
            tracing::info!(
                events = queue.len(),
                held_ms,
                "apply finished: publishing its changes at once"
            );
        } else {
            tracing::warn!(events = queue.len(), held_ms, end = how, "stopped holding config changes for an apply still under way: serving what etcd has");
        }
        Some(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64) -> Held {
        Held::Delete {
            key: format!("/t/routes/{rev}"),
            rev,
        }
    }

    #[test]
    fn holds_from_the_first_marker_to_the_last() {
        let mut h = BatchHold::default();
        h.marker_put("a", 10, false);
        h.marker_put("b", 11, false);
        assert!(h.holding());
        assert_eq!(h.applied(15), 9, "nothing past the first marker");
        assert!(h.push(put(12)).is_none());
        assert!(h.marker_gone("a").is_none(), "b is still applying");
        let replay = h.marker_gone("b").expect("last marker gone");
        assert_eq!(replay.len(), 1);
        assert!(!h.holding());
        assert_eq!(h.applied(15), 15);
    }

    #[test]
    fn a_listed_marker_holds_only_what_follows_the_listing() {
        let mut h = BatchHold::default();
        h.relist_begins();
        h.marker_put("a", 7, true);
        assert!(!h.holding(), "the listing itself is applied");
        h.relist_ends(20);
        assert!(h.holding());
        assert_eq!(h.applied(25), 20);
    }

    #[test]
    fn bounds_end_a_hold_and_it_does_not_resume_until_the_markers_go() {
        let mut h = BatchHold::default();
        h.marker_put("a", 10, false);
        let late = Instant::now() + HOLD_AT_MOST;
        assert!(h.overdue(Instant::now()).is_none());
        assert!(h.overdue(late).is_some());
        assert!(!h.holding());
        h.marker_put("b", 30, false);
        assert!(!h.holding(), "gave up on this run of applies");
        h.marker_gone("a");
        h.marker_gone("b");
        h.marker_put("c", 40, false);
        assert!(h.holding(), "a new apply is held again");
        let mut out = None;
        for i in 0..MAX_HELD_EVENTS {
            out = h.push(put(41 + i as i64));
        }
        assert_eq!(out.map(|q| q.len()), Some(MAX_HELD_EVENTS));
        assert!(!h.holding());
    }
}
