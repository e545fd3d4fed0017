//! Counters of the shared cache tier (proxy-cache `l2`): the tier thread's state, lookups,
//! writes and purges, and writes dropped by shards when its queue was full. Bumped by that
//! thread (drops: by a shard, only when its write cannot be queued), read by /metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Tier {
    /// 0 no tier used yet, 1 reachable, 2 unreachable (lookups are misses).
    pub state: AtomicU64,
    pub lookups: AtomicU64,
    pub hits: AtomicU64,
    /// Lookups that failed or timed out, or were answered at once because the tier is down.
    pub errors: AtomicU64,
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    /// Writes dropped because the queue to the tier thread was full.
    pub dropped: AtomicU64,
    /// Purges this node sent to the tier (and published) / heard from other nodes.
    pub purges_sent: AtomicU64,
    pub purges_heard: AtomicU64,
    /// Purges another node published while this one was not subscribed, replayed from the stream.
    pub purges_replayed: AtomicU64,
    /// Resubscriptions that found purges trimmed away: every entry of the caches on the tier dropped.
    pub purge_gaps: AtomicU64,
    /// Reachable/unreachable transitions.
    pub changes: AtomicU64,
}

pub static TIER: Tier = Tier {
    state: AtomicU64::new(0),
    lookups: AtomicU64::new(0),
    hits: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    writes: AtomicU64::new(0),
    write_errors: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    purges_sent: AtomicU64::new(0),
    purges_heard: AtomicU64::new(0),
    purges_replayed: AtomicU64::new(0),
    purge_gaps: AtomicU64::new(0),
    changes: AtomicU64::new(0),
};

/// (name, kind, help, value) for every tier family, for /metrics.
pub fn families() -> [(&'static str, &'static str, &'static str, u64); 12] {
    use super::names::*;
    let t = &TIER;
    [
        (TIER_STATE, "gauge", "Shared cache tier: 0 not used yet, 1 reachable, 2 unreachable (lookups are misses, retried with backoff).", t.state.load(Relaxed)),
        (TIER_LOOKUPS, "counter", "Lookups in the shared cache tier after a node miss.", t.lookups.load(Relaxed)),
        (TIER_HITS, "counter", "Lookups the shared cache tier answered with a usable entry.", t.hits.load(Relaxed)),
        (TIER_ERRORS, "counter", "Lookups that failed, timed out or were skipped while the tier is unreachable (each a miss).", t.errors.load(Relaxed)),
        (TIER_WRITES, "counter", "Entries written to the shared cache tier.", t.writes.load(Relaxed)),
        (TIER_WRITE_ERRORS, "counter", "Writes to the shared cache tier that failed or timed out.", t.write_errors.load(Relaxed)),
        (TIER_DROPPED, "counter", "Writes dropped because the queue to the tier thread was full.", t.dropped.load(Relaxed)),
        (TIER_PURGES_SENT, "counter", "Purges this node applied to the shared tier and published to the fleet.", t.purges_sent.load(Relaxed)),
        (TIER_PURGES_HEARD, "counter", "Purges heard from other nodes and applied to this node's caches.", t.purges_heard.load(Relaxed)),
        (TIER_PURGES_REPLAYED, "counter", "Purges published while this node's subscription was down, replayed from the purge stream on resubscribing.", t.purges_replayed.load(Relaxed)),
        (TIER_PURGE_GAPS, "counter", "Resubscriptions that found missed purges trimmed from the stream: every entry of the caches on the tier was dropped.", t.purge_gaps.load(Relaxed)),
        (TIER_CHANGES, "counter", "Reachable/unreachable transitions of the shared cache tier.", t.changes.load(Relaxed)),
    ]
}
