//! Shard mechanics: one pinned monoio runtime per shard, their control channels, the node's mesh
//! and the plane that swaps generations across them. Must not start admin, status, health,
//! demo or log services: start-up (server.rs) does.

pub mod control;
pub mod plane;
pub mod quiet;
pub mod shard;
pub mod wake;

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};

use crate::built::Built;
use crate::cache::tier::{TierLink, TierReq, PUT_QUEUE};
use crate::cache::Mail;
use crate::limit::fleet::{Grant, Uplink};
use crate::limit::sync::Report;
use crate::net::ring::block_on;
use crate::proxy::shard::{Lanes, Shard};
use crate::util::mesh::{Lane, Mesh, Wake};
use control::Control;
use plane::Plane;
use wake::Doorbell;

/// The running shards: the plane that reaches them and their threads.
pub struct Shards {
    pub plane: Arc<Plane>,
    handles: Vec<JoinHandle<()>>,
    /// The fleet thread's ends: shards' uplinks in, grants out (start-up hands them over).
    pub fleet: Option<FleetPorts>,
    /// The shared cache tier thread's ends (start-up hands them over).
    pub tier: Option<TierPorts>,
}

/// What the node's tier thread (shared cache tier) needs: shards' lookups, purges and writes in,
/// the cache lane's inlet for answers and other nodes' purges out.
pub struct TierPorts {
    pub mail: crate::util::mesh::Inlet<Mail>,
    pub asks: tokio::sync::mpsc::UnboundedReceiver<TierReq>,
    pub puts: tokio::sync::mpsc::Receiver<TierReq>,
}

/// What the node's fleet thread (cluster-wide limits) needs to reach the shards.
pub struct FleetPorts {
    pub grants: crate::util::mesh::Inlet<Grant>,
    pub uplinks: Receiver<Uplink>,
}

/// What one shard thread is handed: its control channel, the doorbell every sender rings with
/// its socket end, and its ends of the node mesh's lanes.
struct Wiring {
    control: Receiver<Control>,
    wake: Option<std::os::unix::net::UnixStream>,
    bell: Arc<Doorbell>,
    limit: Lane<Report>,
    purge: Lane<Mail>,
    grant: Lane<Grant>,
    up: crossbeam_channel::Sender<Uplink>,
    tier: TierLink,
}

/// The plane's links to `workers` shards and each shard's wiring: one doorbell per shard, rung by
/// its control link and by every lane of the node's one mesh (one lane per kind of cross-core
/// mail). Adding a kind of mail is adding a lane here and a field to `proxy::shard::Lanes`.
fn wire(workers: usize) -> (Vec<wake::ShardLink>, Vec<Wiring>, FleetPorts, TierPorts) {
    let mut wakes = Vec::with_capacity(workers);
    let mut bells = Vec::with_capacity(workers);
    for id in 0..workers {
        let (nudge, end) = match wake::pair() {
            Ok((n, e)) => (Some(n), Some(e)),
            Err(e) => {
                log::warn!("shard {id}: no wake-up ({e}); messages wait for its tick");
                (None, None)
            }
        };
        wakes.push(end);
        bells.push(Arc::new(Doorbell::new(nudge)));
    }
    let mesh = Mesh::new(bells.iter().map(|b| b.clone() as Arc<dyn Wake>).collect());
    // Only shards send on the limit lane (its inlet is dropped); the fleet thread sends grants
    // through the grant lane's inlet and hears shards on `up`; the tier thread answers lookups
    // (and passes on other nodes' purges) through the cache lane's inlet.
    let (limit, _) = mesh.lane::<Report>();
    let (purge, mail) = mesh.lane::<Mail>();
    let (asks_tx, asks) = tokio::sync::mpsc::unbounded_channel();
    let (puts_tx, puts) = tokio::sync::mpsc::channel(PUT_QUEUE);
    let link = TierLink {
        asks: asks_tx,
        puts: puts_tx,
    };
    let (grant, grants) = mesh.lane::<Grant>();
    let (up, uplinks) = unbounded();
    let mut links = Vec::with_capacity(workers);
    let mut wiring = Vec::with_capacity(workers);
    for ((((wake, bell), limit), purge), grant) in wakes
        .into_iter()
        .zip(bells)
        .zip(limit)
        .zip(purge)
        .zip(grant)
    {
        let (tx, control) = unbounded();
        links.push(wake::ShardLink::new(tx, bell.clone()));
        wiring.push(Wiring {
            control,
            wake,
            bell,
            limit,
            purge,
            grant,
            up: up.clone(),
            tier: link.clone(),
        });
    }
    let tier = TierPorts { mail, asks, puts };
    (links, wiring, FleetPorts { grants, uplinks }, tier)
}

/// Starts one pinned shard thread per entry of `per_shard` (its listeners, from
/// `net::listen::bind_all`), each with its control channel and wake-up, the node's mesh between
/// them, and the plane over them.
pub fn start(cfg: Arc<Built>, per_shard: Vec<Vec<(usize, StdListener)>>) -> Result<Shards, String> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (links, wiring, fleet, tier) = wire(per_shard.len());
    let mut handles = Vec::with_capacity(per_shard.len());
    for (id, (listeners, w)) in per_shard.into_iter().zip(wiring).enumerate() {
        let cpu = match &cfg.cfg.server.cpu_affinity {
            Some(list) => Some(list[id % list.len()]),
            None if !cores.is_empty() => Some(cores[id % cores.len()].id),
            None => None,
        };
        handles.push(spawn_shard(id, cpu, cfg.clone(), listeners, w)?);
    }
    Ok(Shards {
        plane: Plane::new(cfg, links),
        handles,
        fleet: Some(fleet),
        tier: Some(tier),
    })
}

impl Shards {
    /// Tells every shard to drain and waits for them, up to `timeout` (plus a second).
    pub fn shutdown(self, timeout: Duration) {
        self.plane.send_all(|| Control::Shutdown);
        self.wait_drained(timeout);
    }

    /// A binary upgrade's successor serves on the same sockets: every shard stops accepting and
    /// drains, idle keep-alive connections waiting up to `linger` for one more request.
    pub fn hand_over(self, timeout: Duration, linger: Duration) {
        self.plane.send_all(|| Control::HandOver { linger });
        self.wait_drained(timeout);
    }

    fn wait_drained(self, timeout: Duration) {
        // Shards stop themselves at the drain deadline; this is a backstop on top of it.
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        while Instant::now() < deadline && !self.handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stuck = self.handles.iter().filter(|h| !h.is_finished()).count();
        if stuck > 0 {
            log::warn!(
                "{stuck} shard(s) did not finish within the shutdown timeout; exiting anyway"
            );
        } else {
            log::info!("all shards drained");
        }
    }

    /// Re-reads every TLS listener's certificate files (here, on the main thread) and hands the new
    /// configs to the shards. All or nothing: one bad file keeps every listener on its current
    /// certificates. The ticketer is carried over, so tickets issued before the reload still resume.
    pub fn reload_tls(&self, built: &Built) {
        match rebuild_tls(&self.plane, built) {
            Ok(0) => log::info!("SIGHUP: no TLS listeners, nothing to reload"),
            Ok(n) => log::info!("SIGHUP: TLS certificates reloaded for {n} listener(s)"),
            Err(e) => log::error!(
                "SIGHUP: certificate reload failed for {e}; keeping the current certificates"
            ),
        }
    }
}

/// Builds every TLS listener's rustls config again (certificate files, OCSP staples) on the
/// calling control thread and hands them to the shards; returns how many listeners. All or
/// nothing: an error (naming the listener) leaves every shard on its current configs.
pub fn rebuild_tls(plane: &Plane, built: &Built) -> Result<usize, String> {
    let cfg = &built.cfg;
    let mut configs = Vec::with_capacity(cfg.server.tls.len());
    for (i, (spec, cur)) in cfg.server.tls.iter().zip(&built.listener_tls).enumerate() {
        let (Some(spec), Some(cur)) = (spec, cur) else {
            configs.push(None);
            continue;
        };
        let c = crate::net::tls::build_server_config(spec, cur.ticketer.clone())
            .map_err(|e| format!("server.listen[{i}]: {e}"))?;
        configs.push(Some(c));
    }
    let n = configs.iter().filter(|c| c.is_some()).count();
    if n > 0 {
        plane.send_all(|| Control::ReloadTls(configs.clone()));
    }
    Ok(n)
}

/// Copies of every shard's listening sockets (for a binary upgrade's successor), each shard
/// asked over its control channel; a shard that does not answer within 2 s is left out (logged).
pub fn listener_copies(plane: &Plane) -> Vec<control::ListenerCopy> {
    let (tx, rx) = unbounded();
    let asked = plane.send_all(|| Control::Sockets(tx.clone()));
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    for _ in 0..asked {
        match rx.recv_deadline(deadline) {
            Ok(v) => out.extend(v),
            Err(_) => {
                log::error!("upgrade: a shard did not hand over its sockets");
                break;
            }
        }
    }
    out
}

fn spawn_shard(
    id: usize,
    cpu: Option<usize>,
    cfg: Arc<Built>,
    listeners: Vec<(usize, StdListener)>,
    w: Wiring,
) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(format!("ringway-shard-{id}"))
        .spawn(move || {
            let pinned =
                cpu.filter(|&c| core_affinity::set_for_current(core_affinity::CoreId { id: c }));
            if cpu.is_some() && pinned.is_none() {
                log::warn!("shard {id}: could not pin to cpu {cpu:?}; running unpinned");
            }
            let cpu_text = pinned.map_or("none".to_string(), |c| c.to_string());
            let ring = cfg.cfg.server.ring();
            let main = move |driver_name: &str| {
                log::info!("shard {id} started: cpu {cpu_text}, driver {driver_name}");
                let shard = Rc::new(Shard::new(
                    id,
                    cfg,
                    Lanes::new(w.limit, w.purge, w.grant, Some(w.up), Some(w.tier), true),
                ));
                shard::run(shard, listeners, w.control, w.wake, w.bell)
            };
            block_on(ring, main);
        })
        .map_err(|e| format!("cannot start shard {id}: {e}"))
}
