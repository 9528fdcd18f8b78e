//! Cache purge records (`<prefix>/purges/<id>`), applied to this node's
//! cache once each, from the watch or from a listing; and the flush when
//! this node was out of touch with etcd for longer than a record lives.
//!
//! A record lives `cache.purge_record_ttl_s` (its lease). A node that
//! re-lists within that time of last hearing from etcd finds every purge
//! written meanwhile still there and applies the ones it has not; after
//! longer, some may have come and gone unseen, so it drops its whole
//! cache before it serves from it again (logged, and counted in
//! `tollgate_cache_purges_total{kind="flush"}`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cache::purge::PurgeSpec;
use crate::snapshot::SnapshotCell;

/// Heard from etcd within a record's life, less this for timing slop.
const MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Purges {
    /// Records applied, with the listing that last saw each.
    seen: BTreeMap<String, u32>,
    generation: u32,
    /// The last watch message or listing: this node knew every purge then.
    last_heard: Option<Instant>,
}

impl Purges {
    /// A record put (by the watch, or found by a listing).
    pub fn put(&mut self, id: &str, value: &[u8], cell: &SnapshotCell) -> Result<(), String> {
        if let Some(g) = self.seen.get_mut(id) {
            *g = self.generation;
            return Ok(());
        }
        let purge = serde_json::from_slice::<PurgeSpec>(value)
            .map_err(|e| e.to_string())?
            .compile()?;
        self.seen.insert(id.to_string(), self.generation);
        let dropped = cell.cache_if_used().map_or(0, |c| c.purge(&purge));
        tracing::info!(
            purge = id,
            route = purge.route(),
            dropped,
            "cache purge applied"
        );
        Ok(())
    }

    /// A record's lease ended (or it was deleted).
    pub fn delete(&mut self, id: &str) {
        self.seen.remove(id);
    }

    /// Every watch message: etcd was heard from.
    pub fn heard(&mut self) {
        self.last_heard = Some(Instant::now());
    }

    pub fn relist_begins(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// A listing ended: records it did not find are gone, and a node out
    /// of touch for longer than a record lives flushes its cache.
    pub fn relist_ends(&mut self, cell: &SnapshotCell) {
        let generation = self.generation;
        self.seen.retain(|_, g| *g == generation);
        let gap = self.last_heard.map(|t| t.elapsed());
        let lives = cell.purge_record_ttl().saturating_sub(MARGIN);
        if let (Some(gap), Some(cache)) = (gap, cell.cache_if_used()) {
            if gap > lives && !cache.is_empty() {
                cache.flush();
                tracing::warn!(
                    out_of_touch_s = gap.as_secs(),
                    record_ttl_s = cell.purge_record_ttl().as_secs(),
                    "out of touch with etcd longer than a purge record lives: the whole cache is dropped"
                );
            }
        }
        self.heard();
    }
}
