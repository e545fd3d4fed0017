//! A node's view of one cluster-wide limiter, kept by the fleet thread: the sum of its shards'
//! reports per key, what to ask the store each interval, and the grants to hand back. Pure:
//! the store's answers come in as values; no I/O, no clock beyond what is passed in.
//!
//! The split one level up mirrors the split across shards: shards report (count, allocation,
//! demand) per key; the node asks the store for its cap with its count, the floor its shards
//! already hold and its demand; the store's script grants a cap no larger than what the other
//! nodes leave (their count or allocation, whichever is larger) and answers with the others'
//! demand, from which the node's opening fraction for the next window follows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fleet::{opening_frac, FleetSpec, Grant, GrantItem, Kind, Mode, Uplink};
use super::sync::Item;
use super::weight;

/// Fixed-point scale for limit-req shares on the wire (the script works in integers).
pub const SHARE_ONE: u64 = 1_000_000;

/// What the node tells the store about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub key: u64,
    /// limit-count: admitted by the node in the window; limit-req: unused (0).
    pub count: u64,
    /// limit-count: what the node's shards hold in the window (a key whose shards hold
    /// nothing and see no demand is idle).
    pub floor: u64,
    /// Attempts per second (limit-count), or per second x1000 (limit-req).
    pub demand: u64,
}

/// The store's answer for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// limit-count: the node's cap for the window; limit-req: its share x `SHARE_ONE`.
    pub cap: u64,
    /// The other nodes' demand, in the units of `Ask::demand`.
    pub others_demand: u64,
    /// Nodes holding the key, this one included.
    pub nodes: u64,
}

#[derive(Debug, Default)]
struct Key {
    /// Per shard: the window its last report was for, and the report.
    shards: Vec<Option<(u64, Item)>>,
    /// Exchanges left before an idle key stops being asked for (its release must reach the store).
    linger: u8,
    frac: f64,
    /// A shard reported since the key was last asked for.
    fresh: bool,
    /// When it was last asked for (a key nobody reports on is refreshed now and then, so the
    /// store does not take its reservation for a silent node's).
    asked: Option<Instant>,
}

/// One cluster-wide limiter on this node (one limiter of one limiter set).
pub struct NodeLimiter {
    pub spec: Arc<FleetSpec>,
    pub set: Instant,
    pub limiter: u32,
    wall_ms: u64,
    tick: Duration,
    keys: HashMap<u64, Key>,
    /// When a shard last reported; limiters of a replaced set go quiet and are dropped.
    pub heard: Instant,
    /// Most nodes seen holding a key in the last exchange (for the default fraction).
    nodes: u64,
}

/// Idle exchanges a key is still asked for, so the store hears its allocation drop.
const LINGER: u8 = 3;

impl NodeLimiter {
    pub fn new(up: &Uplink, now: Instant) -> NodeLimiter {
        NodeLimiter {
            spec: up.spec.clone(),
            set: up.set,
            limiter: up.limiter,
            wall_ms: up.wall_ms,
            tick: up.tick.max(Duration::from_millis(1)),
            keys: HashMap::new(),
            heard: now,
            nodes: 0,
        }
    }

    /// The current window (limit-count), by the same clock the shards use.
    pub fn window(&self, now: Instant) -> u64 {
        match self.spec.kind {
            Kind::Count { window_ms, .. } => {
                let ms = now.saturating_duration_since(self.set).as_millis() as u64;
                (ms + self.wall_ms) / window_ms.max(1)
            }
            Kind::Req { .. } => 0,
        }
    }

    /// Wall-clock ms now, by the set's clock (what the store's scripts compare timestamps by).
    pub fn wall_now(&self, now: Instant) -> u64 {
        self.wall_ms + now.saturating_duration_since(self.set).as_millis() as u64
    }

    pub fn absorb(&mut self, up: &Uplink, now: Instant) {
        self.heard = now;
        let from = usize::from(up.from);
        for it in &up.items {
            let k = self.keys.entry(it.key).or_insert_with(|| Key {
                frac: f64::NAN,
                ..Key::default()
            });
            if k.shards.len() <= from {
                k.shards.resize(from + 1, None);
            }
            k.shards[from] = Some((up.window, *it));
            k.linger = LINGER;
            k.fresh = true;
        }
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Most nodes seen sharing a key of this limiter in the last exchange.
    pub fn nodes(&self) -> u64 {
        self.nodes
    }

    /// Carries `nodes` over from the same limit of a previous limiter set.
    pub fn set_nodes(&mut self, n: u64) {
        self.nodes = n;
    }

    /// What to exchange now: keys with a count, an allocation or demand in the current window
    /// that a shard reported on since the last exchange (or not for `refresh`), and idle ones
    /// for a few more rounds. Keys idle longer are forgotten. So the store hears of a key as
    /// often as its state changes, at most once an interval: a key with no new requests costs
    /// one call per `refresh`, not per interval.
    pub fn asks(&mut self, now: Instant, refresh: Duration) -> Vec<Ask> {
        let window = self.window(now);
        let kind = self.spec.kind.clone();
        let tick_ms = self.tick.as_millis().max(1) as f64;
        let mut out = Vec::new();
        self.keys.retain(|&key, k| {
            let (mut count, mut floor, mut demand) = (0u64, 0u64, 0f64);
            for (w, it) in k.shards.iter().flatten() {
                if *w == window {
                    count += it.count;
                    floor += it.alloc;
                }
                // Demand is a rate, not a window's: a shard's last word on it holds until the
                // next (a new window must not look idle before shards report in it).
                demand += match kind {
                    Kind::Count { .. } => f64::from(it.demand),
                    // Shards report smoothed demand x256 and shares x1e9.
                    Kind::Req { .. } => f64::from(it.demand) / 256.0,
                };
            }
            let active = count > 0 || floor > 0 || demand > 0.0;
            let due = k.fresh
                || k.asked
                    .map_or(true, |t| now.saturating_duration_since(t) >= refresh);
            if !active {
                if k.linger == 0 {
                    return false;
                }
                if !due {
                    return true;
                }
                k.linger -= 1;
            } else if !due {
                return true;
            }
            k.fresh = false;
            k.asked = Some(now);
            let demand = match kind {
                Kind::Count { .. } => (demand * 1000.0 / tick_ms).round() as u64,
                Kind::Req { .. } => (demand * 1000.0 * 1000.0 / tick_ms).round() as u64,
            };
            let (count, floor) = match kind {
                Kind::Count { .. } => (count, floor),
                Kind::Req { .. } => (0, 0),
            };
            out.push(Ask {
                key,
                count,
                floor,
                demand,
            });
            true
        });
        out
    }

    /// The grant for the shards from the store's answers (`answers[i]` for `asks[i]`).
    pub fn settle(&mut self, now: Instant, asks: &[Ask], answers: &[Answer]) -> Grant {
        let mut items = Vec::with_capacity(asks.len());
        let mut nodes = 0;
        for (a, r) in asks.iter().zip(answers) {
            nodes = nodes.max(r.nodes);
            let frac = match self.spec.kind {
                // The next window opens with the node's demand-weighted part of the limit.
                Kind::Count { .. } => weight(
                    a.demand.min(u64::from(u32::MAX)) as u32,
                    a.demand + r.others_demand,
                    r.nodes.max(1) as usize,
                ),
                Kind::Req { .. } => r.cap as f64 / SHARE_ONE as f64,
            };
            if let Some(k) = self.keys.get_mut(&a.key) {
                k.frac = frac;
            }
            items.push(GrantItem {
                key: a.key,
                cap: r.cap,
                frac,
            });
        }
        if nodes > 0 {
            self.nodes = nodes;
        }
        self.grant(now, Mode::Shared, items)
    }

    /// A grant carrying only the mode (the store is away), or items as given.
    pub fn grant(&self, now: Instant, mode: Mode, items: Vec<GrantItem>) -> Grant {
        Grant {
            set: self.set,
            limiter: self.limiter,
            window: self.window(now),
            mode,
            default_frac: self.default_frac(),
            items,
        }
    }

    /// The fraction a key the node has no answer for opens with: the whole limit once an
    /// exchange showed the node alone; otherwise, for limit-count, the cautious opening
    /// (`opening_frac`: the store reserved nothing for this node, and another node may be using
    /// the key already), and for limit-req an equal part among the nodes last seen. Before the
    /// node's first exchange (`nodes` = 0) it does not know whether it is alone: opening with
    /// the whole limit there let two nodes starting together each admit it until their first
    /// exchange (21 of 20 on a loaded machine, where that exchange came late).
    pub fn default_frac(&self) -> f64 {
        if self.nodes == 1 {
            return 1.0;
        }
        let equal = 1.0 / self.nodes.max(1) as f64;
        match self.spec.kind {
            Kind::Count { limit, window_ms } => {
                let interval = self.spec.interval.max(self.tick);
                equal.min(opening_frac(limit, window_ms, interval))
            }
            Kind::Req { .. } => equal,
        }
    }

    /// The fraction for keys without a grant while the store is away (`on_redis_error =
    /// "local"`): as in `default_frac`, but a node that never reached the store enforces the
    /// whole limit alone rather than the cautious opening, which would refuse nearly everything.
    pub fn fallback_frac(&self) -> f64 {
        if self.nodes == 0 {
            1.0
        } else {
            self.default_frac()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::fleet::{OnError, Store};

    const R: Duration = Duration::from_millis(500);

    fn up(spec: &Arc<FleetSpec>, set: Instant, from: u16, window: u64, items: Vec<Item>) -> Uplink {
        Uplink {
            set,
            limiter: 0,
            // Window 10 of an hour-long window.
            wall_ms: 36_000_000,
            spec: spec.clone(),
            from,
            tick: Duration::from_millis(20),
            window,
            items,
        }
    }

    fn spec(kind: Kind) -> Arc<FleetSpec> {
        Arc::new(FleetSpec {
            ns: "t".into(),
            kind,
            store: Store::Redis {
                addr: "127.0.0.1:1".into(),
                password: None,
                database: 0,
            },
            timeout: Duration::from_millis(100),
            interval: Duration::from_millis(50),
            on_error: OnError::Local,
        })
    }

    #[test]
    fn sums_shards_of_the_current_window_and_lingers_once_idle() {
        let s = spec(Kind::Count {
            limit: 100,
            window_ms: 3_600_000,
        });
        let set = Instant::now();
        let mut n = NodeLimiter::new(&up(&s, set, 0, 0, vec![]), set);
        let it = |count, alloc, demand| Item {
            key: 7,
            count,
            alloc,
            demand,
        };
        n.absorb(&up(&s, set, 0, 10, vec![it(10, 30, 4)]), set);
        // Before the first exchange the node does not know it is alone: a new key opens
        // cautiously, unless the store is away (then the node enforces the whole limit).
        assert!((n.default_frac() - (25.0 / 3_600_000.0 + 1.0 / 100.0)).abs() < 1e-12);
        assert_eq!(n.fallback_frac(), 1.0);
        n.absorb(&up(&s, set, 1, 10, vec![it(5, 20, 2)]), set);
        // The counts of an older window do not count.
        n.absorb(&up(&s, set, 2, 9, vec![it(50, 50, 0)]), set);
        let asks = n.asks(set, R);
        assert_eq!(
            asks,
            vec![Ask {
                key: 7,
                count: 15,
                floor: 50,
                // 6 attempts per 20 ms tick.
                demand: 300,
            }]
        );
        let g = n.settle(
            set,
            &asks,
            &[Answer {
                cap: 60,
                others_demand: 300,
                nodes: 2,
            }],
        );
        assert_eq!(g.items[0].cap, 60);
        assert!((g.items[0].frac - 301.0 / 602.0).abs() < 1e-9);
        // Two nodes seen: a new key opens with half a 50 ms interval's worth of an hour's limit.
        assert!((g.default_frac - (25.0 / 3_600_000.0 + 1.0 / 100.0)).abs() < 1e-12);
        // Idle: asked LINGER more times, then forgotten.
        n.absorb(&up(&s, set, 0, 10, vec![it(0, 0, 0)]), set);
        n.absorb(&up(&s, set, 1, 10, vec![it(0, 0, 0)]), set);
        // Asked once for the news, then only every `R` while idle, LINGER times in all.
        assert_eq!(n.asks(set, R).len(), 1);
        assert!(n.asks(set, R).is_empty(), "nothing new");
        assert_eq!(n.keys(), 1);
        for i in 1..LINGER {
            assert_eq!(n.asks(set + R * i as u32, R).len(), 1);
        }
        assert!(n.asks(set + R * 9, R).is_empty());
        assert_eq!(n.keys(), 0);
    }

    #[test]
    fn req_demand_and_share_are_scaled() {
        let s = spec(Kind::Req { rate: 10.0 });
        let set = Instant::now();
        let mut n = NodeLimiter::new(&up(&s, set, 0, 0, vec![]), set);
        let item = Item {
            key: 1,
            count: 0,
            alloc: 500_000_000,
            // 2 attempts per tick, smoothed, x256.
            demand: 512,
        };
        n.absorb(&up(&s, set, 0, 0, vec![item]), set);
        let asks = n.asks(set, R);
        assert_eq!(asks[0].demand, 100_000, "100/s x1000");
        let g = n.settle(
            set,
            &asks,
            &[Answer {
                cap: 250_000,
                others_demand: 300_000,
                nodes: 2,
            }],
        );
        assert!((g.items[0].frac - 0.25).abs() < 1e-9);
    }
}
