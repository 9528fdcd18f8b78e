//! Admission of client connections, before a byte is read: at most
//! `proxy.max_connections` open at once, and at most
//! `proxy.max_connections_per_ip` from one address (off unless set). Over
//! either, a new connection is closed at once and counted
//! (`tollgate_connections_refused_total{reason}`): 50,000 idle sockets from
//! a flood cannot take every file descriptor and the memory behind them,
//! and one address cannot take them all. Connections already open keep
//! being served. Lock-free: one atomic per connection, and per address a
//! compute on a concurrent map.

use std::net::IpAddr;
use std::sync::Arc;

use papaya::{Compute, Operation};

use crate::metrics::METRICS;

pub struct ConnLimits {
    max: usize,
    per_ip: Option<u32>,
    by_ip: papaya::HashMap<IpAddr, u32, ahash::RandomState>,
}

/// Holds one address's slot until the connection closes.
pub struct IpSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let map = self.limits.by_ip.pin();
        map.compute(self.ip, |entry| match entry {
            Some((_, n)) if *n > 1 => Operation::Insert(n - 1),
            Some(_) => Operation::Remove,
            None => Operation::Abort(()),
        });
    }
}

impl ConnLimits {
    pub fn new(max: usize, per_ip: Option<u32>) -> Self {
        Self {
            max,
            per_ip,
            by_ip: papaya::HashMap::builder()
                .hasher(ahash::RandomState::new())
                .build(),
        }
    }

    /// Whether a new connection may stay, with `open` connections open
    /// (itself included) from `ip`. `Ok(Some(slot))`: hold the slot while
    /// the connection lives.
    pub fn admit(
        self: &Arc<Self>,
        open: usize,
        ip: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<Option<IpSlot>, &'static str> {
        if open > self.max {
            METRICS
                .connections_refused
                .with_label_values(&["max_connections"])
                .inc();
            return Err("max_connections");
        }
        let (Some(cap), Some(ip)) = (self.per_ip, self.per_ip.and_then(|_| ip())) else {
            return Ok(None);
        };
        let map = self.by_ip.pin();
        let taken = map.compute(ip, |entry| match entry {
            Some((_, n)) if *n >= cap => Operation::Abort(()),
            Some((_, n)) => Operation::Insert(n + 1),
            None => Operation::Insert(1),
        });
        if matches!(taken, Compute::Aborted(())) {
            METRICS
                .connections_refused
                .with_label_values(&["max_connections_per_ip"])
                .inc();
            return Err("max_connections_per_ip");
        }
        Ok(Some(IpSlot {
            limits: self.clone(),
            ip,
        }))
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> u32 {
        self.by_ip.pin().get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_and_each_address_are_capped_and_slots_come_back() {
        let limits = Arc::new(ConnLimits::new(3, Some(2)));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = limits.admit(1, || Some(a)).unwrap();
        let s2 = limits.admit(2, || Some(a)).unwrap();
        assert_eq!(
            limits.admit(3, || Some(a)).err(),
            Some("max_connections_per_ip")
        );
        let s3 = limits.admit(3, || Some(b)).unwrap();
        assert_eq!(limits.admit(4, || Some(b)).err(), Some("max_connections"));
        drop(s1);
        assert_eq!(limits.held(a), 1);
        let again = limits.admit(3, || Some(a)).unwrap();
        drop((s2, s3, again));
        assert_eq!(
            (limits.held(a), limits.held(b)),
            (0, 0),
            "entries removed at zero"
        );
    }

    #[test]
    fn no_per_address_cap_never_asks_for_the_address() {
        let limits = Arc::new(ConnLimits::new(10, None));
        let slot = limits
            .admit(1, || unreachable!("peer address looked up"))
            .unwrap();
        assert!(slot.is_none());
    }
}
