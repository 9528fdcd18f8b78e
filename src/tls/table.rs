//! The certificates by server name, as the handshake reads them from the
//! published snapshot: exact name, then wildcard, then the default.
//!
//! Persistent maps: a put or delete copies only the paths it changes, so
//! publishing one certificate costs the same at 10 or 10,000 certificates,
//! and a lookup is a hash probe or two whatever the count.

use std::sync::Arc;

use imbl::{HashMap, OrdMap};

use super::cert::LoadedCert;
use crate::model::cert::Sni;

/// Certificates claiming one name, lowest id first: the first serves it.
type Claims = Arc<[Arc<LoadedCert>]>;

#[derive(Clone, Default)]
pub struct CertTable {
    by_id: OrdMap<Arc<str>, Arc<LoadedCert>>,
    exact: HashMap<Box<str>, Claims>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<Box<str>, Claims>,
}

impl std::fmt::Debug for CertTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertTable({} certs)", self.by_id.len())
    }
}

/// Two certificates claim one name: which serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub sni: String,
    pub serving: Arc<str>,
    pub others: Vec<Arc<str>>,
}

impl CertTable {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<LoadedCert>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedCert>> {
        self.by_id.values()
    }

    /// The certificate for `sni` (lower case): exact beats wildcard.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<LoadedCert>> {
        if let Some(c) = self.exact.get(sni).and_then(|c| c.first()) {
            return Some(c);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).and_then(|c| c.first())
    }

    /// Adds or replaces a certificate; returns the names it now shares
    /// with another (the lowest id serves them).
    pub fn insert(&mut self, cert: Arc<LoadedCert>) -> Vec<Overlap> {
        self.remove(&cert.id.clone());
        let mut overlaps = Vec::new();
        for sni in &cert.snis {
            let (map, name, shown) = match sni {
                Sni::Exact(n) => (&mut self.exact, n, n.to_string()),
                Sni::Wildcard(n) => (&mut self.wildcard, n, format!("*.{n}")),
            };
            let mut claims: Vec<Arc<LoadedCert>> =
                map.get(name).map(|c| c.to_vec()).unwrap_or_default();
            let at = claims.partition_point(|c| c.id < cert.id);
            claims.insert(at, cert.clone());
            if claims.len() > 1 {
                overlaps.push(Overlap {
                    sni: shown,
                    serving: claims[0].id.clone(),
                    others: claims[1..].iter().map(|c| c.id.clone()).collect(),
                });
            }
            map.insert(name.clone(), claims.into());
        }
        self.by_id.insert(cert.id.clone(), cert);
        overlaps
    }

    /// Removes certificate `id`; whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(old) = self.by_id.remove(id) else {
            return false;
        };
        for sni in &old.snis {
            let (map, name) = match sni {
                Sni::Exact(n) => (&mut self.exact, n),
                Sni::Wildcard(n) => (&mut self.wildcard, n),
            };
            let Some(claims) = map.get(name) else {
                continue;
            };
            let rest: Vec<_> = claims.iter().filter(|c| c.id != old.id).cloned().collect();
            if rest.is_empty() {
                map.remove(name);
            } else {
                map.insert(name.clone(), rest.into());
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_certs::self_signed;

    fn cert(id: &str, snis: &[&str]) -> Arc<LoadedCert> {
        Arc::new(self_signed(id, snis))
    }

    #[test]
    fn exact_beats_wildcard_and_a_wildcard_covers_one_label() {
        let mut t = CertTable::default();
        t.insert(cert("wild", &["*.example.com"]));
        t.insert(cert("api", &["api.example.com"]));
        assert_eq!(&*t.lookup("api.example.com").unwrap().id, "api");
        assert_eq!(&*t.lookup("www.example.com").unwrap().id, "wild");
        assert!(t.lookup("a.b.example.com").is_none());
        assert!(t.lookup("example.com").is_none());
    }

    #[test]
    fn overlapping_names_go_to_the_lowest_id_and_are_reported() {
        let mut t = CertTable::default();
        assert!(t.insert(cert("b", &["x.com"])).is_empty());
        let o = t.insert(cert("a", &["x.com", "y.com"]));
        assert_eq!(o.len(), 1);
        assert_eq!((&*o[0].serving, o[0].sni.as_str()), ("a", "x.com"));
        assert_eq!(&*t.lookup("x.com").unwrap().id, "a");
        t.remove("a");
        assert_eq!(&*t.lookup("x.com").unwrap().id, "b");
        assert!(t.lookup("y.com").is_none());
    }

    #[test]
    fn replacing_a_cert_drops_names_it_no_longer_has() {
        let mut t = CertTable::default();
        t.insert(cert("a", &["old.com"]));
        let before = t.clone();
        t.insert(cert("a", &["new.com"]));
        assert!(t.lookup("old.com").is_none());
        assert!(t.lookup("new.com").is_some());
        assert_eq!(t.len(), 1);
        // The published copy is untouched.
        assert!(before.lookup("old.com").is_some());
    }
}
