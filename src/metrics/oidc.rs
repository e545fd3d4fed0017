//! Counters of openid-connect's calls to OpenID providers (discovery, JWKS, introspection, token,
//! userinfo): bumped by the plugin's control and worker threads, never on a shard; read by /metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The provider endpoints ringway calls, in exposition order.
pub const ENDPOINTS: [&str; 5] = ["discovery", "jwks", "introspection", "token", "userinfo"];

/// (ok, failed) per endpoint of `ENDPOINTS`.
static CALLS: [[AtomicU64; 2]; 5] = [
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
];

/// One finished call to `endpoint` (an index into `ENDPOINTS`).
pub fn count(endpoint: usize, ok: bool) {
    if let Some(c) = CALLS.get(endpoint) {
        c[usize::from(!ok)].fetch_add(1, Relaxed);
    }
}

/// (endpoint, ok, failed) for /metrics.
pub fn counts() -> [(&'static str, u64, u64); 5] {
    let c = |i: usize| {
        (
            ENDPOINTS[i],
            CALLS[i][0].load(Relaxed),
            CALLS[i][1].load(Relaxed),
        )
    };
    [c(0), c(1), c(2), c(3), c(4)]
}
