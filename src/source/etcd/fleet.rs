//! The live gateways, from their leased records under
//! `<prefix>/gateways/`: how many there are (cluster-scoped limits divide by
//! it) and which of them share health probes (the members probes are
//! split among).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::snapshot::SnapshotCell;

#[derive(Default)]
pub struct Fleet {
    gateways: BTreeSet<String>,
    /// The gateways that share health probes now: a node of an older
    /// version (a rolling upgrade) does not say so, and a stale one (its
    /// watch lost etcd) probes for itself only; given a share, either would
    /// leave it unprobed for the fleet.
    probers: BTreeSet<String>,
}

/// Whether a gateway record says its node shares health probes now.
fn shares_health(record: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(record)
        .is_ok_and(|v| v["shares_health"] == true && v["stale"] != true)
}

impl Fleet {
    pub fn put(&mut self, node: &str, record: &str) {
        self.gateways.insert(node.to_string());
        if shares_health(record) {
            self.probers.insert(node.to_string());
        } else {
            self.probers.remove(node);
        }
    }

    pub fn remove(&mut self, node: &str) {
        self.gateways.remove(node);
        self.probers.remove(node);
    }

    /// A re-list begins: what it lists is the fleet.
    pub fn clear(&mut self) {
        self.gateways.clear();
        self.probers.clear();
    }

    /// Hands the counts and the members to the request path and the checker.
    pub fn publish(&self, cell: &SnapshotCell) {
        cell.status.set_gateways(self.gateways.len());
        // Cluster-scoped limits divide by the live gateways (at least us).
        (cell.fleet).store(
            self.gateways.len().max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        let members = cell.members.load();
        if !members
            .iter()
            .map(|m| &**m)
            .eq(self.probers.iter().map(String::as_str))
        {
            let now: Vec<Arc<str>> = self.probers.iter().map(|g| Arc::from(g.as_str())).collect();
            cell.members.store(Arc::new(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nodes_that_share_now_are_members() {
        let cell = SnapshotCell::new();
        let mut f = Fleet::default();
        f.put("new", r#"{"shares_health": true, "stale": false}"#);
        f.put("old", r#"{"version": "0.0.9"}"#);
        f.put("cut", r#"{"shares_health": true, "stale": true}"#);
        f.publish(&cell);
        assert_eq!(cell.status.view().gateways, 3);
        assert_eq!(
            cell.members.load().iter().map(|m| &**m).collect::<Vec<_>>(),
            ["new"]
        );
        f.put("cut", r#"{"shares_health": true, "stale": false}"#);
        f.remove("new");
        f.publish(&cell);
        assert_eq!(
            cell.members.load().iter().map(|m| &**m).collect::<Vec<_>>(),
            ["cut"]
        );
    }
}
