//! Rate-limit state machines: window counters, leaky buckets, concurrency counts, and the
//! cross-shard sync messages. Pure: time is passed in (ms since a node-wide epoch); no I/O, no locks.
//!
//! Node-wide accuracy without a lock: each shard admits from its own allocation ("local
//! share") and every sync interval sends its counts, allocation and demand per key to the other
//! shards over the node mesh's limit lane. A shard's allocation is its demand-weighted share of
//! what the node has left after everyone else's reported use *and* reservation, so shares add up
//! to at most the limit even while reports are one interval old. See README "Rate limiting".
//!
//! Cluster-wide limiters (`fleet`, `node`) do the same one level up: the node's limit per key
//! is what the fleet thread was granted by the shared store, split among shards as above.

pub mod bucket;
pub mod conc;
pub mod count;
pub mod fleet;
pub mod node;
pub mod sync;

/// A shard's demand-weighted share: `(d + 1) / (sum(d) + n)`. The +1 keeps an idle shard a
/// small share, so its first request is not refused while others are busy.
pub fn weight(mine: u32, total: u64, n: usize) -> f64 {
    (f64::from(mine) + 1.0) / (total as f64 + n as f64)
}

/// One key's state as one shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub key: u64,
    /// Admitted in the window (limit-count) or in flight (limit-conn).
    pub count: u64,
    /// How many this shard may admit in the window (its local share incl. `count`).
    pub alloc: u64,
    /// Attempts in the last sync interval, admitted or not.
    pub demand: u32,
}
