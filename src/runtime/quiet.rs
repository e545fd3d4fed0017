//! Gives memory back when a shard goes quiet: free lists and grown tables trimmed, freed pages
//! returned by mimalloc, once nothing happened for a control tick.
//! Owns no state of the request path; it runs between ticks, never while a request is served.
//!
//! Why: mimalloc returns freed pages only when it is next called after their purge delay, and a
//! shard whose connections all went idle barely calls it, so its RSS stayed at the high-water
//! mark of the requests that ran at once (perf/idle-rss.sh: 2.9-5.0 KiB per idle connection
//! with the defaults against 2.1 with `MIMALLOC_PURGE_DELAY=0`; perf/RESULTS.md, issue 21a).

use std::time::{Duration, Instant};

use crate::local::drain::Drain;
use crate::proxy::shard::ShardStats;
use crate::proxy::Park;
// Linked for `mi_collect` below (the binary's global allocator, main.rs).
use mimalloc as _;

/// Request-time buffer sets and request blocks a quiet shard keeps for its next requests.
const KEEP: usize = 16;
/// How long nothing must happen before the shard counts as quiet (a tick is 50 ms while it holds
/// connections; other wake-ups, such as mesh mail, make ticks shorter).
const QUIET: Duration = Duration::from_millis(100);
/// Collects at most this often, so a trickle of requests does not pay one each time (a collect
/// took 0.5-1 ms with 10,000 idle connections). A collect due sooner waits for it, so memory
/// freed at the end of a busy period is returned within QUIET + EVERY at the latest.
const EVERY: Duration = Duration::from_millis(250);

extern "C" {
    /// mimalloc's `mi_collect`: frees this thread's empty pages and, with `force`, returns
    /// (purges) freed memory to the OS now rather than after the purge delay.
    fn mi_collect(force: bool);
}

/// Activity seen at the last change, when it changed, and the last collect.
pub struct Quiet {
    seen: u64,
    changed: Instant,
    collected: Instant,
    dirty: bool,
}

impl Default for Quiet {
    fn default() -> Quiet {
        let now = Instant::now();
        Quiet {
            seen: 0,
            changed: now,
            collected: now,
            dirty: false,
        }
    }
}

impl Quiet {
    /// Called once per control tick: returns memory when the shard was busy since the last
    /// collect and nothing happened for `QUIET` (accepts, requests, connections settling).
    pub fn tick(
        &mut self,
        stats: &ShardStats,
        drain: &Drain,
        park: Option<&Park>,
        shard: usize,
        now: Instant,
    ) {
        let count = stats
            .accepted
            .get()
            .wrapping_add(stats.requests.get())
            .wrapping_add(stats.settled.get());
        if count != self.seen {
            self.seen = count;
            self.changed = now;
            self.dirty = true;
            return;
        }
        if !self.dirty
            || now.duration_since(self.changed) < QUIET
            || now.duration_since(self.collected) < EVERY
        {
            return;
        }
        self.dirty = false;
        self.collected = now;
        crate::proxy::trim_free_lists(KEEP);
        // Tables grown to the burst's peak give back their free tails before the collect.
        crate::local::deadline::trim();
        drain.trim();
        if let Some(park) = park {
            park.trim();
        }
        // SAFETY: mi_collect takes no pointers and only touches the calling thread's heap and
        // mimalloc's own arenas; it is the allocator this binary runs on (main.rs), and a test
        // binary on another allocator still links mimalloc (a dependency), where it finds
        // nothing to collect.
        unsafe { mi_collect(true) };
        log::debug!(
            "shard {shard}: quiet, freed memory returned in {} us",
            now.elapsed().as_micros()
        );
    }
}
