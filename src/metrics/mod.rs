//! Shard-local request counters (plain `Cell`s, no atomics, no locks) and the `Send` snapshots a
//! shard hands to the status thread when asked. Must not do I/O; exposition lives in `expose.rs`.

pub mod api;
mod control;
pub mod expose;
pub mod fleet;
pub mod live;
pub mod logship;
pub mod names;
pub mod ocsp;
pub mod oidc;
pub mod source;
mod text;
pub mod tier;

use crate::util::cow::CowVec;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Histogram bucket upper bounds in microseconds (0.5 ms .. 10 s), the `le` labels in seconds.
pub const BUCKETS_US: [u64; 12] = [
    500, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// Counters for one route on one shard. Keyed by route *name* (not id) in `ShardMetrics`, so
/// they survive config swaps that renumber routes.
#[derive(Default)]
pub struct RouteStats {
    /// Responses by status class: index 0 = 1xx .. 4 = 5xx.
    classes: [Cell<u64>; 5],
    /// Non-cumulative bucket counts; the last slot is "above every bound" (+Inf only).
    buckets: [Cell<u64>; BUCKETS_US.len() + 1],
    sum_us: Cell<u64>,
}

impl RouteStats {
    #[inline]
    pub fn record(&self, status: u16, took: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        bump(&self.classes[class], 1);
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let slot = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        bump(&self.buckets[slot], 1);
        bump(&self.sum_us, us);
    }

    fn snapshot(&self) -> RouteCounts {
        RouteCounts {
            classes: self.classes.each_ref().map(Cell::get),
            buckets: self.buckets.each_ref().map(Cell::get),
            sum_us: self.sum_us.get(),
        }
    }
}

#[inline]
fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// A route's counters copied out for the status thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub classes: [u64; 5],
    pub buckets: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl RouteCounts {
    pub fn total(&self) -> u64 {
        self.classes.iter().sum()
    }

    pub fn add(&mut self, o: &RouteCounts) {
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }
}

/// (API `name@version`, consumer username or "").
type ApiConsumer = (Box<str>, Box<str>);

/// One shard's metric registry, shared by every config generation the shard runs.
#[derive(Default)]
pub struct ShardMetrics {
    /// By route name; a generation looks its routes up here once, when it is built.
    routes: RefCell<HashMap<Box<str>, Rc<RouteStats>>>,
    /// Requests that matched no route, and malformed heads answered before routing.
    pub unrouted: RouteStats,
    /// Rate-limit rejections, by `Limiter`; kept across generations like the route counters.
    rate_limited: [Cell<u64>; 3],
    /// Requests that did not match their OpenAPI operation, by API name:
    /// `[rejected (validate = "enforce"), forwarded (validate = "monitor")]`.
    invalid: RefCell<HashMap<Box<str>, [u64; 2]>>,
    /// Calls to deprecated API versions, by (API `name@version`, consumer or "").
    deprecated: RefCell<HashMap<ApiConsumer, u64>>,
    /// proxy-cache answers: [from an entry (HIT, STALE, REVALIDATED), from the origin (MISS,
    /// EXPIRED, BYPASS)], then lookups: [in this shard's store (it owns the key), asked of the
    /// key's owner on another shard].
    cache: [Cell<u64>; 4],
}

impl ShardMetrics {
    /// The counters for each route id of a new generation (`None` for unused ids).
    pub fn for_routes<'a>(
        &self,
        names: impl Iterator<Item = Option<&'a str>>,
    ) -> CowVec<Option<Rc<RouteStats>>> {
        names.map(|n| n.map(|n| self.for_route(n))).collect()
    }

    /// One route's counters, kept by name across generations.
    pub fn for_route(&self, name: &str) -> Rc<RouteStats> {
        self.routes
            .borrow_mut()
            .entry(name.into())
            .or_default()
            .clone()
    }

    /// Non-zero routes only, so a scrape of a 50k-route table sends what was used.
    pub fn route_counts(&self) -> Vec<(String, RouteCounts)> {
        let mut out: Vec<(String, RouteCounts)> = self
            .routes
            .borrow()
            .iter()
            .map(|(n, s)| (n.to_string(), s.snapshot()))
            .filter(|(_, c)| c.total() > 0)
            .collect();
        let un = self.unrouted.snapshot();
        if un.total() > 0 {
            out.push((names::UNROUTED.to_string(), un));
        }
        out
    }
}

/// Which limit plugin rejected a request: the index into the per-shard rejection counters.
#[derive(Debug, Clone, Copy)]
pub enum Limiter {
    Count = 0,
    Req = 1,
    Conn = 2,
}

/// Plugin label per `Limiter`, in index order.
pub const LIMITERS: [&str; 3] = ["limit-count", "limit-req", "limit-conn"];

impl ShardMetrics {
    /// One rejection by a limit plugin (the plugins hold this shard's `ShardMetrics`).
    #[inline]
    pub fn count_rate_limited(&self, by: Limiter) {
        bump(&self.rate_limited[by as usize], 1);
    }

    /// This shard's rejection counts, in `LIMITERS` order.
    pub fn rate_limited(&self) -> [u64; 3] {
        self.rate_limited.each_ref().map(Cell::get)
    }

    /// One proxy-cache answer: from a stored entry (`hit`) or from the origin.
    #[inline]
    pub fn count_cache(&self, hit: bool) {
        bump(&self.cache[usize::from(!hit)], 1);
    }

    /// One proxy-cache lookup: in this shard's own store, or asked of another shard (`remote`).
    #[inline]
    pub fn count_cache_lookup(&self, remote: bool) {
        bump(&self.cache[2 + usize::from(remote)], 1);
    }

    /// [hits, misses, local lookups, cross-shard asks] on this shard.
    pub fn cache(&self) -> [u64; 4] {
        self.cache.each_ref().map(Cell::get)
    }
}

impl ShardMetrics {
    /// One request that failed its API's validation (only invalid requests come here).
    pub fn count_invalid(&self, api: &str, enforced: bool) {
        let mut m = self.invalid.borrow_mut();
        let slot = match m.get_mut(api) {
            Some(s) => s,
            None => m.entry(api.into()).or_default(),
        };
        slot[usize::from(!enforced)] += 1;
    }

    /// One call to a deprecated API version by `consumer` ("" when none was identified).
    pub fn count_deprecated(&self, api: &str, consumer: &str) {
        let mut m = self.deprecated.borrow_mut();
        *m.entry((api.into(), consumer.into())).or_default() += 1;
    }

    /// This shard's deprecated calls: `(api, consumer, count)`.
    pub fn deprecated(&self) -> Vec<(String, String, u64)> {
        self.deprecated
            .borrow()
            .iter()
            .map(|((a, c), n)| (a.to_string(), c.to_string(), *n))
            .collect()
    }

    /// This shard's validation failures by API: `(api, [rejected, forwarded])`.
    pub fn invalid(&self) -> Vec<(String, [u64; 2])> {
        self.invalid
            .borrow()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

/// One upstream node as a shard sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeSnap {
    pub addr: String,
    pub successes: u64,
    pub failures: u64,
    /// Passively ejected right now on this shard.
    pub ejected: bool,
}

#[derive(Debug, Clone, Default)]
pub struct UpstreamSnap {
    pub name: String,
    pub nodes: Vec<NodeSnap>,
}

/// What a shard reports when the status thread asks (see `runtime::shard::Control::Snapshot`).
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub generation: u64,
    pub accepted: u64,
    pub requests: u64,
    pub errors: u64,
    /// Keep-alive holds that ended with a request read into a dropped buffer (net/hold_buf.rs):
    /// the connection was closed at once so the client retries.
    pub hold_races: u64,
    pub active_connections: u64,
    /// Of those, idle plain connections parked with no task (proxy/park.rs).
    pub parked_connections: u64,
    pub routes: Vec<(String, RouteCounts)>,
    pub upstreams: Vec<UpstreamSnap>,
    pub log_lines: u64,
    pub log_dropped: u64,
    /// Rate-limit rejections, in `LIMITERS` order.
    pub rate_limited: [u64; 3],
    /// OpenAPI validation failures by API: `[rejected, forwarded]`.
    pub invalid: Vec<(String, [u64; 2])>,
    /// Calls to deprecated API versions: `(api, consumer, count)`.
    pub deprecated: Vec<(String, String, u64)>,
    /// proxy-cache answers and lookups: [hits, misses, local lookups, cross-shard asks].
    pub cache: [u64; 4],
    /// limit-count exact mode's Redis calls from this shard.
    pub exact: fleet::ExactCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_classes() {
        let s = RouteStats::default();
        s.record(200, Duration::from_micros(400));
        s.record(204, Duration::from_millis(3));
        s.record(503, Duration::from_secs(60));
        s.record(99, Duration::ZERO);
        let c = s.snapshot();
        assert_eq!(c.classes, [1, 2, 0, 0, 1]);
        assert_eq!(c.buckets[0], 2);
        assert_eq!(c.buckets[2], 1);
        assert_eq!(c.buckets[BUCKETS_US.len()], 1);
        assert_eq!(c.total(), 4);
    }

    #[test]
    fn same_name_same_counters_across_generations() {
        let m = ShardMetrics::default();
        let a = m.for_routes([Some("r1"), Some("r2")].into_iter());
        a.get(1)
            .cloned()
            .flatten()
            .unwrap()
            .record(200, Duration::ZERO);
        let b = m.for_routes([Some("r2"), None, Some("r3")].into_iter());
        assert_eq!(b.get(0).cloned().flatten().unwrap().snapshot().total(), 1);
        assert!(b.get(1).unwrap().is_none());
        assert_eq!(m.for_route("r2").snapshot().total(), 1);
        assert_eq!(m.route_counts().len(), 1);
    }
}
