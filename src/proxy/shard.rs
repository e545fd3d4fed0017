//! One shard's per-generation state: what a config generation built on one shard (upstream
//! state, plugin instances, route counters) plus the shard-wide parts generations share (its
//! mesh lanes among them), and the "current generation" slot. Single-threaded; starts no thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::built::Built;
use crate::cache::Mail;
use crate::http::parse::HeadLimits;
use crate::limit::fleet::{Grant, Uplink};
use crate::limit::sync::{Endpoint, Report};
use crate::local::drain::{tick_until, Drain};
use crate::upstream::UpstreamState;
use crate::util::cow::CowVec;
use crate::util::mesh::Lane;

thread_local! {
    /// The generation new requests on this shard use; set at start and on `Commit`.
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// The shard's current generation if it is not `shard`'s own (a swap happened since).
#[inline]
pub fn newer(shard: &Shard) -> Option<Rc<Shard>> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|cur| cur.generation != shard.generation)
            .cloned()
    })
}

/// The current generation (or `shard` itself before the first is set).
pub fn current(shard: &Rc<Shard>) -> Rc<Shard> {
    newer(shard).unwrap_or_else(|| shard.clone())
}

/// Makes `shard` the generation new connections and requests on this thread use.
pub fn set_current(shard: &Rc<Shard>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
}

/// This thread's current generation, if a shard runs here.
pub fn current_here() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// This shard's ends of the node mesh's lanes (the runtime makes the mesh and wakes the shard
/// when one has mail), shared by every generation on the shard.
#[derive(Clone)]
pub struct Lanes {
    /// Limit-sync reports from peers, for the limiter sets on this shard.
    pub limit: Rc<Endpoint>,
    /// Cache purges from peers.
    pub purge: Rc<Lane<Mail>>,
    /// The shard's cache instances, which those purges (and the admin API's) reach.
    pub caches: Rc<crate::cache::Caches>,
}

impl Lanes {
    /// `grant` and `up` join the node's fleet thread (cluster-wide limiters), `tier` its
    /// shared cache tier thread; with `exact`, the shard has its own Redis clients for
    /// limit-count's exact mode.
    pub fn new(
        limit: Lane<Report>,
        purge: Lane<Mail>,
        grant: Lane<Grant>,
        up: Option<crossbeam_channel::Sender<Uplink>>,
        tier: Option<crate::cache::tier::TierLink>,
        exact: bool,
    ) -> Lanes {
        Lanes {
            limit: Rc::new(Endpoint::node(limit, grant, up, exact)),
            purge: Rc::new(purge),
            caches: Rc::new(crate::cache::Caches::with_tier(tier)),
        }
    }

    /// A shard alone on a mesh of one (tests, tools).
    pub fn solo() -> Lanes {
        Lanes::new(Lane::solo(), Lane::solo(), Lane::solo(), None, None, false)
    }

    /// Takes in what peers sent: limit reports go to their limiter sets, purges are carried
    /// out (and acked). The shard calls this whenever it wakes.
    pub fn drain(&self) {
        self.limit.drain();
        self.caches.deliver(&self.purge);
    }
}

/// Shard-local counters: plain cells, no atomics on the request path.
#[derive(Default)]
pub struct ShardStats {
    pub accepted: Cell<u64>,
    pub requests: Cell<u64>,
    pub errors: Cell<u64>,
    /// Busy periods ended: a connection dropped its request state (idle past the hold, or
    /// closed). With `accepted` and `requests`, what tells the control loop the shard went quiet.
    pub settled: Cell<u64>,
}

/// One config generation on one shard. A swap builds a new `Shard` that shares the
/// shard-wide parts (`Rc` fields: drain, counters, TLS configs, access log) with the old one.
pub struct Shard {
    pub id: usize,
    /// Config generation this instance was built from (1 = the file at start-up).
    pub generation: u64,
    /// The config generation this was built from: data (`built.cfg`), router and plugin factories.
    pub built: Arc<Built>,
    /// `Rc` so a swap keeps the pools and passive health of upstreams whose config is unchanged.
    pub upstreams: Vec<Rc<UpstreamState>>,
    pub limits: HeadLimits,
    pub drain: Rc<Drain>,
    /// Fired when a newer generation replaces this one (stops this generation's tasks).
    pub retired: Rc<Drain>,
    pub lanes: Lanes,
    /// Open client connections (parked ones too).
    pub conns: Rc<Cell<usize>>,
    /// Idle plain connections held with no task (park.rs); None: they idle in their tasks.
    pub park: Option<Rc<super::park::Park>>,
    /// Ends the control loop's idle sleep when the first connection arrives.
    pub bell: Rc<crate::local::bell::Bell>,
    pub stats: Rc<ShardStats>,
    /// Shard-wide metric registry; `route_stats[route id]` are this generation's handles into it.
    pub metrics: Rc<crate::metrics::ShardMetrics>,
    pub route_stats: CowVec<Option<Rc<crate::metrics::RouteStats>>>,
    /// This shard's access log buffer, if `[access_log]` is configured.
    pub log: Option<Rc<crate::accesslog::ShardLog>>,
    /// This shard's plugin instances (built once per shard) and limit state.
    pub plugins: crate::plugin::ShardPlugins,
    /// Per listener, the TLS config new handshakes use; swapped by `Control::ReloadTls`.
    pub tls: Rc<RefCell<Vec<Option<Arc<rustls::ServerConfig>>>>>,
}

impl Shard {
    pub fn new(id: usize, built: Arc<Built>, lanes: Lanes) -> Shard {
        let cfg = &built.cfg;
        let metrics = Rc::new(crate::metrics::ShardMetrics::default());
        let conns = Rc::new(Cell::new(0));
        Shard {
            park: super::park::Park::new(conns.clone()).map(Rc::new),
            id,
            generation: 1,
            tls: Rc::new(RefCell::new(built.listener_tls.clone())),
            upstreams: cfg
                .upstreams
                .iter()
                .zip(&built.upstream_tls)
                .map(|(u, tls)| Rc::new(UpstreamState::new(u, tls.clone())))
                .collect(),
            route_stats: metrics.for_routes(cfg.routes.by_id().map(|r| r.map(|r| r.name.as_str()))),
            metrics: metrics.clone(),
            log: crate::accesslog::ShardLog::for_shard(id),
            plugins: crate::plugin::ShardPlugins::new(
                &built.plugins,
                &lanes.limit,
                &lanes.purge,
                &metrics,
                &lanes.caches,
            ),
            limits: HeadLimits {
                max_header_bytes: cfg.server.max_header_bytes,
                max_request_line_bytes: cfg.server.max_request_line_bytes,
            },
            built: built.clone(),
            drain: Rc::new(Drain::default()),
            retired: Rc::default(),
            lanes,
            conns,
            bell: Rc::default(),
            stats: Rc::new(ShardStats::default()),
        }
    }
}

impl Shard {
    /// Builds the next generation from `cfg`. Runs on the shard thread at a control tick, not
    /// per request; upstreams whose config is unchanged keep their pools and health state.
    pub fn next(&self, built: Arc<Built>, generation: u64) -> Shard {
        let cfg = &built.cfg;
        let old: std::collections::HashMap<&str, &Rc<UpstreamState>> = self
            .upstreams
            .iter()
            .map(|u| (u.cfg.name.as_str(), u))
            .collect();
        let upstreams = cfg
            .upstreams
            .iter()
            .zip(&built.upstream_tls)
            .map(|(u, tls)| match old.get(u.name.as_str()) {
                Some(o) if o.cfg == *u => Rc::clone(o),
                Some(o) if u.checks.is_some() => {
                    // Active verdicts carry over by node address, so a node down by active
                    // checks stays out from the first request of the new generation (the
                    // prober also re-sends its down set once it sees the swap).
                    let fresh = UpstreamState::new(u, tls.clone());
                    {
                        let (was, mut now) = (o.health.borrow(), fresh.health.borrow_mut());
                        for (i, n) in u.nodes.iter().enumerate() {
                            if let Some(j) = o.cfg.nodes.iter().position(|m| m.host == n.host) {
                                now.set_down(i, was.is_down(j));
                            }
                        }
                    }
                    Rc::new(fresh)
                }
                _ => Rc::new(UpstreamState::new(u, tls.clone())),
            })
            .collect();
        Shard {
            id: self.id,
            generation,
            upstreams,
            route_stats: self
                .metrics
                .for_routes(cfg.routes.by_id().map(|r| r.map(|r| r.name.as_str()))),
            metrics: self.metrics.clone(),
            log: self.log.clone(),
            plugins: crate::plugin::ShardPlugins::new(
                &built.plugins,
                &self.lanes.limit,
                &self.lanes.purge,
                &self.metrics,
                &self.lanes.caches,
            ),
            limits: HeadLimits {
                max_header_bytes: cfg.server.max_header_bytes,
                max_request_line_bytes: cfg.server.max_request_line_bytes,
            },
            built: built.clone(),
            drain: self.drain.clone(),
            retired: Rc::default(),
            lanes: self.lanes.clone(),
            conns: self.conns.clone(),
            park: self.park.clone(),
            bell: self.bell.clone(),
            stats: self.stats.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The next generation after a one-route change: upstream state, limiters and every other
    /// route's counters and plugin instances are shared; only route `id`'s are (re)built.
    pub fn with_route(&self, built: Arc<Built>, generation: u64, id: usize) -> Shard {
        let cfg = &built.cfg;
        let mut route_stats = self.route_stats.clone();
        let stats = cfg.routes.get(id).map(|r| self.metrics.for_route(&r.name));
        route_stats.put(id, stats);
        Shard {
            id: self.id,
            generation,
            upstreams: self.upstreams.clone(),
            route_stats,
            metrics: self.metrics.clone(),
            log: self.log.clone(),
            plugins: self.plugins.with_route(&built.plugins, id),
            limits: self.limits,
            built: built.clone(),
            drain: self.drain.clone(),
            retired: Rc::default(),
            lanes: self.lanes.clone(),
            conns: self.conns.clone(),
            park: self.park.clone(),
            bell: self.bell.clone(),
            stats: self.stats.clone(),
            tls: self.tls.clone(),
        }
    }

    /// This shard's counters, copied for the status thread.
    pub fn snapshot(&self) -> crate::metrics::ShardSnapshot {
        let now = Instant::now();
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                let h = u.health.borrow();
                crate::metrics::UpstreamSnap {
                    name: u.cfg.name.clone(),
                    nodes: u
                        .cfg
                        .nodes
                        .iter()
                        .enumerate()
                        .map(|(i, n)| {
                            let (successes, failures) = h.counts(i);
                            crate::metrics::NodeSnap {
                                addr: n.host.clone(),
                                successes,
                                failures,
                                ejected: h.is_ejected(i, now),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let (log_lines, log_dropped) = self.log.as_ref().map_or((0, 0), |l| l.counts());
        crate::metrics::ShardSnapshot {
            shard: self.id,
            generation: self.generation,
            accepted: self.stats.accepted.get(),
            requests: self.stats.requests.get(),
            errors: self.stats.errors.get(),
            // Counted on this thread by the hold reads themselves (the snapshot runs here).
            hold_races: crate::net::hold_buf::lost(),
            active_connections: self.conns.get() as u64,
            parked_connections: self.park.as_ref().map_or(0, |p| p.parked() as u64),
            routes: self.metrics.route_counts(),
            upstreams,
            log_lines,
            log_dropped,
            rate_limited: self.metrics.rate_limited(),
            invalid: self.metrics.invalid(),
            deprecated: self.metrics.deprecated(),
            cache: self.metrics.cache(),
            exact: self.lanes.limit.exact().map_or_else(Default::default, |c| {
                let (calls, state) = c.counts();
                crate::metrics::fleet::ExactCounts { calls, state }
            }),
        }
    }
}

/// Starts this generation's housekeeping: the limit-sync tick, when it has limiters. The task
/// gets what it needs (the limit state with its lane, the drain and retire signals), not the
/// shard; it ends when the shard drains or a swap retires the generation, whose commit calls
/// this for the next one. Peers' mail (reports, purges) needs no tick: it wakes the shard.
pub fn spawn_housekeeping(shard: &Shard) {
    if let Some(sync) = shard.plugins.limit_sync() {
        let (drain, retired) = (shard.drain.clone(), shard.retired.clone());
        monoio::spawn(async move {
            tick_until(sync.interval(), &drain, &retired, |sweep| sync.tick(sweep)).await
        });
    }
}
