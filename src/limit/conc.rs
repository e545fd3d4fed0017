//! limit-conn's concurrency counts per key: this shard's in-flight requests plus the last
//! counts the other shards reported. Pure; callers release what they took.

use std::collections::HashMap;

use super::sync::Item;

#[derive(Debug)]
struct Entry {
    local: u64,
    peers: Vec<u64>,
    reported: u64,
    dirty: bool,
}

pub struct Concurrency {
    me: usize,
    n: usize,
    max_keys: usize,
    map: HashMap<u64, Entry>,
    dirty: Vec<u64>,
}

impl Concurrency {
    pub fn new(me: usize, shards: usize, max_keys: usize) -> Concurrency {
        Concurrency {
            me,
            n: shards.max(1),
            max_keys,
            map: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Node-wide in-flight count for `key` if one more is taken, or `None` when it would pass
    /// `max` (then nothing is taken).
    pub fn acquire(&mut self, key: u64, max: u64) -> Option<u64> {
        if !self.map.contains_key(&key) && self.map.len() >= self.max_keys {
            self.sweep();
            if self.map.len() >= self.max_keys {
                return None;
            }
        }
        let n = self.n;
        let e = self.map.entry(key).or_insert_with(|| Entry {
            local: 0,
            peers: vec![0; n],
            reported: 0,
            dirty: false,
        });
        let total = e.local + e.peers.iter().sum::<u64>() + 1;
        if total > max {
            return None;
        }
        e.local += 1;
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(key);
        }
        Some(total)
    }

    pub fn release(&mut self, key: u64) {
        if let Some(e) = self.map.get_mut(&key) {
            e.local = e.local.saturating_sub(1);
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    pub fn absorb(&mut self, from: usize, items: &[Item]) {
        if from >= self.n || from == self.me {
            return;
        }
        for it in items {
            if let Some(e) = self.map.get_mut(&it.key) {
                e.peers[from] = it.count;
            } else if it.count > 0 && self.map.len() < self.max_keys {
                let mut peers = vec![0; self.n];
                peers[from] = it.count;
                self.map.insert(
                    it.key,
                    Entry {
                        local: 0,
                        peers,
                        reported: 0,
                        dirty: false,
                    },
                );
            }
        }
    }

    pub fn tick(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            if let Some(e) = self.map.get_mut(&key) {
                e.dirty = false;
                if e.local != e.reported {
                    e.reported = e.local;
                    out.push(Item {
                        key,
                        count: e.local,
                        alloc: 0,
                        demand: 0,
                    });
                }
            }
        }
        out
    }

    pub fn sweep(&mut self) {
        self.map.retain(|_, e| {
            e.dirty || e.local > 0 || e.reported > 0 || e.peers.iter().any(|&c| c > 0)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_local_and_peers() {
        let mut c = Concurrency::new(0, 2, 10);
        assert_eq!(c.acquire(1, 2), Some(1));
        c.absorb(
            1,
            &[Item {
                key: 1,
                count: 1,
                alloc: 0,
                demand: 0,
            }],
        );
        assert_eq!(c.acquire(1, 2), None);
        c.release(1);
        assert_eq!(c.acquire(1, 2), Some(2));
        assert_eq!(c.tick().len(), 1);
    }
}
