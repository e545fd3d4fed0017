//! Prints, for a cache key built as proxy-cache's default (`$host`, `$request_uri`), one path per
//! shard that the shard owns: `cache_owner HOST SHARDS [PREFIX]` -> lines `shard path`. Used by
//! perf/cache-callgrind.sh to aim requests at a key's owner or at another shard.

use ringway::cache::peer::owner;
use xxhash_rust::xxh3::xxh3_64;

fn main() {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let shards: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2);
    let prefix = args.next().unwrap_or_else(|| "/obj-".into());
    let mut found: Vec<Option<String>> = vec![None; shards];
    for i in 0.. {
        let path = format!("{prefix}{i}");
        let mut key = host.to_ascii_lowercase().into_bytes();
        key.push(0x1f);
        key.extend_from_slice(path.as_bytes());
        let o = owner(xxh3_64(&key), shards);
        if found[o].is_none() {
            found[o] = Some(path);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    for (s, p) in found.iter().enumerate() {
        println!("{s} {}", p.as_deref().unwrap_or("-"));
    }
}
