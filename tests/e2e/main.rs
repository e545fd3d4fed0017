//! ringway's end-to-end tests, one test binary: every module starts the real `ringway` binary
//! on 127.0.0.1 ephemeral ports (or, for `props` and `fuzz_props`, drives the library's public
//! API) and checks what a client and an upstream see. `harness` holds the shared machinery.
//!
//! One binary instead of one per file: the harness is compiled once, and a filter such as
//! `cargo test --test e2e -- framing::` runs one area. All tests of the binary run in
//! parallel threads of one process, so a test must not touch process-wide state (cwd,
//! environment) and must name its temp files uniquely; tests that load the CPUs or time what
//! needs CPU take `harness::cpu_lock()`.
//!
//! `RINGWAY_TEST_DRIVER=legacy` (or `io_uring`, `auto`) puts `server.driver` into every config a
//! gateway starts from, unless the test names a driver; README's test command runs the
//! proxy-path modules that way too (see `legacy_driver`).

mod harness;

mod accesslog;
mod active_health;
mod admin;
mod auth;
mod balance;
mod cache;
mod cache_ops;
mod cache_ranges;
mod cache_rfc;
mod cache_rfc9111;
mod cache_shards;
mod cache_stale;
mod cache_tier;
mod chunked;
mod config;
mod consumer_groups;
mod dashboards;
mod drain;
mod etcd_source;
mod exhaustion;
mod faults;
mod fleet;
mod fleet_exact;
mod framing;
mod fuzz_props;
mod headers;
mod health;
mod hold_race;
mod keepalive;
mod large_body;
mod legacy_driver;
mod loggers;
mod metrics;
mod ocsp;
mod oidc;
mod oidc_browser;
mod openapi;
mod openapi_ops;
mod openapi_versions;
mod packaging;
mod park;
mod pipelining;
mod plugins_access;
mod plugins_faults;
mod plugins_routing;
mod props;
mod rate_limit;
mod reload;
mod route_updates;
mod routing;
mod runtime;
mod splice;
mod status_page;
mod swap_abort;
mod syslog;
mod timeouts;
mod tls;
mod tls_edge;
mod tls_upstream;
mod upgrade;
mod websocket;
