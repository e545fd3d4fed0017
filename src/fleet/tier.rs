//! The node's tier thread: the shared cache tier (Redis or memcached) behind proxy-cache `l2`.
//! It answers shards' lookups as cache-lane mail, writes what they stored, applies purges to the
//! tier and (Redis) publishes them to the other nodes, whose tier threads pass them to their
//! shards. Runs its own current-thread tokio runtime; must never block a shard.
//!
//! Every call is bounded by the cache's `l2.timeout`; a failure or timeout marks the server down
//! (one log line, a metric) and drops its connection. While it is down, lookups are answered at
//! once as misses and writes are skipped; one probe per backoff period (50 ms doubling to 2 s)
//! tries it again, so a down tier costs at most one timeout per backoff period.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::tier_redis::Namespaces;
use super::{memcached, tier_redis};
use crate::cache::peer::{Answer, Mail};
use crate::cache::tier::{self, Backend, TierConf, TierReq};
use crate::cache::{now_ms, Target};
use crate::metrics::tier::TIER;
use crate::runtime::TierPorts;
use crate::util::mesh::Inlet;

pub use super::tier_redis::{parse_purge, purge_message, PURGE_CHANNEL};
use super::tier_redis::{within, BACKOFF_MAX, BACKOFF_MIN};

/// Starts the tier thread; it sleeps on its queues until a cache with `l2` is used.
pub fn start(ports: TierPorts) -> Result<(), String> {
    super::on_runtime(
        "ringway-tier",
        "cache tier: cannot start its runtime; l2 lookups are misses",
        move || run(ports),
    )
}

/// One tier server (backend and address) and its health.
struct Server {
    backend: Backend,
    addr: String,
    conn: RefCell<Option<Conn>>,
    up: Cell<Option<bool>>,
    backoff: Cell<Duration>,
    next_try: Cell<Instant>,
    probing: Cell<bool>,
}

#[derive(Clone)]
enum Conn {
    Redis(redis::aio::MultiplexedConnection),
    Memcached(Rc<memcached::Pool>),
}

struct Tier {
    mail: Inlet<Mail>,
    servers: RefCell<HashMap<(Backend, String), Rc<Server>>>,
    /// This node's name in published purges (its own are not applied twice).
    node: String,
    /// The cache namespaces seen using each Redis address (dropped whole after a purge gap).
    namespaces: Namespaces,
}

async fn run(mut ports: TierPorts) {
    let t = Rc::new(Tier {
        mail: ports.mail.clone(),
        servers: RefCell::default(),
        namespaces: Namespaces::default(),
        node: format!(
            "{:016x}",
            xxh3_64(
                &[
                    std::process::id().to_le_bytes(),
                    (now_ms() as u32).to_le_bytes()
                ]
                .concat()
            )
        ),
    });
    loop {
        let req = tokio::select! {
            r = ports.asks.recv() => r,
            r = ports.puts.recv() => r,
        };
        let Some(req) = req else {
            return; // the shards are gone
        };
        let t = t.clone();
        tokio::task::spawn_local(async move { t.handle(req).await });
    }
}

impl Tier {
    fn server(self: &Rc<Self>, conf: &TierConf) -> Rc<Server> {
        if conf.backend == Backend::Redis {
            let mut n = self.namespaces.borrow_mut();
            let set = n.entry(conf.addr.clone()).or_default();
            if !set.contains(&conf.ns) {
                set.insert(conf.ns.clone());
            }
        }
        let k = (conf.backend, conf.addr.clone());
        if let Some(s) = self.servers.borrow().get(&k) {
            return s.clone();
        }
        let s = Rc::new(Server {
            backend: conf.backend,
            addr: conf.addr.clone(),
            conn: RefCell::new(None),
            up: Cell::new(None),
            backoff: Cell::new(BACKOFF_MIN),
            next_try: Cell::new(Instant::now()),
            probing: Cell::new(false),
        });
        self.servers.borrow_mut().insert(k, s.clone());
        if conf.backend == Backend::Redis {
            let hearer = tier_redis::Hearer {
                mail: self.mail.clone(),
                node: self.node.clone(),
                namespaces: self.namespaces.clone(),
            };
            tokio::task::spawn_local(tier_redis::listen(hearer, conf.addr.clone(), conf.timeout));
        }
        s
    }

    async fn handle(self: Rc<Self>, req: TierReq) {
        match req {
            TierReq::Get {
                conf,
                key,
                shard,
                id,
            } => {
                TIER.lookups.fetch_add(1, Relaxed);
                let variants: Vec<_> = self
                    .get(&conf, &key)
                    .await
                    .into_iter()
                    .map(Arc::new)
                    .collect();
                if !variants.is_empty() {
                    TIER.hits.fetch_add(1, Relaxed);
                }
                let answer = Answer {
                    known: true,
                    variants,
                    ..Answer::default()
                };
                self.mail.send(shard, Mail::Answer { id, answer });
            }
            TierReq::Put { conf, key, entry } => {
                let Some(ms) = tier::keep_ms(&entry, now_ms(), conf.ttl_cap) else {
                    return;
                };
                let srv = self.server(&conf);
                let Some(conn) = connection(&srv, conf.timeout).await else {
                    return;
                };
                let blob = tier::encode(&key, &entry);
                let r = match &conn {
                    Conn::Redis(c) => {
                        let mut c = c.clone();
                        let put =
                            tier_redis::put(&mut c, &conf.ns, &key, &entry, blob, ms, conf.ttl_cap);
                        within(conf.timeout, put).await
                    }
                    Conn::Memcached(pool) => {
                        let k = memcached::key(xxh3_64(conf.ns.as_bytes()), &key);
                        pool.set(&k, &blob, ms.div_ceil(1000).min(30 * 86400), conf.timeout)
                            .await
                    }
                };
                match r {
                    Ok(()) => {
                        TIER.writes.fetch_add(1, Relaxed);
                        recovered(&srv);
                    }
                    Err(e) => {
                        TIER.write_errors.fetch_add(1, Relaxed);
                        failed(&srv, &e);
                    }
                }
            }
            TierReq::Purge { conf, target } => self.purge(&conf, &target).await,
        }
    }

    /// The tier's entries for `key` (Redis: every variant; memcached: the last one written), if
    /// it answers in time with ones that decode.
    async fn get(self: &Rc<Self>, conf: &TierConf, key: &[u8]) -> Vec<crate::cache::Entry> {
        let srv = self.server(conf);
        let Some(conn) = connection(&srv, conf.timeout).await else {
            TIER.errors.fetch_add(1, Relaxed);
            return Vec::new();
        };
        let max = conf.max_object_bytes + key.len() + 64 * 1024;
        let r = match &conn {
            Conn::Redis(c) => {
                let mut c = c.clone();
                within(conf.timeout, tier_redis::lookup(&mut c, &conf.ns, key)).await
            }
            Conn::Memcached(pool) => {
                let k = memcached::key(xxh3_64(conf.ns.as_bytes()), key);
                pool.get(&k, max, conf.timeout)
                    .await
                    .map(|v| v.into_iter().collect())
            }
        };
        match r {
            Ok(blobs) => {
                recovered(&srv);
                blobs
                    .into_iter()
                    // Larger than any entry this cache writes: not one of ours.
                    .filter(|v| v.len() <= max)
                    .filter_map(|v| tier::decode(key, Bytes::from(v)))
                    .collect()
            }
            Err(e) => {
                TIER.errors.fetch_add(1, Relaxed);
                failed(&srv, &e);
                Vec::new()
            }
        }
    }

    /// Removes `target` from the tier and tells the other nodes (Redis: one PUBLISH).
    async fn purge(self: &Rc<Self>, conf: &TierConf, target: &Target) {
        let srv = self.server(conf);
        let Some(conn) = connection(&srv, conf.timeout).await else {
            log::warn!(
                "cache tier: purge not applied to {} {} (unreachable)",
                name(conf.backend),
                conf.addr
            );
            return;
        };
        let r = match &conn {
            Conn::Redis(c) => {
                let mut c = c.clone();
                let msg = purge_message(&self.node, &conf.ns, target);
                // Purges may walk the keyspace (prefixes): allowed ten timeouts.
                within(
                    conf.timeout * 10,
                    tier_redis::purge(&mut c, &conf.ns, target, msg),
                )
                .await
            }
            Conn::Memcached(pool) => match target {
                Target::Key(k) => {
                    let k = memcached::key(xxh3_64(conf.ns.as_bytes()), k);
                    pool.delete(&k, conf.timeout).await
                }
                _ => {
                    log::warn!("cache tier: memcached cannot list keys: prefix and tag purges reach this node only; its tier entries expire by l2.ttl");
                    Ok(())
                }
            },
        };
        match r {
            Ok(()) => {
                TIER.purges_sent.fetch_add(1, Relaxed);
                recovered(&srv);
            }
            Err(e) => {
                log::warn!(
                    "cache tier: purge failed on {} {} ({e})",
                    name(conf.backend),
                    conf.addr
                );
                failed(&srv, &e);
            }
        }
    }
}

fn name(b: Backend) -> &'static str {
    match b {
        Backend::Redis => "redis",
        Backend::Memcached => "memcached",
    }
}

/// The server's connection: the live one, or a new one if the backoff allows and no other probe
/// is under way; `None` means "down, do not wait".
async fn connection(srv: &Rc<Server>, timeout: Duration) -> Option<Conn> {
    if let Some(c) = srv.conn.borrow().clone() {
        return Some(c);
    }
    if srv.probing.get() || Instant::now() < srv.next_try.get() {
        return None;
    }
    srv.probing.set(true);
    let r = match srv.backend {
        Backend::Redis => within(timeout, async {
            let client = redis::Client::open(format!("redis://{}/", srv.addr))?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
        })
        .await
        .map(Conn::Redis),
        Backend::Memcached => {
            let pool = Rc::new(memcached::Pool::new(&srv.addr));
            pool.connect(timeout).await.map(|()| Conn::Memcached(pool))
        }
    };
    srv.probing.set(false);
    match r {
        Ok(c) => {
            srv.conn.replace(Some(c.clone()));
            Some(c)
        }
        Err(e) => {
            failed(srv, &e);
            None
        }
    }
}

fn failed(srv: &Server, why: &str) {
    srv.conn.replace(None);
    srv.next_try.set(Instant::now() + srv.backoff.get());
    srv.backoff.set((srv.backoff.get() * 2).min(BACKOFF_MAX));
    if srv.up.get() == Some(false) {
        return;
    }
    srv.up.set(Some(false));
    TIER.changes.fetch_add(1, Relaxed);
    TIER.state.store(2, Relaxed);
    log::warn!(
        "cache tier: {} {} unreachable ({why}); l2 lookups are misses and writes are skipped, retrying with backoff",
        name(srv.backend),
        srv.addr
    );
}

fn recovered(srv: &Server) {
    srv.backoff.set(BACKOFF_MIN);
    if srv.up.get() == Some(true) {
        return;
    }
    if srv.up.get() == Some(false) {
        TIER.changes.fetch_add(1, Relaxed);
        log::info!(
            "cache tier: {} {} reachable again",
            name(srv.backend),
            srv.addr
        );
    } else {
        log::info!("cache tier: {} {} reachable", name(srv.backend), srv.addr);
    }
    srv.up.set(Some(true));
    TIER.state.store(1, Relaxed);
}
