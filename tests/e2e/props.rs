//! Property tests for the balancers through their public API (issue 9), adding what the unit
//! proptests in src/upstream/balance/*.rs do not already cover: weight shares under random
//! weights and skip sets for every policy, and chash's ~1/N remap when a node is added with
//! address keys. (Token buckets: none exist in the tree yet, so nothing to test here.)

use proptest::prelude::*;
use ringway::upstream::balance::{hash_key, Balancer, NodeSet, Policy};

fn keys(n: usize, salt: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| hash_key(format!("client-{salt}-{i}").as_bytes()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Smooth weighted round-robin: over whole cycles of the non-skipped weight sum, every
    /// non-skipped node is picked exactly weight times per cycle, skipped ones never.
    #[test]
    fn round_robin_shares_are_exact_with_skips(
        weights in proptest::collection::vec(1u32..12, 1..10),
        skip_bits in any::<u16>(),
        cycles in 1usize..5,
    ) {
        let n = weights.len();
        let mut skip = NodeSet::new(n);
        for i in 0..n {
            if skip_bits & (1 << i) != 0 {
                skip.insert(i);
            }
        }
        let mut b = Balancer::new(Policy::RoundRobin, &weights);
        let live: u32 = (0..n).filter(|&i| !skip.contains(i)).map(|i| weights[i]).sum();
        if live == 0 {
            prop_assert_eq!(b.pick(0, &skip), None);
            return Ok(());
        }
        let mut counts = vec![0u32; n];
        for _ in 0..live as usize * cycles {
            let i = b.pick(0, &skip).expect("a live node");
            prop_assert!(!skip.contains(i));
            counts[i] += 1;
        }
        for i in 0..n {
            let want = if skip.contains(i) { 0 } else { weights[i] * cycles as u32 };
            prop_assert_eq!(counts[i], want, "node {} weights {:?} skip {:b}", i, &weights, skip_bits);
        }
    }

    /// least_conn with requests that finish before the next starts: every node is idle at
    /// each pick, so ties follow the weights.
    #[test]
    fn least_conn_idle_shares_follow_weights(weights in proptest::collection::vec(1u32..8, 1..8)) {
        let n = weights.len();
        let total: u32 = weights.iter().sum();
        let mut b = Balancer::new(Policy::LeastConn, &weights);
        let skip = NodeSet::new(n);
        let rounds = 200usize;
        let mut counts = vec![0usize; n];
        for _ in 0..total as usize * rounds {
            let i = b.pick(0, &skip).expect("node");
            b.on_start(i);
            b.on_finish(i);
            counts[i] += 1;
        }
        for i in 0..n {
            let want = weights[i] as f64 * rounds as f64;
            let got = counts[i] as f64;
            prop_assert!((got - want).abs() <= want * 0.1 + 2.0, "node {} got {} want {} ({:?})", i, got, want, &weights);
        }
    }

    /// least_conn with long requests: in-flight counts stay proportional to weights (no node
    /// gets more than its share plus one).
    #[test]
    fn least_conn_in_flight_follows_weights(weights in proptest::collection::vec(1u32..6, 1..8), k in 1u32..6) {
        let n = weights.len();
        let total: u32 = weights.iter().sum();
        let mut b = Balancer::new(Policy::LeastConn, &weights);
        let skip = NodeSet::new(n);
        let mut active = vec![0u32; n];
        for _ in 0..total * k {
            let i = b.pick(0, &skip).expect("node");
            b.on_start(i);
            active[i] += 1;
        }
        for i in 0..n {
            prop_assert!(active[i] <= weights[i] * k + 1, "node {} has {} active, weight {} x {} ({:?})", i, active[i], weights[i], k, &weights);
        }
    }

    /// Consistent hashing: the share of keys per node follows its weight (within 30%).
    #[test]
    fn chash_shares_follow_weights(weights in proptest::collection::vec(1u32..5, 2..6), salt in any::<u64>()) {
        let n = weights.len();
        let total: u32 = weights.iter().sum();
        let mut b = Balancer::new(Policy::Chash, &weights);
        let skip = NodeSet::new(n);
        let picks = 20_000usize;
        let mut counts = vec![0usize; n];
        for h in keys(picks, salt) {
            counts[b.pick(h, &skip).expect("node")] += 1;
        }
        for i in 0..n {
            let want = picks as f64 * weights[i] as f64 / total as f64;
            let got = counts[i] as f64;
            prop_assert!((got - want).abs() <= want * 0.3, "node {} got {} want {:.0} ({:?})", i, got, want, &weights);
        }
    }

    /// Consistent hashing keyed by address: adding an (N+1)th node moves about 1/(N+1) of the
    /// keys, and only to the new node.
    #[test]
    fn chash_adding_a_node_remaps_about_one_in_n(n in 1usize..10, salt in any::<u64>(), port0 in 1000u16..2000) {
        let addrs: Vec<String> = (0..=n).map(|i| format!("10.0.{}.{}:{}", i / 200, i % 200 + 1, port0)).collect();
        let before_keys: Vec<&str> = addrs[..n].iter().map(String::as_str).collect();
        let after_keys: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let mut before = Balancer::with_node_keys(Policy::Chash, &vec![1; n], &before_keys);
        let mut after = Balancer::with_node_keys(Policy::Chash, &vec![1; n + 1], &after_keys);
        let (s0, s1) = (NodeSet::new(n), NodeSet::new(n + 1));
        let total = 10_000usize;
        let mut moved = 0usize;
        for h in keys(total, salt) {
            let (a, b) = (before.pick(h, &s0), after.pick(h, &s1));
            if a != b {
                prop_assert_eq!(b, Some(n), "a key moved between old nodes");
                moved += 1;
            }
        }
        let frac = moved as f64 / total as f64;
        let ideal = 1.0 / (n + 1) as f64;
        prop_assert!((0.5 * ideal..1.5 * ideal).contains(&frac), "n={} moved {} ideal {}", n, frac, ideal);
    }
}
