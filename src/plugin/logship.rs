//! Log shipping for http-logger, tcp-logger and syslog: JSON entries batched on the shard, handed
//! over a crossbeam channel to one blocking sender thread per plugin config. The shard never blocks.

// The shard only appends to its batch and, per full or stale batch, does one send on an
// unbounded channel. The sender thread owns the bounded buffer (oldest entries dropped and
// counted when the sink is down), retries with backoff, and the process-wide counters exported
// on /metrics (touched by sender threads only, never per request).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::chain::ShardCx;
use super::ctx::ReqSummary;
use super::util::{duration, err, RawDur};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

/// Longest backoff between retries of one batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Records the request for a logger's `log` phase; the first logger on the route does it.
pub fn capture(req: &RequestHead, cx: &mut Ctx) {
    if cx.private.log_req.is_none() {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        cx.private.log_req = Some(Box::new(ReqSummary {
            method: s(req.method_bytes()),
            uri: s(req.target()),
            host: s(req.host()),
        }));
    }
}

/// One JSON entry (APISIX's log format, trimmed to what ringway knows at `log` time).
pub fn entry(cx: &Ctx) -> String {
    let took = cx.start.elapsed();
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(took)
        .as_millis() as u64;
    let r = cx.private.log_req.as_deref().cloned().unwrap_or_default();
    serde_json::json!({
        "start_time": start_ms,
        "client_ip": cx.client_ip.to_string(),
        "request": { "method": r.method, "uri": r.uri, "host": r.host },
        "response": { "status": cx.status },
        "latency": took.as_secs_f64() * 1000.0,
        "route_index": cx.route,
        "request_id": cx.request_id,
        "forwarded": cx.forwarded,
        "shard": cx.shard,
    })
    .to_string()
}

pub use crate::metrics::logship::{Counters, HTTP, SYSLOG, TCP};

/// Batch and retry keys shared by both loggers (APISIX's batch processor names).
#[derive(Default)]
pub struct RawBatch {
    pub batch_max_size: Option<i64>,
    pub inactive_timeout: Option<RawDur>,
    pub max_retry_count: Option<i64>,
    pub retry_delay: Option<RawDur>,
    /// ringway's bound on entries waiting in the sender thread (oldest dropped beyond it).
    pub max_pending_entries: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct BatchConf {
    pub batch_max_size: usize,
    pub inactive_timeout: Duration,
    pub max_retry_count: u32,
    pub retry_delay: Duration,
    pub max_pending: usize,
}

impl BatchConf {
    pub fn from_raw(path: &str, r: &RawBatch) -> Result<BatchConf, ConfigError> {
        let int = |key: &str, v: Option<i64>, dflt: i64, min: i64, max: i64| match v {
            None => Ok(dflt),
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(err(path, key, format!("expected {min}..={max}, got {n}"))),
        };
        let dur = |key: &str, v: &Option<RawDur>, dflt: Duration| match v {
            None => Ok(dflt),
            Some(v) => duration(path, key, v).and_then(|d| {
                if d.is_zero() || d > Duration::from_secs(3600) {
                    Err(err(path, key, "expected more than 0 and at most 1h"))
                } else {
                    Ok(d)
                }
            }),
        };
        let c = BatchConf {
            batch_max_size: int("batch_max_size", r.batch_max_size, 1000, 1, 100_000)? as usize,
            inactive_timeout: dur(
                "inactive_timeout",
                &r.inactive_timeout,
                Duration::from_secs(5),
            )?,
            max_retry_count: int("max_retry_count", r.max_retry_count, 0, 0, 100)? as u32,
            retry_delay: dur("retry_delay", &r.retry_delay, Duration::from_secs(1))?,
            max_pending: int(
                "max_pending_entries",
                r.max_pending_entries,
                10_000,
                1,
                10_000_000,
            )? as usize,
        };
        if c.max_pending < c.batch_max_size {
            return Err(err(
                path,
                "max_pending_entries",
                "must be at least batch_max_size",
            ));
        }
        Ok(c)
    }
}

/// Where a sender thread delivers: blocking I/O with timeouts, one call per batch.
pub trait Sink: Send + 'static {
    fn send(&mut self, entries: &[&String]) -> Result<(), String>;
}

/// Starts the sender thread for one plugin config; returns the shards' end of its channel.
/// The thread ends once every sender is gone and what it holds is delivered or given up.
pub fn start(
    name: &'static str,
    conf: BatchConf,
    sink: Box<dyn Sink>,
    counters: &'static Counters,
) -> Result<Sender<Vec<String>>, String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    // Plugin unit tests read the batches themselves (testkit): no thread, nothing sent.
    #[cfg(test)]
    let Some(rx) = super::testkit::tap(name, rx) else {
        return Ok(tx);
    };
    std::thread::Builder::new()
        .name(format!("ringway-{name}"))
        .spawn(move || ship(name, &conf, sink, counters, &rx))
        .map_err(|e| format!("{name}: cannot start the sender thread: {e}"))?;
    Ok(tx)
}

fn ship(
    name: &str,
    conf: &BatchConf,
    mut sink: Box<dyn Sink>,
    counters: &Counters,
    rx: &Receiver<Vec<String>>,
) {
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    let mut open = true;
    loop {
        // Keep taking batches in, also while backing off, so the bound applies to everything held.
        let got = match (open, pending.is_empty(), retry_at) {
            (false, true, _) => return,
            (false, false, _) => Err(RecvTimeoutError::Disconnected),
            (true, true, _) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            (true, false, Some(t)) => rx.recv_deadline(t),
            (true, false, None) => rx.try_recv().map_err(|e| match e {
                crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
                crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
        };
        match got {
            Ok(batch) => {
                pending.extend(batch);
                let over = pending.len().saturating_sub(conf.max_pending);
                if over > 0 {
                    pending.drain(..over);
                    counters.dropped.fetch_add(over as u64, Relaxed);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => open = false,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            if !open {
                std::thread::sleep(t_left(retry_at));
            }
            continue;
        }
        let n = pending.len().min(conf.batch_max_size);
        if n == 0 {
            continue;
        }
        let batch: Vec<&String> = pending.range(..n).collect();
        match sink.send(&batch) {
            Ok(()) => {
                pending.drain(..n);
                counters.sent.fetch_add(n as u64, Relaxed);
                failures = 0;
                retry_at = None;
            }
            Err(e) => {
                counters.failed.fetch_add(1, Relaxed);
                if failures == 0 {
                    log::warn!("{name}: cannot deliver {n} entries: {e}");
                }
                failures += 1;
                if failures > conf.max_retry_count {
                    // Given up on this batch (APISIX's max_retry_count); the next one starts fresh.
                    pending.drain(..n);
                    counters.dropped.fetch_add(n as u64, Relaxed);
                    failures = 0;
                }
                let shift = failures.saturating_sub(1).min(16);
                let wait = conf.retry_delay.saturating_mul(1 << shift).min(MAX_BACKOFF);
                retry_at = Some(Instant::now() + wait);
            }
        }
    }
}

fn t_left(at: Option<Instant>) -> Duration {
    at.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(Instant::now())
    })
}

struct Batch {
    entries: Vec<String>,
    first_at: Option<Instant>,
}

/// One shard's batch for one logger instance.
pub struct ShardBatch {
    tx: Sender<Vec<String>>,
    max: usize,
    inactive: Duration,
    buf: Rc<RefCell<Batch>>,
    ticker: Cell<bool>,
}

impl ShardBatch {
    pub fn new(tx: Sender<Vec<String>>, conf: &BatchConf) -> ShardBatch {
        ShardBatch {
            tx,
            max: conf.batch_max_size,
            inactive: conf.inactive_timeout,
            buf: Rc::new(RefCell::new(Batch {
                entries: Vec::new(),
                first_at: None,
            })),
            ticker: Cell::new(false),
        }
    }

    pub fn push(&self, line: String) {
        let full = {
            let mut b = self.buf.borrow_mut();
            b.first_at.get_or_insert_with(Instant::now);
            b.entries.push(line);
            b.entries.len() >= self.max
        };
        if full {
            flush(&self.buf, &self.tx);
        }
        if !self.ticker.replace(true) {
            // Started lazily from the log phase, i.e. on the shard's runtime: it flushes a
            // partial batch after `inactive_timeout` and ends with this instance.
            monoio::spawn(tick(
                Rc::downgrade(&self.buf),
                self.tx.clone(),
                self.inactive,
            ));
        }
    }
}

impl Drop for ShardBatch {
    /// A retired generation hands over what it still holds.
    fn drop(&mut self) {
        flush(&self.buf, &self.tx);
    }
}

fn flush(buf: &RefCell<Batch>, tx: &Sender<Vec<String>>) {
    let entries = {
        let mut b = buf.borrow_mut();
        b.first_at = None;
        std::mem::take(&mut b.entries)
    };
    if !entries.is_empty() {
        // Unbounded: never blocks the shard; the sender thread enforces the bound.
        let _ = tx.send(entries);
    }
}

async fn tick(buf: Weak<RefCell<Batch>>, tx: Sender<Vec<String>>, inactive: Duration) {
    let every = (inactive / 2).max(Duration::from_millis(10));
    loop {
        monoio::time::sleep(every).await;
        let Some(b) = buf.upgrade() else { return };
        let stale = b.borrow().first_at.is_some_and(|t| t.elapsed() >= inactive);
        if stale {
            flush(&b, &tx);
        }
    }
}

/// The phases a logger instance implements (both loggers' `SPEC.phases`).
pub const PHASES: u8 = phase::REWRITE | phase::LOG;

/// The plugin side both loggers share: capture the request in `rewrite`, batch one JSON entry
/// per request in `log`; only the sink (and its config) differs between them.
pub struct LoggerFactory {
    /// The logger's own `SPEC` (http-logger or tcp-logger).
    pub spec: &'static Spec,
    pub tx: Sender<Vec<String>>,
    pub conf: BatchConf,
}

impl PluginFactory for LoggerFactory {
    fn spec(&self) -> &'static Spec {
        self.spec
    }
    fn build(&self, _shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(Logger {
            spec: self.spec,
            batch: ShardBatch::new(self.tx.clone(), &self.conf),
        })
    }
}

struct Logger {
    spec: &'static Spec,
    batch: ShardBatch,
}

impl Plugin for Logger {
    fn spec(&self) -> &'static Spec {
        self.spec
    }

    fn rewrite(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        capture(req, cx);
        Flow::Continue
    }

    fn log(&self, cx: &mut Ctx) {
        self.batch.push(entry(cx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// metrics/ sits below plugin/ and labels the counters itself: the labels must stay the
    /// plugins' SPEC names.
    #[test]
    fn metrics_labels_are_the_logger_names() {
        let names = crate::metrics::logship::counts().map(|c| c.0);
        assert_eq!(
            names,
            [
                super::super::http_logger::SPEC.name,
                super::super::tcp_logger::SPEC.name,
                super::super::syslog::SPEC.name
            ]
        );
    }

    /// Fails while `down` is set; records what it delivered.
    struct Probe {
        down: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Probe {
        fn send(&mut self, e: &[&String]) -> Result<(), String> {
            if *self.down.lock().unwrap() {
                return Err("down".into());
            }
            self.got
                .lock()
                .unwrap()
                .extend(e.iter().map(|s| s.to_string()));
            Ok(())
        }
    }

    #[test]
    fn bounded_buffer_drops_oldest_and_delivers_after_recovery() {
        static C: Counters = Counters::new();
        let down = Arc::new(Mutex::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let conf = BatchConf {
            batch_max_size: 2,
            inactive_timeout: Duration::from_secs(1),
            max_retry_count: 100,
            retry_delay: Duration::from_millis(5),
            max_pending: 4,
        };
        let sink = Probe {
            down: down.clone(),
            got: got.clone(),
        };
        let tx = start("test", conf, Box::new(sink), &C).unwrap();
        for i in 0..10 {
            tx.send(vec![format!("e{i}")]).unwrap();
        }
        let until = |f: &dyn Fn() -> bool| {
            let t = Instant::now();
            while !f() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            f()
        };
        assert!(until(&|| C.dropped.load(Relaxed) == 6));
        *down.lock().unwrap() = false;
        assert!(until(&|| got.lock().unwrap().len() == 4));
        assert_eq!(*got.lock().unwrap(), ["e6", "e7", "e8", "e9"]);
        assert!(C.failed.load(Relaxed) >= 1);
        assert_eq!(C.sent.load(Relaxed), 4);
    }
}
