//! Plugin sets: factories from config (`PluginSet`, shared by shards), the per-shard chains
//! built from them (`ShardPlugins`), the phase runners, and each generation's `LimitSync`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::consumer::Consumers;
use super::ctx::Ctx;
use super::{phase, Flow, Plugin, PluginFactory, Reply, Wait};
use crate::cache::Caches;
use crate::cache::Mail;
use crate::http::parse::{RequestHead, ResponseHead};
use crate::limit::bucket::{Bucket, BucketParams};
use crate::limit::conc::Concurrency;
use crate::limit::count::{CountLimiter, CountParams};
use crate::limit::fleet::{FleetSpec, Grant, Uplink};
use crate::limit::sync::{Absorb, Endpoint, Report};
use crate::metrics::ShardMetrics;
use crate::util::cow::CowVec;
use crate::util::mesh::Lane;

pub type FactoryRef = Arc<dyn PluginFactory>;

/// One request phase of a plugin, so the runner can loop over phases.
type Phase = fn(&dyn Plugin, &RequestHead, &mut Ctx) -> Flow;

/// A plugin in a route's chain with the phases it implements.
#[derive(Clone)]
struct Link {
    phases: u8,
    plugin: Rc<dyn Plugin>,
}

/// A consumer's policy plugins on one shard and their names (what they replace on a route).
struct ConsumerChain {
    names: Vec<&'static str>,
    chain: Chain,
}

/// A plugin's reply with the response header edits made so far (those it did not set itself).
fn with_resp_headers(mut reply: Reply, cx: &Ctx) -> Reply {
    for (n, v) in cx.resp_headers.written() {
        if !reply.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n)) {
            reply
                .headers
                .push((Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)));
        }
    }
    reply
}

/// Where the request phases go on after a wait: the phase and the link that asked to wait,
/// which runs again (it finds what it waited for, or decides without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    phase: usize,
    link: usize,
}

impl Resume {
    pub const START: Resume = Resume { phase: 0, link: 0 };
}

/// What the request phases decided.
#[derive(Debug)]
pub enum Step {
    /// Go upstream.
    Pass,
    /// Answer with this instead.
    Reply(Reply),
    /// A plugin waits for an answer from off the shard (proxy/phases.rs awaits it without
    /// blocking the thread), then the phases go on from the `Resume`.
    Wait(Wait, Resume),
}

/// One route's chain: global instances, then the route's; `phases` is the union.
#[derive(Default)]
struct Chain {
    links: Vec<Link>,
    phases: u8,
}

impl Chain {
    fn of(plugins: impl Iterator<Item = Rc<dyn Plugin>>) -> Chain {
        let links: Vec<Link> = plugins
            .map(|plugin| Link {
                phases: plugin.phases(),
                plugin,
            })
            .collect();
        Chain {
            phases: links.iter().fold(0, |m, l| m | l.phases),
            links,
        }
    }

    /// The plugins that implement `bit`, in order.
    #[inline]
    fn with(&self, bit: u8) -> impl Iterator<Item = &dyn Plugin> {
        self.links
            .iter()
            .filter(move |l| l.phases & bit != 0)
            .map(|l| l.plugin.as_ref())
    }
}

/// What a limiter id stands for; each shard builds one state machine per id.
#[derive(Debug, Clone)]
pub enum LimiterSpec {
    Count(CountParams),
    Req(BucketParams),
    Conn { max_keys: usize },
}

/// All plugin configuration, validated and ready to build on each shard.
pub struct PluginSet {
    /// `[global_plugins]`, run for every route before the route's own.
    pub global: Vec<FactoryRef>,
    /// Per route id (as in `Config::routes`), sorted by priority; shared between generations.
    pub routes: CowVec<Arc<[FactoryRef]>>,
    /// Per consumer (index into `consumers.list`): its policy plugins, group's and own merged
    /// (registry::consumer_chains), sorted by priority; empty for most.
    pub consumer_chains: Arc<[Arc<[FactoryRef]>]>,
    pub consumers: Arc<Consumers>,
    pub limiters: Vec<LimiterSpec>,
    /// How often shards exchange limit state.
    pub sync_interval: Duration,
    /// Node-wide time origin, so every shard agrees on window boundaries; also names the
    /// limiter set in sync reports.
    pub epoch: Instant,
    /// Wall-clock ms at `epoch`: cluster-wide limiters number windows from the Unix epoch.
    pub wall_ms: u64,
    /// Per limiter id: what makes it cluster-wide, if it is (`policy = "redis"`).
    pub fleet: Vec<Option<Arc<FleetSpec>>>,
}

impl Default for PluginSet {
    fn default() -> Self {
        PluginSet {
            global: Vec::new(),
            routes: CowVec::default(),
            consumer_chains: Arc::new([]),
            consumers: Arc::new(Consumers::default()),
            limiters: Vec::new(),
            sync_interval: Duration::from_millis(20),
            epoch: Instant::now(),
            wall_ms: 0,
            fleet: Vec::new(),
        }
        .clocked()
    }
}

impl PluginSet {
    /// A copy for the next generation of a one-route change: factories, consumers and limiter
    /// specs are shared; shards keep the limit state they have (`ShardPlugins::with_route`).
    pub fn share(&self) -> PluginSet {
        PluginSet {
            global: self.global.clone(),
            routes: self.routes.clone(),
            consumer_chains: self.consumer_chains.clone(),
            consumers: self.consumers.clone(),
            limiters: self.limiters.clone(),
            sync_interval: self.sync_interval,
            epoch: self.epoch,
            wall_ms: self.wall_ms,
            fleet: self.fleet.clone(),
        }
    }

    /// Sets `wall_ms` from `epoch`, once per set, so every shard numbers windows alike.
    fn clocked(mut self) -> PluginSet {
        let since = self.epoch.elapsed().as_millis() as u64;
        self.wall_ms = crate::limit::fleet::wall_ms_now().saturating_sub(since);
        self
    }
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[FactoryRef]| v.iter().map(|p| p.name()).collect::<Vec<_>>();
        f.debug_struct("PluginSet")
            .field("global", &names(&self.global))
            .field(
                "routes",
                &self.routes.iter().map(|r| names(r)).collect::<Vec<_>>(),
            )
            .field("consumers", &self.consumers)
            .field("limiters", &self.limiters.len())
            .finish()
    }
}

/// Config-time state shared by the plugin builders of one load.
pub struct BuildCx<'a> {
    pub upstreams: &'a HashMap<String, usize>,
    pub consumers: Arc<Consumers>,
    pub limiters: Vec<LimiterSpec>,
    /// limit-count `group` -> (limiter id, the config it was defined with).
    pub groups: HashMap<String, (u32, String)>,
    pub sync_interval: Option<Duration>,
    /// Cluster-wide limiters by id (`policy = "redis"`).
    pub fleet: Vec<(u32, Arc<FleetSpec>)>,
    /// Whose plugin table is being built: `route "name"` or `global_plugins`. Unlike the table's
    /// path (`routes[i]`), it does not change when routes are reordered.
    pub owner: String,
}

impl BuildCx<'_> {
    pub fn add_limiter(&mut self, spec: LimiterSpec) -> u32 {
        self.limiters.push(spec);
        (self.limiters.len() - 1) as u32
    }

    /// Shards exchange state at the shortest interval any limiter asks for.
    pub fn want_sync(&mut self, d: Duration) {
        self.sync_interval = Some(self.sync_interval.map_or(d, |s| s.min(d)));
    }
}

/// One shard's limiter state machines, by limiter id.
#[derive(Clone)]
pub enum ShardLimiter {
    Count(Rc<RefCell<CountLimiter>>),
    Req(Rc<RefCell<Bucket>>),
    Conn(Rc<RefCell<Concurrency>>),
}

/// What a factory may use to build a shard's instance.
pub struct ShardCx {
    pub id: usize,
    pub shards: usize,
    pub epoch: Instant,
    pub consumers: Arc<Consumers>,
    pub limiters: Vec<ShardLimiter>,
    /// This shard's end of the mesh's purge lane, for caches to reach their peers.
    pub purges: Rc<Lane<Mail>>,
    /// This shard's counters (limit plugins count their rejections there).
    pub metrics: Rc<ShardMetrics>,
    /// This shard's cache instances (proxy-cache adopts its instance there across reloads).
    pub caches: Rc<Caches>,
    /// This shard's end of the limit lane (limit-count's exact mode asks the node through it).
    pub limit: Rc<Endpoint>,
}

/// A shard's plugin chains and limit state.
pub struct ShardPlugins {
    /// Per route: global instances, then the route's.
    chains: CowVec<Rc<Chain>>,
    /// The global instances: also the chain of every route without plugins of its own.
    global: Rc<Chain>,
    /// What an unknown route index gets.
    no_plugins: Chain,
    /// Per consumer: its policy chain on this shard (None when it has none).
    consumer_chains: Rc<[Option<ConsumerChain>]>,
    consumers: Arc<Consumers>,
    limiters: Vec<ShardLimiter>,
    /// The limiters' sync (None without limiters); shared by generations made by one-route
    /// changes, which keep the limiters too.
    sync: Option<Rc<LimitSync>>,
    purges: Rc<Lane<Mail>>,
    limit: Rc<Endpoint>,
    /// The shard's counters (limit plugins count their rejections here).
    metrics: Rc<ShardMetrics>,
    caches: Rc<Caches>,
    epoch: Instant,
}

impl ShardPlugins {
    /// Builds a shard's chains and limit state; `limit` and `purges` are the shard's ends of the
    /// node mesh's lanes (their ids say which shard this is).
    pub fn new(
        set: &PluginSet,
        limit: &Rc<Endpoint>,
        purges: &Rc<Lane<Mail>>,
        metrics: &Rc<ShardMetrics>,
        caches: &Rc<Caches>,
    ) -> ShardPlugins {
        let (id, shards) = (purges.id(), purges.shards());
        let limiters = set
            .limiters
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                LimiterSpec::Count(p) => {
                    let l = CountLimiter::new(*p, id, shards);
                    let l = match set.fleet.get(i) {
                        Some(Some(f)) => l.fleet(set.wall_ms, f.opening(set.sync_interval)),
                        _ => l,
                    };
                    ShardLimiter::Count(Rc::new(RefCell::new(l)))
                }
                LimiterSpec::Req(p) => {
                    ShardLimiter::Req(Rc::new(RefCell::new(Bucket::new(p.clone(), id, shards))))
                }
                LimiterSpec::Conn { max_keys } => ShardLimiter::Conn(Rc::new(RefCell::new(
                    Concurrency::new(id, shards, *max_keys),
                ))),
            })
            .collect::<Vec<_>>();
        let sync = (!limiters.is_empty()).then(|| {
            let sync = Rc::new(LimitSync {
                limiters: limiters.clone(),
                endpoint: limit.clone(),
                epoch: set.epoch,
                wall_ms: set.wall_ms,
                fleet: set.fleet.clone(),
                interval: set.sync_interval,
            });
            let weak: std::rc::Weak<dyn Absorb> = Rc::downgrade(&sync) as _;
            limit.join(set.epoch, weak);
            sync
        });
        let cx = ShardCx {
            id,
            shards,
            epoch: set.epoch,
            consumers: set.consumers.clone(),
            limiters: limiters.clone(),
            purges: purges.clone(),
            metrics: metrics.clone(),
            caches: caches.clone(),
            limit: limit.clone(),
        };
        let global = Rc::new(Chain::of(set.global.iter().map(|f| f.build(&cx))));
        let chains = set
            .routes
            .iter()
            .map(|r| chain_of(&global, r, &cx))
            .collect();
        let consumer_chains = set
            .consumer_chains
            .iter()
            .map(|c| {
                (!c.is_empty()).then(|| ConsumerChain {
                    names: c.iter().map(|f| f.name()).collect(),
                    chain: Chain::of(c.iter().map(|f| f.build(&cx))),
                })
            })
            .collect();
        ShardPlugins {
            chains,
            global,
            no_plugins: Chain::default(),
            consumer_chains,
            consumers: set.consumers.clone(),
            limiters,
            sync,
            purges: purges.clone(),
            limit: limit.clone(),
            metrics: metrics.clone(),
            caches: caches.clone(),
            epoch: set.epoch,
        }
    }

    /// One shard alone, on a mesh of one (tests, tools).
    pub fn solo(set: &PluginSet) -> ShardPlugins {
        ShardPlugins::new(
            set,
            &Rc::new(Endpoint::solo()),
            &Rc::new(Lane::solo()),
            &Rc::default(),
            &Rc::default(),
        )
    }

    /// The next generation after a one-route change: only route `id`'s chain is built (from
    /// `set`); the other chains, the global instances and the limit state are shared.
    pub fn with_route(&self, set: &PluginSet, id: usize) -> ShardPlugins {
        let cx = ShardCx {
            id: self.purges.id(),
            shards: self.purges.shards(),
            epoch: self.epoch,
            consumers: self.consumers.clone(),
            limiters: self.limiters.clone(),
            purges: self.purges.clone(),
            metrics: self.metrics.clone(),
            caches: self.caches.clone(),
            limit: self.limit.clone(),
        };
        let mut chains = self.chains.clone();
        let route = set.routes.get(id).cloned().unwrap_or_default();
        chains.put(id, chain_of(&self.global, &route, &cx));
        ShardPlugins {
            chains,
            global: self.global.clone(),
            no_plugins: Chain::default(),
            consumer_chains: self.consumer_chains.clone(),
            consumers: self.consumers.clone(),
            limiters: self.limiters.clone(),
            sync: self.sync.clone(),
            purges: self.purges.clone(),
            limit: self.limit.clone(),
            metrics: self.metrics.clone(),
            caches: self.caches.clone(),
            epoch: self.epoch,
        }
    }

    fn route_chain(&self, route: usize) -> &Chain {
        self.chains.get(route).map_or(&self.no_plugins, |c| c)
    }

    /// The route's chain in run order, with the phase mask the chain keeps for each (tests).
    #[cfg(test)]
    pub(crate) fn links(&self, route: usize) -> Vec<(u8, Rc<dyn Plugin>)> {
        self.route_chain(route)
            .links
            .iter()
            .map(|l| (l.phases, l.plugin.clone()))
            .collect()
    }

    /// True when neither the route nor the global set has plugins.
    #[inline]
    pub fn is_empty(&self, route: usize) -> bool {
        self.route_chain(route).links.is_empty()
    }

    /// True when some plugin of the route, or of the request's consumer, has a response phase
    /// (headers or body).
    #[inline]
    pub fn has_response_phases(&self, route: usize, cx: &Ctx) -> bool {
        let mut phases = self.route_chain(route).phases;
        if let Some(c) = self.consumer_chain(cx) {
            phases |= c.chain.phases;
        }
        phases & (phase::RESPONSE_HEADERS | phase::RESPONSE_BODY) != 0
    }

    /// The policy chain of the consumer an auth plugin resolved, if it has one.
    #[inline]
    fn consumer_chain(&self, cx: &Ctx) -> Option<&ConsumerChain> {
        self.chain_of_consumer(cx.consumer)
    }

    #[inline]
    fn chain_of_consumer(&self, consumer: Option<usize>) -> Option<&ConsumerChain> {
        self.consumer_chains.get(consumer?)?.as_ref()
    }

    /// The route's links that implement `bit`, less those the consumer's chain replaces, then
    /// the consumer chain's: consumer (and group) over route and global (README "Consumer groups").
    fn links_for<'a>(
        &'a self,
        route: usize,
        consumer: Option<usize>,
        bit: u8,
    ) -> impl Iterator<Item = &'a dyn Plugin> + 'a {
        let cc = self.chain_of_consumer(consumer);
        let chain = self.route_chain(route);
        let own = (chain.phases & bit != 0)
            .then(|| chain.with(bit))
            .into_iter()
            .flatten()
            .filter(move |p| cc.map_or(true, |c| !c.names.contains(&p.name())));
        own.chain(cc.into_iter().flat_map(move |c| c.chain.with(bit)))
    }

    /// Runs rewrite, access and before_upstream over the chain (phase by phase, as APISIX
    /// does), from `from` (`Resume::START`, or where a plugin asked to wait). Once an auth
    /// plugin names a consumer, route plugins its policy chain replaces are skipped, and the
    /// policy chain's rewrite and access run after the route's access (its before_upstream
    /// after the route's). A plugin's reply carries the response header edits made so far.
    pub fn request_phases(
        &self,
        route: usize,
        req: &RequestHead,
        cx: &mut Ctx,
        from: Resume,
    ) -> Step {
        let chain = self.route_chain(route);
        let phases: [(u8, Phase); 3] = [
            (phase::REWRITE, |p, r, c| p.rewrite(r, c)),
            (phase::ACCESS, |p, r, c| p.access(r, c)),
            (phase::BEFORE_UPSTREAM, |p, r, c| p.before_upstream(r, c)),
        ];
        for (pi, (bit, run)) in phases.iter().enumerate().skip(from.phase) {
            let first = if pi == from.phase { from.link } else { 0 };
            if chain.phases & bit != 0 {
                for (li, l) in chain.links.iter().enumerate().skip(first) {
                    if l.phases & bit == 0 {
                        continue;
                    }
                    if let Some(c) = self.consumer_chain(cx) {
                        if c.names.contains(&l.plugin.name()) {
                            continue;
                        }
                    }
                    match run(l.plugin.as_ref(), req, cx) {
                        Flow::Continue => {}
                        Flow::Respond(reply) => return Step::Reply(with_resp_headers(reply, cx)),
                        Flow::Wait(w) => {
                            return Step::Wait(
                                w,
                                Resume {
                                    phase: pi,
                                    link: li,
                                },
                            )
                        }
                    }
                }
            }
            let Some(cc) = self.consumer_chain(cx) else {
                continue;
            };
            let steps: &[usize] = match *bit {
                phase::ACCESS => &[0, 1],
                phase::BEFORE_UPSTREAM => &[2],
                _ => &[],
            };
            for &k in steps {
                let (cbit, crun) = phases[k];
                for p in cc.chain.with(cbit) {
                    match crun(p, req, cx) {
                        Flow::Continue => {}
                        Flow::Respond(reply) => return Step::Reply(with_resp_headers(reply, cx)),
                        // No policy plugin waits (auth plugins are refused on consumers).
                        Flow::Wait(_) => return Step::Reply(Reply::new(500)),
                    }
                }
            }
        }
        Step::Pass
    }

    /// Runs `request_body` over the route's chain; a plugin's reply ends the request (with the
    /// response header edits made so far, as in `request_phases`).
    pub fn request_body(
        &self,
        route: usize,
        req: &RequestHead,
        body: &[u8],
        cx: &mut Ctx,
    ) -> Option<Reply> {
        for p in self.route_chain(route).with(phase::REQUEST_BODY) {
            if let Flow::Respond(reply) = p.request_body(req, body, cx) {
                return Some(with_resp_headers(reply, cx));
            }
        }
        None
    }

    pub fn response_headers(&self, route: usize, resp: &ResponseHead, cx: &mut Ctx) {
        for p in self.links_for(route, cx.consumer, phase::RESPONSE_HEADERS) {
            p.response_headers(resp, cx);
        }
    }

    /// The last replacement body any plugin asked for.
    pub fn response_body(&self, route: usize, cx: &mut Ctx) -> Option<Bytes> {
        let mut body = None;
        for p in self.links_for(route, cx.consumer, phase::RESPONSE_BODY) {
            if let Some(b) = p.response_body(cx) {
                body = Some(b);
            }
        }
        body
    }

    pub fn log(&self, route: usize, cx: &mut Ctx) {
        if self.route_chain(route).phases & phase::LOG == 0 && self.consumer_chain(cx).is_none() {
            return;
        }
        for p in self.links_for(route, cx.consumer, phase::LOG) {
            p.log(cx);
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// This generation's limit sync, if it has limiters: what its housekeeping tick drives.
    pub fn limit_sync(&self) -> Option<Rc<LimitSync>> {
        self.sync.clone()
    }
}

/// One generation's limiter state machines on one shard and its end of the limit lane. Peers'
/// reports are absorbed as they arrive (the shard drains the lane when woken); the shard's own
/// report goes out every `interval`, batching what changed since.
pub struct LimitSync {
    limiters: Vec<ShardLimiter>,
    endpoint: Rc<Endpoint>,
    epoch: Instant,
    wall_ms: u64,
    fleet: Vec<Option<Arc<FleetSpec>>>,
    interval: Duration,
}

impl Absorb for LimitSync {
    fn absorb(&self, r: &Report) {
        let now = self.epoch.elapsed().as_millis() as u64;
        match self.limiters.get(r.limiter as usize) {
            Some(ShardLimiter::Count(l)) => {
                l.borrow_mut()
                    .absorb(r.from as usize, r.window, &r.items, now)
            }
            Some(ShardLimiter::Req(l)) => l.borrow_mut().absorb(r.from as usize, &r.items),
            Some(ShardLimiter::Conn(l)) => l.borrow_mut().absorb(r.from as usize, &r.items),
            None => {}
        }
    }

    fn grant(&self, g: &Grant) {
        let now = self.epoch.elapsed().as_millis() as u64;
        match self.limiters.get(g.limiter as usize) {
            Some(ShardLimiter::Count(l)) => {
                l.borrow_mut()
                    .grant(g.window, g.mode, g.default_frac, &g.items, now)
            }
            Some(ShardLimiter::Req(l)) => l.borrow_mut().grant(g.mode, g.default_frac, &g.items),
            _ => {}
        }
    }
}

impl LimitSync {
    /// How often this shard reports to its peers.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One sync tick: take in peers' reports not yet absorbed, recompute shares, tell peers
    /// what changed.
    pub fn tick(&self, sweep: bool) {
        self.endpoint.drain();
        let now = self.epoch.elapsed().as_millis() as u64;
        let me = self.endpoint.id() as u16;
        for (i, l) in self.limiters.iter().enumerate() {
            let (window, items) = match l {
                ShardLimiter::Count(l) => {
                    let mut l = l.borrow_mut();
                    if sweep {
                        l.sweep(now);
                    }
                    l.tick(now)
                }
                ShardLimiter::Req(l) => {
                    let mut l = l.borrow_mut();
                    if sweep {
                        l.sweep(now);
                    }
                    (0, l.tick())
                }
                ShardLimiter::Conn(l) => {
                    let mut l = l.borrow_mut();
                    if sweep {
                        l.sweep();
                    }
                    (0, l.tick())
                }
            };
            if items.is_empty() {
                continue;
            }
            if let Some(Some(spec)) = self.fleet.get(i) {
                self.endpoint.uplink(Uplink {
                    set: self.epoch,
                    limiter: i as u32,
                    wall_ms: self.wall_ms,
                    spec: spec.clone(),
                    from: me,
                    tick: self.interval,
                    window,
                    items: items.clone(),
                });
            }
            if self.endpoint.shards() > 1 {
                self.endpoint.broadcast(Report {
                    set: self.epoch,
                    limiter: i as u32,
                    from: me,
                    window,
                    items,
                });
            }
        }
    }
}

/// Global instances, then the route's own, built for this shard. Routes without plugins of
/// their own share the global chain (one allocation per shard, not per route).
fn chain_of(global: &Rc<Chain>, route: &[FactoryRef], cx: &ShardCx) -> Rc<Chain> {
    if route.is_empty() {
        return global.clone();
    }
    Rc::new(Chain::of(
        global
            .links
            .iter()
            .map(|l| l.plugin.clone())
            .chain(route.iter().map(|f| f.build(cx))),
    ))
}
