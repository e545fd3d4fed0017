//! What makes a limiter cluster-wide (its Redis store, key namespace, sync interval, fallback),
//! its keys in the store, and the messages between a node's shards and its fleet thread. Data
//! only: no I/O.
//!
//! Shards send `Uplink`s (their per-key counts, allocations and demand, the same items they
//! broadcast to each other) to the node's fleet thread; it exchanges the node's sum with Redis
//! and answers every shard with a `Grant`: per key, the node's cap for the current window and
//! its demand-weighted fraction for opening the next. See README "Rate limits across nodes".

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Item;

/// Where a cluster-wide limiter's counters live.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Store {
    Redis {
        addr: String,
        password: Option<String>,
        database: i64,
    },
    /// A Redis Cluster: the seed nodes (the client learns the slots and follows MOVED/ASK).
    Cluster {
        nodes: Vec<String>,
        password: Option<String>,
    },
}

impl Store {
    /// How log lines name the store.
    pub fn describe(&self) -> String {
        match self {
            Store::Redis { addr, database, .. } => format!("redis {addr}/{database}"),
            Store::Cluster { nodes, .. } => format!("redis-cluster {}", nodes.join(",")),
        }
    }
}

/// What a node does while its store is unreachable (`on_redis_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Keep enforcing the node's last share (the default).
    Local,
    /// Fail open: admit everything until the store is back.
    Allow,
    /// Fail closed: refuse everything until the store is back.
    Deny,
}

/// The limiter's own parameters, as every node must agree on them.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// limit-count: `limit` per fixed window of `window_ms`, windows aligned on the wall clock.
    Count { limit: u64, window_ms: u64 },
    /// limit-req: the cluster's `rate` per second, split between nodes by demand.
    Req { rate: f64 },
}

/// One cluster-wide limiter (a `limit-count`/`limit-req` with `policy = "redis"`/`"redis-cluster"`).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    /// Redis key namespace: the `group`, or the owner and plugin (`route "api"/limit-count`).
    /// Nodes sharing a limit must produce the same namespace.
    pub ns: String,
    pub kind: Kind,
    pub store: Store,
    /// Bound on one exchange (connect or round trip) with the store.
    pub timeout: Duration,
    pub interval: Duration,
    pub on_error: OnError,
}

impl FleetSpec {
    /// The fraction a shard opens a key with before the fleet thread's first word
    /// (`opening_frac`; limit-req opens with its whole rate: it has no window to overrun).
    pub fn opening(&self, tick: Duration) -> f64 {
        match self.kind {
            Kind::Count { limit, window_ms } => {
                opening_frac(limit, window_ms, self.interval.max(tick))
            }
            Kind::Req { .. } => 1.0,
        }
    }
}

/// How shards decide while the fleet thread says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Decide from the node's share (granted, or the last one while the store is away).
    #[default]
    Shared,
    /// Store away with `on_redis_error = "allow"`.
    Allow,
    /// Store away with `on_redis_error = "deny"`.
    Deny,
}

/// One shard's report for one cluster-wide limiter, sent at its sync tick.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The limiter set (its epoch) and the limiter's id in it.
    pub set: Instant,
    pub limiter: u32,
    /// Wall-clock milliseconds at `set`: windows are numbered from the Unix epoch.
    pub wall_ms: u64,
    pub spec: Arc<FleetSpec>,
    pub from: u16,
    /// How often shards tick: demands in `items` are per tick.
    pub tick: Duration,
    pub window: u64,
    pub items: Vec<Item>,
}

/// The fleet thread's answer for one limiter, sent to every shard.
#[derive(Debug, Clone)]
pub struct Grant {
    pub set: Instant,
    pub limiter: u32,
    /// The window the caps are for (limit-count; 0 for limit-req).
    pub window: u64,
    pub mode: Mode,
    /// The node's fraction for keys it has no grant for yet (1 / nodes last seen).
    pub default_frac: f64,
    pub items: Vec<GrantItem>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrantItem {
    pub key: u64,
    /// limit-count: how many the node may admit in `window` (its count included).
    pub cap: u64,
    /// limit-count: the node's fraction of the limit when the next window opens;
    /// limit-req: the node's fraction of the cluster rate.
    pub frac: f64,
}

/// The node-wide limit a shard works from for one key: a grant for the current window when it
/// has one, else the node's fraction of `limit` (the opening estimate).
pub fn node_limit(limit: u64, cap: Option<u64>, frac: f64) -> u64 {
    match cap {
        Some(c) => c.min(limit),
        None => (limit as f64 * frac.clamp(0.0, 1.0)).floor() as u64,
    }
}

/// limit-count: the fraction of the limit a node opens a key with when it may not be alone and
/// the store reserved nothing for it yet: half an interval's worth of the limit, plus one request
/// (`interval` is the sync interval or the shards' tick, whichever is longer). What a node admits
/// on it before its first exchange can be over the limit, so it is kept small: a whole
/// interval's worth measured +5% with traffic moving to a node mid-window, half +2.7%.
pub fn opening_frac(limit: u64, window_ms: u64, interval: Duration) -> f64 {
    let interval = interval.as_millis() as f64;
    (interval / 2.0 / window_ms.max(1) as f64 + 1.0 / limit.max(1) as f64).min(1.0)
}

/// Wall-clock milliseconds now, for windows aligned across nodes.
pub fn wall_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True for `sync_interval = "0"`: every request makes one round trip to the store (exact mode,
/// limit-count only) instead of working from a share.
pub fn is_exact(spec: &FleetSpec) -> bool {
    spec.interval.is_zero()
}

/// `{...}` is the Redis Cluster hash tag: a limit's keys (this window's and the previous
/// one's, exact mode's) share it, so a script's keys are on one slot.
pub fn key_tag(ns: &str, key: u64) -> String {
    let ns: String = ns
        .chars()
        .map(|c| if c == '{' || c == '}' { '_' } else { c })
        .collect();
    format!("{{{ns}:{key:016x}}}")
}

/// Exact mode's counter for `key` in `window`: the same tag and window numbering as the
/// batched mode's `ringway:lc:` keys.
pub fn exact_key(ns: &str, key: u64, window: u64) -> String {
    format!("ringway:lx:{}:{window}", key_tag(ns, key))
}

/// Exact mode, per request: KEYS = the window's counter; ARGV = when it expires (Unix ms).
pub const EXACT_SCRIPT: &str =
    "local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIREAT', KEYS[1], ARGV[1]) return {n}";
