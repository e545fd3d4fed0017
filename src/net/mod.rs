//! Sockets: SO_REUSEPORT listeners created before the shards start, and TLS on both sides
//! (termination in `tls`, its record-batching stream in `tls_stream`, upstream in `tls_client`), ticket keys and descriptor passing for a binary
//! upgrade (`tickets`, `fdpass`), syslog delivery (`syslog`), OCSP requests and answers (`ocsp`),
//! the RESP wire format and a shard's async Redis client (`resp`, `redis`); nothing here knows
//! about HTTP.

pub mod fdpass;
pub mod guard;
pub mod hold_buf;
pub mod io;
pub mod listen;
pub mod ocsp;
pub mod redis;
pub mod resp;
pub mod ring;
pub mod syslog;
pub mod tickets;
pub mod tls;
pub mod tls_client;
pub mod tls_stream;
