//! The request path: client connection loop, upstream exchange, body pumping and tunnels.
//! Reads shard state and config; never reaches across shards.

mod cached;
mod conn;
mod discard;
mod forward;
mod idle;

mod observe;
mod phases;
mod pump;
mod reuse;
pub mod shard;
mod splice;
mod tunnel;

pub use conn::{serve, ClientStream};
