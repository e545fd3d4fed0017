//! Weighted least-connections for one upstream on one shard (in-flight counts are per shard).
//! Owns only its in-flight counters and tie-break weights; must not touch health or I/O.

use super::NodeSet;

#[derive(Debug, Clone)]
pub(super) struct LeastConn {
    weights: Vec<u64>,
    in_flight: Vec<u64>,
    /// Smooth-WRR state used only among tied nodes, so idle nodes still share load by weight.
    current: Vec<i64>,
}

impl LeastConn {
    pub(super) fn new(weights: &[u32]) -> LeastConn {
        LeastConn {
            weights: weights.iter().map(|&w| u64::from(w.max(1))).collect(),
            in_flight: vec![0; weights.len()],
            current: vec![0; weights.len()],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    /// Picks the minimum in_flight/weight. Ratios are compared by cross-multiplying (u128, so
    /// no overflow and no floats). Ties go through smooth weighted round-robin, like nginx's
    /// least_conn, so equal nodes take turns instead of the first one taking everything.
    pub(super) fn pick(&mut self, skip: &NodeSet) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut ties = 0usize;
        for i in 0..self.weights.len() {
            if skip.contains(i) {
                continue;
            }
            match best {
                Some(b) => match self.cmp_load(i, b) {
                    std::cmp::Ordering::Less => {
                        best = Some(i);
                        ties = 1;
                    }
                    std::cmp::Ordering::Equal => ties += 1,
                    std::cmp::Ordering::Greater => {}
                },
                None => {
                    best = Some(i);
                    ties = 1;
                }
            }
        }
        let b = best?;
        if ties == 1 {
            return Some(b);
        }
        let mut chosen: Option<(usize, i64)> = None;
        let mut total = 0i64;
        for i in b..self.weights.len() {
            if skip.contains(i) || self.cmp_load(i, b) != std::cmp::Ordering::Equal {
                continue;
            }
            let w = self.weights[i] as i64;
            self.current[i] += w;
            total += w;
            if chosen.map_or(true, |(_, c)| self.current[i] > c) {
                chosen = Some((i, self.current[i]));
            }
        }
        let (c, _) = chosen?;
        self.current[c] -= total;
        Some(c)
    }

    fn cmp_load(&self, a: usize, b: usize) -> std::cmp::Ordering {
        let la = u128::from(self.in_flight[a]) * u128::from(self.weights[b]);
        let lb = u128::from(self.in_flight[b]) * u128::from(self.weights[a]);
        la.cmp(&lb)
    }

    pub(super) fn on_start(&mut self, node: usize) {
        if let Some(n) = self.in_flight.get_mut(node) {
            *n += 1;
        }
    }

    pub(super) fn in_flight(&self, node: usize) -> u64 {
        self.in_flight.get(node).copied().unwrap_or(0)
    }

    /// Saturating, so a stray finish (e.g. after a config reload swapped the balancer) cannot
    /// wrap the counter and starve the node forever.
    pub(super) fn on_finish(&mut self, node: usize) {
        if let Some(n) = self.in_flight.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefers_idle_node() {
        let mut lc = LeastConn::new(&[1, 1, 1]);
        let skip = NodeSet::new(3);
        lc.on_start(0);
        lc.on_start(1);
        assert_eq!(lc.pick(&skip), Some(2));
        lc.on_start(2);
        lc.on_start(2);
        lc.on_finish(0);
        assert_eq!(lc.pick(&skip), Some(0));
    }

    #[test]
    fn weight_scales_capacity() {
        // Node 0 has weight 3: it should hold ~3x the in-flight requests of node 1.
        let mut lc = LeastConn::new(&[3, 1]);
        let skip = NodeSet::new(2);
        for _ in 0..40 {
            let n = lc.pick(&skip).expect("node");
            lc.on_start(n);
        }
        assert_eq!(lc.in_flight, vec![30, 10]);
    }

    #[test]
    fn ties_rotate() {
        let mut lc = LeastConn::new(&[1, 1, 1]);
        let skip = NodeSet::new(3);
        // Requests finish immediately, so all nodes stay tied at zero.
        let picks: Vec<usize> = (0..6).map(|_| lc.pick(&skip).expect("node")).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn idle_ties_follow_weights() {
        let mut lc = LeastConn::new(&[5, 1, 1]);
        let skip = NodeSet::new(3);
        let picks: Vec<usize> = (0..7).map(|_| lc.pick(&skip).expect("node")).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skip_honoured() {
        let mut lc = LeastConn::new(&[1, 1]);
        let mut skip = NodeSet::new(2);
        lc.on_start(0);
        skip.insert(1);
        assert_eq!(lc.pick(&skip), Some(0));
        skip.insert(0);
        assert_eq!(lc.pick(&skip), None);
    }

    #[test]
    fn finish_saturates() {
        let mut lc = LeastConn::new(&[1, 1]);
        lc.on_finish(0);
        lc.on_finish(5);
        assert_eq!(lc.in_flight, vec![0, 0]);
    }

    proptest! {
        #[test]
        fn picks_a_least_loaded_node(
            weights in proptest::collection::vec(1u32..10, 1..10),
            ops in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..200),
        ) {
            let n = weights.len();
            let mut lc = LeastConn::new(&weights);
            let skip = NodeSet::new(n);
            for (start, x) in ops {
                if start {
                    let p = lc.pick(&skip).expect("node");
                    for i in 0..n {
                        prop_assert!(lc.cmp_load(p, i) != std::cmp::Ordering::Greater);
                    }
                    lc.on_start(p);
                } else {
                    lc.on_finish(x as usize % n);
                }
            }
        }
    }
}
