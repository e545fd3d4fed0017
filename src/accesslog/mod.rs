//! Access log: each shard formats lines into its own buffer (no lock, no syscall per request) and
//! hands the buffer on its control tick to one writer thread over a bounded channel; when the
//! writer falls behind, batches are dropped and counted rather than ever blocking a shard.
//! The writer appends to a file or stdout, or sends each line to a syslog collector. SIGUSR1
//! reopens the file (log rotation). Must not touch request handling beyond `record`.

mod format;

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub use format::{Field, Record};

#[derive(Debug, Clone)]
pub enum Destination {
    Stdout,
    File(PathBuf),
    /// One RFC 5424 message per line, sent by the writer thread (`net::syslog`).
    Syslog(crate::net::syslog::Target),
}

impl PartialEq for Destination {
    fn eq(&self, o: &Destination) -> bool {
        match (self, o) {
            (Destination::Stdout, Destination::Stdout) => true,
            (Destination::File(a), Destination::File(b)) => a == b,
            (Destination::Syslog(a), Destination::Syslog(b)) => {
                a.addr == b.addr && a.transport == b.transport && a.pri == b.pri
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// nginx/Apache "combined".
    Combined,
    /// One JSON object per line with these fields, in this order.
    Json(Vec<Field>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub target: Destination,
    pub format: Format,
}

enum Msg {
    Lines(Vec<u8>),
    Reopen,
    /// Write out everything queued, then answer (shutdown).
    Sync(Sender<()>),
}

/// A shard sends at most this many batches ahead of the writer before dropping.
const QUEUE: usize = 256;
/// A buffer this full is handed over at once instead of waiting for the tick.
const EARLY_FLUSH: usize = 256 * 1024;

struct Writer {
    tx: Sender<Msg>,
    format: Arc<Format>,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Opens the target and starts the writer thread (once per process, before shards start).
pub fn start(cfg: &AccessLogConfig) -> Result<(), String> {
    let out = open(&cfg.target)?;
    let (tx, rx) = bounded(QUEUE);
    let target = cfg.target.clone();
    std::thread::Builder::new()
        .name("ringway-accesslog".into())
        .spawn(move || write_loop(rx, target, out))
        .map_err(|e| format!("cannot start the access log writer: {e}"))?;
    let _ = WRITER.set(Writer {
        tx,
        format: Arc::new(cfg.format.clone()),
    });
    Ok(())
}

/// SIGUSR1: close and reopen the log file (after `mv access.log access.log.1`).
pub fn reopen() {
    if let Some(w) = WRITER.get() {
        let _ = w.tx.send(Msg::Reopen);
    }
}

/// Waits (bounded) until the writer has written everything queued so far.
pub fn sync(timeout: Duration) {
    if let Some(w) = WRITER.get() {
        let (tx, rx) = bounded(1);
        if w.tx.send_timeout(Msg::Sync(tx), timeout).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

enum Out {
    Stdout,
    File(File),
    Syslog(Box<SyslogOut>),
}

/// Lines waiting for the collector: while it is unreachable the writer keeps up to
/// `SYSLOG_PENDING` lines (oldest dropped and counted beyond that) and retries once a second.
struct SyslogOut {
    conn: crate::net::syslog::Syslog,
    pending: std::collections::VecDeque<String>,
    failing: bool,
}

/// Lines the syslog writer holds while the collector is unreachable.
pub const SYSLOG_PENDING: usize = 10_000;
/// Lines per send to the collector.
const SYSLOG_BATCH: usize = 1000;
/// Lines the syslog writer dropped (collector unreachable past the buffer); read by /metrics.
pub static SYSLOG_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SyslogOut {
    fn push(&mut self, buf: &[u8]) {
        for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.pending
                .push_back(String::from_utf8_lossy(line).into_owned());
        }
        let over = self.pending.len().saturating_sub(SYSLOG_PENDING);
        if over > 0 {
            self.pending.drain(..over);
            SYSLOG_DROPPED.fetch_add(over as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(SYSLOG_BATCH);
            let batch: Vec<&str> = self.pending.range(..n).map(String::as_str).collect();
            match self.conn.send(&batch) {
                Ok(()) => {
                    self.pending.drain(..n);
                    if std::mem::replace(&mut self.failing, false) {
                        log::info!("access log: syslog collector reachable again");
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        log::warn!(
                            "access log: {e}; holding up to {SYSLOG_PENDING} lines and retrying every second"
                        );
                    }
                    return;
                }
            }
        }
    }
}

fn open(target: &Destination) -> Result<Out, String> {
    match target {
        Destination::Stdout => Ok(Out::Stdout),
        Destination::Syslog(t) => Ok(Out::Syslog(Box::new(SyslogOut {
            conn: crate::net::syslog::Syslog::new(t.clone()),
            pending: Default::default(),
            failing: false,
        }))),
        Destination::File(p) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(Out::File)
            .map_err(|e| format!("cannot open access log {}: {e}", p.display())),
    }
}

fn write_loop(rx: Receiver<Msg>, target: Destination, mut out: Out) {
    loop {
        let msg = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => m,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Out::Syslog(s) = &mut out {
                    s.deliver();
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        match msg {
            Msg::Lines(buf) => {
                // Batches are whole lines, and O_APPEND writes them after any other writer's.
                let r = match &mut out {
                    Out::Stdout => std::io::stdout().lock().write_all(&buf),
                    Out::File(f) => f.write_all(&buf),
                    Out::Syslog(s) => {
                        s.push(&buf);
                        Ok(())
                    }
                };
                if let Err(e) = r {
                    log::warn!("access log write failed: {e}");
                }
            }
            Msg::Reopen if matches!(out, Out::Syslog(_)) => {}
            Msg::Reopen => match open(&target) {
                Ok(o) => {
                    out = o;
                    log::info!("access log reopened");
                }
                Err(e) => log::error!("SIGUSR1: {e}; still writing to the old file"),
            },
            Msg::Sync(done) => {
                match &mut out {
                    Out::Stdout => {
                        let _ = std::io::stdout().flush();
                    }
                    Out::Syslog(s) => s.deliver(),
                    Out::File(_) => {}
                }
                let _ = done.send(());
            }
        }
    }
}

/// One shard's pending lines and counters. Single-threaded (`Cell`/`RefCell`).
pub struct ShardLog {
    buf: RefCell<Vec<u8>>,
    pending: Cell<u64>,
    lines: Cell<u64>,
    dropped: Cell<u64>,
    tx: Sender<Msg>,
    format: Arc<Format>,
    clock: RefCell<format::Clock>,
}

impl ShardLog {
    /// None when no access log is configured (the writer was never started).
    pub fn for_shard(_id: usize) -> Option<Rc<ShardLog>> {
        let w = WRITER.get()?;
        Some(Rc::new(ShardLog {
            buf: RefCell::new(Vec::with_capacity(64 * 1024)),
            pending: Cell::new(0),
            lines: Cell::new(0),
            dropped: Cell::new(0),
            tx: w.tx.clone(),
            format: w.format.clone(),
            clock: RefCell::new(format::Clock::default()),
        }))
    }

    /// Appends one line for a finished request.
    pub fn record(&self, e: &Record<'_>) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            let mut clock = self.clock.borrow_mut();
            format::line(&mut buf, &self.format, &mut clock, e);
            buf.len() >= EARLY_FLUSH
        };
        self.pending.set(self.pending.get() + 1);
        if full {
            self.flush();
        }
    }

    /// Hands the buffer to the writer without waiting; a full queue drops (and counts) it.
    pub fn flush(&self) {
        let n = self.pending.get();
        if n == 0 {
            return;
        }
        let buf = std::mem::replace(&mut *self.buf.borrow_mut(), Vec::with_capacity(64 * 1024));
        self.pending.set(0);
        match self.tx.try_send(Msg::Lines(buf)) {
            Ok(()) => self.lines.set(self.lines.get() + n),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.set(self.dropped.get() + n)
            }
        }
    }

    /// (lines handed to the writer, lines dropped)
    pub fn counts(&self) -> (u64, u64) {
        (self.lines.get(), self.dropped.get())
    }
}
