//! Which node probes which instance when the fleet shares active health
//! checks: rendezvous hashing over the live gateways (`<prefix>/gateways/`).
//! Every node computes the same owner from the same member list, with no
//! coordination and no leader to fail over; when a node joins or leaves,
//! only the instances it owned (about 1/N) move. An elected prober per
//! upstream would put one upstream's whole probe load on one node and make
//! every membership change an election.

use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::watch;

use super::ring::{mix, stable_hash};

/// An instance as the fleet names it: (service, instance id).
pub type InstanceKey = (Arc<str>, Arc<str>);

/// What the checker needs to share probes with the fleet.
pub struct Sharing {
    /// This node's id, as in its gateway record.
    pub node_id: Arc<str>,
    /// The live gateways, sorted (written by the etcd source).
    pub members: Arc<ArcSwap<Vec<Arc<str>>>>,
    /// Whether this node's etcd session (its lease) is alive.
    pub session_live: watch::Receiver<bool>,
    /// Whether this node's watch is in sync with etcd (else the members
    /// and verdicts it holds may be frozen in the past).
    pub in_sync: Box<dyn Fn() -> bool + Send + Sync>,
    /// What this node's probes say the fleet's verdicts must be (the
    /// cluster's verdict writer makes etcd say so).
    pub verdicts: watch::Sender<Verdicts>,
}

/// The verdicts on the instances this node probes for the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Found unhealthy: must be in etcd, on this node's lease.
    pub down: BTreeSet<InstanceKey>,
    /// Of `down`, those the fleet does not (yet) say are unhealthy: a
    /// verdict lost (or not applied yet) is written again.
    pub missing: BTreeSet<InstanceKey>,
    /// Found healthy while the fleet says unhealthy (a verdict from the
    /// node that probed it before): to be deleted, whoever wrote it.
    pub clear: BTreeSet<InstanceKey>,
}

impl Sharing {
    /// Whether verdicts can be the fleet's now: the session is alive, the
    /// watch is in sync, and this node sees itself among the members.
    pub fn is_shared(&self) -> bool {
        *self.session_live.borrow()
            && (self.in_sync)()
            && self.members.load().contains(&self.node_id)
    }
}

/// The member that probes `instance` of `service`: the highest score of
/// hash(member, service, instance). Stable across processes and versions.
pub fn owner<'a>(members: &'a [Arc<str>], service: &str, instance: &str) -> Option<&'a Arc<str>> {
    let item = stable_hash(service.as_bytes()) ^ mix(stable_hash(instance.as_bytes()));
    members.iter().max_by(|a, b| {
        let score = |m: &Arc<str>| mix(stable_hash(m.as_bytes()) ^ item);
        (score(a), a.as_ref()).cmp(&(score(b), b.as_ref()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("gw-{i}"))).collect()
    }

    #[test]
    fn every_instance_has_one_owner_and_the_load_spreads() {
        let m = members(3);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let o = owner(&m, "users", &format!("i-{i}")).unwrap();
            counts[m.iter().position(|x| x == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
        assert!(owner(&[], "users", "i-1").is_none());
    }

    #[test]
    fn a_leaving_member_moves_only_its_own_instances() {
        let all = members(4);
        let fewer: Vec<_> = all.iter().filter(|m| &***m != "gw-2").cloned().collect();
        for i in 0..1000 {
            let id = format!("i-{i}");
            let before = owner(&all, "users", &id).unwrap();
            let after = owner(&fewer, "users", &id).unwrap();
            if &**before != "gw-2" {
                assert_eq!(before, after, "{id} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn the_owner_is_the_same_whatever_the_member_order() {
        let mut m = members(5);
        let a = owner(&m, "s", "x").cloned();
        m.reverse();
        assert_eq!(owner(&m, "s", "x").cloned(), a);
    }
}
