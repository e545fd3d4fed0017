//! The e2e harness, split by role; each file's first two lines say what it owns and what it must
//! not touch. This file owns only the module map, the re-exports tests glob-import, `wait_until`.

mod client;
mod config;
mod gateway;
pub mod ops;
mod origin;
mod origin_serve;
mod procfs;
pub mod prometheus;
mod raw_origin;
pub mod tls;
mod wire;

pub use client::*;
pub use config::*;
pub use gateway::*;
pub use origin::*;
pub use procfs::*;
pub use raw_origin::*;
pub use wire::{http_date, pattern_byte, pattern_fill, Fnv};

use std::thread;
use std::time::{Duration, Instant};

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
