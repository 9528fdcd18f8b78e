//! The store's consumers: each one's credentials and its own limiter,
//! published whole when any changed (a consumer edit never touches routes).

use ahash::AHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::limiter::{self, RouteLimiter};
use crate::model::consumer::ConsumerEntry;
use crate::model::rate_limit::LimitKey;
use crate::plugins::consumer::{Consumer, ConsumerTable};
use crate::snapshot::SnapshotCell;

/// Consumers by name; `changed` until published.
#[derive(Default)]
pub struct ConsumerBook {
    by_name: BTreeMap<String, (Arc<Consumer>, Option<Arc<RouteLimiter>>)>,
    changed: bool,
}

impl ConsumerBook {
    /// Sets or removes one consumer. A limit that did not change keeps its
    /// limiter (and the consumer's level); a new rate carries the level.
    pub fn set(&mut self, cell: &SnapshotCell, name: &str, entry: Option<ConsumerEntry>) {
        let Some(entry) = entry else {
            self.changed |= self.by_name.remove(name).is_some();
            return;
        };
        let old = self.by_name.get(name);
        if old.is_some_and(|(c, _)| **c == entry.consumer) {
            return;
        }
        let previous = old.and_then(|(_, l)| l.clone());
        let limiter = entry.limit.map(|spec| match previous {
            Some(p) if p.spec == spec => p,
            p => Arc::new(RouteLimiter::new(
                spec,
                LimitKey::Route,
                &cell.fleet,
                p.as_deref(),
                limiter::now_ns(),
            )),
        });
        self.by_name
            .insert(name.to_string(), (Arc::new(entry.consumer), limiter));
        self.changed = true;
    }

    /// Replaces every consumer (a file source delivers them whole).
    pub fn replace(&mut self, cell: &SnapshotCell, entries: Vec<ConsumerEntry>) {
        let keep: BTreeSet<String> = entries
            .iter()
            .map(|e| e.consumer.name.to_string())
            .collect();
        let gone: Vec<String> = self
            .by_name
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.set(cell, &name, None);
        }
        for e in entries {
            let name = e.consumer.name.to_string();
            self.set(cell, &name, Some(e));
        }
    }

    /// Hands the consumers and their limiters to the request path if
    /// anything changed.
    pub fn publish(&mut self, cell: &SnapshotCell) {
        if !std::mem::take(&mut self.changed) {
            return;
        }
        let (table, clashes) = ConsumerTable::build(self.by_name.values().map(|(c, _)| c));
        for (what, holder, other) in clashes {
            tracing::warn!(credential = what, %holder, %other, "two consumers have the same credential: the first by name holds it");
        }
        let limits: AHashMap<Arc<str>, Arc<RouteLimiter>> = self
            .by_name
            .values()
            .filter_map(|(c, l)| Some((c.name.clone(), l.clone()?)))
            .collect();
        cell.consumers.store(Arc::new(table));
        cell.consumer_limits.store(Arc::new(limits));
    }
}
