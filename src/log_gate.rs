//! Log lines that can come at request rate, let through at most once a
//! second per cause, with how many were held back since the last one: a
//! service outage at 1,000 failing requests/s is one warning a second per
//! route and status, not 1,000 (the access log still has every request).
//! Lock-free: one atomic load on the usual path, a compare-exchange once a
//! second.

use std::sync::atomic::{AtomicU64, Ordering};

/// Least time between two lines of one slot.
pub const EVERY_NS: u64 = 1_000_000_000;

/// One cause's gate.
#[derive(Debug, Default)]
pub struct LogGate {
    /// Monotonic ns from which the next line may go out.
    next_ns: AtomicU64,
    held: AtomicU64,
}

impl LogGate {
    pub const fn new() -> Self {
        Self {
            next_ns: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when a line may go out now.
    pub fn admit(&self, now_ns: u64) -> Option<u64> {
        let next = self.next_ns.load(Ordering::Relaxed);
        if now_ns >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now_ns + EVERY_NS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A route's failure lines, one gate per answered status (the cause as the
/// client sees it): 0 (client gone), 408, 502, 503, 504, anything else.
#[derive(Debug, Default)]
pub struct FailureLog {
    gates: [LogGate; 6],
}

impl FailureLog {
    pub const fn new() -> Self {
        Self {
            gates: [const { LogGate::new() }; 6],
        }
    }

    pub fn gate(&self, status: u16) -> &LogGate {
        let i = match status {
            0 => 0,
            408 => 1,
            502 => 2,
            503 => 3,
            504 => 4,
            _ => 5,
        };
        &self.gates[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_held_back() {
        let g = LogGate::default();
        assert_eq!(g.admit(5), Some(0), "the first line goes out");
        for t in 1..1000 {
            assert_eq!(g.admit(5 + t * 1_000), None);
        }
        assert_eq!(g.admit(5 + EVERY_NS - 1), None);
        assert_eq!(
            g.admit(5 + EVERY_NS),
            Some(1000),
            "and says how many it held"
        );
        assert_eq!(g.admit(5 + EVERY_NS + 1), None);
    }

    #[test]
    fn causes_do_not_hold_each_other_back() {
        let log = FailureLog::default();
        assert_eq!(log.gate(503).admit(0), Some(0));
        assert_eq!(log.gate(502).admit(0), Some(0));
        assert_eq!(log.gate(503).admit(1), None);
        assert_eq!(log.gate(599).admit(1), Some(0));
        assert!(std::ptr::eq(log.gate(500), log.gate(599)));
    }
}
