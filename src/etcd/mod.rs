//! `[config_source] etcd`: routes, upstreams, consumers and global rules from etcd for a fleet.
//! Start-up read (or the saved last good configuration), then one watch per node on the
//! `ringway-etcd` control thread (its own tokio runtime); admin writes go to etcd with
//! compare-and-swap. Shards only ever see generations through the plane.

pub mod client;
pub mod keys;
mod startup;
pub mod sync;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin::document::{Document, Kind};
use crate::admin::{Ops, Remote, RemoteError};
use crate::built::Built;
use crate::config::source::EtcdSource;
use sync::{Node, Shared};

/// How long an admin write waits for this node to apply what it committed.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The saved last good configuration: `saved_file`, or `<admin.state_file>.etcd.json` when that
/// is set, else `<config file>.etcd.json`.
pub fn saved_file(cfg: &crate::config::Config, src: &EtcdSource) -> Option<PathBuf> {
    if let Some(p) = &src.saved_file {
        return Some(p.clone());
    }
    let explicit = cfg.admin.as_ref().and_then(|a| a.state_file.clone());
    let beside = explicit.or_else(|| cfg.source.clone())?;
    let mut name = beside.file_name()?.to_os_string();
    name.push(".etcd.json");
    Some(beside.with_file_name(name))
}

/// What the start-up read left for `Fleet::run`.
pub struct Fleet {
    src: EtcdSource,
    doc: Document,
    file_sets: sync::Sets,
    refused: BTreeMap<(Kind, String), Option<Value>>,
    bad_keys: usize,
    from_saved: bool,
    /// The thread, waiting for the plane and the admin store.
    start: mpsc::Sender<Node>,
    runtime: tokio::runtime::Handle,
}

enum First {
    /// The client, the keys, their revision, how long connecting and reading took.
    Read(Box<etcd_client::Client>, Vec<client::Kv>, i64, Duration),
    Unreachable(String),
}

/// Reads etcd (or, when it cannot be reached, the saved configuration) and builds the first
/// generation. With neither: waits up to `startup_wait`, then fails with a clear error.
pub fn startup(file: Built) -> Result<(Built, Fleet), String> {
    let cfg = &file.cfg;
    let src = cfg
        .config_source
        .clone()
        .ok_or("config_source is not set")?;
    let path = cfg
        .source
        .clone()
        .ok_or("config_source needs a config file (ringway run -c FILE)")?;
    let saved =
        saved_file(cfg, &src).ok_or("config_source: no place for the saved configuration")?;
    let has_saved = saved.exists() || crate::admin::document::journal_file(&saved).exists();
    let (first_tx, first_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel::<Node>();
    let (rt_tx, rt_rx) = mpsc::channel();
    let thread_src = src.clone();
    std::thread::Builder::new()
        .name("ringway-etcd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = first_tx.send(First::Unreachable(format!(
                        "cannot start the etcd thread's runtime: {e}"
                    )));
                    return;
                }
            };
            let _ = rt_tx.send(rt.handle().clone());
            let first = rt.block_on(first_read(&thread_src, has_saved));
            let (client, rev) = match &first {
                First::Read(c, _, rev, _) => (Some((**c).clone()), *rev),
                First::Unreachable(_) => (None, 0),
            };
            if first_tx.send(first).is_err() {
                return;
            }
            // Waits for the shards to run; gone when start-up failed.
            let Ok(node) = start_rx.recv() else { return };
            rt.block_on(watch::follow(node, thread_src, client, rev));
        })
        .map_err(|e| format!("cannot start the etcd thread: {e}"))?;
    let runtime = rt_rx
        .recv()
        .map_err(|_| "the etcd thread did not start".to_string())?;
    let first = first_rx
        .recv()
        .map_err(|_| "the etcd thread ended during the start-up read".to_string())?;
    let mut doc = Document::open(&path, None).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_sets = doc.sets.clone();
    let mut refused_at_start = (BTreeMap::new(), 0);
    let from_saved = matches!(first, First::Unreachable(_));
    let built = match first {
        First::Read(_, kvs, rev, read) => {
            let t0 = Instant::now();
            let n = kvs.len();
            let (objects, bad) = parse_all(&src.prefix, kvs, rev);
            let (built, r) = startup::startup_build(&mut doc, objects, &file_sets, rev)?;
            log::info!(
                "config from etcd {:?} {}/ at revision {rev}: {n} key(s), {} refused (read in {read:?}, built in {:?})",
                src.endpoints,
                src.prefix,
                r.len() + bad,
                t0.elapsed()
            );
            doc.state_file = Some(saved.clone());
            refused_at_start = (r, bad);
            built
        }
        First::Unreachable(e) if has_saved => {
            doc = Document::open(&path, Some(saved.clone()))
                .map_err(|e| format!("saved configuration {}: {e}", saved.display()))?;
            let built = doc
                .build()
                .map_err(|e| format!("saved configuration {}: {e}", saved.display()))?;
            log::warn!(
                "etcd unreachable at start-up ({e}); serving the last good configuration saved in {}; catching up when etcd answers",
                saved.display()
            );
            built
        }
        First::Unreachable(e) => {
            return Err(format!(
                "etcd at {:?} unreachable for {:?} ({e}) and no saved configuration at {}; \
                 start etcd, fix config_source.etcd.endpoints, or raise config_source.etcd.startup_wait",
                src.endpoints,
                src.startup_wait,
                saved.display()
            ))
        }
    };
    let mut built = built;
    built.cfg.source = Some(path);
    Ok((
        built,
        Fleet {
            src,
            doc,
            file_sets,
            refused: refused_at_start.0,
            bad_keys: refused_at_start.1,
            from_saved,
            start: start_tx,
            runtime,
        },
    ))
}

async fn first_read(src: &EtcdSource, has_saved: bool) -> First {
    let deadline = Instant::now() + src.startup_wait;
    let mut wait = Duration::from_millis(100);
    let mut logged = false;
    loop {
        let t0 = Instant::now();
        let attempt = async {
            let mut c = client::connect(src).await?;
            let (kvs, rev) = client::read_all(&mut c, &src.prefix, src.timeout).await?;
            Ok::<_, String>(First::Read(Box::new(c), kvs, rev, t0.elapsed()))
        };
        let e = match attempt.await {
            Ok(f) => return f,
            Err(e) => e,
        };
        if has_saved || Instant::now() + wait >= deadline {
            return First::Unreachable(e);
        }
        if !logged {
            log::warn!(
                "etcd at {:?} unreachable ({e}); no saved configuration, retrying for up to {:?}",
                src.endpoints,
                src.startup_wait
            );
            logged = true;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Keys and values -> objects; what cannot be read is refused (logged) and left out.
fn parse_all(
    prefix: &str,
    kvs: Vec<client::Kv>,
    rev: i64,
) -> (BTreeMap<(Kind, String), Value>, usize) {
    let mut out = BTreeMap::new();
    let mut bad = 0;
    for kv in kvs {
        let parsed = keys::parse_key(prefix, &kv.key).and_then(|(kind, id)| {
            Ok(((kind, id.clone()), keys::parse_value(kind, &id, &kv.value)?))
        });
        match parsed {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            Err(why) => {
                log::warn!("etcd: refused a key at revision {rev}: {why}");
                bad += 1;
            }
        }
    }
    (out, bad)
}

impl Fleet {
    /// Hands the document to the admin store, admin writes to etcd, and starts following etcd
    /// (the shards run by now). The saved configuration is written once whole here.
    pub fn run(self, ops: &Arc<Ops>) {
        let Fleet {
            src,
            mut doc,
            file_sets,
            refused,
            bad_keys,
            from_saved,
            start,
            runtime,
        } = self;
        if let Err(e) = doc.persist() {
            log::error!("etcd: cannot save the configuration locally: {e}");
        }
        *ops.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(doc);
        let n_refused = (refused.len() + bad_keys) as u64;
        let mut node = Node::new(
            ops.plane.clone(),
            ops.clone(),
            src.prefix.clone(),
            file_sets,
        );
        node.refused = refused;
        let shared = node.shared.clone();
        ops.plane.update_source(|i| {
            i.events_refused = n_refused;
            i.from_saved = from_saved;
        });
        let _ = ops.remote.set(Arc::new(Writer {
            shared,
            runtime,
            prefix: src.prefix.clone(),
            timeout: src.timeout,
        }));
        let _ = start.send(node);
    }
}

/// Admin writes: a compare-and-swap transaction run on the etcd thread's runtime.
struct Writer {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    prefix: String,
    timeout: Duration,
}

impl Remote for Writer {
    fn mod_revision(&self, kind: Kind, id: &str) -> i64 {
        self.shared.rev_of(kind, id)
    }

    fn write(
        &self,
        changes: Vec<(Kind, String, Option<Value>)>,
        expected: Option<i64>,
    ) -> Result<(i64, bool), RemoteError> {
        let Some(mut client) = self.shared.client() else {
            return Err(RemoteError::Unavailable(
                "etcd is not reachable from this node; nothing was written (the last good configuration keeps serving)".into(),
            ));
        };
        let mut ops = Vec::with_capacity(changes.len());
        let mut seen = Vec::with_capacity(changes.len());
        for (i, (kind, id, obj)) in changes.iter().enumerate() {
            let rev = match expected {
                Some(e) if i == 0 => e,
                _ => self.shared.rev_of(*kind, id),
            };
            seen.push(format!("{}/{id}@{rev}", kind.seg()));
            let value = obj
                .as_ref()
                .map(|v| serde_json::to_vec(v).map_err(|e| RemoteError::Unavailable(e.to_string())))
                .transpose()?;
            ops.push((keys::key(&self.prefix, *kind, id), rev, value));
        }
        let (tx, rx) = mpsc::channel();
        let limit = self.timeout;
        self.runtime.spawn(async move {
            let _ = tx.send(client::swap(&mut client, ops, limit).await);
        });
        let committed = match rx.recv_timeout(limit + Duration::from_secs(1)) {
            Ok(Ok(Some(rev))) => rev,
            Ok(Ok(None)) => {
                return Err(RemoteError::Conflict(format!(
                    "changed in etcd since this node last saw it (expected mod revisions {seen:?}); read it again and retry"
                )))
            }
            Ok(Err(e)) => {
                return Err(RemoteError::Unavailable(format!(
                    "etcd: {e}; the write may not have been committed (read the object to see)"
                )))
            }
            Err(_) => {
                return Err(RemoteError::Unavailable(format!(
                    "etcd: no answer within {limit:?}; the write may or may not have been committed"
                )))
            }
        };
        Ok((committed, self.shared.wait_applied(committed, APPLY_WAIT)))
    }
}

/// `ringway check` with etcd as the source: reads the prefix once and builds it as a start-up
/// does (refused objects are logged one by one). Ok(summary) only when nothing was refused.
pub fn check(file: &Built, path: &Path) -> Result<String, String> {
    let src = file
        .cfg
        .config_source
        .clone()
        .ok_or("config_source is not set")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (kvs, rev) = rt
        .block_on(async {
            let mut c = client::connect(&src).await?;
            client::read_all(&mut c, &src.prefix, src.timeout).await
        })
        .map_err(|e| format!("etcd at {:?}: {e}", src.endpoints))?;
    let n = kvs.len();
    let (objects, bad) = parse_all(&src.prefix, kvs, rev);
    let mut doc = Document::open(path, None).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_sets = doc.sets.clone();
    let (built, refused) = startup::startup_build(&mut doc, objects, &file_sets, rev)?;
    let refused = refused.len();
    let summary = format!(
        "etcd {}/ at revision {rev}: {n} key(s), {} refused; {} routes, {} upstreams in all",
        src.prefix,
        refused + bad,
        built.cfg.routes.len(),
        built.cfg.upstreams.len()
    );
    if refused + bad == 0 {
        Ok(summary)
    } else {
        Err(summary)
    }
}
