//! ringway: a thread-per-core HTTP/1.1 API gateway on io_uring.
//! Module map, in layers (see `layers`); what tests/ and perf/ reach. See README for the request flow.

pub mod accesslog;
pub mod active_health;
pub mod admin;
pub mod built;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod etcd;
pub mod fleet;
pub mod http;
pub mod layers;
pub mod limit;
pub mod local;
pub mod metrics;
pub mod net;
pub mod nofile;
pub mod ocsp;
pub mod openapi;
pub mod plugin;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod upgrade;
pub mod upstream;
pub mod util;
