//! The e2e harness by role (each file's first two lines: what it owns, what it must not touch).
//! Owns the module map, re-exports, `wait_until` and `cpu_lock`; no process, socket or config code.

pub mod chromium;
mod client;
mod config;
pub mod etcd;
mod gateway;
mod memcached;
pub mod oidc;
pub mod ops;
mod origin;
mod origin_serve;
mod procfs;
pub mod prometheus;
mod raw_origin;
mod redis;
pub mod rsyslog;
pub mod tls;
pub mod upgrade;
mod wire;

pub use client::*;
pub use config::*;
pub use gateway::*;
pub use memcached::Memcached;
pub use origin::*;
pub use procfs::*;
pub use raw_origin::*;
pub use redis::{Redis, RedisCluster};
pub use wire::{http_date, pattern_byte, pattern_fill, Fnv};

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

static CPU: Mutex<()> = Mutex::new(());

/// Held for a whole test by the tests that keep the CPUs busy (a 64 MiB body, 50,000 routes,
/// clients driving a limit flat out) and by those whose assertions need CPU at hand (a rate within
/// 5%, so many responses in 700 ms), so no two of them share the cores. The rest are light and run
/// beside them. In one binary any two tests can meet; before, only a file's own tests could.
pub fn cpu_lock() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one must still run.
    CPU.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Poll `f` every 10 ms until true or timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
