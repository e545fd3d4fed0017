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
mod park;
mod phases;
mod pump;
mod purge;
mod refresh;
mod reuse;
pub mod shard;
mod splice;
mod tunnel;

pub use conn::{serve, ClientStream};
pub use park::Park;

/// The shard's park task (park.rs): parked connections that become readable resume on the
/// shard's current generation.
pub async fn run_park(shard: std::rc::Rc<shard::Shard>) {
    let Some(park) = shard.park.clone() else {
        return;
    };
    let (drain, id) = (shard.drain.clone(), shard.id);
    park::run(park, drain, id, move |w| {
        conn::wake(shard::current(&shard), w)
    })
    .await
}

/// Frees the request-time memory this thread keeps for reuse (buffer sets and request blocks)
/// down to `keep` of each; for a shard whose connections went idle (runtime/quiet.rs).
pub fn trim_free_lists(keep: usize) {
    idle::trim(keep);
    reuse::trim(keep);
}
