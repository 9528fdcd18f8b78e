//! The response cache: each node keeps upstream answers of routes with a
//! `cache` in memory, within `cache.max_bytes` (weighted by size, CLOCK-PRO
//! admission so one-hit wonders do not push out what is reused), and drops
//! them on purges that every node reads from etcd.
//!
//! - `key.rs`: what tells entries apart (hashed to 128 bits, never built).
//! - `freshness.rs`: whether an answer may be stored, and for how long
//!   (RFC 9111 through pingora-cache's Cache-Control rules).
//! - `fill.rs`: one answer on its way into the cache while it streams to
//!   the client; concurrent misses wait for it (coalescing).
//! - `purge.rs`: purge records (`<prefix>/purges/<id>`) and their matching.
//!
//! A purge costs the same whatever the cache holds: it is kept as a ban
//! (Varnish's idea), and an entry found by a lookup is checked against the
//! bans newer than it once (each entry remembers the generation it was
//! last checked at), then dropped if one matches. Every [`MAX_BANS`]
//! purges one walk of the cache applies them all and the list starts
//! again. A flush empties the cache at once. A purge or a flush moves the
//! generation: an answer whose upstream request began before it is served
//! to its client but never stored, so a fill racing a purge cannot put
//! back what the purge removed.

mod fill;
mod freshness;
mod key;
pub mod purge;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, Weighter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
pub use fill::Fill;
pub use freshness::{storable, Uncacheable};
pub use key::KeyParts;
use purge::Purge;

use crate::metrics::METRICS;

/// An entry's key: two independent 64-bit hashes of what tells it apart.
pub type Key = u128;

/// What an entry costs beyond its body, headers and target: the entry,
/// its header map, its slot in the store and the allocator's rounding.
/// Measured (bench/cache.sh, part 3): ~960 bytes of RSS per small entry
/// that the bytes above put at ~370, so `cache.max_bytes` bounds RSS.
const ENTRY_OVERHEAD: usize = 850;

/// Purges kept as bans before one walk of the cache applies them all.
pub const MAX_BANS: usize = 1024;

/// A purge not yet applied to every entry, and the generation it made.
#[derive(Clone)]
struct Ban {
    generation: u64,
    purge: Purge,
}

/// The default `cache.max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// What the cache holds under a key.
#[derive(Clone)]
pub enum Slot {
    Stored(Arc<Stored>),
    /// The last answer could not be stored: requests go straight upstream
    /// (no waiting on each other) until then.
    Pass(Instant),
}

/// A stored answer.
pub struct Stored {
    /// Status and headers as the upstream sent them, less hop-by-hop,
    /// `Set-Cookie`, `Age` and the framing headers.
    pub header: ResponseHeader,
    pub body: Bytes,
    pub stored: Instant,
    /// The upstream's `Age` when stored, in seconds.
    pub initial_age: u64,
    pub fresh_until: Instant,
    pub stale_while_revalidate_until: Instant,
    pub stale_if_error_until: Instant,
    /// What purges match: the route, the target (path and query), tags.
    pub route: Arc<str>,
    pub target: Box<str>,
    pub tags: Box<[Box<str>]>,
    /// One request is refreshing this entry (the others are served it stale).
    refreshing: AtomicBool,
    /// The generation whose bans this entry has been checked against.
    checked: AtomicU64,
}

impl Stored {
    /// `Age`, in seconds.
    pub fn age(&self, now: Instant) -> u64 {
        self.initial_age + now.saturating_duration_since(self.stored).as_secs()
    }

    fn weight(&self) -> u64 {
        let headers: usize = (self.header.headers.iter())
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + self.target.len() + ENTRY_OVERHEAD) as u64
    }
}

#[derive(Clone)]
struct Weigh;

impl Weighter<Key, Slot> for Weigh {
    fn weight(&self, _: &Key, slot: &Slot) -> u64 {
        match slot {
            Slot::Stored(s) => s.weight(),
            Slot::Pass(_) => 64,
        }
    }
}

/// Counts evictions (entries pushed out by newer ones).
#[derive(Clone, Default)]
struct CountEvictions;

impl Lifecycle<Key, Slot> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: Key, _: Slot) {
        METRICS.cache_evictions.inc();
    }
}

type Store = Cache<Key, Slot, Weigh, ahash::RandomState, CountEvictions>;
type Guard = quick_cache::sync::PlaceholderGuard<
    'static,
    Key,
    Slot,
    Weigh,
    ahash::RandomState,
    CountEvictions,
>;

/// What a lookup found.
pub enum Lookup {
    /// Fresh: serve it.
    Fresh(Arc<Stored>),
    /// Stale within `stale_while_revalidate`, and another request is
    /// refreshing it: serve it stale.
    Stale(Arc<Stored>),
    /// This request goes upstream and stores the answer; the entry it
    /// replaces (stale) answers instead if the upstream fails within
    /// `stale_if_error`.
    Fill(Box<Fill>),
    /// Go upstream, store nothing (the key passes, or waiting for another
    /// request's fill took too long); a stale entry may still answer an error.
    Upstream(Option<Arc<Stored>>),
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.store.len())
            .field("bytes", &self.store.weight())
            .finish()
    }
}

pub struct ResponseCache {
    store: Store,
    hashers: (ahash::RandomState, ahash::RandomState),
    /// Moves on every purge and flush (see the module doc).
    generation: AtomicU64,
    /// Purges since the last walk, oldest first.
    bans: ArcSwap<Vec<Ban>>,
}

impl ResponseCache {
    /// A cache of at most `max_bytes`, for the life of the process (fills
    /// hold guards into it across awaits).
    pub fn leak(max_bytes: u64) -> &'static Self {
        let estimated_items = (max_bytes / 4096).clamp(1024, 1 << 22) as usize;
        let store = Cache::with(
            estimated_items,
            max_bytes,
            Weigh,
            ahash::RandomState::new(),
            CountEvictions,
        );
        Box::leak(Box::new(Self {
            store,
            hashers: (ahash::RandomState::new(), ahash::RandomState::new()),
            generation: AtomicU64::new(0),
            bans: ArcSwap::default(),
        }))
    }

    pub fn key(&self, parts: &KeyParts<'_>) -> Key {
        parts.hash(&self.hashers)
    }

    /// Finds `key`; on a miss, waits up to `wait` for another request's
    /// fill of the same key, or becomes the one filling it.
    pub async fn lookup(&'static self, key: Key, wait: Duration) -> Lookup {
        let now = Instant::now();
        let mut stale = None;
        match self.get(key) {
            Some(Slot::Stored(s)) => {
                if now < s.fresh_until {
                    return Lookup::Fresh(s);
                }
                let usable = now < s.stale_while_revalidate_until || now < s.stale_if_error_until;
                if usable {
                    if !s.refreshing.swap(true, Ordering::AcqRel) {
                        return Lookup::Fill(Box::new(Fill::refresh(self, key, s)));
                    }
                    if now < s.stale_while_revalidate_until {
                        return Lookup::Stale(s);
                    }
                    return Lookup::Upstream(Some(s));
                }
                stale = Some(s);
            }
            Some(Slot::Pass(until)) if now < until => return Lookup::Upstream(None),
            Some(Slot::Pass(_)) => {}
            None => {}
        }
        if let Some(old) = stale {
            // Past every window: gone.
            self.store.remove_if(
                &key,
                |v| matches!(v, Slot::Stored(s) if Arc::ptr_eq(s, &old)),
            );
        }
        let generation = self.generation();
        match tokio::time::timeout(wait, self.store.get_value_or_guard_async(&key)).await {
            Ok(Ok(Slot::Stored(s))) if Instant::now() < s.fresh_until => {
                METRICS.cache_coalesced.inc();
                Lookup::Fresh(s)
            }
            Ok(Ok(_)) => Lookup::Upstream(None),
            Ok(Err(guard)) => Lookup::Fill(Box::new(Fill::new(self, key, guard, generation))),
            Err(_) => Lookup::Upstream(None),
        }
    }

    /// The slot under `key`, unless a ban drops it. The bans are read
    /// before the store: a walk that applied and cleared them has then
    /// removed what they matched.
    fn get(&self, key: Key) -> Option<Slot> {
        let bans = self.bans.load();
        let slot = self.store.get(&key)?;
        let Slot::Stored(s) = &slot else {
            return Some(slot);
        };
        let generation = self.generation();
        let checked = s.checked.load(Ordering::Acquire);
        if checked >= generation {
            return Some(slot);
        }
        let banned = (bans.iter().rev())
            .take_while(|b| b.generation > checked)
            .any(|b| b.purge.matches(s));
        if banned {
            self.store
                .remove_if(&key, |v| matches!(v, Slot::Stored(x) if Arc::ptr_eq(x, s)));
            return None;
        }
        s.checked.fetch_max(generation, Ordering::AcqRel);
        Some(slot)
    }

    /// A lookup that never waits and never fills (`HEAD` misses).
    pub fn peek(&self, key: Key) -> Option<Arc<Stored>> {
        match self.get(key) {
            Some(Slot::Stored(s)) if Instant::now() < s.fresh_until => Some(s),
            _ => None,
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn stored(&self, key: Key, slot: Slot, guard: Option<Guard>) {
        match guard {
            Some(g) => {
                let _ = g.insert(slot);
            }
            None => self.store.insert(key, slot),
        }
    }

    /// Bans what a purge matches: no lookup finds it from now on. Returns
    /// how many entries a walk dropped (0 when the purge is only banned).
    pub fn purge(&self, p: &Purge) -> usize {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut bans = Vec::clone(&self.bans.load());
        bans.push(Ban {
            generation,
            purge: p.clone(),
        });
        let mut dropped = 0;
        if bans.len() >= MAX_BANS {
            // The walk runs while the bans are still published, then
            // clears them (see `get`).
            let before = self.store.len();
            self.store.retain(|_, slot| match slot {
                Slot::Stored(s) => {
                    let checked = s.checked.load(Ordering::Acquire);
                    !bans
                        .iter()
                        .any(|b| b.generation > checked && b.purge.matches(s))
                }
                Slot::Pass(_) => true,
            });
            dropped = before.saturating_sub(self.store.len());
            bans.clear();
        }
        self.bans.store(Arc::new(bans));
        METRICS.cache_purges.with_label_values(&["purge"]).inc();
        dropped
    }

    /// Drops everything (this node cannot tell which purges it missed).
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.store.clear();
        self.bans.store(Arc::default());
        METRICS.cache_purges.with_label_values(&["flush"]).inc();
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Sets `tollgate_cache_bytes` and `_entries`: at scrape time, since
    /// counting walks every shard (too much for each insert on the miss
    /// path).
    pub fn report(&self) {
        METRICS.cache_bytes.set(self.store.weight() as i64);
        METRICS.cache_entries.set(self.store.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cache::{CachePolicy, CacheSpec};

    fn policy() -> CachePolicy {
        serde_json::from_str::<CacheSpec>("{}")
            .unwrap()
            .compile("")
            .unwrap()
    }

    async fn fill(cache: &'static ResponseCache, key: Key) -> Box<Fill> {
        match cache.lookup(key, Duration::from_millis(10)).await {
            Lookup::Fill(f) => f,
            _ => panic!("expected a miss to fill"),
        }
    }

    fn store(mut f: Box<Fill>, target: &str, status: u16) {
        let p = policy();
        let resp = ResponseHeader::build(status, None).unwrap();
        if f.header(&p, false, &resp, &Arc::from("r"), target).is_ok() {
            f.body(&Bytes::from_static(b"body"), &p);
            f.finish();
        }
    }

    #[tokio::test]
    async fn a_fill_begun_before_a_purge_or_flush_is_not_stored() {
        let cache = ResponseCache::leak(1 << 20);
        let f = fill(cache, 1).await;
        cache.purge(&Purge::Prefix {
            route: "r".into(),
            prefix: "/".into(),
        });
        store(f, "/a", 200);
        let f = fill(cache, 1).await;
        cache.flush();
        store(f, "/a", 200);
        let f = fill(cache, 1).await;
        store(f, "/a", 200);
        assert!(matches!(
            cache.lookup(1, Duration::ZERO).await,
            Lookup::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn purges_drop_only_what_they_match_and_errors_pass_briefly() {
        let cache = ResponseCache::leak(1 << 20);
        for (key, target) in [(1, "/a?x=1"), (2, "/static/a"), (3, "/b")] {
            let f = fill(cache, key).await;
            store(f, target, 200);
        }
        cache.purge(&Purge::Key {
            route: "r".into(),
            target: "/a?x=1".into(),
        });
        cache.purge(&Purge::Prefix {
            route: "other".into(),
            prefix: "/".into(),
        });
        assert!(cache.peek(1).is_none(), "banned");
        assert!(cache.peek(2).is_some() && cache.peek(3).is_some());
        assert_eq!(cache.len(), 2, "the banned entry was dropped when found");
        // Enough purges and one walk applies them all and starts again.
        cache.purge(&Purge::Prefix {
            route: "r".into(),
            prefix: "/static/".into(),
        });
        let none = Purge::Tag {
            route: "r".into(),
            tag: "none".into(),
        };
        let dropped: usize = (0..MAX_BANS).map(|_| cache.purge(&none)).sum();
        assert_eq!(dropped, 1, "the /static/ entry, dropped by the walk");
        assert!(cache.bans.load().len() < MAX_BANS, "the list started again");
        assert!(cache.peek(3).is_some());
        // An error answer: the key passes upstream (no waiting) for a moment.
        let f = fill(cache, 4).await;
        store(f, "/err", 502);
        assert!(matches!(
            cache.lookup(4, Duration::ZERO).await,
            Lookup::Upstream(None)
        ));
    }
}
