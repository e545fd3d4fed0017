//! Counters of the fleet thread (cluster-wide limits through Redis): its store state, exchanges,
//! errors and round-trip times. Bumped by that thread only, read by /metrics; never per request.
//! Exact mode's per-request calls are counted per shard (net/redis.rs `Stats`) and added here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Store state as a gauge: no cluster-wide limiter configured, reachable, unreachable.
pub const STATE_NONE: u64 = 0;
pub const STATE_UP: u64 = 1;
pub const STATE_DOWN: u64 = 2;

pub struct Fleet {
    pub state: AtomicU64,
    /// Successful exchanges (one pipelined round trip each).
    pub syncs: AtomicU64,
    /// Failed exchanges or connection attempts (timeouts included).
    pub errors: AtomicU64,
    /// Up/down transitions.
    pub changes: AtomicU64,
    /// Redis commands sent (script calls and connection set-up).
    pub commands: AtomicU64,
    /// Sum and last of exchange round-trip times, in microseconds.
    pub latency_sum_us: AtomicU64,
    pub latency_last_us: AtomicU64,
    /// Keys exchanged in the last round.
    pub keys: AtomicU64,
}

pub static FLEET: Fleet = Fleet {
    state: AtomicU64::new(STATE_NONE),
    syncs: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    changes: AtomicU64::new(0),
    commands: AtomicU64::new(0),
    latency_sum_us: AtomicU64::new(0),
    latency_last_us: AtomicU64::new(0),
    keys: AtomicU64::new(0),
};

/// Exact mode's counts summed over shards: [commands, errors, changes] and the worst state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExactCounts {
    pub calls: [u64; 3],
    pub state: u64,
}

/// (name, kind, help, value) for every fleet family, for /metrics: the fleet thread's counters
/// plus exact mode's (`x`); the state shown is the worse of the two.
pub fn families(x: ExactCounts) -> [(&'static str, &'static str, &'static str, u64); 8] {
    use super::names::*;
    let f = &FLEET;
    let [commands, errors, changes] = x.calls;
    [
        (FLEET_STATE, "gauge", "Shared limit store: 0 none configured, 1 reachable, 2 unreachable (node falls back per on_redis_error).", f.state.load(Relaxed).max(x.state)),
        (FLEET_SYNCS, "counter", "Exchanges with the shared limit store (one pipelined round trip each).", f.syncs.load(Relaxed)),
        (FLEET_ERRORS, "counter", "Failed exchanges or connection attempts with the shared limit store.", f.errors.load(Relaxed) + errors),
        (FLEET_CHANGES, "counter", "Reachable/unreachable transitions of the shared limit store.", f.changes.load(Relaxed) + changes),
        (FLEET_COMMANDS, "counter", "Redis commands sent by this node for cluster-wide limits.", f.commands.load(Relaxed) + commands),
        (FLEET_LATENCY_SUM, "counter", "Sum of exchange round-trip times in seconds (divide by syncs for the mean).", 0),
        (FLEET_LATENCY_LAST, "gauge", "Round-trip time of the last exchange in seconds.", 0),
        (FLEET_KEYS, "gauge", "Keys exchanged in the last round.", f.keys.load(Relaxed)),
    ]
}

/// Latencies are kept in microseconds and shown in seconds.
pub fn latency_seconds() -> (f64, f64) {
    (
        FLEET.latency_sum_us.load(Relaxed) as f64 / 1e6,
        FLEET.latency_last_us.load(Relaxed) as f64 / 1e6,
    )
}
