//! The proxy cache's shard-side machinery: per-shard instances (store, in-flight fetches), purges
//! between shards, the per-request `CacheCx` carried in `Ctx`, the body tee and the expiry sweep.
//!
//! Sharding by key (see `peer.rs` for the protocol): a cache is one store per node, split by a
//! hash of the key over the shards. Each key has one owner shard whose store (a `RefCell`, no
//! lock) alone holds it and whose in-flight table alone coalesces its fetches; other shards ask
//! the owner over the node mesh's cache lane and serve its answer (refcounted entries, the body
//! never copied). A cache's node-wide `max_bytes` is split evenly, each shard's store holding at
//! most `max_bytes / shards` of the keys it owns, so the node total never exceeds it and every
//! object is held once. Mail on the lane (asks, answers, puts, purges) names a cache by its
//! identity; a send wakes the receiving shard, which delivers it at once to its `Caches` (the
//! shard's instance registry, kept across generations and handed to the plugins that build
//! instances, not a thread-local). With one shard every key is local: no mail, no wait.

pub mod admin;
pub mod entry;
pub mod invalidate;
pub mod partial;
pub mod peer;
pub mod request;
pub mod rules;
pub mod sketch;
pub mod store;
pub mod tier;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

pub use entry::Entry;
pub use peer::{Flight, Leader, Mail, Peers};
pub use request::Lookup;
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
    /// `mode = "rfc9111"`: a shared cache to the letter (see README "Cache").
    pub rfc: bool,
    /// `targeted_cache_control`, lowercase: fields that replace Cache-Control for this cache
    /// (RFC 9213) and are removed before the response goes to the client.
    pub targeted: Vec<String>,
    /// The shared tier behind the node's store (`l2`).
    pub l2: Option<Arc<tier::TierConf>>,
}

impl CacheConf {
    pub fn policy(&self) -> entry::Policy<'_> {
        entry::Policy {
            statuses: &self.statuses,
            default_ttl: self.ttl,
            set_cookie: self.set_cookie,
            status_header: &self.status_header,
            rfc: self.rfc,
            targeted: &self.targeted,
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
    /// The keys this shard owns (see `peer::owner`).
    pub store: RefCell<Store>,
    /// Fetches from the origin of keys this shard owns, led here or on another shard: one per
    /// key per node.
    pub inflight: RefCell<HashMap<Vec<u8>, Rc<Flight>>>,
    /// The last flight id given out here.
    pub flights: Cell<u64>,
    /// Names this cache on every shard (a hash of its identity, see `adopt`): mail carries it.
    pub key: u64,
    /// This shard's end of the cache lane.
    pub lane: Rc<Lane<Mail>>,
    /// This shard's requests waiting for owners' answers (shared by the shard's caches).
    pub peers: Rc<Peers>,
    /// The shared tier behind this cache (`l2`), if configured and the node has a tier thread.
    pub tier: Option<tier::Tier>,
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

    /// Removes `t` without waiting: a key at its owner (here or by mail), a prefix here and on
    /// every other shard.
    pub fn invalidate(&self, t: &Target) {
        match t {
            Target::Key(k) => self.put(k, xxhash_rust::xxh3::xxh3_64(k), peer::Op::Remove, None),
            t => {
                self.purge_local(t);
                self.broadcast(t, None);
            }
        }
    }

    /// Sends `t` to this cache on every other shard (each is woken to purge it at once);
    /// returns how many were sent, which is how many acks to expect when `ack` is given.
    pub fn broadcast(&self, t: &Target, ack: Option<&Sender<Ack>>) -> usize {
        self.lane.broadcast(Mail::Purge(PurgeMsg {
            cache: self.key,
            target: t.clone(),
            ack: ack.cloned(),
        }))
    }
}

/// This shard's cache instances, kept across config generations: what purges from peers and the
/// admin API reach, what the expiry sweep walks, and what a reload adopts instead of rebuilding.
#[derive(Default)]
pub struct Caches {
    instances: RefCell<Vec<Weak<Instance>>>,
    /// The instance built for each cache identity on this shard.
    adopted: RefCell<HashMap<String, Weak<Instance>>>,
    /// Requests on this shard waiting for answers from owners.
    peers: Rc<Peers>,
    /// The way to the node's tier thread (none on a shard built alone).
    tier: Option<tier::TierLink>,
}

/// The key purges name a cache with: the same for the same identity on every shard.
pub fn key_of(ident: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(ident.as_bytes())
}

impl Caches {
    /// A shard's caches that reach the node's tier thread through `tier`.
    pub fn with_tier(tier: Option<tier::TierLink>) -> Caches {
        Caches {
            tier,
            ..Caches::default()
        }
    }

    /// The tier for a cache with `l2` settings `conf`, if this shard has a tier thread.
    pub fn tier(&self, conf: &Arc<tier::TierConf>) -> Option<tier::Tier> {
        self.tier.as_ref().map(|link| tier::Tier {
            conf: conf.clone(),
            link: link.clone(),
        })
    }

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

    /// What requests waiting for owners' answers register with (instances built here share it).
    pub fn peers(&self) -> Rc<Peers> {
        self.peers.clone()
    }

    /// The live instance named `cache` (any generation's: they share contents, see `adopt`).
    fn find(&self, cache: u64) -> Option<Rc<Instance>> {
        self.instances
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .find(|i| i.key == cache)
    }

    /// Takes in what other shards sent this one (called whenever the shard wakes): purges are
    /// carried out on every live instance of their cache here (and acked if asked), asks about
    /// keys this shard owns are answered, answers go to the requests waiting for them, puts
    /// change the keys this shard owns.
    pub fn deliver(&self, lane: &Lane<Mail>) {
        while let Some(m) = lane.try_recv() {
            match m {
                Mail::Purge(m) => self.purge(lane.id(), m),
                Mail::Ask(a) => {
                    let answer = self.find(a.cache).map(|i| i.answer(&a)).unwrap_or_default();
                    lane.send(a.from, Mail::Answer { id: a.id, answer });
                }
                Mail::Answer { id, answer } => self.peers.fill(id, answer),
                Mail::Put(p) => {
                    if let Some(i) = self.find(p.cache) {
                        i.apply(&p.key, p.hash, p.op, p.flight);
                    }
                }
                // Another node purged a cache of this tier namespace.
                Mail::TierPurge { ns, target } => {
                    for i in self.live() {
                        if i.tier.as_ref().is_some_and(|t| *t.conf.ns == *ns) {
                            i.purge_local(&target);
                        }
                    }
                }
            }
        }
    }

    fn purge(&self, shard: usize, m: PurgeMsg) {
        let mut removed = 0;
        let mut stats = StoreStats::default();
        for inst in self.live().into_iter().filter(|i| i.key == m.cache) {
            removed += inst.purge_local(&m.target);
            stats = inst.store.borrow().stats();
        }
        if let Some(a) = m.ack {
            // Answered even when this shard has no such cache, so the sender need not wait.
            let _ = a.send(Ack {
                shard,
                removed,
                stats,
            });
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

/// Copies response body bytes into a pending entry while they stream to the client, and gives
/// up (dropping what it had) once they pass the object limit. When the body has arrived whole
/// (`finish`, called before its last bytes are written to the client) the entry goes to the
/// key's owner, so a client that saw the whole response finds it stored on any shard.
#[derive(Default)]
pub struct Tee {
    pub buf: Vec<u8>,
    pub limit: usize,
    pub over: bool,
    pub done: bool,
    /// The entry the body completes, and where it goes.
    pub pending: Option<Pending>,
}

/// An entry waiting for its body.
pub struct Pending {
    pub inst: Rc<Instance>,
    pub key: Vec<u8>,
    pub hash: u64,
    pub entry: Entry,
    /// This request's turn at the key's fetch: ended right after the store (dropped with
    /// `Pending`), so the fetch is over at the owner before the client has the last byte and
    /// its next request is not made to wait for a fetch it saw finish.
    pub leader: Option<Leader>,
    /// A 206 kept as a partial entry: how its body combines with what is stored.
    pub merge: Option<partial::Merge>,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("len", &self.buf.len())
            .field("over", &self.over)
            .field("done", &self.done)
            .finish()
    }
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

    /// The body ended cleanly: stores the pending entry (once) if the body fit.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) || self.over {
            return;
        }
        if let Some(p) = self.pending.take() {
            let mut body = std::mem::take(&mut self.buf);
            body.shrink_to_fit();
            let body = bytes::Bytes::from(body);
            let e = match &p.merge {
                Some(m) => match partial::finish(p.entry, body, m) {
                    Some(e) => e,
                    None => return,
                },
                None => Entry { body, ..p.entry },
            };
            let e = Arc::new(e);
            if let (Some(t), None) = (&p.inst.tier, e.partial) {
                // Partial entries stay on the node.
                t.put(&p.key, &e);
            }
            p.inst.put(&p.key, p.hash, peer::Op::Store(e), None);
        }
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
    Hit(Arc<Entry>),
    /// Stale within stale-while-revalidate: serve it, refresh in the background.
    StaleRefresh(Arc<Entry>),
    /// Stale (or no-cache) with a validator: conditional request to the origin.
    Revalidate(Arc<Entry>),
    /// Stale without a validator: full fetch (the entry still serves stale-if-error).
    Expired(Arc<Entry>),
    /// Another shard owns the key: ask it (proxy/cached.rs), then decide as for a local lookup.
    Remote,
    Purge(Target),
    /// An unsafe method: invalidate the key if the origin answers with success.
    Invalidate,
    /// `only-if-cached` and nothing usable stored: answer 504 (RFC 9111 5.2.1.7).
    Unavailable,
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
    pub tee: Option<Tee>,
    pub leader: Option<Leader>,
    /// This exchange is a background refresh (no client to answer).
    pub background: bool,
    /// What the lookup decision depends on besides the entry found.
    pub ask: Lookup,
    /// The partial entry stored for this request's variant (`partial.rs`), never served.
    pub partial: Option<Arc<Entry>>,
}

impl CacheCx {
    /// Decides the mode from the variant found for this request (`contains`: any variant of
    /// the key is stored), the same for a local lookup and an owner's answer.
    pub fn decide(&mut self, found: Option<Arc<Entry>>, contains: bool) {
        let (l, now) = (self.ask, self.req_ms);
        let found = found.filter(|e| !l.authorized || e.auth_ok);
        // A partial entry is never served: a miss that a later range may complete.
        let (found, partial) = match found {
            Some(e) if e.partial.is_some() => (None, Some(e)),
            f => (f, None),
        };
        self.partial = partial;
        self.mode = match found {
            None if (l.ranged && !l.store_partial) || (l.authorized && contains) => Mode::Bypass,
            None => Mode::Miss,
            Some(e) if l.accepts(&e, now) => Mode::Hit(e),
            Some(e) if l.may_refresh_stale() && e.in_swr(now) => Mode::StaleRefresh(e),
            Some(e) if e.has_validator() => Mode::Revalidate(e),
            Some(e) => Mode::Expired(e),
        };
        if l.only_if_cached && !matches!(self.mode, Mode::Hit(_) | Mode::StaleRefresh(_)) {
            self.mode = Mode::Unavailable;
        }
        if l.ranged && !matches!(self.mode, Mode::Hit(_) | Mode::StaleRefresh(_)) {
            // A partial response is neither stored nor coalesced with full fetches.
            self.store = false;
        }
    }
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
        self.tee = None;
        self.leader = None;
        self.background = false;
        self.ask = Lookup::default();
        self.partial = None;
    }

    /// The stale entry this request holds, if any (for stale-if-error).
    pub fn stale(&self) -> Option<&Arc<Entry>> {
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
