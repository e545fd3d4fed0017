//! Counters of the OCSP stapling thread (fetches answered, failed, certificates stapled now):
//! bumped by that thread, read by /metrics. Owns only the counters; fetching is `crate::ocsp`'s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Fetches that brought a usable answer.
pub static FETCHED: AtomicU64 = AtomicU64::new(0);
/// Fetches that failed (responder down, refused, answer unusable).
pub static FAILED: AtomicU64 = AtomicU64::new(0);
/// Certificates with ocsp_fetch whose fetched staple is current.
pub static STAPLED: AtomicU64 = AtomicU64::new(0);

/// (fetched, failed, stapled) for /metrics.
pub fn counts() -> (u64, u64, u64) {
    (
        FETCHED.load(Relaxed),
        FAILED.load(Relaxed),
        STAPLED.load(Relaxed),
    )
}
