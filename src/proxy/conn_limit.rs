//! Admission of client connections, before a byte is read: at most
//! `proxy.max_connections` open at once on each listener, and at most
//! `proxy.max_connections_per_ip` from one address (off unless set). Over
//! either, a new connection is closed at once and counted
//! (`tollgate_connections_refused_total{reason}`): 50,000 idle sockets from
//! a flood cannot take every file descriptor and the memory behind them,
//! and one address cannot take them all. Connections already open keep
//! being served. Lock-free: one atomic per connection (its listener's,
//! found by the local port among a few), and per address a compute on a
//! concurrent map.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use papaya::{Compute, Operation};

use crate::metrics::METRICS;

pub struct ConnLimits {
    max: usize,
    /// Open connections per listener, by its port (listeners never share
    /// one); the last entry counts connections of any other port.
    listeners: Vec<(u16, AtomicUsize)>,
    per_ip: Option<u32>,
    by_ip: papaya::HashMap<IpAddr, u32, ahash::RandomState>,
}

/// A connection's places (its listener's, its address's) until it closes.
pub struct Slot {
    limits: Arc<ConnLimits>,
    listener: usize,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.listeners[self.listener]
            .1
            .fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            self.limits.by_ip.pin().compute(ip, |entry| match entry {
                Some((_, n)) if *n > 1 => Operation::Insert(n - 1),
                Some(_) => Operation::Remove,
                None => Operation::Abort(()),
            });
        }
    }
}

impl ConnLimits {
    /// `max` connections on each listener (by port), `per_ip` from one
    /// address across them.
    pub fn new(max: usize, per_ip: Option<u32>, ports: impl IntoIterator<Item = u16>) -> Self {
        let mut listeners: Vec<(u16, AtomicUsize)> = ports
            .into_iter()
            .map(|p| (p, AtomicUsize::new(0)))
            .collect();
        listeners.push((0, AtomicUsize::new(0)));
        Self {
            max,
            listeners,
            per_ip,
            by_ip: papaya::HashMap::builder()
                .hasher(ahash::RandomState::new())
                .build(),
        }
    }

    /// Whether a new connection on the listener of port `local_port`, from
    /// `ip`, may stay: hold the slot while it lives.
    pub fn admit(
        self: &Arc<Self>,
        local_port: Option<u16>,
        ip: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<Slot, &'static str> {
        let last = self.listeners.len() - 1;
        let listener = local_port
            .and_then(|p| {
                self.listeners[..last]
                    .iter()
                    .position(|(port, _)| *port == p)
            })
            .unwrap_or(last);
        let mut slot = Slot {
            limits: self.clone(),
            listener,
            ip: None,
        };
        if self.listeners[listener].1.fetch_add(1, Ordering::AcqRel) >= self.max {
            METRICS
                .connections_refused
                .with_label_values(&["max_connections"])
                .inc();
            return Err("max_connections");
        }
        let (Some(cap), Some(ip)) = (self.per_ip, self.per_ip.and_then(|_| ip())) else {
            return Ok(slot);
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
        slot.ip = Some(ip);
        Ok(slot)
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> u32 {
        self.by_ip.pin().get(&ip).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn open_on(&self, port: u16) -> usize {
        self.listeners
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, n)| n.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_and_each_address_are_capped_and_slots_come_back() {
        let limits = Arc::new(ConnLimits::new(3, Some(2), [8080, 8443]));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        let s1 = limits.admit(Some(8080), || Some(a)).unwrap();
        let s2 = limits.admit(Some(8080), || Some(a)).unwrap();
        assert_eq!(
            limits.admit(Some(8080), || Some(a)).err(),
            Some("max_connections_per_ip")
        );
        let s3 = limits.admit(Some(8080), || Some(b)).unwrap();
        assert_eq!(
            limits.admit(Some(8080), || Some(c)).err(),
            Some("max_connections")
        );
        assert_eq!(
            limits.open_on(8080),
            3,
            "refused ones give their place back"
        );
        // Another listener has places of its own.
        let s4 = limits.admit(Some(8443), || Some(c)).unwrap();
        drop(s1);
        assert_eq!(limits.held(a), 1);
        let again = limits.admit(Some(8080), || Some(a)).unwrap();
        drop((s2, s3, s4, again));
        assert_eq!(
            (limits.held(a), limits.held(b), limits.held(c)),
            (0, 0, 0),
            "entries removed at zero"
        );
        assert_eq!((limits.open_on(8080), limits.open_on(8443)), (0, 0));
    }

    #[test]
    fn no_per_address_cap_never_asks_for_the_address() {
        let limits = Arc::new(ConnLimits::new(10, None, [80]));
        limits
            .admit(Some(80), || unreachable!("peer address looked up"))
            .unwrap();
    }
}
