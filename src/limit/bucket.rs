//! limit-req's leaky bucket (nginx/resty semantics: rate, burst, delay = excess / rate) with a
//! node-wide rate split between shards by demand. Pure: time in ms since the node epoch.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::count::KeyHasher;
use super::sync::Item;
use super::weight;

#[derive(Debug, Clone)]
pub struct BucketParams {
    /// Requests per second for the whole node.
    pub rate: f64,
    /// Excess requests per second tolerated (delayed, or passed at once with nodelay).
    pub burst: f64,
    pub max_keys: usize,
}

#[derive(Debug)]
struct Entry {
    excess: f64,
    last_ms: u64,
    seen: bool,
    demand: u32,
    last_demand: u32,
    peers: Vec<u32>,
    reported: u32,
    dirty: bool,
}

/// Verdict: `Ok(delay_ms)` to admit after waiting, `Err(Rejected)` to refuse.
pub type BucketDecision = Result<u64, Rejected>;

/// Over rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

pub struct Bucket {
    p: BucketParams,
    me: usize,
    n: usize,
    /// Keys are already xxh3 hashes: identity-hashed (SipHash here cost more than the bucket math).
    map: HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    dirty: Vec<u64>,
}

impl Bucket {
    pub fn new(p: BucketParams, me: usize, shards: usize) -> Bucket {
        Bucket {
            p,
            me,
            n: shards.max(1),
            map: HashMap::default(),
            dirty: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn share(me: usize, n: usize, e: &Entry) -> f64 {
        let peers: u64 = e
            .peers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != me)
            .map(|(_, d)| u64::from(*d))
            .sum();
        if peers == 0 {
            // Nobody else is asking: this shard may use the node's whole rate.
            return 1.0;
        }
        weight(e.last_demand, peers + u64::from(e.last_demand), n)
    }

    pub fn check(&mut self, key: u64, now_ms: u64) -> BucketDecision {
        if self.map.len() >= self.p.max_keys && !self.map.contains_key(&key) {
            self.sweep(now_ms);
            if self.map.len() >= self.p.max_keys {
                if let Some(k) = self.map.keys().next().copied() {
                    self.map.remove(&k);
                }
            }
        }
        let (me, n) = (self.me, self.n);
        // One lookup per check (this used to hash the key three times).
        let e = self.map.entry(key).or_insert_with(|| Entry {
            excess: 0.0,
            last_ms: now_ms,
            seen: false,
            demand: 0,
            last_demand: 0,
            peers: vec![0; n],
            reported: 0,
            dirty: false,
        });
        e.demand = e.demand.saturating_add(1);
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(key);
        }
        let w = Self::share(me, n, e);
        let (rate, burst) = (self.p.rate * w, self.p.burst * w);
        let excess = if e.seen {
            let elapsed = now_ms.saturating_sub(e.last_ms) as f64 / 1000.0;
            (e.excess - rate * elapsed + 1.0).max(0.0)
        } else {
            0.0
        };
        if excess > burst {
            return Err(Rejected);
        }
        e.excess = excess;
        e.last_ms = now_ms;
        e.seen = true;
        Ok(if rate > 0.0 {
            (excess / rate * 1000.0) as u64
        } else {
            0
        })
    }

    pub fn absorb(&mut self, from: usize, items: &[Item]) {
        if from >= self.n || from == self.me {
            return;
        }
        for it in items {
            if let Some(e) = self.map.get_mut(&it.key) {
                e.peers[from] = it.demand;
            } else if self.map.len() < self.p.max_keys {
                let mut peers = vec![0; self.n];
                peers[from] = it.demand;
                self.map.insert(
                    it.key,
                    Entry {
                        excess: 0.0,
                        last_ms: 0,
                        seen: false,
                        demand: 0,
                        last_demand: 0,
                        peers,
                        reported: 0,
                        dirty: false,
                    },
                );
            }
        }
    }

    /// Reports this shard's demand per key for the interval just ended.
    pub fn tick(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        let mut again = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(e) = self.map.get_mut(&key) else {
                continue;
            };
            e.last_demand = e.demand;
            e.demand = 0;
            if e.last_demand != e.reported {
                e.reported = e.last_demand;
                out.push(Item {
                    key,
                    count: 0,
                    alloc: 0,
                    demand: e.last_demand,
                });
            }
            e.dirty = e.last_demand > 0;
            if e.dirty {
                again.push(key);
            }
        }
        self.dirty = again;
        out
    }

    /// Drops keys whose bucket has drained and that nobody is using.
    pub fn sweep(&mut self, now_ms: u64) {
        let rate = self.p.rate.max(0.001);
        self.map.retain(|_, e| {
            let drained_ms = ((e.excess + 1.0) / rate * 1000.0) as u64;
            e.dirty || e.peers.iter().any(|&d| d > 0) || e.last_ms + drained_ms + 1000 > now_ms
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(rate: f64, burst: f64) -> Bucket {
        Bucket::new(
            BucketParams {
                rate,
                burst,
                max_keys: 100,
            },
            0,
            1,
        )
    }

    #[test]
    fn burst_then_reject_then_refill() {
        let mut l = b(10.0, 2.0);
        assert_eq!(l.check(1, 0), Ok(0));
        // Two more fit in the burst, each delayed by excess / rate.
        assert_eq!(l.check(1, 0), Ok(100));
        assert_eq!(l.check(1, 0), Ok(200));
        assert_eq!(l.check(1, 0), Err(Rejected));
        // 100 ms later one request's worth has leaked out.
        assert!(l.check(1, 100).is_ok());
    }

    #[test]
    fn steady_rate_has_no_delay() {
        let mut l = b(10.0, 0.0);
        for i in 0..20 {
            assert_eq!(l.check(1, i * 100), Ok(0), "request {i}");
        }
    }
}
