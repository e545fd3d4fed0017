//! A shard's token caches for openid-connect: token bytes -> value until a deadline, bounded,
//! hashed with a per-process random seed (tokens are attacker-chosen). Shard-local, no I/O.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

/// Entries one cache keeps per shard; past it expired entries go, and if all are live, all go
/// (a flood of distinct valid tokens costs re-verification, never memory).
pub const MAX_ENTRIES: usize = 16_384;

/// xxh3 with a seed drawn once per process: fast on 1 KiB tokens (SipHash was ~4x slower)
/// without a fixed function an attacker could aim collisions at.
#[derive(Clone, Copy)]
pub struct Seeded(u64);

impl Default for Seeded {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Seeded(*SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new().hash_one(0x6f69_6463_u64)
        }))
    }
}

pub struct SeededHasher {
    seed: u64,
    h: u64,
}

impl Hasher for SeededHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.h = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.seed ^ self.h);
    }
    fn finish(&self) -> u64 {
        self.h
    }
}

impl BuildHasher for Seeded {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher { seed: self.0, h: 0 }
    }
}

/// Token -> (valid until, value).
pub struct TokenCache<V> {
    map: HashMap<Box<[u8]>, (Instant, V), Seeded>,
}

impl<V> Default for TokenCache<V> {
    fn default() -> Self {
        TokenCache {
            map: HashMap::with_hasher(Seeded::default()),
        }
    }
}

impl<V> TokenCache<V> {
    /// The value for `tok` if it is still valid at `now`.
    #[inline]
    pub fn get(&self, tok: &[u8], now: Instant) -> Option<&V> {
        match self.map.get(tok) {
            Some((until, v)) if *until > now => Some(v),
            _ => None,
        }
    }

    pub fn insert(&mut self, tok: &[u8], until: Instant, v: V, now: Instant) {
        if self.map.len() >= MAX_ENTRIES && !self.map.contains_key(tok) {
            self.map.retain(|_, (u, _)| *u > now);
            if self.map.len() >= MAX_ENTRIES {
                self.map.clear();
            }
        }
        self.map.insert(tok.into(), (until, v));
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let now = Instant::now();
        let mut c = TokenCache::default();
        c.insert(b"a", now + Duration::from_secs(1), 1, now);
        assert_eq!(c.get(b"a", now), Some(&1));
        assert_eq!(c.get(b"a", now + Duration::from_secs(2)), None);
        assert_eq!(c.get(b"b", now), None);
        for i in 0..MAX_ENTRIES + 10 {
            c.insert(&i.to_le_bytes(), now + Duration::from_secs(60), 2, now);
        }
        assert!(c.len() <= MAX_ENTRIES);
        assert!(!c.is_empty());
        c.clear();
        assert!(c.is_empty());
    }
}
