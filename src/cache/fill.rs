//! One answer on its way into the cache. The request that missed (or that
//! refreshes a stale entry) goes upstream and streams the answer to its
//! client as usual; each piece is also kept here, up to the route's
//! `max_body_bytes`. Only an answer read whole is stored: one that breaks
//! off, or that grows too big, is dropped, and the requests waiting for it
//! go on (one of them fills instead; after an uncacheable answer, all go
//! straight upstream for a while).

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::freshness::{self, Meta, Uncacheable};
use super::{Guard, Key, ResponseCache, Slot, Stored};
use crate::model::cache::CachePolicy;

enum How {
    /// A miss: the guard other requests for this key wait on.
    New(Option<Guard>),
    /// A stale entry being replaced (it stays until then).
    Refresh(Arc<Stored>),
}

pub struct Fill {
    cache: &'static ResponseCache,
    key: Key,
    how: How,
    /// The cache's generation when the upstream request began.
    generation: u64,
    meta: Option<Meta>,
    chunks: Vec<Bytes>,
    size: usize,
    max: usize,
    route: Arc<str>,
    target: Box<str>,
}

impl Fill {
    pub(super) fn new(
        cache: &'static ResponseCache,
        key: Key,
        guard: Guard,
        generation: u64,
    ) -> Self {
        Self::with(cache, key, How::New(Some(guard)), generation)
    }

    pub(super) fn refresh(cache: &'static ResponseCache, key: Key, stale: Arc<Stored>) -> Self {
        let generation = cache.generation();
        Self::with(cache, key, How::Refresh(stale), generation)
    }

    fn with(cache: &'static ResponseCache, key: Key, how: How, generation: u64) -> Self {
        Self {
            cache,
            key,
            how,
            generation,
            meta: None,
            chunks: Vec::new(),
            size: 0,
            max: 0,
            route: Arc::from(""),
            target: Box::from(""),
        }
    }

    /// The stale entry this fill replaces, if it is a refresh.
    pub fn stale(&self) -> Option<&Arc<Stored>> {
        match &self.how {
            How::Refresh(s) => Some(s),
            How::New(_) => None,
        }
    }

    /// The answer's header arrived: whether it will be stored (if not, the
    /// key passes upstream for a while and the fill is over).
    pub fn header(
        &mut self,
        policy: &CachePolicy,
        authorized: bool,
        resp: &ResponseHeader,
        route: &Arc<str>,
        target: &str,
    ) -> Result<(), Uncacheable> {
        match freshness::storable(policy, authorized, resp) {
            Ok(meta) => {
                self.meta = Some(meta);
                self.max = policy.max_body;
                self.route = route.clone();
                self.target = target.into();
                Ok(())
            }
            Err(why) => {
                self.pass(why, policy);
                Err(why)
            }
        }
    }

    /// The key goes straight upstream for a while (an error status keeps
    /// a stale entry, for `stale_if_error`).
    fn pass(&mut self, why: Uncacheable, policy: &CachePolicy) {
        self.meta = None;
        if why == Uncacheable::Status && self.stale().is_some() {
            return;
        }
        let until = Instant::now() + why.pass_for(policy.ttl);
        let guard = match &mut self.how {
            How::New(g) => g.take(),
            How::Refresh(_) => None,
        };
        self.cache.stored(self.key, Slot::Pass(until), guard);
    }

    /// A piece of the body; `false` once the fill gave up (too big).
    pub fn body(&mut self, data: &Bytes, policy: &CachePolicy) -> bool {
        if self.meta.is_none() {
            return false;
        }
        self.size += data.len();
        if self.size > self.max {
            self.chunks = Vec::new();
            self.pass(Uncacheable::TooBig, policy);
            return false;
        }
        if !data.is_empty() {
            self.chunks.push(data.clone());
        }
        true
    }

    /// The body ended whole: store it, unless a purge or flush came after
    /// the upstream request began.
    pub fn finish(mut self) {
        let Some(meta) = self.meta.take() else { return };
        if self.cache.generation() != self.generation {
            return;
        }
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.size);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        };
        let now = Instant::now();
        let fresh_until = now + meta.fresh;
        let stored = Arc::new(Stored {
            header: meta.header,
            body,
            stored: now,
            initial_age: meta.initial_age,
            fresh_until,
            stale_while_revalidate_until: fresh_until + meta.stale_while_revalidate,
            stale_if_error_until: fresh_until + meta.stale_if_error,
            route: self.route.clone(),
            target: std::mem::take(&mut self.target),
            tags: meta.tags.into_boxed_slice(),
            refreshing: Default::default(),
            checked: self.generation.into(),
        });
        let guard = match &mut self.how {
            How::New(g) => g.take(),
            How::Refresh(_) => None,
        };
        self.cache.stored(self.key, Slot::Stored(stored), guard);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // A refresh that did not store lets the next request try.
        if let How::Refresh(s) = &self.how {
            s.refreshing.store(false, Ordering::Release);
        }
    }
}
