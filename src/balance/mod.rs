//! Instance selection: weighted round robin, least request (power of two
//! choices) and consistent hashing, over instances whose health allows it,
//! failing open across all of them when too few are healthy (panic mode).
//! Everything a pick reads is precomputed per instance-set change; a pick
//! itself is a few atomic loads.

pub mod active;
pub mod health;
mod ring;
mod schedule;
pub mod sharing;

use std::net::SocketAddr;
use std::sync::Arc;

pub use health::{NodeHealth, Passive};
pub use ring::{stable_hash, Ring};
pub use schedule::Schedule;

use crate::model::policy::{HashKey, LbSpec};

/// The per-set strategy, built with the set.
#[derive(Debug, Clone)]
pub enum Strategy {
    RoundRobin(Schedule),
    LeastRequest,
    ConsistentHash(Ring, HashKey),
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::RoundRobin(Schedule::default())
    }
}

/// What a pick may need from the request.
#[derive(Debug, Clone, Copy)]
pub struct PickInput {
    /// Round-robin cursor / random source for this pick.
    pub cursor: usize,
    /// Hash of the consistent-hash key, if the strategy uses one.
    pub key_hash: Option<u64>,
    /// An instance to avoid (the one a retry is moving away from).
    pub avoid: Option<SocketAddr>,
    /// Monotonic ns, read only if an instance the pick looks at has ever
    /// been ejected (most picks never need the time).
    pub clock: fn() -> u64,
}

impl Default for PickInput {
    fn default() -> Self {
        Self {
            cursor: 0,
            key_hash: None,
            avoid: None,
            clock: || 0,
        }
    }
}

/// The outcome of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    /// Health was ignored because too few instances are healthy.
    pub panic: bool,
}

/// The instances a pick chooses among, read where they live: a pick
/// allocates nothing and touches only the instances it considers, however
/// large the set.
pub trait Candidates {
    fn count(&self) -> usize;
    fn addr(&self, i: usize) -> SocketAddr;
    fn weight(&self, i: usize) -> u32;
    fn draining(&self, i: usize) -> bool;
    fn health(&self, i: usize) -> &NodeHealth;
}

impl Strategy {
    /// Builds the strategy for a set of (id, weight, serving) nodes.
    pub fn build(lb: &LbSpec, hash_key: Option<HashKey>, nodes: &[(&str, u32, bool)]) -> Self {
        let weights = || {
            nodes
                .iter()
                .map(|(_, w, serving)| if *serving { *w } else { 0 })
        };
        match (lb, hash_key) {
            (LbSpec::LeastRequest, _) => Strategy::LeastRequest,
            (LbSpec::ConsistentHash { .. }, Some(k)) => Strategy::ConsistentHash(
                Ring::build(
                    nodes
                        .iter()
                        .map(|(id, w, serving)| (*id, if *serving { *w } else { 0 })),
                ),
                k,
            ),
            _ => Strategy::RoundRobin(Schedule::build(&weights().collect::<Vec<_>>())),
        }
    }

    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Strategy::ConsistentHash(_, k) => Some(k),
            _ => None,
        }
    }

    /// Picks an instance. `panic_threshold` is the healthy share below
    /// which health is ignored.
    pub fn pick<C: Candidates + ?Sized>(
        &self,
        nodes: &C,
        input: PickInput,
        panic_threshold: f64,
    ) -> Option<Picked> {
        let now = std::cell::OnceCell::new();
        let now_ns = || *now.get_or_init(input.clock);
        let serving = |i: usize| !nodes.draining(i);
        let healthy = |i: usize| serving(i) && nodes.health(i).available(now_ns);
        // The strategy's own choice, moving off the instance to avoid.
        let natural = self
            .first(nodes, input, &|i| {
                serving(i) && Some(nodes.addr(i)) != input.avoid
            })
            .or_else(|| self.first(nodes, input, &serving))?;
        if healthy(natural) {
            return Some(Picked {
                index: natural,
                panic: false,
            });
        }
        // Unhealthy: look elsewhere, unless too few are healthy, in which
        // case health is ignored and traffic spreads over all (panic mode).
        let total = (0..nodes.count()).filter(|&i| serving(i)).count();
        let up = (0..nodes.count()).filter(|&i| healthy(i)).count();
        if up == 0 || (up as f64) < panic_threshold * total as f64 {
            return Some(Picked {
                index: natural,
                panic: true,
            });
        }
        self.first(nodes, input, &|i| {
            healthy(i) && Some(nodes.addr(i)) != input.avoid
        })
        .or_else(|| self.first(nodes, input, &healthy))
        .map(|index| Picked {
            index,
            panic: false,
        })
    }

    fn first<C: Candidates + ?Sized>(
        &self,
        nodes: &C,
        input: PickInput,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let count = nodes.count();
        if count == 0 {
            return None;
        }
        match self {
            Strategy::RoundRobin(s) => (0..count.max(8))
                .filter_map(|k| s.pick(input.cursor.wrapping_add(k)).map(|i| i as usize))
                .find(|&i| ok(i))
                .or_else(|| (0..count).find(|&i| ok(i))),
            Strategy::LeastRequest => {
                let n = count;
                let a = input.cursor % n;
                let b = (input.cursor / n.max(1)).wrapping_mul(7).wrapping_add(1) % n;
                let load = |i: usize| {
                    let w = u64::from(nodes.weight(i).max(1));
                    (nodes
                        .health(i)
                        .in_flight
                        .load(std::sync::atomic::Ordering::Relaxed) as u64
                        + 1)
                        * 1_000_000
                        / w
                };
                let two = [a, if b == a { (a + 1) % n } else { b }];
                let best = two
                    .iter()
                    .copied()
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| load(i));
                best.or_else(|| (0..n).filter(|&i| ok(i)).min_by_key(|&i| load(i)))
            }
            Strategy::ConsistentHash(ring, _) => {
                let key = input.key_hash.unwrap_or(input.cursor as u64);
                ring.walk(key).map(|i| i as usize).find(|&i| ok(i))
            }
        }
    }
}

/// Counts ejected instances, for the max-ejected-share rule.
pub fn ejected_share(health: &[Arc<NodeHealth>], now_ns: u64) -> f64 {
    if health.is_empty() {
        return 0.0;
    }
    health.iter().filter(|h| h.is_ejected(now_ns)).count() as f64 / health.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Candidate<'a> {
        addr: SocketAddr,
        weight: u32,
        draining: bool,
        health: &'a NodeHealth,
    }

    impl Candidates for [Candidate<'_>] {
        fn count(&self) -> usize {
            self.len()
        }
        fn addr(&self, i: usize) -> SocketAddr {
            self[i].addr
        }
        fn weight(&self, i: usize) -> u32 {
            self[i].weight
        }
        fn draining(&self, i: usize) -> bool {
            self[i].draining
        }
        fn health(&self, i: usize) -> &NodeHealth {
            self[i].health
        }
    }

    fn cands(health: &[NodeHealth]) -> Vec<Candidate<'_>> {
        health
            .iter()
            .enumerate()
            .map(|(i, h)| Candidate {
                addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                weight: 1,
                draining: false,
                health: h,
            })
            .collect()
    }

    fn rr(n: usize) -> Strategy {
        let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let nodes: Vec<(&str, u32, bool)> = ids.iter().map(|s| (s.as_str(), 1, true)).collect();
        Strategy::build(&LbSpec::RoundRobin, None, &nodes)
    }

    fn input(cursor: usize) -> PickInput {
        PickInput {
            cursor,
            clock: || 1,
            ..Default::default()
        }
    }

    #[test]
    fn skips_unhealthy_and_avoided_instances() {
        let h: Vec<NodeHealth> = (0..3).map(|_| NodeHealth::default()).collect();
        h[1].record_check(false, 1, 1);
        let c = cands(&h);
        let s = rr(3);
        for cursor in 0..12 {
            let p = s.pick(&c[..], input(cursor), 0.5).unwrap();
            assert_ne!(p.index, 1);
            assert!(!p.panic);
        }
        let avoid = PickInput {
            avoid: Some(c[0].addr),
            ..input(0)
        };
        assert_eq!(s.pick(&c[..], avoid, 0.5).unwrap().index, 2);
    }

    #[test]
    fn fails_open_when_too_few_are_healthy() {
        let h: Vec<NodeHealth> = (0..4).map(|_| NodeHealth::default()).collect();
        for x in &h[..3] {
            x.record_check(false, 1, 1);
        }
        let c = cands(&h);
        let s = rr(4);
        let picks: Vec<Picked> = (0..8)
            .map(|k| s.pick(&c[..], input(k), 0.5).unwrap())
            .collect();
        // 1 of 4 healthy is below 50%: every instance keeps its share.
        for i in 0..4 {
            assert_eq!(
                picks.iter().filter(|p| p.index == i).count(),
                2,
                "{picks:?}"
            );
        }
        assert!(picks.iter().filter(|p| p.index != 3).all(|p| p.panic));
        // Above the threshold, health is honoured.
        h[0].record_check(true, 1, 1);
        assert!((0..8).all(|k| {
            let p = s.pick(&c[..], input(k), 0.5).unwrap();
            !p.panic && (p.index == 0 || p.index == 3)
        }));
    }

    #[test]
    fn least_request_prefers_the_idle_instance() {
        let h: Vec<NodeHealth> = (0..2).map(|_| NodeHealth::default()).collect();
        h[0].in_flight
            .store(10, std::sync::atomic::Ordering::Relaxed);
        let c = cands(&h);
        let s = Strategy::build(
            &LbSpec::LeastRequest,
            None,
            &[("a", 1, true), ("b", 1, true)],
        );
        for cursor in 0..10 {
            assert_eq!(s.pick(&c[..], input(cursor), 0.5).unwrap().index, 1);
        }
    }

    #[test]
    fn consistent_hash_keeps_a_key_and_skips_unhealthy() {
        let h: Vec<NodeHealth> = (0..3).map(|_| NodeHealth::default()).collect();
        let c = cands(&h);
        let lb = LbSpec::ConsistentHash { key: "path".into() };
        let s = Strategy::build(
            &lb,
            Some(HashKey::Path),
            &[("a", 1, true), ("b", 1, true), ("c", 1, true)],
        );
        let with_key = |k: u64| PickInput {
            key_hash: Some(k),
            ..input(0)
        };
        let first = s.pick(&c[..], with_key(42), 0.5).unwrap().index;
        for cursor in 0..5 {
            let again = s
                .pick(
                    &c[..],
                    PickInput {
                        cursor,
                        ..with_key(42)
                    },
                    0.5,
                )
                .unwrap()
                .index;
            assert_eq!(again, first);
        }
        h[first].record_check(false, 1, 1);
        assert_ne!(s.pick(&c[..], with_key(42), 0.5).unwrap().index, first);
    }
}
