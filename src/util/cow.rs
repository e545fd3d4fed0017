//! Copy-on-write containers for tables that change one entry at a time: a chunked vector and a
//! bucketed byte-keyed map whose clone copies a few pointers and whose update copies one chunk.
//! Owns only the containers; must not know about routes, config or shards.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::hash::BytesHasher;

/// Entries per chunk: an update copies one chunk (and the chunk pointers), never the table.
const CHUNK: usize = 256;

/// A vector shared between config generations: `clone` copies the chunk pointers (len/256 of
/// them) and `set`/`push` copy only the chunk they touch (`Arc::make_mut`).
#[derive(Debug)]
pub struct CowVec<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Clone for CowVec<T> {
    fn clone(&self) -> Self {
        CowVec {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for CowVec<T> {
    fn default() -> Self {
        CowVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> CowVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub fn push(&mut self, v: T) {
        if self.len % CHUNK == 0 {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        if let Some(c) = self.chunks.last_mut() {
            Arc::make_mut(c).push(v);
            self.len += 1;
        }
    }

    /// Replaces entry `i`; returns false (and changes nothing) when `i` is out of range.
    pub fn set(&mut self, i: usize, v: T) -> bool {
        match self.chunks.get_mut(i / CHUNK) {
            Some(c) if i % CHUNK < c.len() => {
                Arc::make_mut(c)[i % CHUNK] = v;
                true
            }
            _ => false,
        }
    }

    /// Sets entry `i`, first growing the vector with defaults up to it.
    pub fn put(&mut self, i: usize, v: T)
    where
        T: Default,
    {
        while self.len <= i {
            self.push(T::default());
        }
        self.set(i, v);
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T: Clone> FromIterator<T> for CowVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        let mut v = CowVec::default();
        for x in it {
            v.push(x);
        }
        v
    }
}

type Bucket<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<BytesHasher>>;

/// Entries per bucket before the bucket count doubles.
const BUCKET_LOAD: usize = 128;

/// A byte-keyed map shared between config generations. Small maps are one bucket (a lookup
/// hashes once, as a plain map would); past `BUCKET_LOAD` entries per bucket the keys spread
/// over more buckets so an update copies one bucket, not the map.
#[derive(Debug)]
pub struct CowMap<V> {
    buckets: Vec<Arc<Bucket<V>>>,
    len: usize,
}

impl<V> Clone for CowMap<V> {
    fn clone(&self) -> Self {
        CowMap {
            buckets: self.buckets.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for CowMap<V> {
    fn default() -> Self {
        CowMap {
            buckets: Vec::new(),
            len: 0,
        }
    }
}

/// Which bucket a key lives in. Deliberately not a second full hash (the bucket's own map
/// hashes the key again, and a lookup should cost one hash, as with a plain map): the first and
/// last 8 bytes mixed, which spreads keys that differ anywhere in short keys or near either end
/// of long ones. Keys alike in both ends only crowd one bucket, which makes an update copy more,
/// never a lookup wrong.
fn bucket_of(key: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let k = key.len().min(8);
    let (head, tail) = (word(&key[..k]), word(&key[key.len() - k..]));
    let h = (head ^ tail.rotate_left(29) ^ key.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Fibonacci hashing: the product's top bits depend on every input bit.
    (h >> (64 - n.trailing_zeros())) as usize
}

impl<V: Clone> CowMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        match self.buckets.len() {
            0 => None,
            1 => self.buckets[0].get(key),
            n => self.buckets[bucket_of(key, n)].get(key),
        }
    }

    /// The bucket `key` lives in, made unique to this map.
    fn bucket_mut(&mut self, key: &[u8]) -> &mut Bucket<V> {
        if self.buckets.is_empty() {
            self.buckets.push(Arc::new(Bucket::default()));
        }
        let i = bucket_of(key, self.buckets.len());
        Arc::make_mut(&mut self.buckets[i])
    }

    pub fn get_or_insert_with(&mut self, key: &[u8], f: impl FnOnce() -> V) -> &mut V {
        if self.get(key).is_none() {
            self.len += 1;
            if self.len > self.buckets.len().max(1) * BUCKET_LOAD {
                self.grow();
            }
        }
        self.bucket_mut(key).entry(key.into()).or_insert_with(f)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        self.get(key)?;
        self.bucket_mut(key).get_mut(key)
    }

    pub fn insert(&mut self, key: Box<[u8]>, v: V) -> Option<V> {
        let old = self.bucket_mut(&key).insert(key, v);
        if old.is_none() {
            self.len += 1;
            if self.len > self.buckets.len() * BUCKET_LOAD {
                self.grow();
            }
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        self.get(key)?;
        let old = self.bucket_mut(key).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> + '_ {
        self.buckets
            .iter()
            .flat_map(|b| b.iter().map(|(k, v)| (&**k, v)))
    }

    /// Doubles the bucket count: O(len), once per doubling, so O(1) amortised per insert.
    fn grow(&mut self) {
        let n = (self.buckets.len() * 2).max(2);
        let mut fresh: Vec<Bucket<V>> = (0..n).map(|_| Bucket::default()).collect();
        for (k, v) in self.iter() {
            fresh[bucket_of(k, n)].insert(k.into(), v.clone());
        }
        self.buckets = fresh.into_iter().map(Arc::new).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_clone_is_independent() {
        let a: CowVec<u32> = (0..1000).collect();
        let mut b = a.clone();
        assert!(b.set(700, 7));
        b.push(1000);
        assert!(!b.set(5000, 1));
        assert_eq!(a.get(700), Some(&700));
        assert_eq!(b.get(700), Some(&7));
        assert_eq!((a.len(), b.len()), (1000, 1001));
        assert_eq!(
            b.iter().copied().sum::<u32>(),
            (0..1001).sum::<u32>() - 700 + 7
        );
    }

    #[test]
    fn map_grows_and_clones_independently() {
        let mut a = CowMap::default();
        for i in 0..5000u32 {
            a.insert(i.to_string().into_bytes().into(), i);
        }
        assert!(a.buckets.len() > 1);
        let mut b = a.clone();
        assert_eq!(b.remove(b"42"), Some(42));
        assert_eq!(b.insert(b"43".to_vec().into(), 0), Some(43));
        *b.get_mut(b"44").unwrap() = 1;
        assert_eq!(
            (a.get(b"42"), a.get(b"43"), a.get(b"44")),
            (Some(&42), Some(&43), Some(&44))
        );
        assert_eq!(
            (b.get(b"42"), b.get(b"43"), b.get(b"44")),
            (None, Some(&0), Some(&1))
        );
        assert_eq!((a.len(), b.len(), b.iter().count()), (5000, 4999, 4999));
    }

    #[test]
    fn buckets_spread_numbered_keys() {
        let mut m = CowMap::default();
        for i in 0..50_000u32 {
            m.insert(format!("/svc{i}").into_bytes().into(), i);
        }
        let biggest = m.buckets.iter().map(|b| b.len()).max().unwrap_or(0);
        // 512 buckets of ~98 on average; an update copies one of them.
        assert!(
            biggest < 4 * BUCKET_LOAD,
            "{} buckets, biggest {biggest}",
            m.buckets.len()
        );
        assert!((0..50_000u32).all(|i| m.get(format!("/svc{i}").as_bytes()) == Some(&i)));
    }
}
