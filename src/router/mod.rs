//! The route table: a segment trie over Gin-style path patterns, with host
//! and method filters at each leaf.
//!
//! Precedence (design.md): at each path segment an exact segment beats a
//! `:param`, which beats a `*catch_all`; among routes with the same path
//! shape the higher `priority` wins, then an exact host beats a wildcard
//! host beats any host. When the most specific path has no route for the
//! request's host or method, lookup backtracks to the next most specific.
//! Lookup walks one trie branch per segment: its cost follows the path's
//! depth, not the number of routes, and it never allocates.

mod host;

use ahash::AHashMap;

use crate::model::pattern::{PathPattern, Segment};
use crate::model::route::{method_bit, MethodMask};
pub use host::request_host;
use host::{wildcard_matches, HostKey};

/// One (route, host) pair waiting at a trie leaf.
#[derive(Debug, Clone)]
struct Entry {
    route: u32,
    priority: i32,
    methods: MethodMask,
}

/// Route entries that end at one trie position, split by host kind so an
/// exact host is one hash lookup however many hosts share the path.
#[derive(Debug, Default)]
struct Leaf {
    exact: AHashMap<Box<str>, Vec<Entry>>,
    /// (suffix, entries), longest suffix first.
    wildcard: Vec<(Box<str>, Vec<Entry>)>,
    any: Vec<Entry>,
}

#[derive(Debug, Default)]
struct Node {
    statics: AHashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here.
    end: Leaf,
    /// Routes with a catch-all after this position.
    catch_all: Leaf,
}

/// Why a route could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "path {pattern:?} with the same hosts, methods and priority is already taken by route {other}"
)]
pub struct Conflict {
    pub pattern: String,
    /// Index of the route already holding the slot.
    pub other: u32,
}

/// What the router needs of a route to place it.
pub struct RouteShape<'a> {
    pub patterns: &'a [PathPattern],
    /// Lower-cased, validated hosts; empty = any.
    pub hosts: &'a [String],
    pub methods: MethodMask,
    pub priority: i32,
}

/// A compiled, immutable route table.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    len: usize,
}

fn best(a: Option<(i32, u8, u32)>, b: Option<(i32, u8, u32)>) -> Option<(i32, u8, u32)> {
    match (a, b) {
        (Some(x), Some(y)) => {
            // Higher priority, then lower host rank; ties keep the first.
            if (y.0, std::cmp::Reverse(y.1)) > (x.0, std::cmp::Reverse(x.1)) {
                Some(y)
            } else {
                Some(x)
            }
        }
        (x, None) => x,
        (None, y) => y,
    }
}

fn first_allowed(entries: &[Entry], method: MethodMask, rank: u8) -> Option<(i32, u8, u32)> {
    entries
        .iter()
        .find(|e| e.methods == 0 || e.methods & method != 0)
        .map(|e| (e.priority, rank, e.route))
}

impl Leaf {
    fn bucket_mut(&mut self, key: &HostKey) -> &mut Vec<Entry> {
        match key {
            HostKey::Exact(h) => self.exact.entry(h.clone()).or_default(),
            HostKey::Wildcard(s) => {
                let pos = self.wildcard.iter().position(|(x, _)| x == s);
                let i = match pos {
                    Some(i) => i,
                    None => {
                        // Longest (most specific) suffix first.
                        let at = self
                            .wildcard
                            .iter()
                            .position(|(x, _)| x.len() < s.len())
                            .unwrap_or(self.wildcard.len());
                        self.wildcard.insert(at, (s.clone(), Vec::new()));
                        at
                    }
                };
                &mut self.wildcard[i].1
            }
            HostKey::Any => &mut self.any,
        }
    }

    fn bucket(&self, key: &HostKey) -> Option<&Vec<Entry>> {
        match key {
            HostKey::Exact(h) => self.exact.get(h),
            HostKey::Wildcard(s) => self.wildcard.iter().find(|(x, _)| x == s).map(|(_, v)| v),
            HostKey::Any => Some(&self.any),
        }
    }

    fn conflict(&self, key: &HostKey, e: &Entry) -> Option<u32> {
        self.bucket(key)?
            .iter()
            .find(|o| {
                o.priority == e.priority
                    && (o.methods == 0 || e.methods == 0 || o.methods & e.methods != 0)
            })
            .map(|o| o.route)
    }

    fn insert(&mut self, key: &HostKey, e: Entry) {
        let bucket = self.bucket_mut(key);
        // Stable: among equal priorities the earlier route stays first.
        let at = bucket
            .iter()
            .position(|o| o.priority < e.priority)
            .unwrap_or(bucket.len());
        bucket.insert(at, e);
    }

    /// The best entry for this host and method across the three host kinds.
    fn find(&self, host: &str, lower_host: Option<&str>, method: MethodMask) -> Option<u32> {
        let mut found = None;
        if let Some(h) = lower_host {
            if let Some(v) = self.exact.get(h) {
                found = first_allowed(v, method, 0);
            }
        }
        for (suffix, v) in &self.wildcard {
            if wildcard_matches(suffix, host) {
                found = best(found, first_allowed(v, method, 1));
            }
        }
        found = best(found, first_allowed(&self.any, method, 2));
        found.map(|(_, _, r)| r)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }
}

/// Splits the next segment off a path remainder (`None` = no segments left).
fn next_segment(rest: &str) -> (&str, Option<&str>) {
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

impl Node {
    fn leaf_for(&mut self, pattern: &PathPattern) -> &mut Leaf {
        let mut node = self;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Static(s) => node.statics.entry(s.as_str().into()).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                Segment::CatchAll(_) => return &mut node.catch_all,
            };
        }
        &mut node.end
    }

    fn leaf(&self, pattern: &PathPattern) -> Option<&Leaf> {
        let mut node = self;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Static(s) => node.statics.get(s.as_str())?,
                Segment::Param(_) => node.param.as_deref()?,
                Segment::CatchAll(_) => return Some(&node.catch_all),
            };
        }
        Some(&node.end)
    }

    fn find(&self, rest: Option<&str>, q: &Query<'_>) -> Option<u32> {
        let Some(rest) = rest else {
            return self
                .end
                .find(q.host, q.lower_host, q.method)
                .or_else(|| self.catch_all.find(q.host, q.lower_host, q.method));
        };
        let (seg, tail) = next_segment(rest);
        if let Some(child) = self.statics.get(seg) {
            if let Some(r) = child.find(tail, q) {
                return Some(r);
            }
        }
        if !seg.is_empty() {
            if let Some(child) = &self.param {
                if let Some(r) = child.find(tail, q) {
                    return Some(r);
                }
            }
        }
        if self.catch_all.is_empty() {
            return None;
        }
        self.catch_all.find(q.host, q.lower_host, q.method)
    }
}

struct Query<'a> {
    host: &'a str,
    lower_host: Option<&'a str>,
    method: MethodMask,
}

impl Router {
    /// Adds route number `route`, all its (path, host) pairs or none of them.
    pub fn add(&mut self, route: u32, shape: &RouteShape<'_>) -> Result<(), Conflict> {
        let keys: Vec<HostKey> = if shape.hosts.is_empty() {
            vec![HostKey::Any]
        } else {
            shape
                .hosts
                .iter()
                .map(|h| HostKey::from_route_host(h))
                .collect()
        };
        let entry = Entry {
            route,
            priority: shape.priority,
            methods: shape.methods,
        };
        for p in shape.patterns {
            if let Some(leaf) = self.root.leaf(p) {
                for k in &keys {
                    if let Some(other) = leaf.conflict(k, &entry) {
                        return Err(Conflict {
                            pattern: p.raw.clone(),
                            other,
                        });
                    }
                }
            }
        }
        // A route listing the same path (or host) twice must not conflict with itself.
        for p in shape.patterns {
            let leaf = self.root.leaf_for(p);
            for k in &keys {
                if leaf.conflict(k, &entry) != Some(route) {
                    leaf.insert(k, entry.clone());
                }
            }
        }
        self.len += 1;
        Ok(())
    }

    /// The route for a request, if any. `host` is the Host header without
    /// port; `path` is the request path without query.
    pub fn lookup(&self, host: &str, method: &str, path: &str) -> Option<u32> {
        let mut buf = [0u8; 256];
        let lower_host = (host.len() <= buf.len())
            .then(|| {
                let b = &mut buf[..host.len()];
                b.copy_from_slice(host.as_bytes());
                b.make_ascii_lowercase();
                std::str::from_utf8(b).ok()
            })
            .flatten();
        let q = Query {
            host,
            lower_host,
            method: method_bit(method),
        };
        let rest = path.strip_prefix('/')?;
        self.root.find(Some(rest), &q)
    }

    /// How many routes were added.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests;
