//! The control plane: the one place that changes what shards run. Holds the current config and
//! its generation, applies a new config to every shard in two steps (prepare, then commit or
//! abort) over their control channels, and gathers counter snapshots. Runs on the status/admin/
//! main threads only; what a change is made from (file, admin document) is decided above it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver};

use super::control::{Control, SwapAck};
use super::wake::ShardLink;
use crate::built::Built;
use crate::config::Config;
use crate::metrics::expose::PlaneInfo;
use crate::metrics::source::SourceInfo;
use crate::metrics::ShardSnapshot;

/// How long a scrape waits for shards (nudged, they answer as soon as their thread is free).
const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);
/// How long a swap waits for every shard to build its next generation (and, once committed, to
/// switch to it). A shard that has not prepared by then fails the swap: it is aborted everywhere.
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
    /// `PREPARE_WAIT`; shorter in unit tests.
    prepare_wait: Duration,
}

struct Inner {
    generation: u64,
    cfg: Arc<Built>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// Active health results: (upstream, node addr) -> (up, passes, fails).
    active: BTreeMap<(String, String), (bool, u64, u64)>,
    /// `[config_source]` progress, written by the etcd thread (src/etcd).
    source: Option<SourceInfo>,
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
                source: None,
            }),
            swapped: Condvar::new(),
            swap: Mutex::new(()),
            prepare_wait: PREPARE_WAIT,
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

    /// Counts a change that failed: validation (it never reached the shards) or a swap aborted.
    pub fn note_failure(&self) {
        self.inner().reloads_failed += 1;
    }

    /// Sends `cfg` to every shard: each builds its next generation and acks (prepare); then all
    /// are told to switch (commit). Returns the new generation number and how long it took. If
    /// a shard fails to prepare, or does not answer within `PREPARE_WAIT`, every shard is told
    /// to drop it (abort), the current generation keeps running everywhere, the failure is
    /// counted and the error says which shard and why.
    pub fn apply(&self, cfg: Built) -> Result<(u64, Duration), String> {
        self.swap_in(cfg, None)
    }

    /// Like `apply`, for a config that `config::with_route` made from the current one: shards
    /// rebuild route `id`'s state only. `cfg` must have been made from `config()` while the
    /// caller held the admin store lock, so no other change came in between.
    pub fn apply_route(&self, cfg: Built, id: usize) -> Result<(u64, Duration), String> {
        self.swap_in(cfg, Some(id))
    }

    fn swap_in(&self, cfg: Built, route: Option<usize>) -> Result<(u64, Duration), String> {
        let t0 = Instant::now();
        let _one = self.swap.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = Arc::new(cfg);
        let current = self.generation();
        let generation = current + 1;
        let (ack, acks) = unbounded();
        let asked = self.ask(|| Control::Prepare {
            generation,
            cfg: cfg.clone(),
            route,
            ack: ack.clone(),
        });
        if let Err(why) = self.answers(&acks, &asked) {
            // Every shard, also those not heard from: one that prepares late gets the abort
            // right after (its channel is ordered) and drops what it built.
            self.send_all(|| Control::Abort { generation });
            self.note_failure();
            log::error!(
                "config generation {generation} aborted on every shard: {why}; \
                 keeping generation {current}"
            );
            return Err(format!("config generation {generation} aborted: {why}"));
        }
        let asked = self.ask(|| Control::Commit {
            generation,
            ack: ack.clone(),
        });
        // Waiting for the commits means a caller (the admin API) answers only once every
        // shard's next request will use the new generation. Past the point of no return: every
        // shard prepared, so a late answer is only late, and an error (the shard did not have
        // the generation pending) cannot happen while swaps are serialised.
        if let Err(why) = self.answers(&acks, &asked) {
            log::warn!("config generation {generation}: commit: {why}");
        }
        let mut inner = self.inner();
        inner.generation = generation;
        self.swapped.notify_all();
        inner.cfg = cfg;
        inner.reloads_ok += 1;
        Ok((generation, t0.elapsed()))
    }

    /// Sends one message per shard, built by `msg`; returns the ids of the shards it reached.
    fn ask(&self, msg: impl Fn() -> Control) -> Vec<usize> {
        (0..self.links.len())
            .filter(|&i| self.links[i].send(msg()))
            .collect()
    }

    /// Waits up to `prepare_wait` for an answer from each shard in `asked`: Ok once every one
    /// succeeded; the first failure, or who did not answer, otherwise.
    fn answers(&self, acks: &Receiver<SwapAck>, asked: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + self.prepare_wait;
        let mut heard = vec![false; self.links.len()];
        let mut left = asked.len();
        while left > 0 {
            let Ok(a) = acks.recv_deadline(deadline) else {
                let silent: Vec<usize> = asked.iter().copied().filter(|&i| !heard[i]).collect();
                return Err(format!(
                    "shard(s) {silent:?} did not answer within {:?}",
                    self.prepare_wait
                ));
            };
            a.result.map_err(|e| format!("shard {}: {e}", a.shard))?;
            if let Some(h) = heard.get_mut(a.shard).filter(|h| !**h) {
                *h = true;
                left -= 1;
            }
        }
        Ok(())
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
            source: inner.source.clone(),
            apis: inner
                .cfg
                .cfg
                .apis
                .iter()
                .zip(inner.cfg.apis.iter())
                .map(|(a, b)| crate::metrics::api::ApiRoutes {
                    id: a.id(),
                    routes: b.routes.clone(),
                })
                .collect(),
        }
    }

    /// Updates the config source's progress (the etcd thread, on each state change or event).
    pub fn update_source(&self, f: impl FnOnce(&mut SourceInfo)) {
        let mut inner = self.inner();
        f(inner.source.get_or_insert_with(SourceInfo::etcd));
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
        let added = self.add_listeners(&cur.cfg, &new.cfg);
        let removed: Vec<_> = cur
            .cfg
            .server
            .listen
            .iter()
            .filter(|a| !new.cfg.server.listen.contains(a))
            .copied()
            .collect();
        let done = match self.apply(new) {
            Ok(done) => done,
            Err(e) => {
                // The generation that would have served them is gone: close what was opened.
                if !added.is_empty() {
                    self.send_all(|| Control::Unlisten(added.clone()));
                    log::info!("stopped listening on {added:?} again (the reload was aborted)");
                }
                return Err(e);
            }
        };
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
        if new.config_source != cur.config_source {
            return Err("config_source changed; that needs a restart".into());
        }
        Ok(())
    }

    /// Binds listen addresses the new config adds (plain listeners) and gives one socket per
    /// shard; existing listeners and their connections are untouched. Returns the addresses
    /// added (as configured).
    fn add_listeners(&self, cur: &Config, new: &Config) -> Vec<SocketAddr> {
        let mut opened = Vec::new();
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
                            ls.into_iter().map(|(_, l)| (*addr, l)).collect(),
                        ));
                    }
                    for a in b.addrs {
                        log::info!("listening on {a} (added by reload)");
                    }
                    opened.push(*addr);
                }
                Err(e) => log::error!("SIGHUP: {e}"),
            }
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    //! The swap's commit/abort decision over real control channels: each "shard" is a thread
    //! holding the receiving end of a `ShardLink` and answering as the test says.

    use super::*;
    use crate::runtime::wake::Doorbell;
    use std::thread::JoinHandle;

    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        Ok,
        Fail,
        Never,
    }

    const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
workers = 2
[[upstreams]]
name = "u"
nodes = [{ addr = "127.0.0.1:9" }]

[[routes]]
name = "r"
paths = ["/*"]
upstream = "u"
"#;

    fn built() -> Built {
        crate::built::from_str(CONFIG).expect("test config builds")
    }

    /// A plane over one fake shard per entry of `answers`; each shard thread records what it
    /// was sent (until its link is dropped) and answers prepares as told (commits always).
    fn plane(answers: &[Answer], wait: Duration) -> (Arc<Plane>, Vec<JoinHandle<Vec<String>>>) {
        let mut links = Vec::new();
        let mut shards = Vec::new();
        for (id, &answer) in answers.iter().enumerate() {
            let (tx, rx) = unbounded();
            links.push(ShardLink::new(tx, Arc::new(Doorbell::new(None))));
            shards.push(std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Ok(msg) = rx.recv() {
                    let reply = |ack: &crossbeam_channel::Sender<SwapAck>, ok: bool| {
                        let result = if ok { Ok(()) } else { Err("cannot".into()) };
                        let _ = ack.send(SwapAck { shard: id, result });
                    };
                    match msg {
                        Control::Prepare {
                            generation, ack, ..
                        } => {
                            seen.push(format!("prepare {generation}"));
                            if answer != Answer::Never {
                                reply(&ack, answer == Answer::Ok);
                            }
                        }
                        Control::Commit { generation, ack } => {
                            seen.push(format!("commit {generation}"));
                            reply(&ack, true);
                        }
                        Control::Abort { generation } => seen.push(format!("abort {generation}")),
                        _ => seen.push("other".into()),
                    }
                }
                seen
            }));
        }
        let mut plane = Plane::new(Arc::new(built()), links);
        Arc::get_mut(&mut plane).expect("fresh plane").prepare_wait = wait;
        (plane, shards)
    }

    fn finish(plane: Arc<Plane>, shards: Vec<JoinHandle<Vec<String>>>) -> Vec<Vec<String>> {
        drop(plane); // drops the links: each shard thread ends
        shards.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn a_shard_that_never_prepares_aborts_the_swap_on_every_shard() {
        let wait = Duration::from_millis(200);
        let (plane, shards) = plane(&[Answer::Ok, Answer::Never], wait);
        let before = plane.config();
        let t0 = Instant::now();
        let err = plane.apply(built()).unwrap_err();
        assert!(t0.elapsed() >= wait, "gave up early: {:?}", t0.elapsed());
        assert!(err.contains("generation 2 aborted"), "{err}");
        assert!(err.contains("shard(s) [1] did not answer"), "{err}");
        assert_eq!(plane.generation(), 1);
        assert!(Arc::ptr_eq(&plane.config(), &before), "config replaced");
        let info = plane.info();
        assert_eq!((info.reloads_ok, info.reloads_failed), (0, 1));
        // Nothing advanced: the next attempt is generation 2 again, and the silent shard fails
        // it too. No shard is ever told to commit.
        assert!(plane.apply(built()).is_err());
        assert_eq!(plane.info().reloads_failed, 2);
        let seen = finish(plane, shards);
        for s in &seen {
            assert_eq!(s, &["prepare 2", "abort 2", "prepare 2", "abort 2"]);
        }
    }

    #[test]
    fn a_shard_that_fails_to_prepare_aborts_without_waiting() {
        let (plane, shards) = plane(&[Answer::Fail, Answer::Ok], Duration::from_secs(30));
        let t0 = Instant::now();
        let err = plane.apply_route(built(), 0).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(err.contains("shard 0: cannot"), "{err}");
        assert_eq!(plane.generation(), 1);
        assert_eq!(plane.info().reloads_failed, 1);
        for s in finish(plane, shards) {
            assert_eq!(s, ["prepare 2", "abort 2"]);
        }
    }

    #[test]
    fn every_shard_prepared_commits() {
        let (plane, shards) = plane(&[Answer::Ok, Answer::Ok], Duration::from_secs(30));
        let (g, _) = plane.apply(built()).unwrap();
        assert_eq!((g, plane.generation()), (2, 2));
        let (g, _) = plane.apply(built()).unwrap();
        assert_eq!(g, 3);
        let info = plane.info();
        assert_eq!((info.reloads_ok, info.reloads_failed), (2, 0));
        for s in finish(plane, shards) {
            assert_eq!(s, ["prepare 2", "commit 2", "prepare 3", "commit 3"]);
        }
    }
}
