//! Start-up: from a loaded config to a serving gateway — admin state, listeners, demo upstream,
//! access log, shards, then the status/admin/health threads — and the signal loop until drained.
//! The only module that wires services together; nothing below it starts threads of others.

use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::built::Built;

/// Runs the gateway until a termination signal; returns once shards have drained.
pub fn run(built: Built) -> Result<(), String> {
    let (built, etcd) = match built.cfg.config_source {
        Some(_) => {
            let (b, f) = crate::etcd::startup(built)?;
            (b, Some(f))
        }
        None => (crate::admin::startup_config(built)?, None),
    };
    let cfg = &built.cfg;
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
    let built = Arc::new(built);
    let cfg = &built.cfg;
    let mut shards = crate::runtime::start(built.clone(), bound.per_shard)?;
    if let Some(ports) = shards.fleet.take() {
        crate::fleet::start(ports)?;
    }
    let ops = crate::admin::Ops::new(shards.plane.clone());
    if let Some(f) = etcd {
        f.run(&ops);
    }
    crate::admin::start_status(&shards.plane)?;
    crate::admin::start_admin(&ops)?;
    crate::active_health::start(shards.plane.clone())?;
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
        log::info!(
            "signal {sig}: draining (up to {:?})",
            cfg.server.shutdown_timeout
        );
        break;
    }
    shards.shutdown(cfg.server.shutdown_timeout);
    crate::accesslog::sync(Duration::from_secs(2));
    Ok(())
}
