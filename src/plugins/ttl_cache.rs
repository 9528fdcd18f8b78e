//! A small bounded cache of recent decisions (a verified password, an auth
//! service's answer), lock-free to read. Keys are HMAC-SHA-256 of what the
//! decision depends on under a key made at start-up, so the table holds no
//! secret in a form that can be looked up or precomputed, and a client
//! cannot aim two inputs at one entry.
//!
//! Bounded: at `capacity` entries, expired ones are swept; if none have
//! expired the new decision is simply not remembered (the next request
//! pays the full price again, nothing is evicted early).

use ring::hmac;
use std::time::{Duration, Instant};

pub struct TtlCache<V> {
    map: papaya::HashMap<[u8; 32], (V, Instant), ahash::RandomState>,
    key: hmac::Key,
    capacity: usize,
    ttl: Duration,
}

impl<V> std::fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<V: Clone + Send + Sync> TtlCache<V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let rng = ring::rand::SystemRandom::new();
        // ring's generate fails only without system randomness; a fixed
        // key then still keeps the cache correct, just predictable.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b"tollgate"));
        Self {
            map: papaya::HashMap::builder()
                .hasher(ahash::RandomState::new())
                .build(),
            key,
            capacity,
            ttl,
        }
    }

    /// The cache key of `parts` (length-prefixed, so `("ab", "c")` and
    /// `("a", "bc")` differ).
    pub fn key_of(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The decision stored under `key`, unless it has expired.
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let map = self.map.pin();
        match map.get(key) {
            Some((v, until)) if Instant::now() < *until => Some(v.clone()),
            _ => None,
        }
    }

    /// Remembers `value` under `key` for the cache's time to live.
    pub fn put(&self, key: [u8; 32], value: V) {
        let map = self.map.pin();
        let now = Instant::now();
        if map.len() >= self.capacity {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                return;
            }
        }
        map.insert(key, (value, now + self.ttl));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_table_stays_bounded() {
        let c: TtlCache<u32> = TtlCache::new(2, Duration::from_millis(50));
        let (a, b, d) = (c.key_of(&[b"a"]), c.key_of(&[b"b"]), c.key_of(&[b"d"]));
        assert_ne!(c.key_of(&[b"ab", b"c"]), c.key_of(&[b"a", b"bc"]));
        c.put(a, 1);
        c.put(b, 2);
        c.put(d, 3);
        assert_eq!((c.get(&a), c.get(&b), c.get(&d)), (Some(1), Some(2), None));
        assert_eq!(c.len(), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (c.get(&a).is_some() || c.get(&b).is_some()) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!((c.get(&a), c.get(&b)), (None, None), "expired");
        c.put(d, 3);
        assert_eq!(c.get(&d), Some(3), "expired entries make room");
        assert_eq!(c.len(), 1);
    }
}
