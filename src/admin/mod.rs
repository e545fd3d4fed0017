//! The status listener (`/metrics`, `/status`, `/healthz`) and the admin API listener, each on
//! its own thread off the shards' event loops, plus the control plane they share. Must not be
//! reached from the request path: shards only ever see what arrives on their control channels.

pub mod api;
pub mod http;
pub mod plane;
pub mod purge;
pub mod store;

use std::net::TcpListener;
use std::sync::Arc;

use http::{Request, Response};
pub use plane::Plane;

/// Binds and starts the status listener if `[status]` is configured (after the shards'
/// "listening on" lines, which tests read first).
pub fn start_status(plane: &Arc<Plane>) -> Result<(), String> {
    let Some(st) = plane.config().status.clone() else {
        return Ok(());
    };
    let l = TcpListener::bind(st.listen)
        .map_err(|e| format!("status: cannot listen on {}: {e}", st.listen))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let p = plane.clone();
    http::spawn(l, "status", Arc::new(move |r: &Request| status(&p, r)))
        .map_err(|e| format!("status: cannot start thread: {e}"))?;
    log::info!("status listening on {addr}");
    Ok(())
}

/// A config built from the admin document carries the file it came from, like a loaded one.
pub fn with_source(mut cfg: crate::config::Config, plane: &Plane) -> crate::config::Config {
    cfg.source = plane.config().source.clone();
    cfg
}

/// The state file the admin API persists to, if it has one.
fn state_file(cfg: &crate::config::Config) -> Option<std::path::PathBuf> {
    let admin = cfg.admin.as_ref()?;
    admin
        .state_file
        .clone()
        .or_else(|| cfg.source.as_deref().map(store::default_state_file))
}

/// At start-up: with the admin API on and a state file (or its journal) present, the file's
/// routes, upstreams, consumers and global rules are replaced by the state's (changes survive
/// restarts).
pub fn startup_config(cfg: crate::config::Config) -> Result<crate::config::Config, String> {
    let (Some(src), Some(state)) = (cfg.source.clone(), state_file(&cfg)) else {
        return Ok(cfg);
    };
    if !state.exists() && !store::journal_file(&state).exists() {
        return Ok(cfg);
    }
    let mut built = store::Store::open(&src, Some(state.clone()))
        .and_then(|s| s.build())
        .map_err(|e| format!("admin state {}: {e}", state.display()))?;
    built.source = Some(src);
    log::info!("admin state loaded from {}", state.display());
    Ok(built)
}

/// Binds and starts the admin API listener if `[admin]` is configured.
pub fn start_admin(plane: &Arc<Plane>) -> Result<(), String> {
    let cfg = plane.config();
    let Some(admin) = cfg.admin.clone() else {
        return Ok(());
    };
    let store = match &cfg.source {
        Some(src) => {
            Some(store::Store::open(src, state_file(&cfg)).map_err(|e| format!("admin: {e}"))?)
        }
        None => None,
    };
    *plane.store.lock().unwrap_or_else(|e| e.into_inner()) = store;
    let key = match &admin.key {
        Some(k) => k.clone(),
        None => {
            let k = random_key()?;
            // Logged once so an operator can pick it up; set admin.key to choose your own.
            log::warn!("admin.key is not set; generated admin API key: {k}");
            k
        }
    };
    let keys = api::Keys {
        admin: key,
        viewer: admin.viewer_key.clone(),
    };
    let l = TcpListener::bind(admin.listen)
        .map_err(|e| format!("admin: cannot listen on {}: {e}", admin.listen))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let p = plane.clone();
    http::spawn(
        l,
        "admin",
        Arc::new(move |r: &Request| api::handle(&p, &admin, &keys, r)),
    )
    .map_err(|e| format!("admin: cannot start thread: {e}"))?;
    log::info!("admin listening on {addr}");
    Ok(())
}

fn random_key() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("admin: cannot generate a key: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn status(plane: &Plane, r: &Request) -> Response {
    if r.method != "GET" && r.method != "HEAD" {
        return Response::error(405, "only GET");
    }
    match r.path.as_str() {
        "/metrics" => {
            let snaps = plane.gather();
            let text = crate::metrics::expose::prometheus(&plane.info(), &snaps);
            Response::text(200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        "/status" => {
            let snaps = plane.gather();
            Response::json(
                200,
                &crate::metrics::expose::status_json(&plane.info(), &snaps),
            )
        }
        "/healthz" => {
            // Healthy when every shard answers its control channel: a wedged event loop shows here.
            let n = plane.gather().len();
            if n == plane.shards() {
                Response::text(200, "text/plain", "ok\n")
            } else {
                Response::text(
                    503,
                    "text/plain",
                    format!("{n}/{} shards answering\n", plane.shards()),
                )
            }
        }
        _ => Response::error(404, "not found; try /metrics, /status or /healthz"),
    }
}
