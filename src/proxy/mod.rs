//! The request path: client connection loop, upstream exchange, body pumping and tunnels, and
//! the per-generation shard state they read (`shard`). Never reaches across shards or threads.

mod body;
mod cached;
mod conn;
mod discard;
mod exchange;
mod forward;
mod hold;
mod idle;

mod observe;
mod phases;
mod pump;
mod purge;
mod refresh;
mod reuse;
pub mod shard;
mod splice;
mod tunnel;

pub use conn::{serve, ClientStream};

/// Frees the request-time memory this thread keeps for reuse (buffer sets and request blocks)
/// down to `keep` of each; for a shard whose connections went idle (runtime/quiet.rs).
pub fn trim_free_lists(keep: usize) {
    idle::trim(keep);
    reuse::trim(keep);
}
