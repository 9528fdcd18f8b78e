//! A string-keyed map sized for the trie: most nodes have one or two
//! children and most leaves one or two exact hosts, and the persistent
//! hash map's root node alone takes ~1.3 KiB. A short vector holds the
//! few; the hash map takes over once there are many.

use std::sync::Arc;

/// A persistent hash map: clones share structure, and an insert copies
/// O(log n) small nodes instead of the whole table, so editing a node with
/// 10,000 children stays cheap.
type PMap<K, V> =
    imbl::GenericHashMap<K, V, ahash::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// Above this many keys a linear scan stops paying and cloning the vector
/// (path copying) stops being cheap.
const FEW: usize = 8;

#[derive(Debug, Clone)]
pub(super) enum Keyed<V> {
    /// Unordered; scanned.
    Few(Vec<(Arc<str>, V)>),
    Many(Box<PMap<Arc<str>, V>>),
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Keyed::Few(Vec::new())
    }
}

impl<V> Keyed<V> {
    pub(super) fn get(&self, key: &str) -> Option<&V> {
        match self {
            Keyed::Few(v) => v.iter().find(|(k, _)| &**k == key).map(|(_, v)| v),
            Keyed::Many(m) => m.get(key),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        match self {
            Keyed::Few(v) => v.is_empty(),
            Keyed::Many(m) => m.is_empty(),
        }
    }
}

impl<V: Clone> Keyed<V> {
    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match self {
            Keyed::Few(v) => v.iter_mut().find(|(k, _)| &**k == key).map(|(_, v)| v),
            Keyed::Many(m) => m.get_mut(key),
        }
    }

    /// The value under `key`, inserted as `V::default()` if absent.
    pub(super) fn get_or_default(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        if let Keyed::Few(v) = self {
            if v.len() >= FEW && !v.iter().any(|(k, _)| &**k == key) {
                let map: PMap<Arc<str>, V> = std::mem::take(v).into_iter().collect();
                *self = Keyed::Many(Box::new(map));
            }
        }
        match self {
            Keyed::Few(v) => {
                let i = match v.iter().position(|(k, _)| &**k == key) {
                    Some(i) => i,
                    None => {
                        v.push((key.into(), V::default()));
                        v.shrink_to_fit();
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Keyed::Many(m) => m.entry(key.into()).or_default(),
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        match self {
            Keyed::Few(v) => {
                if let Some(i) = v.iter().position(|(k, _)| &**k == key) {
                    v.swap_remove(i);
                    v.shrink_to_fit();
                }
            }
            Keyed::Many(m) => {
                m.remove(key);
                // Half the threshold, so a key added and removed at the
                // boundary does not convert back and forth.
                if m.len() <= FEW / 2 {
                    let few: Vec<(Arc<str>, V)> =
                        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    *self = Keyed::Few(few);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_shrinks_back() {
        let mut m: Keyed<u32> = Keyed::default();
        for i in 0..20u32 {
            *m.get_or_default(&format!("k{i}")) = i;
            assert_eq!(matches!(m, Keyed::Many(_)), i as usize >= FEW);
        }
        for i in 0..20u32 {
            assert_eq!(m.get(&format!("k{i}")), Some(&i));
        }
        *m.get_mut("k3").unwrap() += 100;
        assert_eq!(m.get("k3"), Some(&103));
        for i in 0..18u32 {
            m.remove(&format!("k{i}"));
        }
        assert!(matches!(m, Keyed::Few(_)));
        assert_eq!(m.get("k19"), Some(&19));
        assert_eq!(m.get("k0"), None);
        m.remove("k18");
        m.remove("k19");
        assert!(m.is_empty());
    }
}
