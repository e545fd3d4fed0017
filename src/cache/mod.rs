//! The proxy cache's shard-side machinery: per-shard instances (store, in-flight fetches), purges
//! between shards, the per-request `CacheCx` carried in `Ctx`, the body tee and the expiry sweep.
//!
//! Sharding: each shard owns its store in a `RefCell` (no lock, no shared atomic on the hit
//! path); a cache's node-wide `max_bytes` is split evenly, each shard holding at most
//! `max_bytes / shards`, so the node total can never exceed it. Purges travel over the node
//! mesh's purge lane (one for every cache, addressed by the cache's identity); a send wakes the
//! receiving shard, which delivers them at once to its `Caches` (the shard's instance registry,
//! kept across generations and handed to the plugins that build instances, not a thread-local).

pub mod admin;
pub mod entry;
pub mod rules;
pub mod sketch;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

pub use entry::Entry;
pub use store::{Store, StoreStats};

use crate::util::mesh::Lane;

/// One part of a cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyPart {
    Host,
    /// Path and query as the client sent them.
    RequestUri,
    /// Path only.
    Uri,
    Scheme,
    Method,
    Consumer,
    Header(String),
    Cookie(String),
    Arg(String),
    Literal(String),
}

/// A route's validated proxy-cache settings (see README "Cache").
#[derive(Debug, Clone)]
pub struct CacheConf {
    pub key: Vec<CacheKeyPart>,
    pub get: bool,
    pub head: bool,
    pub statuses: Vec<u16>,
    pub ttl: Option<u64>,
    pub max_body_bytes: usize,
    pub max_bytes: usize,
    pub bypass: Vec<CacheKeyPart>,
    pub no_cache: Vec<CacheKeyPart>,
    pub hide_cache_headers: bool,
    pub status_header: String,
    pub honor_client_no_cache: bool,
    pub set_cookie: bool,
    pub lock_timeout: Duration,
    pub purge_allow: Vec<ipnet::IpNet>,
    pub admin_key: Option<String>,
    pub admission: bool,
}

impl CacheConf {
    pub fn policy(&self) -> entry::Policy<'_> {
        entry::Policy {
            statuses: &self.statuses,
            default_ttl: self.ttl,
            set_cookie: self.set_cookie,
            status_header: &self.status_header,
        }
    }

    pub fn may_purge(&self, ip: IpAddr, key: Option<&[u8]>) -> bool {
        self.purge_allow.iter().any(|n| n.contains(&ip))
            || self
                .admin_key
                .as_deref()
                .zip(key)
                .is_some_and(|(k, given)| k.as_bytes() == given)
    }
}

/// What a purge removes.
#[derive(Debug, Clone)]
pub enum Target {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
    Tag(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct PurgeMsg {
    /// The cache it is for (`Instance::key`): the same on every shard.
    pub cache: u64,
    pub target: Target,
    /// Where to report what was removed; `None` for fire-and-forget invalidations.
    pub ack: Option<Sender<Ack>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub shard: usize,
    pub removed: usize,
    pub stats: StoreStats,
}

/// One cache (one proxy-cache plugin table) on one shard.
pub struct Instance {
    pub conf: std::sync::Arc<CacheConf>,
    pub shard: usize,
    pub store: RefCell<Store>,
    /// Keys being fetched from the origin on this shard, for request coalescing.
    pub inflight: RefCell<HashMap<Vec<u8>, Rc<Gate>>>,
    /// Names this cache on every shard (a hash of its identity, see `adopt`): purges carry it.
    pub key: u64,
    /// This shard's end of the purge lane.
    pub lane: Rc<Lane<PurgeMsg>>,
}

impl Instance {
    pub fn purge_local(&self, t: &Target) -> usize {
        let mut s = self.store.borrow_mut();
        match t {
            Target::Key(k) => s.remove(k),
            Target::Prefix(p) => s.remove_where(Some(p), None),
            Target::Tag(g) => s.remove_where(None, Some(g)),
        }
    }

    /// Sends `t` to this cache on every other shard (each is woken to purge it at once);
    /// returns how many were sent, which is how many acks to expect when `ack` is given.
    pub fn broadcast(&self, t: &Target, ack: Option<&Sender<Ack>>) -> usize {
        self.lane.broadcast(PurgeMsg {
            cache: self.key,
            target: t.clone(),
            ack: ack.cloned(),
        })
    }
}

/// This shard's cache instances, kept across config generations: what purges from peers and the
/// admin API reach, what the expiry sweep walks, and what a reload adopts instead of rebuilding.
#[derive(Default)]
pub struct Caches {
    instances: RefCell<Vec<Weak<Instance>>>,
    /// The instance built for each cache identity on this shard.
    adopted: RefCell<HashMap<String, Weak<Instance>>>,
}

/// The key purges name a cache with: the same for the same identity on every shard.
pub fn key_of(ident: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(ident.as_bytes())
}

impl Caches {
    /// The cache instance for `ident` (plugin path, settings, shard count): the live one with
    /// that identity on this shard if there is one, so a reload that leaves a cache's settings
    /// alone keeps its contents and in-flight fetches (also across a swap that was prepared and
    /// then aborted); otherwise a fresh one from `build`. Any live instance will do: purges
    /// reach every live instance of a cache on every shard (they are addressed by identity), so
    /// none has missed one, and shards need not make the same choice.
    pub fn adopt(&self, ident: &str, build: impl FnOnce() -> Rc<Instance>) -> Rc<Instance> {
        let mut a = self.adopted.borrow_mut();
        let found = a.get(ident).and_then(Weak::upgrade);
        let inst = found.unwrap_or_else(|| {
            let i = build();
            self.instances.borrow_mut().push(Rc::downgrade(&i));
            i
        });
        a.retain(|_, w| w.strong_count() > 0);
        a.insert(ident.to_string(), Rc::downgrade(&inst));
        inst
    }

    /// Every live instance (current and still-draining generations).
    pub fn live(&self) -> Vec<Rc<Instance>> {
        self.instances
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Carries out the purges other shards sent this one (called whenever the shard wakes):
    /// each removes matches from every live instance of its cache here and, if asked, reports.
    pub fn deliver(&self, lane: &Lane<PurgeMsg>) {
        while let Some(m) = lane.try_recv() {
            let mut removed = 0;
            let mut stats = StoreStats::default();
            for inst in self.live().into_iter().filter(|i| i.key == m.cache) {
                removed += inst.purge_local(&m.target);
                stats = inst.store.borrow().stats();
            }
            if let Some(a) = m.ack {
                // Answered even when this shard has no such cache, so the sender need not wait.
                let _ = a.send(Ack {
                    shard: lane.id(),
                    removed,
                    stats,
                });
            }
        }
    }

    /// The expiry sweep (about once a second): removes dead entries and forgets instances of
    /// retired generations once their last request is done.
    pub fn sweep(&self) {
        let now = now_ms();
        for inst in self.instances.borrow().iter().filter_map(Weak::upgrade) {
            inst.store.borrow_mut().sweep(now, 4096);
        }
        self.instances.borrow_mut().retain(|w| w.strong_count() > 0);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A one-shot signal on one shard: waiters for a coalesced fetch park here.
#[derive(Default)]
pub struct Gate {
    open: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Gate {
    pub fn open(&self) {
        self.open.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub fn wait(self: Rc<Self>) -> GateWait {
        GateWait(self)
    }
}

pub struct GateWait(Rc<Gate>);

impl Future for GateWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.open.get() {
            return Poll::Ready(());
        }
        self.0.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// Held by the request fetching a key for everyone on its shard; dropping it (done, failed or
/// cancelled) releases the waiters.
pub struct Leader {
    inst: Rc<Instance>,
    key: Vec<u8>,
    gate: Rc<Gate>,
}

impl Leader {
    /// Becomes the fetcher of `key`, or returns the gate of the fetch already running.
    pub fn claim(inst: &Rc<Instance>, key: &[u8]) -> Result<Leader, Rc<Gate>> {
        let mut m = inst.inflight.borrow_mut();
        if let Some(g) = m.get(key) {
            return Err(g.clone());
        }
        let gate = Rc::new(Gate::default());
        m.insert(key.to_vec(), gate.clone());
        Ok(Leader {
            inst: inst.clone(),
            key: key.to_vec(),
            gate,
        })
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut m = self.inst.inflight.borrow_mut();
        if m.get(&self.key).is_some_and(|g| Rc::ptr_eq(g, &self.gate)) {
            m.remove(&self.key);
        }
        self.gate.open();
    }
}

/// Copies response body bytes into a pending entry while they stream to the client, and gives
/// up (dropping what it had) once they pass the object limit.
#[derive(Debug, Default)]
pub struct Tee {
    pub buf: Vec<u8>,
    pub limit: usize,
    pub over: bool,
    pub done: bool,
}

impl Tee {
    pub fn new(limit: usize, expect: Option<u64>) -> Tee {
        let cap = expect.map_or(0, |n| n.min(limit as u64) as usize);
        Tee {
            buf: Vec::with_capacity(cap),
            limit,
            ..Tee::default()
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.over {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    pub fn finish(&mut self) {
        self.done = true;
    }
}

/// What the lookup decided for this request.
#[derive(Debug, Default)]
pub enum Mode {
    /// The cache is not involved.
    #[default]
    Off,
    /// Lookup skipped (`bypass`, Authorization without a shareable entry, Range on a miss).
    Bypass,
    Miss,
    Hit(Rc<Entry>),
    /// Stale within stale-while-revalidate: serve it, refresh in the background.
    StaleRefresh(Rc<Entry>),
    /// Stale (or no-cache) with a validator: conditional request to the origin.
    Revalidate(Rc<Entry>),
    /// Stale without a validator: full fetch (the entry still serves stale-if-error).
    Expired(Rc<Entry>),
    Purge(Target),
    /// An unsafe method: invalidate the key if the origin answers with success.
    Invalidate,
}

/// The per-request cache state, kept in `Ctx` and reset between requests.
#[derive(Default)]
pub struct CacheCx {
    pub inst: Option<Rc<Instance>>,
    pub key: Vec<u8>,
    pub hash: u64,
    pub mode: Mode,
    /// The response may be stored (method, no_cache conditions, client no-store, no Range).
    pub store: bool,
    /// When the request was looked up (unix ms), the "request_time" of RFC 9111 4.2.3.
    pub req_ms: u64,
    /// The entry being built from the upstream response, waiting for its body.
    pub pending: Option<Entry>,
    pub tee: Option<Tee>,
    pub leader: Option<Leader>,
    /// This exchange is a background refresh (no client to answer).
    pub background: bool,
}

impl CacheCx {
    #[inline]
    pub fn active(&self) -> bool {
        self.inst.is_some()
    }

    pub fn reset(&mut self) {
        if self.inst.is_none() {
            return;
        }
        self.inst = None;
        self.key.clear();
        self.mode = Mode::Off;
        self.store = false;
        self.pending = None;
        self.tee = None;
        self.leader = None;
        self.background = false;
    }

    /// The stale entry this request holds, if any (for stale-if-error).
    pub fn stale(&self) -> Option<&Rc<Entry>> {
        match &self.mode {
            Mode::Revalidate(e) | Mode::Expired(e) | Mode::StaleRefresh(e) => Some(e),
            _ => None,
        }
    }
}

impl std::fmt::Debug for CacheCx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCx")
            .field("active", &self.active())
            .field("mode", &self.mode)
            .field("store", &self.store)
            .finish()
    }
}
