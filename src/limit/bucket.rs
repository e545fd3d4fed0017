//! limit-req's leaky bucket (nginx/resty semantics: rate, burst, delay = excess / rate) with a
//! node-wide rate split between shards by demand. Pure: time in ms since the node epoch.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::count::KeyHasher;
use super::fleet::{GrantItem, Mode};
use super::sync::Item;

#[derive(Debug, Clone)]
pub struct BucketParams {
    /// Requests per second for the whole node.
    pub rate: f64,
    /// Excess requests per second tolerated (delayed, or passed at once with nodelay).
    pub burst: f64,
    pub max_keys: usize,
}

/// A peer's last report for a key.
#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    /// Smoothed attempts per sync interval.
    demand: f64,
    /// Fraction of the node's rate and burst it holds.
    share: f64,
}

#[derive(Debug)]
struct Entry {
    excess: f64,
    last_ms: u64,
    seen: bool,
    /// Attempts since the last tick.
    demand: u32,
    /// Attempts per interval, smoothed (EWMA): one interval's count is noisy, and shares
    /// computed from noisy counts on different shards add up to more than 1 on average.
    avg: f64,
    /// This shard's fraction of the node's rate and burst; set on the tick.
    share: f64,
    /// Sum of the peers' reported shares.
    others: f64,
    peers: Vec<Peer>,
    reported: (u32, u64),
    dirty: bool,
    /// The node's fraction of the configured rate (1 unless the limiter is cluster-wide).
    node: f64,
}

/// Verdict: `Ok(delay_ms)` to admit after waiting, `Err(Rejected)` to refuse.
pub type BucketDecision = Result<u64, Rejected>;

/// Over rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// Weight of the newest interval in `Entry::avg`.
const ALPHA: f64 = 0.25;
/// Fixed-point scales for shares and demands in sync `Item`s (integers on the wire).
const SHARE_ONE: f64 = 1e9;
const DEMAND_ONE: f64 = 256.0;

pub struct Bucket {
    p: BucketParams,
    me: usize,
    n: usize,
    /// Keys are already xxh3 hashes: identity-hashed (SipHash here cost more than the bucket math).
    map: HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    dirty: Vec<u64>,
    mode: Mode,
    /// The node fraction a key without a grant starts with (1 for node-local limiters).
    default_frac: f64,
}

impl Bucket {
    pub fn new(p: BucketParams, me: usize, shards: usize) -> Bucket {
        Bucket {
            p,
            me,
            n: shards.max(1),
            map: HashMap::default(),
            dirty: Vec::new(),
            mode: Mode::Shared,
            default_frac: 1.0,
        }
    }

    /// The fleet thread's answer for a cluster-wide limiter: the mode, and per key the node's
    /// fraction of the cluster rate (which this shard's share then divides).
    pub fn grant(&mut self, mode: Mode, default_frac: f64, items: &[GrantItem]) {
        self.mode = mode;
        self.default_frac = default_frac;
        for it in items {
            if let Some(e) = self.map.get_mut(&it.key) {
                e.node = it.frac.clamp(0.0, 1.0);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn fresh(n: usize, node: f64) -> Entry {
        Entry {
            excess: 0.0,
            last_ms: 0,
            seen: false,
            demand: 0,
            avg: 0.0,
            share: 0.0,
            others: 0.0,
            peers: vec![Peer::default(); n],
            reported: (0, 0),
            dirty: false,
            node,
        }
    }

    /// The share this shard uses now: its own, or, holding none (new or idle here), whatever
    /// the other shards do not hold, until the next tick sets a demand-weighted one.
    fn share(e: &Entry) -> f64 {
        if e.share > 0.0 {
            e.share
        } else {
            (1.0 - e.others).max(0.0)
        }
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
        let (n, node) = (self.n, self.default_frac);
        let e = self.map.entry(key).or_insert_with(|| Self::fresh(n, node));
        e.demand = e.demand.saturating_add(1);
        let newly = !e.dirty;
        e.dirty = true;
        if newly {
            self.dirty.push(key);
        }
        match self.mode {
            Mode::Shared => {}
            Mode::Allow => return Ok(0),
            Mode::Deny => return Err(Rejected),
        }
        let w = Self::share(e) * e.node;
        let (rate, burst) = (self.p.rate * w, self.p.burst * w);
        let excess = if e.seen {
            let elapsed = now_ms.saturating_sub(e.last_ms) as f64 / 1000.0;
            (e.excess - rate * elapsed + 1.0).max(0.0)
        } else {
            0.0
        };
        let admit = excess <= burst && rate > 0.0;
        if admit {
            e.excess = excess;
            e.last_ms = now_ms;
            e.seen = true;
        }
        if !admit {
            return Err(Rejected);
        }
        Ok((excess / rate * 1000.0) as u64)
    }

    pub fn absorb(&mut self, from: usize, items: &[Item]) {
        if from >= self.n || from == self.me {
            return;
        }
        for it in items {
            if !self.map.contains_key(&it.key) && self.map.len() >= self.p.max_keys {
                continue;
            }
            let (n, node) = (self.n, self.default_frac);
            let e = self
                .map
                .entry(it.key)
                .or_insert_with(|| Self::fresh(n, node));
            e.peers[from] = Peer {
                demand: f64::from(it.demand) / DEMAND_ONE,
                share: it.alloc as f64 / SHARE_ONE,
            };
            let me = self.me;
            e.others = e
                .peers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != me)
                .map(|(_, p)| p.share)
                .sum();
            // Recompute our share on the next tick, even if we saw no request.
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(it.key);
            }
        }
    }

    /// The sync tick: smooth each touched key's demand, set this shard's share (its part of
    /// the node's smoothed demand, never more than the others leave), report what changed.
    ///
    /// Shares add up to at most 1 whenever reports are current: a shard only takes what the
    /// others' last reports leave. Two shards that first see a key in the same interval both
    /// take all of it for that interval (at most one interval's worth of extra admissions).
    pub fn tick(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        let mut again = Vec::new();
        let me = self.me;
        for key in std::mem::take(&mut self.dirty) {
            let Some(e) = self.map.get_mut(&key) else {
                continue;
            };
            e.avg = e.avg * (1.0 - ALPHA) + f64::from(e.demand) * ALPHA;
            if e.demand == 0 && e.avg < 0.05 {
                e.avg = 0.0;
            }
            e.demand = 0;
            let total = e.avg
                + e.peers
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != me)
                    .map(|(_, p)| p.demand)
                    .sum::<f64>();
            let want = if total > 0.0 { e.avg / total } else { 0.0 };
            e.share = want.min(1.0 - e.others).max(0.0);
            let state = (
                (e.avg * DEMAND_ONE).round().min(f64::from(u32::MAX)) as u32,
                (e.share * SHARE_ONE).round() as u64,
            );
            if state != e.reported {
                e.reported = state;
                out.push(Item {
                    key,
                    count: 0,
                    alloc: state.1,
                    demand: state.0,
                });
            }
            // Keep ticking while this shard still has demand or holds a share to give back.
            e.dirty = e.avg > 0.0 || e.share > 0.0;
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
            e.dirty || e.others > 0.0 || e.last_ms + drained_ms + 1000 > now_ms
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

    /// Two shards, noisy uneven demand (about 3:1, with stalls), a report exchange every
    /// 20 ms: the node admits the configured rate, not each shard's view of it.
    #[test]
    fn two_shards_noisy_uneven_demand_admit_the_node_rate() {
        let p = BucketParams {
            rate: 100.0,
            burst: 20.0,
            max_keys: 100,
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for (hi, lo) in [(7, 3), (7, 1), (2, 2)] {
            let mut s = [Bucket::new(p.clone(), 0, 2), Bucket::new(p.clone(), 1, 2)];
            let mut admitted = 0u64;
            for ms in 0..10_000u64 {
                for (i, max) in [(0, hi), (1, lo)] {
                    // A shard stalls now and then (a busy core): no requests for that ms.
                    if rnd(10) == 0 {
                        continue;
                    }
                    for _ in 0..rnd(max) {
                        if s[i].check(7, ms).is_ok() && ms >= 1000 {
                            admitted += 1;
                        }
                    }
                }
                if ms % 20 == 19 {
                    let (a, b) = (s[0].tick(), s[1].tick());
                    s[1].absorb(0, &a);
                    s[0].absorb(1, &b);
                }
            }
            let rate = admitted as f64 / 9.0;
            assert!((rate - 100.0).abs() <= 3.0, "{hi}:{lo}: {rate}/s");
        }
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;

    #[test]
    fn the_node_fraction_scales_the_rate_and_modes_override() {
        let mut l = Bucket::new(
            BucketParams {
                rate: 100.0,
                burst: 0.0,
                max_keys: 10,
            },
            0,
            1,
        );
        assert!(l.check(1, 0).is_ok());
        // A quarter of the cluster's 100/s: one request per 40 ms.
        l.grant(
            Mode::Shared,
            1.0,
            &[GrantItem {
                key: 1,
                cap: 0,
                frac: 0.25,
            }],
        );
        assert_eq!(l.check(1, 20), Err(Rejected));
        assert!(l.check(1, 40).is_ok());
        l.grant(Mode::Deny, 1.0, &[]);
        assert_eq!(l.check(2, 1000), Err(Rejected));
        l.grant(Mode::Allow, 1.0, &[]);
        assert!((0..10).all(|_| l.check(1, 41).is_ok()));
    }
}
