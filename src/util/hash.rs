//! Hashers for byte-string keys (route tables, limiter keys, cache keys).
//! Owns only hashing; must not know about routes, plugins or shards.

/// A `Hasher` for byte-string map keys: one-shot xxh3 per written piece.
#[derive(Default)]
pub struct BytesHasher(u64);

impl std::hash::Hasher for BytesHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(5) ^ n as u64;
    }
}
