//! Per-shard pseudo-random numbers for plugins (request ids, percentages, sampling):
//! xorshift64* in a `Cell`, seeded once when the shard builds the plugin. No lock, no atomic.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Not cryptographic: ids and coin flips only.
pub struct Rng(Cell<u64>);

impl Rng {
    /// Seeds from the process's random hasher keys (OS entropy), the time and `shard`, so
    /// shards and restarts never share a sequence.
    pub fn new(shard: usize) -> Rng {
        let mut h = RandomState::new().build_hasher();
        h.write_usize(shard);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        h.write_u64(nanos);
        let mut s = splitmix(h.finish());
        if s == 0 {
            // xorshift's one fixed point.
            s = 0x9e37_79b9_7f4a_7c15;
        }
        Rng(Cell::new(s))
    }

    #[inline]
    pub fn next_u64(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `pct`/100 (`pct` is clamped to 0..=100).
    #[inline]
    pub fn chance(&self, pct: f64) -> bool {
        if pct >= 100.0 {
            return true;
        }
        if pct <= 0.0 {
            return false;
        }
        // 53 random bits as a float in [0, 100).
        ((self.next_u64() >> 11) as f64) * (100.0 / (1u64 << 53) as f64) < pct
    }

    /// A random (version 4, RFC 9562) UUID in its 36-byte lowercase text form.
    pub fn uuid_v4(&self, out: &mut [u8; 36]) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut at = 0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[at] = b'-';
                at += 1;
            }
            out[at] = HEX[(byte >> 4) as usize];
            out[at + 1] = HEX[(byte & 0x0f) as usize];
            at += 2;
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape_and_uniqueness() {
        let r = Rng::new(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut u = [0u8; 36];
            r.uuid_v4(&mut u);
            let s = std::str::from_utf8(&u).unwrap().to_string();
            assert_eq!(&s[14..15], "4", "{s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
            assert_eq!(s.matches('-').count(), 4);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn chance_is_roughly_fair() {
        let r = Rng::new(1);
        let hits = (0..100_000).filter(|_| r.chance(30.0)).count();
        assert!((28_000..32_000).contains(&hits), "{hits}");
        assert!(!r.chance(0.0) && r.chance(100.0));
    }
}
