//! Consistent hashing: a ring of virtual nodes (more for heavier nodes).
//! A key maps to the first point at or after its hash; when one of N
//! nodes leaves, only the keys on its points (about 1/N) move.

/// Virtual nodes per unit of weight.
const POINTS_PER_WEIGHT: u32 = 64;
/// Cap on points per node, so a weight of 10,000 does not build a huge ring.
const MAX_POINTS: u32 = 4096;

#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, node index), sorted by point.
    points: Box<[(u64, u32)]>,
}

pub(crate) fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: cheap and well spread.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a: stable across processes and machines, so every gateway builds
/// the same ring and sends a key to the same instance.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn id_hash(id: &str) -> u64 {
    stable_hash(id.as_bytes())
}

impl Ring {
    /// `nodes` are (stable id, weight); weight 0 leaves a node out.
    pub fn build<'a>(nodes: impl Iterator<Item = (&'a str, u32)>) -> Self {
        let mut points = Vec::new();
        for (i, (id, weight)) in nodes.enumerate() {
            let base = id_hash(id);
            let n = weight.saturating_mul(POINTS_PER_WEIGHT).min(MAX_POINTS);
            for k in 0..n {
                points.push((mix(base ^ mix(u64::from(k) + 1)), i as u32));
            }
        }
        points.sort_unstable();
        Self {
            points: points.into(),
        }
    }

    /// The node for `key_hash`, then the following distinct nodes in ring
    /// order (for skipping unhealthy ones).
    pub fn walk(&self, key_hash: u64) -> impl Iterator<Item = u32> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < mix(key_hash));
        let n = self.points.len();
        (0..n).map(move |k| self.points[(start + k) % n].1)
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(r: &Ring, key: u64) -> u32 {
        r.walk(key).next().unwrap()
    }

    #[test]
    fn keys_stick_and_about_one_nth_move_when_a_node_leaves() {
        let ids = ["a", "b", "c", "d", "e"];
        let full = Ring::build(ids.iter().map(|i| (*i, 1)));
        let without_c = Ring::build(ids.iter().filter(|i| **i != "c").map(|i| (*i, 1)));
        let keys = 20_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let before = ids[owner(&full, k) as usize];
            let remaining: Vec<&str> = ids.iter().copied().filter(|i| *i != "c").collect();
            let after = remaining[owner(&without_c, k) as usize];
            assert_eq!(owner(&full, k), owner(&full, k), "stable");
            if before != after {
                assert_eq!(before, "c", "only c's keys move");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.12..0.28).contains(&share), "moved {share}");
    }

    #[test]
    fn weights_shift_the_share() {
        let r = Ring::build([("a", 1), ("b", 3)].into_iter());
        let b = (0..20_000u64).filter(|k| owner(&r, *k) == 1).count();
        assert!((13_000..17_000).contains(&b), "{b}");
        assert!(Ring::build(std::iter::empty()).is_empty());
    }
}
