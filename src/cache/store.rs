//! One shard's cache store: entries by primary key with Vary variants, a byte budget that is
//! never exceeded, LRU order in a slab-backed list, TinyLFU admission, purge and expiry sweeps.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use super::entry::Entry;
use super::sketch::Sketch;

/// Bytes charged per entry on top of its key, headers and body (slab node, map slot, Rc).
pub const ENTRY_OVERHEAD: usize = 192;
/// Variants kept per primary key; the least recently used one goes first.
const MAX_VARIANTS: usize = 16;
const NIL: u32 = u32::MAX;

struct Node {
    key: Rc<[u8]>,
    entry: Rc<Entry>,
    size: usize,
    hash: u64,
    prev: u32,
    next: u32,
}

/// Counters for the shard loop and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: usize,
    pub bytes: usize,
    pub peak: usize,
    pub budget: usize,
    pub evictions: u64,
    pub rejected: u64,
}

pub struct Store {
    map: HashMap<Rc<[u8]>, Vec<u32>>,
    slab: Vec<Option<Node>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next victim.
    tail: u32,
    bytes: usize,
    budget: usize,
    peak: usize,
    evictions: u64,
    rejected: u64,
    sketch: Option<Sketch>,
    sweep_at: usize,
}

impl Store {
    /// `budget`: bytes this store may hold; `expected_entries` sizes the admission sketch
    /// (`None` = plain LRU). The sketch's own memory is taken out of the budget.
    pub fn new(budget: usize, expected_entries: Option<usize>) -> Store {
        let sketch = expected_entries
            .map(Sketch::new)
            .filter(|s| s.bytes() * 4 <= budget);
        let budget = budget - sketch.as_ref().map_or(0, Sketch::bytes);
        Store {
            map: HashMap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            budget,
            peak: 0,
            evictions: 0,
            rejected: 0,
            sketch,
            sweep_at: 0,
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.slab.len() - self.free.len(),
            bytes: self.bytes,
            peak: self.peak,
            budget: self.budget,
            evictions: self.evictions,
            rejected: self.rejected,
        }
    }

    /// Counts one request for `hash` (hit or miss) in the admission sketch.
    pub fn touch(&mut self, hash: u64) {
        if let Some(s) = &mut self.sketch {
            s.increment(hash);
        }
    }

    /// The variant of `key` whose Vary values `matches` accepts; moves it to the front.
    pub fn get(&mut self, key: &[u8], matches: impl Fn(&Entry) -> bool) -> Option<Rc<Entry>> {
        let ids = self.map.get(key)?;
        let id = *ids
            .iter()
            .find(|&&i| self.node(i).is_some_and(|n| matches(&n.entry)))?;
        self.unlink(id);
        self.push_front(id);
        self.node(id).map(|n| n.entry.clone())
    }

    /// True if any variant of `key` is stored.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Stores `entry` under `key`, replacing a variant with the same Vary values. Returns false
    /// if it was not admitted (too large for the budget, or colder than what it would evict).
    pub fn insert(&mut self, key: &[u8], hash: u64, entry: Entry) -> bool {
        let size = key.len() + entry.size() + ENTRY_OVERHEAD;
        if size > self.budget {
            self.rejected += 1;
            return false;
        }
        let replaced = self.map.get(key).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|&i| self.node(i).is_some_and(|n| n.entry.same_variant(&entry)))
        });
        // A key already resident is a refresh: always admitted.
        let resident = replaced.is_some();
        if let Some(old) = replaced {
            self.remove_id(old);
        }
        if self.bytes + size > self.budget && !resident && !self.admit(hash, size) {
            self.rejected += 1;
            return false;
        }
        while self.bytes + size > self.budget && self.tail != NIL {
            self.remove_id(self.tail);
            self.evictions += 1;
        }
        let key: Rc<[u8]> = match self.map.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Rc::from(key),
        };
        let node = Node {
            key: key.clone(),
            entry: Rc::new(entry),
            size,
            hash,
            prev: NIL,
            next: NIL,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(node);
                i
            }
            None => {
                self.slab.push(Some(node));
                (self.slab.len() - 1) as u32
            }
        };
        self.push_front(id);
        self.bytes += size;
        self.peak = self.peak.max(self.bytes);
        let ids = self.map.entry(key).or_default();
        ids.push(id);
        if ids.len() > MAX_VARIANTS {
            let ids = ids.clone();
            let oldest = ids
                .iter()
                .copied()
                .min_by_key(|&i| self.node(i).map_or(0, |n| n.entry.stored_ms));
            if let Some(o) = oldest {
                self.remove_id(o);
            }
        }
        true
    }

    /// TinyLFU: a newcomer may evict only entries it has been asked for more often than.
    fn admit(&self, hash: u64, size: usize) -> bool {
        let Some(s) = &self.sketch else { return true };
        let want = s.estimate(hash);
        let (mut freed, mut at) = (0usize, self.tail);
        while self.bytes - freed + size > self.budget && at != NIL {
            let Some(n) = self.node(at) else { break };
            if s.estimate(n.hash) >= want {
                return false;
            }
            freed += n.size;
            at = n.prev;
        }
        true
    }

    /// Removes every variant of `key`; returns how many there were.
    pub fn remove(&mut self, key: &[u8]) -> usize {
        let ids = self.map.get(key).cloned().unwrap_or_default();
        for &i in &ids {
            self.remove_id(i);
        }
        ids.len()
    }

    /// Removes entries whose primary key starts with `prefix`, or whose `Surrogate-Key`
    /// header lists `tag`; returns how many.
    pub fn remove_where(&mut self, prefix: Option<&[u8]>, tag: Option<&[u8]>) -> usize {
        let ids: Vec<u32> = (0..self.slab.len() as u32)
            .filter(|&i| {
                self.node(i).is_some_and(|n| {
                    prefix.is_some_and(|p| n.key.starts_with(p))
                        || tag.is_some_and(|t| n.entry.has_tag(t))
                })
            })
            .collect();
        for &i in &ids {
            self.remove_id(i);
        }
        ids.len()
    }

    /// Drops up to `budget` slab slots' worth of entries that can no longer be used at
    /// `now_ms` (past every stale window, no validator). Incremental: resumes where it stopped.
    pub fn sweep(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.slab.len()) {
            if self.sweep_at >= self.slab.len() {
                self.sweep_at = 0;
            }
            let i = self.sweep_at as u32;
            self.sweep_at += 1;
            if self.node(i).is_some_and(|n| n.entry.is_dead(now_ms)) {
                self.remove_id(i);
                dropped += 1;
            }
        }
        dropped
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.slab.get(i as usize).and_then(Option::as_ref)
    }

    fn remove_id(&mut self, id: u32) {
        self.unlink(id);
        let Some(node) = self.slab.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        self.bytes -= node.size;
        if let Some(ids) = self.map.get_mut(&node.key) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.map.remove(&node.key);
            }
        }
    }

    fn unlink(&mut self, id: u32) {
        let Some(n) = self.node(id) else { return };
        let (prev, next) = (n.prev, n.next);
        match self.slab.get_mut(prev as usize).and_then(Option::as_mut) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slab.get_mut(next as usize).and_then(Option::as_mut) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(n) = self.slab.get_mut(id as usize).and_then(Option::as_mut) {
            n.prev = NIL;
            n.next = NIL;
        }
    }

    fn push_front(&mut self, id: u32) {
        let old = self.head;
        if let Some(n) = self.slab.get_mut(id as usize).and_then(Option::as_mut) {
            n.prev = NIL;
            n.next = old;
        }
        match self.slab.get_mut(old as usize).and_then(Option::as_mut) {
            Some(o) => o.prev = id,
            None => self.tail = id,
        }
        self.head = id;
    }
}

/// A body-less entry of roughly `body` bytes, for tests and the hit-ratio simulation.
pub fn test_entry(body: usize) -> Entry {
    Entry {
        body: Bytes::from(vec![0u8; body]),
        ..Entry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("k{i}").into_bytes()
    }

    #[test]
    fn lru_evicts_oldest_and_never_exceeds_budget() {
        let one = key(0).len() + test_entry(100).size() + ENTRY_OVERHEAD;
        let mut s = Store::new(one * 3, None);
        for i in 0..3 {
            assert!(s.insert(&key(i), i, test_entry(100)));
        }
        assert!(s.get(&key(0), |_| true).is_some(), "0 becomes most recent");
        assert!(s.insert(&key(3), 3, test_entry(100)));
        assert!(s.get(&key(1), |_| true).is_none(), "1 was least recent");
        assert!(s.get(&key(0), |_| true).is_some());
        for i in 10..1000 {
            s.insert(&key(i), i, test_entry(50 + (i as usize % 200)));
            assert!(s.stats().bytes <= s.stats().budget);
        }
        assert!(s.stats().peak <= s.stats().budget);
        assert!(
            !s.insert(b"big", 1, test_entry(one * 3)),
            "larger than the budget"
        );
    }

    #[test]
    fn tinylfu_keeps_hot_entries_against_one_hit_wonders() {
        let one = key(0).len() + test_entry(100).size() + ENTRY_OVERHEAD;
        let mut s = Store::new(one * 10 + 256, Some(64));
        for i in 0..10 {
            for _ in 0..5 {
                s.touch(i);
            }
            assert!(s.insert(&key(i), i, test_entry(100)));
        }
        for i in 100..200 {
            s.touch(i);
            s.insert(&key(i), i, test_entry(100));
        }
        let kept = (0..10)
            .filter(|&i| s.get(&key(i), |_| true).is_some())
            .count();
        assert_eq!(kept, 10, "a scan of new keys did not flush the hot set");
        assert!(s.stats().rejected >= 90);
    }

    #[test]
    fn variants_remove_and_prefix() {
        let mut s = Store::new(1 << 20, None);
        let mut a = test_entry(1);
        a.vary = vec![("accept".into(), Some(Bytes::from_static(b"a")))];
        let mut b = test_entry(1);
        b.vary = vec![("accept".into(), Some(Bytes::from_static(b"b")))];
        s.insert(b"h/x", 1, a);
        s.insert(b"h/x", 1, b);
        s.insert(b"h/y", 2, test_entry(1));
        let pick = |v: &'static [u8]| move |e: &Entry| e.vary[0].1.as_deref() == Some(v);
        assert!(s.get(b"h/x", pick(b"a")).is_some());
        assert!(s.get(b"h/x", pick(b"b")).is_some());
        assert_eq!(s.remove(b"h/x"), 2);
        assert_eq!(s.remove(b"h/x"), 0);
        assert_eq!(s.remove_where(Some(b"h/"), None), 1);
        assert_eq!(s.stats().bytes, 0);
        assert_eq!(s.stats().entries, 0);
    }
}
