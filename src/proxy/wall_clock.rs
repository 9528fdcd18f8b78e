//! The wall-clock time of an instant already read, without reading the
//! wall clock again: the access log dates a request by its start, which
//! the request took from the monotonic clock.
//!
//! Each thread keeps one pair of readings taken together (monotonic,
//! wall) and takes a new pair when asked about an instant a second or
//! more from it: a step of the wall clock (NTP, an operator) shows within
//! a second, and within one the two clocks part by at most the kernel's
//! slew (0.5 ms a second at its fastest).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

/// How far from its pair an instant is dated without a new one.
const PAIR_SPAN: Duration = Duration::from_secs(1);

thread_local! {
    static PAIR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The wall-clock time `t` was (`t` not in the future).
pub fn at(t: Instant) -> SystemTime {
    PAIR.with(|pair| {
        if let Some((mono, wall)) = pair.get() {
            match t.checked_duration_since(mono) {
                Some(after) if after < PAIR_SPAN => return wall + after,
                None if mono - t < PAIR_SPAN => return wall - (mono - t),
                _ => {}
            }
        }
        let (mono, wall) = (Instant::now(), SystemTime::now());
        pair.set(Some((mono, wall)));
        wall.checked_sub(mono.saturating_duration_since(t))
            .unwrap_or(wall)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a` and `b` within `ms` milliseconds of each other.
    fn near(a: SystemTime, b: SystemTime, ms: u64) -> bool {
        let apart = a.duration_since(b).unwrap_or_else(|e| e.duration());
        apart <= Duration::from_millis(ms)
    }

    #[test]
    fn an_instant_is_dated_as_the_wall_clock_read_with_it() {
        let (mono, wall) = (Instant::now(), SystemTime::now());
        assert!(near(at(mono), wall, 50));
        // Later instants on the same pair, and one before it.
        let later = mono + Duration::from_millis(300);
        assert!(near(at(later), wall + Duration::from_millis(300), 50));
        assert!(near(at(mono), wall, 50));
    }

    #[test]
    fn an_instant_far_from_the_pair_is_dated_from_a_new_one() {
        let now = Instant::now();
        let _ = at(now);
        // Seconds before the pair (a long request's start).
        let Some(earlier) = now.checked_sub(Duration::from_secs(5)) else {
            return; // a machine up for less than 5 s
        };
        let expected = SystemTime::now() - Duration::from_secs(5);
        assert!(near(at(earlier), expected, 50));
        // The new pair dates the instants near it.
        assert!(near(at(now), expected + Duration::from_secs(5), 50));
    }
}
