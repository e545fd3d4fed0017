//! Instructions per cache hit in the shard store, for callgrind (wall clock on a shared box is
//! noise): 10k resident keys, then N hits, each the sketch count plus the lookup the plugin does.
//! Run twice with different N and divide the difference in Ir by the difference in N:
//! `valgrind --tool=callgrind target/release/examples/store_hits 100000` (and 1100000).

use ringway::cache::store::{test_entry, Store};
use xxhash_rust::xxh3::xxh3_64;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("api.example.com/items/{i}").into_bytes())
        .collect();
    let hashes: Vec<u64> = keys.iter().map(|k| xxh3_64(k)).collect();
    let mut store = Store::new(256 << 20, Some(10_000));
    for (k, &h) in keys.iter().zip(&hashes) {
        store.insert(k, h, test_entry(5));
    }
    let (mut i, mut hits) = (0usize, 0u64);
    for _ in 0..n {
        i = (i + 7919) % keys.len();
        store.touch(hashes[i]);
        hits += u64::from(store.get(&keys[i], |_| true).is_some());
    }
    println!("{hits} hits");
}
