//! The request path: client connection loop, upstream exchange, body pumping and tunnels.
//! Reads shard state and config; never reaches across shards.

mod cached;
mod conn;
mod discard;
mod exchange;
mod forward;
mod idle;
pub mod io;
mod observe;
mod phases;
mod pump;
mod refresh;
mod reuse;
mod splice;
mod tunnel;

pub use conn::{serve, ClientStream};
