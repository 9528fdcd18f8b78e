//! One token bucket in one atomic: GCRA (the generic cell rate
//! algorithm). The bucket is its theoretical arrival time (TAT); a request
//! is admitted if moving the TAT one emission interval forward keeps it
//! within `burst` intervals of now. No lock, no allocation, and a bucket
//! whose TAT is in the past is exactly a full bucket, so idle buckets can
//! be dropped without losing anything.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-decision parameters (they may change with the fleet size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Nanoseconds per token.
    pub interval_ns: u64,
    pub burst: u32,
}

impl Params {
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            interval_ns: ((1e9 / rate_per_sec).round() as u64).max(1),
            burst: burst.max(1),
        }
    }
}

/// The outcome of one request against a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        remaining: u32,
    },
    /// Denied; a token is available again in this many nanoseconds.
    Deny {
        retry_after_ns: u64,
    },
}

#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// A bucket carrying over another's level (a route whose limit changed).
    pub fn with_tat(tat: u64) -> Self {
        Self {
            tat: AtomicU64::new(tat),
        }
    }

    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }

    /// Takes one token at `now_ns` if there is one.
    pub fn take(&self, p: Params, now_ns: u64) -> Decision {
        let window = p.interval_ns.saturating_mul(u64::from(p.burst));
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now_ns).saturating_add(p.interval_ns);
            let ahead = new_tat - now_ns;
            if ahead > window {
                return Decision::Deny {
                    retry_after_ns: ahead - window,
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Decision::Allow {
                        remaining: ((window - ahead) / p.interval_ns) as u32,
                    }
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Re-expresses the level for a new emission interval: the tokens
    /// owed at `now_ns` stay owed (see [`rescaled_tat`]).
    pub fn rescale(&self, from_interval_ns: u64, to_interval_ns: u64, now_ns: u64) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
                (tat > now_ns).then(|| rescaled_tat(tat, from_interval_ns, to_interval_ns, now_ns))
            });
    }
}

/// The TAT that owes, at `now_ns`, as many tokens (fractions included)
/// under `to_interval_ns` as `tat` does under `from_interval_ns`. Rounded
/// up, so a bucket that could not admit before cannot after.
pub fn rescaled_tat(tat: u64, from_interval_ns: u64, to_interval_ns: u64, now_ns: u64) -> u64 {
    let Some(ahead) = tat.checked_sub(now_ns) else {
        return tat; // in the past: a full bucket either way
    };
    let scaled = (u128::from(ahead) * u128::from(to_interval_ns))
        .div_ceil(u128::from(from_interval_ns.max(1)));
    now_ns.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    fn admitted(g: &Gcra, p: Params, now: u64, n: u32) -> u32 {
        (0..n)
            .filter(|_| matches!(g.take(p, now), Decision::Allow { .. }))
            .count() as u32
    }

    #[test]
    fn burst_then_exact_refill_boundaries() {
        let g = Gcra::default();
        let p = Params::new(10.0, 5);
        let t0 = 100 * SEC;
        assert_eq!(g.take(p, t0), Decision::Allow { remaining: 4 });
        assert_eq!(admitted(&g, p, t0, 10), 4, "burst of 5 in all");
        // The next token is due exactly one interval (100 ms) later.
        assert_eq!(
            g.take(p, t0),
            Decision::Deny {
                retry_after_ns: SEC / 10
            }
        );
        assert!(matches!(
            g.take(p, t0 + SEC / 10 - 1),
            Decision::Deny { retry_after_ns: 1 }
        ));
        assert_eq!(g.take(p, t0 + SEC / 10), Decision::Allow { remaining: 0 });
        // A quiet second refills the whole burst, and no more.
        assert_eq!(admitted(&g, p, t0 + 2 * SEC, 10), 5);
    }

    #[test]
    fn rescaling_keeps_the_tokens_owed() {
        let g = Gcra::default();
        let (slow, fast) = (Params::new(10.0, 5), Params::new(20.0, 5));
        assert_eq!(admitted(&g, slow, SEC, 3), 3);
        g.rescale(slow.interval_ns, fast.interval_ns, SEC);
        assert_eq!(g.take(fast, SEC), Decision::Allow { remaining: 1 });
        // A full bucket stays full.
        let idle = Gcra::default();
        idle.rescale(slow.interval_ns, fast.interval_ns, SEC);
        assert_eq!(admitted(&idle, fast, SEC, 10), 5);
    }

    #[test]
    fn very_low_rates_work() {
        let g = Gcra::default();
        let p = Params::new(0.01, 1); // one per 100 s
        assert_eq!(admitted(&g, p, SEC, 3), 1);
        assert!(matches!(g.take(p, 99 * SEC), Decision::Deny { .. }));
        assert_eq!(admitted(&g, p, 101 * SEC, 3), 1);
    }

    #[test]
    fn threads_never_get_more_than_burst_plus_rate_times_elapsed() {
        let g = Arc::new(Gcra::default());
        let p = Params::new(1000.0, 50);
        let granted = Arc::new(AtomicU32::new(0));
        let clock = Arc::new(AtomicU64::new(10 * SEC));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (g, granted, clock) = (g.clone(), granted.clone(), clock.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        // Each thread nudges the fake clock forward a little.
                        let now = clock.fetch_add(10_000, Ordering::Relaxed);
                        if let Decision::Allow { .. } = g.take(p, now) {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = clock.load(Ordering::Relaxed) - 10 * SEC;
        let bound = 50 + (elapsed as f64 / SEC as f64 * 1000.0) as u32 + 1;
        let got = granted.load(Ordering::Relaxed);
        assert!(got <= bound, "granted {got} > bound {bound}");
        assert!(got >= bound * 9 / 10, "granted {got}, far below {bound}");
    }
}
