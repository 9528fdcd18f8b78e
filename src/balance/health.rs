//! Per-instance health, shared by every instance-set version that contains
//! the instance (carried over by id, so churn elsewhere never resets it):
//! requests in flight, passive ejection, and the active check's verdict.
//!
//! The active verdict comes from one of two places. Alone (standalone, or
//! cut off from etcd) a node probes every instance itself. In a fleet whose
//! nodes share probes (`cluster::health`), the verdict is the fleet's: the
//! one node that probes an instance writes it to etcd, every node applies
//! it, and this node's own probe result counts only through that.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Whether verdicts are the fleet's (set by the active checker only).
static SHARED_VERDICTS: AtomicBool = AtomicBool::new(false);

/// Switches between the fleet's verdicts and this node's own probes.
pub fn set_shared_verdicts(on: bool) {
    SHARED_VERDICTS.store(on, Ordering::Relaxed);
}

pub fn shared_verdicts() -> bool {
    SHARED_VERDICTS.load(Ordering::Relaxed)
}

use crate::model::policy::PassiveCheckSpec;

#[derive(Debug)]
pub struct NodeHealth {
    pub in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Monotonic ns until which the node is ejected (0: not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// This node's own active check verdict (true until a check says
    /// otherwise).
    active_ok: AtomicBool,
    active_streak: AtomicU32,
    /// The fleet's verdict from etcd: unhealthy.
    fleet_down: AtomicBool,
    /// When (limiter clock, ns) the fleet's unhealthy verdict last went:
    /// withdrawn, or gone with its prober's lease.
    fleet_cleared_ns: AtomicU64,
}

/// How long a verdict that went still counts for a node taking the
/// instance over: a verdict goes with its prober's lease when the prober
/// dies, and the instance is no healthier for it.
const CLEARED_GRACE_NS: u64 = 30_000_000_000;

impl Default for NodeHealth {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            active_ok: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            fleet_down: AtomicBool::new(false),
            fleet_cleared_ns: AtomicU64::new(0),
        }
    }
}

/// What a passive observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passive {
    Nothing,
    Ejected { for_ms: u64 },
}

impl NodeHealth {
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_at(|| now_ns)
    }

    /// Whether the node is ejected now; `now_ns` is called only for a node
    /// that has been ejected at some point (most never are).
    fn ejected_at(&self, now_ns: impl FnOnce() -> u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ns()
    }

    /// The verdict that decides traffic: the fleet's when probes are
    /// shared, else this node's own.
    pub fn active_ok(&self) -> bool {
        if shared_verdicts() {
            !self.fleet_down.load(Ordering::Relaxed)
        } else {
            self.local_ok()
        }
    }

    /// This node's own probe verdict.
    pub fn local_ok(&self) -> bool {
        self.active_ok.load(Ordering::Relaxed)
    }

    /// The fleet's verdict (from etcd): whether it says unhealthy.
    pub fn fleet_down(&self) -> bool {
        self.fleet_down.load(Ordering::Relaxed)
    }

    pub fn set_fleet_down(&self, down: bool) {
        if self.fleet_down.swap(down, Ordering::Relaxed) && !down {
            self.fleet_cleared_ns
                .store(crate::limiter::now_ns(), Ordering::Relaxed);
        }
    }

    /// The verdict a node taking this instance over starts from: the
    /// fleet's, counting one that went in the last 30 s as still in force
    /// (the new prober's probes bring it back within `healthy` intervals
    /// if it is well).
    pub fn verdict_to_adopt(&self, now_ns: u64) -> bool {
        let cleared = self.fleet_cleared_ns.load(Ordering::Relaxed);
        let recently = cleared != 0 && now_ns.saturating_sub(cleared) < CLEARED_GRACE_NS;
        !(self.fleet_down() || recently)
    }

    /// Starts this node's own verdict from `ok` (when it takes over
    /// probing an instance: from the verdict in force, not from scratch).
    pub fn adopt(&self, ok: bool) {
        self.active_ok.store(ok, Ordering::Relaxed);
        self.active_streak.store(0, Ordering::Relaxed);
    }

    /// Whether the node should take new requests. `now_ns` is called only
    /// for a node that has been ejected at some point.
    pub fn available(&self, now_ns: impl FnOnce() -> u64) -> bool {
        self.active_ok() && !self.ejected_at(now_ns)
    }

    /// An answer: the failure streak ends, and so does the escalation of
    /// ejection times (an instance ejected ten times over its life is not
    /// ejected for 10x the base at its next blip, once it has answered).
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; ejects when the streak reaches the threshold and
    /// `may_eject` (the max-ejected share is not reached). Each ejection
    /// lasts longer than the last, up to 10× the base.
    pub fn record_failure(&self, spec: &PassiveCheckSpec, now_ns: u64, may_eject: bool) -> Passive {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < spec.consecutive_failures || !may_eject || self.is_ejected(now_ns) {
            return Passive::Nothing;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let for_ms = spec.ejection_ms.saturating_mul(u64::from(times.min(10)));
        self.ejected_until.store(
            now_ns.saturating_add(for_ms.saturating_mul(1_000_000)),
            Ordering::Relaxed,
        );
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Passive::Ejected { for_ms }
    }

    /// Feeds one active check result; returns the new verdict if it flipped.
    pub fn record_check(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let current = self.local_ok();
        if ok == current {
            self.active_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { healthy } else { unhealthy };
        if streak >= needed {
            self.active_ok.store(ok, Ordering::Relaxed);
            self.active_streak.store(0, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_never_ejected_node_does_not_read_the_clock() {
        let h = NodeHealth::default();
        assert!(h.available(|| unreachable!("clock read for a healthy node")));
    }

    #[test]
    fn ejects_after_the_streak_and_for_longer_each_time() {
        let h = NodeHealth::default();
        let spec = PassiveCheckSpec {
            consecutive_failures: 3,
            ejection_ms: 100,
            max_ejected_share: 0.5,
        };
        assert_eq!(h.record_failure(&spec, 0, true), Passive::Nothing);
        h.record_success();
        assert_eq!(h.record_failure(&spec, 0, true), Passive::Nothing);
        assert_eq!(h.record_failure(&spec, 0, true), Passive::Nothing);
        assert_eq!(
            h.record_failure(&spec, 0, true),
            Passive::Ejected { for_ms: 100 }
        );
        assert!(!h.available(|| 99 * MS));
        assert!(h.available(|| 100 * MS));
        for _ in 0..2 {
            h.record_failure(&spec, 200 * MS, true);
        }
        assert_eq!(
            h.record_failure(&spec, 200 * MS, true),
            Passive::Ejected { for_ms: 200 }
        );
        // An answer in between: the next ejection is the base again.
        h.record_success();
        for _ in 0..2 {
            h.record_failure(&spec, 400 * MS, true);
        }
        assert_eq!(
            h.record_failure(&spec, 400 * MS, true),
            Passive::Ejected { for_ms: 100 }
        );
        // Not when the share is used up.
        let g = NodeHealth::default();
        for _ in 0..5 {
            assert_eq!(g.record_failure(&spec, 0, false), Passive::Nothing);
        }
        assert!(g.available(|| 0));
    }

    #[test]
    fn a_verdict_that_just_went_is_still_adopted() {
        let h = NodeHealth::default();
        let now = crate::limiter::now_ns();
        assert!(h.verdict_to_adopt(now), "never down: healthy");
        h.set_fleet_down(true);
        assert!(!h.verdict_to_adopt(now));
        h.set_fleet_down(false);
        assert!(
            !h.verdict_to_adopt(crate::limiter::now_ns()),
            "gone a moment ago"
        );
        assert!(h.verdict_to_adopt(crate::limiter::now_ns() + CLEARED_GRACE_NS));
    }

    #[test]
    fn active_checks_need_a_streak_to_flip() {
        let h = NodeHealth::default();
        assert_eq!(h.record_check(false, 2, 2), None);
        assert_eq!(h.record_check(false, 2, 2), Some(false));
        assert!(!h.available(|| 0));
        assert_eq!(h.record_check(true, 2, 2), None);
        assert_eq!(
            h.record_check(false, 2, 2),
            None,
            "a failure resets the streak"
        );
        assert_eq!(h.record_check(true, 2, 2), None);
        assert_eq!(h.record_check(true, 2, 2), Some(true));
    }
}
