//! Hit-ratio simulation of the proxy cache's sharding: Zipf(s=1.0) over 100k keys, a budget
//! holding 10% of them, split over the shards' stores. Requests arrive on shards at random (as
//! SO_REUSEPORT spreads clients); each key is looked up and stored in its owner's store (the
//! node's one cache, `cache::peer::owner`), or, as before the sharded cache, in the store of the
//! shard the request arrived on (`Spread::Arrival`, kept for comparison).
//! Numbers: `cargo test -p ringway-perf --release --test cache_hit_ratio -- --nocapture` (or a
//! debug build with `HIT_RATIO_ALL=1`: the same numbers, slower).

use ringway::cache::peer::owner;
use ringway::cache::store::{test_entry, Store, ENTRY_OVERHEAD};

const KEYS: usize = 100_000;
const BODY: usize = 512;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Cumulative Zipf(s) probabilities over `n` ranks.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn key(k: usize) -> [u8; 8] {
    // Fixed width, so every entry costs the same and "10% of keys" is exact.
    let mut b = *b"00000000";
    let mut v = k;
    for i in (0..8).rev() {
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    b
}

/// How the admission sketch's memory is counted.
#[derive(Clone, Copy, PartialEq)]
enum Sketch {
    /// Given back: every configuration holds the same number of objects.
    Extra,
    /// Taken out of the same byte budget as the objects.
    Charged,
}

/// Which shard's store a request uses.
#[derive(Clone, Copy, PartialEq)]
enum Spread {
    /// The key's owner: one cache per node.
    Owner,
    /// The shard it arrived on: one cache per shard (ringway before the sharded cache).
    Arrival,
}

/// Hit ratio over `requests` after `warmup`, for `shards` stores sharing `budget` bytes.
fn run(
    spread: Spread,
    shards: usize,
    admission: bool,
    sketch_bytes: Sketch,
    budget: usize,
    requests: usize,
    warmup: usize,
) -> f64 {
    let cdf = zipf_cdf(KEYS, 1.0);
    let per = budget / shards;
    let mut stores: Vec<Store> = (0..shards)
        .map(|_| {
            let expected = admission.then_some(per / (8 + BODY + ENTRY_OVERHEAD));
            // The sketch's bytes come out of the budget; give them back so every
            // configuration holds the same number of entries (RESULTS.md gives its share).
            let sketch = match sketch_bytes {
                Sketch::Extra => per - Store::new(per, expected).stats().budget,
                Sketch::Charged => 0,
            };
            Store::new(per + sketch, expected)
        })
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut hits, mut total) = (0u64, 0u64);
    for i in 0..requests + warmup {
        let u = rng.unit();
        let rank = cdf.partition_point(|&c| c < u).min(KEYS - 1);
        let arrival = (rng.next() % shards as u64) as usize;
        let k = key(rank);
        let h = xxhash_rust::xxh3::xxh3_64(&k);
        let shard = match spread {
            Spread::Owner => owner(h, shards),
            Spread::Arrival => arrival,
        };
        let s = &mut stores[shard];
        s.touch(h);
        let hit = s.get(&k, |_| true).is_some();
        if !hit {
            s.insert(&k, h, test_entry(BODY));
        }
        if i >= warmup {
            total += 1;
            hits += u64::from(hit);
        }
    }
    hits as f64 / total as f64
}

/// The best any shard-local policy can do when every shard sees every key: each holds the
/// `capacity` most popular keys, so the hit ratio is their share of the requests.
fn ceiling(capacity: usize) -> f64 {
    let h = |n: usize| (1..=n).map(|k| 1.0 / k as f64).sum::<f64>();
    h(capacity) / h(KEYS)
}

#[test]
fn owner_sharded_hit_ratio_within_1_point_of_one_unsharded_store() {
    let entry = 8 + test_entry(BODY).size() + ENTRY_OVERHEAD;
    let budget = KEYS / 10 * entry;
    // The same length in every build: a shorter warm-up measures TinyLFU still learning.
    // Debug builds skip the informational runs (plain LRU, per-arrival-shard stores, sketch
    // charged) unless HIT_RATIO_ALL is set.
    let (requests, warmup) = (2_000_000, 500_000);
    let informational = !cfg!(debug_assertions) || std::env::var_os("HIT_RATIO_ALL").is_some();
    let one = |a, sk| run(Spread::Owner, 1, a, sk, budget, requests, warmup);
    let (lru, tlfu1) = (one(false, Sketch::Extra), one(true, Sketch::Extra));
    println!(
        "zipf s=1.0, {KEYS} keys, budget {} entries, {requests} requests after {warmup} warm-up",
        KEYS / 10
    );
    println!(
        "unsharded: LRU {:.2}%, W-TinyLFU {:.2}%",
        lru * 100.0,
        tlfu1 * 100.0
    );
    for shards in [2, 4, 8] {
        let tlfu = run(
            Spread::Owner,
            shards,
            true,
            Sketch::Extra,
            budget,
            requests,
            warmup,
        );
        let extra = if informational {
            let r = |sp, a, sk| run(sp, shards, a, sk, budget, requests, warmup);
            let plain = r(Spread::Owner, false, Sketch::Extra);
            let charged = r(Spread::Owner, true, Sketch::Charged);
            let arrival = r(Spread::Arrival, true, Sketch::Extra);
            format!(
                "; LRU {:.2}% ({:+.2} vs unsharded LRU), sketch charged {:+.2}; \
                 per-arrival-shard stores (before) {:.2}% ({:+.2}, shard-local ceiling {:.2}%)",
                plain * 100.0,
                (plain - lru) * 100.0,
                (charged - tlfu1) * 100.0,
                arrival * 100.0,
                (arrival - tlfu1) * 100.0,
                ceiling(KEYS / 10 / shards) * 100.0
            )
        } else {
            String::new()
        };
        println!(
            "{shards} shards by owner: W-TinyLFU {:.2}% ({:+.2} points vs unsharded){extra}",
            tlfu * 100.0,
            (tlfu - tlfu1) * 100.0,
        );
        assert!(
            (tlfu - tlfu1).abs() <= 0.01,
            "{shards} shards by owner: {tlfu:.4} vs one unsharded store {tlfu1:.4}"
        );
    }
}
