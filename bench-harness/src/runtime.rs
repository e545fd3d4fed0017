//! Per-thread plumbing shared by the generator and `serve`: core pinning and building a monoio
//! runtime (io_uring, falling back to epoll once with a warning). Must not hold request logic.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);
static PIN_WARNED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread's runtime is on io_uring (set by `block_on`).
    static ON_URING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread runs on io_uring (so a timerfd can be read on the ring).
pub fn on_uring() -> bool {
    ON_URING.with(|c| c.get())
}

/// The core for thread `index`: from `--cpus` if given, else the cores this process may use
/// (so an outer `taskset` is respected rather than overridden).
pub fn pin_current(index: usize, cpus: &[usize]) {
    let id = if cpus.is_empty() {
        match core_affinity::get_core_ids() {
            Some(ids) if !ids.is_empty() => ids[index % ids.len()].id,
            _ => return,
        }
    } else {
        cpus[index % cpus.len()]
    };
    if !core_affinity::set_for_current(core_affinity::CoreId { id })
        && !PIN_WARNED.swap(true, Ordering::Relaxed)
    {
        eprintln!("ringway-bench: warning: could not pin a thread to cpu {id}; running unpinned");
    }
}

/// Runs `make()` to completion on a fresh single-threaded runtime for this thread.
pub fn block_on<F, Fut>(make: F) -> Result<Fut::Output, String>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    // COOP_TASKRUN: completions wait for the thread's next ring call instead of interrupting
    // it (the gateway measured ~20% more requests/s per core with it); each runtime submits
    // only from its own thread (SINGLE_ISSUER). Older kernels refuse the flags: plain ring then.
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(urb)
        .enable_timer()
        .build()
        .or_else(|_| {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
        });
    match built {
        Ok(mut rt) => {
            ON_URING.with(|c| c.set(true));
            Ok(rt.block_on(make()))
        }
        Err(e) => {
            if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "ringway-bench: warning: io_uring unavailable ({e}); using the epoll driver"
                );
            }
            ON_URING.with(|c| c.set(false));
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))?;
            Ok(rt.block_on(make()))
        }
    }
}

pub fn mono(t: std::time::Instant) -> monoio::time::Instant {
    monoio::time::Instant::from_std(t)
}
