//! Rate limiting: the per-route token buckets that live in the snapshot
//! beside the router. Lock-free on the request path (one atomic per
//! decision); per-client tables are bounded and swept.

mod gcra;
mod keyed;
mod sweeper;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

pub use gcra::{Decision, Gcra, Params};
pub use keyed::{sweep_all, KeyedBuckets};
pub use sweeper::Sweeper;

use crate::model::rate_limit::{LimitKey, LimitScope, RateLimitSpec};

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Monotonic nanoseconds for the limiter; tests pass their own clock
/// values to [`RouteLimiter::check`] instead.
pub fn now_ns() -> u64 {
    // Offset so that 0 (a fresh bucket's TAT) is always in the past.
    ORIGIN.elapsed().as_nanos() as u64 + 1_000_000_000
}

/// The fleet size a cluster-scoped limit divides by; 1 until known.
pub type FleetSize = Arc<AtomicUsize>;

/// What the caller needs to identify the client.
pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    /// The value of the limit's header, if the route keys by header.
    pub header: Option<&'a [u8]>,
    /// The consumer an auth plugin found, if the route keys by consumer
    /// (a request without one is keyed by its address).
    pub consumer: Option<&'a str>,
}

/// A decision plus what goes into the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub limit: u32,
    /// Whether admitted responses carry the headers too.
    pub headers: bool,
}

/// One route's limiter.
pub struct RouteLimiter {
    pub spec: RateLimitSpec,
    key: LimitKey,
    bucket: Gcra,
    clients: Option<Arc<KeyedBuckets>>,
    fleet: Option<FleetSize>,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("spec", &self.spec)
            .finish()
    }
}

impl RouteLimiter {
    /// Builds a limiter from a validated spec. `previous` is the route's
    /// old limiter: its level (tokens owed at `now_ns`) carries over, so a
    /// rate change does not hand out a fresh burst.
    pub fn new(
        spec: RateLimitSpec,
        key: LimitKey,
        fleet: &FleetSize,
        previous: Option<&RouteLimiter>,
        now_ns: u64,
    ) -> Self {
        let clients = (key != LimitKey::Route).then(|| match previous {
            Some(p) if p.key == key && p.spec.max_keys == spec.max_keys => p.clients.clone(),
            _ => None,
        });
        let clients = clients.map(|c| c.unwrap_or_else(|| KeyedBuckets::new(spec.max_keys)));
        let mut me = Self {
            bucket: Gcra::default(),
            fleet: (spec.scope == LimitScope::Cluster).then(|| fleet.clone()),
            spec,
            key,
            clients,
        };
        if let Some(p) = previous {
            let (from, to) = (p.params().interval_ns, me.params().interval_ns);
            me.bucket = Gcra::with_tat(gcra::rescaled_tat(p.bucket.tat(), from, to, now_ns));
            // A carried client table keeps each client's level the same way.
            if let Some(c) = me.clients.as_ref().filter(|_| from != to) {
                c.rescale(from, to, now_ns);
            }
        }
        me
    }

    /// The header this limiter keys by, if any.
    pub fn header_name(&self) -> Option<&str> {
        match &self.key {
            LimitKey::Header(h) => Some(h),
            _ => None,
        }
    }

    pub fn keys_by_client_ip(&self) -> bool {
        self.key == LimitKey::ClientIp
    }

    pub fn keys_by_consumer(&self) -> bool {
        self.key == LimitKey::Consumer
    }

    /// Rate and burst in force on this node right now.
    pub fn params(&self) -> Params {
        let n = self
            .fleet
            .as_ref()
            .map_or(1, |f| f.load(Ordering::Relaxed).max(1));
        let burst = self.spec.burst();
        Params::new(self.spec.rate / n as f64, burst.div_ceil(n as u32).max(1))
    }

    /// Takes a token for this request at `now_ns`.
    pub fn check(&self, client: &Client<'_>, now_ns: u64) -> Verdict {
        let p = self.params();
        let decision = match (&self.clients, &self.key) {
            (Some(t), LimitKey::ClientIp) => t.take(t.hash_of(client.ip), p, now_ns),
            (Some(t), LimitKey::Consumer) => match client.consumer {
                Some(name) => t.take(t.hash_of(name), p, now_ns),
                None => t.take(t.hash_of(client.ip), p, now_ns),
            },
            (Some(t), LimitKey::Header(_)) => {
                t.take(t.hash_of(client.header.unwrap_or_default()), p, now_ns)
            }
            _ => self.bucket.take(p, now_ns),
        };
        Verdict {
            decision,
            limit: p.burst,
            headers: self.spec.headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(json: &str, fleet: &FleetSize, prev: Option<&RouteLimiter>) -> RouteLimiter {
        limiter_at(json, fleet, prev, SEC)
    }

    fn limiter_at(
        json: &str,
        fleet: &FleetSize,
        prev: Option<&RouteLimiter>,
        now: u64,
    ) -> RouteLimiter {
        let spec: RateLimitSpec = serde_json::from_str(json).unwrap();
        let key = spec.validate("").unwrap();
        RouteLimiter::new(spec, key, fleet, prev, now)
    }

    fn allowed(l: &RouteLimiter, c: &Client<'_>, now: u64, n: usize) -> usize {
        (0..n)
            .filter(|_| matches!(l.check(c, now).decision, Decision::Allow { .. }))
            .count()
    }

    #[test]
    fn cluster_scope_divides_by_the_fleet() {
        let fleet: FleetSize = Arc::new(AtomicUsize::new(1));
        let l = limiter(
            r#"{"rate":100,"burst":100,"scope":"cluster"}"#,
            &fleet,
            None,
        );
        let c = Client {
            ip: None,
            header: None,
            consumer: None,
        };
        assert_eq!(l.params(), Params::new(100.0, 100));
        fleet.store(4, Ordering::Relaxed);
        assert_eq!(l.params(), Params::new(25.0, 25));
        assert_eq!(allowed(&l, &c, SEC, 100), 25);
        assert_eq!(l.check(&c, SEC).limit, 25);
    }

    #[test]
    fn a_new_rate_keeps_the_level() {
        let fleet: FleetSize = Arc::new(AtomicUsize::new(1));
        let c = Client {
            ip: None,
            header: None,
            consumer: None,
        };
        let old = limiter(r#"{"rate":10,"burst":10}"#, &fleet, None);
        assert_eq!(allowed(&old, &c, SEC, 20), 10);
        let new = limiter(r#"{"rate":20,"burst":10}"#, &fleet, Some(&old));
        assert_eq!(
            allowed(&new, &c, SEC, 20),
            0,
            "the drained bucket stays drained"
        );
        assert_eq!(
            allowed(&new, &c, SEC + SEC / 20, 20),
            1,
            "refills at the new rate"
        );
    }

    #[test]
    fn a_new_rate_keeps_each_clients_level() {
        let fleet: FleetSize = Arc::new(AtomicUsize::new(1));
        let json = |rate: u32| format!(r#"{{"rate":{rate},"burst":4,"key":"client_ip"}}"#);
        let a = Client {
            ip: Some([10, 0, 0, 1].into()),
            header: None,
            consumer: None,
        };
        let b = Client {
            ip: Some([10, 0, 0, 2].into()),
            header: None,
            consumer: None,
        };
        let old = limiter(&json(4), &fleet, None);
        assert_eq!(allowed(&old, &a, SEC, 10), 4);
        assert_eq!(allowed(&old, &b, SEC, 2), 2);
        // Halving the rate hands a drained client nothing back.
        let slower = limiter(&json(2), &fleet, Some(&old));
        assert_eq!(allowed(&slower, &a, SEC, 10), 0);
        assert_eq!(allowed(&slower, &b, SEC, 10), 2, "b still has 2 left");
        assert_eq!(allowed(&slower, &a, SEC + SEC / 2, 10), 1, "new rate");
        // Doubling it makes a drained client wait one new interval only.
        let t = SEC + SEC / 2;
        let faster = limiter_at(&json(4), &fleet, Some(&slower), t);
        assert_eq!(allowed(&faster, &a, t, 10), 0);
        assert_eq!(allowed(&faster, &a, t + SEC / 4, 10), 1);
    }

    #[test]
    fn client_keys_are_independent_and_headers_key_by_value() {
        let fleet: FleetSize = Arc::new(AtomicUsize::new(1));
        let l = limiter(r#"{"rate":1,"burst":1,"key":"client_ip"}"#, &fleet, None);
        let a = Client {
            ip: Some([10, 0, 0, 1].into()),
            header: None,
            consumer: None,
        };
        let b = Client {
            ip: Some([10, 0, 0, 2].into()),
            header: None,
            consumer: None,
        };
        assert_eq!(allowed(&l, &a, SEC, 3), 1);
        assert_eq!(allowed(&l, &b, SEC, 3), 1);
        let h = limiter(
            r#"{"rate":1,"burst":2,"key":"header:x-api-key"}"#,
            &fleet,
            None,
        );
        assert_eq!(h.header_name(), Some("x-api-key"));
        let k1 = Client {
            ip: None,
            header: Some(b"k1"),
            consumer: None,
        };
        let k2 = Client {
            ip: None,
            header: Some(b"k2"),
            consumer: None,
        };
        assert_eq!(allowed(&h, &k1, SEC, 5), 2);
        assert_eq!(allowed(&h, &k2, SEC, 5), 2);
    }
}
