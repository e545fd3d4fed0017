//! Thread per core: binds listeners, starts one pinned monoio runtime per shard, and turns
//! SIGTERM/SIGINT into a drain and SIGHUP into a certificate reload over each shard's control
//! channel. The only code that spans shards.

pub mod shard;
pub mod wake;

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::config::{Config, DriverKind, RingOpts, TaskRun};
use crate::proxy::shard::Shard;
use shard::Control;

/// Runs the gateway until a termination signal; returns once shards have drained.
pub fn run(cfg: Config) -> Result<(), String> {
    let cfg = crate::admin::startup_config(cfg)?;
    // Signals are claimed before anything serves, so an early SIGTERM still drains cleanly.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let workers = cfg.server.workers;
    let bound =
        crate::net::listen::bind_all(&cfg.server.listen, workers).map_err(|e| e.to_string())?;
    for a in &bound.addrs {
        log::info!("listening on {a} ({workers} shards)");
    }
    if let Some(addr) = cfg.demo {
        crate::demo::start(addr, cfg.server.ring()).map_err(|e| format!("demo upstream: {e}"))?;
    }
    if let Some(al) = &cfg.access_log {
        crate::accesslog::start(al)?;
    }
    let cfg = Arc::new(cfg);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(workers);
    let mut links = Vec::with_capacity(workers);
    for (id, listeners) in bound.per_shard.into_iter().enumerate() {
        let cpu = match &cfg.server.cpu_affinity {
            Some(list) => Some(list[id % list.len()]),
            None if !cores.is_empty() => Some(cores[id % cores.len()].id),
            None => None,
        };
        let (tx, rx) = unbounded();
        let (nudge, end) = match wake::pair() {
            Ok((n, e)) => (Some(n), Some(e)),
            Err(e) => {
                log::warn!("shard {id}: no control wake-up ({e}); messages wait for its tick");
                (None, None)
            }
        };
        links.push(wake::ShardLink::new(tx, nudge));
        handles.push(spawn_shard(id, cpu, cfg.clone(), listeners, (rx, end))?);
    }
    let plane = crate::admin::Plane::new(cfg.clone(), links.clone());
    crate::admin::start_status(&plane)?;
    crate::admin::start_admin(&plane)?;
    crate::health::start(plane.clone())?;
    for sig in signals.forever() {
        if sig == SIGUSR1 {
            crate::accesslog::reopen();
            continue;
        }
        if sig == SIGHUP {
            reload_tls(&cfg, &links);
            plane.reload_file();
            continue;
        }
        log::info!(
            "signal {sig}: draining (up to {:?})",
            cfg.server.shutdown_timeout
        );
        break;
    }
    shutdown(&links, handles, cfg.server.shutdown_timeout);
    crate::accesslog::sync(Duration::from_secs(2));
    Ok(())
}

/// Re-reads every TLS listener's certificate files (here, on the main thread) and hands the new
/// configs to the shards. All or nothing: one bad file keeps every listener on its current
/// certificates. The ticketer is carried over, so tickets issued before the reload still resume.
fn reload_tls(cfg: &Config, links: &[wake::ShardLink]) {
    let mut configs = Vec::with_capacity(cfg.server.tls.len());
    for (i, t) in cfg.server.tls.iter().enumerate() {
        let Some(t) = t else {
            configs.push(None);
            continue;
        };
        match crate::net::tls::build_server_config(&t.spec, t.config.ticketer.clone()) {
            Ok(c) => configs.push(Some(c)),
            Err(e) => {
                log::error!("SIGHUP: certificate reload failed for server.listen[{i}], keeping the current certificates: {e}");
                return;
            }
        }
    }
    let n = configs.iter().filter(|c| c.is_some()).count();
    if n == 0 {
        log::info!("SIGHUP: no TLS listeners, nothing to reload");
        return;
    }
    for link in links {
        link.send(Control::ReloadTls(configs.clone()));
    }
    log::info!("SIGHUP: TLS certificates reloaded for {n} listener(s)");
}

fn shutdown(links: &[wake::ShardLink], handles: Vec<JoinHandle<()>>, timeout: Duration) {
    for link in links {
        link.send(Control::Shutdown);
    }
    // Shards stop themselves at the drain deadline; this is a backstop on top of it.
    let deadline = Instant::now() + timeout + Duration::from_secs(1);
    while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stuck = handles.iter().filter(|h| !h.is_finished()).count();
    if stuck > 0 {
        log::warn!("{stuck} shard(s) did not finish within the shutdown timeout; exiting anyway");
    } else {
        log::info!("all shards drained");
    }
}

fn spawn_shard(
    id: usize,
    cpu: Option<usize>,
    cfg: Arc<Config>,
    listeners: Vec<StdListener>,
    control: (Receiver<Control>, Option<std::os::unix::net::UnixStream>),
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
            let ring = cfg.server.ring();
            let main = move |driver_name: &str| {
                log::info!("shard {id} started: cpu {cpu_text}, driver {driver_name}");
                let shard = Rc::new(Shard::new(id, cfg));
                shard::run(shard, listeners, control.0, control.1)
            };
            block_on(ring, main);
        })
        .map_err(|e| format!("cannot start shard {id}: {e}"))
}

/// Builds the runtime `ring` asks for and runs `main` on it. io_uring is preferred; where the
/// kernel refuses it (old kernel, seccomp, io_uring_disabled) the epoll driver takes over, with
/// one log line. `main` gets the driver's name, e.g. `io_uring (taskrun coop)` or `legacy`.
pub fn block_on<F, Fut>(ring: RingOpts, main: F)
where
    F: FnOnce(&str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if ring.driver != DriverKind::Legacy {
        let mut taskrun = ring.taskrun;
        let built = loop {
            match uring_runtime(ring.entries, taskrun) {
                Ok(rt) => break Ok(rt),
                // Setup flags newer than the kernel: say so once and use the kernel's default.
                Err(e) if taskrun != TaskRun::Kernel => {
                    static ONCE: std::sync::Once = std::sync::Once::new();
                    ONCE.call_once(|| {
                        log::warn!(
                            "io_uring_taskrun = {:?} refused by the kernel ({e}); using \"kernel\"",
                            taskrun.name()
                        )
                    });
                    taskrun = TaskRun::Kernel;
                }
                Err(e) => break Err(e),
            }
        };
        match built {
            Ok(mut rt) => {
                let name = format!("io_uring (taskrun {})", taskrun.name());
                rt.block_on(main(&name));
                return;
            }
            Err(e) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    log::warn!(
                        "io_uring unavailable ({e}); falling back to the legacy epoll driver"
                    )
                });
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(main("legacy")),
        Err(e) => log::error!("cannot build any runtime: {e}"),
    }
}

/// An io_uring runtime whose ring runs completion work as `taskrun` says. A shard submits
/// only from its own thread, which is what SINGLE_ISSUER promises the kernel; without
/// COOP_TASKRUN every completion interrupts the shard to run its task work (measured: ~20%
/// more requests/s per core with it, perf/RESULTS.md).
fn uring_runtime(
    entries: u32,
    taskrun: TaskRun,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    if taskrun != TaskRun::Kernel {
        urb.setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer();
    }
    if taskrun == TaskRun::Defer {
        urb.setup_defer_taskrun();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .uring_builder(urb)
        .enable_timer()
        .build()
}
