//! Smooth weighted round robin, computed once per instance-set change so
//! that picking on the request path is one atomic increment and an index.

/// Longest smooth weighted round-robin sequence we precompute; larger
/// weight sums fall back to cumulative-weight search (still lock-free).
const MAX_SEQUENCE: u64 = 4096;

/// A precomputed weighted round-robin order over node indexes.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Debug, Clone, Default)]
enum Kind {
    #[default]
    Empty,
    /// nginx's smooth WRR, unrolled: weights 5,1,1 give a,a,b,a,c,a,a.
    Sequence(Box<[u32]>),
    /// (cumulative weight, node index), for very large weight sums.
    Cumulative(Box<[(u64, u32)]>, u64),
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Schedule {
    /// `weights[i]` is node i's weight; 0 leaves it out (e.g. draining).
    pub fn build(weights: &[u32]) -> Self {
        let live: Vec<(u32, u64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, w)| (i as u32, u64::from(*w)))
            .collect();
        if live.is_empty() {
            return Self { kind: Kind::Empty };
        }
        let g = live.iter().fold(0, |g, (_, w)| gcd(g, *w));
        let total: u64 = live.iter().map(|(_, w)| w / g).sum();
        if total <= MAX_SEQUENCE {
            let mut current = vec![0i64; live.len()];
            let mut seq = Vec::with_capacity(total as usize);
            for _ in 0..total {
                for (c, (_, w)) in current.iter_mut().zip(&live) {
                    *c += (w / g) as i64;
                }
                let (best, _) = current
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                    .unwrap_or((0, &0));
                current[best] -= total as i64;
                seq.push(live[best].0);
            }
            Self {
                kind: Kind::Sequence(seq.into()),
            }
        } else {
            let mut acc = 0;
            let cum = live
                .iter()
                .map(|(i, w)| {
                    acc += w;
                    (acc, *i)
                })
                .collect::<Vec<_>>();
            Self {
                kind: Kind::Cumulative(cum.into(), acc),
            }
        }
    }

    /// The node for the `n`th pick.
    pub fn pick(&self, n: usize) -> Option<u32> {
        match &self.kind {
            Kind::Empty => None,
            Kind::Sequence(seq) => Some(seq[n % seq.len()]),
            Kind::Cumulative(cum, total) => {
                let x = n as u64 % total;
                let i = cum.partition_point(|(c, _)| *c <= x);
                cum.get(i).map(|(_, node)| *node)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.kind, Kind::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &Schedule, nodes: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; nodes];
        for n in 0..picks {
            c[s.pick(n).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn smooth_weighted_order() {
        let s = Schedule::build(&[5, 1, 1]);
        let order: Vec<u32> = (0..7).map(|n| s.pick(n).unwrap()).collect();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&Schedule::build(&[2, 4]), 2, 600), vec![200, 400]);
    }

    #[test]
    fn zero_weight_is_skipped_and_empty_is_none() {
        assert_eq!(counts(&Schedule::build(&[1, 0, 1]), 3, 10), vec![5, 0, 5]);
        assert!(Schedule::build(&[0, 0]).pick(0).is_none());
        assert!(Schedule::build(&[]).is_empty());
    }

    #[test]
    fn huge_weight_sums_stay_proportional() {
        let s = Schedule::build(&[9999, 9998, 1]);
        assert!(matches!(s.kind, Kind::Cumulative(..)));
        assert_eq!(counts(&s, 3, 19998), vec![9999, 9998, 1]);
    }
}
