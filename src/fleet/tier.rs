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
use futures_util::StreamExt;
use redis::AsyncCommands;
use xxhash_rust::xxh3::xxh3_64;

use super::memcached;
use crate::cache::peer::{Answer, Mail};
use crate::cache::tier::{self, Backend, TierConf, TierReq};
use crate::cache::{now_ms, Target};
use crate::metrics::tier::TIER;
use crate::runtime::TierPorts;
use crate::util::mesh::Inlet;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The Redis channel purges travel on between nodes.
pub const PURGE_CHANNEL: &str = "ringway:cache:purge";

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
}

async fn run(mut ports: TierPorts) {
    let t = Rc::new(Tier {
        mail: ports.mail.clone(),
        servers: RefCell::default(),
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
            tokio::task::spawn_local(listen(self.clone(), conf.addr.clone(), conf.timeout));
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
                let found = self.get(&conf, &key).await;
                let variants = match found {
                    Some(e) => {
                        TIER.hits.fetch_add(1, Relaxed);
                        vec![Arc::new(e)]
                    }
                    None => Vec::new(),
                };
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
                        let k = redis_key(&conf.ns, &key);
                        let mut p = redis::pipe();
                        p.cmd("SET").arg(&k).arg(blob).arg("PX").arg(ms).ignore();
                        for tag in tags(&entry) {
                            let set = tag_key(&conf.ns, tag);
                            p.cmd("SADD").arg(&set).arg(&k).ignore();
                            p.cmd("PEXPIRE")
                                .arg(&set)
                                .arg(conf.ttl_cap.as_millis() as u64)
                                .ignore();
                        }
                        within(conf.timeout, p.query_async::<()>(&mut c)).await
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

    /// The tier's entry for `key`, if it answers in time with one that decodes.
    async fn get(self: &Rc<Self>, conf: &TierConf, key: &[u8]) -> Option<crate::cache::Entry> {
        let srv = self.server(conf);
        let Some(conn) = connection(&srv, conf.timeout).await else {
            TIER.errors.fetch_add(1, Relaxed);
            return None;
        };
        let max = conf.max_object_bytes + key.len() + 64 * 1024;
        let r = match &conn {
            Conn::Redis(c) => {
                let mut c = c.clone();
                let k = redis_key(&conf.ns, key);
                within(conf.timeout, c.get::<_, Option<Vec<u8>>>(k)).await
            }
            Conn::Memcached(pool) => {
                let k = memcached::key(xxh3_64(conf.ns.as_bytes()), key);
                pool.get(&k, max, conf.timeout).await
            }
        };
        match r {
            Ok(v) => {
                recovered(&srv);
                // Larger than any entry this cache writes: not one of ours.
                let v = v.filter(|v| v.len() <= max)?;
                tier::decode(key, Bytes::from(v))
            }
            Err(e) => {
                TIER.errors.fetch_add(1, Relaxed);
                failed(&srv, &e);
                None
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
                within(conf.timeout * 10, async {
                    let keys = redis_matches(&mut c, &conf.ns, target).await?;
                    let mut p = redis::pipe();
                    for k in &keys {
                        p.cmd("DEL").arg(k).ignore();
                    }
                    if let Target::Tag(t) = target {
                        p.cmd("DEL").arg(tag_key(&conf.ns, t)).ignore();
                    }
                    p.cmd("PUBLISH").arg(PURGE_CHANNEL).arg(msg).ignore();
                    p.query_async::<()>(&mut c).await
                })
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

async fn within<T, E: std::fmt::Display>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {d:?}")),
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

/// Where a cache's entry for `key` lives in Redis: the namespace hashed, then the key as it is.
fn redis_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut k = format!("ringway:c:{:016x}:", xxh3_64(ns.as_bytes())).into_bytes();
    k.extend_from_slice(key);
    k
}

/// The set of keys stored with Surrogate-Key `tag`.
fn tag_key(ns: &str, tag: &[u8]) -> Vec<u8> {
    let mut k = format!("ringway:t:{:016x}:", xxh3_64(ns.as_bytes())).into_bytes();
    k.extend_from_slice(tag);
    k
}

fn tags(e: &crate::cache::Entry) -> impl Iterator<Item = &[u8]> {
    e.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"surrogate-key"))
        .flat_map(|(_, v)| v.split(|&b| b == b' ').filter(|t| !t.is_empty()))
}

/// The Redis keys `target` names: the key itself, those under a prefix (SCAN), a tag's set.
async fn redis_matches(
    c: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    target: &Target,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    match target {
        Target::Key(k) => Ok(vec![redis_key(ns, k)]),
        Target::Tag(t) => c.smembers(tag_key(ns, t)).await,
        Target::Prefix(p) => {
            let mut pattern = Vec::new();
            for &b in &redis_key(ns, p) {
                if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                    pattern.push(b'\\');
                }
                pattern.push(b);
            }
            pattern.push(b'*');
            let mut out = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(c)
                    .await?;
                out.extend(keys);
                if next == 0 {
                    return Ok(out);
                }
                cursor = next;
            }
        }
    }
}

/// A purge as published: `node \n ns \n kind target` (kind K, P or T).
pub fn purge_message(node: &str, ns: &str, t: &Target) -> Vec<u8> {
    let (kind, body) = match t {
        Target::Key(k) => (b'K', k),
        Target::Prefix(p) => (b'P', p),
        Target::Tag(g) => (b'T', g),
    };
    let mut m = format!("{node}\n{ns}\n").into_bytes();
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// Reads a published purge (any bytes: another node's, or anything on the channel); `None`
/// unless it is one. Never panics.
pub fn parse_purge(m: &[u8]) -> Option<(&[u8], &str, Target)> {
    let mut it = m.splitn(3, |&b| b == b'\n');
    let node = it.next()?;
    let ns = std::str::from_utf8(it.next()?).ok()?;
    let rest = it.next()?;
    let (&kind, body) = rest.split_first()?;
    let body = body.to_vec();
    let t = match kind {
        b'K' => Target::Key(body),
        b'P' => Target::Prefix(body),
        b'T' => Target::Tag(body),
        _ => return None,
    };
    Some((node, ns, t))
}

/// Hears purges published by other nodes on `addr` and hands them to every shard; reconnects
/// with backoff. A purge published while this node was not subscribed is missed (logged).
async fn listen(t: Rc<Tier>, addr: String, timeout: Duration) {
    let mut backoff = BACKOFF_MIN;
    let mut lost = false;
    loop {
        let sub = within(timeout * 4, async {
            let client = redis::Client::open(format!("redis://{addr}/"))?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(PURGE_CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        let ps = match sub {
            Ok(ps) => ps,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if lost {
            log::warn!("cache tier: purge channel on redis {addr} back; purges sent while it was lost were missed here");
        }
        backoff = BACKOFF_MIN;
        let mut stream = ps.into_on_message();
        while let Some(msg) = stream.next().await {
            let Some((node, ns, target)) = parse_purge(msg.get_payload_bytes()) else {
                continue;
            };
            if node == t.node.as_bytes() {
                continue;
            }
            TIER.purges_heard.fetch_add(1, Relaxed);
            let ns: Arc<str> = ns.into();
            t.mail.send_all(|| Mail::TierPurge {
                ns: ns.clone(),
                target: target.clone(),
            });
        }
        lost = true;
        log::warn!("cache tier: purge channel on redis {addr} lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_messages_round_trip() {
        let m = purge_message("n1", "route \"a\"", &Target::Prefix(b"h\x1f/x\ny".to_vec()));
        let (node, ns, t) = parse_purge(&m).expect("parses");
        assert_eq!((node, ns), (&b"n1"[..], "route \"a\""));
        assert!(matches!(t, Target::Prefix(p) if p == b"h\x1f/x\ny"));
        assert!(parse_purge(b"n1\nns\nXabc").is_none());
        assert!(parse_purge(b"n1\nns\n").is_none());
        assert!(parse_purge(b"").is_none());
    }
}
