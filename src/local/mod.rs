//! Per-shard, single-threaded building blocks every layer above may use: coarse deadlines (the
//! thread's tick counter), the drain/retire signal and the same-thread bell. Imports nothing of
//! the crate: these must stay below the proxy, the plugins and the cache that wait on them.

pub mod bell;
pub mod deadline;
pub mod drain;
