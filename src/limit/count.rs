//! limit-count's per-shard window counters with node-wide shares (fixed or sliding window).
//! Pure: time comes in as ms since the node epoch; messages in and out are plain values.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::fleet::{node_limit, GrantItem, Mode};
use super::sync::Item;
use super::weight;

#[derive(Debug, Clone, Copy)]
pub struct CountParams {
    pub limit: u64,
    pub window_ms: u64,
    pub sliding: bool,
    /// Keys kept per shard before the oldest-looking are evicted.
    pub max_keys: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    count: u64,
    alloc: u64,
    demand: u32,
}

#[derive(Debug)]
struct Entry {
    window: u64,
    local: u64,
    alloc: u64,
    /// Attempts since the last tick.
    demand: u32,
    /// Attempts in the last finished interval: this shard's weight.
    last_demand: u32,
    peers: Vec<Peer>,
    /// Node-wide count of the previous window (sliding windows weigh it in).
    prev_total: u64,
    reported: (u64, u64, u32),
    dirty: bool,
    /// Cluster-wide limiters: the node's cap for `window` from the fleet thread, if granted yet.
    cap: Option<u64>,
    /// Cluster-wide limiters: the node's fraction of the limit when a window opens.
    frac: f64,
}

/// A cluster-wide limiter's node-level view: the node limit per key comes from the fleet
/// thread's grants instead of the configured limit, and windows are aligned on the wall clock.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Wall-clock ms at the node epoch (0 for node-local limiters: windows from the epoch).
    offset_ms: u64,
    fleet: bool,
    mode: Mode,
    /// The fraction a key without a grant opens with.
    default_frac: f64,
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

pub struct CountLimiter {
    p: CountParams,
    me: usize,
    n: usize,
    map: HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    dirty: Vec<u64>,
    node: Node,
}

/// Keys are already xxh3 hashes of the request's key: hashing them again with SipHash was
/// ~4% of a key-auth + limit-count request (callgrind), so the map uses them as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys reach this map; kept correct for any input anyway.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl CountLimiter {
    pub fn new(p: CountParams, me: usize, shards: usize) -> CountLimiter {
        CountLimiter {
            p,
            me,
            n: shards.max(1),
            map: HashMap::default(),
            dirty: Vec::new(),
            node: Node {
                offset_ms: 0,
                fleet: false,
                mode: Mode::Shared,
                default_frac: 1.0,
            },
        }
    }

    /// Makes this a shard of a cluster-wide limiter: windows are numbered from the Unix epoch
    /// (`wall_ms` = wall-clock ms at the node epoch), so every node agrees on their bounds, and
    /// the node limit per key is what the fleet thread grants. Until its first grant, a key opens
    /// with `opening` of the limit (the node does not know yet whether it is alone).
    pub fn fleet(mut self, wall_ms: u64, opening: f64) -> CountLimiter {
        self.node.offset_ms = wall_ms;
        self.node.fleet = true;
        self.node.default_frac = opening;
        self
    }

    /// The fleet thread's answer: the mode, and per key the node's cap for `window` and its
    /// opening fraction. Shares are recomputed at once for keys this shard knows.
    pub fn grant(
        &mut self,
        window: u64,
        mode: Mode,
        default_frac: f64,
        items: &[GrantItem],
        now_ms: u64,
    ) {
        self.node.mode = mode;
        self.node.default_frac = default_frac;
        if window != self.window(now_ms) {
            return;
        }
        for it in items {
            let Some(mut e) = self.map.remove(&it.key) else {
                continue;
            };
            roll(&self.p, &self.node, self.me, self.n, &mut e, window, now_ms);
            e.cap = Some(it.cap);
            e.frac = it.frac;
            self.recompute(&mut e, now_ms);
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(it.key);
            }
            self.map.insert(it.key, e);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn window(&self, now_ms: u64) -> u64 {
        (now_ms + self.node.offset_ms) / self.p.window_ms
    }

    fn entry(&mut self, key: u64, now_ms: u64) -> &mut Entry {
        // Length first: the lookup is only needed when the map is full.
        if self.map.len() >= self.p.max_keys && !self.map.contains_key(&key) {
            self.sweep(now_ms);
            if self.map.len() >= self.p.max_keys {
                // Still full of live keys: drop one arbitrary key rather than grow.
                if let Some(k) = self.map.keys().next().copied() {
                    self.map.remove(&k);
                }
            }
        }
        let window = self.window(now_ms);
        let (p, node, me, n) = (&self.p, &self.node, self.me, self.n);
        let e = self.map.entry(key).or_insert_with(|| Entry {
            window: u64::MAX,
            local: 0,
            alloc: 0,
            demand: 0,
            last_demand: 0,
            peers: vec![Peer::default(); n],
            prev_total: 0,
            reported: NEVER,
            dirty: false,
            cap: None,
            frac: node.default_frac,
        });
        roll(p, node, me, n, e, window, now_ms);
        e
    }

    /// Admits or refuses one request for `key` at `now_ms`. No I/O, no shared state.
    pub fn check(&mut self, key: u64, now_ms: u64) -> Decision {
        let window_end = (self.window(now_ms) + 1) * self.p.window_ms;
        let limit = self.p.limit;
        let (p, node) = (self.p, self.node);
        let e = self.entry(key, now_ms);
        e.demand = e.demand.saturating_add(1);
        let allowed = match node.mode {
            Mode::Shared => e.local < e.alloc,
            Mode::Allow => true,
            Mode::Deny => false,
        };
        if allowed {
            e.local += 1;
        }
        let newly_dirty = !e.dirty;
        e.dirty = true;
        let used = e.local + e.peers.iter().map(|p| p.count).sum::<u64>();
        let lim = eff_limit(&p, &node, e, now_ms);
        if newly_dirty {
            self.dirty.push(key);
        }
        Decision {
            allowed,
            limit,
            remaining: lim.saturating_sub(used),
            reset_ms: window_end - (now_ms + node.offset_ms),
        }
    }

    /// Takes in another shard's report.
    pub fn absorb(&mut self, from: usize, window: u64, items: &[Item], now_ms: u64) {
        if from >= self.n || from == self.me || window < self.window(now_ms) {
            return;
        }
        for it in items {
            let e = self.entry(it.key, now_ms);
            if e.window != window {
                continue;
            }
            e.peers[from] = Peer {
                count: it.count,
                alloc: it.alloc,
                demand: it.demand,
            };
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(it.key);
            }
        }
    }

    /// The sync tick: recompute shares of keys that changed; return what peers must hear.
    pub fn tick(&mut self, now_ms: u64) -> (u64, Vec<Item>) {
        let window = self.window(now_ms);
        let mut out = Vec::new();
        let keys = std::mem::take(&mut self.dirty);
        let mut again = Vec::new();
        for key in keys {
            let Some(mut e) = self.map.remove(&key) else {
                continue;
            };
            roll(&self.p, &self.node, self.me, self.n, &mut e, window, now_ms);
            e.last_demand = e.demand;
            e.demand = 0;
            self.recompute(&mut e, now_ms);
            let state = (e.local, e.alloc, e.last_demand);
            if state != e.reported {
                e.reported = state;
                out.push(Item {
                    key,
                    count: e.local,
                    alloc: e.alloc,
                    demand: e.last_demand,
                });
            }
            // Keep a key that just had traffic on the list, so its drop to idle is reported.
            e.dirty = e.last_demand > 0;
            if e.dirty {
                again.push(key);
            }
            self.map.insert(key, e);
        }
        self.dirty = again;
        (window, out)
    }

    fn recompute(&self, e: &mut Entry, now_ms: u64) {
        let lim = eff_limit(&self.p, &self.node, e, now_ms);
        let reserved: u64 = e
            .peers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != self.me)
            .map(|(_, p)| p.count.max(p.alloc))
            .sum();
        let remaining = lim.saturating_sub(e.local + reserved);
        let total = demand_total(self.me, e);
        let w = weight(e.last_demand, total, self.n);
        let mut share = (remaining as f64 * w).floor() as u64;
        if share == 0 && remaining > 0 && e.last_demand > 0 {
            share = 1;
        }
        e.alloc = e.local + share;
    }

    /// Forgets keys whose window is over and that nobody is touching.
    pub fn sweep(&mut self, now_ms: u64) {
        let window = self.window(now_ms);
        self.map
            .retain(|_, e| e.dirty || e.window.saturating_add(1) >= window);
    }
}

/// "Nothing reported yet in this window", so the first tick always reports.
const NEVER: (u64, u64, u32) = (u64::MAX, u64::MAX, u32::MAX);

/// The node-wide limit for `e` now: the configured one (less the sliding window's carry-over),
/// or for a cluster-wide limiter the node's part of it.
fn eff_limit(p: &CountParams, node: &Node, e: &Entry, now_ms: u64) -> u64 {
    if node.fleet {
        return node_limit(p.limit, e.cap, e.frac);
    }
    if !p.sliding || e.prev_total == 0 {
        return p.limit;
    }
    let into = (now_ms + node.offset_ms) % p.window_ms;
    let left = 1.0 - into as f64 / p.window_ms as f64;
    p.limit
        .saturating_sub((e.prev_total as f64 * left).floor() as u64)
}

/// Everyone's last demand, ours included.
fn demand_total(me: usize, e: &Entry) -> u64 {
    let peers: u64 = e
        .peers
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != me)
        .map(|(_, p)| u64::from(p.demand))
        .sum();
    peers + u64::from(e.last_demand)
}

/// Moves the entry into `window`, estimating each shard's opening share from the demand last
/// seen, so the shares add up to the limit before any report of the new window arrives.
fn roll(
    p: &CountParams,
    node: &Node,
    me: usize,
    n: usize,
    e: &mut Entry,
    window: u64,
    now_ms: u64,
) {
    if e.window == window {
        return;
    }
    // A grant is for one window: the next opens with the node's fraction.
    e.cap = None;
    let total = e.local + e.peers.iter().map(|p| p.count).sum::<u64>();
    e.prev_total = if e.window != u64::MAX && window == e.window + 1 {
        total
    } else {
        0
    };
    e.window = window;
    e.local = 0;
    // Peers estimate our opening share; tell them the real one at the next tick.
    e.reported = NEVER;
    let lim = eff_limit(p, node, e, now_ms);
    let all = demand_total(me, e);
    for j in 0..n {
        let d = if j == me {
            e.last_demand
        } else {
            e.peers[j].demand
        };
        let share = (lim as f64 * weight(d, all, n)).floor() as u64;
        if j == me {
            e.alloc = share;
        } else {
            e.peers[j].count = 0;
            e.peers[j].alloc = share;
        }
    }
}

#[cfg(test)]
mod tests;
