//! The node's fleet thread: cluster-wide limits through Redis (the shared cache tier's thread is
//! `tier.rs`, started the same way by `on_runtime`). It hears the shards' limit reports,
//! exchanges the node's counts with each store every `sync_interval` and sends the shards their
//! grants. Runs its own current-thread tokio runtime; must never block a shard
//! (it reaches them only through the grant lane) and never runs on a shard's thread.
//!
//! A store that fails (refused, timed out, partitioned) is marked down: one log line, a metric,
//! and a grant carrying `on_redis_error`'s mode to every shard; reconnects back off from 50 ms
//! to 1 s. The first exchange after it returns pushes the node's counts again, so every node
//! sees them within two intervals.

pub mod memcached;
pub mod store;
pub mod tier;
pub mod tier_redis;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::limit::fleet::{Mode, OnError, Store};
use crate::limit::node::NodeLimiter;
use crate::metrics::fleet::{FLEET, STATE_DOWN, STATE_NONE, STATE_UP};
// One reconnect policy for a node's limit stores, whether the batched exchange or a shard's
// exact-mode client finds them down.
use crate::net::redis::{BACKOFF_MAX, BACKOFF_MIN};
use crate::runtime::FleetPorts;
use store::{Batch, Conn};

/// A limiter set that stopped reporting this long ago is forgotten (a reload replaced it, or
/// it has no traffic; it is rebuilt from the next report).
const FORGET: Duration = Duration::from_secs(60);

/// Starts the fleet thread. It idles (a wake-up every 100 ms) until a cluster-wide limiter reports.
pub fn start(ports: FleetPorts) -> Result<(), String> {
    on_runtime(
        "ringway-fleet",
        "fleet: cannot start its runtime; cluster-wide limits stay node-local",
        move || Fleet::new(ports).run(),
    )
}

/// Starts thread `name` running `task` on its own current-thread tokio runtime (in a `LocalSet`,
/// so its tasks may share `Rc`s); `fails` is logged if the runtime cannot be built.
pub(crate) fn on_runtime<F, T>(name: &str, fails: &'static str, task: T) -> Result<(), String>
where
    T: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("{fails} ({e})");
                    return;
                }
            };
            tokio::task::LocalSet::new().block_on(&rt, task());
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

/// One store's connection and health.
struct StoreState {
    conn: Option<Conn>,
    /// None until the first exchange settles it.
    up: Option<bool>,
    backoff: Duration,
    next_try: Instant,
    next_sync: Instant,
}

struct Fleet {
    ports: FleetPorts,
    /// This node's name in the stores' hashes.
    node: String,
    limiters: HashMap<(Instant, u32), NodeLimiter>,
    stores: HashMap<Store, StoreState>,
}

impl Fleet {
    fn new(ports: FleetPorts) -> Fleet {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(crate::limit::fleet::wall_ms_now());
        Fleet {
            ports,
            node: format!("{:016x}", h.finish()),
            limiters: HashMap::new(),
            stores: HashMap::new(),
        }
    }

    async fn run(mut self) {
        loop {
            let now = Instant::now();
            while let Ok(u) = self.ports.uplinks.try_recv() {
                let id = (u.set, u.limiter);
                if !self.limiters.contains_key(&id) {
                    self.adopt(&u, now);
                }
                if let Some(l) = self.limiters.get_mut(&id) {
                    l.absorb(&u, now);
                }
            }
            self.limiters
                .retain(|_, l| now.duration_since(l.heard) < FORGET);
            if self.limiters.is_empty() {
                self.stores.clear();
                publish_state(&self.stores);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let mut wake = now + Duration::from_millis(100);
            let stores: Vec<Store> = {
                let mut v: Vec<Store> = self
                    .limiters
                    .values()
                    .map(|l| l.spec.store.clone())
                    .collect();
                v.dedup();
                v
            };
            for s in stores {
                let interval = self
                    .limiters
                    .values()
                    .filter(|l| l.spec.store == s)
                    .map(|l| l.spec.interval)
                    .min()
                    .unwrap_or(Duration::from_millis(50));
                let st = self.stores.entry(s.clone()).or_insert(StoreState {
                    conn: None,
                    up: None,
                    backoff: BACKOFF_MIN,
                    next_try: now,
                    next_sync: now,
                });
                if now >= st.next_sync {
                    st.next_sync = now + interval;
                    self.sync(&s).await;
                }
                if let Some(st) = self.stores.get(&s) {
                    wake = wake.min(st.next_sync);
                }
            }
            self.stores
                .retain(|s, _| self.limiters.values().any(|l| l.spec.store == *s));
            publish_state(&self.stores);
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
    }

    /// A limiter of a set not seen before (start-up, or a reload): it takes over what the
    /// node knew of the same limit in the previous set (how many nodes share it), and its
    /// shards hear the opening fraction for new keys at once rather than after an exchange.
    fn adopt(&mut self, u: &crate::limit::fleet::Uplink, now: Instant) {
        let mut l = NodeLimiter::new(u, now);
        let known = self
            .limiters
            .values()
            .filter(|o| o.spec.ns == u.spec.ns)
            .map(|o| o.nodes())
            .max();
        if let Some(n) = known {
            l.set_nodes(n);
            let g = l.grant(now, Mode::Shared, Vec::new());
            self.ports.grants.send_all(|| g.clone());
        }
        self.limiters.insert((u.set, u.limiter), l);
    }

    /// One exchange with store `s` for all its limiters (connecting first if need be).
    async fn sync(&mut self, s: &Store) {
        let now = Instant::now();
        let timeout = self
            .limiters
            .values()
            .filter(|l| l.spec.store == *s)
            .map(|l| l.spec.timeout)
            .max()
            .unwrap_or(Duration::from_millis(100));
        let Some(st) = self.stores.get_mut(s) else {
            return;
        };
        if st.conn.is_none() {
            if now < st.next_try {
                return;
            }
            FLEET.commands.fetch_add(1, Relaxed);
            match store::connect(s, timeout).await {
                Ok(c) => st.conn = Some(c),
                Err(e) => {
                    self.failed(s, &e);
                    return;
                }
            }
        }
        let keys: Vec<(Instant, u32)> = self
            .limiters
            .iter()
            .filter(|(_, l)| l.spec.store == *s)
            .map(|(k, _)| *k)
            .collect();
        let mut batches = Vec::with_capacity(keys.len());
        for k in &keys {
            let Some(l) = self.limiters.get_mut(k) else {
                continue;
            };
            let interval_ms = l.spec.interval.as_millis() as u64;
            let stale_ms = (10 * interval_ms).max(1000);
            batches.push(Batch {
                ns: l.spec.ns.clone(),
                kind: l.spec.kind.clone(),
                node: self.node.clone(),
                now_ms: l.wall_now(now),
                window: l.window(now),
                stale_ms,
                // Refreshed well before the store counts the node silent.
                asks: l.asks(now, Duration::from_millis(stale_ms / 3)),
            });
        }
        let n_keys: usize = batches.iter().map(|b| b.asks.len()).sum();
        if n_keys == 0 {
            return;
        }
        let Some(conn) = self.stores.get(s).and_then(|st| st.conn.clone()) else {
            return;
        };
        let began = Instant::now();
        match store::exchange(&conn, &batches, timeout).await {
            Ok(answers) => {
                let us = began.elapsed().as_micros() as u64;
                FLEET.syncs.fetch_add(1, Relaxed);
                FLEET.latency_sum_us.fetch_add(us, Relaxed);
                FLEET.latency_last_us.store(us, Relaxed);
                FLEET.keys.store(n_keys as u64, Relaxed);
                self.recovered(s);
                let after = Instant::now();
                for ((k, b), a) in keys.iter().zip(&batches).zip(answers) {
                    if let Some(l) = self.limiters.get_mut(k) {
                        let g = l.settle(after, &b.asks, &a);
                        self.ports.grants.send_all(|| g.clone());
                    }
                }
            }
            Err(e) => self.failed(s, &e),
        }
    }

    /// The store failed: drop the connection, back off, and on the transition tell the shards
    /// (their limiters fall back per `on_redis_error`) and the log, once.
    fn failed(&mut self, s: &Store, why: &str) {
        FLEET.errors.fetch_add(1, Relaxed);
        let Some(st) = self.stores.get_mut(s) else {
            return;
        };
        st.conn = None;
        st.next_try = Instant::now() + st.backoff;
        st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
        if st.up == Some(false) {
            return;
        }
        st.up = Some(false);
        FLEET.changes.fetch_add(1, Relaxed);
        log::warn!(
            "fleet: store {} unreachable ({why}); cluster-wide limits fall back per on_redis_error, retrying with backoff",
            s.describe()
        );
        let now = Instant::now();
        for l in self.limiters.values().filter(|l| l.spec.store == *s) {
            let mode = match l.spec.on_error {
                OnError::Local => Mode::Shared,
                OnError::Allow => Mode::Allow,
                OnError::Deny => Mode::Deny,
            };
            let mut g = l.grant(now, mode, Vec::new());
            g.default_frac = l.fallback_frac();
            self.ports.grants.send_all(|| g.clone());
        }
    }

    fn recovered(&mut self, s: &Store) {
        let Some(st) = self.stores.get_mut(s) else {
            return;
        };
        st.backoff = BACKOFF_MIN;
        if st.up == Some(true) {
            return;
        }
        if st.up == Some(false) {
            FLEET.changes.fetch_add(1, Relaxed);
            log::info!(
                "fleet: store {} reachable again; cluster-wide limits shared",
                s.describe()
            );
        } else {
            log::info!(
                "fleet: store {} reachable; cluster-wide limits shared",
                s.describe()
            );
        }
        st.up = Some(true);
    }
}

fn publish_state(stores: &HashMap<Store, StoreState>) {
    let state = if stores.is_empty() {
        STATE_NONE
    } else if stores.values().any(|s| s.up == Some(false)) {
        STATE_DOWN
    } else {
        STATE_UP
    };
    FLEET.state.store(state, Relaxed);
}
