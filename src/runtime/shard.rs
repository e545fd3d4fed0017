//! One shard: the state a worker thread owns (upstream pools, balancers, counters) and its
//! accept and housekeeping loops. Everything here is single-threaded; only `Control` arrives from outside.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use monoio::net::{TcpListener, TcpStream};

use super::drain::Drain;
use crate::config::Config;
use crate::http::parse::HeadLimits;
use crate::upstream::UpstreamState;
use crate::util::cow::CowVec;

/// Messages from the main thread to a shard.
#[derive(Debug)]
pub enum Control {
    /// Stop accepting, finish in-flight requests, exit.
    Shutdown,
    /// New TLS configs (SIGHUP certificate reload), one per listener in `listen` order (`None`
    /// for plain ones). Used for new handshakes; open connections keep the session they have.
    ReloadTls(Vec<Option<Arc<rustls::ServerConfig>>>),
    /// Step one of a config swap: build this shard's next generation from `cfg` (upstream
    /// state, plugin instances, counters), keep it pending and ack with the shard id.
    Prepare {
        generation: u64,
        cfg: Arc<Config>,
        /// `Some(id)`: `cfg` differs from the previous generation in route `id` only, so the
        /// shard updates that route's state and shares the rest.
        route: Option<usize>,
        ack: Sender<usize>,
    },
    /// Step two: the pending generation becomes current. New requests use it; requests
    /// already running finish on the generation they started with.
    Commit { generation: u64, ack: Sender<usize> },
    /// Copy this shard's counters out for the status thread.
    Snapshot(Sender<crate::metrics::ShardSnapshot>),
    /// Listeners added by a reload (plain, one socket per shard), by configured address.
    Listen(Vec<(SocketAddr, StdListener)>),
    /// Listen addresses a reload removed: stop accepting on them and close the sockets;
    /// connections already accepted on them are served to the end.
    Unlisten(Vec<SocketAddr>),
    /// An admin-API purge: remove matches from every cache on this shard and report.
    CachePurge {
        target: crate::cache::admin::AdminTarget,
        ack: Sender<crate::cache::admin::AdminAck>,
    },
    /// Active health verdict for one node of the named upstream.
    NodeDown {
        upstream: String,
        node: usize,
        down: bool,
    },
}

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

/// Shard-local counters: plain cells, no atomics on the request path.
#[derive(Default)]
pub struct ShardStats {
    pub accepted: Cell<u64>,
    pub requests: Cell<u64>,
    pub errors: Cell<u64>,
}

/// One config generation on one shard. A swap builds a new `Shard` that shares the
/// shard-wide parts (`Rc` fields: drain, counters, TLS configs, access log) with the old one.
pub struct Shard {
    pub id: usize,
    /// Config generation this instance was built from (1 = the file at start-up).
    pub generation: u64,
    pub cfg: Arc<Config>,
    /// `Rc` so a swap keeps the pools and passive health of upstreams whose config is unchanged.
    pub upstreams: Vec<Rc<UpstreamState>>,
    pub limits: HeadLimits,
    pub drain: Rc<Drain>,
    /// Fired when a newer generation replaces this one (stops this generation's tasks).
    pub retired: Drain,
    /// Open client connections.
    pub conns: Rc<Cell<usize>>,
    /// Ends the control loop's idle sleep when the first connection arrives.
    pub bell: Rc<super::wake::Bell>,
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

const TICK: Duration = Duration::from_millis(50);
/// The control tick while the shard has no connections: nothing is logged then, and control
/// messages and the first new connection wake the loop anyway, so it only paces the 1 s upstream
/// sweep.
const IDLE_TICK: Duration = Duration::from_secs(1);

impl Shard {
    pub fn new(id: usize, cfg: Arc<Config>) -> Shard {
        let metrics = Rc::new(crate::metrics::ShardMetrics::default());
        Shard {
            id,
            generation: 1,
            tls: Rc::new(RefCell::new(
                cfg.server
                    .tls
                    .iter()
                    .map(|t| t.as_ref().map(|t| t.config.clone()))
                    .collect(),
            )),
            upstreams: cfg
                .upstreams
                .iter()
                .map(|u| Rc::new(UpstreamState::new(u)))
                .collect(),
            route_stats: metrics.for_routes(cfg.routes.by_id().map(|r| r.map(|r| r.name.as_str()))),
            metrics,
            log: crate::accesslog::ShardLog::for_shard(id),
            plugins: crate::plugin::ShardPlugins::for_shard(&cfg.plugins, id),
            limits: HeadLimits {
                max_header_bytes: cfg.server.max_header_bytes,
                max_request_line_bytes: cfg.server.max_request_line_bytes,
            },
            cfg,
            drain: Rc::new(Drain::default()),
            retired: Drain::default(),
            conns: Rc::new(Cell::new(0)),
            bell: Rc::default(),
            stats: Rc::new(ShardStats::default()),
        }
    }
}

/// The shard's main future: accept loops plus the control/housekeeping tick.
pub async fn run(
    shard: Rc<Shard>,
    listeners: Vec<StdListener>,
    control: Receiver<Control>,
    wake: Option<std::os::unix::net::UnixStream>,
) {
    let mut wake = super::wake::Wakeup::new(wake);
    CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
    monoio::spawn(super::deadline::sweeper());
    monoio::spawn(crate::plugin::chain::sync_loop(shard.clone()));
    monoio::spawn(crate::cache::shard_loop(shard.clone()));
    let mut pending: Option<Rc<Shard>> = None;
    // Per configured listen address, what stops its accept loop (a reload may remove it).
    let mut open: Vec<(SocketAddr, Rc<Drain>)> = Vec::new();
    let configured = shard.cfg.server.listen.clone();
    for (index, (l, addr)) in listeners.into_iter().zip(configured).enumerate() {
        match TcpListener::from_std(l) {
            Ok(l) => {
                let stop = Rc::new(Drain::default());
                open.push((addr, stop.clone()));
                monoio::spawn(accept_loop(shard.clone(), l, index, stop));
            }
            Err(e) => log::error!("shard {}: cannot adopt listener: {e}", shard.id),
        }
    }
    let mut last_sweep = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let idle = shard.conns.get() == 0 && drain_deadline.is_none();
        wake.sleep(if idle { IDLE_TICK } else { TICK }, &shard.bell)
            .await;
        loop {
            match control.try_recv() {
                Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => {
                    if !shard.drain.is_draining() {
                        shard.drain.fire();
                        drain_deadline = Some(Instant::now() + shard.cfg.server.shutdown_timeout);
                    }
                    break;
                }
                Ok(Control::ReloadTls(configs)) => {
                    *shard.tls.borrow_mut() = configs;
                    log::debug!("shard {}: TLS certificates swapped", shard.id);
                }
                Ok(Control::Prepare {
                    generation,
                    cfg,
                    route,
                    ack,
                }) => {
                    let cur = current(&shard);
                    let next = match route {
                        // Only valid on top of the generation the change was made from.
                        Some(id) if cur.generation + 1 == generation => {
                            cur.with_route(cfg, generation, id)
                        }
                        _ => cur.next(cfg, generation),
                    };
                    pending = Some(Rc::new(next));
                    let _ = ack.send(shard.id);
                }
                Ok(Control::Commit { generation, ack }) => {
                    let _ = ack.send(shard.id);
                    if let Some(next) = pending.take().filter(|p| p.generation == generation) {
                        let old = current(&shard);
                        CURRENT.with(|c| *c.borrow_mut() = Some(next.clone()));
                        old.retired.fire();
                        monoio::spawn(crate::cache::shard_loop(next.clone()));
                        monoio::spawn(crate::plugin::chain::sync_loop(next));
                        log::debug!("shard {}: now on config generation {generation}", shard.id);
                    }
                }
                Ok(Control::Listen(ls)) => {
                    for (addr, l) in ls {
                        match TcpListener::from_std(l) {
                            // Index past the TLS table: served as plain HTTP.
                            Ok(l) => {
                                let stop = Rc::new(Drain::default());
                                open.push((addr, stop.clone()));
                                monoio::spawn(accept_loop(shard.clone(), l, usize::MAX, stop));
                            }
                            Err(e) => log::error!("shard {}: cannot adopt listener: {e}", shard.id),
                        }
                    }
                }
                Ok(Control::Unlisten(addrs)) => {
                    open.retain(|(a, stop)| {
                        let gone = addrs.contains(a);
                        if gone {
                            stop.fire();
                        }
                        !gone
                    });
                }
                Ok(Control::Snapshot(reply)) => {
                    let _ = reply.send(current(&shard).snapshot());
                }
                Ok(Control::CachePurge { target, ack }) => {
                    let _ = ack.send(crate::cache::admin::purge_here(shard.id, &target));
                }
                Ok(Control::NodeDown {
                    upstream,
                    node,
                    down,
                }) => {
                    let cur = current(&shard);
                    for u in cur.upstreams.iter().filter(|u| u.cfg.name == upstream) {
                        u.health.borrow_mut().set_down(node, down);
                    }
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        if let Some(deadline) = drain_deadline {
            if shard.conns.get() == 0 || now >= deadline {
                if let Some(log) = &shard.log {
                    log.flush();
                }
                return;
            }
        }
        if now.duration_since(last_sweep) >= Duration::from_secs(1) {
            last_sweep = now;
            for u in &current(&shard).upstreams {
                u.sweep(now);
            }
        }
        if let Some(log) = &shard.log {
            log.flush();
        }
    }
}

impl Shard {
    /// Builds the next generation from `cfg`. Runs on the shard thread at a control tick, not
    /// per request; upstreams whose config is unchanged keep their pools and health state.
    pub fn next(&self, cfg: Arc<Config>, generation: u64) -> Shard {
        let old: std::collections::HashMap<&str, &Rc<UpstreamState>> = self
            .upstreams
            .iter()
            .map(|u| (u.cfg.name.as_str(), u))
            .collect();
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|u| match old.get(u.name.as_str()) {
                // Debug output covers every field; cheaper to keep than a hand-written PartialEq.
                Some(o) if format!("{:?}", o.cfg) == format!("{u:?}") => Rc::clone(o),
                Some(o) if u.checks.is_some() => {
                    // Active verdicts carry over by node address, so a node down by active
                    // checks stays out from the first request of the new generation (the
                    // prober also re-sends its down set once it sees the swap).
                    let fresh = UpstreamState::new(u);
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
                _ => Rc::new(UpstreamState::new(u)),
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
            plugins: crate::plugin::ShardPlugins::for_shard(&cfg.plugins, self.id),
            limits: HeadLimits {
                max_header_bytes: cfg.server.max_header_bytes,
                max_request_line_bytes: cfg.server.max_request_line_bytes,
            },
            cfg,
            drain: self.drain.clone(),
            retired: Drain::default(),
            conns: self.conns.clone(),
            bell: self.bell.clone(),
            stats: self.stats.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The next generation after a one-route change: upstream state, limiters and every other
    /// route's counters and plugin instances are shared; only route `id`'s are (re)built.
    pub fn with_route(&self, cfg: Arc<Config>, generation: u64, id: usize) -> Shard {
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
            plugins: self.plugins.with_route(&cfg.plugins, id),
            limits: self.limits,
            cfg,
            drain: self.drain.clone(),
            retired: Drain::default(),
            conns: self.conns.clone(),
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
            active_connections: self.conns.get() as u64,
            routes: self.metrics.route_counts(),
            upstreams,
            log_lines,
            log_dropped,
            rate_limited: crate::metrics::rate_limited(),
        }
    }
}

/// Accepts until the shard drains or `stop` fires (its address was removed by a reload);
/// returning drops `listener`, which closes this shard's socket for the address.
async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, index: usize, stop: Rc<Drain>) {
    let max = shard.cfg.server.max_connections;
    let mut warned_fd = false;
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shard.drain.wait() => return,
            _ = stop.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if shard.conns.get() >= max {
                    // Over the cap: close at once so existing connections keep their share.
                    drop(stream);
                    continue;
                }
                shard.conns.set(shard.conns.get() + 1);
                if shard.conns.get() == 1 {
                    shard.bell.ring();
                }
                shard.stats.accepted.set(shard.stats.accepted.get() + 1);
                // The generation a reload may have swapped in applies from this connection on.
                let gen = current(&shard);
                // TCP_NODELAY comes from the listener (net/listen.rs), no syscall here.
                if gen.cfg.server.defer_first_ack {
                    crate::net::listen::defer_first_ack(std::os::fd::AsRawFd::as_raw_fd(&stream));
                }
                // Looked up per connection so a reload applies to the next handshake.
                let tls = shard.tls.borrow().get(index).cloned().flatten();
                match tls {
                    None => {
                        monoio::spawn(crate::proxy::serve(gen, stream, peer, None));
                    }
                    Some(cfg) => {
                        monoio::spawn(serve_tls(gen, cfg, stream, peer));
                    }
                }
            }
            Err(e) => {
                let fd_exhausted = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if fd_exhausted && !warned_fd {
                    log::warn!("shard {}: accept: {e}; backing off", shard.id);
                    warned_fd = true;
                }
                // Back off rather than spin on a condition that will not clear by itself.
                monoio::time::sleep(Duration::from_millis(if fd_exhausted { 50 } else { 5 })).await;
            }
        }
    }
}

/// Handshake on this shard, then the same connection loop as plain TCP.
async fn serve_tls(
    shard: Rc<Shard>,
    cfg: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let limit = shard.cfg.server.client_header_timeout;
    match crate::net::tls::accept(cfg, stream, limit).await {
        Ok((tls, info)) => crate::proxy::serve(shard, tls, peer, Some(Box::new(info))).await,
        Err(e) => {
            // `serve` (whose guard would decrement) never ran.
            shard.conns.set(shard.conns.get().saturating_sub(1));
            log::debug!("shard {}: TLS handshake with {peer} failed: {e}", shard.id);
        }
    }
}
