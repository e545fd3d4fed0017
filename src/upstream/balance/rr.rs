//! Smooth weighted round-robin (nginx's algorithm) for one upstream on one shard.
//! Owns only its current-weight vector; must not touch health, I/O or other policies.

use super::NodeSet;

#[derive(Debug, Clone)]
pub(super) struct RoundRobin {
    /// (weight, current weight) per node, side by side so one pass touches one array.
    nodes: Vec<(i64, i64)>,
    /// Sum of all weights: the total when nothing is skipped (the common case).
    total: i64,
}

impl RoundRobin {
    pub(super) fn new(weights: &[u32]) -> RoundRobin {
        let nodes: Vec<(i64, i64)> = weights.iter().map(|&w| (i64::from(w.max(1)), 0)).collect();
        RoundRobin {
            total: nodes.iter().map(|n| n.0).sum(),
            nodes,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Skipped nodes neither gain current weight nor count towards the total, as nginx does
    /// for tried peers, so the remaining nodes keep their relative smooth ordering.
    pub(super) fn pick(&mut self, skip: &NodeSet) -> Option<usize> {
        match self.nodes.len() {
            0 => return None,
            1 => return (!skip.contains(0)).then_some(0),
            _ => {}
        }
        if skip.is_empty() {
            // First tries (almost every pick): no membership test per node, total precomputed.
            let mut best = 0;
            let mut best_cur = i64::MIN;
            for (i, (w, cur)) in self.nodes.iter_mut().enumerate() {
                *cur += *w;
                // Strict '>' keeps the first maximum, which yields nginx's exact sequence.
                // Written as two selects (cmov, no branch): the winner changes pick to pick in
                // a pattern the branch predictor misses.
                let c = *cur;
                best = if c > best_cur { i } else { best };
                best_cur = best_cur.max(c);
            }
            self.nodes[best].1 -= self.total;
            return Some(best);
        }
        let mut best: Option<(usize, i64)> = None;
        let mut total = 0i64;
        for (i, (w, cur)) in self.nodes.iter_mut().enumerate() {
            if skip.contains(i) {
                continue;
            }
            *cur += *w;
            total += *w;
            if best.map_or(true, |(_, c)| *cur > c) {
                best = Some((i, *cur));
            }
        }
        let (b, _) = best?;
        self.nodes[b].1 -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq(rr: &mut RoundRobin, skip: &NodeSet, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick(skip).expect("node")).collect()
    }

    #[test]
    fn nginx_smooth_sequence() {
        let mut rr = RoundRobin::new(&[5, 1, 1]);
        let skip = NodeSet::new(3);
        // a a b a c a a, repeated: the canonical nginx example.
        for _ in 0..10 {
            assert_eq!(seq(&mut rr, &skip, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        }
    }

    #[test]
    fn equal_weights_alternate() {
        let mut rr = RoundRobin::new(&[1, 1, 1]);
        let skip = NodeSet::new(3);
        assert_eq!(seq(&mut rr, &skip, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skip_is_honoured_and_rest_keep_ratio() {
        let mut rr = RoundRobin::new(&[5, 1, 1]);
        let mut skip = NodeSet::new(3);
        skip.insert(0);
        let s = seq(&mut rr, &skip, 100);
        assert!(s.iter().all(|&i| i != 0));
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 50);
        skip.insert(1);
        skip.insert(2);
        assert_eq!(rr.pick(&skip), None);
    }

    #[test]
    fn single_node() {
        let mut rr = RoundRobin::new(&[3]);
        let mut skip = NodeSet::new(1);
        assert_eq!(rr.pick(&skip), Some(0));
        skip.insert(0);
        assert_eq!(rr.pick(&skip), None);
    }

    #[test]
    fn zero_weight_treated_as_one() {
        let mut rr = RoundRobin::new(&[0, 1]);
        let skip = NodeSet::new(2);
        assert_eq!(seq(&mut rr, &skip, 4), vec![0, 1, 0, 1]);
    }

    proptest! {
        #[test]
        fn exact_ratio_per_cycle(weights in proptest::collection::vec(1u32..10, 1..8), cycles in 1usize..4) {
            let total: u32 = weights.iter().sum();
            let mut rr = RoundRobin::new(&weights);
            let skip = NodeSet::new(weights.len());
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..(total as usize * cycles) {
                counts[rr.pick(&skip).expect("node")] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, *w * cycles as u32);
            }
        }
    }
}
