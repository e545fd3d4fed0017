//! Delivery counters of the logger plugins (http-logger, tcp-logger, syslog): bumped by their sender
//! threads, read by /metrics. Owns only the counters; the plugins and their sinks live in plugin/.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters for one logger plugin, summed over its configs and generations.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

pub static HTTP: Counters = Counters::new();
pub static TCP: Counters = Counters::new();
pub static SYSLOG: Counters = Counters::new();

/// (plugin, entries sent, entries dropped, failed send attempts) for /metrics.
pub fn counts() -> [(&'static str, u64, u64, u64); 3] {
    let c = |n, c: &Counters| {
        (
            n,
            c.sent.load(Relaxed),
            c.dropped.load(Relaxed),
            c.failed.load(Relaxed),
        )
    };
    [
        c("http-logger", &HTTP),
        c("tcp-logger", &TCP),
        c("syslog", &SYSLOG),
    ]
}
