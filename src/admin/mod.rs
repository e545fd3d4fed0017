//! The status listener (`/metrics`, `/status`, `/healthz`) and the admin API listener, each on
//! its own thread off the shards' event loops, and what they share with SIGHUP (`Ops`). Must not
//! be reached from the request path: shards only ever see what arrives on their control channels.

pub mod api;
pub mod change;
pub mod docs;
pub mod document;
pub mod http;
pub mod purge;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::built::Built;
use crate::runtime::plane::Plane;
use http::{Request, Response};

/// What the admin and status threads and the SIGHUP handler share: the runtime's plane and,
/// with the admin API on, its document (the file's collections overlaid by admin changes).
pub struct Ops {
    pub plane: Arc<Plane>,
    pub store: Mutex<Option<document::Document>>,
    /// Set when the configuration lives in etcd (src/etcd): admin writes go there instead.
    pub remote: std::sync::OnceLock<Arc<dyn Remote>>,
}

/// Where admin writes go when another store is the source of truth (etcd, src/etcd). The
/// node applies a write when its watch sees it, like every other node.
pub trait Remote: Send + Sync {
    /// Writes the changes (all or none) if every object is still at the mod revision this node
    /// last saw; returns the committed revision and whether this node applied it in time.
    /// `expected`: the first change's mod revision as the client last read it (`?mod_revision=`),
    /// instead of this node's.
    fn write(
        &self,
        changes: Vec<(document::Kind, String, Option<serde_json::Value>)>,
        expected: Option<i64>,
    ) -> Result<(i64, bool), RemoteError>;

    /// The object's mod revision as this node last saw it (0: not in the store).
    fn mod_revision(&self, kind: document::Kind, id: &str) -> i64;
}

pub enum RemoteError {
    /// Someone else changed one of the objects first (409).
    Conflict(String),
    /// The store is unreachable or slow (503).
    Unavailable(String),
}

impl Ops {
    pub fn new(plane: Arc<Plane>) -> Arc<Ops> {
        Arc::new(Ops {
            plane,
            store: Mutex::new(None),
            remote: std::sync::OnceLock::new(),
        })
    }

    /// SIGHUP: re-reads the config file (with the admin state overlaid when the admin API is
    /// on). Invalid -> logged, the current generation stays; valid -> the plane reloads it.
    pub fn reload_file(&self) {
        let plane = &self.plane;
        let Some(path) = plane.config().cfg.source.clone() else {
            return;
        };
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = match store.as_ref() {
            Some(s) => document::Document::open(&path, s.state_file.clone()).and_then(|fresh| {
                let c = fresh.build()?;
                *store = Some(fresh);
                Ok(c)
            }),
            None => crate::built::load(&path),
        };
        let new = match loaded {
            Ok(c) => with_source(c, plane),
            Err(e) => {
                plane.note_failure();
                log::error!(
                    "SIGHUP: {}: {e}; keeping config generation {}",
                    path.display(),
                    plane.generation()
                );
                return;
            }
        };
        match plane.reload(new) {
            Ok((generation, took)) => log::info!(
                "SIGHUP: config reloaded from {}: generation {generation} applied in {took:?}",
                path.display()
            ),
            Err(e) => log::error!(
                "SIGHUP: {e}; keeping config generation {}",
                plane.generation()
            ),
        }
    }
}

/// Binds and starts the status listener if `[status]` is configured (after the shards'
/// "listening on" lines, which tests read first).
pub fn start_status(plane: &Arc<Plane>) -> Result<(), String> {
    let Some(st) = plane.config().cfg.status.clone() else {
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
pub fn with_source(mut built: Built, plane: &Plane) -> Built {
    built.cfg.source = plane.config().cfg.source.clone();
    built
}

/// The state file the admin API persists to, if it has one.
fn state_file(cfg: &crate::config::Config) -> Option<std::path::PathBuf> {
    let admin = cfg.admin.as_ref()?;
    admin
        .state_file
        .clone()
        .or_else(|| cfg.source.as_deref().map(document::default_state_file))
}

/// At start-up: with the admin API on and a state file (or its journal) present, the file's
/// routes, upstreams, consumers and global rules are replaced by the state's (changes survive
/// restarts).
pub fn startup_config(file: Built) -> Result<Built, String> {
    if file.cfg.config_source.is_some() {
        return Ok(file);
    }
    let (Some(src), Some(state)) = (file.cfg.source.clone(), state_file(&file.cfg)) else {
        return Ok(file);
    };
    if !state.exists() && !document::journal_file(&state).exists() {
        return Ok(file);
    }
    let mut built = document::Document::open(&src, Some(state.clone()))
        .and_then(|s| s.build())
        .map_err(|e| format!("admin state {}: {e}", state.display()))?;
    built.cfg.source = Some(src);
    log::info!("admin state loaded from {}", state.display());
    Ok(built)
}

/// Binds and starts the admin API listener if `[admin]` is configured.
pub fn start_admin(ops: &Arc<Ops>) -> Result<(), String> {
    let built = ops.plane.config();
    let cfg = &built.cfg;
    let Some(admin) = cfg.admin.clone() else {
        return Ok(());
    };
    // With etcd as the source, the etcd thread owns the document (and no admin state file).
    if cfg.config_source.is_none() {
        let store = match &cfg.source {
            Some(src) => Some(
                document::Document::open(src, state_file(cfg))
                    .map_err(|e| format!("admin: {e}"))?,
            ),
            None => None,
        };
        *ops.store.lock().unwrap_or_else(|e| e.into_inner()) = store;
    }
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
    let o = ops.clone();
    http::spawn(
        l,
        "admin",
        Arc::new(move |r: &Request| api::handle(&o, &admin, &keys, r)),
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
