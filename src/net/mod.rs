//! Sockets: SO_REUSEPORT listeners created before the shards start.
//! TLS will live here too; nothing here knows about HTTP.

pub mod listen;
