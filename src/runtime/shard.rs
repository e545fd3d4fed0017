//! One shard: the state a worker thread owns (upstream pools, balancers, counters) and its
//! accept and housekeeping loops. Everything here is single-threaded; only `Control` arrives from outside.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use monoio::net::{TcpListener, TcpStream};

use super::drain::Drain;
use crate::config::Config;
use crate::http::parse::HeadLimits;
use crate::upstream::UpstreamState;

/// Messages from the main thread to a shard.
#[derive(Debug)]
pub enum Control {
    /// Stop accepting, finish in-flight requests, exit.
    Shutdown,
    /// New TLS configs (SIGHUP certificate reload), one per listener in `listen` order (`None`
    /// for plain ones). Used for new handshakes; open connections keep the session they have.
    ReloadTls(Vec<Option<Arc<rustls::ServerConfig>>>),
}

/// Shard-local counters: plain cells, no atomics on the request path.
#[derive(Default)]
pub struct ShardStats {
    pub accepted: Cell<u64>,
    pub requests: Cell<u64>,
    pub errors: Cell<u64>,
}

pub struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub upstreams: Vec<UpstreamState>,
    pub limits: HeadLimits,
    pub drain: Drain,
    /// Open client connections.
    pub conns: Cell<usize>,
    pub stats: ShardStats,
    /// This shard's plugin instances (built once per shard) and limit state.
    pub plugins: crate::plugin::ShardPlugins,
    /// Per listener, the TLS config new handshakes use; swapped by `Control::ReloadTls`.
    pub tls: RefCell<Vec<Option<Arc<rustls::ServerConfig>>>>,
}

const TICK: Duration = Duration::from_millis(50);

impl Shard {
    pub fn new(id: usize, cfg: Arc<Config>) -> Shard {
        Shard {
            id,
            tls: RefCell::new(
                cfg.server
                    .tls
                    .iter()
                    .map(|t| t.as_ref().map(|t| t.config.clone()))
                    .collect(),
            ),
            upstreams: cfg.upstreams.iter().map(UpstreamState::new).collect(),
            plugins: crate::plugin::ShardPlugins::for_shard(&cfg.plugins, id),
            limits: HeadLimits {
                max_header_bytes: cfg.server.max_header_bytes,
                max_request_line_bytes: cfg.server.max_request_line_bytes,
            },
            cfg,
            drain: Drain::default(),
            conns: Cell::new(0),
            stats: ShardStats::default(),
        }
    }
}

/// The shard's main future: accept loops plus the control/housekeeping tick.
pub async fn run(shard: Rc<Shard>, listeners: Vec<StdListener>, control: Receiver<Control>) {
    monoio::spawn(crate::plugin::chain::sync_loop(shard.clone()));
    for (index, l) in listeners.into_iter().enumerate() {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(shard.clone(), l, index));
            }
            Err(e) => log::error!("shard {}: cannot adopt listener: {e}", shard.id),
        }
    }
    let mut last_sweep = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        monoio::time::sleep(TICK).await;
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
                Err(TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        if let Some(deadline) = drain_deadline {
            if shard.conns.get() == 0 || now >= deadline {
                return;
            }
        }
        if now.duration_since(last_sweep) >= Duration::from_secs(1) {
            last_sweep = now;
            for u in &shard.upstreams {
                u.sweep(now);
            }
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, index: usize) {
    let max = shard.cfg.server.max_connections;
    let mut warned_fd = false;
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shard.drain.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if shard.conns.get() >= max {
                    // Over the cap: close at once so existing connections keep their share.
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                shard.conns.set(shard.conns.get() + 1);
                shard.stats.accepted.set(shard.stats.accepted.get() + 1);
                // Looked up per connection so a reload applies to the next handshake.
                let tls = shard.tls.borrow().get(index).cloned().flatten();
                match tls {
                    None => {
                        monoio::spawn(crate::proxy::serve(shard.clone(), stream, peer, None));
                    }
                    Some(cfg) => {
                        monoio::spawn(serve_tls(shard.clone(), cfg, stream, peer));
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
