//! Consistent hashing ring (virtual nodes, weighted) for one upstream on one shard.
//! Owns only the immutable ring; must not touch health, I/O or other policies.

use super::NodeSet;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Virtual points per unit of weight: enough for a few percent balance error per node.
const POINTS_PER_WEIGHT: u64 = 160;
/// Ring size cap (8 bytes per point) so huge weights cannot blow up per-shard memory; when
/// exceeded, every node is scaled down proportionally so weight ratios survive.
const MAX_POINTS: u64 = 1 << 18;

#[derive(Debug, Clone)]
pub(super) struct Chash {
    /// Sorted by (point, node); ties on the point are harmless and resolved by node index.
    ring: Vec<(u32, u32)>,
    nodes: usize,
}

impl Chash {
    /// Points derive from each node's key (or its index when `keys` is None), never from its
    /// neighbours, so adding a node leaves all existing points in place: only keys that land
    /// on the newcomer's points move.
    pub(super) fn new(weights: &[u32], keys: Option<&[&str]>) -> Chash {
        let units: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let want = units.saturating_mul(POINTS_PER_WEIGHT);
        let mut ring = Vec::with_capacity(want.min(MAX_POINTS) as usize + weights.len());
        for (node, &w) in weights.iter().enumerate() {
            let mut count = u64::from(w.max(1)) * POINTS_PER_WEIGHT;
            if want > MAX_POINTS {
                count = (count * MAX_POINTS / want).max(1);
            }
            let idx_key = (node as u64).to_le_bytes();
            let key: &[u8] = keys
                .and_then(|k| k.get(node))
                .map_or(&idx_key[..], |k| k.as_bytes());
            for replica in 0..count {
                let point = (xxh3_64_with_seed(key, replica) >> 32) as u32;
                ring.push((point, node as u32));
            }
        }
        ring.sort_unstable();
        Chash {
            ring,
            nodes: weights.len(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.nodes
    }

    /// First point clockwise from the key's position whose node is not skipped.
    pub(super) fn pick(&mut self, hash: u64, skip: &NodeSet) -> Option<usize> {
        if self.ring.is_empty() || skip.covers(self.nodes) {
            return None;
        }
        let h = (hash >> 32) as u32;
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let (after, before) = self.ring.split_at(start);
        before
            .iter()
            .chain(after)
            .map(|&(_, n)| n as usize)
            .find(|&n| !skip.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash_key;
    use super::*;
    use proptest::prelude::*;

    fn keys(n: usize) -> impl Iterator<Item = u64> {
        (0..n).map(|i| hash_key(format!("key-{i}").as_bytes()))
    }

    #[test]
    fn deterministic_across_instances() {
        let mut a = Chash::new(&[1, 2, 3], None);
        let mut b = Chash::new(&[1, 2, 3], None);
        let skip = NodeSet::new(3);
        for h in keys(2000) {
            let pa = a.pick(h, &skip);
            assert_eq!(pa, b.pick(h, &skip));
            assert_eq!(pa, a.pick(h, &skip));
        }
    }

    #[test]
    fn weights_roughly_respected() {
        let mut c = Chash::new(&[1, 1, 2], None);
        let skip = NodeSet::new(3);
        let mut counts = [0usize; 3];
        for h in keys(20_000) {
            counts[c.pick(h, &skip).expect("node")] += 1;
        }
        let share = counts[2] as f64 / 20_000.0;
        assert!((0.40..0.60).contains(&share), "{counts:?}");
        for &c in &counts[..2] {
            assert!((3_000..7_000).contains(&c), "{counts:?}");
        }
    }

    fn moved_on_add(n: usize) {
        let before_w = vec![1u32; n];
        let after_w = vec![1u32; n + 1];
        let mut before = Chash::new(&before_w, None);
        let mut after = Chash::new(&after_w, None);
        let (s0, s1) = (NodeSet::new(n), NodeSet::new(n + 1));
        let total = 10_000;
        let mut moved = 0;
        for h in keys(total) {
            let (a, b) = (before.pick(h, &s0), after.pick(h, &s1));
            if a != b {
                assert_eq!(b, Some(n), "a key moved to an old node");
                moved += 1;
            }
        }
        let frac = moved as f64 / total as f64;
        let ideal = 1.0 / (n + 1) as f64;
        assert!(
            (0.5 * ideal..1.5 * ideal).contains(&frac),
            "n={n} moved {frac}, ideal {ideal}"
        );
    }

    #[test]
    fn minimal_remap_when_node_added() {
        for n in [1, 2, 4, 9, 20] {
            moved_on_add(n);
        }
    }

    #[test]
    fn node_keys_survive_removal() {
        let full = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let less = ["10.0.0.1:80", "10.0.0.3:80"];
        let mut a = Chash::new(&[1, 1, 1], Some(&full));
        let mut b = Chash::new(&[1, 1], Some(&less));
        let (s3, s2) = (NodeSet::new(3), NodeSet::new(2));
        for h in keys(5_000) {
            match a.pick(h, &s3) {
                Some(1) => {}
                Some(0) => assert_eq!(b.pick(h, &s2), Some(0)),
                Some(2) => assert_eq!(b.pick(h, &s2), Some(1)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn skip_walks_clockwise_consistently() {
        let mut c = Chash::new(&[1, 1, 1, 1], None);
        let mut skip = NodeSet::new(4);
        let none = NodeSet::new(4);
        for h in keys(2_000) {
            let first = c.pick(h, &none).expect("node");
            skip.clear();
            skip.insert(first);
            let second = c.pick(h, &skip).expect("node");
            assert_ne!(first, second);
            // Deterministic fallback: every shard retries the same node.
            assert_eq!(c.pick(h, &skip), Some(second));
        }
        (0..4).for_each(|i| skip.insert(i));
        assert_eq!(c.pick(1, &skip), None);
    }

    #[test]
    fn ring_size_is_capped_but_keeps_ratios() {
        let c = Chash::new(&[100_000, 50_000], None);
        assert!(c.ring.len() as u64 <= MAX_POINTS + 2);
        let zeros = c.ring.iter().filter(|&&(_, n)| n == 0).count();
        let ones = c.ring.len() - zeros;
        assert!((zeros as f64 / ones as f64 - 2.0).abs() < 0.01);
    }

    #[test]
    fn empty_ring() {
        let mut c = Chash::new(&[], None);
        assert_eq!(c.pick(0, &NodeSet::new(0)), None);
    }

    proptest! {
        #[test]
        fn remap_only_to_new_node(n in 1usize..12, seeds in proptest::collection::vec(any::<u64>(), 1..200)) {
            let mut before = Chash::new(&vec![1; n], None);
            let mut after = Chash::new(&vec![1; n + 1], None);
            let (s0, s1) = (NodeSet::new(n), NodeSet::new(n + 1));
            for h in seeds {
                let (a, b) = (before.pick(h, &s0), after.pick(h, &s1));
                prop_assert!(a == b || b == Some(n));
            }
        }
    }
}
