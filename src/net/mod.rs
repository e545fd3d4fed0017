//! Sockets: SO_REUSEPORT listeners created before the shards start, and TLS on both sides
//! (termination in `tls`, upstream in `tls_client`); nothing here knows about HTTP.

pub mod guard;
pub mod io;
pub mod listen;
pub mod ring;
pub mod tls;
pub mod tls_client;
