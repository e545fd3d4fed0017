//! Hit-ratio simulation of the proxy cache's sharding: Zipf(s=1.0) over 100k keys, a budget
//! holding 10% of them, requests spread over shards at random (as SO_REUSEPORT spreads clients).
//! Release numbers: `cargo test -p ringway-perf --release --test cache_hit_ratio -- --nocapture`.

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

/// Hit ratio over `requests` after `warmup`, for `shards` stores sharing `budget` bytes.
fn run(
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
        let shard = (rng.next() % shards as u64) as usize;
        let s = &mut stores[shard];
        let k = key(rank);
        let h = xxhash_rust_hash(&k);
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

fn xxhash_rust_hash(k: &[u8]) -> u64 {
    // FNV-1a then a murmur finaliser: well mixed, and no extra dependency for the perf crate.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in k {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The best any shard-local policy can do when every shard sees every key: each holds the
/// `capacity` most popular keys, so the hit ratio is their share of the requests.
fn ceiling(capacity: usize) -> f64 {
    let h = |n: usize| (1..=n).map(|k| 1.0 / k as f64).sum::<f64>();
    h(capacity) / h(KEYS)
}

#[test]
fn sharded_hit_ratio_within_5_points_of_one_unsharded_lru() {
    let entry = 8 + test_entry(BODY).size() + ENTRY_OVERHEAD;
    let budget = KEYS / 10 * entry;
    // The same length in every build: a shorter warm-up measures TinyLFU still learning
    // (about 2 points lower at 4 shards). Debug builds skip the informational runs (plain LRU per shard,
    // sketch charged).
    let (requests, warmup) = (2_000_000, 500_000);
    let informational = !cfg!(debug_assertions);
    let lru = run(1, false, Sketch::Extra, budget, requests, warmup);
    println!(
        "zipf s=1.0, {KEYS} keys, budget {} entries, {requests} requests after {warmup} warm-up",
        KEYS / 10
    );
    println!("unsharded LRU:           {:.2}%", lru * 100.0);
    for shards in [1, 2, 4] {
        let tlfu = run(shards, true, Sketch::Extra, budget, requests, warmup);
        let (plain, charged) = if informational {
            let plain = run(shards, false, Sketch::Extra, budget, requests, warmup);
            let charged = run(shards, true, Sketch::Charged, budget, requests, warmup);
            (
                format!("{:.2}%", plain * 100.0),
                format!("{:+.2}", (charged - lru) * 100.0),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{shards} shard(s): LRU {plain}, W-TinyLFU {:.2}% ({:+.2} points vs unsharded LRU, \
             {charged} with the sketch's bytes charged; shard-local ceiling {:.2}%)",
            tlfu * 100.0,
            (tlfu - lru) * 100.0,
            ceiling(KEYS / 10 / shards) * 100.0
        );
        assert!(
            tlfu >= lru - 0.05,
            "{shards} shards with W-TinyLFU: {tlfu:.4} vs unsharded LRU {lru:.4}"
        );
    }
}
