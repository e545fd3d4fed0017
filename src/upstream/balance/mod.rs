//! Load-balancing policies: chooses an upstream node index per request (pure, per shard).
//! Owns node selection and the `NodeSet` bitset only; must not touch I/O, health state or config.

mod chash;
mod least_conn;
mod rr;

use chash::Chash;
use least_conn::LeastConn;
use rr::RoundRobin;

pub use crate::config::Policy;

/// Per-shard balancer state for one upstream. Node index = position in the node list.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Rr(RoundRobin),
    Lc(LeastConn),
    Ch(Chash),
}

impl Balancer {
    /// Builds a balancer; nodes are identified by their index (chash ring points derive from it).
    /// Weights are expected to be >= 1; a 0 is treated as 1 rather than panicking.
    pub fn new(policy: Policy, weights: &[u32]) -> Balancer {
        let inner = match policy {
            Policy::RoundRobin => Inner::Rr(RoundRobin::new(weights)),
            Policy::LeastConn => Inner::Lc(LeastConn::new(weights)),
            Policy::Chash => Inner::Ch(Chash::new(weights, None)),
        };
        Balancer { inner }
    }

    /// Like `new`, but chash ring points derive from `keys[i]` (e.g. "10.0.0.1:80") instead
    /// of the index, so removing or reordering nodes only remaps the keys of the changed
    /// nodes. `keys` must have the same length as `weights`; otherwise indexes are used.
    pub fn with_node_keys(policy: Policy, weights: &[u32], keys: &[&str]) -> Balancer {
        match policy {
            Policy::Chash if keys.len() == weights.len() => Balancer {
                inner: Inner::Ch(Chash::new(weights, Some(keys))),
            },
            _ => Balancer::new(policy, weights),
        }
    }

    pub fn policy(&self) -> Policy {
        match self.inner {
            Inner::Rr(_) => Policy::RoundRobin,
            Inner::Lc(_) => Policy::LeastConn,
            Inner::Ch(_) => Policy::Chash,
        }
    }

    /// Number of nodes this balancer chooses among.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Rr(b) => b.len(),
            Inner::Lc(b) => b.len(),
            Inner::Ch(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks a node not in `skip` (skip = nodes already tried for this request or ejected by
    /// health). Returns None only if every node is in `skip`. `hash` is used only by chash.
    pub fn pick(&mut self, hash: u64, skip: &NodeSet) -> Option<usize> {
        match &mut self.inner {
            Inner::Rr(b) => b.pick(skip),
            Inner::Lc(b) => b.pick(skip),
            Inner::Ch(b) => b.pick(hash, skip),
        }
    }

    /// A request started on `node` (least-conn counts in-flight requests).
    pub fn on_start(&mut self, node: usize) {
        if let Inner::Lc(b) = &mut self.inner {
            b.on_start(node);
        }
    }

    /// A request previously reported with `on_start` finished (successfully or not).
    pub fn on_finish(&mut self, node: usize) {
        if let Inner::Lc(b) = &mut self.inner {
            b.on_finish(node);
        }
    }

    /// Requests in flight on `node` as least_conn counts them (0 under the other policies).
    pub fn in_flight(&self, node: usize) -> u64 {
        match &self.inner {
            Inner::Lc(b) => b.in_flight(node),
            _ => 0,
        }
    }
}

/// Stable 64-bit hash of a balancing key (xxh3, unseeded): identical in every process and
/// shard, so all shards send a given key to the same node.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Small bitset of node indexes. Upstreams rarely exceed 64 nodes, so those live inline and
/// only larger ones touch the heap (once, at construction or first out-of-range insert).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSet {
    inline: u64,
    overflow: Vec<u64>,
}

impl NodeSet {
    /// A set able to hold indexes `0..n` without further allocation.
    pub fn new(n: usize) -> NodeSet {
        let words = n.saturating_sub(64).div_ceil(64);
        NodeSet {
            inline: 0,
            overflow: vec![0; words],
        }
    }

    pub fn insert(&mut self, i: usize) {
        if i < 64 {
            self.inline |= 1 << i;
            return;
        }
        let (w, b) = ((i - 64) / 64, (i - 64) % 64);
        if w >= self.overflow.len() {
            self.overflow.resize(w + 1, 0);
        }
        self.overflow[w] |= 1 << b;
    }

    pub fn remove(&mut self, i: usize) {
        if i < 64 {
            self.inline &= !(1 << i);
        } else if let Some(word) = self.overflow.get_mut((i - 64) / 64) {
            *word &= !(1 << ((i - 64) % 64));
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        if i < 64 {
            return self.inline & (1 << i) != 0;
        }
        self.overflow
            .get((i - 64) / 64)
            .is_some_and(|w| w & (1 << ((i - 64) % 64)) != 0)
    }

    /// Empties the set, keeping its capacity so per-request reuse never allocates.
    pub fn clear(&mut self) {
        self.inline = 0;
        self.overflow.iter_mut().for_each(|w| *w = 0);
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        let extra: u32 = self.overflow.iter().map(|w| w.count_ones()).sum();
        (self.inline.count_ones() + extra) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.inline == 0 && self.overflow.iter().all(|&w| w == 0)
    }

    /// True if every index in `0..n` is a member.
    pub fn covers(&self, n: usize) -> bool {
        (0..n).all(|i| self.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nodeset_inline_and_overflow() {
        let mut s = NodeSet::new(200);
        assert!(s.is_empty());
        for i in [0, 1, 63, 64, 65, 127, 128, 199] {
            s.insert(i);
        }
        assert_eq!(s.len(), 8);
        assert!(s.contains(63) && s.contains(64) && s.contains(199));
        assert!(!s.contains(2) && !s.contains(198) && !s.contains(10_000));
        s.remove(64);
        assert!(!s.contains(64));
        s.remove(10_000);
        assert_eq!(s.len(), 7);
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn nodeset_small_does_not_allocate() {
        let s = NodeSet::new(64);
        assert_eq!(s.overflow.capacity(), 0);
        let mut s = NodeSet::new(0);
        s.insert(300);
        assert!(s.contains(300));
        assert!(s.covers(0));
        assert!(!s.covers(1));
    }

    #[test]
    fn hash_key_is_stable() {
        // Pinned so a dependency upgrade that changed the hash (and so remapped every
        // chash key across a rolling restart) would be caught.
        assert_eq!(hash_key(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
        assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
    }

    #[test]
    fn balancer_dispatch() {
        let skip = NodeSet::new(3);
        for policy in [Policy::RoundRobin, Policy::LeastConn, Policy::Chash] {
            let mut b = Balancer::new(policy, &[1, 1, 1]);
            assert_eq!(b.policy(), policy);
            assert_eq!(b.len(), 3);
            let n = b.pick(hash_key(b"k"), &skip).expect("a node");
            b.on_start(n);
            b.on_finish(n);
            b.on_finish(n); // unbalanced finish must not underflow
            b.on_start(99); // out of range must not panic
            let mut all = NodeSet::new(3);
            (0..3).for_each(|i| all.insert(i));
            assert_eq!(b.pick(7, &all), None);
        }
        let mut empty = Balancer::new(Policy::RoundRobin, &[]);
        assert!(empty.is_empty());
        assert_eq!(empty.pick(0, &NodeSet::new(0)), None);
    }

    #[test]
    fn with_node_keys_falls_back_on_length_mismatch() {
        let mut a = Balancer::with_node_keys(Policy::Chash, &[1, 1], &["a"]);
        let mut b = Balancer::new(Policy::Chash, &[1, 1]);
        let skip = NodeSet::new(2);
        for k in 0..100u64 {
            let h = hash_key(&k.to_le_bytes());
            assert_eq!(a.pick(h, &skip), b.pick(h, &skip));
        }
    }

    proptest! {
        #[test]
        fn pick_honours_skip(
            policy in prop_oneof![Just(Policy::RoundRobin), Just(Policy::LeastConn), Just(Policy::Chash)],
            weights in proptest::collection::vec(1u32..20, 1..80),
            skipped in proptest::collection::vec(any::<u8>(), 0..100),
            hashes in proptest::collection::vec(any::<u64>(), 1..50),
        ) {
            let n = weights.len();
            let mut b = Balancer::new(policy, &weights);
            let mut skip = NodeSet::new(n);
            for s in skipped {
                skip.insert(s as usize % n);
            }
            for h in hashes {
                match b.pick(h, &skip) {
                    Some(i) => {
                        prop_assert!(i < n);
                        prop_assert!(!skip.contains(i));
                        b.on_start(i);
                    }
                    None => prop_assert!(skip.covers(n)),
                }
            }
        }

        #[test]
        fn nodeset_matches_model(ops in proptest::collection::vec((any::<bool>(), 0usize..300), 0..200)) {
            let mut s = NodeSet::new(70);
            let mut model = std::collections::BTreeSet::new();
            for (ins, i) in ops {
                if ins { s.insert(i); model.insert(i); } else { s.remove(i); model.remove(&i); }
            }
            prop_assert_eq!(s.len(), model.len());
            for i in 0..300 {
                prop_assert_eq!(s.contains(i), model.contains(&i));
            }
        }
    }
}
