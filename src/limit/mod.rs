//! Rate-limit state machines: window counters, leaky buckets, concurrency counts, and the
//! cross-shard sync messages. Pure: time is passed in (ms since a node-wide epoch); no I/O, no locks.
//!
//! Node-wide accuracy without a lock: each shard admits from its own allocation ("local
//! share") and every sync interval sends its counts, allocation and demand per key to the other
//! shards over the node mesh's limit lane. A shard's allocation is its demand-weighted share of
//! what the node has left after everyone else's reported use *and* reservation, so shares add up
//! to at most the limit even while reports are one interval old. See README "Rate limiting".

pub mod bucket;
pub mod conc;
pub mod count;
pub mod sync;

/// A shard's demand-weighted share: `(d + 1) / (sum(d) + n)`. The +1 keeps an idle shard a
/// small share, so its first request is not refused while others are busy.
pub fn weight(mine: u32, total: u64, n: usize) -> f64 {
    (f64::from(mine) + 1.0) / (total as f64 + n as f64)
}
