//! The control plane: the one place that changes what shards run. Holds the current config and
//! its generation, applies a new config to every shard in two steps (prepare, commit) over their
//! control channels, and gathers counter snapshots. Runs on the status/admin/main threads only;
//! what a change is made from (file, admin document) is decided above it, in admin/ and server.rs.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};

use super::control::Control;
use super::wake::ShardLink;
use crate::built::Built;
use crate::config::Config;
use crate::metrics::expose::PlaneInfo;
use crate::metrics::ShardSnapshot;

/// How long a scrape waits for shards (nudged, they answer as soon as their thread is free).
const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);
/// How long a swap waits for every shard to build its next generation.
const PREPARE_WAIT: Duration = Duration::from_secs(10);

pub struct Plane {
    /// Per shard, its control channel (each send also wakes the shard to read it at once).
    links: Vec<ShardLink>,
    started: Instant,
    inner: Mutex<Inner>,
    /// Signalled when a new generation commits (the prober waits on it instead of polling).
    swapped: Condvar,
    /// Serialises swaps (admin changes, SIGHUP) so generations commit in order.
    swap: Mutex<()>,
}

struct Inner {
    generation: u64,
    cfg: Arc<Built>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// Active health results: (upstream, node addr) -> (up, passes, fails).
    active: BTreeMap<(String, String), (bool, u64, u64)>,
}

impl Plane {
    pub fn new(cfg: Arc<Built>, links: Vec<ShardLink>) -> Arc<Plane> {
        Arc::new(Plane {
            links,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                generation: 1,
                cfg,
                reloads_ok: 0,
                reloads_failed: 0,
                active: BTreeMap::new(),
            }),
            swapped: Condvar::new(),
            swap: Mutex::new(()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind; they are still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Arc<Built> {
        self.inner().cfg.clone()
    }

    pub fn generation(&self) -> u64 {
        self.inner().generation
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes.
    pub fn wait_for_swap(&self, seen: u64, timeout: Duration) {
        let _ = self
            .swapped
            .wait_timeout_while(self.inner(), timeout, |i| i.generation == seen)
            .unwrap_or_else(|e| e.into_inner());
    }

    pub fn shards(&self) -> usize {
        self.links.len()
    }

    /// Counts a change that failed validation (it never reached the shards).
    pub fn note_failure(&self) {
        self.inner().reloads_failed += 1;
    }

    /// Sends `cfg` to every shard: each builds its next generation and acks (prepare), then all
    /// are told to switch (commit). Returns the new generation number and how long it took.
    pub fn apply(&self, cfg: Built) -> (u64, Duration) {
        self.swap_in(cfg, None)
    }

    /// Like `apply`, for a config that `config::with_route` made from the current one: shards
    /// rebuild route `id`'s state only. `cfg` must have been made from `config()` while the
    /// caller held the admin store lock, so no other change came in between.
    pub fn apply_route(&self, cfg: Built, id: usize) -> (u64, Duration) {
        self.swap_in(cfg, Some(id))
    }

    fn swap_in(&self, cfg: Built, route: Option<usize>) -> (u64, Duration) {
        let t0 = Instant::now();
        let _one = self.swap.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = Arc::new(cfg);
        let generation = self.generation() + 1;
        let (ack, acks) = unbounded();
        let mut sent = 0;
        for tx in &self.links {
            let msg = Control::Prepare {
                generation,
                cfg: cfg.clone(),
                route,
                ack: ack.clone(),
            };
            if tx.send(msg) {
                sent += 1;
            }
        }
        let got = wait_acks(&acks, sent);
        if got < sent {
            // Channels are ordered: a slow shard still prepares before it sees the commit.
            log::warn!(
                "config generation {generation}: {got}/{sent} shards prepared in time; committing"
            );
        }
        let mut sent = 0;
        for tx in &self.links {
            let msg = Control::Commit {
                generation,
                ack: ack.clone(),
            };
            if tx.send(msg) {
                sent += 1;
            }
        }
        // Waiting for the commits means a caller (the admin API) answers only once every
        // shard's next request will use the new generation.
        wait_acks(&acks, sent);
        let mut inner = self.inner();
        inner.generation = generation;
        self.swapped.notify_all();
        inner.cfg = cfg;
        inner.reloads_ok += 1;
        (generation, t0.elapsed())
    }

    /// Asks every shard for its counters; shards that do not answer in time are left out.
    pub fn gather(&self) -> Vec<ShardSnapshot> {
        let (tx, rx) = bounded(self.links.len().max(1));
        let mut asked = 0;
        for s in &self.links {
            if s.send(Control::Snapshot(tx.clone())) {
                asked += 1;
            }
        }
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        let mut out = Vec::with_capacity(asked);
        while out.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(s) => out.push(s),
                Err(_) => break,
            }
        }
        out.sort_by_key(|s| s.shard);
        out
    }

    pub fn info(&self) -> PlaneInfo {
        let inner = self.inner();
        PlaneInfo {
            generation: inner.generation,
            reloads_ok: inner.reloads_ok,
            reloads_failed: inner.reloads_failed,
            shards: self.links.len(),
            uptime_secs: self.started.elapsed().as_secs(),
            active: inner.active.clone(),
        }
    }

    /// Records one active probe (`passed`) and the node's verdict (`up`); tells every shard
    /// when the verdict flips. Called by the health thread (src/active_health) only.
    pub fn node_checked(&self, upstream: &str, node: usize, addr: &str, passed: bool, up: bool) {
        let mut inner = self.inner();
        let e = inner
            .active
            .entry((upstream.to_string(), addr.to_string()))
            .or_insert((true, 0, 0));
        let was = e.0;
        e.0 = up;
        if passed {
            e.1 += 1
        } else {
            e.2 += 1
        }
        // Sent before the lock is released: whoever reads the new verdict (a scrape) asks the
        // shards after this message, so their answers already reflect it.
        if was != up {
            self.publish_down(upstream, node, !up);
        }
    }

    /// Sends one node's active verdict to every shard (also used to re-send verdicts after a
    /// config swap, whose rebuilt upstream state starts with every node up).
    pub fn publish_down(&self, upstream: &str, node: usize, down: bool) {
        for tx in &self.links {
            let _ = tx.send(Control::NodeDown {
                upstream: upstream.to_string(),
                node,
                down,
            });
        }
    }

    /// Sends one message per shard, built by `msg`; returns how many shards it reached.
    pub fn send_all(&self, msg: impl Fn() -> Control) -> usize {
        self.links.iter().filter(|tx| tx.send(msg())).count()
    }

    /// Forgets active results for nodes no longer checked (removed by a config change).
    pub fn retain_active(&self, keep: impl Fn(&(String, String)) -> bool) {
        self.inner().active.retain(|k, _| keep(k));
    }
}

fn wait_acks(acks: &crossbeam_channel::Receiver<usize>, n: usize) -> usize {
    let deadline = Instant::now() + PREPARE_WAIT;
    let mut got = 0;
    while got < n && acks.recv_deadline(deadline).is_ok() {
        got += 1;
    }
    got
}

impl Plane {
    /// Applies a re-read config file (SIGHUP): refused if it changes what needs a restart;
    /// otherwise new listen addresses are bound and handed to the shards, the swap runs, and
    /// removed addresses stop accepting. Returns the new generation and how long the swap took.
    pub fn reload(&self, new: Built) -> Result<(u64, Duration), String> {
        let cur = self.config();
        if let Err(e) = self.check_restart_only(&cur.cfg, &new.cfg) {
            self.note_failure();
            return Err(e);
        }
        self.add_listeners(&cur.cfg, &new.cfg);
        let removed: Vec<_> = cur
            .cfg
            .server
            .listen
            .iter()
            .filter(|a| !new.cfg.server.listen.contains(a))
            .copied()
            .collect();
        let done = self.apply(new);
        if !removed.is_empty() {
            for tx in &self.links {
                let _ = tx.send(Control::Unlisten(removed.clone()));
            }
            for a in &removed {
                log::info!("stopped listening on {a} (removed by reload; open connections stay)");
            }
        }
        Ok(done)
    }

    /// Settings a running gateway cannot change in place.
    fn check_restart_only(&self, cur: &Config, new: &Config) -> Result<(), String> {
        if new.server.workers != cur.server.workers {
            return Err(format!(
                "server.workers changed ({} -> {}); that needs a restart",
                cur.server.workers, new.server.workers
            ));
        }
        Ok(())
    }

    /// Binds listen addresses the new config adds (plain listeners) and gives one socket per
    /// shard; existing listeners and their connections are untouched.
    fn add_listeners(&self, cur: &Config, new: &Config) {
        let added: Vec<_> = new
            .server
            .listen
            .iter()
            .enumerate()
            .filter(|(_, a)| !cur.server.listen.contains(a))
            .collect();
        for (i, addr) in added {
            if new.server.tls.get(i).is_some_and(|t| t.is_some()) {
                log::warn!("SIGHUP: new TLS listener {addr} needs a restart; not added");
                continue;
            }
            match crate::net::listen::bind_all(&[*addr], self.links.len()) {
                Ok(b) => {
                    for (tx, ls) in self.links.iter().zip(b.per_shard) {
                        let _ = tx.send(Control::Listen(
                            ls.into_iter().map(|l| (*addr, l)).collect(),
                        ));
                    }
                    for a in b.addrs {
                        log::info!("listening on {a} (added by reload)");
                    }
                }
                Err(e) => log::error!("SIGHUP: {e}"),
            }
        }
    }
}
