//! The per-shard chains built from a `PluginSet` (set.rs) (`ShardPlugins`) and the phase runners.
//! Reads config only through the set, never validates it; limit state is limit_sync.rs's.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::consumer::Consumers;
use super::ctx::Ctx;
// The config-time half lives in set.rs and limit state in limit_sync.rs; plugins import them
// from here as they always have.
pub use super::limit_sync::{LimitSync, ShardLimiter};
pub use super::set::{BuildCx, FactoryRef, LimiterSpec, PluginSet};
use super::{phase, Flow, Plugin, Reply, Wait};
use crate::cache::Caches;
use crate::cache::Mail;
use crate::http::parse::{RequestHead, ResponseHead};
use crate::limit::sync::Endpoint;
use crate::metrics::ShardMetrics;
use crate::util::cow::CowVec;
use crate::util::mesh::Lane;

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
        let (limiters, sync) = super::limit_sync::build(set, limit, id, shards);
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
