//! Start-up: from a loaded config to a serving gateway — admin state, listeners (new, or a
//! predecessor's on `--upgrade`), demo upstream, access log, shards, then the status/admin/health
//! upgrade and OCSP threads — and the signal loop until drained. The only module that wires services.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::built::Built;
use crate::runtime::plane::Plane;
use crate::upgrade::successor::Inherited;
use crate::upgrade::{Kind, Offer, SocketInfo};

/// Set when a successor took the sockets over; the SIGTERM that follows drains as a handover.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);
/// On a handover, how long an idle keep-alive connection waits for one more request.
const HANDOVER_LINGER: Duration = Duration::from_secs(2);

/// Runs the gateway until a termination signal; returns once shards have drained. With
/// `upgrade`, takes the listening sockets and TLS ticket keys of the process running on the
/// same upgrade socket, and tells it to drain once this one serves.
pub fn run(built: Built, upgrade: bool) -> Result<(), String> {
    // Everything that can refuse the new config runs before the running process is asked.
    let (built, etcd) = match built.cfg.config_source {
        Some(_) => {
            let (b, f) = crate::etcd::startup(built)?;
            (b, Some(f))
        }
        None => (crate::admin::startup_config(built)?, None),
    };
    crate::nofile::raise_and_check(&built.cfg);
    // Signals are claimed before anything serves, so an early SIGTERM still drains cleanly.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut inherited = if upgrade {
        Some(take_over(&built)?)
    } else {
        None
    };
    let cfg = &built.cfg;
    let workers = cfg.server.workers;
    let bound = crate::net::listen::bind_inheriting(&cfg.server.listen, workers, &mut |i, addr| {
        inherited
            .as_mut()
            .map_or_else(Vec::new, |h| h.take_proxy(i, addr))
    })
    .map_err(|e| e.to_string())?;
    for a in &bound.addrs {
        log::info!("listening on {a} ({workers} shards)");
    }
    let mut kept: Vec<(Kind, std::net::SocketAddr, TcpListener)> = Vec::new();
    if let Some(addr) = cfg.demo {
        let from = take(&mut inherited, Kind::Demo, addr);
        let l = crate::demo::start(addr, cfg.server.ring(), from)
            .map_err(|e| format!("demo upstream: {e}"))?;
        kept.push((Kind::Demo, addr, l));
    }
    if let Some(al) = &cfg.access_log {
        crate::accesslog::start(al)?;
    }
    let built = Arc::new(built);
    let cfg = &built.cfg;
    let mut shards = crate::runtime::start(built.clone(), bound.per_shard)?;
    if let Some(ports) = shards.fleet.take() {
        crate::fleet::start(ports)?;
    }
    if let Some(ports) = shards.tier.take() {
        crate::fleet::tier::start(ports)?;
    }
    let ops = crate::admin::Ops::new(shards.plane.clone());
    if let Some(f) = etcd {
        f.run(&ops);
    }
    if let Some(st) = &cfg.status {
        let from = take(&mut inherited, Kind::Status, st.listen);
        if let Some(l) = crate::admin::start_status(&shards.plane, from)? {
            kept.push((Kind::Status, st.listen, l));
        }
    }
    if let Some(ad) = &cfg.admin {
        let from = take(&mut inherited, Kind::Admin, ad.listen);
        if let Some(l) = crate::admin::start_admin(&ops, from)? {
            kept.push((Kind::Admin, ad.listen, l));
        }
    }
    crate::active_health::start(shards.plane.clone())?;
    crate::ocsp::start(shards.plane.clone(), built.clone())?;
    if let Some(h) = inherited {
        // Every shard's loop runs (it answers its control channel) before the old one stops.
        wait_shards(&shards.plane)?;
        let gone = h.untaken();
        if !gone.is_empty() {
            log::warn!("upgrade: not taken over (the new config does not listen there): {gone:?}");
        }
        let pid = h.confirm()?;
        log::info!("upgrade: serving; the old process (pid {pid}) stops accepting and drains");
        crate::upgrade::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        crate::upgrade::notify("READY=1");
    }
    if let Some(path) = upgrade_socket(cfg) {
        let plane = shards.plane.clone();
        let tickets = built.tickets.clone();
        let offer = move || offer(&plane, &kept, tickets.as_deref());
        let took_over = |pid: u32| {
            log::info!("upgrade: process {pid} serves on the handed-over sockets");
            crate::admin::http::stop_accepting();
            HANDED_OVER.store(true, Ordering::SeqCst);
            let _ = signal_hook::low_level::raise(SIGTERM);
        };
        // Serving matters more than upgrading: a socket that cannot be made is logged only.
        if let Err(e) = crate::upgrade::listen(&path, offer, took_over) {
            log::error!("{e}; binary upgrades are off for this process");
        }
    }
    for sig in signals.forever() {
        if sig == SIGUSR1 {
            crate::accesslog::reopen();
            continue;
        }
        if sig == SIGHUP {
            shards.reload_tls(&built);
            ops.reload_file();
            continue;
        }
        if sig == SIGUSR2 {
            match &cfg.source {
                Some(p) => crate::upgrade::spawn_successor(p),
                None => log::warn!("SIGUSR2: no config file to upgrade with"),
            }
            continue;
        }
        let timeout = cfg.server.shutdown_timeout;
        if sig == SIGTERM && HANDED_OVER.load(Ordering::SeqCst) {
            log::info!("upgrade: handed over; draining (up to {timeout:?})");
            shards.hand_over(timeout, HANDOVER_LINGER.min(timeout));
        } else {
            log::info!("signal {sig}: draining (up to {timeout:?})");
            shards.shutdown(timeout);
        }
        break;
    }
    crate::accesslog::sync(Duration::from_secs(2));
    Ok(())
}

/// `--upgrade`: the running process's sockets and ticket keys, from the configured upgrade socket.
fn take_over(built: &Built) -> Result<Inherited, String> {
    let path = upgrade_socket(&built.cfg).ok_or_else(|| {
        "--upgrade needs a config file or server.upgrade_socket to find the running process"
            .to_string()
    })?;
    let h = crate::upgrade::successor::request(&path)?;
    if let (Some(keys), Some(t)) = (h.tickets.clone(), &built.tickets) {
        t.import(keys)?;
    }
    log::info!(
        "upgrade: received the sockets of pid {} over {}",
        h.pid,
        path.display()
    );
    Ok(h)
}

/// `[server] upgrade_socket`, else `$RUNTIME_DIRECTORY/upgrade.sock` under systemd
/// (`RuntimeDirectory=`: /etc is read-only there), else beside the config file.
fn upgrade_socket(cfg: &crate::config::Config) -> Option<std::path::PathBuf> {
    if let Some(p) = &cfg.server.upgrade_socket {
        return Some(p.clone());
    }
    match std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by ':'; the first is this unit's own.
        Some(d) if !d.is_empty() => {
            let first = d
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            Some(std::path::Path::new(&first).join("upgrade.sock"))
        }
        _ => cfg.upgrade_socket(),
    }
}

fn wait_shards(plane: &Plane) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while plane.gather().len() < plane.shards() {
        if std::time::Instant::now() >= deadline {
            return Err(
                "upgrade: shards did not start within 10 s; the old process keeps serving".into(),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn take(h: &mut Option<Inherited>, kind: Kind, addr: std::net::SocketAddr) -> Option<TcpListener> {
    h.as_mut().and_then(|h| h.take(kind, addr))
}

/// What a successor gets: every shard's sockets (as they are now), the status/admin/demo
/// listeners and the ticket keys.
fn offer(
    plane: &Plane,
    kept: &[(Kind, std::net::SocketAddr, TcpListener)],
    tickets: Option<&crate::net::tickets::Tickets>,
) -> Offer {
    let mut sockets: Vec<(SocketInfo, OwnedFd)> = Vec::new();
    for c in crate::runtime::listener_copies(plane) {
        let Some(real) = local_addr(&c.fd) else {
            continue;
        };
        let index = (c.index != usize::MAX).then_some(c.index);
        sockets.push((
            SocketInfo {
                kind: Kind::Proxy,
                index,
                addr: c.addr,
                real,
            },
            c.fd,
        ));
    }
    for (kind, addr, l) in kept {
        let (Ok(real), Ok(copy)) = (l.local_addr(), l.try_clone()) else {
            continue;
        };
        let info = SocketInfo {
            kind: *kind,
            index: None,
            addr: *addr,
            real,
        };
        sockets.push((info, OwnedFd::from(copy)));
    }
    Offer {
        sockets,
        tickets: tickets.map(|t| t.export()),
    }
}

fn local_addr(fd: &OwnedFd) -> Option<std::net::SocketAddr> {
    socket2::SockRef::from(fd).local_addr().ok()?.as_socket()
}
